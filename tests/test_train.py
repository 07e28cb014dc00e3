"""numpyvit.train: the loop, checkpoints and resume, Ctrl-C, non-finite losses, history and plots.

Every test trains a 2-block, 16-wide ViT on a synthetic 10-class set (each class a fixed noise
template, plus fresh noise per image) of 64 training and 32 test images: 4 steps an epoch.
"""
import io
import json
import os
import signal

import numpy as np
import pytest

import numpyvit
import numpyvit.io
import numpyvit.layers
from numpyvit.data import Dataset
from numpyvit.grad_mode import grad_enabled
from numpyvit.io import CheckpointError, load_arrays, load_model
from numpyvit.losses import CrossEntropyLoss
from numpyvit.train import (RECIPES, NonFiniteLossError, TrainConfig, TrainingError, TrainingInterrupted,
                            evaluate, fit, recipe)
from numpyvit.train.metrics import tta_view, tta_views

EPOCH_KEYS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "time", "images_per_sec", "images"}


def tiny_dataset(n_train=64, n_test=32):
    templates = np.random.default_rng(42).integers(0, 256, (10, 28, 28))

    def split(n, seed):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = 0.7 * templates[labels] + 0.3 * rng.integers(0, 256, (n, 28, 28))
        return images.astype(np.uint8), labels

    return Dataset("synthetic", *split(n_train, 0), *split(n_test, 1), tuple("0123456789"), 0.5, 0.3)


def tiny_model(**overrides):
    """Dropout and drop path on, so that resuming must restore the dropout generators."""
    kw = dict(embed_dim=16, depth=2, num_heads=2, drop_rate=0.1, drop_path_rate=0.1)
    return numpyvit.create_model("mnist_tiny", **dict(kw, **overrides))


def tiny_config(**overrides):
    """Augmentation on, so that resuming must restore the data generator."""
    return TrainConfig(**dict(dict(epochs=4, batch_size=16, log_every=2, eval_batch_size=16), **overrides))


def stop_at(model, step, how):
    """Make the ``step``-th training forward (1-based) press Ctrl-C ("sigint": a real SIGINT,
    handled by fit) or raise KeyboardInterrupt outright ("raise": what fit sees without its handler)."""
    calls, forward = [0], model.forward

    def forward_then_stop(x):
        if model.training:
            calls[0] += 1
            if calls[0] == step:
                if how == "raise":
                    raise KeyboardInterrupt
                signal.raise_signal(signal.SIGINT)
        return forward(x)

    model.forward = forward_then_stop


# ---------------------------------------------------------------- the loop
def test_fit_learns_an_easy_task(tmp_path):
    config = tiny_config(epochs=8, lr=1e-2, warmup_epochs=0, augment=False, label_smoothing=0.0)
    history = fit(tiny_model(drop_rate=0.0, drop_path_rate=0.0), tiny_dataset(), config, tmp_path, log=None)
    losses = [r["train_loss"] for r in history["epochs"]]
    assert losses[-1] < 0.7 * losses[0], losses
    assert history["epochs"][-1]["test_acc"] > 0.5, history["epochs"][-1]


def test_history_json_and_curves_png(tmp_path):
    returned = fit(tiny_model(), tiny_dataset(), tiny_config(epochs=2), tmp_path, log=None)
    history = json.loads((tmp_path / "history.json").read_text())
    assert history == returned
    assert set(history["config"]) == {"model", "train", "dataset", "data"}
    assert history["config"]["dataset"] == "synthetic" and history["config"]["data"]["train_size"] == 64
    assert history["config"]["model"]["embed_dim"] == 16 and history["config"]["train"]["epochs"] == 2
    assert [r["epoch"] for r in history["epochs"]] == [1, 2]
    for record in history["epochs"]:
        assert set(record) == EPOCH_KEYS
        assert all(isinstance(v, (int, float)) for v in record.values())
        assert 0 <= record["train_acc"] <= 1 and 0 <= record["test_acc"] <= 1
    assert 0 < history["epochs"][0]["time"] < history["epochs"][1]["time"]
    assert [r["images"] for r in history["epochs"]] == [64, 128]            # 4 steps of 16 per epoch
    png = (tmp_path / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000


def test_erase_changes_what_the_model_sees_and_only_when_asked(tmp_path):
    def first_loss(**settings):
        config = tiny_config(epochs=1, augment=False, **settings)
        model = tiny_model(drop_rate=0.0, drop_path_rate=0.0)
        return fit(model, tiny_dataset(), config, tmp_path / str(settings), log=None)["epochs"][0]["train_loss"]
    plain = first_loss()
    assert first_loss(erase=0.0) == plain and first_loss(erase=1.0) != plain
    for bad in (-0.1, 1.5, "half"):
        with pytest.raises(ValueError, match="erase"):
            TrainConfig(erase=bad)


def test_progress_is_one_line_per_epoch_when_not_a_terminal(tmp_path, capsys):
    fit(tiny_model(), tiny_dataset(), tiny_config(epochs=2), tmp_path)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[:2] for line in lines] == [["epoch", "1/2"], ["epoch", "2/2"]]
    assert "\r" not in "".join(lines) and "img/s" in lines[0] and "ETA" in lines[0]


