"""From uint8 images to normalized float32 mini-batches on the training device.

B batch, N samples, H x W image size (28 x 28 for MNIST).

    x = (pixel / 255 - mean) / std        pixel in 0..255, mean/std of the training pixels in [0, 1]

``normalize`` computes this through a 256-entry lookup table, so an image costs one gather
instead of a cast, a divide, a subtract and a divide. ``iterate_batches`` takes either the
uint8 images and normalizes each batch (nothing float the size of the data set is kept; about
0.1 ms per 128 images) or images normalized once up front (60000 MNIST images are 188 MB of
float32), optionally augments on the host, and moves each batch to the array module ``xp``
(NumPy or CuPy) with one ``xp.asarray`` for x and one for y.
"""
import math

import numpy as np

from ..errors import InputError

MIN_STD = 1e-3     # pixels lie in [0, 1]: a real data set's std is ~0.1-0.3; below this, a typo or a broken file


def check_normalization(mean, std, source="the normalization"):
    """(mean, std) as lists of floats, each one number or one per channel (1 or 3), finite, std at
    least MIN_STD; InputError naming ``source`` otherwise. Every door that takes a mean and std
    (checkpoints, weight files, photos, folders) comes through here."""
    def numbers(name, value):
        values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
        if not (len(values) in (1, 3) and all(isinstance(v, (int, float, np.floating, np.integer))
                                              and not isinstance(v, bool) and math.isfinite(v) for v in values)):
            raise InputError(f"{source}: {name} must be one finite number or three (R, G, B), got {value!r}")
        return [float(v) for v in values]

    mean, std = numbers("mean", mean), numbers("std", std)
    if min(std) < MIN_STD:
        raise InputError(f"{source}: std must be at least {MIN_STD:g} (pixels lie in [0, 1]), got {std}: "
                         "normalizing by it would blow the images up")
    return mean, std


def background(mean, std):
    """The normalized value of a black pixel, (0 - mean) / std: one, or one per channel."""
    value = (0.0 - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)
    return float(value) if value.ndim == 0 else tuple(value.tolist())


def normalize(images, mean, std):
    """(N, H, W) or (N, C, H, W) uint8 -> (N, C, H, W) float32 holding (images / 255 - mean) / std,
    with one mean and std for all channels or one per channel."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise TypeError(f"normalize expects (N, H, W) or (N, C, H, W) uint8 images, got {images.shape} "
                        f"{images.dtype}")
    images = images[:, None] if images.ndim == 3 else images                  # (N, C, H, W)
    C = images.shape[1]
    mean, std = check_normalization(mean, std)
    mean, std = (np.broadcast_to(np.asarray(v, np.float64).reshape(-1), (C,)) for v in (mean, std))
    tables = ((np.arange(256) / 255.0 - mean[:, None]) / std[:, None]).astype(np.float32)  # (C, 256)
    if C == 1:
        return np.take(tables[0], images)                                      # (N, 1, H, W)
    out = np.empty(images.shape, np.float32)
    for c in range(C):
        np.take(tables[c], images[:, c], out=out[:, c])
    return out


def iterate_batches(images, labels, batch_size, *, shuffle, rng=None, augment=None,
                    drop_last=False, mean=None, std=None, xp=np):
    """Yield one epoch of ``(x, y)``: x (B, C, H, W) float32 normalized, y (B,) int64, both
    ``xp`` arrays.

    images: either (N, H, W) or (N, C, H, W) uint8, normalized batch by batch with ``mean`` and
        ``std`` (give both, e.g. ``dataset.mean, dataset.std``), or the (N, C, H, W) float output
        of ``normalize``, used as it is (then leave ``mean``/``std`` out).
    labels: (N,) integers.
    shuffle: visit the samples in the order of ``rng.permutation(N)`` (every sample once).
    rng: a seeded ``numpy.random.Generator``; needed to shuffle or augment, so that a seed
        reproduces a run.
    augment: optional ``(x (B, C, H, W) float32, rng) -> same shape``, applied on the host.
    drop_last: skip the final batch when it has fewer than ``batch_size`` samples.
    """
    raw = images.dtype == np.uint8 and images.ndim in (3, 4)
    if raw and (mean is None or std is None):
        raise ValueError("uint8 images need mean= and std= (e.g. dataset.mean, dataset.std)")
    if not raw and (images.ndim != 4 or images.dtype.kind != "f"):
        raise TypeError(f"images must be (N, H, W) or (N, C, H, W) uint8, or normalized (N, C, H, W) float, "
                        f"got {images.shape} {images.dtype}")
    if not raw and (mean is not None or std is not None):
        raise ValueError("these float images are already normalized; leave out mean= and std=")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels; the counts must agree")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if rng is None and (shuffle or augment is not None):
        raise ValueError("shuffling and augmentation need rng=numpy.random.default_rng(seed)")

    n = len(images)
    order = rng.permutation(n) if shuffle else np.arange(n)  # (N,) sample indices in visit order
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]  # (B,)
        if raw:
            x = normalize(images[idx], mean, std)  # (B, C, H, W)
        else:
            x = images[idx].astype(np.float32, copy=False)  # (B, C, H, W)
        if augment is not None:
            x = augment(x, rng)
        yield xp.asarray(x), xp.asarray(labels[idx].astype(np.int64))
