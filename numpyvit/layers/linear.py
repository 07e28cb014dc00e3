"""Linear (fully connected) layer: one GEMM over all tokens.
Implements numpyvit.reference.linear_forward / linear_backward (derived in docs/math.md, section 1).

Shapes: x (..., in) -> y (..., out); the weight is (out, in) as in PyTorch/timm.

Forward:   y = x W^T + b
Backward:  dx = dy W                 (..., in)
           dW += dy^T x              (out, in), summed over every leading axis
           db += sum(dy)             (out,)
Caches: x (a reference, not a copy) for dW.

Speed: the leading axes (batch, tokens) are flattened to one axis M so each product is a single
(M, in) x (in, out) matrix multiply, the shape BLAS is fastest at (``matmul`` is ``@``, spread
over the CPU cores by numpyvit.parallel). With ``folded_norm`` (a LayerNorm whose ``normalize``
produced x = xhat) the LayerNorm's g and beta are folded into W and b, and the LayerNorm turns
the folded product's gradients back into its own and this layer's (LayerNorm.folded and
folded_backward, where that math is written out).
"""
import numpy as np

from ..parallel import matmul
from .base import Module, new_parameter, trunc_normal
from .reductions import col_sum


class Linear(Module):
    """y = x W^T + b. ``weight_shape`` lets a layer store W in another shape whose trailing
    axes multiply to ``in_features`` (the patch embedding keeps timm's (D, C, P, P))."""

    def __init__(self, in_features, out_features, bias=True, *, weight_shape=None,
                 xp=np, dtype=np.float32, rng=None, std=0.02):
        rng = rng if rng is not None else np.random.default_rng(0)
        self.in_features, self.out_features = in_features, out_features
        shape = weight_shape or (out_features, in_features)
        self.weight = new_parameter(trunc_normal(rng, shape, std, dtype), xp, dtype)
        self.bias = new_parameter(np.zeros(out_features), xp, dtype, weight_decay=False) if bias else None

    def _matrix(self):
        return self.weight.data.reshape(self.out_features, self.in_features)  # (out, in), a view

    def forward(self, x, folded_norm=None):
        """y = x W^T + b; with ``folded_norm`` (a LayerNorm), y = (x g + beta) W^T + b (see above)."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Linear({self.in_features} -> {self.out_features}) needs inputs whose last axis "
                             f"is {self.in_features}, got shape {tuple(x.shape)}")
        x2 = x.reshape(-1, self.in_features)                        # (M, in)
        W, b = self._matrix(), None if self.bias is None else self.bias.data
        if folded_norm is not None:
            W, b = folded_norm.folded(W, b)                                         # W' = W diag(g), b' = b + W beta
        y = matmul(x2, W.T, b)                                       # (M, out)
        self._save_for_backward(x2, W, folded_norm)
        return y.reshape(*x.shape[:-1], self.out_features)

    def backward(self, dy):
        x2, W, folded_norm = self._saved()
        dy2 = dy.reshape(-1, self.out_features)                     # (M, out)
        dx = matmul(dy2, W)                                          # (M, in)
        params = [self.weight, self.bias] + ([folded_norm.weight, folded_norm.bias] if folded_norm is not None else [])
        if not any(p is not None and p.requires_grad for p in params):
            return dx.reshape(*dy.shape[:-1], self.in_features)     # all frozen: no weight gradients
        dW = matmul(dy2.T, x2)                                       # (out, in)
        db = col_sum(dy2) if self.bias is not None or folded_norm is not None else None
        if folded_norm is not None:                                       # W, b were W', b': dg, dbeta, and dW
            dW = folded_norm.folded_backward(dW, db, self._matrix())      # from dW', db' (LayerNorm's formulas)
        self.weight.accumulate(dW.reshape(self.weight.shape))
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx.reshape(*dy.shape[:-1], self.in_features)