def test_progress_is_rewritten_in_place_on_a_terminal(tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    fit(tiny_model(), tiny_dataset(), tiny_config(epochs=2, log_every=1), tmp_path, log=terminal)
    updates = terminal.getvalue().split("\r")
    assert sum("step" in u for u in updates) == 8          # one update per step (log_every=1)
    assert "epoch 1/2  step 1/4  loss" in updates[1] and "ETA" in updates[1]
    assert terminal.getvalue().endswith("\n") and terminal.getvalue().count("\n") == 2   # one line per epoch


def test_a_step_does_not_loop_over_the_parameters_to_zero_them(tmp_path, monkeypatch):
    def slow_zero_grad(self):
        raise AssertionError("fit called Module.zero_grad (a loop over every parameter); use optimizer.zero_grad")

    monkeypatch.setattr(numpyvit.layers.Module, "zero_grad", slow_zero_grad)
    fit(tiny_model(), tiny_dataset(), tiny_config(epochs=1), tmp_path, log=None)


def test_evaluate_returns_loss_accuracy_predictions_and_keeps_the_mode():
    model, ds = tiny_model(), tiny_dataset()
    result = evaluate(model, ds.test_images, ds.test_labels, mean=ds.mean, std=ds.std, batch_size=10)
    x = ((ds.test_images[:, None] / 255 - ds.mean) / ds.std).astype(np.float32)
    with model.inference():
        logits = model(x)
    assert np.array_equal(result.predictions, logits.argmax(axis=1))
    assert result.accuracy == np.mean(result.predictions == ds.test_labels)
    assert np.isclose(result.loss, float(CrossEntropyLoss().eval().forward(logits, ds.test_labels)), rtol=1e-5)
    assert model.training and not model.has_cache()


def test_tta_views_are_the_image_mirrored_and_moved_one_pixel_each_way():
    assert tta_views(False, 0) == [(False, 0, 0)]
    assert tta_views(True, 1) == [(m, dy, dx) for m in (False, True)
                                  for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))]
    x = np.zeros((1, 1, 3, 4))
    x[0, 0, 0, 1] = 5.0                                                 # row 0, column 1
    moved = tta_view(x, False, 1, -1, fill=-1.0)                        # a pixel down and a pixel left
    assert moved[0, 0, 1, 0] == 5.0 and (moved[0, 0, 0] == -1).all() and (moved[0, 0, :, 3] == -1).all()
    assert tta_view(x, True, 0, 0, fill=-1.0)[0, 0, 0, 2] == 5.0          # mirrored: column 1 -> 4 - 1 - 1
    assert TrainConfig(augment=False).tta_views() == [(False, 0, 0)]
    assert len(TrainConfig().tta_views()) == 5                          # digits: moved, never mirrored
    assert len(TrainConfig(hflip=True, max_translate=1.0).tta_views()) == 10
    assert len(TrainConfig(hflip=True, max_translate=0.5).tta_views()) == 2


def test_evaluate_with_views_classifies_by_the_mean_logits_over_them():
    model, ds = tiny_model(), tiny_dataset()
    views = tta_views(True, 1)
    result = evaluate(model, ds.test_images, ds.test_labels, mean=ds.mean, std=ds.std, batch_size=10, views=views)
    x = ((ds.test_images[:, None] / 255 - ds.mean) / ds.std).astype(np.float32)
    black = (0 - ds.mean) / ds.std
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=black)   # (N, 1, 30, 30)
    with model.inference():
        logits = sum(model(np.ascontiguousarray((padded[..., ::-1] if m else padded)[:, :, 1 - dy:29 - dy, 1 - dx:29 - dx]))
                     for m, dy, dx in views) / 10
    assert np.array_equal(result.predictions, logits.argmax(axis=1))
    assert result.accuracy == np.mean(result.predictions == ds.test_labels)
    assert np.isclose(result.loss, float(CrossEntropyLoss().eval().forward(logits, ds.test_labels)), rtol=1e-5)
    with pytest.raises(ValueError, match="mean= and std="):
        evaluate(model, x, ds.test_labels, views=views)


