"""numpyvit.parallel: the ways of using the cores change nothing but the speed.

Every way (shards on processes or threads, split, blas) gives the same loss, input gradient and
parameter gradients: bit for bit in float64 where only the order of a sum differs, to float32
rounding otherwise; the same settings always give bit-identical results."""
import numpy as np
import pytest

import numpyvit
from numpyvit import parallel
from numpyvit.engine import tuning

WAYS = ["processes", "threads", "split", "blas"]


def tiny_model(**overrides):
    return numpyvit.VisionTransformer(**{**dict(img_size=12, patch_size=4, in_chans=1, num_classes=10, embed_dim=16,
                                                depth=2, num_heads=2, seed=3), **overrides})


def run_step(model, x, y, steps=1):
    """Loss, dx and gradients of the last of ``steps`` training steps (AdamW in between)."""
    loss = numpyvit.CrossEntropyLoss(0.1)
    optimizer = numpyvit.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        value = loss(model(x), y)
        dx = model.backward(loss.backward())
        grads = {name: p.grad.copy() for name, p in model.named_parameters()}
        optimizer.step()
    return float(value), dx, grads


def data(dtype=np.float32, batch=7):
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, 1, 12, 12)).astype(dtype), rng.integers(0, 10, batch)


def assert_same(a, b, rtol, atol):
    assert a[0] == pytest.approx(b[0], rel=rtol, abs=atol)
    np.testing.assert_allclose(a[1], b[1], rtol=rtol, atol=atol)
    for name in b[2]:
        np.testing.assert_allclose(a[2][name], b[2][name], rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("dtype, rtol, atol", [("float64", 1e-12, 1e-15), ("float32", 1e-4, 1e-7)])
@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_every_way_gives_the_same_step(monkeypatch, dtype, rtol, atol, act):
    """Three steps (the optimizer re-homes the weights after the first: the shards must follow)."""
    monkeypatch.setenv("NUMPYVIT_THREADS", "2")
    x, y = data(dtype)
    results = {}
    for way in WAYS:
        with tuning.forced(way):
            model = tiny_model(dtype=dtype, act=act)
            results[way] = run_step(model, x, y, steps=3)
            assert model.runner.strategy(len(y)) == way
            model.runner.release()
    for way in WAYS[1:]:
        assert_same(results[way], results["processes"], rtol, atol)


def test_pieces_and_thread_counts_agree_and_repeat_exactly(monkeypatch):
    x, y = data()
    results = []
    for threads, chunk in [("1", 2**18), ("2", 64), ("2", 64), ("3", 200)]:
        monkeypatch.setenv("NUMPYVIT_THREADS", threads)
        with parallel.configured(chunk_bytes=chunk, min_split_work=1, min_split_elements=1), tuning.forced("split"):
            results.append(run_step(tiny_model(), x, y))
    for result in results[1:]:
        assert_same(result, results[0], 1e-4, 1e-7)
    for a, b in zip(results[1][2].values(), results[2][2].values()):     # same settings: identical
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("way", ["processes", "threads"])
def test_dropout_in_shards_follows_the_seed(monkeypatch, way):
    monkeypatch.setenv("NUMPYVIT_THREADS", "2")
    x, y = data()
    with tuning.forced(way):
        first, second = (run_step(tiny_model(drop_rate=0.3, drop_path_rate=0.2), x, y) for _ in range(2))
    np.testing.assert_array_equal(first[1], second[1])
    with tuning.forced("threads" if way == "processes" else "processes"):
        other = run_step(tiny_model(drop_rate=0.3, drop_path_rate=0.2), x, y)
    np.testing.assert_array_equal(first[1], other[1])                # threads and processes: the same masks


@pytest.mark.parametrize("way", ["processes", "threads"])
def test_sharded_gradients_accumulate_over_two_backward_calls(monkeypatch, way):
    monkeypatch.setenv("NUMPYVIT_THREADS", "2")
    x, y = data(np.float64)
    loss = numpyvit.CrossEntropyLoss()
    with tuning.forced(way):
        model = tiny_model(dtype="float64")
        for _ in range(2):
            loss(model(x), y)
            model.backward(loss.backward())
    with tuning.forced("blas"):
        reference = tiny_model(dtype="float64")
        loss(reference(x), y)
        reference.backward(loss.backward())
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        np.testing.assert_allclose(p.grad, 2 * q.grad, rtol=1e-12, atol=1e-15, err_msg=name)


def test_a_failing_worker_names_itself_and_its_traceback(monkeypatch):
    monkeypatch.setenv("NUMPYVIT_THREADS", "2")
    x, _ = data()
    with tuning.forced("processes"):
        model = tiny_model()
        model(x)
        worker = model.runner.shards("processes").workers[0]
        worker.send(op="no such command")
        with pytest.raises(numpyvit.engine.workers.WorkerError, match=r"(?s)worker process \d+ failed.*unknown command"):
            worker.reply()
        worker.process.kill()
        worker.process.wait()
        with pytest.raises(numpyvit.engine.workers.WorkerError, match="stopped unexpectedly"):
            model(x)


def test_worker_processes_stop_and_leave_no_files(monkeypatch, tmp_path):
    import glob
    monkeypatch.setenv("NUMPYVIT_THREADS", "3")
    before = set(glob.glob("/dev/shm/numpyvit-*"))
    with tuning.forced("processes"):
        model = tiny_model()
        model(data()[0])
    processes = [worker.process for worker in model.runner.shards("processes").workers]
    assert len(processes) == 2 and all(p.poll() is None for p in processes)
    assert set(glob.glob("/dev/shm/numpyvit-*")) == before            # unlinked once mapped
    model.runner.release()
    assert all(p.wait(timeout=10) == 0 for p in processes)


def test_worker_files_hold_gradients_only_when_a_backward_may_follow(monkeypatch):
    monkeypatch.setenv("NUMPYVIT_THREADS", "2")
    x, y = data()
    with tuning.forced("processes"):
        model = tiny_model()
        with numpyvit.no_grad():
            model(x)
        (worker,) = model.runner.shards("processes").workers
        assert not [name for name in worker.io if name.startswith("g")]
        loss = numpyvit.CrossEntropyLoss()
        loss(model(x), y)
        model.backward(loss.backward())
        assert len([name for name in worker.io if name.startswith("g")]) == len(model.parameters())
    assert all(np.isfinite(p.grad).all() for p in model.parameters())
    model.runner.release()


def test_map_rows_covers_every_row_once(monkeypatch):
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("NUMPYVIT_THREADS", threads)
        hits = np.zeros(37, dtype=int)

        def mark(rows):
            hits[rows] += 1

        with parallel.configured(chunk_bytes=8):
            parallel.map_rows(mark, 37, row_bytes=4)
        np.testing.assert_array_equal(hits, 1)


@pytest.mark.parametrize("shapes", [((50, 7), (7, 3)), ((50, 7), (7,)), ((3, 50), (50, 9))])
def test_split_matmul_equals_at(monkeypatch, shapes):
    monkeypatch.setenv("NUMPYVIT_THREADS", "3")
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal(shape).astype(np.float32) for shape in shapes)
    bias = rng.standard_normal(b.shape[1:]).astype(np.float32)
    for a_view in (a, np.asfortranarray(a), a.T.copy().T):          # C-order, F-order, transposed view
        with parallel.single_threaded_blas(), parallel.configured(min_split_work=1):
            np.testing.assert_allclose(parallel.matmul(a_view, b), a @ b, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(parallel.matmul(a_view, b, bias), a @ b + bias, rtol=1e-5, atol=1e-6)


def test_elementwise_helpers_equal_the_operators(monkeypatch):
    monkeypatch.setenv("NUMPYVIT_THREADS", "2")
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 5, 30, 4)).astype(np.float32)
    with parallel.configured(chunk_bytes=16, min_split_elements=1):  # many pieces
        np.testing.assert_array_equal(parallel.multiply(a, b > 0), a * (b > 0))
        np.testing.assert_array_equal(parallel.multiply(a, b.T.copy().T), a * b)         # strided input
        out = a.copy()
        assert parallel.add_in_place(out, b) is out
        np.testing.assert_array_equal(out, a + b)
        strided = np.zeros((5, 30, 8), np.float32)[..., ::2]         # not contiguous: added in one go
        parallel.add_in_place(strided, a)
        np.testing.assert_array_equal(strided, a)


