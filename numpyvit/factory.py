"""``create_model``: a VisionTransformer by preset name, optionally filled with published weights.

It stands above both the presets (numpyvit.presets: the architectures by name) and the weight
readers (numpyvit.weights), which need the presets themselves.
"""
from .model import VisionTransformer
from .presets import PRESETS, check_config, check_preset
from .weights.pretrained import create_pretrained


def create_model(name, weights=None, **overrides):
    """A VisionTransformer from a preset name, with keyword overrides; with ``weights`` (a
    safetensors, JAX .npz or numpyvit checkpoint file) filled with those weights, adapting the
    head, the position embeddings and the input channels as timm does (numpyvit.weights)."""
    if weights is not None:
        return create_pretrained(name, weights, **overrides)
    check_preset(name)
    check_config(overrides, "create_model")
    return VisionTransformer(**{**PRESETS[name], **overrides})