def test_tta_evaluates_the_last_epoch_on_every_view_and_says_so(tmp_path):
    log = io.StringIO()
    history = fit(tiny_model(), tiny_dataset(), tiny_config(epochs=2, tta=True, hflip=True), tmp_path, log=log)
    first, last = history["epochs"]
    assert set(first) == EPOCH_KEYS and set(last) == EPOCH_KEYS | {"test_acc_tta", "test_loss_tta", "tta_views"}
    assert last["tta_views"] == 10 and 0 <= last["test_acc_tta"] <= 1
    assert f"acc {100 * last['test_acc']:.2f}% ({100 * last['test_acc_tta']:.2f}% with test-time augmentation, " \
           "10 views)" in log.getvalue()


# ---------------------------------------------------------------- checkpoints and resume
def test_checkpoint_holds_the_run_and_loads_as_a_model(tmp_path):
    model = tiny_model()
    fit(model, tiny_dataset(), tiny_config(epochs=1), tmp_path, log=None)
    arrays, meta = load_arrays(tmp_path)
    assert meta["epoch"] == 1 and meta["step"] == 4 and meta["epoch_step"] == 0
    assert meta["train"]["batch_size"] == 16 and meta["dataset"] == "synthetic"
    assert meta["data"] == dict(train_size=64, test_size=32, mean=0.5, std=0.3, classes=list("0123456789"))
    assert {name for name in arrays if name.startswith("optim.")} >= {"optim.step", "optim.groups.0.exp_avg"}
    loaded = load_model(tmp_path)
    for name, value in model.state_dict().items():
        assert np.array_equal(loaded.state_dict()[name], value), name


@pytest.mark.parametrize("step, how, resumes_from", [
    (8, "sigint", "the end of epoch 2"),      # 2 epochs, then resume for 2 more
    (6, "sigint", "epoch 2, step 2"),         # Ctrl-C mid-epoch: saved there, resumed there
    (7, "raise", "mid-step"),                 # no handler: back to the end of epoch 1
])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, step, how, resumes_from):
    ds, config = tiny_dataset(), tiny_config()
    whole = tiny_model()
    expected = fit(whole, ds, config, tmp_path / "whole", log=None)

    first = tiny_model()
    stop_at(first, step, how)
    with pytest.raises(TrainingInterrupted, match=resumes_from) as stopped:
        fit(first, ds, config, tmp_path / "split", log=None)
    assert stopped.value.checkpoint == tmp_path / "split" / "checkpoint.npz"
    resumed = tiny_model(seed=123)                       # the weights come from the checkpoint
    history = fit(resumed, ds, config, tmp_path / "split", resume=True, log=None)

    for name, value in whole.state_dict().items():
        assert np.array_equal(resumed.state_dict()[name], value), name
    same = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")
    assert [[r[k] for k in same] for r in history["epochs"]] == [[r[k] for k in same] for r in expected["epochs"]]


