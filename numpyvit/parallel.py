"""Spreading NumPy work over the CPU cores: threads, pieces, and BLAS's own threads.

NumPy runs elementwise operations, reductions and stacks of small matrix products on one
core; only large matrix products (BLAS) use all of them, on BLAS's own thread pool. numpyvit
uses the other cores by one of four strategies, chosen per model and batch by ``numpyvit.engine.tuning``
from measurements on the machine it runs on:

  processes  every core runs the whole model on its slice of the batch, in worker processes
             (``numpyvit.engine.workers``): two hand-offs a step, no shared interpreter lock;
  threads    the same shards on threads of this process (``numpyvit.engine.shards``);
  split      one thread runs the layers; each large product is cut by rows into one piece per
             thread (``matmul``) and each row-wise pass into cache-sized pieces (``map_rows``);
  blas       like split, but products run on BLAS's own threads (fewer hand-offs for small work).

All but the last keep BLAS on one thread (``single_threaded_blas``): OpenBLAS's idle threads
keep spinning for a while after each product, holding a core that numpyvit's threads need next.

``map_rows(fn, n)`` calls ``fn(rows)`` over pieces of ``range(n)`` of about
``settings.chunk_bytes`` per array, so a chain of operations finds its data still in the CPU
cache; from one thread per core (NumPy releases the GIL inside its loops), or in order on the
calling thread when it is itself one of numpyvit's workers (a shard). The result is exactly that
of ``fn(slice(0, n))``. On CuPy (the GPU is already parallel) it is that call.
The number of threads is the number of CPUs this process may use, or ``$NUMPYVIT_THREADS``.
"""
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from . import environment
from .backend import array_module
from .grad_mode import grad_enabled, set_grad_enabled


@dataclass(frozen=True)
class Settings:
    """How work is cut into pieces (numpyvit.engine.tuning measures them per machine)."""

    chunk_bytes: int = 256 * 1024      # per array, per piece of a row-wise pass
    min_split_work: int = 2**18        # multiply-adds below which a product runs in one piece
    min_split_elements: int = 2**18    # elements below which multiply / add_in_place run in one piece


settings = Settings()
_pool = None
_local = threading.local()             # .worker: this thread is one of numpyvit's workers


@contextlib.contextmanager
def configured(**changes):
    """Temporarily change ``settings`` (tests, calibration)."""
    global settings
    saved, settings = settings, replace(settings, **changes)
    try:
        yield settings
    finally:
        settings = saved


def num_threads():
    """$NUMPYVIT_THREADS (checked by numpyvit.environment), else the cores this process may use."""
    return environment.threads()


def in_worker():
    """True on a thread already running numpyvit work in parallel with others (no nesting)."""
    return getattr(_local, "worker", False)


def _thread_pool():
    global _pool
    if _pool is None or _pool._max_workers < num_threads() - 1:
        _pool = ThreadPoolExecutor(num_threads() - 1, thread_name_prefix="numpyvit")
    return _pool


def run_on_threads(tasks):
    """[task() for task in tasks], task 0 on this thread and each other on a pool thread, all
    at once; each runs as a worker (its own map_rows / matmul run in place, not nested), under
    the caller's floating-point error settings and grad mode (both are per thread)."""
    errors, grad = np.geterr(), grad_enabled()

    def work(task):
        was = in_worker()
        _local.worker = True
        try:
            return task()
        finally:
            _local.worker = was

    def on_pool_thread(task):
        with np.errstate(**errors), set_grad_enabled(grad):
            return work(task)

    futures = [_thread_pool().submit(on_pool_thread, task) for task in tasks[1:]]
    first = work(tasks[0])
    return [first] + [future.result() for future in futures]


