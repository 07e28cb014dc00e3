"""Layer normalization over the last axis (timm's eps 1e-6).
Implements numpyvit.reference.layernorm_forward / layernorm_backward (docs/math.md, section 4).

Shapes: x, y (..., D), read as M = x.size / D rows of D; weight gamma and bias beta (D,)
(timm's ``weight`` and ``bias``).

Forward, each row on its own (mean(.) is the mean over that row's D values):
           mean = mean(x),  rstd = 1 / sqrt(mean((x - mean)^2) + eps)     (rho in docs/math.md)
           xhat = (x - mean) * rstd,  y = xhat * gamma + beta
Backward:  dgamma += sum over all M rows of dy * xhat,  dbeta += sum over all M rows of dy   (D,)
           dxhat = dy * gamma
           dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))    (means per row again)
Caches: xhat (..., D) and rstd (..., 1): x and its mean are not needed again, because the
backward formula is written in terms of the normalized input.

Speed: folding gamma and beta into the next Linear (W (out, D), b). ``normalize(x)`` returns xhat
alone, and the Linear multiplies it by W' = W diag(gamma) with bias b' = b + W beta (``folded``):
(xhat diag(gamma) + beta) W^T + b = xhat W'^T + b'. That costs O(D x out) per call instead of two
passes over every activation. The Linear's backward gives dxhat = dy W', dW' = dy^T xhat and
db' = sum over rows of dy (out,); by the chain rule (``folded_backward``)
           dW = dW' diag(gamma) + outer(db', beta),   db = db',
           dgamma[i] = sum_o dW'[o, i] W[o, i],   dbeta = W^T db'.
The backward of ``normalize`` takes dxhat and skips the dgamma / dbeta sums. Folding pays when the
activations outnumber the weights' rows (M >= out): it reads and writes W a few times per call,
where applying g and beta costs two passes over the (M, D) activations (cheap ones: done while
each piece of rows is in cache). ``input_for`` picks the cheaper.
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
        return self._normalize(x, apply_affine=True)

    def normalize(self, x):
        """xhat = (x - mu) * rstd, for a following Linear that applies g and b (see above)."""
        return self._normalize(x, apply_affine=False)

    def input_for(self, x, linear):
        """(input, folded_norm) such that ``linear(input, folded_norm)`` is ``linear(self(x))``: xhat with g
        and b folded into the product when x has at least as many rows M as the product has
        outputs, else y = xhat g + b and no folding (see above)."""
        if x.size // x.shape[-1] >= linear.out_features:
            return self.normalize(x), self
        return self.forward(x), None

    def folded(self, W, b):
        """(W', b') = (W diag(g), b + W beta): a following Linear's weight (out, D) and bias (or
        None) with this LayerNorm's g and beta folded in."""
        return W * self.weight.data, W @ self.bias.data + (0 if b is None else b)

    def folded_backward(self, dW, db, W):
        """The folded product's gradients dW' (out, D) and db' (out,) -> dW (out, D), the Linear's own
        weight gradient; accumulates dg and dbeta on the way (see the module docstring)."""
        self.weight.accumulate(col_sum(dW * W))                      # dg[i] = sum_o dW'[o, i] W[o, i]
        self.bias.accumulate(db @ W)                                 # dbeta = W^T db'
        dW *= self.weight.data
        dW += array_module(dW).outer(db, self.bias.data)            # dW = dW' diag(g) + outer(db', beta)
        return dW

    def _normalize(self, x, apply_affine):
        xp, D = array_module(x), self.dim
        if x.shape[-1] != D:
            raise ValueError(f"LayerNorm({D}) needs inputs whose last axis is {D}, got shape {tuple(x.shape)}")
        x2 = x.reshape(-1, D)                                        # (M, D)
        xhat = xp.empty_like(x2)
        y = xp.empty_like(x2) if apply_affine else xhat
        rstd = xp.empty((x2.shape[0], 1), dtype=x.dtype)
        g, b, inv_d, eps = self.weight.data, self.bias.data, x.dtype.type(1.0 / D), x.dtype.type(self.eps)

        def normalize(r):                                            # rows r
            xh = xhat[r]
            xp.subtract(x2[r], row_mean(x2[r], keepdims=True), out=xh)        # x - mu
            rstd[r] = (row_dot(xh, xh, keepdims=True) * inv_d + eps) ** -0.5
            xh *= rstd[r]
            if apply_affine:
                xp.multiply(xh, g, out=y[r])
                y[r] += b

        map_rows(normalize, x2.shape[0], D * x.itemsize, xp)
        self._save_for_backward(xhat, rstd, apply_affine)
        return y.reshape(x.shape)

    def backward(self, dy):
        """dx from dy (after ``forward``) or from dxhat (after ``normalize``)."""
        xhat, rstd, applied = self._saved()
        xp = array_module(dy)
        dxhat = dy.reshape(xhat.shape)                               # (M, D)
        if applied:                                                   # in the forward y = xhat g + b
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
