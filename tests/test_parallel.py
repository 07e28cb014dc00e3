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
        for threshold in ("MIN_SPLIT_WORK", "MIN_SPLIT_ELEMENTS", "OWN_THREADS_MIN"):
            monkeypatch.setattr(parallel, threshold, 1)              # split even this tiny model's work
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


@pytest.mark.parametrize("shapes", [((50, 7), (7, 3)), ((50, 7), (7,)), ((3, 50), (50, 9))])
def test_split_matmul_equals_at(monkeypatch, shapes):
    monkeypatch.setenv("NUMPYVIT_THREADS", "3")
    monkeypatch.setattr(parallel, "MIN_SPLIT_WORK", 1)
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal(shape).astype(np.float32) for shape in shapes)
    bias = rng.standard_normal(b.shape[1:]).astype(np.float32)
    for a_view in (a, np.asfortranarray(a), a.T.copy().T):          # C-order, F-order, transposed view
        with parallel.own_threads():
            np.testing.assert_allclose(parallel.matmul(a_view, b), a @ b, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(parallel.matmul(a_view, b, bias), a @ b + bias, rtol=1e-5, atol=1e-6)


def test_elementwise_helpers_equal_the_operators(monkeypatch):
    monkeypatch.setenv("NUMPYVIT_THREADS", "2")
    monkeypatch.setattr(parallel, "CHUNK_BYTES", 16)                 # many pieces
    monkeypatch.setattr(parallel, "MIN_SPLIT_ELEMENTS", 1)
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 5, 30, 4)).astype(np.float32)
    np.testing.assert_array_equal(parallel.multiply(a, b > 0), a * (b > 0))
    np.testing.assert_array_equal(parallel.multiply(a, b.T.copy().T), a * b)         # strided input
    out = a.copy()
    assert parallel.add_to(out, b) is out
    np.testing.assert_array_equal(out, a + b)
    strided = np.zeros((5, 30, 8), np.float32)[..., ::2]             # not contiguous: added in one go
    parallel.add_to(strided, a)
    np.testing.assert_array_equal(strided, a)


def test_own_threads_gives_blas_its_threads_back(monkeypatch):
    """Inside own_threads OpenBLAS runs on one thread (numpyvit splits the products); after it,
    even when the code inside raised, the thread count is what it was."""
    monkeypatch.setenv("NUMPYVIT_THREADS", "2")
    blas = parallel._openblas_threads()
    if blas is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS whose threads can be set")
    _, get_threads = blas
    before = get_threads()
    model = numpyvit.VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8,
                                       depth=1, num_heads=2)
    with parallel.own_threads():
        assert get_threads() == 1
        with parallel.own_threads():                                 # nested: still one
            assert get_threads() == 1
        assert get_threads() == 1
    assert get_threads() == before
    with pytest.raises(RuntimeError):
        with parallel.own_threads():
            raise RuntimeError("a layer failed")
    assert get_threads() == before
    monkeypatch.setattr(parallel, "OWN_THREADS_MIN", 1)              # this tiny model counts as large
    seen = []
    head_forward = model.head.forward
    model.head.forward = lambda x: (seen.append(get_threads()), head_forward(x))[1]
    model(np.zeros((2, 1, 8, 8), np.float32))
    assert seen == [1] and get_threads() == before                   # one thread inside the model only


def test_work_inside_a_piece_is_not_split_again(monkeypatch):
    """A piece that itself calls map_rows / matmul runs that work in place (a pool thread
    waiting on its own pool could deadlock)."""
    monkeypatch.setenv("NUMPYVIT_THREADS", "2")
    monkeypatch.setattr(parallel, "CHUNK_BYTES", 8)
    monkeypatch.setattr(parallel, "MIN_SPLIT_WORK", 1)
    a, b = np.ones((40, 3), np.float32), np.ones((3, 2), np.float32)
    hits = np.zeros(40, dtype=int)

    def piece(rows):
        parallel.map_rows(lambda inner: np.add.at(hits, np.arange(40)[rows][inner], 1), rows.stop - rows.start, 4)
        assert (parallel.matmul(a[rows], b) == 3).all()

    with parallel.own_threads():
        parallel.map_rows(piece, 40, row_bytes=4)
    np.testing.assert_array_equal(hits, 1)
