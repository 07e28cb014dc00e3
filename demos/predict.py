"""Predict the class of image files with a trained model.

    python demos/predict.py --checkpoint runs/mnist my_digit.png photo.jpg

Each image is made to look like the training data by ``numpyvit.viz.read_image``: colour becomes
gray, the image is area-resized to the model's size, and dark ink on a light background is
inverted to MNIST's light-on-black (judged by the border pixels); then it is normalized with
the training set's mean and std. PNG and JPEG files are read by matplotlib.
Run from the repository root with PYTHONPATH=. (or after `pip install -e .`).
"""
import sys

import numpy as np

from numpyvit import cli, viz
from numpyvit.data import normalize
from numpyvit.io import load_model_and_meta


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--checkpoint", required=True, help="a run folder or a .npz file")
    p.add_argument("--backend", choices=["numpy", "cupy"], help="default: $NUMPYVIT_BACKEND, else numpy")
    return p.parse_args(argv)


def main(argv=None):
    return cli.run(predict, parse_args(argv))


def predict(args):
    model, meta = load_model_and_meta(args.checkpoint, args.backend)  # its mean and std checked there
    read_image = viz.read_image                                       # needs matplotlib
    data = meta.get("data", {})
    mean, std = data.get("mean", 0.0), data.get("std", 1.0)
    classes = data.get("classes") or [str(k) for k in range(model.num_classes)]
    read, failed = [], 0
    for path in args.images:
        try:
            read.append((path, *read_image(path, model.patch_embed.img_size)))
        except (ValueError, OSError) as err:                       # unreadable, missing, not an image
            print(f"error: {cli.one_line(err)}", file=sys.stderr)
            failed += 1
    if read:
        x = normalize(np.stack([image for _, image, _ in read]), mean, std)          # (B, 1, H, W)
        probs = viz.predict(model, np.repeat(x, model.patch_embed.in_chans, axis=1))  # (B, K)
        for (path, _, inverted), p in zip(read, probs):
            k = int(p.argmax())
            print(f"{path}: {classes[k]}  (probability {p[k]:.3f})" + ("  [inverted: dark on light]" * inverted))
    return cli.USAGE_ERROR if failed else 0


if __name__ == "__main__":
    sys.exit(main())
