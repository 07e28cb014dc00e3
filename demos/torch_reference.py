"""A small PyTorch ViT with numpyvit's (= timm's) parameter names, used only by the benchmark
as a yardstick. PyTorch is never a numpyvit dependency: this file is imported only when
torch is installed.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from numpyvit import to_numpy


class Attention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)                  # PyTorch's fastest eager path
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_hidden, qkv_bias):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
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
    """timm's VisionTransformer (learned pos_embed, [CLS] pooling, exact GELU), from a numpyvit config."""

    def __init__(self, config):
        super().__init__()
        D, patch = config["embed_dim"], config["patch_size"]
        img = config["img_size"] if isinstance(config["img_size"], int) else config["img_size"][0]
        num_patches = (img // patch) ** 2
        self.patch_embed = PatchEmbed(config["in_chans"], D, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, D))
        hidden = int(round(D * config["mlp_ratio"]))
        self.blocks = nn.ModuleList(Block(D, config["num_heads"], hidden, config["qkv_bias"])
                                    for _ in range(config["depth"]))
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.head = nn.Linear(D, config["num_classes"])

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def from_numpyvit(model, device="cpu"):
    """A TorchViT holding exactly the weights of a numpyvit model."""
    reference = TorchViT(model.config)
    state = {name: torch.from_numpy(np.array(to_numpy(a))) for name, a in model.state_dict().items()}
    reference.load_state_dict(state)
    return reference.to(device)
