"""``fit``: the training loop. One step, for a batch x (B, C, H, W), labels y (B,):

    lr    = warmup_cosine(step)                 linear warmup, then cosine decay to min_lr
    loss  = CE_smoothed(model(x), y)            forward, label-smoothed cross-entropy
    grads = model.backward(dloss)               after optimizer.zero_grad() (one fill per group)
    clip_grad_norm(optimizer, clip_norm);  optimizer.step()        AdamW

Loss and correct counts are summed on the device and read every ``log_every`` steps (the
only host-device syncs in the loop), which also catches a non-finite loss early. Each epoch
ends with an evaluation on the test set (the last one also with test-time augmentation when
config.tta), a checkpoint, and ``history.json``; the run ends with ``curves.png``.

Randomness: the sample order and the augmentation come from one NumPy generator whose state
is checkpointed; at the start of epoch e the dropout generators are re-seeded from
(seed, e). On NumPy, resuming is bit-exact: 2 epochs, stop, resume for 2 more gives the
weights of an uninterrupted 4-epoch run, also from a mid-epoch checkpoint. On CuPy it is
exact from an epoch-end checkpoint up to the GPU's arithmetic; from a mid-epoch checkpoint
the rest of that epoch gets new dropout masks (CuPy generator states cannot be saved).

How a run stops early (Ctrl-C, a non-finite loss) and what it leaves: see ``stops.py``.

Under ``mpiexec -n N`` (numpyvit.distributed) every rank takes its B / N images of each global
batch (the same order on every rank), the gradients are averaged before clipping and AdamW, losses
and counts are summed over the ranks, the test set is split between them, and rank 0 alone
prints and writes files. Augmentation and dropout draw from generators of each rank's own, all
checkpointed, so a resume with the same number of ranks continues exactly.
"""
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from .. import distributed, viz
from ..data import RandomAffine, RandomErasing, background, chain, iterate_batches
from ..engine import tuning
from ..engine.shards import split_rows
from ..errors import ConfigError
from ..io import CHECKPOINT_NAME
from ..losses import CrossEntropyLoss
from ..memory import check_fits
from ..optim import AdamW, clip_grad_norm, warmup_cosine
from .checkpoint import TrainState, derived_seed, load_checkpoint, rank_generators, save_checkpoint
from .config import TrainConfig
from .history import CURVES_NAME, HISTORY_NAME, write_history
from .metrics import evaluate
from .progress import Progress
from .stops import CtrlC, NonFiniteLossError, RunExistsError, TrainingError, TrainingInterrupted, resume_hint


_STDERR = object()  # log's default: sys.stderr as it is at call time (tests and tools swap it)


def fit(model, dataset, config, out_dir, *, resume=False, log=_STDERR, world=None):
    """Train ``model`` on ``dataset`` (a ``numpyvit.data.Dataset``) with ``config`` (a TrainConfig;
    None: the defaults), writing checkpoint.npz, history.json and curves.png into ``out_dir``.

    ``resume=True`` continues the run saved in ``out_dir`` (the model must have the checkpoint's
    architecture); without it, an existing checkpoint there is an error rather than overwritten.
    Progress goes to ``log``, a text stream (default sys.stderr; None: silent).
    ``world``: the ranks training together (default numpyvit.distributed.world(): several under
    mpiexec, else one). Returns the history, {"config": ..., "epochs": [...]} as in history.json.
    Raises NonFiniteLossError, TrainingInterrupted (Ctrl-C), TrainingError, CheckpointError.
    """
    world = world or distributed.world()
    with distributed.fail_together(world):
        return _fit(model, dataset, config or TrainConfig(), Path(out_dir), resume, log, world)


