"""``history.json``: the per-epoch metrics of a run (``curves.png`` plots them, with
``numpyvit.viz.plot_training_curves``).

    {"config": {"model": {...}, "train": {...}, "dataset": "mnist", "data": {...}},
     "epochs": [{"epoch": 1, "train_loss": ..., "train_acc": ..., "test_loss": ..., "test_acc": ...,
                 "lr": ..., "time": ..., "images_per_sec": ..., "images": ...}, ...]}
Accuracies are fractions in [0, 1]; ``lr`` is the rate of the epoch's last step; ``time`` is the
seconds since training began, summed over resumed sessions; ``images_per_sec`` counts training
steps only; ``images`` is the training images seen so far (steps x batch size; not in histories
written before numpyvit 0.5). With TrainConfig.tta the last epoch also holds test_acc_tta,
test_loss_tta and tta_views (how many views of each image were averaged). train_* are running
means over the epoch (with dropout and augmentation on); test_loss uses the training label
smoothing, so the two losses are comparable. config: the model's keywords, the TrainConfig, the
dataset name, and "data": the training/test set sizes, the normalization mean/std and the class
names.
"""
import json

from ..io import atomic_file

HISTORY_NAME = "history.json"
CURVES_NAME = "curves.png"


def write_history(path, history):
    """Write ``history`` as JSON to ``path`` atomically (numpyvit.io.atomic_file)."""
    with atomic_file(path) as f:
        f.write((json.dumps(history, indent=1) + "\n").encode())
