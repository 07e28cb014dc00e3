"""Multi-head scaled dot-product self-attention with one fused qkv projection.
Implements numpyvit.reference.attention_forward / attention_backward (docs/math.md, sections 5-6).

Shapes (docs/math.md's notation): B batch, T tokens, D width, h heads (``num_heads``),
Dh = D / h head width (``head_dim``).

Forward:   [q | k | v] = x Wqkv^T + bqkv               q, k, v each (B, h, T, Dh): q, k, v in that
                                                       order, heads inside each (timm's layout)
           s = (q / sqrt(Dh)) k^T                      (B, h, T, T)  scores
           p = softmax(s)  (over the last axis)        attention probabilities
           p' = dropout(p) = p * keep / (1 - rate)     keep a random 0/1 mask, rate attn_drop
           o = p' v                                    (B, h, T, Dh)
           y = dropout(concat_heads(o) Wproj^T + bproj)   (B, T, D)
Backward:  do = split_heads(dconcat), dconcat = dy' Wproj   (through the projection; dy' = dy
                                                       after the output dropout's backward)
           dp' = do v^T,  dv = p'^T do                 (through o = p' v)
           dp = dp' * keep / (1 - rate)                (dropout's backward; dp = dp' without dropout)
           ds_ij = p_ij (dp_ij - R_i),  R_i = sum_k dp_ik p_ik   (softmax backward, row i)
           where R_i = sum_k dp'_ik p'_ik = sum_k (do_i . v_k) p'_ik = do_i . o_i,
           a sum over Dh values instead of T (FlashAttention's D_i; the first step holds because
           dp_ik p_ik = dp'_ik (keep_ik / (1 - rate)) p_ik = dp'_ik p'_ik)
           dq = ds k / sqrt(Dh),  dk = ds^T (q / sqrt(Dh))
           then back through the qkv Linear with dqkv = [dq | dk | dv] in the forward's layout.
Caches: the qkv output (holding q, k, v as views), q / sqrt(Dh), p, p' (p itself without
dropout) and o. The cached p doubles as the attention map: set ``record = True`` and the
forward keeps the last p in ``recorded`` even in eval mode (numpyvit.viz uses this).
``first_tokens=Q`` computes the output of the first Q tokens only (q and p have Q rows, k and v all N):
the model's last block uses it when the head reads the [CLS] token alone (numpyvit.model).
Every image's attention is independent, so the per-image products and the softmax run in
pieces of the batch on all CPU cores (numpyvit.parallel.map_rows); dropout masks are drawn
outside those pieces, so a seed gives the same masks whatever the number of threads.
"""
import numpy as np

from ..backend import array_module
from .base import Module
from .dropout import Dropout
from .linear import Linear
from ..parallel import map_rows
from .reductions import row_dot, row_sum


