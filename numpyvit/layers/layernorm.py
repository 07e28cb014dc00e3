"""Layer normalization over the last axis (timm's eps 1e-6).

Shapes: x, y (..., D); weight g and bias b (D,).

Forward:   mu = mean(x),  rstd = 1 / sqrt(mean((x - mu)^2) + eps)
           xhat = (x - mu) * rstd,  y = xhat * g + b
Backward:  dg += sum(dy * xhat),  db += sum(dy)             (summed over all leading axes)
           dxhat = dy * g
           dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
           where mean(dxhat) = (dy @ g) / D and mean(dxhat * xhat) = ((dy * xhat) @ g) / D,
           so the product dy * xhat serves both dg and the last term.
Caches: xhat (..., D) and rstd (..., 1): x and mu are not needed again, because the
backward formula is written in terms of the normalized input.
"""
import numpy as np

from ..backend import array_module
from .base import Module, new_parameter
from .reductions import col_sum, matvec, row_dot, row_mean


class LayerNorm(Module):
    def __init__(self, dim, eps=1e-6, *, xp=np, dtype=np.float32):
        self.dim, self.eps = dim, eps
        self.weight = new_parameter(np.ones(dim), xp, dtype, weight_decay=False)
        self.bias = new_parameter(np.zeros(dim), xp, dtype, weight_decay=False)

    def forward(self, x):
        xhat = x - row_mean(x, keepdims=True)                       # (..., D), centred
        var = row_dot(xhat, xhat, keepdims=True)                     # (..., 1), times D
        rstd = (var * x.dtype.type(1.0 / self.dim) + x.dtype.type(self.eps)) ** -0.5
        xhat *= rstd
        y = xhat * self.weight.data
        y += self.bias.data
        self._save_for_backward(xhat, rstd)
        return y

    def backward(self, dy):
        xhat, rstd = self._saved()
        xp = array_module(dy)
        g = self.weight.data
        dy_xhat = dy * xhat                                          # (..., D)
        self.weight.accumulate(col_sum(dy_xhat))
        self.bias.accumulate(col_sum(dy))
        inv_d = dy.dtype.type(1.0 / self.dim)
        mean_dxhat = matvec(dy, g, keepdims=True) * inv_d            # (..., 1)
        mean_dxhat_xhat = matvec(dy_xhat, g, keepdims=True) * inv_d  # (..., 1)
        dx = dy * g                                                  # dxhat
        dx -= mean_dxhat
        dx -= xp.multiply(xhat, mean_dxhat_xhat, out=dy_xhat)        # reuses the buffer
        dx *= rstd
        return dx
