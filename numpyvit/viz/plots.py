"""Figures of what a ViT has learned, written as PNG files (needs matplotlib: ``pip install numpyvit[plot]``).

Every ``plot_*`` function takes arrays (from ``numpyvit.viz.analysis``) and a path, writes one
PNG and returns the path. Figures are drawn on a bare ``matplotlib.figure.Figure`` with the Agg
canvas: no pyplot, no global state, no display needed. ``read_image`` loads a PNG/JPG for the model.

Shapes: L layers, Hd heads, (Gh, Gw) patch grid, N = Gh * Gw, (H, W) image, K classes. Images
to draw are (H, W) gray (uint8 0..255 or float) or (H, W, 3) colour.
"""
from pathlib import Path

import numpy as np

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ImportError as err:
    raise ImportError("numpyvit.viz.plots needs matplotlib: pip install matplotlib "
                      "(or pip install numpyvit[plot])") from err

from ..data.images import load_image
from .analysis import resize, upsample

DPI = 100
HEAT = "inferno"


def _figure(width, height):
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format=path.suffix[1:] or "png")   # exactly ``path``: no suffix added
    return path


def _show_image(ax, image):
    image = np.asarray(image)
    limits = dict(vmin=0, vmax=255) if image.dtype == np.uint8 else {}
    ax.imshow(image, cmap="gray", **limits)
    ax.set_xticks([])
    ax.set_yticks([])


