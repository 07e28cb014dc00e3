"""numpyvit.viz: look inside a Vision Transformer.

``analysis`` computes the quantities with NumPy alone; ``plots`` draws them as PNG files with
matplotlib (headless, Agg), imported only when a ``plot_*`` name or ``read_image`` is first used,
so the analysis works without matplotlib installed.

    attn = model.attention_maps(x)                                    # L x (B, heads, T, T)
    rollout = cls_attention_maps(attention_rollout(attn), model.patch_embed.grid_size)
    plot_attention_rollout(images, rollout, "rollout.png")            # (B, H, W), (B, Gh, Gw)

``demos/visualize.py`` draws every figure for a trained checkpoint.
"""
import importlib

from .analysis import (attention_rollout, cls_attention_maps, confusion_matrix, mean_attention_distance,
                       patch_distances, patch_filter_pca, position_similarity, predict, reconstructed_images,
                       resize, saliency, stack_attentions, to_grayscale, upsample)

PLOT_NAMES = (
    "plot_attention_distance", "plot_attention_heads", "plot_attention_rollout", "plot_confusion_matrix",
    "plot_mistakes", "plot_patch_filters", "plot_position_similarity", "plot_reconstructions", "plot_saliency",
    "plot_time_to_accuracy",
    "plot_training_curves", "read_image",
)

__all__ = [
    "attention_rollout", "cls_attention_maps", "confusion_matrix", "mean_attention_distance",
    "patch_distances", "patch_filter_pca", "position_similarity", "predict", "reconstructed_images", "resize",
    "saliency",
    "stack_attentions", "to_grayscale", "upsample", *PLOT_NAMES,
]


def __getattr__(name):
    """Import ``plots`` (and so matplotlib) on first use of one of its names (PEP 562)."""
    if name in PLOT_NAMES:
        return getattr(importlib.import_module(".plots", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
