"""Row-independent NumPy work on every CPU core, in cache-sized pieces.

NumPy runs elementwise operations, reductions and stacks of small matrix products on one
core; only large matrix products (BLAS) use all of them. For work that is independent row
by row (an activation, a normalization, each image's attention), ``map_rows(fn, n)`` splits
``range(n)`` into contiguous pieces and calls ``fn(rows)`` for each piece, from one thread
per core: NumPy releases the GIL inside its loops, so the pieces run at the same time. The
pieces are also small enough (about ``chunk_bytes`` per array) that a chain of operations
finds its data still in the CPU cache. The result is exactly that of ``fn(slice(0, n))``.

On CuPy (the GPU is already parallel), with one core, or for small work, it is that call.
The number of threads is the number of CPUs this process may use, or ``$NUMPYVIT_THREADS``.

Matrix products are the other half of the work. OpenBLAS, the BLAS in NumPy's wheels, runs a
large product on every core with a thread pool of its own, whose threads then keep spinning
for a while, waiting for the next product: a spinning thread holds a core that numpyvit's
threads need for the next LayerNorm or attention. So inside ``own_threads()`` (the forward and
backward of a model with large activations, gradient clipping) OpenBLAS is set to one thread
and ``matmul`` splits each product by rows into one piece per core itself: every core runs
exactly one busy thread and nothing spins. Outside it, and with a BLAS whose threads cannot be
set (not OpenBLAS, or not Linux), BLAS keeps its own threads and ``matmul`` is plain ``a @ b``.
"""
import contextlib
import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .backend import array_module

CHUNK_BYTES = 256 * 1024                                             # per array, per piece
MIN_SPLIT_WORK = 2**18              # multiply-adds below which a product is not worth splitting
MIN_SPLIT_ELEMENTS = 2**18          # elements below which multiply / add_to run in one piece
OWN_THREADS_MIN = 2**19             # activations below which own_threads() leaves BLAS alone
_pool = None
_local = threading.local()          # .worker: this thread is running a piece already


# the CPUs this process may run on (a container or `taskset` may allow fewer than the machine has)
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def num_threads():
    return max(1, int(os.environ.get("NUMPYVIT_THREADS", _CPUS)))


def _thread_pool():
    global _pool
    if _pool is None or _pool._max_workers < num_threads() - 1:
        _pool = ThreadPoolExecutor(num_threads() - 1, thread_name_prefix="numpyvit")
    return _pool


def map_rows(fn, n, row_bytes, xp=np):
    """Call ``fn(slice)`` over pieces of ``range(n)``, in parallel; ``row_bytes`` is the size of
    one row of the largest array ``fn`` touches (to size the pieces)."""
    threads = num_threads()
    rows = max(1, CHUNK_BYTES // max(1, row_bytes))
    if xp is not np or threads == 1 or n < 2 * rows or getattr(_local, "worker", False):  # (no nesting)
        fn(slice(0, n))
        return
    pieces = [slice(start, min(start + rows, n)) for start in range(0, n, rows)]
    _run_shares(fn, [pieces[i::threads] for i in range(threads)])   # interleaved: balanced


def _run_shares(fn, shares):
    """``fn(piece)`` for every piece; shares[0] on this thread, each other share on a pool thread."""
    def work(share):
        _local.worker = True
        try:
            for piece in share:
                fn(piece)
        finally:
            _local.worker = False

    futures = [_thread_pool().submit(work, share) for share in shares[1:]]
    work(shares[0])
    for future in futures:
        future.result()


# ----- matrix products -------------------------------------------------------------------------
_blas = None                        # (set_num_threads, get_num_threads) of OpenBLAS, or False
_owner = dict(depth=0, saved=None)  # own_threads() nesting, and OpenBLAS's thread count before it
_owner_lock = threading.Lock()


def _openblas_threads():
    """OpenBLAS's (set_num_threads, get_num_threads), found among the libraries this process has
    loaded (Linux), or None."""
    global _blas
    if _blas is None:
        _blas = _find_openblas_threads() or False
    return _blas or None


def _find_openblas_threads():
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)                                  # already loaded: same handle
        except OSError:
            continue
        for name in ("scipy_openblas_{}_num_threads64_", "scipy_openblas_{}_num_threads",
                     "openblas_{}_num_threads64_", "openblas_{}_num_threads"):
            setter, getter = getattr(lib, name.format("set"), None), getattr(lib, name.format("get"), None)
            if setter is not None and getter is not None:
                setter.argtypes, setter.restype, getter.restype = [ctypes.c_int], None, ctypes.c_int
                return setter, getter
    return None