def _overlay(ax, image, heat_grid, vmax):
    """The patch-grid map (Gh, Gw), upsampled to the image, as a heat map; a gray image's shape
    is outlined on top, white edged in black to show on any colour (a colour image is blended
    underneath instead)."""
    image = np.asarray(image)
    patch = (image.shape[0] // heat_grid.shape[0], image.shape[1] // heat_grid.shape[1])
    heat = upsample(heat_grid, patch)                                 # (H, W)
    if image.ndim == 3:
        ax.imshow(image)
    im = ax.imshow(heat, cmap=HEAT, vmin=0, vmax=vmax, alpha=0.6 if image.ndim == 3 else 1.0)
    if image.ndim == 2 and image.max() > image.min():
        level = [(float(image.min()) + float(image.max())) / 2]
        for colour, width in (("black", 2.2), ("white", 0.8)):           # a white line edged in black
            ax.contour(image, levels=level, colors=colour, linewidths=width)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def plot_attention_heads(image, cls_maps, path, title="[CLS] attention per layer and head"):
    """One image's [CLS] attention maps cls_maps (L, Hd, Gh, Gw): a row per layer, a column per
    head, a colour scale (and colorbar) per layer."""
    L, Hd = cls_maps.shape[:2]
    cell = min(1.4, 16 / (Hd + 1))
    fig = _figure(cell * (Hd + 1.6), cell * L + 0.6)
    axes = fig.subplots(L, Hd + 1, squeeze=False)
    for layer in range(L):
        _show_image(axes[layer, 0], image)
        axes[layer, 0].set_ylabel(f"layer {layer + 1}")
        vmax = float(cls_maps[layer].max())
        for head in range(Hd):
            im = _overlay(axes[layer, head + 1], image, cls_maps[layer, head], vmax)
            if layer == 0:
                axes[layer, head + 1].set_title(f"head {head + 1}", fontsize=9)
        fig.colorbar(im, ax=axes[layer, -1], shrink=0.9).ax.tick_params(labelsize=7)
    axes[0, 0].set_title("input", fontsize=9)
    fig.suptitle(title)
    return _save(fig, path)


def plot_attention_rollout(images, rollout_maps, path, titles=None):
    """Attention rollout rollout_maps (B, Gh, Gw) of images (B, H, W[, 3]): per image a row with
    the input, the rollout heat map, and its colour scale."""
    return _plot_maps(images, rollout_maps, path, titles, [float(m.max()) for m in rollout_maps],
                      "rollout: patch -> [CLS]", "rollout weight", "Attention rollout (Abnar & Zuidema 2020)")


def plot_saliency(images, maps, path, titles=None):
    """Gradient saliency maps (B, H, W) of images (B, H, W[, 3]): per image the input and the map
    over it (numpyvit.viz.saliency), its colour scale ending at the 99.5th percentile."""
    return _plot_maps(images, maps, path, titles, [float(np.percentile(m, 99.5)) or 1.0 for m in maps],
                      "|d logit / d pixel|", "saliency", "Gradient saliency of the predicted class (Simonyan et al. 2014)")


def _plot_maps(images, maps, path, titles, vmaxes, map_title, bar_label, title):
    """Per image a row: the input, then ``maps[b]`` (a patch grid or pixels) over it, with a colorbar."""
    B = len(images)
    fig = _figure(5.6, 2.5 * B + 0.5)
    axes = fig.subplots(B, 2, squeeze=False)
    for b in range(B):
        _show_image(axes[b, 0], images[b])
        axes[b, 0].set_title(titles[b] if titles else "input", fontsize=9)
        im = _overlay(axes[b, 1], images[b], maps[b], vmaxes[b])
        axes[b, 1].set_title(map_title, fontsize=9)
        fig.colorbar(im, ax=axes[b, 1], label=bar_label)
    fig.suptitle(title)
    return _save(fig, path)


def plot_position_similarity(similarity, grid_size, path):
    """The ViT paper's Fig. 7 (center): for each patch (r, c) of the grid, the cosine similarity
    of its position embedding to every patch's, similarity (N, N), as a small (Gh, Gw) map."""
    Gh, Gw = grid_size
    cell = min(0.75, 9 / max(Gh, Gw))
    fig = _figure(cell * Gw + 1.4, cell * Gh + 0.9)
    axes = fig.subplots(Gh, Gw, squeeze=False, gridspec_kw=dict(wspace=0.02, hspace=0.02))
    for i, ax in enumerate(axes.ravel()):
        im = ax.imshow(similarity[i].reshape(Gh, Gw), cmap="viridis", vmin=-1, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
    for r in range(Gh):
        axes[r, 0].set_ylabel(str(r + 1), rotation=0, ha="right", va="center", fontsize=8)
    for c in range(Gw):
        axes[-1, c].set_xlabel(str(c + 1), fontsize=8)
    fig.supxlabel("input patch column")
    fig.supylabel("input patch row")
    fig.colorbar(im, ax=axes, label="cosine similarity", shrink=0.8)
    fig.suptitle("Position embedding similarity")
    return _save(fig, path)


def plot_patch_filters(components, explained_ratio, path):
    """The ViT paper's Fig. 7 (left): principal components (k, C, Ph, Pw) of the patch-embedding
    filters; for C = 3 as colour, each rescaled to 0..1, else in gray (the mean over channels) on
    a scale symmetric about 0."""
    k, C = components.shape[:2]
    rows = -(-k // 8)                                                 # at most 8 per row
    cols = -(-k // rows)
    fig = _figure(1.1 * cols + 0.3, 1.25 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if i >= k:
            continue
        comp = components[i]
        if C == 3:
            rgb = comp.transpose(1, 2, 0)                             # (Ph, Pw, 3)
            ax.imshow((rgb - rgb.min()) / max(np.ptp(rgb), 1e-12))
        else:
            ax.imshow(comp.mean(axis=0), cmap="gray", vmin=-np.abs(comp).max(), vmax=np.abs(comp).max())
        ax.set_title(f"PC {i + 1}: {100 * explained_ratio[i]:.1f}%", fontsize=7)
    fig.suptitle(f"Patch-embedding filters: first {k} principal components\n"
                 f"(% of filter variance; {100 * float(np.sum(explained_ratio)):.0f}% in all)", fontsize=10)
    return _save(fig, path)


def plot_attention_distance(distances, path, uniform=None):
    """The ViT paper's Fig. 7 (right): mean attention distance (L, Hd) in pixels, one dot per head
    at its layer; ``uniform`` (pixels) draws the distance that uniform attention would give."""
    L, Hd = distances.shape
    fig = _figure(5.5, 3.8)
    ax = fig.subplots()
    layers = np.arange(1, L + 1)
    for head in range(Hd):
        ax.scatter(layers, distances[:, head], s=22, alpha=0.8, label=f"head {head + 1}" if Hd <= 12 else None)
    if uniform is not None:
        ax.axhline(uniform, color="gray", linestyle="--", linewidth=1, label="uniform attention")
    ax.set_xticks(layers)
    ax.set_xlabel("network depth (layer)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_ylim(0, 1.08 * max(float(distances.max()), uniform or 0.0, 1.0))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("Mean attention distance per head")
    return _save(fig, path)


def plot_training_curves(history, path):
    """Loss and accuracy, train and test, against the epoch, from a run's history.json
    ({"epochs": [{"epoch", "train_loss", "train_acc", "test_loss", "test_acc", ...}, ...]})."""
    epochs = history.get("epochs", [])
    if not epochs:
        raise ValueError("the history holds no epochs: nothing to plot")
    fig = _figure(9, 3.6)
    axes = fig.subplots(1, 2)
    for ax, metric, scale, unit in ((axes[0], "loss", 1, "cross-entropy loss"),
                                    (axes[1], "acc", 100, "accuracy (%)")):
        for split, style in (("train", "-o"), ("test", "-s")):
            points = [(e["epoch"], e[f"{split}_{metric}"] * scale) for e in epochs
                      if e.get(f"{split}_{metric}") is not None]
            if points:
                ax.plot(*zip(*points), style, markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.legend()
    last = epochs[-1]
    if last.get("test_acc") is not None:
        axes[1].set_title(f"final test accuracy {100 * last['test_acc']:.2f}%", fontsize=10)
    fig.suptitle("Training curves")
    return _save(fig, path)


def plot_confusion_matrix(matrix, classes, path):
    """Counts matrix (K, K) (rows: true class, columns: predicted); the colour is the fraction of
    the true class's images, so errors stay visible next to the large diagonal."""
    K = len(classes)
    counts = np.asarray(matrix)
    fraction = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = _figure(0.5 * K + 2.4, 0.5 * K + 1.3)
    ax = fig.subplots()
    im = ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
    for t in range(K):
        for p in range(K):
            ax.text(p, t, str(counts[t, p]), ha="center", va="center", fontsize=7,
                    color="white" if fraction[t, p] > 0.5 else "black")
    long_names = max(map(len, classes)) > 2
    ax.set_xticks(range(K), classes, rotation=45 if long_names else 0, ha="right" if long_names else "center",
                  fontsize=8)
    ax.set_yticks(range(K), classes, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"Confusion matrix: {counts.sum()} images, accuracy {100 * accuracy:.2f}%", fontsize=10)
    fig.colorbar(im, ax=ax, label="fraction of true class", shrink=0.8)
    return _save(fig, path)


def plot_mistakes(images, y_true, y_pred, classes, path, confidence=None, title="Misclassified images"):
    """A grid of misclassified images (B, H, W), each titled with its true and predicted class
    (and the predicted class's probability, ``confidence`` (B,), when given)."""
    B = len(images)
    cols = min(max(B, 1), 8)
    rows = max(int(np.ceil(B / cols)), 1)
    fig = _figure(1.25 * cols + 0.3, 1.45 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if i < B:
            _show_image(ax, images[i])
            extra = f" ({100 * confidence[i]:.0f}%)" if confidence is not None else ""
            ax.set_title(f"true {classes[y_true[i]]}\npred {classes[y_pred[i]]}{extra}", fontsize=7,
                         color="firebrick")
    if B == 0:
        axes[0, 0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def read_image(path, size):
    """An image file as a (h, w) = size uint8 gray image: decoded by Pillow into gray (luma),
    then area resized (aspect ratio not kept). MNIST and Fashion-MNIST show light shapes on black,
    so an image whose border is mostly light (dark ink on paper) is inverted. Returns (image,
    inverted)."""
    gray = resize(np.asarray(load_image(path, channels=1), np.float64) / 255.0, size)   # (h, w) in 0..1
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    inverted = bool(border.mean() > 0.5)
    if inverted:
        gray = 1.0 - gray
    return np.round(gray * 255).astype(np.uint8), inverted


def plot_time_to_accuracy(runs, path, target=None):
    """Test accuracy against training images seen and against wall-clock minutes, one line per
    run: ``runs`` maps a label to a history.json dict (with "images" per epoch, numpyvit >= 0.5).
    Runs whose labels share the text before " seed" share a colour (a recipe's seeds); a final
    accuracy with test-time augmentation (``test_acc_tta``) is a star at the run's end; ``target``
    (an accuracy in %) is drawn as a dashed line."""
    if not runs:
        raise ValueError("no runs to plot")
    fig = _figure(12, 3.8)
    axes = fig.subplots(1, 2, sharey=True)
    colours = {}
    for label, history in runs.items():
        epochs = history.get("epochs", [])
        if not epochs or any("images" not in e for e in epochs):
            raise ValueError(f"run {label!r}: its history has no epochs with 'images' (written by numpyvit < 0.5?)")
        colour = colours.setdefault(label.split(" seed")[0], f"C{len(colours)}")
        accuracy = [100 * e["test_acc"] for e in epochs]
        axes[0].plot([e["images"] / 1e6 for e in epochs], accuracy, "-", color=colour, lw=1.2, label=label)
        axes[1].plot([e["time"] / 60 for e in epochs], accuracy, "-", color=colour, lw=1.2, label=label)
        if epochs[-1].get("test_acc_tta") is not None:
            tta = 100 * epochs[-1]["test_acc_tta"]
            axes[0].plot(epochs[-1]["images"] / 1e6, tta, "*", color=colour, ms=9)
            axes[1].plot(epochs[-1]["time"] / 60, tta, "*", color=colour, ms=9)
    if any(h["epochs"][-1].get("test_acc_tta") is not None for h in runs.values()):
        axes[1].plot([], [], "*", color="gray", ms=9, label="final, with test-time augmentation")
    axes[0].set_xlabel("training images seen (millions)")
    axes[1].set_xlabel("wall clock (minutes of training)")
    axes[0].set_ylabel("test accuracy (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
        if target is not None:
            ax.axhline(target, color="gray", ls="--", lw=1, label=f"target {target}%")
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))   # outside: it hides no curve
    fig.suptitle("Time to accuracy")
    return _save(fig, path)


def plot_reconstructions(originals, masked, reconstructions, path, title="Masked autoencoder"):
    """Three rows of B images (each (B, H, W) or (B, H, W, 3) in [0, 1], numpyvit.viz.reconstructed_images):
    the originals, what the encoder saw (hidden patches mid-gray), the reconstructions."""
    B = len(originals)
    fig = _figure(1.3 * B + 1.2, 4.6)
    axes = fig.subplots(3, B, squeeze=False, gridspec_kw=dict(wspace=0.05, hspace=0.15))
    for row, (images, label) in enumerate(((originals, "original"), (masked, "encoder's input"),
                                           (reconstructions, "reconstruction"))):
        for b in range(B):
            ax = axes[row, b]
            ax.imshow(images[b], cmap="gray" if images[b].ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(label, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
