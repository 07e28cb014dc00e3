"""Augmentation for a whole batch at once: random affine maps (rotation, scale, translation,
optional mirroring) and random erasing; ``chain`` applies several in order.

B batch, C channels, H x W image size; P = H * W pixels per image.

Pixel (x, y) (column, row; y points down) of an image is the point p = (x, y) - c relative to
the image center c = ((W - 1) / 2, (H - 1) / 2). Each image b gets its own forward map

    p_out = A_b p_in + t_b,    A_b = s_b R(theta_b),    R(theta) = [[cos theta, -sin theta],
                                                                     [sin theta,  cos theta]]

(with y down, a positive theta turns the content clockwise on screen). To fill every output
pixel exactly once we run the map backwards: the output pixel at p takes the input value at

    q = A_b^-1 (p - t_b) = (1 / s_b) R(-theta_b) (p - t_b),

which lies between pixels, so it is read by bilinear interpolation. With x0 = floor(q_x),
wx = q_x - x0 (same for y), and v(i, j) the input at row i, column j,

    out = (1 - wy) * ((1 - wx) v(y0, x0)     + wx v(y0, x0 + 1))
        +      wy  * ((1 - wx) v(y0 + 1, x0) + wx v(y0 + 1, x0 + 1)),

where v is ``fill`` outside the image. This is implemented by padding every image with a
one-pixel border of ``fill`` and clamping q to that border, so the four reads are plain
gathers from one flat array: no Python loop over images and no bounds masks. The weights
form above is exact at wx, wy in {0, 1}, so an integer shift moves pixel values unchanged.
"""
import numpy as np


def affine_transform(x, angle, scale, translate, fill=0.0):
    """Rotate by ``angle`` degrees, scale by ``scale`` and shift by ``translate`` pixels.

    x: (B, C, H, W) float; angle, scale: (B,); translate: (B, 2) as (dx, dy), positive moves
    the content right / down. Returns (B, C, H, W) float32; pixels from outside are ``fill`` (one
    value, or one per channel).
    """
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {x.shape}")
    B, C, H, W = x.shape
    theta = np.deg2rad(np.asarray(angle, dtype=np.float64))  # (B,)
    inv_s = 1.0 / np.asarray(scale, dtype=np.float64)  # (B,)
    tx, ty = np.asarray(translate, dtype=np.float64).T  # (B,) each
    cos, sin = np.cos(theta) * inv_s, np.sin(theta) * inv_s
    cx, cy = (W - 1) / 2, (H - 1) / 2
    # q = M (p - t) with M = R(-theta) / s = [[cos, sin], [-sin, cos]]; in absolute pixel
    # coordinates q_abs = M p_abs + o with o = c - M (c + t).
    ox = cx - (cos * (cx + tx) + sin * (cy + ty))  # (B,)
    oy = cy - (-sin * (cx + tx) + cos * (cy + ty))  # (B,)
    m = np.stack([cos, sin, ox, -sin, cos, oy]).astype(np.float32)[:, :, None, None]  # (6, B, 1, 1)
    px = np.arange(W, dtype=np.float32)[None, None, :]  # (1, 1, W)
    py = np.arange(H, dtype=np.float32)[None, :, None]  # (1, H, 1)
    qx = np.clip(m[0] * px + m[1] * py + m[2], -1, W)  # (B, H, W) source column
    qy = np.clip(m[3] * px + m[4] * py + m[5], -1, H)  # (B, H, W) source row

    x0 = np.minimum(np.floor(qx), W - 1)  # in -1..W-1, so x0 + 1 is still on the padded border
    y0 = np.minimum(np.floor(qy), H - 1)
    wx = (qx - x0).reshape(B, 1, H * W)  # (B, 1, P)
    wy = (qy - y0).reshape(B, 1, H * W)

    Wp = W + 2  # padded width; padded index = original index + 1
    padded = np.empty((B, C, H + 2, Wp), dtype=np.float32)
    padded[...] = np.asarray(fill, dtype=np.float32).reshape(-1, 1, 1)  # one value, or one per channel
    padded[:, :, 1:-1, 1:-1] = x
    flat = padded.reshape(-1)  # (B * C * (H + 2) * Wp,)
    start = (np.arange(B * C) * ((H + 2) * Wp)).reshape(B, C, 1)  # (B, C, 1) image offsets
    i00 = ((y0 + 1) * Wp + (x0 + 1)).astype(np.intp).reshape(B, 1, H * W) + start  # (B, C, P)

    top = (1 - wx) * flat[i00] + wx * flat[i00 + 1]  # (B, C, P) row y0
    bottom = (1 - wx) * flat[i00 + Wp] + wx * flat[i00 + Wp + 1]  # (B, C, P) row y0 + 1
    return ((1 - wy) * top + wy * bottom).reshape(B, C, H, W)


