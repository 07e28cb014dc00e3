"""erf (numpyvit.special): accuracy against math.erf per dtype, exact odd symmetry, special
values, dtype and memory, out=, refusals, CuPy delegation, and the derivative the GELU uses."""
import math
import sys
import tracemalloc
import types
import warnings

import numpy as np
import pytest

from numpyvit.special import erf

DTYPES = [np.float32, np.float64]
ABS_TOL = {np.float32: 3e-7, np.float64: 1e-15}
# relative error where |erf| is small, down to the smallest normal number (float32's fit minimizes
# absolute error, so its relative error reaches 3.1e-7 around |x| = 0.4)
REL_TOL = {np.float32: 5e-7, np.float64: 1e-14}


def math_erf(x):
    """math.erf of every element, as a float64 array of x's shape."""
    flat = np.asarray(x, dtype=np.float64).ravel()
    return np.array([math.erf(v) for v in flat]).reshape(np.shape(x))


def grid(dtype):
    """[-10, 10] in steps of 1e-4, tiny magnitudes, huge magnitudes; both signs; as dtype."""
    info = np.finfo(dtype)
    tiny = 10.0 ** np.arange(math.ceil(math.log10(info.smallest_normal)), 0)
    huge = [10.0, 26.0, 1e3, 1e30, float(info.max)]
    subnormal = [float(info.smallest_subnormal)]
    positive = np.concatenate([np.linspace(0, 10, 100_001), tiny, huge, subnormal])
    return np.concatenate([-positive, positive]).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_math_erf(dtype):
    x = grid(dtype)
    y = erf(x)
    assert y.dtype == dtype
    assert_worst_within(np.abs(y.astype(np.float64) - math_erf(x)), x, ABS_TOL[dtype], "abs")


def assert_worst_within(err, x, tol, kind):
    worst = err.argmax()
    assert err[worst] <= tol, f"{x.dtype.name}: max {kind} error {err[worst]:.3g} at x = {x[worst]!r}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_relative_accuracy_where_erf_is_small(dtype):
    x = grid(dtype)
    x = x[(np.abs(x) >= np.finfo(dtype).smallest_normal) & (np.abs(x) < 0.5)]
    expected = math_erf(x)
    rel = np.abs(erf(x).astype(np.float64) - expected) / np.abs(expected)
    assert_worst_within(rel, x, REL_TOL[dtype], "relative")


@pytest.mark.parametrize("dtype", DTYPES)
def test_odd_symmetry_is_exact(dtype):
    x = grid(dtype)
    np.testing.assert_array_equal(erf(-x), -erf(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values(dtype):
    big = np.finfo(dtype).max
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 6.0, -6.0, big, -big], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or invalid-value warnings either
        y = erf(x)
    assert y[0] == 0 and not np.signbit(y[0])
    assert y[1] == 0 and np.signbit(y[1])
    np.testing.assert_array_equal(y[2:4], [1, -1])
    assert np.isnan(y[4])
    np.testing.assert_array_equal(y[5:], [1, -1, 1, -1])


def test_float32_never_goes_through_float64():
    x = np.random.default_rng(0).standard_normal((1000, 1000)).astype(np.float32)
    out = np.empty_like(x)
    tracemalloc.start()
    try:
        y = erf(x, out=out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert y is out and y.dtype == np.float32
    # two float32 scratch arrays (clipped x and its square); a float64 one would add 2 * x.nbytes
    assert peak <= 2.5 * x.nbytes, f"peak scratch memory {peak / x.nbytes:.2f} x the input"


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_receives_the_result(dtype):
    x = (3 * np.random.default_rng(1).standard_normal((64, 48))).astype(dtype)
    expected = erf(x)
    out = np.full_like(x, np.nan)
    assert erf(x, out=out) is out
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_may_be_x_itself_or_a_strided_view(dtype):
    x = (3 * np.random.default_rng(2).standard_normal((64, 96))).astype(dtype)
    expected = erf(x)
    in_place = x.copy()
    assert erf(in_place, out=in_place) is in_place
    np.testing.assert_array_equal(in_place, expected)
    strided_out = np.empty((48, 64), dtype).T  # Fortran-ordered view
    erf(x[:, ::2], out=strided_out)
    np.testing.assert_array_equal(strided_out, expected[:, ::2])


def test_refuses_other_dtypes_and_mismatched_out():
    x = np.zeros((2, 3))
    with pytest.raises(TypeError, match="float32 and float64"):
        erf(np.arange(3))
    with pytest.raises(ValueError, match=r"expected shape \(2, 3\) and dtype float64"):
        erf(x, out=np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"expected shape \(2, 3\) and dtype float64"):
        erf(x, out=np.zeros((2, 3), np.float32))


def test_cupy_arrays_go_to_cupyx(monkeypatch):
    calls = []

    def cupyx_erf(x, out=None):
        calls.append((x, out))
        return "cupyx result"

    special = types.ModuleType("cupyx.scipy.special")
    special.erf = cupyx_erf
    for name in ("cupy", "cupyx", "cupyx.scipy"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "cupyx.scipy.special", special)
    cupy_array = type("ndarray", (), {"__module__": "cupy"})
    x, out = cupy_array(), cupy_array()
    assert erf(x) == "cupyx result" and calls == [(x, None)]
    assert erf(x, out=out) == "cupyx result" and calls[-1] == (x, out)


def test_derivative_matches_central_differences():
    """The GELU backward uses erf'(x) = 2/sqrt(pi) exp(-x^2) and is checked against central
    differences of erf in float64, so erf must be smooth, not only accurate. Values of erf near
    +-1 are spaced 1.1e-16 apart, so a difference at h = 1e-6 carries up to ~4 such steps / (2h)
    = 2.2e-10 of rounding noise: the check is relative 1e-8 above that floor (pointwise relative
    1e-8 wherever erf' > 0.022, |x| < 1.98), and relative 1e-8 for the whole vector, as a
    gradient check measures it."""
    x = np.linspace(-6, 6, 120_001)  # steps of 1e-4, through the seam at |x| = 1
    h = 1e-6
    numeric = (erf(x + h) - erf(x - h)) / (2 * h)
    analytic = 2 / math.sqrt(math.pi) * np.exp(-x * x)
    spacing_below_1 = np.finfo(np.float64).eps / 2
    noise = 4 * spacing_below_1 / (2 * h)
    np.testing.assert_allclose(numeric, analytic, rtol=1e-8, atol=noise)
    vector_rel = np.linalg.norm(numeric - analytic) / np.linalg.norm(analytic)
    assert vector_rel <= 1e-8, f"relative error of the whole derivative vector {vector_rel:.3g}"
