"""Patch embedding: cut the image into non-overlapping P x P patches, project each to D.
Implements numpyvit.reference.patch_embed_forward / patch_embed_backward (docs/math.md, section 2).

Shapes: B batch, C channels, (H, W) image, (Ph, Pw) patch, (Gh, Gw) = (H/Ph, W/Pw) grid,
N = Gh * Gw patches, D width.

Forward:   patches = patchify(x)           (B, C, H, W) -> (B, N, C*Ph*Pw), row-major grid
           y = patches W^T + b             (B, N, D), W stored as (D, C, Ph, Pw)
This is exactly a convolution with kernel = stride = P (timm's Conv2d ``proj``), written
as one matrix multiply because the patches do not overlap.
Backward:  the Linear backward gives dpatches and dW; dx = unpatchify(dpatches), the
           inverse reshuffle (every pixel belongs to exactly one patch, so no sums).
Caches: the patches (inside the Linear).
"""
import numpy as np

from .base import Module, initializing
from .linear import Linear


def to_pair(value, what):
    """(h, w) from an int or a pair of ints."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in pair):
        raise ValueError(f"{what} must be a positive int or a pair (height, width), got {value!r}")
    return int(pair[0]), int(pair[1])


class PatchEmbed(Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, *,
                 xp=np, dtype=np.float32, rng=None):
        rng = rng if rng is not None else np.random.default_rng(0)
        self.img_size = to_pair(img_size, "img_size")
        self.patch_size = to_pair(patch_size, "patch_size")
        (H, W), (Ph, Pw) = self.img_size, self.patch_size
        if H % Ph or W % Pw:
            raise ValueError(
                f"image size {H}x{W} is not divisible by patch size {Ph}x{Pw}: choose a patch size "
                f"that divides both sides (divisors of {H}: {[p for p in range(1, H + 1) if H % p == 0]}) "
                "or resize/pad the images"
            )
        self.in_chans, self.embed_dim = in_chans, embed_dim
        self.grid_size = (H // Ph, W // Pw)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        fan_in = in_chans * Ph * Pw
        # like PyTorch's Conv2d default: uniform in +-1/sqrt(fan_in)
        self.proj = Linear(fan_in, embed_dim, weight_shape=(embed_dim, in_chans, Ph, Pw),
                           xp=xp, dtype=dtype, rng=rng)
        bound = fan_in ** -0.5
        if initializing():
            self.proj.weight.data[...] = xp.asarray(rng.uniform(-bound, bound, self.proj.weight.shape))
            self.proj.bias.data[...] = xp.asarray(rng.uniform(-bound, bound, embed_dim))

    def forward(self, x):
        (Gh, Gw), (Ph, Pw), C = self.grid_size, self.patch_size, self.in_chans
        if x.ndim != 4 or tuple(x.shape[1:]) != (C, *self.img_size):
            raise ValueError(f"PatchEmbed expects images of shape (B, {C}, {self.img_size[0]}, "
                             f"{self.img_size[1]}), got {tuple(x.shape)}")
        B = x.shape[0]
        patches = (x.reshape(B, C, Gh, Ph, Gw, Pw)
                    .transpose(0, 2, 4, 1, 3, 5)                     # (B, Gh, Gw, C, Ph, Pw)
                    .reshape(B, Gh * Gw, C * Ph * Pw))               # (B, N, C*Ph*Pw)
        return self.proj(patches)                                    # (B, N, D)

    def backward(self, dy):
        B = dy.shape[0]
        (Gh, Gw), (Ph, Pw), C = self.grid_size, self.patch_size, self.in_chans
        dpatches = self.proj.backward(dy)                            # (B, N, C*Ph*Pw)
        return (dpatches.reshape(B, Gh, Gw, C, Ph, Pw)
                .transpose(0, 3, 1, 4, 2, 5)                         # (B, C, Gh, Ph, Gw, Pw)
                .reshape(B, C, Gh * Ph, Gw * Pw))
