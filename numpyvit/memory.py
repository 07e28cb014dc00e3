"""What a model will need in memory, estimated from its settings before anything is allocated.

A setting that cannot fit (a depth of a million, an embed_dim of a million, a 100,000-pixel image
cut into 16-pixel patches) is refused here in one line that names the settings, what they would
take and what the machine has, instead of building for minutes and ending in NumPy's MemoryError.

    parameter_count(config)          the model's parameters, as VisionTransformer will make them
    model_bytes(config)              its weights and gradients, plus PER_BLOCK bytes of Python
                                     objects a block (measured: ~1.1 KB; 4 KB counted)
    training_bytes(config, batch)    model_bytes + AdamW's two moments + the activations one
                                     training step keeps for its backward (an upper estimate)
    check_fits(config, batch=None, built=False)   ConfigError when the need exceeds available_bytes()

T = tokens (patches + 1), D = embed_dim, F = int(D * mlp_ratio), L = depth, h = num_heads.
Per block and image a training step keeps about T (10 D + 3 F) + 3 h T^2 numbers (LayerNorm
inputs and outputs, q k v, the heads' output, the MLP's hidden layer, its activation and slope,
the attention probabilities before and after dropout).
"""
import os

import numpy as np

from .errors import ConfigError
from .layers.patch_embed import to_pair

PER_BLOCK = 4096                       # bytes of Python objects and array headers per block


def _sizes(config):
    """(tokens T, patches N, D, F, L, heads, bytes a number) of a config whose sizes are valid."""
    (H, W), (P, Q) = to_pair(config["img_size"], "img_size"), to_pair(config["patch_size"], "patch_size")
    N = (H // P) * (W // Q)
    D, L = config["embed_dim"], config["depth"]
    return N + 1, N, D, int(D * config["mlp_ratio"]), L, config["num_heads"], np.dtype(config["dtype"]).itemsize


def parameter_count(config):
    T, N, D, F, L, _, _ = _sizes(config)
    (H, W), (P, Q) = to_pair(config["img_size"], "img_size"), to_pair(config["patch_size"], "patch_size")
    C, K, grid = config["in_chans"], config["num_classes"], (H // P, W // Q)
    position = {"learned": T * D, "learned_2d": (grid[0] + grid[1]) * D, "sincos": 0}[config["pos_embed"]]
    block = 4 * D + 3 * D * D + 3 * D * bool(config["qkv_bias"]) + D * D + D + 2 * D * F + F + D
    return C * P * Q * D + D + D + position + L * block + 2 * D + D * K + K


def model_bytes(config):
    T, N, D, F, L, h, itemsize = _sizes(config)
    fixed_table = T * D * itemsize if config["pos_embed"] == "sincos" else 0
    return 2 * parameter_count(config) * itemsize + fixed_table + L * PER_BLOCK


def training_bytes(config, batch):
    T, N, D, F, L, h, itemsize = _sizes(config)
    activations = batch * L * (T * (10 * D + 3 * F) + 3 * h * T * T) * itemsize
    return model_bytes(config) + 2 * parameter_count(config) * itemsize + activations


def available_bytes():
    """Memory the machine can give this process now: Linux's MemAvailable, else physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(config, batch=None, built=False):
    """ConfigError if the model of ``config`` (trained at ``batch`` images a step, if given) needs
    more memory than the machine has available; ``built``: the model exists already, so only what
    training adds is counted. Settings that are not valid sizes are left to the layers to refuse."""
    try:
        need = model_bytes(config) if batch is None else training_bytes(config, batch)
        need -= model_bytes(config) if built else 0
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return
    have = available_bytes()
    if have is None or need <= have:
        return
    T = _sizes(config)[0]
    sizes = (f"embed_dim {config['embed_dim']}, depth {config['depth']}, mlp_ratio {config['mlp_ratio']}, "
             f"img_size {config['img_size']} / patch_size {config['patch_size']} = {T - 1:,} patches")
    what = "its weights and gradients" if batch is None else f"training it at batch {batch}"
    raise ConfigError(f"this model cannot fit: {what} would take {need / 2**30:,.1f} GiB ({parameter_count(config):,} "
                      f"parameters; {sizes}), but this machine has {have / 2**30:.1f} GiB available: choose smaller "
                      + ("sizes" if batch is None else "sizes or a smaller batch"))
