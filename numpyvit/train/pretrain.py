"""``pretrain``: a masked autoencoder (numpyvit.mae) learns from the training images without their
labels. One step, for a batch x (B, C, H, W):

    lr           = warmup_cosine(step)                 as fit's schedule
    rows, hidden = random_keep(rng(seed, step), ...)   the step's own draw of the kept patches
    loss         = mae(x, rows, hidden)                 MSE on the hidden patches; one shard of the
    mae.backward();  clip_grad_norm;  AdamW step        batch per core (numpyvit.engine.mae_steps)

Each epoch ends with the loss on the first EVAL_IMAGES test images under one fixed mask (so that
epochs compare), a checkpoint, history.json, and every ``figure_every`` epochs (and at the end)
reconstructions.png: test images, what the encoder saw, and what the decoder made of the rest.
history.json is fit's without accuracies: {"config": {...}, "epochs": [{"epoch", "train_loss",
"test_loss", "lr", "time", "images_per_sec", "images"}, ...]}.

Files and randomness as ``fit``'s (loop.py): checkpoint.npz (the MAE's weights under timm's and
MAE's names, AdamW's state, the sample order), written atomically; the sample order and
augmentation from one checkpointed generator; each step's mask drawn from (seed, step), so a
resume, from an epoch's end or from Ctrl-C mid-epoch, continues exactly on NumPy (with the same
number of cores: the shards' sums round differently). One process (no mpiexec).
"""
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from .. import viz
from ..data import iterate_batches, normalize
from ..errors import ConfigError
from ..io import CHECKPOINT_NAME
from ..layers.masking import random_keep
from ..engine.mae_steps import ShardedSteps
from ..optim import AdamW, clip_grad_norm, warmup_cosine
from .checkpoint import TrainState, derived_seed, load_checkpoint, save_checkpoint
from .history import HISTORY_NAME, write_history
from .loop import augmentation, refuse_to_overwrite
from .progress import Progress, format_duration
from .stops import CtrlC, NonFiniteLossError, TrainingError, TrainingInterrupted, resume_hint

EVAL_IMAGES = 1000          # test images whose loss is reported each epoch
FIGURE_NAME = "reconstructions.png"
FIGURE_IMAGES = 8


