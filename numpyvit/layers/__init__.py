"""The layers of a Vision Transformer, each a Module with forward and a hand-written backward."""
from .activations import GELU, GELUTanh, ReLU, make_activation
from .attention import Attention, attention_softmax
from .base import BackwardBeforeForwardError, Module, Parameter
from .block import Block
from .dropout import Dropout, DropPath
from .layernorm import LayerNorm
from .linear import Linear
from .mlp import Mlp
from .patch_embed import PatchEmbed
from .tokens import (ClassToken, GlobalPool, LearnedPositionEmbedding, LearnedPositionEmbedding2D,
                     SinCosPositionEmbedding2D)

__all__ = [
    "Attention", "BackwardBeforeForwardError", "Block", "ClassToken", "DropPath", "GlobalPool", "Dropout", "GELU",
    "GELUTanh", "LayerNorm", "LearnedPositionEmbedding", "LearnedPositionEmbedding2D", "Linear",
    "Mlp", "Module", "Parameter", "PatchEmbed", "ReLU", "SinCosPositionEmbedding2D",
    "make_activation", "attention_softmax",
]
