"""Choosing the array library: NumPy on the CPU (default) or CuPy on an NVIDIA GPU.

This is the one place that knows about both. The choice is made by an argument
(``get_xp("cupy")``) or, when none is given, by the environment variable
``NUMPYVIT_BACKEND``. Layer code never imports NumPy-or-CuPy itself: it asks
``array_module(x)`` for the module that owns its input, so the same lines run on both.
"""
import os

import numpy as np

BACKENDS = ("numpy", "cupy")
ENV_VAR = "NUMPYVIT_BACKEND"


class BackendError(ValueError):
    """The requested backend is unknown or cannot run on this machine."""


def backend_name(name=None):
    """The backend to use: ``name`` if given, else ``$NUMPYVIT_BACKEND``, else 'numpy'."""
    chosen = name if name is not None else os.environ.get(ENV_VAR) or "numpy"
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
            "version (e.g. `pip install cupy-cuda12x`, or `pip install -e .[gpu]`), "
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
