"""Named model configurations: timm's ViT presets and small MNIST models.

``numpyvit.create_model(name, **overrides)`` (numpyvit.factory) builds one; any keyword of
VisionTransformer overrides the preset (e.g. ``create_model("vit_base_patch16_224",
num_classes=10, backend="cupy")``), and ``weights=FILE`` loads published weights into it.
"""
import difflib
import inspect

from .errors import ConfigError
from .model import VisionTransformer

_VIT_SIZES = {  # the ViT paper's Table 1 (and DeiT's tiny/small): width D, depth L, heads
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
}
_TIMM_NAMES = [("tiny", 16), ("small", 16), ("base", 16), ("large", 16), ("small", 32), ("base", 32),
               ("large", 32), ("large", 14), ("huge", 14)]

_MNIST = dict(img_size=28, in_chans=1, num_classes=10)

PRESETS = {
    f"vit_{size}_patch{patch}_224": dict(img_size=224, patch_size=patch, **_VIT_SIZES[size])
    for size, patch in _TIMM_NAMES
}
PRESETS.update({
    # 16 patches of 7x7: the fastest model that still learns MNIST well
    "mnist_tiny": dict(_MNIST, patch_size=7, embed_dim=64, depth=6, num_heads=4, mlp_ratio=2.0),
    # 49 patches of 4x4, as narrow as mnist_tiny (the longer CPU recipe trains it at D 96)
    "mnist_fine": dict(_MNIST, patch_size=4, embed_dim=64, depth=6, num_heads=4, mlp_ratio=2.0),
    # 49 patches of 4x4, twice as wide
    "mnist_small": dict(_MNIST, patch_size=4, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0),
    # the architecture of a well-known PyTorch MNIST ViT (99.65% after 60 GPU epochs)
    "mnist_large": dict(_MNIST, patch_size=4, embed_dim=420, depth=9, num_heads=28, mlp_ratio=615 / 420),
})


def preset_config(name):
    """Every VisionTransformer keyword of a preset: the preset's values over the defaults."""
    check_preset(name)
    defaults = {key: p.default for key, p in inspect.signature(VisionTransformer).parameters.items()
                if p.default is not inspect.Parameter.empty and key != "init"}
    return dict(defaults, **PRESETS[name])


def check_preset(name):
    """ConfigError naming the closest presets if ``name`` is not one."""
    if not isinstance(name, str) or name not in PRESETS:
        close = difflib.get_close_matches(str(name), PRESETS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}.{hint} Available: {', '.join(sorted(PRESETS))}")


def check_config(config, source):
    """ConfigError unless ``config`` is a mapping of VisionTransformer keywords (``source`` says
    where it came from: a file, create_model's arguments)."""
    if not isinstance(config, dict):
        raise ConfigError(f"{source} must be a mapping of VisionTransformer settings, got {type(config).__name__}")
    known = set(inspect.signature(VisionTransformer).parameters)
    unknown = sorted(str(key) for key in config if key not in known)
    if unknown:
        close = {key: difflib.get_close_matches(key, known, n=1) for key in unknown}
        hints = "; ".join(f"{key!r}" + (f" (did you mean {close[key][0]!r}?)" if close[key] else "") for key in unknown)
        raise ConfigError(f"{source}: unknown model setting {hints}. VisionTransformer takes "
                          f"{', '.join(sorted(known))}")
