"""The benchmark's PyTorch yardstick computes numpyvit's function in both attention forms (run
where PyTorch is installed: it is never a dependency)."""
import sys
from pathlib import Path

import numpy as np
import pytest

import numpyvit
from conftest import oracle

pytestmark = pytest.mark.oracle
torch = oracle("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demos"))
from torch_reference import from_npz  # noqa: E402


@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_both_attention_forms_give_numpyvits_logits(tmp_path, attention):
    model = numpyvit.create_model("mnist_tiny", dtype="float64", depth=2)
    np.savez(tmp_path / "w.npz", **model.state_dict())
    reference = from_npz(model.config, tmp_path / "w.npz", attention=attention).eval()
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28))
    with torch.inference_mode():
        theirs = reference(torch.from_numpy(x)).numpy()
    with model.inference():
        ours = model(x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_weights_for_another_model_are_refused(tmp_path):
    np.savez(tmp_path / "w.npz", **numpyvit.create_model("mnist_tiny", depth=1).state_dict())
    with pytest.raises(ValueError, match="do not match"):
        from_npz(numpyvit.create_model("mnist_tiny", depth=2).config, tmp_path / "w.npz")