def map_rows(fn, n, row_bytes, xp=np):
    """Call ``fn(slice)`` over pieces of ``range(n)``; ``row_bytes`` is the size of one row of the
    largest array ``fn`` touches (to size the pieces)."""
    rows = max(1, settings.chunk_bytes // max(1, row_bytes))
    if xp is not np or n < 2 * rows:
        fn(slice(0, n))
        return
    pieces = [slice(start, min(start + rows, n)) for start in range(0, n, rows)]
    threads = 1 if in_worker() else num_threads()
    if threads == 1:                                                 # in order, on this thread
        for piece in pieces:
            fn(piece)
        return
    run_on_threads([(lambda share=pieces[i::threads]: [fn(piece) for piece in share])   # interleaved
                    for i in range(min(threads, len(pieces)))])


# ----- BLAS threads -------------------------------------------------------------------------------
_blas = None                           # threadpoolctl's controllers of the loaded BLAS libraries
_owner = dict(depth=0, saved=None)     # single_threaded_blas() nesting, and the thread counts before it
_owner_lock = threading.Lock()


def blas_libraries():
    """threadpoolctl's controllers of the BLAS libraries loaded in this process (OpenBLAS, MKL,
    BLIS, on Linux, macOS and Windows); empty if none can be controlled."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController().select(user_api="blas").lib_controllers
    return _blas


@contextlib.contextmanager
def single_threaded_blas():
    """While inside (re-entrant; also a decorator), BLAS runs on one thread and ``matmul`` spreads
    large products over numpyvit's threads itself; BLAS's thread counts come back after."""
    libraries = blas_libraries() if num_threads() > 1 else []
    with _owner_lock:
        if _owner["depth"] == 0:
            _owner["saved"] = [lib.num_threads for lib in libraries]
            for lib in libraries:
                lib.set_num_threads(1)
        _owner["depth"] += 1
    try:
        yield
    finally:
        with _owner_lock:
            _owner["depth"] -= 1
            if _owner["depth"] == 0:
                for lib, count in zip(libraries, _owner["saved"]):
                    lib.set_num_threads(count)


# ----- matrix products -------------------------------------------------------------------------
def matmul(a, b, bias=None):
    """``a @ b (+ bias)`` for a (M, K), b (K, N) or (K,), bias (N,): inside ``single_threaded_blas()``,
    on NumPy and off the workers, rows of a (and of the result) are split into one contiguous
    piece per thread."""
    threads = num_threads()
    if (_owner["depth"] == 0 or threads == 1 or in_worker() or not isinstance(a, np.ndarray)
            or a.size * (b.shape[-1] if b.ndim == 2 else 1) < settings.min_split_work):
        out = a @ b
        if bias is not None:
            out += bias
        return out
    out = np.empty((a.shape[0],) + b.shape[1:], dtype=np.result_type(a, b))

    def piece(rows):
        np.matmul(a[rows], b, out=out[rows])
        if bias is not None:
            out[rows] += bias                                        # while the piece is in cache

    M = a.shape[0]
    bounds = [M * i // threads for i in range(threads + 1)]
    run_on_threads([(lambda r=slice(bounds[i], bounds[i + 1]): piece(r)) for i in range(threads)])
    return out


# ----- elementwise ----------------------------------------------------------------------------
def multiply(a, b):
    """``a * b`` for arrays of one shape, computed on all cores."""
    xp = array_module(a)
    out = xp.empty(a.shape, dtype=xp.result_type(a, b))
    _rowwise(lambda a_rows, b_rows, out_rows: xp.multiply(a_rows, b_rows, out=out_rows), (a, b), out)
    return out


def add_in_place(out, x):
    """``out += x`` for arrays of one shape, computed on all cores."""
    xp = array_module(out)
    if not out.flags.c_contiguous:                                   # pieces must be views of out
        out += x
        return out
    _rowwise(lambda x_rows, out_rows: xp.add(out_rows, x_rows, out=out_rows), (x,), out)
    return out


def _rowwise(fn, inputs, out):
    """``fn(*input_rows, out_rows)`` over pieces of rows of C-contiguous ``out``."""
    if out.size < settings.min_split_elements:
        fn(*inputs, out)
        return
    n = out.shape[-1]
    inputs2, out2 = [v.reshape(-1, n) for v in inputs], out.reshape(-1, n)  # (M, n) views
    map_rows(lambda r: fn(*(v[r] for v in inputs2), out2[r]), out2.shape[0], n * out.itemsize,
             array_module(out))
