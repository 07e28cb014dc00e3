"""The losses: softmax cross-entropy with label smoothing, averaged over the batch (classification),
and the masked autoencoder's mean squared error on the hidden patches (pretraining).

CrossEntropyLoss implements numpyvit.reference.cross_entropy_forward / cross_entropy_backward
(docs/math.md, section 10).

Shapes: logits a (B, K), integer labels y (B,) (docs/math.md's notation).

Forward:   log p = a - logsumexp(a)          (stable: logsumexp(a) = c + log sum exp(a - c), c = max a)
           target = (1 - alpha) * onehot(y) + alpha / K    the smoothed target (alpha: label_smoothing)
           loss = -(1/B) * sum_b sum_k target[b, k] * log p[b, k]
Backward:  da = (p - target) / B * dloss
Caches: log p (B, K) and the labels (the backward takes p = exp(log p)).
"""
import numpy as np

from .backend import array_module
from .layers.base import Module


class CrossEntropyLoss(Module):
    def __init__(self, label_smoothing=0.0):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, logits, labels):
        """The mean loss as a 0-d array on the logits' device (``float()`` it to log it)."""
        xp = array_module(logits)
        labels = check_labels(logits, labels)
        B, K = logits.shape
        shifted = logits - logits.max(axis=1, keepdims=True)          # (B, K), max 0 per row
        log_p = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        eps, c = self.label_smoothing, log_p.dtype.type              # c: constants in the logits' dtype,
        rows = xp.arange(B)                                          # which NumPy 1.x would otherwise widen
        # sum_k q log p = (1 - eps) log p[y] + (eps / K) sum_k log p
        loss = -(c(1 - eps) * log_p[rows, labels].sum() + c(eps / K) * log_p.sum()) * c(1 / B)
        self._save_for_backward(log_p, labels)
        return loss

    def backward(self, dloss=1.0):
        log_p, labels = self._saved()
        xp = array_module(log_p)
        B, K = log_p.shape
        eps = self.label_smoothing
        dz = xp.exp(log_p)                                           # p
        dz -= eps / K
        dz[xp.arange(B), labels] -= 1 - eps                          # p - q
        dz *= dz.dtype.type(1.0 / B) * dloss                        # in place: stays in dz's dtype
        return dz


def check_labels(logits, labels):
    """Labels as integers on the logits' device, or a clear error. The value range is
    checked while the labels are on the host (before the move), so a GPU step never waits."""
    xp = array_module(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (B, num_classes), got {tuple(logits.shape)}")
    on_host = array_module(labels) is np
    labels = np.asarray(labels) if on_host else labels
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must have shape ({logits.shape[0]},) to match logits {tuple(logits.shape)}, "
                         f"got {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    K = logits.shape[1]
    if on_host and labels.size and (labels.min() < 0 or labels.max() >= K):
        raise ValueError(f"labels must be in [0, {K - 1}] for {K} classes, got values in "
                         f"[{labels.min()}, {labels.max()}]")
    return xp.asarray(labels) if on_host else labels


class MaskedMSELoss(Module):
    """The mean squared error per pixel over the hidden patches (MAE's loss). Implements
    numpyvit.reference.masked_mse_forward / masked_mse_backward (docs/math.md, section 14).

    pred, target (B, N, P) (P pixels a patch), hidden (B, N) 0/1, H = sum of hidden:
    Forward:   loss = (1 / H) sum_bi hidden_bi (1 / P) sum_p (pred - target)_bip^2
    Backward:  dpred = dloss 2 (pred - target) hidden / (P H)
    """

    def forward(self, pred, target, hidden):
        """The loss as a 0-d array on pred's device."""
        xp = array_module(pred)
        hidden = xp.asarray(hidden, dtype=pred.dtype)
        if pred.shape != target.shape or hidden.shape != pred.shape[:2]:
            raise ValueError(f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and hidden "
                             f"{tuple(hidden.shape)} must be (B, N, P), (B, N, P) and (B, N)")
        err = pred - target
        scale = pred.dtype.type(1.0 / (err.shape[-1] * float(hidden.sum())))
        self._save_for_backward(err, hidden, scale)
        return ((err * err).sum(axis=-1) * hidden).sum() * scale

    def backward(self, dloss=1.0):
        err, hidden, scale = self._saved()
        err *= hidden[:, :, None]
        err *= scale * err.dtype.type(2 * dloss)                    # in place: the cache is done
        return err
