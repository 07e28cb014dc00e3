"""Layer normalization over the last axis (timm's eps 1e-6).

Shapes: x, y (..., D); weight g and bias b (D,).

Forward:   mu = mean(x),  rstd = 1 / sqrt(mean((x - mu)^2) + eps)
           xhat = (x - mu) * rstd,  y = xhat * g + b
Backward:  dg += sum(dy * xhat),  db += sum(dy)             (summed over all leading axes)
           dxhat = dy * g
           dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
Caches: xhat (..., D) and rstd (..., 1): x and mu are not needed again, because the
backward formula is written in terms of the normalized input.

``normalize(x)`` returns xhat alone, for a Linear that folds g and b into its own weights
(``Linear.forward(xhat, affine=norm)``: (xhat g + b) W^T = xhat (W diag g)^T + W b, which costs
O(D x out) per step instead of two passes over every activation, and the Linear then also
computes dg and db). Its backward takes dxhat, the gradient of xhat, and skips the dg / db sums.
Folding pays when the activations outnumber the weights' rows (M >= out): it reads and writes W
a few times per call, where applying g and b costs two passes over the (M, D) activations
(cheap ones: done while each piece of rows is in cache). ``for_linear`` picks the cheaper.
"""
import numpy as np

from ..backend import array_module
from ..parallel import map_rows, multiply
from .base import Module, new_parameter
from .reductions import col_sum, row_dot, row_mean


class LayerNorm(Module):
    def __init__(self, dim, eps=1e-6, *, xp=np, dtype=np.float32):
        self.dim, self.eps = dim, eps
        self.weight = new_parameter(np.ones(dim), xp, dtype, weight_decay=False)
        self.bias = new_parameter(np.zeros(dim), xp, dtype, weight_decay=False)

    def forward(self, x):
        """y = xhat * g + b."""
        return self._normalize(x, affine=True)

    def normalize(self, x):
        """xhat = (x - mu) * rstd, for a following Linear that applies g and b (see above)."""
        return self._normalize(x, affine=False)

    def for_linear(self, x, linear):
        """(input, affine) such that ``linear(input, affine)`` is ``linear(self(x))``: xhat with g
        and b folded into the product when x has at least as many rows M as the product has
        outputs, else y = xhat g + b and no folding (see above)."""
        if x.size // x.shape[-1] >= linear.out_features:
            return self.normalize(x), self
        return self.forward(x), None

    def _normalize(self, x, affine):
        xp, D = array_module(x), self.dim
        if x.shape[-1] != D:
            raise ValueError(f"LayerNorm({D}) needs inputs whose last axis is {D}, got shape {tuple(x.shape)}")
        x2 = x.reshape(-1, D)                                        # (M, D)
        xhat = xp.empty_like(x2)
        y = xp.empty_like(x2) if affine else xhat
        rstd = xp.empty((x2.shape[0], 1), dtype=x.dtype)
        g, b, inv_d, eps = self.weight.data, self.bias.data, x.dtype.type(1.0 / D), x.dtype.type(self.eps)

        def normalize(r):                                            # rows r
            xh = xhat[r]
            xp.subtract(x2[r], row_mean(x2[r], keepdims=True), out=xh)        # x - mu
            rstd[r] = (row_dot(xh, xh, keepdims=True) * inv_d + eps) ** -0.5
            xh *= rstd[r]
            if affine:
                xp.multiply(xh, g, out=y[r])
                y[r] += b

        map_rows(normalize, x2.shape[0], D * x.itemsize, xp)
        self._save_for_backward(xhat, rstd, affine)
        return y.reshape(x.shape)

    def backward(self, dy):
        """dx from dy (after ``forward``) or from dxhat (after ``normalize``)."""
        xhat, rstd, affine = self._saved()
        xp = array_module(dy)
        dxhat = dy.reshape(xhat.shape)                               # (M, D)
        if affine:                                                   # in the forward y = xhat g + b
            dy2 = dxhat
            self.weight.accumulate(col_sum(multiply(dy2, xhat)))     # dg = sum(dy * xhat)
            self.bias.accumulate(col_sum(dy2))
            dxhat = dy2 * self.weight.data                           # dxhat = dy g
        dx = xp.empty_like(dxhat)
        inv_d = dy.dtype.type(1.0 / self.dim)

        def through_normalize(r):                                    # in the forward xhat = (x - mu) rstd
            mean_dxhat_xhat = row_dot(dxhat[r], xhat[r], keepdims=True) * inv_d
            d = dx[r]
            xp.subtract(dxhat[r], row_mean(dxhat[r], keepdims=True), out=d)
            d -= xp.multiply(xhat[r], mean_dxhat_xhat)
            d *= rstd[r]

        map_rows(through_normalize, dxhat.shape[0], self.dim * dy.itemsize, xp)
        return dx.reshape(dy.shape)
