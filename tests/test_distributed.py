"""Data-parallel training over MPI ranks (numpyvit.distributed): 2 ranks end with the weights of one
process on the same global batches, resume exactly, stop together when one fails, and refuse runs
that do not match. Needs mpi4py and an mpiexec (`pip install -e ".[dist]"`); skipped without them."""
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import numpyvit
from numpyvit.io import load_arrays, load_model
from numpyvit.train import TrainConfig, fit
from test_train import tiny_dataset

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install mpich)")

SCRIPT = """
import sys
import numpyvit
from numpyvit.train import TrainConfig, fit
from test_train import tiny_dataset

def model(**kw):
    return numpyvit.create_model("mnist_tiny", embed_dim=16, depth=2, num_heads=2, **kw)

def config(**kw):   # warmup covers epoch 1, so a 1-epoch run's schedule is the first epoch of a longer one
    return TrainConfig(**dict(dict(epochs=2, batch_size=16, log_every=2, eval_batch_size=16, warmup_epochs=1.0), **kw))

rank = numpyvit.distributed.world().rank
{body}
"""


def run_ranks(tmp_path, body, ranks=2, timeout=120):
    """Run SCRIPT with ``body`` under mpiexec -n ranks; the CompletedProcess."""
    script = tmp_path / "job.py"
    script.write_text(SCRIPT.format(body=textwrap.dedent(body)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1])]))
    return subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, str(script)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=tmp_path)


def weights(path):
    return {name: np.asarray(value) for name, value in load_model(path).state_dict().items()}


def test_two_ranks_end_with_the_weights_of_one_process(tmp_path):
    """float64, no augmentation, no dropout: only the order of the sums differs."""
    body = (f"fit(model(dtype='float64'), tiny_dataset(), config(augment=False, tta=True), "
            f"{str(tmp_path / 'two')!r}, log=None)")
    done = run_ranks(tmp_path, body)
    assert done.returncode == 0, done.stderr
    one = numpyvit.create_model("mnist_tiny", embed_dim=16, depth=2, num_heads=2, dtype="float64")
    fit(one, tiny_dataset(), TrainConfig(epochs=2, batch_size=16, log_every=2, eval_batch_size=16, augment=False,
                                         warmup_epochs=1.0, tta=True),
        tmp_path / "one", log=None)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in a:
        assert np.linalg.norm(a[name] - b[name]) <= 1e-12 * max(np.linalg.norm(a[name]), 1e-30), name
    _, meta = load_arrays(tmp_path / "two")
    assert meta["world_size"] == 2 and len(meta["rng"]["ranks"]) == 2
    history_one = load_arrays(tmp_path / "one")[1]["history"]
    for r1, r2 in zip(history_one, meta["history"]):                  # evaluation split over the ranks
        assert r1["test_acc"] == r2["test_acc"] and abs(r1["test_loss"] - r2["test_loss"]) < 1e-10
    assert history_one[-1]["test_acc_tta"] == meta["history"][-1]["test_acc_tta"]


def test_a_two_rank_checkpoint_resumes_exactly_and_only_with_two_ranks(tmp_path):
    """Dropout and augmentation on: every rank's generators must come back."""
    kw = "drop_rate=0.1, drop_path_rate=0.1"
    body = f"""
    fit(model({kw}), tiny_dataset(), config(epochs=3), {str(tmp_path / 'whole')!r}, log=None)
    fit(model({kw}), tiny_dataset(), config(epochs=1), {str(tmp_path / 'parts')!r}, log=None)
    fit(model({kw}), tiny_dataset(), config(epochs=3), {str(tmp_path / 'parts')!r}, log=None, resume=True)
    """
    done = run_ranks(tmp_path, body)
    assert done.returncode == 0, done.stderr
    whole, parts = weights(tmp_path / "whole"), weights(tmp_path / "parts")
    for name in whole:
        np.testing.assert_array_equal(whole[name], parts[name], err_msg=name)
    with pytest.raises(numpyvit.io.CheckpointError, match=r"run of 2 rank\(s\); resume it with the same number "
                                                         r"\(mpiexec -n 2\), not 1"):
        fit(numpyvit.create_model("mnist_tiny", embed_dim=16, depth=2, num_heads=2, drop_rate=0.1,
                                  drop_path_rate=0.1), tiny_dataset(),
            TrainConfig(epochs=4, batch_size=16, log_every=2, eval_batch_size=16), tmp_path / "parts", log=None,
            resume=True)


def test_an_exception_on_one_rank_ends_every_rank_with_its_message(tmp_path):
    body = """
    if rank == 1:                                                    # fails in its 4th step
        from numpyvit.losses import CrossEntropyLoss
        forward, calls = CrossEntropyLoss.forward, [0]
        def failing(self, *args):
            calls[0] += 1
            if calls[0] > 3:
                raise RuntimeError("rank one cannot go on")
            return forward(self, *args)
        CrossEntropyLoss.forward = failing
    fit(model(), tiny_dataset(), config(epochs=50), "run", log=None)
    """
    start = time.perf_counter()
    done = run_ranks(tmp_path, body, timeout=60)
    assert done.returncode != 0
    assert "rank 1 of 2 failed" in done.stderr and "rank one cannot go on" in done.stderr
    assert time.perf_counter() - start < 30


def test_ranks_built_differently_are_refused(tmp_path):
    body = f"""
    fit(model(), tiny_dataset(), config(lr=1e-3 if rank == 0 else 2e-3), {str(tmp_path / 'run')!r}, log=None)
    """
    done = run_ranks(tmp_path, body)
    assert done.returncode != 0
    assert "rank 1 has another model, data or training settings than rank 0 (differs in: train)" in done.stderr, (
        f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}")