def pretrain(mae, dataset, config, out_dir, *, resume=False, log=None, figure_every=5):
    """Pretrain ``mae`` (a MaskedAutoencoder) on ``dataset``'s training images (labels unused) with
    the TrainConfig ``config`` (its schedule, optimizer, augmentation, seed, limit_train; label
    smoothing and tta do not apply), writing into ``out_dir``; ``resume`` continues the run there.
    Progress goes to ``log`` (default sys.stderr). Returns the history."""
    out_dir, log = Path(out_dir), sys.stderr if log is None else log
    path = out_dir / CHECKPOINT_NAME
    images = dataset.train_images[:config.limit_train]
    steps_per_epoch = len(images) // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size {config.batch_size} is larger than the training set ({len(images)} images)")
    run_meta = json.loads(json.dumps(dict(
        config=mae.encoder.config, mae=mae.config, train=config.to_dict(), dataset=dataset.name,
        data=dict(train_size=len(images), test_size=len(dataset.test_labels), mean=dataset.mean, std=dataset.std,
                  classes=list(dataset.classes)))))
    optimizer = AdamW(mae.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    progress = Progress(log, config.epochs)
    if resume:
        state, notes = load_checkpoint(path, mae, optimizer, run_meta)
        progress.note(f"resuming {path} after epoch {state.epoch}" + (f", step {state.epoch_step}" * bool(state.epoch_step))
                      + "".join(f"\n  changed: {note}" for note in notes))
    else:
        refuse_to_overwrite(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = TrainState(data_rng=np.random.default_rng([config.seed, 1]))
    run = _Pretraining(mae, dataset, config, images, optimizer, run_meta, path, progress)
    history = dict(config=run_meta, epochs=state.history)
    try:
        with CtrlC() as ctrl_c, np.errstate(over="ignore", invalid="ignore"):
            while state.epoch < config.epochs:
                run.epoch(state, ctrl_c)
                write_history(out_dir / HISTORY_NAME, history)
                if state.epoch % figure_every == 0 or state.epoch == config.epochs:
                    run.figure(out_dir / FIGURE_NAME, state.epoch)
    finally:
        run.steps.close()                                            # the worker processes, if any
    return history


class _Pretraining:
    """The per-epoch work of ``pretrain``."""

    def __init__(self, mae, dataset, config, images, optimizer, run_meta, path, progress):
        self.mae, self.dataset, self.config, self.images = mae, dataset, config, images
        self.optimizer, self.run_meta, self.path, self.progress = optimizer, run_meta, path, progress
        self.steps_per_epoch = len(images) // config.batch_size
        self.total_steps = config.epochs * self.steps_per_epoch
        self.warmup_steps = round(config.warmup_epochs * self.steps_per_epoch)
        self.augment = augmentation(config, dataset)
        self.steps = ShardedSteps(mae)                                  # one shard per core
        self.num_patches = mae.encoder.patch_embed.num_patches
        test = dataset.test_images[:EVAL_IMAGES]
        self.test_x = normalize(test, dataset.mean, dataset.std)           # (n, C, H, W) float32
        self.test_mask = random_keep(np.random.default_rng([config.seed, 6]), len(test), self.num_patches,
                                     mae.mask_ratio)

    def epoch(self, state, ctrl_c):
        """Train one epoch (or its rest), evaluate, checkpoint; on Ctrl-C checkpoint and raise."""
        mae, config, B = self.mae, self.config, self.config.batch_size
        epoch, start_time, elapsed_at_start = state.epoch + 1, time.perf_counter(), state.elapsed
        if state.epoch_step == 0:
            mae.seed(derived_seed(config.seed, 2, epoch))                # dropout, if the encoder has any
            state.order = state.data_rng.permutation(len(self.images))
            state.partial = dict(loss_sum=0.0, correct=0, seen=0, seconds=0.0)    # correct: no labels, none
        order = state.order[state.epoch_step * B:self.steps_per_epoch * B]
        labels = np.zeros(len(order), dtype=np.int64)                    # unused: MAE needs no labels
        batches = iterate_batches(self.images[order], labels, B, shuffle=False, rng=state.data_rng,
                                  augment=self.augment, mean=self.dataset.mean, std=self.dataset.std, xp=mae.xp)
        loss_sum, seen, t0 = state.partial["loss_sum"], state.partial["seen"], time.perf_counter()
        mae.train()
        for x, _ in batches:
            self.optimizer.lr = warmup_cosine(state.step, self.total_steps, config.lr, self.warmup_steps,
                                              config.min_lr)
            rows, hidden = random_keep(np.random.default_rng([config.seed, 5, state.step]), B, self.num_patches,
                                       mae.mask_ratio)
            self.optimizer.zero_grad()
            loss = self.steps.step(x, rows, hidden)                     # forward and backward
            if config.clip_norm is not None:
                clip_grad_norm(self.optimizer, config.clip_norm)
            self.optimizer.step()
            loss_sum += loss * B
            seen, state.step, state.epoch_step = seen + B, state.step + 1, state.epoch_step + 1
            if state.epoch_step % config.log_every == 0:
                self._finite(loss_sum / seen, "training", state)
            if ctrl_c.requested:
                break
        seconds = state.partial["seconds"] + time.perf_counter() - t0
        state.partial = dict(loss_sum=loss_sum, correct=0, seen=seen, seconds=seconds)
        train_loss = self._finite(state.partial["loss_sum"] / seen, "training", state)
        state.elapsed = elapsed_at_start + time.perf_counter() - start_time
        if state.epoch_step < self.steps_per_epoch:                      # Ctrl-C mid-epoch
            self._save(state)
            raise TrainingInterrupted(resume_hint(self.path, state), self.path)
        test_loss = self._finite(self.test_loss(), "test", state)
        state.elapsed = elapsed_at_start + time.perf_counter() - start_time
        state.history.append(dict(epoch=epoch, train_loss=train_loss, test_loss=test_loss, lr=self.optimizer.lr,
                                  time=state.elapsed, images_per_sec=seen / seconds, images=state.step * B))
        state.epoch, state.epoch_step, state.order, state.partial = epoch, 0, None, None
        self._save(state)
        self.progress.note(f"epoch {epoch}/{config.epochs}  train loss {train_loss:.4f}  test loss {test_loss:.4f}  "
                           f"{seen / seconds:.0f} img/s  lr {self.optimizer.lr:.1e}  "
                           f"{format_duration(state.elapsed)} elapsed")

    def test_loss(self, batch=250):
        """The loss on the fixed test images and mask (eval mode, no gradients kept)."""
        rows, hidden = self.test_mask
        total = 0.0
        with self.mae.inference():
            for i in range(0, len(self.test_x), batch):
                part = slice(i, i + batch)
                total += float(self.mae(self.test_x[part], rows[part], hidden[part])) * hidden[part].sum()
        return total / hidden.sum()

    def figure(self, path, epoch):
        """reconstructions.png from the first FIGURE_IMAGES test images under the fixed mask."""
        rows, hidden = (a[:FIGURE_IMAGES] for a in self.test_mask)
        x = self.test_x[:FIGURE_IMAGES]
        with self.mae.inference():
            pred = self.mae.predict(self.mae.xp.asarray(x), rows)
        pixels = viz.reconstructed_images(x, pred, hidden, self.mae.encoder.patch_embed.patch_size,
                                          self.mae.norm_pix_loss, self.dataset.mean, self.dataset.std)
        try:
            title = (f"MAE after {epoch} epochs: {100 * self.mae.mask_ratio:.0f}% of the patches hidden from the "
                     "encoder" + ("\n(normalized targets: each hidden patch's predicted pattern is drawn with the "
                                  "original patch's mean and contrast)" if self.mae.norm_pix_loss else ""))
            viz.plot_reconstructions(*pixels, path, title=title)
        except ImportError:
            self.progress.note(f"matplotlib is not installed: no {path.name} (pip install matplotlib)")

    def _finite(self, loss, which, state):
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"the {which} loss became {loss} in epoch {state.epoch + 1}; pretraining stopped "
                                     f"(the last checkpoint, if any, is kept). Lower the learning rate ({self.config.lr})")
        return loss

    def _save(self, state):
        try:
            save_checkpoint(self.path, self.mae, self.optimizer, state, self.run_meta)
        except OSError as err:
            raise TrainingError(f"could not write {self.path} ({type(err).__name__}: {err}); the previous "
                                "checkpoint, if any, is intact") from err
