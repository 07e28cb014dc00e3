"""Draw what a trained ViT has learned, as PNG files.

Figures: [CLS] attention per layer and head and attention rollout for a few images, position
embedding similarity, principal components of the patch-embedding filters, mean attention
distance per head, training curves (from the run's history.json), the confusion matrix and
the misclassified test images.

    python demos/visualize.py --checkpoint runs/mnist_tiny             # -> runs/mnist_tiny/figures
    python demos/visualize.py --checkpoint runs/mnist_tiny --image seven.png --image two.jpg
    python demos/visualize.py --weights model.safetensors --image photo.jpg --out figures

With --weights (pretrained weights: timm's safetensors, a JAX .npz, a numpyvit checkpoint) the
figures are drawn over your photos: attention rollout, gradient saliency and the [CLS] attention
of every head, plus the position similarity and patch filters of the weights.

The model runs on --backend (default: $NUMPYVIT_BACKEND, else numpy), whatever backend it was
trained on.
"""
import sys
import time
from pathlib import Path

import numpy as np

import numpyvit
from numpyvit import cli, data, viz
from numpyvit.data import prepare_photos
from numpyvit.errors import InputError
from numpyvit.io import load_model_and_meta
from numpyvit.train import HISTORY_NAME, read_history
from numpyvit.weights.pretrained import class_names

NUM_SHOWN = 4        # test images whose attention is drawn when no --image is given
NUM_DISTANCE = 100   # test images the mean attention distance is averaged over
NUM_MISTAKES = 32    # misclassified images drawn, most confident first
NUM_PCA = 28         # filter components drawn, as in the ViT paper's Fig. 7


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="run folder holding checkpoint.npz, or a .npz file")
    source.add_argument("--weights", help="pretrained weights, drawn over the --image photos")
    parser.add_argument("--model", help="with --weights: the preset (default: from the file)")
    parser.add_argument("--image", action="append", default=[], metavar="FILE",
                        help="PNG/JPG image to draw attention for (repeatable; default: the first test images)")
    parser.add_argument("--data-dir", help="folder holding the dataset (default: $NUMPYVIT_DATA, the cache)")
    parser.add_argument("--dataset", choices=("mnist", "fashion-mnist"),
                        help="default: the checkpoint's dataset, else mnist")
    parser.add_argument("--out", type=cli.folder, help="folder for the figures (default: <checkpoint folder>/figures)")
    parser.add_argument("--backend", choices=["numpy", "cupy"], help="default: $NUMPYVIT_BACKEND, else numpy")
    parser.add_argument("--num-test", type=cli.positive_int, default=None,
                        help="test images evaluated for the confusion matrix and mistakes (default: all)")
    args = parser.parse_args(argv)
    if args.weights and not args.image:
        parser.error("--weights draws over photos: give at least one --image")
    return args


def read_images(files, size, dataset_name):
    """The image files as (B, H, W) uint8, light on dark; a file that cannot be used ends the demo."""
    images = []
    for file in files:
        try:
            image, inverted = viz.read_image(file, size)
        except (OSError, ValueError) as err:
            raise InputError(f"--image: {cli.one_line(err)}") from err
        if inverted:
            print(f"{file}: light background, inverted to light-on-dark like {dataset_name}")
        images.append(image)
    return np.stack(images)


def attention_figures(model, images, names, ds, out):
    """Per-image [CLS] attention grids and one rollout figure for images (B, H, W) uint8."""
    x = data.normalize(images, ds.mean, ds.std)                          # (B, 1, H, W)
    probs = viz.predict(model, x)                                        # (B, K)
    titles = [f"{name}\npredicted {ds.classes[p.argmax()]} ({100 * p.max():.0f}%)" for name, p in zip(names, probs)]
    grid = model.patch_embed.grid_size
    attentions = model.attention_maps(x)                                 # L x (B, heads, T, T)
    cls_maps = viz.cls_attention_maps(viz.stack_attentions(attentions), grid)   # (L, B, heads, Gh, Gw)
    paths = [viz.plot_attention_heads(images[b], cls_maps[:, b], out / f"attention_heads_{b + 1}.png",
                                      title=f"[CLS] attention per layer and head\n{titles[b]}")
             for b in range(len(images))]
    rollout = viz.cls_attention_maps(viz.attention_rollout(attentions), grid)  # (B, Gh, Gw)
    paths.append(viz.plot_attention_rollout(images, rollout, out / "attention_rollout.png", titles))
    maps, _ = viz.saliency(model, x)                                     # (B, H, W)
    paths.append(viz.plot_saliency(images, maps, out / "saliency.png", titles))
    return paths


def model_figures(model, x, out):
    """Position similarity, filter PCA, and mean attention distance over images x (B, C, H, W)."""
    pe = model.patch_embed
    similarity = viz.position_similarity(model.patch_position_embeddings())        # (N, N)
    weight = pe.proj.weight.data                                                   # (D, C, Ph, Pw)
    k = min(NUM_PCA, weight.shape[0], int(np.prod(weight.shape[1:])))
    components, ratio = viz.patch_filter_pca(weight, k)
    distances = viz.mean_attention_distance(model.attention_maps(x), pe.grid_size, pe.patch_size)
    uniform = float(viz.patch_distances(pe.grid_size, pe.patch_size).mean())
    return [viz.plot_position_similarity(similarity, pe.grid_size, out / "position_similarity.png"),
            viz.plot_patch_filters(components, ratio, out / "patch_filters_pca.png"),
            viz.plot_attention_distance(distances, out / "attention_distance.png", uniform=uniform)]


