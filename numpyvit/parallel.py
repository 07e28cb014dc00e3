"""Row-independent NumPy work on every CPU core, in cache-sized pieces.

NumPy runs elementwise operations, reductions and stacks of small matrix products on one
core; only large matrix products (BLAS) use all of them. For work that is independent row
by row (an activation, a normalization, each image's attention), ``map_rows(fn, n)`` splits
``range(n)`` into contiguous pieces and calls ``fn(rows)`` for each piece, from one thread
per core: NumPy releases the GIL inside its loops, so the pieces run at the same time. The
pieces are also small enough (about ``chunk_bytes`` per array) that a chain of operations
finds its data still in the CPU cache. The result is exactly that of ``fn(slice(0, n))``.

On CuPy (the GPU is already parallel), with one core, or for small work, it is that call.
The number of threads is the CPU count, or ``$NUMPYVIT_THREADS``.
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CHUNK_BYTES = 256 * 1024                                             # per array, per piece
_pool = None


def num_threads():
    return max(1, int(os.environ.get("NUMPYVIT_THREADS", os.cpu_count() or 1)))


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
    if xp is not np or threads == 1 or n < 2 * rows:
        fn(slice(0, n))
        return
    pieces = [slice(start, min(start + rows, n)) for start in range(0, n, rows)]
    shares = [pieces[i::threads] for i in range(threads)]            # interleaved: balanced

    def work(share):
        for piece in share:
            fn(piece)

    futures = [_thread_pool().submit(work, share) for share in shares[1:]]
    work(shares[0])
    for future in futures:
        future.result()
