"""Choosing NumPy or CuPy: by argument or $NUMPYVIT_BACKEND, with clear errors.

CuPy itself is faked here where a test is about what happens when it is missing or sees no
GPU; the tests that run real CuPy use the ``xp`` fixture and are skipped without a GPU.
"""
import sys
import types

import numpy as np
import pytest

import numpyvit
from numpyvit import BackendError, VisionTransformer, get_xp, to_numpy
from numpyvit.backend import array_module
from numpyvit.environment import EnvironmentVariableError

SMALL = dict(img_size=8, patch_size=4, num_classes=3, embed_dim=8, depth=1, num_heads=2)


@pytest.fixture(autouse=True)
def no_backend_env(monkeypatch):
    monkeypatch.delenv("NUMPYVIT_BACKEND", raising=False)


def fake_cupy(monkeypatch, get_device_count):
    """Install a stand-in ``cupy`` module whose runtime reports devices via ``get_device_count``."""
    module = types.ModuleType("cupy")
    module.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count))
    monkeypatch.setitem(sys.modules, "cupy", module)


# ----- choosing --------------------------------------------------------------------------------------
def test_numpy_is_the_default():
    assert get_xp() is np


@pytest.mark.parametrize("name", ["numpy", "NumPy", " numpy "])
def test_backend_names_are_case_and_space_insensitive(name):
    assert get_xp(name) is np


def test_environment_variable_chooses_when_no_argument_is_given(monkeypatch):
    monkeypatch.setenv("NUMPYVIT_BACKEND", "numpy")
    assert get_xp() is np
    assert VisionTransformer(**SMALL).xp is np


def test_argument_wins_over_the_environment_variable(monkeypatch):
    monkeypatch.setenv("NUMPYVIT_BACKEND", "tpu")
    assert get_xp("numpy") is np
    assert VisionTransformer(**SMALL, backend="numpy").config["backend"] == "numpy"


def test_empty_environment_variable_means_numpy(monkeypatch):
    monkeypatch.setenv("NUMPYVIT_BACKEND", "")
    assert get_xp() is np


# ----- refusing --------------------------------------------------------------------------------------
def test_unknown_backend_argument():
    with pytest.raises(BackendError, match=r"unknown backend 'tpu' \(from the backend argument\); "
                                           "choose one of numpy, cupy"):
        get_xp("tpu")
    assert issubclass(BackendError, ValueError)


def test_unknown_backend_from_the_environment_variable(monkeypatch):
    monkeypatch.setenv("NUMPYVIT_BACKEND", "tpu")
    with pytest.raises(EnvironmentVariableError, match=r"NUMPYVIT_BACKEND='tpu' is not accepted: it must be one of numpy, cupy"):
        get_xp()
    with pytest.raises(EnvironmentVariableError, match="NUMPYVIT_BACKEND"):
        VisionTransformer(**SMALL)


def test_unknown_backend_for_a_model_and_a_preset():
    with pytest.raises(BackendError, match="unknown backend 'tpu'"):
        VisionTransformer(**SMALL, backend="tpu")
    with pytest.raises(BackendError, match="unknown backend 'tpu'"):
        numpyvit.create_model("mnist_tiny", backend="tpu")


def test_cupy_not_installed_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)                 # makes `import cupy` fail
    with pytest.raises(BackendError, match=r"backend 'cupy' needs CuPy, which is not installed.*"
                                           r"pip install cupy-cuda13x.*cupy-cuda12x.*--backend numpy"):
        get_xp("cupy")
    monkeypatch.setenv("NUMPYVIT_BACKEND", "cupy")
    with pytest.raises(BackendError, match="pip install cupy-cuda13x"):
        VisionTransformer(**SMALL)


def test_weights_loaded_into_a_device_model_are_moved_to_the_device(monkeypatch):
    """CuPy refuses ``device_array[...] = numpy_array`` ("non-scalar numpy.ndarray cannot be used
    for fill"); faked here, load_state_dict must move each array with the device module first."""
    class DeviceArray(np.ndarray):
        def __setitem__(self, key, value):
            if type(value) is np.ndarray and value.ndim:
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            super().__setitem__(key, np.asarray(value))

    DeviceArray.__module__ = "cupy._core.core"                     # what array_module looks at
    device = types.ModuleType("cupy")
    device.asarray = lambda a, dtype=None: np.asarray(a, dtype).view(DeviceArray)
    monkeypatch.setitem(sys.modules, "cupy", device)
    model = VisionTransformer(**SMALL)
    for p in model.parameters():
        p.data = p.data.view(DeviceArray)
    host = {name: np.full(p.shape, 0.5, np.float32) for name, p in model.named_parameters()}
    model.load_state_dict(host)
    for name, p in model.named_parameters():
        assert type(p.data) is DeviceArray and (np.asarray(p.data) == 0.5).all(), name


def test_cupy_without_a_gpu(monkeypatch):
    fake_cupy(monkeypatch, lambda: 0)
    with pytest.raises(BackendError, match="backend 'cupy' found no CUDA device on this machine"):
        get_xp("cupy")


def test_cupy_with_a_broken_driver(monkeypatch):
    def broken():
        raise RuntimeError("cudaErrorInsufficientDriver")

    fake_cupy(monkeypatch, broken)
    with pytest.raises(BackendError, match=r"found no usable CUDA device \(cudaErrorInsufficientDriver\)"):
        get_xp("cupy")


# ----- arrays on each backend ------------------------------------------------------------------------
def test_array_module_and_to_numpy(xp, backend):
    assert get_xp(backend) is xp
    a = xp.arange(6.0).reshape(2, 3)
    assert array_module(a) is xp
    host = to_numpy(a)
    assert type(host) is np.ndarray
    np.testing.assert_array_equal(host, np.arange(6.0).reshape(2, 3))


def test_a_model_lives_on_its_backend(xp, backend, rng):
    model = VisionTransformer(**SMALL, backend=backend)
    assert model.xp is xp and model.config["backend"] == backend
    for name, p in model.named_parameters():
        assert array_module(p.data) is xp, name
    logits = model(xp.asarray(rng.standard_normal((2, 3, 8, 8)), dtype=np.float32))
    assert array_module(logits) is xp


def test_the_same_seed_gives_the_same_model_on_every_backend(xp, backend, rng):
    on_host = VisionTransformer(**SMALL, dtype="float64", seed=4)
    here = VisionTransformer(**SMALL, dtype="float64", seed=4, backend=backend)
    for (name, a), (_, b) in zip(on_host.named_parameters(), here.named_parameters()):
        np.testing.assert_array_equal(a.data, to_numpy(b.data), err_msg=name)
    x = rng.standard_normal((2, 3, 8, 8))
    np.testing.assert_allclose(to_numpy(here.eval()(xp.asarray(x))), on_host.eval()(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("gpu", [True, False], ids=["gpu_visible", "no_gpu"])
def test_a_broken_cupy_fails_the_gpu_tests_where_a_gpu_is_visible(monkeypatch, gpu):
    import conftest

    fake_cupy(monkeypatch, lambda: (_ for _ in ()).throw(RuntimeError("libcudart.so.13: cannot open")))
    monkeypatch.setattr(conftest, "gpu_visible", lambda: gpu)
    found = conftest._cupy_with_gpu.__wrapped__()
    if gpu:
        assert "RuntimeError: libcudart.so.13: cannot open, yet this machine has an NVIDIA GPU" in found
    else:
        assert found is None
    monkeypatch.setitem(sys.modules, "cupy", None)                   # not installed: a skip, GPU or not
    assert conftest._cupy_with_gpu.__wrapped__() is None
