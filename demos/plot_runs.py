"""Time to accuracy of finished runs: test accuracy against training images seen and against
wall-clock minutes, one line per run, from each run's history.json.

    python demos/plot_runs.py runs/mnist runs/mnist-seed1 runs/mnist-seed2 --target 99 --out curves.png

Runs are labelled "<dataset> seed <seed>" (from their histories); the seeds of one dataset share a
colour; a final accuracy with test-time augmentation is a star. It prints each run's final
accuracy, images seen and minutes, and their mean and range.
Run from the repository root with PYTHONPATH=. (or after `pip install -e .`).
"""
import sys

from numpyvit import cli, viz
from numpyvit.errors import InputError
from numpyvit.train import read_history


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__)
    p.add_argument("runs", nargs="+", help="run folders (each holding history.json) or history.json files")
    p.add_argument("--out", type=cli.png_file, default="time_to_accuracy.png", help="the PNG file to write")
    p.add_argument("--target", type=cli.positive_float, help="draw this test accuracy (%%) as a dashed line")
    return p.parse_args(argv)


def read_run(path):
    """(label, history) of a run folder or a history.json file (checked: numpyvit.train.read_history)."""
    history = read_history(path, need_images=True)
    config = history["config"]
    return f"{config['dataset']} seed {config['train']['seed']}", history


def main(argv=None):
    return cli.run(plot, parse_args(argv))


def plot(args):
    runs = dict(read_run(path) for path in args.runs)
    if len(runs) < len(args.runs):
        raise InputError("two runs have the same dataset and seed: their lines would share a label")
    path = viz.plot_time_to_accuracy(runs, args.out, args.target)
    finals, with_tta = [], []
    for label, history in runs.items():
        last = history["epochs"][-1]
        finals.append(100 * last["test_acc"])
        tta = last.get("test_acc_tta")
        with_tta += [] if tta is None else [100 * tta]
        print(f"{label}: {finals[-1]:.2f}%"
              + ("" if tta is None else f" ({100 * tta:.2f}% with test-time augmentation)")
              + f" after {last['images']:,} images, {last['time'] / 60:.1f} min of training")
    print(summary("", finals))
    if with_tta:
        print(summary(f"with test-time augmentation ({len(with_tta)} of {len(finals)} runs): ", with_tta))
    print(f"wrote {path}")
    return 0


def summary(what, accuracies):
    return f"{what}mean {sum(accuracies) / len(accuracies):.2f}%, range {min(accuracies):.2f}-{max(accuracies):.2f}%"


if __name__ == "__main__":
    sys.exit(main())