def attention_softmax(s, out=None):
    """Softmax over the last axis of blocks of attention scores s (..., Q, N) (one block per image
    and head: the fallbacks below take each block's max), into ``out`` (or a new array).

    softmax(s) = softmax(s - c) for any c constant along a row; subtracting each row's max keeps
    exp from overflowing. NumPy's max over a short last axis is ~30x slower than over a whole
    (N, N) block, and the exp itself is cheaper still, so on the CPU c = 0 is tried first. Where
    that fails, c is each block's max: where a row's sum of exp(s) overflows (inf, nan) or lies
    outside [1e-20, 1e30]. These two bounds are safety margins, far inside the points where
    float32 loses anything: 1 / sum stays a normal float32 up to sum ~ 8.5e37, and exp(s) only
    loses precision below ~1.2e-38 (subnormal). Rows whose sums still fall below 1e-20 after the
    block max (scores far below their block's max) use their own max. On the GPU the row max is
    cheap and always used.
    """
    xp = array_module(s)
    e = xp.empty_like(s) if out is None else out
    if xp is np:
        with np.errstate(over="ignore"):                             # checked through the sums
            xp.exp(s, out=e)
        sums = row_sum(e, keepdims=True)                             # (..., N, 1)
        exact = sums.min() >= 1e-20 and sums.max() <= 1e30          # (False for nan too)
        if not exact:
            block_max = s.reshape(-1, s.shape[-2] * s.shape[-1]).max(axis=1)  # (B*H,) of (N*N) blocks
            xp.exp(xp.subtract(s, block_max.reshape(s.shape[:-2] + (1, 1)), out=e), out=e)
            sums = row_sum(e, keepdims=True)
            exact = sums.min() >= 1e-20
        if exact:
            e *= 1 / sums
            return e
    xp.exp(xp.subtract(s, s.max(axis=-1, keepdims=True), out=e), out=e)   # each row's own max
    e *= 1 / row_sum(e, keepdims=True)
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

    def forward(self, x, folded_norm=None, first_tokens=None):
        """``folded_norm``: the LayerNorm whose ``normalize`` made x, folded into qkv (Linear).
        ``first_tokens``: the number Q of leading tokens whose output is wanted (None: all N)."""
        xp = array_module(x)
        if x.ndim != 3 or x.shape[-1] != self.num_heads * self.head_dim:
            raise ValueError(f"Attention needs tokens of shape (B, N, {self.num_heads * self.head_dim}), "
                             f"got {tuple(x.shape)}")
        B, N, D = x.shape
        H, d, Q = self.num_heads, self.head_dim, N if first_tokens is None else first_tokens
        qkv = self.qkv(x, folded_norm).reshape(B, N, 3, H, d).transpose(2, 0, 3, 1, 4)   # (3, B, H, N, d) view
        q, k, v = qkv
        q = q[:, :, :Q]                                                       # (B, H, Q, d)
        q_scaled = xp.empty((B, H, Q, d), dtype=x.dtype)
        p = xp.empty((B, H, Q, N), dtype=x.dtype)
        o = xp.empty((B, Q, H, d), dtype=x.dtype)                             # heads side by side
        o_heads = o.transpose(0, 2, 1, 3)                                     # (B, H, Q, d) view
        scale = x.dtype.type(self.scale)

        def scores_to_probabilities(b):                                       # images b
            xp.multiply(q[b], scale, out=q_scaled[b])
            attention_softmax(q_scaled[b] @ k[b].swapaxes(-1, -2), out=p[b])            # (b, H, Q, N)

        map_rows(scores_to_probabilities, B, H * Q * N * x.itemsize, xp)
        if self.record:
            self.recorded = p
        p_dropped = self.attn_drop(p)

        def weighted_values(b):
            xp.matmul(p_dropped[b], v[b], out=o_heads[b])                     # o = p' v

        map_rows(weighted_values, B, H * Q * N * x.itemsize, xp)
        self._save_for_backward(q_scaled, k, v, p, p_dropped, o)
        return self.proj_drop(self.proj(o.reshape(B, Q, D)))

    def backward(self, dy):
        q_scaled, k, v, p, p_dropped, o = self._saved()
        xp = array_module(dy)
        (B, H, Q, d), N = q_scaled.shape, k.shape[2]
        do = self.proj.backward(self.proj_drop.backward(dy)).reshape(B, Q, H, d)
        do_dot_o = row_dot(do, o).transpose(0, 2, 1)[..., None]              # (B, H, Q, 1) view
        do = do.transpose(0, 2, 1, 3)                                         # (B, H, Q, d) view
        # dqkv is filled head-major through a view, so no concatenation copy is needed
        dqkv = xp.empty((B, N, 3, H, d), dtype=dy.dtype)
        dq, dk, dv = dqkv.transpose(2, 0, 3, 1, 4)                            # each (B, H, N, d)
        dq[:, :, Q:] = 0                                                      # tokens without a query
        dq = dq[:, :, :Q]
        dp = xp.empty_like(p)
        row_bytes = H * Q * N * dy.itemsize

        def through_values(b):                                                # in forward o = p' v
            xp.matmul(p_dropped[b].swapaxes(-1, -2), do[b], out=dv[b])        # dv = p'^T do
            xp.matmul(do[b], v[b].swapaxes(-1, -2), out=dp[b])                # dp' = do v^T

        map_rows(through_values, B, row_bytes, xp)
        dp = self.attn_drop.backward(dp)
        scale = dy.dtype.type(self.scale)

        def through_softmax(b):                                               # in forward p = softmax(s)
            ds = dp[b]                                                        # in place: dp is ours
            ds -= do_dot_o[b]
            ds *= p[b]                                                        # ds = p (dp - sum(dp p))
            xp.matmul(ds, k[b], out=dq[b])
            dq[b] *= scale                                                    # dq = ds k / sqrt(d)
            xp.matmul(ds.swapaxes(-1, -2), q_scaled[b], out=dk[b])            # dk = ds^T q / sqrt(d)

        map_rows(through_softmax, B, row_bytes, xp)
        return self.qkv.backward(dqkv.reshape(B, N, 3 * H * d))
