"""The [CLS] token and the position embeddings.
Implements numpyvit.reference.tokens_forward / tokens_backward, position_table and pool_forward
(docs/math.md, sections 3 and 9).

Shapes: B batch, N patches, T = 1 + N tokens ([CLS] first), D width, (Gh, Gw) patch grid.

ClassToken:  y = concat([c, x], axis=tokens)   (B, N, D) -> (B, 1+N, D), c a learned (1, 1, D)
             dc += sum over the batch of dy[:, 0];  dx = dy[:, 1:]
Position embeddings add a table E of shape (1, T, D) to every image's tokens:
             y = x + E;  dx = dy;  dE = sum over the batch of dy
  learned    E is one learned vector per token (timm's ``pos_embed``, the paper's default)
  learned_2d E[patch (r, c)] = row[r] + col[c], two learned tables (1, Gh, D) and (1, Gw, D);
             by the chain rule drow[r] = sum_c dE[(r, c)], dcol[c] = sum_r dE[(r, c)]
  sincos     E fixed, no gradient: for the patch in grid row r and column c,
             E = [sin(r w), cos(r w), sin(c w), cos(c w)], each block D/4 channels, with MAE's
             frequencies w_i = 10000^(-i / (D/4)), i = 0 .. D/4 - 1: the first half of the
             channels encodes the row, the second half the column. (MAE's own table puts the
             column half first; the two differ by swapping the halves.)
The [CLS] token gets a learned position in 'learned' and none in the 2-D kinds.
Caches: nothing (the gradients do not depend on the input).

The model owns the Parameters (so they keep timm's names ``cls_token``, ``pos_embed``);
these layers are handed them and do the math.
"""
import numpy as np

from ..backend import array_module
from .base import Module


class ClassToken(Module):
    def __init__(self, token):
        self.token = token                                           # Parameter (1, 1, D)

    def forward(self, x):
        xp = array_module(x)
        B, N, D = x.shape
        y = xp.empty((B, 1 + N, D), dtype=x.dtype)
        y[:, 0] = self.token.data[0, 0]
        y[:, 1:] = x
        self._save_for_backward(True)
        return y

    def backward(self, dy):
        self._saved()
        self.token.accumulate(dy[:, :1].sum(axis=0, keepdims=True))  # (1, 1, D)
        return dy[:, 1:]


class PositionEmbedding(Module):
    """y = x + E with E from ``table()``; subclasses say how E is made and how dE flows back."""

    def forward(self, x):
        self._save_for_backward(True)
        return x + self.table()

    def backward(self, dy):
        self._saved()
        self.table_backward(dy.sum(axis=0, keepdims=True))           # dE (1, T, D)
        return dy

    def table_backward(self, d_table):
        """Accumulate parameter gradients from dE; a fixed table has none."""


class LearnedPositionEmbedding(PositionEmbedding):
    def __init__(self, table):
        self.pos_embed = table                                       # Parameter (1, T, D)

    def table(self):
        return self.pos_embed.data

    def table_backward(self, d_table):
        self.pos_embed.accumulate(d_table)


class LearnedPositionEmbedding2D(PositionEmbedding):
    def __init__(self, row, col, num_prefix_tokens=1):
        self.row, self.col = row, col                                # Parameters (1, Gh, D), (1, Gw, D)
        self.num_prefix_tokens = num_prefix_tokens

    def table(self):
        row, col = self.row.data, self.col.data
        xp = array_module(row)
        grid = row[0][:, None, :] + col[0][None, :, :]               # (Gh, Gw, D)
        prefix = xp.zeros((self.num_prefix_tokens, grid.shape[-1]), dtype=grid.dtype)
        return xp.concatenate([prefix, grid.reshape(-1, grid.shape[-1])])[None]   # (1, T, D)

    def table_backward(self, d_table):
        Gh, Gw = self.row.shape[1], self.col.shape[1]
        d_grid = d_table[0, self.num_prefix_tokens:].reshape(Gh, Gw, -1)   # (Gh, Gw, D)
        self.row.accumulate(d_grid.sum(axis=1)[None])
        self.col.accumulate(d_grid.sum(axis=0)[None])


def sincos_table_2d(grid_size, dim, num_prefix_tokens=1):
    """The fixed 2-D sine-cosine table (1, T, D) as float64 NumPy; prefix tokens get zeros."""
    if dim % 4:
        raise ValueError(f"the sincos position embedding needs embed_dim divisible by 4, got {dim}")
    Gh, Gw = grid_size
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim // 4))           # (D/4,)
    rows, cols = np.meshgrid(np.arange(Gh), np.arange(Gw), indexing="ij")
    halves = []
    for pos in (rows.reshape(-1), cols.reshape(-1)):                  # (N,) each
        angle = pos[:, None] * omega[None, :]                         # (N, D/4)
        halves += [np.sin(angle), np.cos(angle)]
    table = np.concatenate(halves, axis=1)                            # (N, D)
    return np.concatenate([np.zeros((num_prefix_tokens, dim)), table])[None]


class SinCosPositionEmbedding2D(PositionEmbedding):
    def __init__(self, grid_size, dim, num_prefix_tokens=1, *, xp=np, dtype=np.float32):
        self._table = xp.asarray(sincos_table_2d(grid_size, dim, num_prefix_tokens), dtype=dtype)

    def table(self):
        return self._table


class GlobalPool(Module):
    """Token sequence -> one vector per image: the [CLS] token ('token') or the mean of the
    patch tokens ('avg', prefix tokens excluded, as in timm).

    token:  y = x[:, 0];                  dx[:, 0] = dy, zero elsewhere
    avg:    y = mean(x[:, 1:], axis=1);   dx[:, 1:] = dy / N, zero at the prefix
    """

    def __init__(self, kind="token", num_prefix_tokens=1):
        if kind not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {kind!r}")
        self.kind, self.num_prefix_tokens = kind, num_prefix_tokens

    def forward(self, x):                                            # (B, T, D) -> (B, D)
        self._save_for_backward(x.shape)
        if self.kind == "token":
            return x[:, 0]
        return x[:, self.num_prefix_tokens:].mean(axis=1)

    def backward(self, dy):                                          # (B, D) -> (B, T, D)
        (shape,) = self._saved()
        xp = array_module(dy)
        dx = xp.zeros(shape, dtype=dy.dtype)
        if self.kind == "token":
            dx[:, 0] = dy
        else:
            n = shape[1] - self.num_prefix_tokens
            dx[:, self.num_prefix_tokens:] = (dy * dy.dtype.type(1.0 / n))[:, None, :]
        return dx
