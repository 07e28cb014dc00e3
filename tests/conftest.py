"""Shared fixtures for the core tests.

``xp``               the array module to run on: ``numpy`` always, ``cupy`` only where CuPy
                     imports and sees a CUDA GPU (skipped otherwise; failed where a GPU is visible
                     but CuPy does not work). Every gradient check uses it.
``torch``            PyTorch as an oracle (``oracle``: skipped where missing, required with
                     NUMPYVIT_ORACLES=1); such tests, and test_timm_parity / test_torch_reference,
                     carry the ``oracle`` mark that CI's second virtualenv runs (.ci/run).
``rng``              a seeded NumPy generator; inputs are drawn on the host and moved with ``xp.asarray``.
``perturb``          moves every parameter of a module to a generic point (see below).
``check_gradients``  runs ``numpyvit.gradcheck`` and fails with its per-tensor report. On CuPy it
                     checks GPU_SAMPLE random elements per tensor (every one on NumPy, which runs
                     the same layer code): each element costs a few forward passes, and a GPU
                     forward of a tiny model is all launch overhead.

Why perturb: the default init puts the [CLS] token at ~1e-6 and LayerNorm weights at exactly
1, biases at 0. Near a constant vector LayerNorm is extremely curved, so finite differences
lose accuracy there (a property of the function, not a bug). Checking at a random point
also exercises every term of each backward formula.
"""
import functools
import importlib
import os
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import numpyvit
from numpyvit.backend import array_module

# The tests never measure the machine (numpyvit.engine.tuning) unless a test asks for it, and never write
# into the user's cache: without measuring, a batch with an image per thread is sharded on threads.
os.environ["NUMPYVIT_TUNING"] = "off"
os.environ["NUMPYVIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="numpyvit-tests-")
GPU_SAMPLE = 24                        # elements per tensor that a gradient check perturbs on CuPy


def gpu_visible():
    """An NVIDIA device node exists: a CUDA GPU is there whatever CuPy says."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


@functools.lru_cache(maxsize=None)
def _cupy_with_gpu():
    """The cupy module if it imports and sees a CUDA device; None where CuPy is not installed or
    there is no GPU; an error message where a GPU is visible but CuPy is broken (then the CuPy
    tests fail instead of skipping: a broken install must not pass as 'no GPU')."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
        problem = "CuPy sees no CUDA device"
    except Exception as error:  # not installed; installed but broken; no driver
        if isinstance(error, ModuleNotFoundError) and error.name == "cupy":
            return None
        problem = f"CuPy fails here: {type(error).__name__}: {error}"
    return f"{problem}, yet this machine has an NVIDIA GPU" if gpu_visible() else None


@pytest.fixture(params=["numpy", "cupy"])
def xp(request):
    """The array module under test; test ids read ``[numpy]`` / ``[cupy]``."""
    if request.param == "numpy":
        return np
    return require_cupy()


def require_cupy():
    """CuPy, or the test skips (no CuPy or no GPU) or fails (a GPU with a broken CuPy)."""
    cupy = _cupy_with_gpu()
    if cupy is None:
        pytest.skip("CuPy with a CUDA GPU is not available")
    if isinstance(cupy, str):
        pytest.fail(cupy)
    return cupy


def oracle(name):
    """Import an optional oracle (torch, timm, safetensors): a skip where it is not installed, a
    failure where NUMPYVIT_ORACLES=1 says it must be (CI's oracle virtualenv)."""
    if os.environ.get("NUMPYVIT_ORACLES") == "1":
        return importlib.import_module(name)
    return pytest.importorskip(name)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test downloads: they make their own data."""
    def no_network(url, *args, **kwargs):
        raise AssertionError(f"a test tried to open {url}")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


@pytest.fixture
def torch():
    """PyTorch, as an oracle (tests using it are marked ``oracle``)."""
    return oracle("torch")


def pytest_collection_modifyitems(items):
    for item in items:
        if "torch" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.oracle)


@pytest.fixture
def backend(xp):
    """The backend name matching ``xp`` (for ``VisionTransformer(backend=...)``)."""
    return xp.__name__


@pytest.fixture
def rng():
    return np.random.default_rng(20240607)


@pytest.fixture
def perturb(rng):
    """perturb(module, scale=0.3): add scale * N(0, 1) noise to every parameter, in place."""

    def perturb(module, scale=0.3):
        for _, param in module.named_parameters():
            noise = scale * rng.standard_normal(param.shape)
            param.data += array_module(param.data).asarray(noise, dtype=param.data.dtype)
        return module

    return perturb


@pytest.fixture
def check_gradients():
    """check_gradients(module, x, *args, max_elements=None, tol=1e-6) -> GradcheckReport.

    Asserts that the input gradient (unless check_input=False) and every parameter's gradient
    agree with central differences to ``tol`` (relative error), printing the report if not.
    """

    def check(module, x, *args, max_elements=None, tol=1e-6, check_input=True):
        if array_module(x) is not np:                                # NumPy checks every element of the same code
            max_elements = min(max_elements or GPU_SAMPLE, GPU_SAMPLE)
        report = numpyvit.gradcheck(module, x, *args, max_elements=max_elements, tol=tol,
                                    check_input=check_input)
        expected = (["input"] if check_input else []) + [name for name, _ in module.named_parameters()]
        assert [t.name for t in report.tensors] == expected, str(report)
        assert all(t.checked > 0 for t in report.tensors), str(report)
        assert report.passed, "\n" + str(report)
        assert not module.has_cache(), "gradcheck left forward caches behind"
        return report

    return check