@contextlib.contextmanager
def own_threads(activations=None):
    """While inside (re-entrant; also a decorator), OpenBLAS runs on one thread and ``matmul``
    spreads products over numpyvit's threads; the previous BLAS thread count comes back after.

    ``activations``: the number of elements in one layer's activations (batch x tokens x width).
    Below OWN_THREADS_MIN nothing changes: products that small are over in tens of microseconds,
    about what it takes to wake a numpyvit thread, while OpenBLAS's spinning threads start at
    once (mnist_tiny at batch 128 trains ~15% faster that way)."""
    small = activations is not None and activations < OWN_THREADS_MIN
    blas = _openblas_threads() if num_threads() > 1 and not small else None
    if blas is None:
        yield
        return
    set_threads, get_threads = blas
    with _owner_lock:
        if _owner["depth"] == 0:
            _owner["saved"] = get_threads()
            set_threads(1)
        _owner["depth"] += 1
    try:
        yield
    finally:
        with _owner_lock:
            _owner["depth"] -= 1
            if _owner["depth"] == 0:
                set_threads(_owner["saved"])


def matmul(a, b, bias=None):
    """``a @ b (+ bias)`` for a (M, K), b (K, N) or (K,), bias (N,): inside ``own_threads()``, on
    NumPy, rows of a (and of the result) are split into one contiguous piece per thread."""
    threads = num_threads()
    M = a.shape[0]
    if (_owner["depth"] == 0 or threads == 1 or getattr(_local, "worker", False)
            or not isinstance(a, np.ndarray) or a.size * (b.shape[-1] if b.ndim == 2 else 1) < MIN_SPLIT_WORK):
        out = a @ b
        if bias is not None:
            out += bias
        return out
    out = np.empty((M,) + b.shape[1:], dtype=np.result_type(a, b))

    def piece(rows):
        np.matmul(a[rows], b, out=out[rows])
        if bias is not None:
            out[rows] += bias                                        # while the piece is in cache

    bounds = [M * i // threads for i in range(threads + 1)]
    _run_shares(piece, [[slice(bounds[i], bounds[i + 1])] for i in range(threads)])
    return out


# ----- elementwise ----------------------------------------------------------------------------
def multiply(a, b):
    """``a * b`` for arrays of one shape, computed on all cores."""
    xp = array_module(a)
    out = xp.empty(a.shape, dtype=xp.result_type(a, b))
    _rowwise(lambda a_rows, b_rows, out_rows: xp.multiply(a_rows, b_rows, out=out_rows), (a, b), out)
    return out


def add_to(out, x):
    """``out += x`` for arrays of one shape, computed on all cores."""
    xp = array_module(out)
    if not out.flags.c_contiguous:                                   # pieces must be views of out
        out += x
        return out
    _rowwise(lambda x_rows, out_rows: xp.add(out_rows, x_rows, out=out_rows), (x,), out)
    return out


def _rowwise(fn, inputs, out):
    """``fn(*input_rows, out_rows)`` over pieces of rows of C-contiguous ``out``."""
    if out.size < MIN_SPLIT_ELEMENTS:
        fn(*inputs, out)
        return
    n = out.shape[-1]
    inputs2, out2 = [v.reshape(-1, n) for v in inputs], out.reshape(-1, n)  # (M, n) views
    map_rows(lambda r: fn(*(v[r] for v in inputs2), out2[r]), out2.shape[0], n * out.itemsize,
             array_module(out))
