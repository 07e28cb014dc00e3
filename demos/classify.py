"""Classify photos with pretrained ViT weights: the five most likely classes of each image.

    python demos/classify.py --weights model.safetensors photo.jpg more.png
    python demos/classify.py --weights ViT-B_16.npz --model vit_base_patch16_224 --img-size 384 cat.jpg

--weights: timm's model.safetensors (e.g. from the Hugging Face hub, with its config.json beside
it), an original JAX .npz, or a numpyvit checkpoint / run folder. --model: the architecture
(default: the file's config, else the preset its sizes match). Each image is prepared as timm
prepares it for these weights (numpyvit.data.images: resize, center crop, the weights' mean and
std). Class names: the checkpoint's, else ImageNet's for 1,000 classes, else numbers.
"""
import sys

import numpy as np

import numpyvit
from numpyvit import cli
from numpyvit.data import prepare_photos
from numpyvit.weights.pretrained import class_names


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="photos (PNG, JPG, ...)")
    p.add_argument("--weights", required=True, help="weights file or numpyvit run folder")
    p.add_argument("--model", help="preset name (default: from the file)")
    p.add_argument("--img-size", type=cli.positive_int, help="input size (position embeddings are resampled)")
    p.add_argument("--top", type=cli.positive_int, default=5, help="classes shown per image (default 5)")
    p.add_argument("--backend", choices=["numpy", "cupy"], help="default: $NUMPYVIT_BACKEND, else numpy")
    return p.parse_args(argv)


def main(argv=None):
    return cli.run(classify, parse_args(argv))


def classify(args):
    overrides = {} if args.img_size is None else {"img_size": args.img_size}
    model = numpyvit.create_model(args.model, weights=args.weights, backend=args.backend, **overrides)
    names, status = class_names(model), 0
    for path in args.images:
        try:
            x, _ = prepare_photos([path], model)                    # (1, C, H, W)
        except (ValueError, OSError) as err:
            print(f"error: {cli.one_line(err)}", file=sys.stderr)
            status = cli.USAGE_ERROR
            continue
        with model.inference():
            logits = numpyvit.to_numpy(model(x))[0].astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        print(f"{path}:")
        for k in np.argsort(-probs)[:args.top]:
            print(f"  {100 * probs[k]:6.2f}%  {names[k]}")
    return status


if __name__ == "__main__":
    sys.exit(main())
