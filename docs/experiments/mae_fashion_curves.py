"""The curves and tables of docs/experiments/mae_fashion.sh's runs (<runs>/<route>-<seed>): test
accuracy against images seen and minutes, a MAE route's fine-tuning drawn after its pretraining (its
images and minutes added); a line per run, then a line per route (its seeds and their mean).

The histories of the runs reported in docs/results.md are kept under docs/experiments/histories/
(history.json files only), so the tables and figures can be redrawn without running anything:

    python docs/experiments/mae_fashion_curves.py --runs docs/experiments/histories/mae_fashion30 \
        --out docs/mae_fashion30_time_to_accuracy.png
"""
import argparse
import json
import sys
from pathlib import Path

from numpyvit import viz
from numpyvit.train import read_history

ROUTES = {"scratch": "from scratch", "mae-norm": "MAE, normalized pixels", "mae-plain": "MAE, plain pixels"}


def route_history(folder):
    """The run's history, a MAE route's fine-tuning shifted by its pretraining; and that pretraining."""
    if (folder / "history.json").is_file():
        return read_history(folder, need_images=True), None
    pre = json.loads((folder / "pretrain" / "history.json").read_text())["epochs"][-1]   # losses, no accuracy
    tuned = read_history(folder / "finetune", need_images=True)
    shifted = [dict(e, time=e["time"] + pre["time"], images=e["images"] + pre["images"]) for e in tuned["epochs"]]
    return dict(tuned, epochs=shifted), pre


def finished(folder):
    """Whether the run (its training, or a MAE route's fine-tuning) ran all its epochs."""
    for path in (folder / "history.json", folder / "finetune" / "history.json"):
        if path.is_file():
            history = json.loads(path.read_text())
            return history["epochs"][-1]["epoch"] >= history["config"]["train"]["epochs"]
    return False


def collect(runs_dir):
    """{route: [(seed, history, pretraining's last epoch or None)]} of the finished runs, seeds in order."""
    runs = {}
    for route in ROUTES:
        for folder in sorted(Path(runs_dir).glob(f"{route}-[0-9]")):
            if not finished(folder):
                print(f"{folder}: not finished (running, or stopped): left out")
                continue
            runs.setdefault(route, []).append((folder.name.rsplit("-", 1)[1], *route_history(folder)))
    return runs


def percent(values):
    """'a / b / c%, mean m%' (one value: 'a%')."""
    listed = " / ".join(f"{100 * v:.2f}" for v in values) + "%"
    return listed if len(values) == 1 else f"{listed}, mean {100 * sum(values) / len(values):.2f}%"


def run_row(route, seed, history, pre):
    last = history["epochs"][-1]
    tta = last.get("test_acc_tta")
    return (f"| {ROUTES[route]} | {seed} | {100 * last['test_acc']:.2f}% | "
            + (f"{100 * tta:.2f}%" if tta is not None else "-") + f" | {last['time'] / 60:.1f} min"
            + (f" ({pre['time'] / 60:.1f} pretraining, {pre['epoch']} epochs, reconstruction loss "
               f"{pre['test_loss']:.3f})" if pre else "") + " |")


def route_row(route, seeded):
    """The route's seeds: accuracy alone and with test-time augmentation (where every run has it), wall clock."""
    lasts = [history["epochs"][-1] for _, history, _ in seeded]
    tta = [e.get("test_acc_tta") for e in lasts]
    minutes = [f"{m:.1f}" for m in sorted(e["time"] / 60 for e in lasts)]
    seeds = " / ".join(seed for seed, _, _ in seeded)
    return (f"| {ROUTES[route]}, seed{'s' if len(seeded) > 1 else ''} {seeds} | "
            f"{percent([e['test_acc'] for e in lasts])} | {percent(tta) if None not in tta else '-'} | "
            f"{minutes[0]}{'-' + minutes[-1] if minutes[-1] != minutes[0] else ''} min |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/mae_fashion", help="a folder of <route>-<seed> runs")
    parser.add_argument("--out", default="docs/mae_fashion_time_to_accuracy.png")
    args = parser.parse_args(argv)
    runs = collect(args.runs)
    if not runs:
        print(f"{args.runs}: no finished runs named <route>-<seed> (route: {', '.join(ROUTES)})", file=sys.stderr)
        return 2
    for route, seeded in runs.items():
        for run in seeded:
            print(run_row(route, *run))
    for route, seeded in runs.items():
        print(route_row(route, seeded))
    print(viz.plot_time_to_accuracy({f"{ROUTES[route]} seed {seed}": history for route, seeded in runs.items()
                                     for seed, history, _ in seeded}, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
