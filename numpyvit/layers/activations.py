"""Elementwise activations: GELU (exact and tanh approximation) and ReLU.
Implements numpyvit.reference.activation_forward / activation_backward (docs/math.md, section 7).

Shapes: x, y any shape (here (B, T, F) inside the MLP).

Every activation here is y = f(x) applied elementwise, so its backward is
    dx = dy * f'(x).
Forward computes f'(x) while the values it is made of are at hand (unless under
numpyvit.no_grad()) and caches that one array; backward is then a single multiply. Forward runs on
pieces of rows in parallel (numpyvit.parallel), writing into preallocated outputs.

GELU (exact):  f(x) = x * Phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2   (normal CDF)
               f'(x) = Phi(x) + x * phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)   (normal PDF)
               In float32, erf(x / sqrt 2) = tanh(x Q(x^2)): numpyvit.special's float32 erf,
               erf(z) = tanh(z P(z^2)), with z = x / sqrt 2 folded into the coefficients,
               Q(s) = P(s / 2) / sqrt 2, so x^2 serves both the polynomial and phi, and no pass
               scales or clips x. No clip is needed: x Q(x^2) >= 6.29 for every x >= 4.5 (and
               <= -6.29 for x <= -4.5), and tanh(6.29) = 1 - 6.9e-6 in float32, as close to 1 as
               the true erf(4.5 / sqrt 2) = 1 - 6.8e-6; float32 tanh returns exactly 1 from 10 on
               (|x| >= 5.75 here), and past |x| ~ 4360 x Q(x^2) overflows to +-inf, where
               tanh(+-inf) = +-1, so Phi is still exactly 0 or 1.
               float64 (gradient checks) uses numpyvit.special.erf.
GELU (tanh):   f(x) = x * (1 + tanh(u)) / 2,  u = sqrt(2/pi) * (x + 0.044715 x^3)
               f'(x) = (1 + t) / 2 + x * (1 - t^2) / 2 * sqrt(2/pi) * (1 + 3 * 0.044715 x^2),  t = tanh(u)
ReLU:          f(x) = max(x, 0),  f'(x) = 1 if x > 0 else 0
"""
import abc
import math

import numpy as np

from ..backend import array_module
from ..grad_mode import grad_enabled
from ..parallel import map_rows, multiply
from ..special import P32, erf, horner
from .base import Module

SQRT_HALF = math.sqrt(0.5)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
Q32 = tuple(float(np.float32(p / (2.0**k * math.sqrt(2.0)))) for k, p in enumerate(P32))  # Q(s) = P(s/2) / sqrt 2
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
TANH_CUBIC = 0.044715


class Activation(Module, abc.ABC):
    """y = f(x); backward dx = dy * f'(x), with f'(x) computed in forward."""

    slope_dtype = None                                               # None: x's dtype

    def forward(self, x):
        xp = array_module(x)
        y = xp.empty_like(x)
        slope = xp.empty(x.shape, dtype=self.slope_dtype or x.dtype) if grad_enabled() else None
        x2, y2 = x.reshape(-1, x.shape[-1]), y.reshape(-1, x.shape[-1])       # (M, n) views
        s2 = None if slope is None else slope.reshape(x2.shape)
        map_rows(lambda r: self.compute(x2[r], y2[r], None if s2 is None else s2[r]),
                 x2.shape[0], x2.shape[1] * x.itemsize, xp)
        self._save_for_backward(slope)
        return y

    def backward(self, dy):
        (slope,) = self._saved()
        return multiply(dy, slope)                                   # dy * slope, on all cores

    @abc.abstractmethod
    def compute(self, x, y, slope):
        """Write f(x) into y and, unless slope is None, f'(x) into slope."""


class GELU(Activation):
    """Exact GELU, x * Phi(x) with the erf-based normal CDF (PyTorch's default)."""

    def compute(self, x, y, slope):
        xp, c = array_module(x), x.dtype.type
        if x.dtype == np.float32:
            s = xp.multiply(x, x)                                    # x^2
            horner(s, Q32, out=y)
            y *= x
            xp.tanh(y, out=y)                                        # erf(x / sqrt 2)
        else:
            s = None
            erf(x * c(SQRT_HALF), out=y)                             # erf(x / sqrt 2)
        y *= c(0.5)
        y += c(0.5)                                                  # Phi(x)
        if slope is not None:
            s = xp.multiply(x, x) if s is None else s                # x^2 (float32: still there)
            s *= c(-0.5)
            xp.exp(s, out=s)
            s *= x
            s *= c(INV_SQRT_2PI)                                     # x phi(x)
            xp.add(y, s, out=slope)                                  # Phi(x) + x phi(x)
        y *= x


class GELUTanh(Activation):
    """GELU with the tanh approximation (timm's 'gelu_tanh', the original BERT/GPT-2 form)."""

    def compute(self, x, y, slope):
        xp, c = array_module(x), x.dtype.type
        x2 = x * x
        xp.tanh(c(SQRT_2_OVER_PI) * x * (1 + c(TANH_CUBIC) * x2), out=y)     # t = tanh(u)
        if slope is not None:
            xp.multiply(y, y, out=slope)
            xp.subtract(1, slope, out=slope)                         # 1 - t^2
            slope *= 0.5 * x
            slope *= c(SQRT_2_OVER_PI) * (1 + c(3 * TANH_CUBIC) * x2)
            slope += 0.5 * (1 + y)
        y += 1
        y *= 0.5 * x


class ReLU(Activation):
    slope_dtype = bool

    def compute(self, x, y, slope):
        xp = array_module(x)
        xp.maximum(x, 0, out=y)
        if slope is not None:
            xp.greater(x, 0, out=slope)


ACTIVATIONS = {"gelu": GELU, "gelu_tanh": GELUTanh, "relu": ReLU}


def make_activation(name):
    """An activation layer by name: 'gelu' (exact), 'gelu_tanh' or 'relu'."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()
