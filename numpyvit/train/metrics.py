"""Evaluating a model on a labelled set: mean loss, accuracy, predictions.

N images, K classes. Sums are kept on the model's device and read once at the end, so a
CuPy evaluation waits for the GPU only once.
"""
from dataclasses import dataclass

import numpy as np

from ..backend import to_numpy
from ..data import iterate_batches
from ..losses import CrossEntropyLoss


@dataclass
class Evaluation:
    loss: float               # mean cross-entropy (with the given label smoothing)
    accuracy: float           # fraction of correct predictions, in [0, 1]
    predictions: np.ndarray   # (N,) int64 predicted class of each image, on the host


def evaluate(model, images, labels, *, mean=None, std=None, batch_size=500, label_smoothing=0.0):
    """Loss, accuracy and predictions of ``model`` in eval mode, caching nothing (its mode is
    restored after).

    ``images`` are (N, H, W) uint8 with ``mean``/``std`` for normalizing (e.g. a Dataset's),
    or already normalized (N, 1, H, W) floats; see ``numpyvit.data.iterate_batches``.
    """
    if len(labels) == 0:
        raise ValueError("evaluate needs at least one image")
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
