"""The curves and table of docs/experiments/mae_fashion.sh's runs (runs/mae_fashion/<route>-<seed>):
test accuracy against images seen and minutes, a MAE route's fine-tuning drawn after its pretraining
(its images and minutes added), and one line per run.

    python docs/experiments/mae_fashion_curves.py --out docs/mae_fashion_time_to_accuracy.png
"""
import argparse
import json
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


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", default="runs/mae_fashion")
    parser.add_argument("--out", default="docs/mae_fashion_time_to_accuracy.png")
    args = parser.parse_args()
    runs = {}
    for route, label in ROUTES.items():
        for folder in sorted(Path(args.runs).glob(f"{route}-[0-9]")):
            final = [folder / part / "history.json" for part in (".", "finetune")
                     if (folder / part / "history.json").is_file()]
            done = [json.loads(path.read_text()) for path in final]
            if not done or done[0]["epochs"][-1]["epoch"] < done[0]["config"]["train"]["epochs"]:
                print(f"{folder}: not finished (running, or stopped): left out")
                continue
            history, pre = route_history(folder)
            runs[f"{label} seed {folder.name.rsplit('-', 1)[1]}"] = history
            last = history["epochs"][-1]
            tta = last.get("test_acc_tta")
            print(f"| {label} | {folder.name.rsplit('-', 1)[1]} | {100 * last['test_acc']:.2f}% | "
                  + (f"{100 * tta:.2f}%" if tta is not None else "-") + f" | {last['time'] / 60:.1f} min"
                  + (f" ({pre['time'] / 60:.1f} pretraining, {pre['epoch']} epochs, reconstruction loss "
                     f"{pre['test_loss']:.3f})" if pre else "") + " |")
    print(viz.plot_time_to_accuracy(runs, args.out))


if __name__ == "__main__":
    main()
