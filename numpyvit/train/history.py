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
import math
from pathlib import Path

from ..errors import InputError
from ..files import read_regular_file
from ..io import atomic_file

HISTORY_NAME = "history.json"
CURVES_NAME = "curves.png"
MAX_BYTES = 16 * 2**20                 # a history of thousands of epochs is ~1 MB
FRACTIONS = ("train_acc", "test_acc", "test_acc_tta")
NUMBERS = ("train_loss", "test_loss", "test_loss_tta", "lr", "time", "images_per_sec")


class HistoryError(InputError):
    """A history.json that is not one numpyvit wrote (or that was damaged)."""


def read_history(path, need_images=False):
    """The history of a run folder or of a history.json file, checked against the shape above
    (HistoryError naming the file and the first thing wrong). ``need_images``: every epoch must
    say how many images were seen (histories of numpyvit 0.5 and later)."""
    path = Path(path)
    file = path / HISTORY_NAME if path.is_dir() else path
    try:
        history = json.loads(read_regular_file(file, MAX_BYTES, "the history"))
    except InputError as error:
        raise HistoryError(str(error)) from None
    except (ValueError, UnicodeDecodeError, RecursionError) as error:      # RecursionError: nested too deep
        raise HistoryError(f"{file} is not JSON ({error})") from None
    problem = _history_problem(history, need_images)
    if problem:
        raise HistoryError(f"{file} is not a numpyvit history.json: {problem}")
    return history


def _history_problem(history, need_images):
    """What is wrong with ``history``, or None."""
    if not isinstance(history, dict) or not isinstance(history.get("config"), dict):
        return "it has no config object"
    config = history["config"]
    if not isinstance(config.get("dataset"), str) or not isinstance(config.get("train"), dict):
        return "its config lacks the dataset name or the training settings"
    seed = config["train"].get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        return f"its training seed is {seed!r}, not a whole number"
    epochs = history.get("epochs")
    if not isinstance(epochs, list) or not epochs or not all(isinstance(record, dict) for record in epochs):
        return "it holds no epochs"
    for record in epochs:
        epoch = record.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            return f"an epoch number is {epoch!r}"
        for key in FRACTIONS + NUMBERS:
            value = record.get(key, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return f"epoch {epoch}: {key} is {value!r}, not a finite number"
            if key in FRACTIONS and not 0 <= value <= 1:
                return f"epoch {epoch}: {key} is {value!r}, not a fraction in [0, 1]"
        if "test_acc" not in record or "time" not in record:
            return f"epoch {epoch} lacks test_acc or time"
        images = record.get("images")
        if (images is not None or need_images) and (not isinstance(images, int) or isinstance(images, bool)
                                                    or images < 0):
            return (f"epoch {epoch}: images is {images!r}" + (" (histories before numpyvit 0.5 did not count the "
                                                              "images seen)" if images is None else ""))
    return None


def write_history(path, history):
    """Write ``history`` as JSON to ``path`` atomically (numpyvit.io.atomic_file)."""
    with atomic_file(path) as f:
        f.write((json.dumps(history, indent=1) + "\n").encode())
