"""The pre-norm transformer block (the ViT paper's eqs. 2-3).
Implements numpyvit.reference.block_forward / block_backward (docs/math.md, section 8).
"""
import numpy as np

from ..parallel import add_in_place
from .attention import Attention
from .base import Module
from .dropout import DropPath
from .layernorm import LayerNorm
from .mlp import Mlp


class Block(Module):
    """Pre-norm transformer block:
        x = x + DropPath(Attn(LN1(x)));   x = x + DropPath(MLP(LN2(x)))
    Backward of a residual x_out = x + f(x): dx = dy + f'(x)^T dy.
    Each LayerNorm's weight and bias are folded into the first product of its branch (qkv, fc1)
    when that is cheaper (LayerNorm.input_for; the folding is in numpyvit.layers.linear).
    """

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop=0.0, attn_drop=0.0,
                 drop_path=0.0, act="gelu", *, xp=np, dtype=np.float32, rng=None):
        self.norm1 = LayerNorm(dim, xp=xp, dtype=dtype)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, xp=xp, dtype=dtype, rng=rng)
        self.drop_path1 = DropPath(drop_path, xp=xp)
        self.norm2 = LayerNorm(dim, xp=xp, dtype=dtype)
        self.mlp = Mlp(dim, int(round(dim * mlp_ratio)), act, drop, xp=xp, dtype=dtype, rng=rng)
        self.drop_path2 = DropPath(drop_path, xp=xp)

    def forward(self, x, first_tokens=None):
        """(B, T, D) -> (B, T, D), or (B, Q, D) for the first Q tokens only with ``first_tokens=Q``:
        a token's output needs the other tokens only as attention's keys and values."""
        # x + branch(x) is written add_in_place(branch(x), x): the branch's output is a fresh array
        # that no layer caches, so x is added into it in place (on all CPU cores)
        residual = x if first_tokens is None else x[:, :first_tokens]
        x = add_in_place(self.drop_path1(self.attn(*self.norm1.input_for(x, self.attn.qkv), first_tokens)), residual)
        x = add_in_place(self.drop_path2(self.mlp(*self.norm2.input_for(x, self.mlp.fc1))), x)
        return x

    def backward(self, dy):
        # dy + branch'(x)^T dy, the same way
        dy = add_in_place(self.norm2.backward(self.mlp.backward(self.drop_path2.backward(dy))), dy)
        dx = self.norm1.backward(self.attn.backward(self.drop_path1.backward(dy)))    # (B, T, D)
        if dx.shape == dy.shape:
            return add_in_place(dx, dy)
        dx[:, :dy.shape[1]] += dy                                    # the kept tokens' residual
        return dx
