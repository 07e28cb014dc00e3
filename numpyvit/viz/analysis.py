"""What a ViT has learned, as NumPy arrays (no matplotlib needed here; ``plots.py`` draws them).

Shapes: L layers, B images, Hd heads, T = 1 + N tokens ([CLS] first), N = Gh * Gw patches on a
(Gh, Gw) grid of (Ph, Pw)-pixel patches, D width, C channels, K classes.
Attention inputs are ``model.attention_maps(x)``: a list of L arrays (B, Hd, T, T) whose row i
is the distribution query token i spreads over the key tokens (each row sums to 1).

[CLS] attention   A[..., 0, 1:], the [CLS] query's weights on the N patches, as a (Gh, Gw) map.
                  Not renormalized: the map sums to 1 - A[..., 0, 0] (what [CLS] keeps for itself).
Rollout           Abnar & Zuidema 2020. The residual x + attn(x) mixes tokens by about 0.5 I + 0.5 A:
                  A'_l = rownorm(0.5 * mean_heads(A_l) + 0.5 * I),   R = A'_L ... A'_2 A'_1   (B, T, T)
                  R[b, 0, 1:] is how much each patch flows into the final [CLS] token.
Attention dist.   The ViT paper's Fig. 7 right. Drop the [CLS] query row and key column, renormalize
                  each patch query's row over the patch keys: P_ij = A_ij / sum_j' A_ij'  (i, j patches),
                  then  dist[l, h] = mean over images b and queries i of  sum_j P_ij * |c_i - c_j|,
                  c_i the pixel centre of patch i. 0 = every patch attends to itself only.
Position sim.     cos(e_i, e_j) = e_i . e_j / (|e_i| |e_j|) for the N patch position embeddings (N, N).
Filter PCA        X = the D patch-embedding filters flattened to C*Ph*Pw, centered over the D filters;
                  X = U S V^T (SVD). Components: the first k rows of V^T (orthonormal), reshaped to
                  (C, Ph, Pw), each signed so that its largest-magnitude entry is positive;
                  explained variance ratio: S_i^2 / sum(S^2).
Confusion matrix  M[t, p] = number of images of true class t predicted as p.
Also here: ``saliency`` (the gradient of a class logit with respect to the pixels), ``predict``
(batched class probabilities in eval mode) and ``to_grayscale`` / ``resize``
(area averaging), which turn an image file's pixels into the model's input size.
"""
import numpy as np

from ..backend import to_numpy
from ..reference import patchify, unpatchify


def _attention_layers(attentions):
    """The L arrays (B, Hd, T, T) of ``attentions`` as NumPy arrays, checked to share one shape."""
    layers = [to_numpy(a) for a in attentions]
    if not layers:
        raise ValueError("attentions is empty: pass model.attention_maps(x), one array per layer")
    shapes = {a.shape for a in layers}
    if len(shapes) != 1 or len(layers[0].shape) != 4 or layers[0].shape[-1] != layers[0].shape[-2]:
        raise ValueError("attentions must be L arrays of one shape (B, heads, T, T), as returned by "
                         f"model.attention_maps(x); got shapes {[a.shape for a in layers]}")
    return layers


def stack_attentions(attentions):
    """A list of L arrays (B, Hd, T, T) (NumPy or CuPy), or one such array of shape
    (L, B, Hd, T, T), as one NumPy array (L, B, Hd, T, T)."""
    return np.stack(_attention_layers(attentions))


def _check_tokens(T, grid_size):
    Gh, Gw = grid_size
    if T != 1 + Gh * Gw:
        raise ValueError(f"attention over {T} tokens does not match a {Gh}x{Gw} patch grid plus [CLS] "
                         f"({1 + Gh * Gw} tokens): pass model.patch_embed.grid_size")


def cls_attention_maps(attention, grid_size):
    """The [CLS] query's attention on the patches, as maps (..., Gh, Gw), from any attention
    array (..., T, T): one layer (B, Hd, T, T), a stack (L, B, Hd, T, T), or a rollout (B, T, T)."""
    attention = to_numpy(attention)
    _check_tokens(attention.shape[-1], grid_size)
    return attention[..., 0, 1:].reshape(*attention.shape[:-2], *grid_size)


def upsample(maps, patch_size):
    """Patch-grid maps (..., Gh, Gw) -> image-sized maps (..., Gh*Ph, Gw*Pw): every pixel of a
    patch gets that patch's value (nearest neighbour, so patch borders stay visible)."""
    Ph, Pw = patch_size
    return np.repeat(np.repeat(np.asarray(maps), Ph, axis=-2), Pw, axis=-1)


