"""Choosing the array library: NumPy on the CPU (default) or CuPy on an NVIDIA GPU.

This is the one place that knows about both. The choice is made by an argument
(``get_xp("cupy")``) or, when none is given, by the environment variable
``NUMPYVIT_BACKEND``. Layer code never imports NumPy-or-CuPy itself: it asks
``array_module(x)`` for the module that owns its input, so the same lines run on both.
"""

import numpy as np

from . import environment
from .errors import InputError

BACKENDS = environment.BACKENDS
ENV_VAR = "NUMPYVIT_BACKEND"


class BackendError(InputError):
    """The requested backend is unknown or cannot run on this machine."""


def backend_name(name=None):
    """The backend to use: ``name`` if given, else ``$NUMPYVIT_BACKEND``, else 'numpy'."""
    chosen = name if name is not None else environment.backend() or "numpy"
    chosen = str(chosen).strip().lower()
    if chosen not in BACKENDS:
        source = "backend argument" if name is not None else f"environment variable {ENV_VAR}"
        raise BackendError(
            f"unknown backend {chosen!r} (from the {source}); choose one of {', '.join(BACKENDS)}"
        )
    return chosen


def get_xp(name=None):
    """The array module (``numpy`` or ``cupy``) for a backend name; see ``backend_name``."""
    if backend_name(name) == "numpy":
        return np
    return _import_cupy()


def _import_cupy():
    try:
        import cupy
    except ImportError as err:
        raise BackendError(
            "backend 'cupy' needs CuPy, which is not installed: install the build for your CUDA "
            "version (`pip install cupy-cuda13x` for CUDA 13, as `pip install -e .[gpu]` does, or "
            "`pip install cupy-cuda12x` for CUDA 12), "
            "or use --backend numpy"
        ) from err
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDA driver missing or broken: CuPy raises its own runtime error
        raise BackendError(f"backend 'cupy' found no usable CUDA device ({err}); use --backend numpy") from err
    if count == 0:
        raise BackendError("backend 'cupy' found no CUDA device on this machine; use --backend numpy")
    return cupy


def array_module(x):
    """``cupy`` if ``x`` is a CuPy array, else ``numpy`` (like ``cupy.get_array_module``)."""
    if type(x).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def to_numpy(x):
    """A NumPy copy-or-view of a NumPy or CuPy array (moves GPU data to the host)."""
    return x.get() if array_module(x) is not np else np.asarray(x)


_allocator_tuned = False


def tune_allocator():
    """Ask glibc's malloc to keep freed memory for reuse instead of giving it back to the OS.

    A training step allocates and frees hundreds of MB of activations. By default glibc
    returns large blocks to the operating system (munmap, heap trimming) and takes them back
    on the next step, and every fresh 4 KB page costs a page fault plus zeroing: about 45,000
    faults and a third of the step time for mnist_small on the CPU. With blocks up to 32 MB
    served from the heap and the heap trimmed only above 1 GB of free space, the same memory
    is reused; peak memory is unchanged. Called when a NumPy-backend model is built. Linux
    with glibc only (elsewhere nothing happens); ``NUMPYVIT_MALLOC_TUNING=0`` turns it off.
    """
    global _allocator_tuned
    if _allocator_tuned or not environment.malloc_tuning():
        return
    _allocator_tuned = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):                                # not glibc
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
    mallopt(M_TRIM_THRESHOLD, 2**30)