def photo_figures(args):
    """Attention rollout, saliency, per-head attention of pretrained weights over photos; and the
    weights' position similarity and patch filters."""
    model = numpyvit.create_model(args.model, weights=args.weights, backend=args.backend)
    x, photos = prepare_photos(args.image, model)                       # (B, C, H, W), (B, H, W[, 3])
    names = class_names(model)
    probs = viz.predict(model, x)                                        # (B, K)
    titles = [f"{Path(f).name}\n{names[p.argmax()].split(',')[0]} ({100 * p.max():.0f}%)" for f, p in zip(args.image, probs)]
    out = Path(args.out or "figures")
    grid = model.patch_embed.grid_size
    attentions = model.attention_maps(x)                                 # L x (B, heads, T, T)
    rollout = viz.cls_attention_maps(viz.attention_rollout(attentions), grid)   # (B, Gh, Gw)
    maps, _ = viz.saliency(model, x)                                     # (B, H, W)
    paths = [viz.plot_attention_rollout(photos, rollout, out / "attention_rollout.png", titles),
             viz.plot_saliency(photos, maps, out / "saliency.png", titles)]
    cls_maps = viz.cls_attention_maps(viz.stack_attentions(attentions), grid)    # (L, B, heads, Gh, Gw)
    paths += [viz.plot_attention_heads(photos[b], cls_maps[:, b], out / f"attention_heads_{b + 1}.png",
                                       title=f"[CLS] attention per layer and head\n{titles[b]}")
              for b in range(len(photos))]
    return paths + model_figures(model, x, out)


def main(argv=None):
    return cli.run(draw_and_report, parse_args(argv))


def draw_and_report(args):
    draw(args)                                                       # prints each figure's path
    return 0


def draw(args):
    """The figures' paths, each written (a checkpoint's, or pretrained weights' over photos)."""
    start = time.perf_counter()
    if args.weights:
        paths = photo_figures(args)
        print("\n".join(str(p) for p in paths))
        print(f"{len(paths)} figures ({time.perf_counter() - start:.1f} s)")
        return paths
    checkpoint = Path(args.checkpoint)
    model, meta = load_model_and_meta(checkpoint, args.backend)
    run_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent
    out = Path(args.out) if args.out else run_dir / "figures"
    ds = data.load_dataset(args.dataset or meta.get("dataset", "mnist"), data_dir=args.data_dir)
    size = model.patch_embed.img_size
    if model.patch_embed.in_chans != 1 or tuple(ds.test_images.shape[1:]) != size:
        raise InputError(f"this model takes {model.patch_embed.in_chans}x{size[0]}x{size[1]} images, but "
                         f"{ds.name} has 1x{ds.test_images.shape[1]}x{ds.test_images.shape[2]}")

    if args.image:
        images, names = read_images(args.image, size, ds.name), [Path(f).name for f in args.image]
    else:
        images = ds.test_images[:NUM_SHOWN]
        names = [f"test image {i} (label {ds.classes[y]})" for i, y in enumerate(ds.test_labels[:NUM_SHOWN])]
    paths = attention_figures(model, images, names, ds, out)

    n = len(ds.test_images) if args.num_test is None else min(args.num_test, len(ds.test_images))
    test_x = data.normalize(ds.test_images[:n], ds.mean, ds.std)         # (n, 1, H, W)
    paths += model_figures(model, test_x[:NUM_DISTANCE], out)

    history_file = run_dir / HISTORY_NAME
    if history_file.is_file():
        paths.append(viz.plot_training_curves(read_history(history_file), out / "training_curves.png"))
    else:
        print(f"no {history_file}: skipping the training curves")

    print(f"evaluating {n} {ds.name} test images ...", flush=True)
    probs = viz.predict(model, test_x)                                    # (n, K)
    y_true, y_pred = ds.test_labels[:n].astype(np.int64), probs.argmax(axis=1)
    matrix = viz.confusion_matrix(y_true, y_pred, len(ds.classes))
    paths.append(viz.plot_confusion_matrix(matrix, ds.classes, out / "confusion_matrix.png"))
    wrong = np.flatnonzero(y_true != y_pred)
    shown = wrong[np.argsort(-probs[wrong, y_pred[wrong]], kind="stable")][:NUM_MISTAKES]
    title = f"Most confident mistakes: {len(shown)} shown of {len(wrong)} wrong among {n} test images"
    paths.append(viz.plot_mistakes(ds.test_images[shown], y_true[shown], y_pred[shown], ds.classes,
                                   out / "mistakes.png", confidence=probs[shown, y_pred[shown]], title=title))

    for path in paths:
        print(path)
    accuracy = float(np.mean(y_true == y_pred))
    print(f"test accuracy {100 * accuracy:.2f}% on {n} {ds.name} test images; {len(paths)} figures in {out} "
          f"({time.perf_counter() - start:.1f} s)")
    return paths


if __name__ == "__main__":
    sys.exit(main())
