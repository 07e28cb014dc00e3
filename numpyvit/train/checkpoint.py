"""Training checkpoints: everything needed to continue a run exactly, in one .npz file.

``<out_dir>/checkpoint.npz`` is written with ``numpyvit.io.save_arrays`` (no pickle; a
temporary file renamed over the old one, so a crash mid-write leaves the previous checkpoint):

    arrays  model.<name>     the weights, timm names (so ``numpyvit.io.load_model(out_dir)`` works)
            optim.<name>     AdamW's moments, step count, learning rates
            train.order      (N,) the unfinished epoch's sample order (mid-epoch checkpoints only)
    meta    config           the model's keywords; train: the TrainConfig; dataset: its name;
                             data: train/test sizes, normalization mean/std, class names
            epoch, step      completed epochs, optimizer steps taken
            epoch_step       steps into the unfinished epoch (0 at an epoch end); partial: that
                             epoch's running loss/correct/images/seconds
            elapsed          seconds of training so far; history: the per-epoch records
            rng              the data generator's state (order + augmentation) and, on NumPy,
                             every dropout layer's generator state; in a run of several ranks
                             (numpyvit.distributed) "ranks" holds each rank's dropout and
                             augmentation generators, and world_size the number of ranks
"""
from dataclasses import dataclass, field

import numpy as np

from ..io import CheckpointError, load_arrays, prefixed, save_arrays

# model keywords that may differ between a checkpoint and the run resuming it
_FREE_MODEL_KEYS = ("backend", "seed")
# training settings that decide the data order and the schedule, so they cannot change on resume
# (nor can the dataset or the number of training images)
_FIXED_TRAIN_KEYS = ("batch_size",)
_STATE_KEYS = ("config", "train", "dataset", "data", "epoch", "step", "epoch_step", "partial", "elapsed",
               "history", "rng")


@dataclass
class TrainState:
    """Where a run stands, besides the weights and the optimizer."""

    data_rng: np.random.Generator    # sample order and augmentation
    epoch: int = 0                   # completed epochs
    step: int = 0                    # optimizer steps taken
    epoch_step: int = 0              # steps into the unfinished epoch (non-zero only after Ctrl-C)
    order: np.ndarray | None = None  # (N,) sample order of the unfinished epoch
    partial: dict | None = None      # that epoch's running sums: loss_sum, correct, seen, seconds
    elapsed: float = 0.0             # seconds of training, summed over sessions
    history: list = field(default_factory=list)
    augment_rng: np.random.Generator | None = None   # this rank's augmentation (None: data_rng's)


def derived_seed(*parts):
    """An int seed from a tuple of ints (e.g. (seed, stream, epoch)), independent per tuple."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def _stochastic(model):
    return [m for m in model.modules() if hasattr(m, "rng")]


def rank_generators(model, state):
    """This rank's own generator states: dropout (NumPy only) and augmentation (several ranks)."""
    dropout = [m.rng.bit_generator.state for m in _stochastic(model)] if model.xp is np else None
    augment = state.augment_rng.bit_generator.state if state.augment_rng is not None else None
    return dict(dropout=dropout, augment=augment)


def save_checkpoint(path, model, optimizer, state, run_meta, ranks=None):
    """Write the full training state to ``path``; ``run_meta`` holds config/train/dataset; ``ranks``
    is every rank's ``rank_generators`` in a run of several ranks (default: this process's)."""
    ranks = ranks or [rank_generators(model, state)]
    arrays = {f"model.{name}": value for name, value in model.state_dict().items()}
    arrays.update({f"optim.{name}": value for name, value in optimizer.state_dict().items()})
    if state.order is not None:
        arrays["train.order"] = state.order
    save_arrays(path, arrays, dict(
        run_meta, epoch=state.epoch, step=state.step, epoch_step=state.epoch_step, partial=state.partial,
        elapsed=state.elapsed, history=state.history, world_size=len(ranks),
        rng={"data": state.data_rng.bit_generator.state, "dropout": ranks[0]["dropout"],
             "ranks": ranks if len(ranks) > 1 else None}))


