"""Training a ViT: the loop, evaluation, checkpoints that never lose work, progress and plots.

    from numpyvit import create_model
    from numpyvit.data import load_dataset
    from numpyvit.train import TrainConfig, fit, evaluate

    ds = load_dataset("mnist")
    model = create_model("mnist_tiny")
    history = fit(model, ds, TrainConfig(epochs=10), "runs/mnist")      # Ctrl-C: stops cleanly
    history = fit(model, ds, TrainConfig(epochs=10), "runs/mnist", resume=True)   # goes on
    result = evaluate(model, ds.test_images, ds.test_labels, mean=ds.mean, std=ds.std)

Files: ``loop.py`` (fit), ``stops.py`` (Ctrl-C, non-finite loss), ``checkpoint.py`` (what a
checkpoint holds, resume checks), ``metrics.py`` (evaluate), ``config.py`` (TrainConfig, RECIPES),
``history.py`` (history.json), ``progress.py`` (the progress line).
"""
from .config import RECIPES, TrainConfig, recipe
from .history import CURVES_NAME, HISTORY_NAME, HistoryError, read_history
from .loop import fit, refuse_to_overwrite
from .metrics import Evaluation, evaluate
from .stops import NonFiniteLossError, RunExistsError, TrainingError, TrainingInterrupted

__all__ = [
    "CURVES_NAME", "Evaluation", "HISTORY_NAME", "HistoryError", "read_history", "RunExistsError", "NonFiniteLossError", "RECIPES", "TrainConfig", "TrainingError",
    "TrainingInterrupted", "evaluate", "fit", "recipe", "refuse_to_overwrite",
]
