"""docs/tour.ipynb runs from top to bottom (where the ``docs`` extra is installed: nbclient and
ipykernel), on the real MNIST files when numpyvit finds them and on its own images otherwise."""
import re
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

# the lines that report gradient checks and pins, and every number printed on them as 1.2e-09
# (any exponent: an error of 2.0e+00 fails too)
CHECKED = ("linear", "patch embed", "tokens", "layernorm", "attention", "mlp", "loss", "logits")
ERROR = re.compile(r"\d\.\de[+-]\d\d")
TOUR = Path(__file__).resolve().parents[1] / "docs" / "tour.ipynb"


def test_tour_runs_and_its_checks_pass(capsys):
    notebook = nbformat.read(TOUR, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(TOUR.parent)}}).execute()
    with capsys.disabled():
        print(f"\ndocs/tour.ipynb executed in {time.perf_counter() - start:.1f} s")
    text = "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.outputs)
    checks = [line for line in text.splitlines() if line.startswith(CHECKED)]
    errors = [float(number) for line in checks for number in ERROR.findall(line)]
    assert len(checks) == len(CHECKED) + 2 and len(errors) >= 20, "\n".join(checks)   # mlp: three activations
    assert max(errors) < 1e-6, "\n".join(checks)                    # every gradient check and pin
    assert "test accuracy" in text
    images = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if "image/png" in output.get("data", {})]
    assert len(images) == 2                                            # the patches and the curve
