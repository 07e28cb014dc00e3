"""A small PyTorch ViT with numpyvit's (= timm's) parameter names, used only by the benchmark
as a yardstick. PyTorch is never a numpyvit dependency: this file is imported only when
torch is installed.

Attention comes in two forms, because neither is PyTorch's fastest everywhere: ``"sdpa"``
(``F.scaled_dot_product_attention``, one fused call) and ``"math"`` (softmax(q k^T / sqrt(d)) v
written out, three calls). On 2-core CPUs the written-out form was up to 1.5x faster for the
MNIST models' short sequences, so the benchmark times both and compares with the faster.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


ATTENTION_FORMS = ("sdpa", "math")


class Attention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias, attention):
        super().__init__()
        self.num_heads, self.attention = num_heads, attention
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.attention == "sdpa":
            x = F.scaled_dot_product_attention(q, k, v)              # one fused call
        else:
            x = torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_hidden, qkv_bias, attention):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attention)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, in_chans, dim, patch_size):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TorchViT(nn.Module):
    """timm's VisionTransformer (learned pos_embed, [CLS] pooling, exact GELU), from a numpyvit config;
    ``attention`` is "sdpa" or "math" (see above)."""

    def __init__(self, config, attention="sdpa"):
        if attention not in ATTENTION_FORMS:
            raise ValueError(f"attention must be one of {ATTENTION_FORMS}, got {attention!r}")
        super().__init__()
        D, patch = config["embed_dim"], config["patch_size"]
        img = config["img_size"] if isinstance(config["img_size"], int) else config["img_size"][0]
        num_patches = (img // patch) ** 2
        self.patch_embed = PatchEmbed(config["in_chans"], D, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, D))
        hidden = int(round(D * config["mlp_ratio"]))
        self.blocks = nn.ModuleList(Block(D, config["num_heads"], hidden, config["qkv_bias"], attention)
                                    for _ in range(config["depth"]))
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.head = nn.Linear(D, config["num_classes"])

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def from_npz(config, path, device="cpu", attention="sdpa"):
    """A TorchViT of ``config`` with the weights of a numpyvit state_dict saved by ``numpy.savez``,
    read one tensor at a time (so the process never holds a second copy of the model), in the
    weights' dtype."""
    reference = TorchViT(config, attention)
    params = dict(reference.named_parameters())
    with np.load(path, allow_pickle=False) as weights, torch.no_grad():
        if set(weights.files) != set(params):
            raise ValueError(f"{path}: the weights do not match the model's parameters")
        reference.to(torch.from_numpy(weights[weights.files[0]]).dtype)
        for name in weights.files:
            params[name].copy_(torch.from_numpy(weights[name]))
    return reference.to(device)