def test_single_threaded_blas_gives_blas_its_threads_back(monkeypatch):
    """Inside, BLAS runs on one thread (numpyvit's own threads split the products); after it, even
    when the code inside raised, the thread count is what it was; a split or sharded forward is
    inside, a 'blas' forward is not."""
    monkeypatch.setenv("NUMPYVIT_THREADS", "2")
    libraries = parallel.blas_libraries()
    if not libraries:
        pytest.skip("NumPy's BLAS cannot be controlled by threadpoolctl here")
    before = [lib.num_threads for lib in libraries]
    with parallel.single_threaded_blas():
        assert [lib.num_threads for lib in libraries] == [1] * len(libraries)
        with parallel.single_threaded_blas():                       # nested: still one
            assert libraries[0].num_threads == 1
        assert libraries[0].num_threads == 1
    assert [lib.num_threads for lib in libraries] == before
    with pytest.raises(RuntimeError):
        with parallel.single_threaded_blas():
            raise RuntimeError("a layer failed")
    assert [lib.num_threads for lib in libraries] == before
    for way, inside in [("split", 1), ("threads", 1), ("blas", before[0])]:
        model, seen = tiny_model(), []
        head_forward = model.head.forward
        model.head.forward = lambda x: (seen.append(libraries[0].num_threads), head_forward(x))[1]
        with tuning.forced(way):
            model(data()[0])
        assert seen and set(seen) == {inside} and libraries[0].num_threads == before[0], way


def test_work_inside_a_piece_is_not_split_again(monkeypatch):
    """A piece that itself calls map_rows / matmul runs that work in place (a pool thread
    waiting on its own pool could deadlock)."""
    monkeypatch.setenv("NUMPYVIT_THREADS", "2")
    a, b = np.ones((40, 3), np.float32), np.ones((3, 2), np.float32)
    hits = np.zeros(40, dtype=int)

    def piece(rows):
        parallel.map_rows(lambda inner: np.add.at(hits, np.arange(40)[rows][inner], 1), rows.stop - rows.start, 4)
        assert (parallel.matmul(a[rows], b) == 3).all()

    with parallel.single_threaded_blas(), parallel.configured(chunk_bytes=8, min_split_work=1):
        parallel.map_rows(piece, 40, row_bytes=4)
    np.testing.assert_array_equal(hits, 1)
