"""Elementwise activations: GELU (exact and tanh approximation) and ReLU.

Shapes: x, y any shape (here (B, N, hidden) inside the MLP).

Every activation here is y = f(x) applied elementwise, so its backward is
    dx = dy * f'(x).
Forward computes f'(x) while the values it is made of are at hand (in training mode
only) and caches that one array; backward is then a single multiply.

GELU (exact):  f(x) = x * Phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2   (normal CDF)
               f'(x) = Phi(x) + x * phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)   (normal PDF)
GELU (tanh):   f(x) = x * (1 + tanh(u)) / 2,  u = sqrt(2/pi) * (x + 0.044715 x^3)
               f'(x) = (1 + t) / 2 + x * (1 - t^2) / 2 * sqrt(2/pi) * (1 + 3 * 0.044715 x^2),  t = tanh(u)
ReLU:          f(x) = max(x, 0),  f'(x) = 1 if x > 0 else 0
"""
import abc
import math

from ..backend import array_module
from ..special import erf
from .base import Module

SQRT_HALF = math.sqrt(0.5)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
TANH_CUBIC = 0.044715


class Activation(Module, abc.ABC):
    """y = f(x); backward dx = dy * f'(x), with f'(x) computed in forward."""

    def forward(self, x):
        y, slope = self.value_and_slope(x, need_slope=self.training)
        self._save_for_backward(slope)
        return y

    def backward(self, dy):
        (slope,) = self._saved()
        return dy * slope

    @abc.abstractmethod
    def value_and_slope(self, x, need_slope):
        """(f(x), f'(x) or None)."""


class GELU(Activation):
    """Exact GELU, x * Phi(x) with the erf-based normal CDF (PyTorch's default)."""

    def value_and_slope(self, x, need_slope):
        xp = array_module(x)
        cdf = erf(x * x.dtype.type(SQRT_HALF))                      # erf(x / sqrt 2)
        cdf += 1
        cdf *= 0.5                                                  # Phi(x)
        y = x * cdf
        if not need_slope:
            return y, None
        slope = xp.exp(x * x * x.dtype.type(-0.5))
        slope *= x.dtype.type(INV_SQRT_2PI)                         # phi(x)
        slope *= x
        slope += cdf                                                # Phi(x) + x phi(x)
        return y, slope


class GELUTanh(Activation):
    """GELU with the tanh approximation (timm's 'gelu_tanh', the original BERT/GPT-2 form)."""

    def value_and_slope(self, x, need_slope):
        xp = array_module(x)
        c = x.dtype.type(SQRT_2_OVER_PI)
        x2 = x * x
        t = xp.tanh(c * x * (1 + TANH_CUBIC * x2))                 # tanh(u)
        half_x = 0.5 * x
        y = half_x * (1 + t)
        if not need_slope:
            return y, None
        slope = 1 - t * t
        slope *= half_x
        slope *= c * (1 + (3 * TANH_CUBIC) * x2)
        slope += 0.5 * (1 + t)
        return y, slope


class ReLU(Activation):
    def value_and_slope(self, x, need_slope):
        positive = x > 0
        return x * positive, (positive if need_slope else None)


ACTIVATIONS = {"gelu": GELU, "gelu_tanh": GELUTanh, "relu": ReLU}


def make_activation(name):
    """An activation layer by name: 'gelu' (exact), 'gelu_tanh' or 'relu'."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()
