"""Evaluating a model on a labelled set: mean loss, accuracy, predictions.

With ``views`` (test-time augmentation), each image x is classified by the mean logits over
variants v_1(x) ... v_V(x) of it, each v mirroring x left-right or not and moving it by
(dy, dx) pixels:

    z = (1/V) sum_v f(v(x))          (K,) per image

so softmax(z) is the normalized geometric mean of the views' probabilities; loss, accuracy and
predictions are those of z. ``tta_views`` lists the views a training augmentation could have made.

N images, K classes. Sums are kept on the model's device and read once at the end, so a
CuPy evaluation waits for the GPU only once.
"""
from dataclasses import dataclass

import numpy as np

from ..backend import to_numpy
from ..data import background, iterate_batches
from ..data.augment import affine_transform
from ..engine.shards import split_rows
from ..losses import CrossEntropyLoss


@dataclass
class Evaluation:
    loss: float               # mean cross-entropy (with the given label smoothing)
    accuracy: float           # fraction of correct predictions, in [0, 1]
    predictions: np.ndarray   # (N,) int64 predicted class of each image, on the host


def tta_views(mirror, shift):
    """[(mirror, dy, dx), ...]: the image as it is and moved ``shift`` pixels up, down, left and right
    (shift 0: not moved), each also mirrored when ``mirror``; 10 views for mirror and shift 1."""
    moves = [(0, 0)] + ([(-shift, 0), (shift, 0), (0, -shift), (0, shift)] if shift else [])
    return [(flip, dy, dx) for flip in ((False, True) if mirror else (False,)) for dy, dx in moves]


def tta_view(x, mirror, dy, dx, fill):
    """x (B, C, H, W) on the host, mirrored left-right (if ``mirror``), then moved dy pixels down and dx
    right by ``numpyvit.data.augment.affine_transform`` (an integer shift moves pixel values unchanged);
    the pixels uncovered get ``fill`` (one value, or one per channel: a black pixel, normalized)."""
    if mirror:
        x = x[..., ::-1]
    B = len(x)
    return affine_transform(x, np.zeros(B), np.ones(B), np.tile([dx, dy], (B, 1)), fill)   # (B, C, H, W) float32


def evaluate(model, images, labels, *, mean=None, std=None, batch_size=500, label_smoothing=0.0, views=None,
             world=None):
    """Loss, accuracy and predictions of ``model`` in eval mode, caching nothing (its mode is
    restored after); with ``views`` (e.g. ``tta_views(True, 1)``), of the mean logits over them.

    ``images`` are (N, H, W) or (N, C, H, W) uint8 with ``mean``/``std`` for normalizing (e.g. a
    Dataset's), or already normalized (N, C, H, W) floats; see ``numpyvit.data.iterate_batches``.
    With a ``world`` of several ranks (numpyvit.distributed), each rank evaluates its own slice of
    the images and the sums and predictions are combined on every rank.
    """
    if len(labels) == 0:
        raise ValueError("evaluate needs at least one image")
    if views is not None and not len(views):
        raise ValueError("views must list at least one (mirror, dy, dx) view, e.g. tta_views(False, 0)")
    if views is not None and (mean is None or std is None):
        raise ValueError("views need the uint8 images with mean= and std=: a moved image is filled with "
                         "black pixels, (0 - mean) / std once normalized")
    if world is not None and world.size > 1:
        return _evaluate_split(model, images, labels, world, mean=mean, std=std, batch_size=batch_size,
                               label_smoothing=label_smoothing, views=views)
    xp = model.xp
    criterion = CrossEntropyLoss(label_smoothing)
    loss_sum, correct = xp.zeros((), xp.float64), xp.zeros((), xp.int64)
    predictions, fill = [], None if views is None else background(mean, std)
    with model.inference():
        for x, y in iterate_batches(images, labels, batch_size, shuffle=False, mean=mean, std=std,
                                    xp=xp if views is None else np):   # views are made on the host, as in training
            y = xp.asarray(y)
            logits = (model(x) if views is None                      # (B, K)
                      else sum(model(xp.asarray(tta_view(x, *v, fill))) for v in views) / len(views))
            loss_sum += criterion.forward(logits, y) * len(y)
            predicted = logits.argmax(axis=1)                        # (B,)
            correct += (predicted == y).sum()
            predictions.append(predicted)
    n = len(labels)
    predictions = to_numpy(xp.concatenate(predictions)).astype(np.int64)
    return Evaluation(float(loss_sum) / n, int(correct) / n, predictions)


def _evaluate_split(model, images, labels, world, **kwargs):
    """evaluate() of this rank's contiguous slice, combined over the ranks."""
    n = len(labels)
    mine = split_rows(n, world.size)[world.rank]
    part = evaluate(model, images[mine], labels[mine], **kwargs) if mine.stop > mine.start else None
    count = mine.stop - mine.start
    loss_sum, correct = world.sum([part.loss * count if part else 0.0, part.accuracy * count if part else 0.0])
    predictions = np.concatenate([np.asarray(p, np.int64) for p in world.gather(
        part.predictions.tolist() if part else [])])
    return Evaluation(loss_sum / n, round(correct) / n, predictions)
