"""Evaluating a model on a labelled set: mean loss, accuracy, predictions.

N images, K classes. Sums are kept on the model's device and read once at the end, so a
CuPy evaluation waits for the GPU only once.
"""
from dataclasses import dataclass

import numpy as np

from ..backend import to_numpy
from ..data import iterate_batches
from ..engine.shards import split_rows
from ..losses import CrossEntropyLoss


@dataclass
class Evaluation:
    loss: float               # mean cross-entropy (with the given label smoothing)
    accuracy: float           # fraction of correct predictions, in [0, 1]
    predictions: np.ndarray   # (N,) int64 predicted class of each image, on the host


def evaluate(model, images, labels, *, mean=None, std=None, batch_size=500, label_smoothing=0.0, world=None):
    """Loss, accuracy and predictions of ``model`` in eval mode, caching nothing (its mode is
    restored after).

    ``images`` are (N, H, W) or (N, C, H, W) uint8 with ``mean``/``std`` for normalizing (e.g. a
    Dataset's), or already normalized (N, C, H, W) floats; see ``numpyvit.data.iterate_batches``.
    With a ``world`` of several ranks (numpyvit.distributed), each rank evaluates its own slice of
    the images and the sums and predictions are combined on every rank.
    """
    if len(labels) == 0:
        raise ValueError("evaluate needs at least one image")
    if world is not None and world.size > 1:
        return _evaluate_split(model, images, labels, world, mean=mean, std=std, batch_size=batch_size,
                               label_smoothing=label_smoothing)
    xp = model.xp
    criterion = CrossEntropyLoss(label_smoothing)
    loss_sum, correct = xp.zeros((), xp.float64), xp.zeros((), xp.int64)
    predictions = []
    with model.inference():
        for x, y in iterate_batches(images, labels, batch_size, shuffle=False, mean=mean, std=std, xp=xp):
            logits = model(x)                                        # (B, K)
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
