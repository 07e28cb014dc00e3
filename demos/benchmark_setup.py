"""What the benchmark programs share: the configurations, the batch, and one timed step of each
framework (numpyvit, and PyTorch when it is installed).

A training step is forward + cross-entropy + backward + AdamW; an inference step is a forward
with nothing cached (numpyvit.no_grad, torch.inference_mode). Both frameworks get the same
architecture, identical weights and the same batch (drawn from one seed).
"""
import sys
from pathlib import Path

import argparse

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpyvit  # noqa: E402

CONFIGS = {  # name: (description, preset, batch, training?)
    "a": ("MNIST-tiny  p7 D64 L6 H4 MLP128", "mnist_tiny", 128, True),
    "b": ("MNIST-small p4 D128 L6 H4 MLP256", "mnist_small", 128, True),
    "c": ("MNIST-large p4 D420 L9 H28 MLP615", "mnist_large", 32, True),
    "d": ("ViT-B/16 224x224 inference", "vit_base_patch16_224", 8, False),
    "e": ("ViT-B/16 224x224 training", "vit_base_patch16_224", 64, True),
}


def add_config_arguments(parser, default="a,b,c,d"):
    """--configs and --backend, as every benchmark program takes them."""
    parser.add_argument("--configs", type=config_keys, default=config_keys(default), help="comma-separated keys of "
                        + ", ".join(f"{k} ({v[0]})" for k, v in CONFIGS.items()))
    parser.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])


def config_keys(text):
    """'a,c' -> ['a', 'c'], each a key of CONFIGS (an argparse type: a bad key is one line, status 2)."""
    keys = [key.strip() for key in text.split(",")]
    unknown = [key for key in keys if key not in CONFIGS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown config {', '.join(map(repr, unknown))}; the configs are "
                                         + ", ".join(CONFIGS))
    return keys


def make_batch(config, batch):
    """Images (batch, C, H, W) float32 and labels (batch,), the same in every process."""
    size = config["img_size"]
    H, W = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, config["in_chans"], H, W)).astype(np.float32)
    return x, rng.integers(0, config["num_classes"], batch)


def build(config_key, backend, batch=None):
    """(numpyvit model, images, labels, training?) for a config (the preset's seed-0 weights)."""
    _, preset, default_batch, training = CONFIGS[config_key]
    model = numpyvit.create_model(preset, backend=backend)
    x, y = make_batch(model.config, batch or default_batch)
    return model, x, y, training


def matmul_flops(config, batch, training):
    """FLOPs of the matrix multiplies of one step (forward x 3 when training: the backward
    computes two products per forward product), counted for the full model as PyTorch runs it;
    numpyvit's [CLS]-only last block skips some, so its GFLOP/s is an effective rate."""
    D, L, P = config["embed_dim"], config["depth"], config["patch_size"]
    size = config["img_size"]
    H, W = (size, size) if isinstance(size, int) else size
    N = (H // P) * (W // P)
    T, hidden = N + 1, int(round(D * config["mlp_ratio"]))
    patch = config["in_chans"] * P * P
    per_image = 2 * (N * patch * D + L * (T * D * 3 * D + 2 * T * T * D + T * D * D + 2 * T * D * hidden)
                     + D * config["num_classes"])
    return per_image * batch * (3 if training else 1)


def numpyvit_step(model, x, y, training):
    """A function running one step of ``model`` on (x, y)."""
    xp = model.xp
    x, y = xp.asarray(x), xp.asarray(y)
    if not training:
        model.eval()

        def infer():
            with numpyvit.no_grad():                                 # as torch.inference_mode: nothing cached
                return model(x)
        return infer
    opt = numpyvit.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    loss = numpyvit.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss(model(x), y)
        model.backward(loss.backward())
        opt.step()
    return step


def torch_step(reference, x, y, training):
    """A function running one step (inference, or cross-entropy + AdamW) of a PyTorch model."""
    import torch

    if not training:
        reference.eval()

        def infer():
            with torch.inference_mode():
                return reference(x)
        return infer
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-4, weight_decay=0.05)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(reference(x), y).backward()
        opt.step()
    return step


def synchronizer(backend):
    """A function that waits for the GPU (nothing to wait for on the CPU)."""
    if backend != "cupy":
        return lambda: None
    import cupy

    def sync():
        cupy.cuda.Device().synchronize()
        if "torch" in sys.modules:
            sys.modules["torch"].cuda.synchronize()
    return sync
