"""Time to accuracy of finished runs: test accuracy against training images seen and against
wall-clock minutes, one line per run, from each run's history.json.

    python demos/plot_runs.py runs/mnist runs/mnist-seed1 runs/mnist-seed2 --target 99 --out curves.png

Runs are labelled "<dataset> seed <seed>" (from their histories); the seeds of one dataset share a
colour; a final accuracy with test-time augmentation is a star. It prints each run's final
accuracy, images seen and minutes, and their mean and range.
Run from the repository root with PYTHONPATH=. (or after `pip install -e .`).
"""
import argparse
import json
import sys
from pathlib import Path

from numpyvit import viz
from numpyvit.train import HISTORY_NAME


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (each holding history.json) or history.json files")
    p.add_argument("--out", default="time_to_accuracy.png", help="the PNG to write")
    p.add_argument("--target", type=float, help="draw this test accuracy (%%) as a dashed line")
    return p.parse_args(argv)


def read_run(path):
    """(label, history) of a run folder or a history.json file."""
    path = Path(path)
    file = path / HISTORY_NAME if path.is_dir() else path
    try:
        history = json.loads(file.read_text())
        config = history["config"]
        return f"{config['dataset']} seed {config['train']['seed']}", history
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{file} is not a readable numpyvit history.json ({err!r})") from err


def main(argv=None):
    args = parse_args(argv)
    try:
        runs = dict(read_run(path) for path in args.runs)
        if len(runs) < len(args.runs):
            raise ValueError("two runs have the same dataset and seed: their lines would share a label")
        path = viz.plot_time_to_accuracy(runs, args.out, args.target)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finals, with_tta = [], []
    for label, history in runs.items():
        last = history["epochs"][-1]
        finals.append(100 * last["test_acc"])
        tta = last.get("test_acc_tta")
        with_tta += [] if tta is None else [100 * tta]
        print(f"{label}: {finals[-1]:.2f}%"
              + ("" if tta is None else f" ({100 * tta:.2f}% with test-time augmentation)") + f" after {last['images']:,} images, {last['time'] / 60:.1f} min of training")
    print(summary("", finals))
    if with_tta:
        print(summary(f"with test-time augmentation ({len(with_tta)} of {len(finals)} runs): ", with_tta))
    print(f"wrote {path}")
    return 0


def summary(what, accuracies):
    return f"{what}mean {sum(accuracies) / len(accuracies):.2f}%, range {min(accuracies):.2f}-{max(accuracies):.2f}%"


if __name__ == "__main__":
    sys.exit(main())
