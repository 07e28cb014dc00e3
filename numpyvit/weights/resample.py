"""Resizing the position embeddings to another image size, as timm's ``resample_abs_pos_embed``.

A ViT trained on a Gh x Gw grid of patches has one learned position vector per patch. For
another image size the grid is Gh' x Gw', and the vectors are treated as a D-channel image and
resized: bicubic interpolation with antialiasing (PyTorch's ``interpolate(mode="bicubic",
antialias=True)``, the filter PIL uses), separately along rows and columns. The [CLS] (prefix)
embeddings are kept as they are.

Along one axis, the resized signal is a weighted sum of the input samples, out = W @ in, with
W (n_out, n_in) built as follows (scale = n_in / n_out; align_corners=False):
    center_i = scale (i + 1/2),    support = 2 max(scale, 1)   (widened when shrinking: antialias)
    the input samples j with |j + 1/2 - center_i| < support, weighted by
    k((j + 1/2 - center_i) / max(scale, 1)), then normalized to sum to 1, with the cubic kernel
    k(x) = (a+2)|x|^3 - (a+3)|x|^2 + 1 for |x| < 1,  a(|x|^3 - 5|x|^2 + 8|x| - 4) for 1 <= |x| < 2,
    0 beyond, a = -0.5.
At the same size W is the identity, so resizing to the same grid changes nothing.
"""
import numpy as np

from ..backend import array_module, to_numpy

CUBIC_A = -0.5


def cubic(x, a=CUBIC_A):
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = a * (((x - 5) * x + 8) * x - 4)
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def resize_weights(n_in, n_out):
    """W (n_out, n_in): the antialiased bicubic resize of a length-n_in signal to n_out samples."""
    scale = n_in / n_out
    support = 2.0 * max(scale, 1.0)
    W = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        j = np.arange(lo, hi)
        w = cubic((j - center + 0.5) / max(scale, 1.0))
        W[i, lo:hi] = w / w.sum()
    return W


def resample_pos_embed(pos_embed, new_grid, old_grid=None, num_prefix_tokens=1):
    """(1, prefix + Gh' * Gw', D) position embeddings from (1, prefix + Gh * Gw, D), NumPy or CuPy,
    in the input's dtype. ``old_grid`` defaults to a square grid."""
    xp = array_module(pos_embed)
    table = to_numpy(pos_embed).astype(np.float64)
    prefix, grid = table[:, :num_prefix_tokens], table[0, num_prefix_tokens:]
    if old_grid is None:
        side = int(round(np.sqrt(grid.shape[0])))
        old_grid = (side, side)
    if not all(isinstance(n, (int, np.integer)) and n >= 1 for n in tuple(new_grid) + tuple(old_grid)):
        raise ValueError(f"grids must be positive whole numbers of rows and columns, got {tuple(new_grid)} "
                         f"from {tuple(old_grid)}")
    if old_grid[0] * old_grid[1] != grid.shape[0]:
        raise ValueError(f"a {old_grid[0]}x{old_grid[1]} grid needs {old_grid[0] * old_grid[1]} position "
                         f"embeddings after the {num_prefix_tokens} prefix token(s), got {grid.shape[0]}")
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    rows, cols = resize_weights(old_grid[0], new_grid[0]), resize_weights(old_grid[1], new_grid[1])
    grid = grid.reshape(old_grid[0], old_grid[1], -1)                 # (Gh, Gw, D)
    resized = np.einsum("ai,ijd,bj->abd", rows, grid, cols)           # (Gh', Gw', D)
    out = np.concatenate([prefix, resized.reshape(1, -1, grid.shape[-1])], axis=1)
    return xp.asarray(out.astype(pos_embed.dtype))
