"""The demos end to end, on a tiny synthetic dataset (``load_dataset`` is replaced: no files, no network)."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

import numpyvit.data
from scripts import load_script
from test_train import tiny_dataset

TINY = ["--embed-dim", "16", "--depth", "1", "--num-heads", "2", "--batch-size", "16"]


def demo(name):
    return load_script(f"demos/{name}.py")


@pytest.fixture
def synthetic(monkeypatch):
    """load_dataset returns the tiny set (named as asked) and records what it was asked for."""
    asked = []

    def load_dataset(name, data_dir=None, download=True):
        asked.append(name)
        ds = tiny_dataset()
        ds.name = name
        return ds

    monkeypatch.setattr(numpyvit.data, "load_dataset", load_dataset)
    return asked


@pytest.fixture
def trained(tmp_path, synthetic):
    out = tmp_path / "run"
    assert demo("train_mnist").main(["--epochs", "2", "--out", str(out), *TINY]) == 0
    return out


def test_train_mnist_end_to_end(tmp_path, synthetic, capsys):
    trained = tmp_path / "run"
    assert demo("train_mnist").main(["--epochs", "2", "--out", str(trained), *TINY]) == 0
    out = capsys.readouterr().out
    assert synthetic == ["mnist"]
    assert "64 training / 32 test images" in out and '"embed_dim": 16' in out and '"epochs": 2' in out
    assert "test accuracy" in out.splitlines()[-2] and "after 2 epochs" in out
    assert str(trained / "checkpoint.npz") in out and str(trained / "curves.png") in out
    history = json.loads((trained / "history.json").read_text())
    assert len(history["epochs"]) == 2 and history["config"]["model"]["depth"] == 1
    assert history["config"]["train"]["erase"] == 0.0


def test_train_mnist_fashion_takes_the_clothes_recipe_and_flags_over_it(tmp_path, synthetic, capsys):
    out = tmp_path / "clothes"
    assert demo("train_mnist").main(["--dataset", "fashion-mnist", "--epochs", "1", "--erase", "0.25",
                                     "--out", str(out), *TINY]) == 0
    train = json.loads((out / "history.json").read_text())["config"]["train"]
    assert synthetic == ["fashion-mnist"] and train["erase"] == 0.25 and train["hflip"] is True
    assert train["tta"] is True and train["epochs"] == 1
    assert "with test-time augmentation, 10 views) after 1 epochs" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        demo("train_mnist").main(["--erase", "2", "--out", str(tmp_path / "bad"), *TINY])
    assert refused.value.code == 2 and "argument --erase: 2 is not in [0, 1]" in capsys.readouterr().err


def test_train_mnist_resume_continues_with_the_checkpoint_settings(trained, capsys):
    train = demo("train_mnist")
    assert train.main(["--out", str(trained), "--resume", "--epochs", "3"]) == 0
    history = json.loads((trained / "history.json").read_text())
    assert [r["epoch"] for r in history["epochs"]] == [1, 2, 3]
    assert history["config"]["model"]["embed_dim"] == 16 and history["config"]["train"]["batch_size"] == 16
    capsys.readouterr()
    assert train.main(["--out", str(trained), "--resume", "--embed-dim", "32"]) == 2
    assert "embed_dim 16 (checkpoint) vs 32" in capsys.readouterr().err
    assert train.main(["--out", str(trained), *TINY]) == 2                # would overwrite the run
    assert "already holds a checkpoint" in capsys.readouterr().err


def test_train_mnist_ctrl_c_exits_130_with_a_resumable_checkpoint(tmp_path, synthetic, monkeypatch, capsys):
    train = demo("train_mnist")
    fit = train.fit

    def fit_then_ctrl_c(model, *args, **kwargs):
        calls, forward = [0], model.forward

        def forward_then_ctrl_c(x):
            calls[0] += model.training
            if calls[0] == 6 and model.training:            # epoch 2, step 2
                raise KeyboardInterrupt
            return forward(x)

        model.forward = forward_then_ctrl_c
        return fit(model, *args, **kwargs)

    monkeypatch.setattr(train, "fit", fit_then_ctrl_c)
    assert train.main(["--epochs", "2", "--out", str(tmp_path), *TINY]) == 130
    assert "resume with --resume" in capsys.readouterr().err
    monkeypatch.setattr(train, "fit", fit)
    assert train.main(["--out", str(tmp_path), "--resume"]) == 0


def test_train_mnist_clear_errors(tmp_path, synthetic, capsys):
    train = demo("train_mnist")
    assert train.main(["--out", str(tmp_path), "--resume"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert train.main(["--out", str(tmp_path), "--preset", "mnist_tinyy"]) == 2
    assert "Did you mean mnist_tiny" in capsys.readouterr().err
    assert train.main(["--out", str(tmp_path), "--resume", "--preset", "mnist_small"]) == 2
    assert "--preset start a new run" in capsys.readouterr().err


def test_evaluate_prints_accuracy_and_confusion_matrix(trained, synthetic, capsys):
    capsys.readouterr()
    assert demo("evaluate").main(["--checkpoint", str(trained)]) == 0
    out = capsys.readouterr().out
    assert synthetic[-1] == "mnist"                        # the dataset named in the checkpoint
    assert "test accuracy" in out and "/32)" in out and "epoch 2" in out
    table = out[out.index("true\\pred"):].splitlines()
    assert table[0].split()[1:11] == [str(k) for k in range(10)]
    counts = np.array([[int(n) for n in line.split()[1:11]] for line in table[1:11]])
    assert counts.sum() == 32
    assert (counts.sum(axis=1) == np.bincount(tiny_dataset().test_labels, minlength=10)).all()


def test_evaluate_tta_adds_the_accuracy_over_the_views_of_the_run_augmentation(trained, capsys):
    capsys.readouterr()
    assert demo("evaluate").main(["--checkpoint", str(trained)]) == 0
    assert "test-time augmentation" not in capsys.readouterr().out    # the run did not use it
    assert demo("evaluate").main(["--checkpoint", str(trained), "--tta"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("with test-time augmentation")]
    assert len(line) == 1 and "(5 views): test accuracy" in line[0] and "/32)" in line[0]   # digits: not mirrored


def test_evaluate_refuses_a_broken_checkpoint(tmp_path, capsys):
    (tmp_path / "checkpoint.npz").write_bytes(b"PK\x03\x04 not really")
    assert demo("evaluate").main(["--checkpoint", str(tmp_path)]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err


def test_predict_reads_rgb_wrong_size_light_background(trained, tmp_path, capsys):
    from matplotlib.figure import Figure

    image = np.ones((90, 60, 3))                           # white paper, 3:2, RGB
    image[20:70, 25:35] = (0.1, 0.1, 0.3)                  # a dark-blue stroke
    fig = Figure(figsize=(0.6, 0.9), dpi=100)
    fig.figimage(image)
    fig.savefig(tmp_path / "digit.png")
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "notes.txt").write_text("not an image")
    capsys.readouterr()
    files = [str(tmp_path / name) for name in ("digit.png", "notes.png", "notes.txt")]
    code = demo("predict").main([*files, "--checkpoint", str(trained)])
    captured = capsys.readouterr()
    assert code == 2                                       # some files could not be read
    errors = captured.err.splitlines()
    assert errors[0].startswith(f"error: {files[1]} could not be read as an image")
    assert errors[1].startswith(f"error: {files[2]}: unsupported image type '.txt'") and len(errors) == 2
    line = captured.out.strip()
    assert line.startswith(f"{tmp_path / 'digit.png'}: ") and line.endswith("[inverted: dark on light]")
    assert 0 < float(line.split("probability ")[1].split(")")[0]) <= 1


def test_benchmark_distributed_times_compute_and_all_reduce_in_one_process(capsys):
    demo("benchmark_distributed").main(["--config", "a", "--batch", "8", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "1 rank(s)" in out and "all-reduce" in out and "MB of gradients per step" in out
    assert len([line for line in out.splitlines() if line.strip()[:2].strip().isdigit()]) == 6    # 1..32 machines


BACKEND_PAIRS = [("numpy", "numpy"), ("numpy", "cupy"), ("cupy", "numpy"), ("cupy", "cupy")]


@pytest.mark.parametrize("trained_on, used_on", BACKEND_PAIRS, ids=[f"{a}-to-{b}" for a, b in BACKEND_PAIRS])
def test_a_checkpoint_is_resumed_evaluated_drawn_and_used_on_every_backend(tmp_path, synthetic, capsys,
                                                                           trained_on, used_on):
    """Train on one backend; resume, evaluate, visualize and predict on the other (CuPy pairs
    need a GPU). Weights and optimizer state move to the device they are loaded on."""
    from conftest import require_cupy
    from matplotlib.figure import Figure

    if "cupy" in (trained_on, used_on):
        require_cupy()
    run = tmp_path / "run"
    assert demo("train_mnist").main(["--epochs", "1", "--out", str(run), "--backend", trained_on, *TINY]) == 0
    assert demo("train_mnist").main(["--out", str(run), "--resume", "--epochs", "2", "--backend", used_on]) == 0
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history["epochs"]] == [1, 2] and history["config"]["model"]["backend"] == used_on
    assert demo("evaluate").main(["--checkpoint", str(run), "--backend", used_on]) == 0
    visualize = demo("visualize")
    figures = visualize.draw(visualize.parse_args(["--checkpoint", str(run), "--backend", used_on, "--num-test", "8"]))
    assert figures and all(Path(f).stat().st_size > 0 for f in figures)
    fig = Figure(figsize=(0.28, 0.28), dpi=100)
    fig.figimage(np.zeros((28, 28)))
    fig.savefig(tmp_path / "digit.png")
    capsys.readouterr()
    assert demo("predict").main([str(tmp_path / "digit.png"), "--checkpoint", str(run), "--backend", used_on]) == 0
    assert "probability" in capsys.readouterr().out


def test_benchmark_prints_its_table(monkeypatch, capsys):
    """numpyvit alone (PyTorch is optional), the smallest config, one turn in its own process: a
    smoke test of the script, not a timing."""
    benchmark = demo("benchmark")
    monkeypatch.setattr(benchmark, "matmul_ceiling", lambda backend: 100.0)
    benchmark.main(["--configs", "a", "--no-torch", "--repeats", "1", "--block", "1", "--warmup", "1",
                    "--settle", "0", "--batch", "8"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("a "))
    assert "MNIST-tiny" in row and row.split()[8] in ("processes", "threads", "split", "blas")   # the way
    assert float(row.split()[9]) > 0                                                           # numpyvit img/s
    from numpyvit.engine.tuning import cpu_model
    assert f"cpu: {cpu_model()}" in out                                          # the CPU it ran on


def test_benchmark_mae_compares_the_mae_step_with_the_classifier_s(capsys):
    demo("benchmark_mae").main(["--embed-dim", "16", "--decoder-dim", "8", "--batch", "4", "--rounds", "1",
                                "--block", "1", "--warmup", "0"])
    out = capsys.readouterr().out
    for contestant in ("classifier", "mae-processes", "mae-threads", "as-encoder", "as-decoder"):
        assert re.search(rf"^{contestant} +[\d.]+ms +\d+ +[\d.]+ +[\d.]+ +\d+$", out, re.MULTILINE), out
    assert re.search(r"mae-processes: [\d.]+x the classifier's GFLOP/s; its step takes [\d.]+x", out), out


def test_benchmark_turn_reports_times_memory_and_logits(capsys):
    demo("benchmark_turn").main(["numpyvit", "--config", "a", "--batch", "8", "--warmup", "1", "--steps", "2",
                                 "--logits"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(report["times"]) == 2 and all(t > 0 for t in report["times"])
    assert report["peak_mb"] >= 0 and np.array(report["logits"]).shape == (4, 10)   # (in-process: may reuse freed memory)


def test_profile_step_shares_add_up(capsys):
    demo("profile_step").main(["--configs", "a", "--batch", "8", "--steps", "1"])
    out = capsys.readouterr().out
    shares = [line.split()[-1] for line in out.split("where one core's time goes")[1].splitlines()[1:] if "%" in line]
    kinds = out.split("where one core's time goes")[1]
    for kind in ("Linear", "Attention", "LayerNorm", "GELU", "rest"):
        assert kind in kinds
    assert sum(int(share.rstrip("%")) for share in shares) == pytest.approx(100, abs=len(shares))


def test_benchmark_scaling_prints_a_row_per_variation(capsys):
    scaling = demo("benchmark_scaling")
    scaling.main(["--batch", "4", "--repeats", "1"])
    rows = capsys.readouterr().out.splitlines()[2:]
    assert len(rows) == len(scaling.VARIATIONS) and all(float(row.split()[4]) > 0 for row in rows)


def test_plot_runs_draws_and_summarizes_the_seeds(tmp_path, synthetic, capsys):
    runs = []
    for seed in (0, 1):
        runs.append(tmp_path / f"run{seed}")
        assert demo("train_mnist").main(["--epochs", "2", "--seed", str(seed), "--out", str(runs[-1]), *TINY]
                                        + ["--tta"] * seed) == 0
    capsys.readouterr()
    assert demo("plot_runs").main([*map(str, runs), "--target", "99", "--out", str(tmp_path / "t.png")]) == 0
    out = capsys.readouterr().out
    assert "mnist seed 0:" in out and "mnist seed 1:" in out and "after 128 images" in out and "range" in out
    assert "% with test-time augmentation) after" in out and "with test-time augmentation (1 of 2 runs): mean" in out
    assert (tmp_path / "t.png").stat().st_size > 1000
    assert demo("plot_runs").main([str(runs[0]), str(runs[0])]) == 2                     # one label twice
    assert demo("plot_runs").main([str(tmp_path / "nothing")]) == 2
    assert "nothing cannot be opened: No such file or directory" in capsys.readouterr().err
    history = json.loads((runs[0] / "history.json").read_text())
    del history["epochs"][0]["test_acc"]
    (tmp_path / "damaged.json").write_text(json.dumps(history))
    assert demo("plot_runs").main([str(tmp_path / "damaged.json")]) == 2
    assert "damaged.json is not a numpyvit history.json: epoch 1 lacks test_acc or time" in capsys.readouterr().err