def _fit(model, dataset, config, out_dir, resume, log, world):
    path = out_dir / CHECKPOINT_NAME
    train_images = dataset.train_images[:config.limit_train]               # all of them if None
    train_labels = dataset.train_labels[:config.limit_train]
    n, B = len(train_images), config.batch_size
    steps_per_epoch = n // B
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size {B} is larger than the training set ({n} images)")
    if B % world.size:
        raise ConfigError(f"batch_size {B} does not split into {world.size} equal shards, one per rank: "
                         f"use a multiple of {world.size}")
    check_fits(model.config, B // world.size, built=True)             # moments and activations
    run_meta = json.loads(json.dumps(dict(        # JSON round trip: compares equal to a loaded one
        config=model.config, train=config.to_dict(), dataset=dataset.name,
        data=dict(train_size=n, test_size=len(dataset.test_labels), mean=dataset.mean, std=dataset.std,
                  classes=list(dataset.classes)))))
    distributed.check_same(world, "model, data or training settings", run_meta)
    optimizer = AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    progress = Progress((sys.stderr if log is _STDERR else log) if world.is_root else None, config.epochs)
    if resume:
        state, notes = load_checkpoint(path, model, optimizer, run_meta, world.rank, world.size)
        where = f"epoch {state.epoch}" + (f", step {state.epoch_step}/{steps_per_epoch} of epoch "
                                          f"{state.epoch + 1}" if state.epoch_step else "")
        progress.note(f"resuming {path} after {where}" + "".join(f"\n  changed: {note}" for note in notes))
    else:
        refuse_to_overwrite(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        distributed.broadcast_parameters(world, model)                  # every rank starts from rank 0's weights
        state = TrainState(data_rng=np.random.default_rng([config.seed, 1]),
                           augment_rng=np.random.default_rng([config.seed, 4, world.rank]) if world.size > 1 else None)

    loop = _Loop(model, dataset, config, train_images, train_labels, optimizer, run_meta, path, progress, world)
    history = dict(config=dict(model=run_meta["config"], train=run_meta["train"], dataset=run_meta["dataset"],
                               data=run_meta["data"]), epochs=state.history)
    planned = (config.epochs - state.epoch) * (n + len(dataset.test_labels))   # images through the model
    try:
        with CtrlC() as ctrl_c, np.errstate(over="ignore", invalid="ignore", divide="ignore"), \
                tuning.planned(planned):
            while state.epoch < config.epochs:
                if world.any(ctrl_c.requested):          # pressed during an evaluation or a save
                    raise TrainingInterrupted(resume_hint(path, state), path)
                loop.epoch(state, ctrl_c)
                if world.is_root:
                    write_history(out_dir / HISTORY_NAME, history)
                progress.epoch(state.history[-1], loop.eta(state))
    except KeyboardInterrupt as err:
        if isinstance(err, TrainingInterrupted):
            raise
        raise TrainingInterrupted(resume_hint(path, None), path if path.exists() else None) from None
    finally:
        if state.history and world.is_root:
            _plot_curves(history, out_dir / CURVES_NAME, progress)
    return history


def refuse_to_overwrite(out_dir):
    """TrainingError if ``out_dir`` already holds a checkpoint (a new run must not overwrite it)."""
    if (Path(out_dir) / CHECKPOINT_NAME).exists():
        raise RunExistsError(f"{out_dir} already holds a checkpoint: resume it (resume=True, --resume), "
                            "or train into another folder")


def augmentation(config, dataset):
    """The TrainConfig's augmentation of the training images, one function (x, rng) -> x."""
    augmentations = []                                               # applied in this order
    if config.augment:
        augmentations.append(RandomAffine(max_translate=config.max_translate, max_rotate=config.max_rotate,
                                          scale=config.scale, fill=background(dataset.mean, dataset.std),
                                          hflip=config.hflip))
    if config.erase:
        augmentations.append(RandomErasing(config.erase))
    return chain(augmentations)


def _plot_curves(history, path, progress):
    """curves.png; a plot that cannot be drawn is a note, never the end of a run."""
    try:
        viz.plot_training_curves(history, path)                     # imports matplotlib on first use
    except ImportError:
        progress.note(f"matplotlib is not installed: no {path.name} (pip install matplotlib)")
    except Exception as err:  # noqa: BLE001 -- it runs in a finally: it must not hide the real outcome
        progress.note(f"could not draw {path} ({type(err).__name__}: {err})")


class _Loop:
    """The per-epoch work of ``fit``, with the run's fixed pieces (model, data, optimizer, ...)."""

    def __init__(self, model, dataset, config, images, labels, optimizer, run_meta, path, progress, world):
        self.model, self.dataset, self.config = model, dataset, config
        self.images, self.labels, self.optimizer = images, labels, optimizer
        self.run_meta, self.path, self.progress, self.world = run_meta, path, progress, world
        self.steps_per_epoch = len(images) // config.batch_size
        self.total_steps = config.epochs * self.steps_per_epoch
        self.warmup_steps = round(config.warmup_epochs * self.steps_per_epoch)
        self.criterion = CrossEntropyLoss(config.label_smoothing)
        self.augment = augmentation(config, dataset)
        self.session_start = time.perf_counter()
        self.session_steps = 0

    def eta(self, state):
        done = self.session_steps
        seconds = (time.perf_counter() - self.session_start) / done if done else math.nan
        return seconds * (self.total_steps - state.step)

    def epoch(self, state, ctrl_c):
        """Train one epoch (or the rest of one), evaluate, checkpoint; checkpoint and raise
        TrainingInterrupted instead when Ctrl-C stops it midway."""
        model, config, xp, B, world = self.model, self.config, self.model.xp, self.config.batch_size, self.world
        epoch, epoch_start, elapsed_at_start = state.epoch + 1, time.perf_counter(), state.elapsed
        if state.epoch_step == 0:
            model.seed(derived_seed(config.seed, 2, epoch, *([world.rank] if world.size > 1 else [])))  # dropout
            state.order = state.data_rng.permutation(len(self.images))   # (N,) this epoch's order
            state.partial = dict(loss_sum=0.0, correct=0, seen=0, seconds=0.0)
        start, b = state.epoch_step * B, B // world.size                 # b: this rank's share of a batch
        order = state.order[start:self.steps_per_epoch * B]             # the batches still to do
        order = order.reshape(-1, B)[:, split_rows(B, world.size)[world.rank]].reshape(-1)   # this rank's shards
        batches = iterate_batches(self.images[order], self.labels[order], b, shuffle=False,
                                  rng=state.data_rng if state.augment_rng is None else state.augment_rng, augment=self.augment,
                                  mean=self.dataset.mean, std=self.dataset.std, xp=xp)
        carried = world.is_root                                          # rank 0 carries the sums so far
        loss_sum = xp.asarray(state.partial["loss_sum"] if carried else 0.0)
        correct = xp.asarray(state.partial["correct"] if carried else 0)
        seen, t0, measured0 = state.partial["seen"], time.perf_counter(), tuning.seconds_measuring()

        def training_seconds():                                          # measuring the machine left out
            return time.perf_counter() - t0 - (tuning.seconds_measuring() - measured0)
        model.train()
        for x, y in batches:
            step_start, measured_before = time.perf_counter(), tuning.seconds_measuring()
            self.optimizer.lr = warmup_cosine(state.step, self.total_steps, config.lr, self.warmup_steps,
                                              config.min_lr)
            logits = model(x)                                            # (B, K)
            loss = self.criterion.forward(logits, y)
            self.optimizer.zero_grad()
            model.backward(self.criterion.backward())
            distributed.average_gradients(world, self.optimizer)        # the whole global batch's gradient
            if config.clip_norm is not None:
                clip_grad_norm(self.optimizer, config.clip_norm)
            self.optimizer.step()
            step_seconds = time.perf_counter() - step_start - (tuning.seconds_measuring() - measured_before)
            tuning.observe_step(model, b, step_seconds)                  # does the cached measurement hold?
            loss_sum += loss * b                                         # device sums: no sync
            correct += (logits.argmax(axis=1) == y).sum()
            seen, state.step, state.epoch_step, self.session_steps = (seen + B, state.step + 1,
                                                                      state.epoch_step + 1, self.session_steps + 1)
            if state.epoch_step % config.log_every == 0:
                total_loss, total_correct = world.sum([float(loss_sum), int(correct)])
                train_loss = self._finite(total_loss / seen, "training", state)
                self.progress.step(epoch, state.epoch_step, self.steps_per_epoch, train_loss, total_correct / seen,
                                   (seen - state.partial["seen"]) / training_seconds(), self.optimizer.lr,
                                   self.eta(state))
            if world.any(ctrl_c.requested):
                break
        seconds = state.partial["seconds"] + training_seconds()
        total_loss, total_correct = world.sum([float(loss_sum), int(correct)])
        state.partial = dict(loss_sum=total_loss, correct=int(total_correct), seen=seen, seconds=seconds)
        train_loss = self._finite(state.partial["loss_sum"] / seen, "training", state)
        if state.epoch_step < self.steps_per_epoch:                      # Ctrl-C mid-epoch
            state.elapsed = elapsed_at_start + time.perf_counter() - epoch_start
            self._save(state)
            raise TrainingInterrupted(resume_hint(self.path, state), self.path)

        result = self._evaluate()
        self._finite(result.loss, "test", state)
        record = dict(epoch=epoch, train_loss=train_loss, train_acc=state.partial["correct"] / seen,
                      test_loss=result.loss, test_acc=result.accuracy, lr=self.optimizer.lr)
        if config.tta and epoch == config.epochs:                        # the final model, on every view
            views = config.tta_views()
            tta = self._evaluate(views)
            record.update(test_loss_tta=tta.loss, test_acc_tta=tta.accuracy, tta_views=len(views))
        state.elapsed = elapsed_at_start + time.perf_counter() - epoch_start
        state.history.append(dict(record, time=state.elapsed, images_per_sec=seen / seconds,
                                  images=state.step * config.batch_size))
        state.epoch, state.epoch_step, state.order, state.partial = epoch, 0, None, None
        self._save(state)

    def _evaluate(self, views=None):
        """The model on the test set (each image alone, or averaged over ``views``)."""
        return evaluate(self.model, self.dataset.test_images, self.dataset.test_labels, mean=self.dataset.mean,
                        std=self.dataset.std, batch_size=self.config.eval_batch_size,
                        label_smoothing=self.config.label_smoothing, views=views, world=self.world)

    def _finite(self, loss, which, state):
        if not math.isfinite(loss):
            kept = (f"the last good checkpoint, {self.path}, is kept" if self.path.exists()
                    else "no checkpoint was written yet")
            raise NonFiniteLossError(
                f"the {which} loss became {loss} in epoch {state.epoch + 1} (by step {state.step}); training "
                f"stopped and {kept}. Lower the learning rate (now {self.config.lr}) or clip gradients harder "
                f"(clip_norm {self.config.clip_norm})")
        return loss

    def _save(self, state):
        """Rank 0 writes the checkpoint, with every rank's generators (gathered from all ranks)."""
        ranks = self.world.gather(rank_generators(self.model, state))
        if not self.world.is_root:
            return
        try:
            save_checkpoint(self.path, self.model, self.optimizer, state, self.run_meta, ranks)
        except OSError as err:
            raise TrainingError(f"could not write {self.path} ({type(err).__name__}: {err}); the previous "
                                "checkpoint, if any, is intact") from err
