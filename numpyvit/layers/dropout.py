"""Dropout and DropPath (stochastic depth): random zeroing in training, identity in eval.
Implements numpyvit.reference.dropout_forward / dropout_backward and drop_path_forward /
drop_path_backward (docs/math.md, section 13).

Shapes: x, y any shape; DropPath's mask is one value per sample, (B, 1, ..., 1).

Dropout:   y = x * keep / (1 - rate),  keep ~ Bernoulli(1 - rate) per element
DropPath:  y = x * keep / (1 - rate),  keep ~ Bernoulli(1 - rate) per sample: a residual branch
           is dropped for whole images (Huang et al. 2016), as in timm's DropPath
Backward (both): dx = dy * keep / (1 - rate), the same mask (a constant of the step).
Caches: the scaled mask. (``p`` is the drop rate, as in PyTorch's ``Dropout(p)``.)

Each layer draws from its own generator ``self.rng``; ``model.seed(s)`` resets every one,
so a seeded run (and a gradient check) sees the same masks every time.
"""
import numpy as np

from .base import Module


class Dropout(Module):
    def __init__(self, p=0.0, *, xp=np):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p, self.xp = p, xp
        self.rng = xp.random.default_rng()

    def _mask_shape(self, x):
        return x.shape

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._save_for_backward(None)
            return x
        keep = self.rng.random(self._mask_shape(x), dtype=x.dtype) >= self.p
        mask = keep * x.dtype.type(1.0 / (1.0 - self.p))             # scaled mask, x's dtype
        self._save_for_backward(mask)
        return x * mask

    def backward(self, dy):
        (mask,) = self._saved()
        return dy if mask is None else dy * mask


class DropPath(Dropout):
    """Stochastic depth: drops a residual branch for whole samples."""

    def _mask_shape(self, x):
        return (x.shape[0],) + (1,) * (x.ndim - 1)                   # (B, 1, ..., 1)
