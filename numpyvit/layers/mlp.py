"""The transformer MLP: Linear -> activation -> dropout -> Linear -> dropout.
Implements numpyvit.reference.mlp_forward / mlp_backward (docs/math.md, section 8).

Shapes: x, y (B, T, D); hidden (B, T, F), F = D * mlp_ratio.

Forward:   y = drop(fc2(drop(act(fc1(x)))))
Backward:  the chain rule through the same layers in reverse; each layer caches its own
           input (fc1: x, fc2: the first dropout's output, which is act's output when
           dropout is off) and the activation its slope f'(x).
"""
import numpy as np

from .activations import make_activation
from .base import Module
from .dropout import Dropout
from .linear import Linear


class Mlp(Module):
    def __init__(self, dim, hidden_dim, act="gelu", drop=0.0, *, xp=np, dtype=np.float32, rng=None):
        self.fc1 = Linear(dim, hidden_dim, xp=xp, dtype=dtype, rng=rng)
        self.act = make_activation(act)
        self.drop1 = Dropout(drop, xp=xp)
        self.fc2 = Linear(hidden_dim, dim, xp=xp, dtype=dtype, rng=rng)
        self.drop2 = Dropout(drop, xp=xp)

    @property
    def layers(self):
        return (self.fc1, self.act, self.drop1, self.fc2, self.drop2)

    def forward(self, x, folded_norm=None):
        """``folded_norm``: the LayerNorm whose ``normalize`` made x, folded into fc1 (Linear)."""
        x = self.fc1(x, folded_norm)
        for layer in self.layers[1:]:
            x = layer(x)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy
