"""float32 gradients checked for their values, layer by layer.

Training runs in float32, and some layers have float32-only code (GELU's float32 erf and slope,
the softmax's float32 exponent bound). Central differences cannot check float32 directly (a step h
small enough for the truncation error drowns in float32 rounding), so each layer in float32 is
compared with the same layer in float64 -- itself proven by central differences in test_layers.py
-- on the same weights, input, upstream gradient and dropout masks. Weights, input and upstream
gradient are float32 numbers in both, so the only difference left is float32's rounding inside.

Tolerance (FLOAT32_RTOL, normwise: ||g32 - g64|| / ||g64|| per tensor). Each result here is a sum
of at most n ~ 100 products (the widest contraction in these layers, two or three chained),
computed with unit roundoff u = 2^-24 ~ 6.0e-8. A sum's relative error is at most n u times its
condition number, and far less in practice (random rounding grows as sqrt(n) u): 2e-5 is n u
(6e-6) times a condition number of ~3, and 30-200 times the largest error these layers show
(5e-8 to 7e-7). A real bug is orders of magnitude above it: GELU's float32 slope with its
x^2/2 term reused wrongly is off by up to 0.19 (an error ~1e-1).

The whole model in float32 (every fast path, against the textbook in float64) is checked in
tests/test_reference.py, with its own tolerance.
"""
import numpy as np
import pytest

from numpyvit.backend import to_numpy
from test_layers import LAYERS, build, make_input

FLOAT32_RTOL = 2e-5


def relative_error(got, expected):
    got, expected = to_numpy(got).astype(np.float64), to_numpy(expected)
    return float(np.linalg.norm(got - expected) / max(np.linalg.norm(expected), 1e-300))


def same_masks(module, xp):
    """Random layers draw in float32 whatever their dtype, from a fixed seed each, so a float32
    layer and its float64 twin drop exactly the same elements."""
    for index, layer in enumerate(m for m in module.modules() if hasattr(m, "rng")):
        draws = xp.random.default_rng(index)
        layer.rng = type("Float32Draws", (), {"random": lambda self, shape, dtype, d=draws:
                                               d.random(shape, dtype=np.float32).astype(dtype)})()


def twins(name, xp, rng, perturb):
    """The layer ``name`` in float64 and in float32 with the same float32-representable weights."""
    wide, narrow = build(name, xp, np.float64, rng), build(name, xp, np.float32, rng)
    perturb(wide.module)
    for (_, p64), (_, p32) in zip(wide.module.named_parameters(), narrow.module.named_parameters()):
        p32.data[...] = p64.data.astype(np.float32)
        p64.data[...] = p32.data                                     # float32 values, held in float64
    return wide, narrow


def forward_backward(case, x, dy, xp):
    """Output, input gradient and parameter gradients {name: array} of one training step."""
    same_masks(case.module, xp)
    y = case.module(x, *case.args)
    dx = case.module.backward(dy)
    return y, dx, {name: p.grad for name, p in case.module.named_parameters()}


@pytest.mark.parametrize("name", LAYERS)
def test_float32_gradients_equal_float64_gradients(name, xp, rng, perturb):
    wide, narrow = twins(name, xp, rng, perturb)
    x32 = make_input(narrow, xp, np.float32, rng)
    out_shape = narrow.out_shape
    dy32 = xp.asarray(rng.standard_normal(out_shape), dtype=np.float32)
    y64, dx64, grads64 = forward_backward(wide, x32.astype(np.float64), dy32.astype(np.float64), xp)
    y32, dx32, grads32 = forward_backward(narrow, x32, dy32, xp)
    assert y32.dtype == dx32.dtype == np.float32
    errors = {"output": relative_error(y32, y64), "input gradient": relative_error(dx32, dx64)}
    errors.update({name: relative_error(grads32[name], grads64[name]) for name in grads64})
    report = "\n".join(f"  {tensor:<28} {error:.2e}" for tensor, error in errors.items())
    print(f"{name} (float32 against float64, tolerance {FLOAT32_RTOL:.0e}):\n{report}")
    assert max(errors.values()) <= FLOAT32_RTOL, report
