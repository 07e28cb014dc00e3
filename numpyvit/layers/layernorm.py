"""Layer normalization over the last axis (timm's eps 1e-6).

Shapes: x, y (..., D); weight g and bias b (D,).

Forward:   mu = mean(x),  rstd = 1 / sqrt(mean((x - mu)^2) + eps)
           xhat = (x - mu) * rstd,  y = xhat * g + b
Backward:  dg += sum(dy * xhat),  db += sum(dy)             (summed over all leading axes)
           dxhat = dy * g
           dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
Caches: xhat (..., D) and rstd (..., 1): x and mu are not needed again, because the
backward formula is written in terms of the normalized input.
"""
import numpy as np

from .base import Module, new_parameter


class LayerNorm(Module):
    def __init__(self, dim, eps=1e-6, *, xp=np, dtype=np.float32):
        self.dim, self.eps = dim, eps
        self.weight = new_parameter(np.ones(dim), xp, dtype, weight_decay=False)
        self.bias = new_parameter(np.zeros(dim), xp, dtype, weight_decay=False)

    def forward(self, x):
        xhat = x - x.mean(axis=-1, keepdims=True)                   # (..., D), centred
        var = (xhat * xhat).mean(axis=-1, keepdims=True)            # (..., 1)
        rstd = (var + self.eps) ** -0.5
        xhat *= rstd
        y = xhat * self.weight.data
        y += self.bias.data
        self._save_for_backward(xhat, rstd)
        return y

    def backward(self, dy):
        xhat, rstd = self._saved()
        lead = tuple(range(dy.ndim - 1))
        self.weight.accumulate((dy * xhat).sum(axis=lead))
        self.bias.accumulate(dy.sum(axis=lead))
        dxhat = dy * self.weight.data                                # (..., D)
        dx = dxhat - dxhat.mean(axis=-1, keepdims=True)
        dx -= xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)
        dx *= rstd
        return dx
