"""See the backward pass: one training step of a ViT, op by op, in one offline HTML page.

    python demos/explore.py --checkpoint runs/mnist                 # -> runs/mnist/explore.html
    python demos/explore.py --checkpoint runs/mnist --image 7 --label 3
    python demos/explore.py                                         # a fresh mnist_tiny -> explore.html
    python demos/explore.py --weights vit_b16.safetensors --photo cat.jpg --out cat.html

The page shows the step as numpyvit.reference (the textbook) computes it in float64: every op
from the image to the loss with its formulas, its output, the gradient arriving at it, its weights'
gradients, its own gradient check on this image, and an overview (loss, prediction, gradient norms
per op and per weight tensor, AdamW's update). Open it by double-click: it needs no server and no
network. --image N takes the N-th test image of the dataset (MNIST-sized models); --photo takes
an image file, prepared as timm does (other models). --label is the target (default: the test
image's label, or the model's prediction for a photo). A big model's page details the first and
last block and a few heads unless --blocks / --heads say otherwise, and says what it left out.
"""
import sys
import time
from pathlib import Path

import numpy as np

import numpyvit
from numpyvit import cli, data, reference, viz
from numpyvit.data import prepare_photos
from numpyvit.data.datasets import MEAN_STD
from numpyvit.errors import InputError
from numpyvit.files import atomic_file
from numpyvit.io import load_model_and_meta
from numpyvit.train import TrainConfig
from numpyvit.viz.explorer_page import explorer_html
from numpyvit.viz.step_recording import record_step
from numpyvit.weights.pretrained import class_names


def indices(text):
    """'0,5' -> [0, 5]: block or head numbers."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise cli.argparse.ArgumentTypeError(f"{text!r} is not a list of whole numbers like 0,5") from None
    if any(v < 0 for v in values):
        raise cli.argparse.ArgumentTypeError(f"{text!r} has a negative number")
    return values


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="run folder holding checkpoint.npz, or a .npz file")
    source.add_argument("--weights", help="weights file (safetensors, JAX .npz, numpyvit checkpoint)")
    parser.add_argument("--model", default=None, help="preset (default: mnist_tiny, or from --weights)")
    parser.add_argument("--image", type=cli.nonnegative_int, default=0, help="which test image (default 0)")
    parser.add_argument("--photo", help="an image file instead of a test image")
    parser.add_argument("--label", type=cli.nonnegative_int, help="the target class (default: the image's)")
    parser.add_argument("--data-dir", help="folder holding the dataset (default: $NUMPYVIT_DATA, the cache)")
    parser.add_argument("--dataset", choices=("mnist", "fashion-mnist"), help="default: the checkpoint's, else mnist")
    parser.add_argument("--blocks", type=indices, help="blocks to detail, e.g. 0,11 (default: all that fit)")
    parser.add_argument("--heads", type=indices, help="heads to detail, e.g. 0,1 (default: all that fit)")
    parser.add_argument("--lr", type=cli.positive_float, help="AdamW's learning rate (default: the run's)")
    parser.add_argument("--weight-decay", type=cli.nonnegative_float, help="default: the run's")
    parser.add_argument("--out", type=cli.html_file, help="the page (default: <run>/explore.html, else explore.html)")
    return parser.parse_args(argv)


def load(args):
    """(model, run metadata, default page path)."""
    if args.checkpoint:
        model, meta = load_model_and_meta(args.checkpoint, "numpy")
        run = Path(args.checkpoint)
        return model, meta, (run if run.is_dir() else run.parent) / "explore.html"
    model = numpyvit.create_model(args.model or "mnist_tiny", weights=args.weights, backend="numpy")
    return model, {}, Path("explore.html")


def photo(args, model, meta):
    """An image file as the model sees it (C, H, W): an MNIST-sized model's like predict.py reads
    it (gray, light on dark, the run's normalization), another's as timm prepares photos."""
    if model.patch_embed.in_chans == 1 and tuple(model.patch_embed.img_size) == (28, 28):
        try:
            image, _ = viz.read_image(args.photo, (28, 28))
        except (OSError, ValueError) as err:
            raise InputError(f"--photo: {cli.one_line(err)}") from err
        stats = meta.get("data", {})
        mean, std = MEAN_STD[args.dataset or meta.get("dataset", "mnist")]
        return data.normalize(image[None], stats.get("mean", mean), stats.get("std", std))[0]
    return prepare_photos([args.photo], model)[0][0]


def predicted(model, x):
    """The class the model predicts for x (C, H, W), by the textbook (in float64, as the page)."""
    params = {name: np.asarray(value, dtype=np.float64) for name, value in model.state_dict().items()}
    return int(np.argmax(reference.vit_forward(params, np.asarray(x, dtype=np.float64)[None], model.config)[0]))


def example(args, model, meta):
    """(image (C, H, W) as the model sees it, target label, class names, where it came from)."""
    if args.photo:
        x = photo(args, model, meta)
        names = list(meta.get("data", {}).get("classes") or class_names(model))
        label = predicted(model, x) if args.label is None else args.label
        return x, label, names, Path(args.photo).name
    channels, size = model.patch_embed.in_chans, model.patch_embed.img_size
    name = args.dataset or meta.get("dataset", "mnist")
    if channels != 1 or tuple(size) != (28, 28):
        raise InputError(f"this model takes {channels}x{size[0]}x{size[1]} images, not {name}'s 1x28x28: "
                         "give --photo FILE")
    ds = data.load_dataset(name, data_dir=args.data_dir)
    if args.image >= len(ds.test_images):
        raise InputError(f"--image {args.image}: {ds.name} has {len(ds.test_images)} test images (0 to "
                         f"{len(ds.test_images) - 1})")
    stats = meta.get("data", {})
    x = data.normalize(ds.test_images[args.image:args.image + 1], stats.get("mean", ds.mean), stats.get("std", ds.std))
    label = int(ds.test_labels[args.image]) if args.label is None else args.label
    return x[0], label, list(stats.get("classes") or ds.classes), f"{ds.name} test image {args.image}"


def explore(args):
    start = time.perf_counter()
    model, meta, default_out = load(args)
    image, label, names, source = example(args, model, meta)
    if label >= model.num_classes:
        raise InputError(f"--label {label}: the model has {model.num_classes} classes (0 to {model.num_classes - 1})")
    train = {**TrainConfig().__dict__, **meta.get("train", {})}
    lr = args.lr if args.lr is not None else train["lr"]
    weight_decay = args.weight_decay if args.weight_decay is not None else train["weight_decay"]
    step = record_step(model.state_dict(), model.config, image, label, lr=lr, weight_decay=weight_decay,
                       label_smoothing=train["label_smoothing"], clip_norm=train["clip_norm"])
    title = f"numpyvit explorer: {source}"
    html, report = explorer_html(step, names, args.blocks, args.heads, title=title)
    out = args.out or default_out
    with atomic_file(out) as f:
        f.write(html.encode("utf-8"))
    print(f"{out}: {report['bytes'] / 1e6:.2f} MB, {len(step.ops)} ops, loss {step.loss:.4f} for target "
          f"{names[label]}, largest gradient-check error {report['worst_check']:.1e} "
          f"({time.perf_counter() - start:.1f} s)")
    for what in report["left_out"]:
        print(f"left out: {what}")
    return 0


def main(argv=None):
    return cli.run(explore, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
