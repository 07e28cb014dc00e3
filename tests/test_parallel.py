"""numpyvit.parallel: splitting rows across threads changes nothing but the speed.

Pieces of different sizes may take different BLAS code paths, so results agree to float32
rounding, not bit for bit; the same settings always give bit-identical results."""
import numpy as np
import pytest

import numpyvit
from numpyvit import parallel


def run_step(model, x, y):
    loss = numpyvit.CrossEntropyLoss(0.1)
    model.zero_grad()
    value = loss(model(x), y)
    dx = model.backward(loss.backward())
    return float(value), dx, {name: p.grad.copy() for name, p in model.named_parameters()}


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "relu"])
def test_threads_and_pieces_agree_and_are_deterministic(monkeypatch, act):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 1, 12, 12)).astype(np.float32)
    y = rng.integers(0, 10, 6)
    results = []
    for threads, chunk in [("1", parallel.CHUNK_BYTES), ("2", 64), ("2", 64), ("3", 200)]:
        monkeypatch.setenv("NUMPYVIT_THREADS", threads)
        monkeypatch.setattr(parallel, "CHUNK_BYTES", chunk)          # tiny pieces: many tasks
        model = numpyvit.VisionTransformer(img_size=12, patch_size=4, in_chans=1, num_classes=10, embed_dim=16,
                                           depth=2, num_heads=2, act=act, seed=3)
        results.append(run_step(model, x, y))
    loss0, dx0, grads0 = results[0]
    for loss, dx, grads in results[1:]:
        assert loss == pytest.approx(loss0, rel=1e-6)
        np.testing.assert_allclose(dx, dx0, rtol=1e-4, atol=1e-9)
        for name in grads0:
            np.testing.assert_allclose(grads[name], grads0[name], rtol=1e-4, atol=1e-7, err_msg=name)
    _, dx_a, grads_a = results[1]
    _, dx_b, grads_b = results[2]                                   # same settings, run twice
    np.testing.assert_array_equal(dx_a, dx_b)
    for name in grads_a:
        np.testing.assert_array_equal(grads_a[name], grads_b[name], err_msg=name)


def test_map_rows_covers_every_row_once(monkeypatch):
    monkeypatch.setenv("NUMPYVIT_THREADS", "2")
    monkeypatch.setattr(parallel, "CHUNK_BYTES", 8)
    hits = np.zeros(37, dtype=int)

    def mark(rows):
        hits[rows] += 1

    parallel.map_rows(mark, 37, row_bytes=4)
    np.testing.assert_array_equal(hits, 1)