def attention_rollout(attentions):
    """R = A'_L ... A'_1 (B, T, T) with A'_l = rownorm(0.5 * mean_heads(A_l) + 0.5 * I)."""
    rollout = None
    for layer in _attention_layers(attentions):                       # (B, Hd, T, T), first layer first
        mixed = 0.5 * layer.mean(axis=1, dtype=np.float64) + 0.5 * np.eye(layer.shape[-1])   # (B, T, T)
        mixed /= mixed.sum(axis=-1, keepdims=True)
        rollout = mixed if rollout is None else mixed @ rollout      # A'_l (A'_{l-1} ... A'_1)
    return rollout


def patch_distances(grid_size, patch_size):
    """(N, N) Euclidean distance in pixels between the centres of patches i and j (row-major)."""
    (Gh, Gw), (Ph, Pw) = grid_size, patch_size
    rows, cols = np.meshgrid(np.arange(Gh), np.arange(Gw), indexing="ij")
    centres = np.stack([(rows.ravel() + 0.5) * Ph, (cols.ravel() + 0.5) * Pw], axis=1)   # (N, 2)
    return np.linalg.norm(centres[:, None, :] - centres[None, :, :], axis=-1)


def mean_attention_distance(attentions, grid_size, patch_size):
    """(L, Hd) mean attention distance in pixels per layer and head (see the module docstring:
    [CLS] is dropped and each patch query's row renormalized over the patch keys), averaged over
    the query patches and the images."""
    layers = _attention_layers(attentions)
    _check_tokens(layers[0].shape[-1], grid_size)
    distance = patch_distances(grid_size, patch_size)                 # (N, N)
    result = []
    for A in layers:                                                  # one layer at a time: less memory
        P = A[:, :, 1:, 1:].astype(np.float64)                        # (B, Hd, N, N) patch -> patch
        # a row with all its mass on [CLS] has no patch distribution; it then counts as distance 0
        P /= np.maximum(P.sum(axis=-1, keepdims=True), np.finfo(np.float64).tiny)
        result.append((P * distance).sum(axis=-1).mean(axis=(0, 2)))  # (Hd,) mean over images, queries
    return np.stack(result)                                           # (L, Hd)


def position_similarity(pos):
    """(N, N) cosine similarity between the position embeddings pos (N, D) of the patches."""
    pos = to_numpy(pos).astype(np.float64)
    if pos.ndim != 2:
        raise ValueError(f"pos must be (N, D), e.g. model.patch_position_embeddings(); got {pos.shape}")
    norms = np.linalg.norm(pos, axis=1)                               # (N,)
    if np.any(norms == 0):
        zero = np.flatnonzero(norms == 0).tolist()
        raise ValueError(f"the position embeddings of patches {zero} are all zero, so their cosine "
                         "similarity is undefined")
    unit = pos / norms[:, None]
    return np.clip(unit @ unit.T, -1.0, 1.0)


def patch_filter_pca(weight, k):
    """(components (k, C, Ph, Pw), explained_variance_ratio (k,)) of the patch-embedding
    filters ``weight`` (D, C, Ph, Pw), e.g. ``model.patch_embed.proj.weight.data``."""
    weight = to_numpy(weight).astype(np.float64)
    if weight.ndim != 4:
        raise ValueError(f"weight must be (D, C, Ph, Pw), got shape {weight.shape}")
    X = weight.reshape(len(weight), -1)                               # (D, C*Ph*Pw)
    if not 1 <= k <= min(X.shape):
        raise ValueError(f"k must be between 1 and min(D, C*Ph*Pw) = {min(X.shape)}, got {k}")
    X = X - X.mean(axis=0)
    _, S, Vt = np.linalg.svd(X, full_matrices=False)                  # Vt (min(D, F), F)
    components = Vt[:k]
    peak = np.abs(components).argmax(axis=1)
    components = components * np.sign(components[np.arange(k), peak])[:, None]
    total = (S ** 2).sum()
    ratio = (S[:k] ** 2) / total if total > 0 else np.zeros(k)
    return components.reshape(k, *weight.shape[1:]), ratio


def confusion_matrix(y_true, y_pred, num_classes):
    """(K, K) int64 counts M[t, p] of images with true class t predicted as p."""
    y_true, y_pred = np.asarray(y_true).astype(np.int64), np.asarray(y_pred).astype(np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D of one length, got {y_true.shape} and {y_pred.shape}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} holds labels outside 0..{num_classes - 1}: {y.min()}..{y.max()}")
    counts = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def predict(model, images, batch_size=500):
    """Class probabilities (N, K) float64 of normalized images (N, C, H, W), in eval mode and in
    batches (the model's mode is restored afterwards)."""
    with model.inference():
        logits = np.concatenate([to_numpy(model(images[i:i + batch_size]))
                                 for i in range(0, len(images), batch_size)]).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)                       # stable softmax
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)