def test_interrupted_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    savez, calls = np.savez, [0]

    def savez_then_crash(file, **arrays):
        calls[0] += 1
        if calls[0] == 2:                                # epoch 2's checkpoint: half a file, then fail
            file.write(b"PK\x03\x04" + b"\0" * 1000)
            raise OSError(28, "No space left on device")
        savez(file, **arrays)

    monkeypatch.setattr(numpyvit.io.np, "savez", savez_then_crash)
    with pytest.raises(TrainingError, match="previous checkpoint"):
        fit(tiny_model(), tiny_dataset(), tiny_config(), tmp_path, log=None)
    _, meta = load_arrays(tmp_path)
    assert meta["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "curves.png", "history.json"]  # no temporary left


def test_a_checkpoint_holding_pickled_objects_is_refused(tmp_path):
    with open(tmp_path / "checkpoint.npz", "wb") as f:
        np.savez(f, payload=np.array([{"code": "runs on load"}], dtype=object),
                 __meta__=np.frombuffer(b"{}", np.uint8))
    with pytest.raises(CheckpointError, match="pickle"):
        fit(tiny_model(), tiny_dataset(), tiny_config(), tmp_path, resume=True, log=None)


def test_a_truncated_checkpoint_is_refused(tmp_path):
    fit(tiny_model(), tiny_dataset(), tiny_config(epochs=1), tmp_path, log=None)
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        fit(tiny_model(), tiny_dataset(), tiny_config(), tmp_path, resume=True, log=None)


@pytest.mark.parametrize("model_kw, config_kw, message", [
    (dict(embed_dim=32), {}, r"another model architecture: embed_dim 16 \(checkpoint\) vs 32"),
    (dict(depth=3, pos_embed="sincos"), {}, "depth 2 .* pos_embed 'learned'"),
    ({}, dict(batch_size=8), r"batch_size 16 \(checkpoint\) vs 8"),
])
def test_resuming_another_run_names_the_mismatch(tmp_path, model_kw, config_kw, message):
    fit(tiny_model(), tiny_dataset(), tiny_config(epochs=1), tmp_path, log=None)
    with pytest.raises(CheckpointError, match=message):
        fit(tiny_model(**model_kw), tiny_dataset(), tiny_config(**config_kw), tmp_path, resume=True, log=None)


def test_a_finished_run_is_not_overwritten_without_resume(tmp_path):
    fit(tiny_model(), tiny_dataset(), tiny_config(epochs=1), tmp_path, log=None)
    with pytest.raises(TrainingError, match="already holds a checkpoint"):
        fit(tiny_model(), tiny_dataset(), tiny_config(epochs=1), tmp_path, log=None)


def test_resuming_with_more_epochs_extends_the_run(tmp_path, capsys):
    fit(tiny_model(), tiny_dataset(), tiny_config(epochs=1), tmp_path, log=None)
    history = fit(tiny_model(), tiny_dataset(), tiny_config(epochs=2), tmp_path, resume=True)
    assert [r["epoch"] for r in history["epochs"]] == [1, 2]
    assert "changed: epochs: 1 in the checkpoint, now 2" in capsys.readouterr().err


# ---------------------------------------------------------------- things going wrong
def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    forward, calls = CrossEntropyLoss.forward, [0]

    def nan_from_epoch_2(self, logits, labels):
        loss = forward(self, logits, labels)
        if grad_enabled():                                           # training steps, not evaluations
            calls[0] += 1
            if calls[0] > 5:
                loss = loss * np.nan
        return loss

    monkeypatch.setattr(CrossEntropyLoss, "forward", nan_from_epoch_2)
    with pytest.raises(NonFiniteLossError, match=r"training loss became nan in epoch 2.*last good checkpoint"):
        fit(tiny_model(), tiny_dataset(), tiny_config(), tmp_path, log=None)
    _, meta = load_arrays(tmp_path)
    assert meta["epoch"] == 1
    assert all(np.isfinite(v).all() for v in load_model(tmp_path).state_dict().values())


def test_a_huge_learning_rate_is_caught(tmp_path):
    config = tiny_config(epochs=2, lr=1e6, min_lr=0.0, clip_norm=None, warmup_epochs=0)
    with pytest.raises(NonFiniteLossError, match="Lower the learning rate"):
        fit(tiny_model(), tiny_dataset(), config, tmp_path, log=None)


def test_ctrl_c_before_the_first_checkpoint_says_so(tmp_path):
    model = tiny_model()
    stop_at(model, 2, "raise")
    before = signal.getsignal(signal.SIGINT)      # Python's default, or SIG_IGN in a shell's background job
    with pytest.raises(TrainingInterrupted, match="nothing to resume") as stopped:
        fit(model, tiny_dataset(), tiny_config(), tmp_path, log=None)
    assert stopped.value.checkpoint is None
    assert signal.getsignal(signal.SIGINT) is before                     # fit put the handler back


# ---------------------------------------------------------------- settings
def test_recipes_build_and_default_is_train_config_defaults():
    assert recipe("default")["train"] == TrainConfig() and recipe("default")["preset"] == "mnist_tiny"
    for name in RECIPES:
        entry = recipe(name)
        assert entry["preset"] in numpyvit.PRESETS and isinstance(entry["train"], TrainConfig)
    with pytest.raises(ValueError, match="Did you mean mnist_long"):
        recipe("mnist_lon")


def test_train_config_survives_json_and_refuses_bad_values():
    config = TrainConfig(scale=(0.8, 1.2), clip_norm=None)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown training settings: lr_max"):
        TrainConfig.from_dict({"lr_max": 1.0})
    for bad, says in ((dict(epochs=0), "epochs must be a positive integer"),
                      (dict(batch_size=2.5), "batch_size must be a positive integer"),
                      (dict(label_smoothing=1.0), r"label_smoothing must be in \[0, 1\)"),
                      (dict(clip_norm=0), "clip_norm must be > 0"), (dict(min_lr=1.0, lr=0.1), "min_lr <= lr"),
                      (dict(tta="yes"), "tta must be True or False"), (dict(augment=1), "augment must be True"),
                      (dict(hflip=None), "hflip must be True or False")):
        with pytest.raises(ValueError, match=says):
            TrainConfig(**bad)


def test_default_recipe_mirrors_clothes_but_never_digits():
    from numpyvit.train import recipe
    assert recipe("default", "mnist")["train"].hflip is False
    clothes = recipe("default", "fashion-mnist")["train"]
    assert clothes.hflip is True and clothes.max_rotate == 0.0
    assert recipe("default", "fashion-mnist")["model"] == dict(embed_dim=96)
    assert clothes.epochs == 70 and clothes.tta is True and recipe("default", "mnist")["train"].tta is False
    assert len(clothes.tta_views()) == 10                              # mirrored or not, x 5 positions
    assert recipe("default", "mnist")["model"] == {}                 # what differs stays with its dataset
    assert recipe("mnist_long", "fashion-mnist")["train"].epochs == 24
