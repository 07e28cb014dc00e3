"""The masked autoencoder's (MAE's) own layers: keep some tokens, then fill the rest with a mask token.
Implements numpyvit.reference.gather_rows_* and fill_hidden_* (docs/math.md, section 14).

Shapes: B images, T = 1 + N tokens ([CLS] first), R = 1 + K kept rows, D / E the encoder's /
decoder's width; ``rows`` (B, R) integer token rows, sorted, row 0 ([CLS]) always among them.

TokenRows   forward:  y[b, r] = z[b, rows[b, r]]                            (B, T, D) -> (B, R, D)
            backward: dz[b, rows[b, r]] = dy[b, r], 0 at the rows not taken
MaskFill    forward:  full[b, t] = y[b, r] where t = rows[b, r], else the mask token m   -> (B, T, E)
            backward: dy[b, r] = dfull[b, rows[b, r]],  dm = sum over b and the rows not in rows[b]
"""
import numpy as np

from ..backend import array_module
from .base import Module


def random_keep(rng, B, N, mask_ratio):
    """(rows (B, 1 + K) int64, hidden (B, N) float64 0/1) on the host: for each image K =
    round(N (1 - mask_ratio)) of its N patches drawn uniformly without replacement, as token
    rows (patch i is row 1 + i; row 0, [CLS], always kept), sorted; ``hidden`` is 1 for the patches
    left out. A draw, not a layer: a constant of the step, as dropout's mask."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}: the share of patches hidden")
    K = max(1, int(round(N * (1 - mask_ratio))))
    # the K lowest of N uniform draws: a uniform random subset
    keep = np.sort(np.argsort(rng.random((B, N)), axis=1)[:, :K], axis=1)
    hidden = np.ones((B, N))
    np.put_along_axis(hidden, keep, 0.0, axis=1)
    return np.concatenate([np.zeros((B, 1), dtype=np.int64), keep + 1], axis=1), hidden


class TokenRows(Module):
    """The kept tokens of each image (see the module docstring)."""

    def forward(self, z, rows):
        xp = array_module(z)
        rows = xp.asarray(rows)[:, :, None]                          # (B, R, 1)
        self._save_for_backward(z.shape, rows)
        return xp.take_along_axis(z, rows, axis=1)

    def backward(self, dy):
        shape, rows = self._saved()
        xp = array_module(dy)
        dz = xp.zeros(shape, dtype=dy.dtype)
        xp.put_along_axis(dz, rows, dy, axis=1)
        return dz


class MaskFill(Module):
    """Every token row the learned mask token, except the kept ones (see the module docstring)."""

    def __init__(self, token):
        self.mask_token = token                                      # Parameter (1, 1, E)

    def forward(self, y, rows, T):
        xp = array_module(y)
        B, _, E = y.shape
        rows = xp.asarray(rows)[:, :, None]
        full = xp.empty((B, T, E), dtype=y.dtype)
        full[...] = self.mask_token.data
        xp.put_along_axis(full, rows, y, axis=1)
        self._save_for_backward(rows)
        return full

    def backward(self, dfull):
        (rows,) = self._saved()
        xp = array_module(dfull)
        dy = xp.take_along_axis(dfull, rows, axis=1)
        # the mask token's rows: all of them, less the kept ones (each kept row once)
        total = dfull.sum(axis=(0, 1))
        self.mask_token.accumulate((total - dy.sum(axis=(0, 1))).reshape(1, 1, -1))
        return dy