def saliency(model, images, target=None):
    """Gradient saliency (Simonyan et al. 2014): how much each pixel moves the chosen class's logit,
        s[b, i, j] = max over channels c of |d logit[b, target_b] / d images[b, c, i, j]|,
    from one forward and one backward in eval mode (dropout off), with every parameter frozen
    meanwhile so no weight gradient is computed or accumulated. images (B, C, H, W) normalized;
    target: the class per image (default: the predicted one). Returns (saliency (B, H, W)
    float64, target (B,) int64); the model's mode and parameters' flags are restored."""
    params = model.parameters()
    flags = [p.requires_grad for p in params]
    was_training = model.training
    model.eval()
    try:
        for p in params:
            p.requires_grad = False
        logits = to_numpy(model(images)).astype(np.float64)           # (B, K)
        target = logits.argmax(axis=1) if target is None else np.asarray(target, np.int64)
        one_hot = np.zeros(logits.shape, dtype=model.dtype)
        one_hot[np.arange(len(target)), target] = 1                   # d logit[target] / d logits
        dx = to_numpy(model.backward(one_hot)).astype(np.float64)     # (B, C, H, W)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad = flag
        model.train(was_training)
    return np.abs(dx).max(axis=1), target


def to_grayscale(image):
    """An image (H, W), (H, W, 3) or (H, W, 4) (uint8 0..255 or float 0..1, as read by
    matplotlib) -> (H, W) float in 0..1. Colour: luma 0.299 R + 0.587 G + 0.114 B; alpha dropped."""
    image = np.asarray(image)
    scale = 255.0 if image.dtype == np.uint8 else 1.0
    image = image.astype(np.float64) / scale
    if image.ndim == 3 and image.shape[2] in (3, 4):
        image = image[..., :3] @ np.array([0.299, 0.587, 0.114])
    if image.ndim != 2:
        raise ValueError(f"expected a gray (H, W) or colour (H, W, 3|4) image, got shape {image.shape}")
    return np.clip(image, 0.0, 1.0)


def _area_weights(n_in, n_out):
    """(n_out, n_in): output pixel o covers [o, o+1) * n_in / n_out of the input axis; its
    weight on input pixel i is the overlap with [i, i+1), rows normalized to sum to 1."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    i = np.arange(n_in)[None, :]
    overlap = np.minimum(edges[1:, None], i + 1) - np.maximum(edges[:-1, None], i)
    overlap = np.clip(overlap, 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def resize(image, size):
    """Resize a (H, W) image to size (h, w) by area averaging (each output pixel is the mean of
    the input area it covers; no aliasing when shrinking): out = Wy image Wx^T."""
    image = np.asarray(image, dtype=np.float64)
    (h, w), (H, W) = size, image.shape
    return _area_weights(H, h) @ image @ _area_weights(W, w).T       # (h, H) (H, W) (W, w)


def reconstructed_images(x, pred, hidden, patch_size, norm_pix_loss, mean, std):
    """A masked autoencoder's work as pictures: (originals, masked, reconstructions), each
    (B, H, W) (one channel) or (B, H, W, 3), pixels in [0, 1], hidden patches mid-gray in ``masked``.

    x (B, C, H, W) normalized images, pred (B, N, C Ph Pw) the decoder's output for every patch
    (``MaskedAutoencoder.predict``), hidden (B, N) 1 where a patch was hidden. A reconstruction is
    the prediction in the hidden patches and the image in the visible ones (the paper's figures).
    With ``norm_pix_loss`` the decoder predicts each patch normalized to mean 0, variance 1, so
    its brightness and contrast are taken from the original patch to draw it."""
    x, pred, hidden = to_numpy(x).astype(np.float64), to_numpy(pred).astype(np.float64), np.asarray(hidden, bool)
    patches = patchify(x, patch_size)                                 # (B, N, P)
    if norm_pix_loss:
        pred = pred * (patches.var(axis=-1, ddof=1, keepdims=True) + 1e-6) ** 0.5 + patches.mean(axis=-1, keepdims=True)
    mask = hidden[:, :, None]

    def picture(p):                                                   # patches (B, N, P) -> (B, H, W[, C])
        image = unpatchify(p, x.shape, patch_size).transpose(0, 2, 3, 1)
        return image[..., 0] if image.shape[-1] == 1 else image

    def pixels(p):                                                    # normalized -> [0, 1]
        return np.clip(picture(p * np.repeat(np.reshape(std, -1), p.shape[-1] // np.size(std))
                               + np.repeat(np.reshape(mean, -1), p.shape[-1] // np.size(mean))), 0, 1)
    originals = pixels(patches)
    hidden_pixels = picture(np.broadcast_to(mask, patches.shape)) != 0
    return originals, np.where(hidden_pixels, 0.5, originals), pixels(np.where(mask, pred, patches))
