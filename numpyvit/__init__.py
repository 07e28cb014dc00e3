"""numpyvit: a Vision Transformer in NumPy (or CuPy), every gradient derived by hand."""
from . import engine  # noqa: F401  (registers the CPU runner with numpyvit.execution)
from . import reference
from .backend import BackendError, get_xp, to_numpy
from .factory import create_model
from .grad_mode import no_grad
from .gradcheck import gradcheck
from .losses import CrossEntropyLoss
from .model import Block, VisionTransformer
from .optim import AdamW, clip_grad_norm, warmup_cosine
from .presets import PRESETS
from .version import __version__

__all__ = [
    "AdamW", "BackendError", "Block", "CrossEntropyLoss", "PRESETS", "VisionTransformer", "__version__",
    "clip_grad_norm", "create_model", "get_xp", "gradcheck", "no_grad", "reference", "to_numpy", "warmup_cosine",
]
