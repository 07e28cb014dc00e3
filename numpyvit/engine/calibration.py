"""Measuring this machine for numpyvit.parallel.Settings: the piece size of row-wise passes and
the sizes from which splitting work across threads pays (numpyvit.engine.tuning keeps the results).

    chunk_bytes         the piece size at which an exact GELU over 16 MB (more than any cache
                        level) runs fastest, from 64 KB to 2 MB
    min_split_work      the smallest (M x 128) @ (128 x 128) product that runs at least 10% faster
                        cut by rows over the threads than on one thread
    min_split_elements  the same for an elementwise product of n elements
"""
import time

import numpy as np

from .. import parallel
from ..layers.activations import GELU


def calibrate_settings():
    """Measure the three sizes of numpyvit.parallel.Settings on this machine (about a second)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4096, 1024), dtype=np.float32)         # 16 MB: more than any cache level
    y = np.empty_like(x)
    gelu = GELU()
    chunk_times = {}
    for chunk in (2**16, 2**17, 2**18, 2**19, 2**20, 2**21):
        rows = chunk // (1024 * 4)
        chunk_times[chunk] = best_time(lambda: [gelu.compute(x[r:r + rows], y[r:r + rows], None)
                                                for r in range(0, 4096, rows)])
    chunk_bytes = min(chunk_times, key=chunk_times.get)
    return dict(chunk_bytes=chunk_bytes, min_split_work=_split_threshold_matmul(rng),
                min_split_elements=_split_threshold_multiply(rng, chunk_bytes),
                chunk_ms={str(k): round(v * 1e3, 3) for k, v in chunk_times.items()})


def best_time(fn, repeats=3, warm_up=True):
    """The shortest of ``repeats`` timed calls of fn (seconds), after one untimed call."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _split_threshold_matmul(rng):
    """The smallest product (in multiply-adds) that runs faster split across the threads."""
    K = N = 128
    b = rng.standard_normal((K, N), dtype=np.float32)
    for M in (64, 128, 256, 512, 1024, 2048, 4096, 8192):
        a = rng.standard_normal((M, K), dtype=np.float32)
        with parallel.single_threaded_blas(), parallel.configured(min_split_work=1):
            split = best_time(lambda: parallel.matmul(a, b))
            whole = best_time(lambda: parallel.run_on_threads([lambda: parallel.matmul(a, b)]))
        if split < 0.9 * whole:
            return M * K * N
    return 8192 * K * N * 2


def _split_threshold_multiply(rng, chunk_bytes):
    """The smallest elementwise product (in elements) that runs faster split across the threads."""
    for n in (2**14, 2**15, 2**16, 2**17, 2**18, 2**19, 2**20, 2**21):
        a = rng.standard_normal((n // 256, 256), dtype=np.float32)
        with parallel.configured(min_split_elements=1, chunk_bytes=min(chunk_bytes, a.nbytes // 2)):
            split = best_time(lambda: parallel.multiply(a, a))
            whole = best_time(lambda: np.multiply(a, a))
        if split < 0.9 * whole:
            return n
    return 2**22
