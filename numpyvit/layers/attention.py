"""Multi-head scaled dot-product self-attention with one fused qkv projection.

Shapes: B batch, N tokens, D width, H heads, d = D / H head width.

Forward:   [q, k, v] = split(x Wqkv^T + bqkv)         each (B, H, N, d)
           s = (q / sqrt(d)) k^T                       (B, H, N, N)  scores
           p = softmax(s)  (over the last axis)        attention probabilities
           o = dropout(p) v                            (B, H, N, d)
           y = dropout(concat_heads(o) Wproj^T + bproj)   (B, N, D)
Backward:  dp' = do v^T,  dv = dropout(p)^T do
           ds = p * (dp - sum(dp * p, axis=-1))        (softmax backward)
           dq = ds k / sqrt(d),  dk = ds^T (q / sqrt(d))
           then back through the qkv Linear with dqkv = [dq, dk, dv].
Caches: the qkv output (holding q, k, v as views), q / sqrt(d), and p. The cached p
doubles as the attention map: set ``record = True`` and the forward keeps the last p in
``recorded`` even in eval mode (numpyvit.viz uses this).
"""
import numpy as np

from ..backend import array_module
from .base import Module
from .dropout import Dropout
from .linear import Linear
from .reductions import row_dot, row_sum


def softmax(s):
    """Softmax over the last axis of attention scores s (..., N, N), as a new array.

    softmax(s) = softmax(s - c) for any c constant along a row; subtracting a large enough c
    keeps exp from overflowing. NumPy's max over a short last axis is ~30x slower than over a
    whole (N, N) block, so on the CPU c is each block's max; if a row then sums below 1e-20
    (its own max lies over 46 below its block's, where exp would lose precision), the
    exact per-row max is used instead. On the GPU the row max is cheap and always used.
    """
    xp = array_module(s)
    if xp is np:
        blocks = s.reshape(-1, s.shape[-2] * s.shape[-1])           # (B*H, N*N)
        e = (blocks - blocks.max(axis=1, keepdims=True)).reshape(s.shape)
    else:
        e = s - s.max(axis=-1, keepdims=True)
    xp.exp(e, out=e)
    sums = row_sum(e, keepdims=True)                                 # (..., N, 1)
    if xp is np and sums.min() < 1e-20:
        e = xp.exp(s - s.max(axis=-1, keepdims=True))
        sums = row_sum(e, keepdims=True)
    e *= 1 / sums
    return e


class Attention(Module):
    def __init__(self, dim, num_heads=8, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, *,
                 xp=np, dtype=np.float32, rng=None):
        if dim % num_heads:
            raise ValueError(
                f"embed_dim ({dim}) must be divisible by num_heads ({num_heads}): each head gets "
                f"embed_dim / num_heads channels; pick e.g. num_heads in "
                f"{[h for h in range(1, min(dim, 16) + 1) if dim % h == 0]}"
            )
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias, xp=xp, dtype=dtype, rng=rng)
        self.attn_drop = Dropout(attn_drop, xp=xp)
        self.proj = Linear(dim, dim, xp=xp, dtype=dtype, rng=rng)
        self.proj_drop = Dropout(proj_drop, xp=xp)
        self.record, self.recorded = False, None

    def forward(self, x):
        xp = array_module(x)
        B, N, D = x.shape
        H, d = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(B, N, 3, H, d).transpose(2, 0, 3, 1, 4)   # (3, B, H, N, d) view
        q_scaled = qkv[0] * x.dtype.type(self.scale)                          # (B, H, N, d)
        k, v = qkv[1], qkv[2]
        p = softmax(q_scaled @ k.swapaxes(-1, -2))                            # (B, H, N, N)
        if self.record:
            self.recorded = p
        p_dropped = self.attn_drop(p)
        o = xp.empty((B, N, H, d), dtype=x.dtype)                             # heads side by side
        xp.matmul(p_dropped, v, out=o.transpose(0, 2, 1, 3))                  # o = p' v, (B, H, N, d) view
        o = o.reshape(B, N, D)
        self._save_for_backward(q_scaled, k, v, p, p_dropped)
        return self.proj_drop(self.proj(o))

    def backward(self, dy):
        q_scaled, k, v, p, p_dropped = self._saved()
        xp = array_module(dy)
        B, H, N, d = q_scaled.shape
        do = self.proj.backward(self.proj_drop.backward(dy))                 # (B, N, D)
        do = do.reshape(B, N, H, d).transpose(0, 2, 1, 3)                     # (B, H, N, d)
        # dqkv is filled head-major through a view, so no concatenation copy is needed
        dqkv = xp.empty((B, N, 3, H, d), dtype=dy.dtype)
        dq, dk, dv = dqkv.transpose(2, 0, 3, 1, 4)                            # each (B, H, N, d)
        xp.matmul(p_dropped.swapaxes(-1, -2), do, out=dv)                     # dv = p'^T do
        dp = self.attn_drop.backward(do @ v.swapaxes(-1, -2))                 # (B, H, N, N)
        # softmax backward: ds = p * (dp - sum(dp * p)), in place in dp (a fresh array)
        ds = dp
        ds -= row_dot(dp, p, keepdims=True)
        ds *= p
        xp.matmul(ds, k, out=dq)
        dq *= dy.dtype.type(self.scale)                                       # dq = ds k / sqrt(d)
        xp.matmul(ds.swapaxes(-1, -2), q_scaled, out=dk)                      # dk = ds^T q / sqrt(d)
        return self.qkv.backward(dqkv.reshape(B, N, 3 * H * d))