class RandomAffine:
    """Per image: rotation uniform in +-``max_rotate`` degrees, scale uniform in ``scale``,
    shift uniform in +-``max_translate`` pixels along each axis; see the module docstring.
    With ``hflip``, each image is also mirrored left-right with probability 1/2 (right for
    clothes, wrong for digits).

    ``fill`` is the value of pixels that come from outside the image (one, or one per channel).
    Augment after normalizing and pass the normalized background, ``(0 - mean) / std``, so that
    the new border looks like the old one.

    Call it as ``aug(x, rng)`` with x (B, C, H, W) float and a ``numpy.random.Generator``;
    it returns a new (B, C, H, W) float32 array.
    """

    def __init__(self, max_translate=2.0, max_rotate=10.0, scale=(0.9, 1.1), fill=0.0, hflip=False):
        if max_translate < 0 or max_rotate < 0:
            raise ValueError(
                f"max_translate and max_rotate must be >= 0, got {max_translate} and {max_rotate}"
            )
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
        self.max_translate = float(max_translate)
        self.max_rotate = float(max_rotate)
        self.scale = (float(scale[0]), float(scale[1]))
        self.fill = float(fill) if np.ndim(fill) == 0 else tuple(float(v) for v in fill)
        self.hflip = bool(hflip)

    def sample(self, batch, rng):
        """Random (angle (B,), scale (B,), translate (B, 2)) for ``batch`` images."""
        angle = rng.uniform(-self.max_rotate, self.max_rotate, batch)
        scale = rng.uniform(self.scale[0], self.scale[1], batch)
        translate = rng.uniform(-self.max_translate, self.max_translate, (batch, 2))
        return angle, scale, translate

    def __call__(self, x, rng):
        out = affine_transform(x, *self.sample(len(x), rng), fill=self.fill)
        if self.hflip:
            mirrored = rng.random(len(x)) < 0.5                          # (B,)
            out[mirrored] = out[mirrored, :, :, ::-1]
        return out

    def __repr__(self):
        return (f"RandomAffine(max_translate={self.max_translate}, max_rotate={self.max_rotate}, "
                f"scale={self.scale}, fill={self.fill}, hflip={self.hflip})")


class RandomErasing:
    """Random erasing (Zhong et al. 2017, "Random Erasing Data Augmentation"): each image, with
    probability ``p``, gets one rectangle of its pixels replaced by noise, so the model cannot
    lean on any one part of the image.

    Per erased image: area fraction a uniform in ``area``, aspect ratio r = h / w log-uniform in
    ``ratio``; h = round(sqrt(a H W r)) and w = round(sqrt(a H W / r)), each clipped to [1, H]
    and [1, W]; the top-left corner is uniform over the places where the rectangle fits. Every
    pixel inside (all channels) gets an independent N(0, 1) value: noise on the scale of
    normalized images, so erase after normalizing (as ``fit`` does).

    Call it as ``erase(x, rng)`` with x (B, C, H, W) float and a ``numpy.random.Generator``;
    it returns a new (B, C, H, W) float32 array.
    """

    def __init__(self, p=0.5, area=(0.02, 0.4), ratio=(0.3, 1 / 0.3)):   # the paper's values
        if not 0 <= p <= 1:
            raise ValueError(f"p (the share of images erased) must be in [0, 1], got {p}")
        if not 0 < area[0] <= area[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"need 0 < area[0] <= area[1] <= 1 and 0 < ratio[0] <= ratio[1], got "
                             f"area={area}, ratio={ratio}")
        self.p, self.area, self.ratio = float(p), tuple(map(float, area)), tuple(map(float, ratio))

    def __call__(self, x, rng):
        B, C, H, W = x.shape
        erased = rng.random(B) < self.p                                           # (B,)
        area = rng.uniform(*self.area, B) * (H * W)                               # (B,) pixels
        r = np.exp(rng.uniform(np.log(self.ratio[0]), np.log(self.ratio[1]), B))  # (B,) h / w
        h = np.clip(np.rint(np.sqrt(area * r)), 1, H).astype(np.intp)            # (B,)
        w = np.clip(np.rint(np.sqrt(area / r)), 1, W).astype(np.intp)
        top = (rng.random(B) * (H - h + 1)).astype(np.intp)                       # (B,) in 0..H-h
        left = (rng.random(B) * (W - w + 1)).astype(np.intp)
        rows = np.arange(H)[None, :, None]                                        # (1, H, 1)
        cols = np.arange(W)[None, None, :]                                        # (1, 1, W)
        inside = ((rows >= top[:, None, None]) & (rows < (top + h)[:, None, None])
                  & (cols >= left[:, None, None]) & (cols < (left + w)[:, None, None])
                  & erased[:, None, None])                                        # (B, H, W)
        noise = rng.standard_normal(x.shape, dtype=np.float32)                    # (B, C, H, W)
        return np.where(inside[:, None], noise, x).astype(np.float32, copy=False)

    def __repr__(self):
        return f"RandomErasing(p={self.p}, area={self.area}, ratio={self.ratio})"


def chain(augmentations):
    """One augmentation ``(x, rng) -> x`` that applies ``augmentations`` in order; None if the
    list is empty (no augmentation)."""
    augmentations = list(augmentations)
    if not augmentations:
        return None

    def augment(x, rng):
        for one in augmentations:
            x = one(x, rng)
        return x
    return augment
