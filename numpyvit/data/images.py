"""Photos for a ViT: decoding with Pillow and the evaluation transform of pretrained weights.

timm's evaluation transform (``timm.data.transforms_imagenet_eval``), step by step:
    1. resize with Pillow's bicubic filter so that the shorter side is floor(img_size / crop_pct)
       pixels (crop_pct 0.9: 248 for 224), keeping the aspect ratio (the longer side becomes
       int(shorter * long / short)); for a (height, width) img_size, to floor(each / crop_pct)
    2. crop the central img_size square: top = round((h - img_size) / 2), likewise left
    3. scale to [0, 1] and normalize each channel: (x - mean) / std with the weights' mean and std
       (0.5 for timm's ViTs and the augreg files, ImageNet's (0.485, 0.456, 0.406) /
       (0.229, 0.224, 0.225) for some others: see ``model.pretrained_cfg``)
The result is (C, H, W) float32, C = 3 (RGB) or 1 (grayscale, for a one-channel model).
"""
import math
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def load_image(path, channels=3):
    """A Pillow image in RGB (``channels`` 3) or grayscale (1); a clear error for a missing,
    unreadable or unsupported file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{path}: unsupported image type {path.suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB" if channels == 3 else "L")
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{path} could not be read as an image ({err})") from err


def resize_and_crop(image, img_size, crop_pct=0.9):
    """Steps 1 and 2 above: a Pillow image of img_size (an int, or (height, width))."""
    from PIL import Image

    if isinstance(img_size, int):
        scale = math.floor(img_size / crop_pct)
        w, h = image.size
        size = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)   # (width, height)
        out_h = out_w = img_size
    else:
        out_h, out_w = img_size
        size = (math.floor(out_w / crop_pct), math.floor(out_h / crop_pct))
    image = image.resize(size, Image.BICUBIC)
    w, h = image.size
    top, left = int(round((h - out_h) / 2.0)), int(round((w - out_w) / 2.0))
    return image.crop((left, top, left + out_w, top + out_h))


def to_array(image, mean, std):
    """Step 3: (C, H, W) float32, (pixel / 255 - mean) / std per channel."""
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)      # (C, H, W)
    channels = pixels.shape[0]
    mean = np.broadcast_to(np.asarray(mean, np.float32).reshape(-1), (channels,))
    std = np.broadcast_to(np.asarray(std, np.float32).reshape(-1), (channels,))
    return (pixels - mean[:, None, None]) / std[:, None, None]


def eval_transform(path, img_size, mean, std, crop_pct=0.9, channels=3):
    """The whole transform above for one image file: (C, H, W) float32."""
    return to_array(resize_and_crop(load_image(path, channels), img_size, crop_pct), mean, std)


def prepare_photos(paths, model):
    """(B, C, H, W) float32 for a model with a ``pretrained_cfg`` (or timm's ViT defaults)."""
    from ..weights.pretrained import VIT_DEFAULTS

    cfg = dict(VIT_DEFAULTS, **getattr(model, "pretrained_cfg", {}))
    size = model.patch_embed.img_size
    img_size = size[0] if size[0] == size[1] else size
    return np.stack([eval_transform(p, img_size, cfg["mean"], cfg["std"], cfg["crop_pct"],
                                    model.patch_embed.in_chans) for p in paths])
