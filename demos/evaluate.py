"""Test accuracy and confusion matrix of a trained model.

    python demos/evaluate.py                               # the run in runs/mnist
    python demos/evaluate.py --checkpoint runs/fashion-mnist/checkpoint.npz
    python demos/evaluate.py --checkpoint runs/fashion-mnist --tta    # also averaged over 10 views

Run from the repository root with PYTHONPATH=. (or after `pip install -e .`).
"""
import argparse
import sys

import numpy as np

import numpyvit.data
from numpyvit import cli
from numpyvit.io import load_model_and_meta
from numpyvit.train import TrainConfig, evaluate
from numpyvit.viz import confusion_matrix


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", default="runs/mnist", help="a run folder or a .npz file (default: runs/mnist)")
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], help="default: the one it was trained on")
    p.add_argument("--data-dir", help="folder with the IDX .gz files (default: $NUMPYVIT_DATA, then the cache)")
    p.add_argument("--backend", choices=["numpy", "cupy"], help="default: $NUMPYVIT_BACKEND, else numpy")
    p.add_argument("--batch-size", type=cli.positive_int, default=500)
    p.add_argument("--tta", action=argparse.BooleanOptionalAction,
                   help="also with test-time augmentation: the views the run's training augmentation makes "
                        "(default: if the run used it)")
    return p.parse_args(argv)


def format_confusion(matrix, classes):
    """The matrix as a text table: rows true class, columns predicted, plus each row's accuracy."""
    K = len(matrix)
    width = max(5, len(str(matrix.max())) + 1)
    lines = ["rows: true class, columns: predicted class",
             "true\\pred" + "".join(f"{k:>{width}}" for k in range(K)) + "   recall"]
    for k, row in enumerate(matrix):
        recall = row[k] / row.sum() if row.sum() else float("nan")
        lines.append(f"{k:>9}" + "".join(f"{n:>{width}}" for n in row) + f"  {100 * recall:6.2f}%")
    if any(name != str(k) for k, name in enumerate(classes)):
        lines.append("classes: " + ", ".join(f"{k} {name}" for k, name in enumerate(classes)))
    return "\n".join(lines)


def main(argv=None):
    return cli.run(evaluate_checkpoint, parse_args(argv))


def evaluate_checkpoint(args):
    model, meta = load_model_and_meta(args.checkpoint, args.backend)
    name = args.dataset or meta.get("dataset")
    if name is None:
        raise ValueError(f"{args.checkpoint} does not say which dataset it was trained on: pass --dataset")
    dataset = numpyvit.data.load_dataset(name, args.data_dir)
    result = evaluate(model, dataset.test_images, dataset.test_labels, mean=dataset.mean, std=dataset.std,
                      batch_size=args.batch_size)
    train, tta = meta.get("train"), None
    use_tta = args.tta if args.tta is not None else isinstance(train, dict) and train.get("tta") is True
    if use_tta:
        if not isinstance(train, dict):
            raise ValueError(f"{args.checkpoint} holds no training settings, so the views of --tta "
                             "(those of its training augmentation) are unknown")
        views = TrainConfig.from_dict(train).tta_views()
        tta = evaluate(model, dataset.test_images, dataset.test_labels, mean=dataset.mean, std=dataset.std,
                       batch_size=args.batch_size, views=views)
    n = len(dataset.test_labels)
    epoch = f", epoch {meta['epoch']}" if "epoch" in meta else ""
    print(f"{args.checkpoint}{epoch} on the {name} test set ({n} images)")
    print(f"test accuracy {100 * result.accuracy:.2f}% ({int(np.sum(result.predictions == dataset.test_labels))}"
          f"/{n}), loss {result.loss:.4f}")
    if tta:
        print(f"with test-time augmentation ({len(views)} views): test accuracy {100 * tta.accuracy:.2f}% "
              f"({int(np.sum(tta.predictions == dataset.test_labels))}/{n}), loss {tta.loss:.4f}")
    print(format_confusion(confusion_matrix(dataset.test_labels, result.predictions, model.num_classes),
                           dataset.classes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
