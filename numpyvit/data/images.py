"""Photos for a ViT: decoding with Pillow and the evaluation transform of pretrained weights.

timm's evaluation transform (``timm.data.transforms_imagenet_eval``), step by step:
    1. resize with Pillow's bicubic filter, keeping the aspect ratio, so that the image just covers
       floor(img_size / crop_pct) pixels (crop_pct 0.9: 248 for 224): for a square size the shorter
       side becomes 248 and the longer int(248 * long / short); for (height, width) both sides are
       divided by min(h / target_h, w / target_w) and rounded
    2. crop the central img_size square: top = round((h - img_size) / 2), likewise left
    3. scale to [0, 1] and normalize each channel: (x - mean) / std with the weights' mean and std
       (0.5 for timm's ViTs and the augreg files, ImageNet's (0.485, 0.456, 0.406) /
       (0.229, 0.224, 0.225) for some others: see ``model.pretrained_cfg``)
The result is (C, H, W) float32, C = 3 (RGB) or 1 (grayscale, for a one-channel model).

Photos are checked before they cost memory: an image of more than MAX_PIXELS pixels (its size is
read from the header, before decoding) or one whose resize in step 1 would need more than
MAX_PIXELS (a 1 x 30000 strip) is refused with an ImageError naming the file, as is anything
Pillow cannot decode. 16-bit and 32-bit grayscale (modes I;16, I) are scaled to 8 bits by their
bit depth (65535 -> 255), not clipped, and floating-point images (mode F) by their range
([0, 1], [0, 255] or [0, 65535]).
"""
import math
import warnings
from pathlib import Path

import numpy as np

from ..errors import InputError, MissingInputError
from .loader import normalize

MIN_CROP_PCT = 0.25      # a smaller crop would resize a photo to 4x the model's input per side and more
TIMM_VIT_PREPROCESSING = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.9)   # timm's ViT default
MAX_PIXELS = 64 * 2**20                # 64 megapixels: 8 x 8 k, far beyond any photo a ViT needs

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGENET_CLASSES = Path(__file__).with_name("imagenet_classes.txt")   # "<WordNet id>\t<names>" per line


def imagenet_classes():
    """The 1,000 ImageNet-1k class names, in the order of the classifiers' outputs."""
    return [line.split("\t", 1)[1] for line in IMAGENET_CLASSES.read_text().splitlines()]


class ImageError(InputError):
    """A photo that cannot be used: not an image, unreadable, too large, or of an unsupported type."""


def load_image(path, channels=3):
    """A Pillow image in RGB (``channels`` 3) or grayscale (1); an ImageError (MissingInputError
    for a missing file) for an unreadable, unsupported or oversized one (see above)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ImageError(f"{path}: unsupported image type {path.suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    if not path.is_file():
        raise MissingInputError(f"no image file at {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS or width * height == 0:
                    raise ImageError(f"{path} is {width} x {height} pixels; numpyvit reads images of 1 to "
                                     f"{MAX_PIXELS // 2**20} megapixels (numpyvit.data.images.MAX_PIXELS): shrink it first")
                return _to_8_bit(image).convert("RGB" if channels == 3 else "L")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{path} has more pixels than numpyvit reads (1 to {MAX_PIXELS // 2**20} megapixels, "
                         f"numpyvit.data.images.MAX_PIXELS; Pillow: {err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, ImageError):
            raise
        raise ImageError(f"{path} could not be read as an image ({type(err).__name__}: {err})") from None


def _to_8_bit(image):
    """Images of more than 8 bits a channel (Pillow modes I;16*, I, F) scaled to 8 bits, mode L."""
    from PIL import Image

    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        full = 65535.0
    else:                                                            # I (32-bit) and F: by their range
        top = float(np.nanmax(pixels)) if pixels.size else 0.0
        full = 1.0 if image.mode == "F" and top <= 1.0 else 255.0 if top <= 255.0 else 65535.0
    scaled = np.clip(np.nan_to_num(pixels) / full * 255.0, 0, 255)
    return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")


def check_crop_pct(crop_pct, source=None):
    """InputError unless crop_pct (the share of the resized image the center crop keeps: 0.875 or
    0.9 for timm's ViTs) is a number in [MIN_CROP_PCT, 1]; ``source`` names where it came from."""
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not MIN_CROP_PCT <= crop_pct <= 1:
        where = f"{source}: " if source else ""
        raise InputError(f"{where}crop_pct must be a number in [{MIN_CROP_PCT}, 1] (the share of the resized "
                         f"image the center crop keeps: 0.875 or 0.9 for timm's ViTs), got {crop_pct!r}")


def resize_and_crop(image, img_size, crop_pct=0.9, source="the image"):
    """Steps 1 and 2 above: a Pillow image of img_size (an int, or (height, width)); ImageError if
    the resize would need more than MAX_PIXELS (``source`` names the image in the message)."""
    from PIL import Image

    check_crop_pct(crop_pct)
    out_h, out_w = (img_size, img_size) if isinstance(img_size, int) else img_size
    target_h, target_w = math.floor(out_h / crop_pct), math.floor(out_w / crop_pct)
    w, h = image.size
    if target_h == target_w:                                         # torchvision's Resize(int)
        size = (target_w, int(target_w * h / w)) if w <= h else (int(target_h * w / h), target_h)
    else:                                                            # timm's ResizeKeepRatio
        ratio = min(h / target_h, w / target_w)
        size = (round(w / ratio), round(h / ratio))                  # (width, height)
    if size[0] * size[1] > MAX_PIXELS:
        raise ImageError(f"{source} is {w} x {h} pixels: covering {target_w} x {target_h} would resize it to "
                         f"{size[0]} x {size[1]}, more than numpyvit's {MAX_PIXELS // 2**20} megapixels; crop it "
                         "to a less extreme shape first")
    image = image.resize(size, Image.BICUBIC)
    w, h = image.size
    top, left = int(round((h - out_h) / 2.0)), int(round((w - out_w) / 2.0))
    return image.crop((left, top, left + out_w, top + out_h))


def channels_first(image):
    """A Pillow image's pixels as uint8 (C, H, W)."""
    pixels = np.asarray(image)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def to_array(image, mean, std):
    """Step 3: (C, H, W) float32, (pixel / 255 - mean) / std per channel (numpyvit.data.normalize)."""
    return normalize(channels_first(image)[None], mean, std)[0]


def eval_transform(path, img_size, mean, std, crop_pct=0.9, channels=3):
    """The whole transform above for one image file: (C, H, W) float32."""
    return to_array(resize_and_crop(load_image(path, channels), img_size, crop_pct, path), mean, std)


def prepare_photos(paths, model):
    """(inputs (B, C, H, W) float32, the cropped photos as uint8 (B, H, W[, 3]) for drawing), for a
    model with a ``pretrained_cfg`` (or timm's ViT defaults)."""
    cfg = dict(TIMM_VIT_PREPROCESSING, **getattr(model, "pretrained_cfg", {}))
    size = model.patch_embed.img_size
    img_size = size[0] if size[0] == size[1] else size
    crops = [resize_and_crop(load_image(p, model.patch_embed.in_chans), img_size, cfg["crop_pct"], p) for p in paths]
    return np.stack([to_array(c, cfg["mean"], cfg["std"]) for c in crops]), np.stack([np.asarray(c) for c in crops])