def load_checkpoint(path, model, optimizer, run_meta, rank=0, world_size=1):
    """Load a checkpoint written by ``save_checkpoint`` into ``model`` and ``optimizer`` (for rank
    ``rank`` of ``world_size``: the number of ranks must be the checkpoint's).

    Returns (TrainState, notes): notes list the training settings that differ from the
    checkpoint's (allowed, but the run is then no longer the one that was interrupted).
    Raises CheckpointError for an unreadable file, a weights-only file, another model
    architecture, another dataset, or another batch size / training-set size.
    """
    arrays, meta = load_arrays(path)
    missing = [key for key in _STATE_KEYS if key not in meta]
    if missing:
        raise CheckpointError(f"{path} holds no training state (missing {', '.join(missing)}): it can be "
                              "loaded with numpyvit.io.load_model, but not resumed")
    _check_state(path, meta, arrays, run_meta)
    _check_same_run(path, meta, run_meta)
    if meta.get("world_size", 1) != world_size:
        raise CheckpointError(f"{path} was written by a run of {meta.get('world_size', 1)} rank(s); resume it with "
                              f"the same number (mpiexec -n {meta.get('world_size', 1)}), not {world_size}")
    try:
        model.load_state_dict(prefixed(arrays, "model"))
        optimizer.load_state_dict(prefixed(arrays, "optim"))
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from err

    try:
        data_rng = _generator(meta["rng"]["data"])
        mine = meta["rng"]["ranks"][rank] if world_size > 1 else dict(dropout=meta["rng"]["dropout"], augment=None)
        augment_rng = None if mine["augment"] is None else _generator(mine["augment"])
        stochastic, dropout = _stochastic(model), mine["dropout"]
        if meta["epoch_step"] and model.xp is np and dropout is not None and len(dropout) == len(stochastic):
            for module, rng_state in zip(stochastic, dropout):
                module.rng.bit_generator.state = rng_state
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as err:
        raise CheckpointError(f"{path}: its random-generator states are damaged ({type(err).__name__}: {err}); "
                              "resume from an earlier checkpoint or train again") from None
    notes = [f"{key}: {meta['train'][key]!r} in the checkpoint, now {value!r}"
             for key, value in run_meta["train"].items() if meta["train"].get(key) != value]
    if meta["epoch_step"]:
        if not (model.xp is np and dropout is not None and len(dropout) == len(stochastic)):
            # CuPy generators cannot be saved: new masks for the rest of this epoch
            model.seed(derived_seed(run_meta["train"]["seed"], 3, meta["step"]))
            notes.append("dropout masks for the rest of this epoch differ from the interrupted run's "
                         "(CuPy generator states are not saved)")
    state = TrainState(data_rng=data_rng, epoch=meta["epoch"], step=meta["step"], epoch_step=meta["epoch_step"],
                       order=arrays.get("train.order"), partial=meta["partial"], elapsed=meta["elapsed"],
                       history=meta["history"], augment_rng=augment_rng)
    return state, notes


def _generator(state):
    """A NumPy generator in a saved ``bit_generator.state`` (a PCG64 dict)."""
    if not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
        raise ValueError(f"not a PCG64 state: {str(state)[:60]}")
    generator = np.random.default_rng()
    generator.bit_generator.state = state
    return generator


def _check_state(path, meta, arrays, run_meta):
    """CheckpointError unless the training state has the kinds and ranges save_checkpoint writes
    (a hand-edited or damaged one would otherwise fail deep inside training, or train wrongly)."""
    def bad(what):
        raise CheckpointError(f"{path}: its training state is damaged ({what}); resume from an earlier "
                              "checkpoint or train again")

    def count(key):
        value = meta[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            bad(f"{key} must be a whole number >= 0, got {value!r}")
        return value

    for key in ("config", "train", "data", "rng"):
        if not isinstance(meta[key], dict):
            bad(f"{key} must be a mapping, got {type(meta[key]).__name__}")
    epoch_step = count("epoch_step")
    count("epoch")
    count("step")
    if not isinstance(meta["elapsed"], (int, float)) or isinstance(meta["elapsed"], bool) or meta["elapsed"] < 0:
        bad(f"elapsed must be seconds >= 0, got {meta['elapsed']!r}")
    if not isinstance(meta["history"], list) or not all(isinstance(r, dict) for r in meta["history"]):
        bad("history must be a list of per-epoch records")
    if not isinstance(meta["data"].get("train_size"), int):
        bad(f"data.train_size must be a whole number, got {meta['data'].get('train_size')!r}")
    if not epoch_step:
        return
    n, batch = run_meta["data"]["train_size"], run_meta["train"]["batch_size"]
    if epoch_step >= n // batch:
        bad(f"epoch_step {epoch_step} is past the {n // batch} steps of an epoch")
    partial = meta["partial"]
    if not (isinstance(partial, dict) and all(isinstance(partial.get(k), (int, float)) and not isinstance(partial.get(k), bool)
                                              for k in ("loss_sum", "correct", "seen", "seconds"))):
        bad(f"partial must hold the unfinished epoch's loss_sum, correct, seen and seconds, got {partial!r}")
    order = arrays.get("train.order")
    if order is None:
        bad("it stops mid-epoch but lacks that epoch's sample order (train.order)")
    if order.ndim != 1 or order.dtype.kind not in "iu" or len(order) != n or \
            not np.array_equal(np.sort(order), np.arange(n)):
        bad(f"train.order must be an ordering of the {n} training images, got {order.dtype} {order.shape}")


def _check_same_run(path, meta, run_meta):
    """CheckpointError naming every difference that makes ``meta``'s run not this one."""
    saved, now = meta["config"], run_meta["config"]
    problems = [f"{key} {saved.get(key)!r} (checkpoint) vs {now.get(key)!r} (this model)"
                for key in sorted(set(saved) | set(now))
                if key not in _FREE_MODEL_KEYS and saved.get(key) != now.get(key)]
    if problems:
        raise CheckpointError(f"{path} is a checkpoint of another model architecture: " + "; ".join(problems)
                              + ". Build the model with the checkpoint's settings, or train into another folder")
    if meta["dataset"] != run_meta["dataset"]:
        problems.append(f"dataset {meta['dataset']!r} (checkpoint) vs {run_meta['dataset']!r} (now)")
    if meta["data"]["train_size"] != run_meta["data"]["train_size"]:
        problems.append(f"{meta['data']['train_size']} training images (checkpoint) vs "
                        f"{run_meta['data']['train_size']} (now)")
    for key in _FIXED_TRAIN_KEYS:
        if meta["train"].get(key) != run_meta["train"][key]:
            problems.append(f"{key} {meta['train'].get(key)!r} (checkpoint) vs {run_meta['train'][key]!r} (now)")
    if problems:
        raise CheckpointError(f"{path} cannot be resumed with these settings: " + "; ".join(problems)
                              + " (the data order and the schedule depend on them)")
