"""The doors other than the file readers: the demos' flags, the environment variables, the tuning
cache, history.json and the IDX reader. Whatever a user types or names there ends in one line on
stderr and exit status 2 (a bad flag, file or setting), never a traceback, a hang, a memory blow-up
or a setting silently replaced. The parsers, the cache and history.json are also fuzzed.
"""
import contextlib
import gzip
import json
import os
import signal

import numpy as np
import pytest

from numpyvit import environment
from numpyvit.data import read_idx
from numpyvit.data.idx import IDXError
from numpyvit.engine import cache
from numpyvit.train import HistoryError, read_history
from test_demos import demo, synthetic  # noqa: F401  (a fixture)
from test_fuzz import FUZZ, json_values

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402


@contextlib.contextmanager
def at_most(seconds):
    """Fail instead of hanging (a FIFO read would block forever)."""
    def hung(*_):
        raise AssertionError(f"still waiting after {seconds} s: the door hangs")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def exit_status(name, argv):
    """A demo's exit status for ``argv`` (argparse's own refusals raise SystemExit)."""
    try:
        with at_most(60):
            return demo(name).main(argv)
    except SystemExit as stop:
        return stop.code


@pytest.fixture
def afile(tmp_path):
    path = tmp_path / "afile"
    path.write_text("not a folder")
    return str(path)


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "history.json"
    os.mkfifo(path)
    return str(path)


BAD_FLAGS = [  # (demo, argv, what the one line must say); "{file}" / "{fifo}" / "{tmp}" are filled in
    ("train_mnist", ["--epochs", "0"], "--epochs: 0 is not a positive whole number"),
    ("train_mnist", ["--epochs", "abc"], "--epochs: 'abc' is not a whole number"),
    ("train_mnist", ["--depth", "1e3"], "--depth: '1e3' is not a whole number"),
    ("train_mnist", ["--lr", "nan"], "--lr: 'nan' is not a finite number"),
    ("train_mnist", ["--lr", "-1"], "--lr: -1 is not above 0"),
    ("train_mnist", ["--lr", "0"], "--lr: 0 is not above 0"),
    ("train_mnist", ["--mlp-ratio", "inf"], "--mlp-ratio: 'inf' is not a finite number"),
    ("train_mnist", ["--batch-size", "-4"], "--batch-size: -4 is not a positive whole number"),
    ("train_mnist", ["--drop-path", "1"], "--drop-path: 1 is not in [0, 1)"),
    ("train_mnist", ["--label-smoothing", "1.5"], "--label-smoothing: 1.5 is not in [0, 1)"),
    ("train_mnist", ["--weight-decay", "-0.1"], "--weight-decay: -0.1 is negative"),
    ("train_mnist", ["--seed", "-1"], "--seed: -1 is negative"),
    ("train_mnist", ["--limit-train", "0"], "--limit-train: 0 is not a positive whole number"),
    ("train_mnist", ["--recipe", "fast"], "--recipe: invalid choice: 'fast'"),
    ("train_mnist", ["--out", "{file}"], "--out: {file} is a file, not a folder"),
    ("train_mnist", ["--resume", "--out", "{tmp}"], "no checkpoint"),
    ("train_mnist", ["--embed-dim", "16", "--num-heads", "2", "--depth", "1000000", "--data-dir", "{data}"],
     "this model cannot fit: training it at batch 128 would take"),
    ("train_mnist", ["--embed-dim", "1000000", "--data-dir", "{data}"], "this model cannot fit"),
    ("evaluate", ["--batch-size", "0"], "--batch-size: 0 is not a positive whole number"),
    ("evaluate", ["--checkpoint", "{tmp}/missing"], "missing"),
    ("predict", ["--checkpoint", "{tmp}"], "the following arguments are required: IMAGE"),
    ("classify", ["--weights", "{tmp}/w.safetensors", "--top", "0", "x.png"], "--top: 0 is not a positive"),
    ("classify", ["--weights", "{tmp}/w.safetensors", "--img-size", "0", "x.png"], "--img-size: 0 is not a positive"),
    ("finetune", ["--lr", "0"], "--lr: 0 is not above 0"),
    ("finetune", ["--img-size", "0"], "--img-size: 0 is not a positive whole number"),
    ("finetune", ["--out", "{file}"], "--out: {file} is a file, not a folder"),
    ("finetune", ["--out", "{tmp}/new"], "a new run needs --weights and --data"),
    ("visualize", ["--num-test", "0", "--checkpoint", "{tmp}"], "--num-test: 0 is not a positive whole number"),
    ("visualize", [], "one of the arguments --checkpoint --weights is required"),
    ("pretrain", ["--mask-ratio", "1"], "--mask-ratio: 1 is not in [0, 1)"),
    ("pretrain", ["--epochs", "0"], "--epochs: 0 is not a positive whole number"),
    ("pretrain", ["--pixel-loss", "raw"], "--pixel-loss: invalid choice: 'raw'"),
    ("pretrain", ["--data", "{tmp}"], "--data is a folder: give --img-size"),
    ("pretrain", ["--resume", "--out", "{tmp}"], "no checkpoint"),
    ("pretrain", ["--out", "{file}"], "--out: {file} is a file, not a folder"),
    ("pretrain", ["--decoder-dim", "30", "--data-dir", "{data}"], "decoder_dim 30 must divide"),
    ("finetune", ["--limit-train", "0"], "--limit-train: 0 is not a positive whole number"),
    ("explore", ["--blocks", "0,a"], "--blocks: '0,a' is not a list of whole numbers"),
    ("explore", ["--heads", "-1"], "--heads: '-1' has a negative number"),
    ("explore", ["--out", "{tmp}"], "is a folder: name the .html file to write"),
    ("explore", ["--out", "{tmp}/page.htm"], "does not end in .html"),
    ("explore", ["--checkpoint", "{tmp}/missing"], "missing"),
    ("explore", ["--photo", "{file}"], "--photo:"),
    ("explore", ["--image", "-2"], "--image: -2 is negative"),
    ("explore", ["--model", "vit_base_patch16_224", "--data-dir", "{tmp}"], "give --photo FILE"),
    ("plot_runs", ["{tmp}", "--out", "{tmp}"], "is a folder: name the .png file to write"),
    ("plot_runs", ["{tmp}", "--out", "{tmp}/curves.jpg"], "does not end in .png"),
    ("plot_runs", ["{tmp}", "--target", "nan"], "--target: 'nan' is not a finite number"),
    ("plot_runs", ["{fifo}", "--out", "{tmp}/t.png"], "is not a regular file"),
    ("benchmark", ["--configs", "zz"], "--configs: unknown config 'zz'"),
    ("benchmark", ["--block", "0"], "--block: 0 is not a positive whole number"),
    ("benchmark", ["--batch", "-4"], "--batch: -4 is not a positive whole number"),
    ("benchmark", ["--settle", "-1"], "--settle: -1 is negative"),
    ("profile_step", ["--steps", "0"], "--steps: 0 is not a positive whole number"),
    ("benchmark_scaling", ["--batch", "0"], "--batch: 0 is not a positive whole number"),
    ("benchmark_distributed", ["--repeats", "x"], "--repeats: 'x' is not a whole number"),
]


@pytest.mark.parametrize("name, argv, says", BAD_FLAGS, ids=[f"{n}-{'_'.join(a)[:40]}" for n, a, _ in BAD_FLAGS])
def test_every_demo_refuses_bad_flags_in_one_line_with_status_2(name, argv, says, tmp_path, afile, fifo, capsys,
                                                                synthetic):
    values = dict(file=afile, fifo=fifo, tmp=str(tmp_path), data=str(tmp_path / "no-data"))
    status = exit_status(name, [a.format(**values) for a in argv])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert says.format(**values) in err and "Traceback" not in err


@pytest.mark.parametrize("variable, value, says", [
    ("NUMPYVIT_THREADS", "abc", "NUMPYVIT_THREADS='abc' is not accepted: it must be a whole number from 1 to"),
    ("NUMPYVIT_THREADS", "1e3", "NUMPYVIT_THREADS='1e3' is not accepted"),
    ("NUMPYVIT_THREADS", "3000", "NUMPYVIT_THREADS='3000' is not accepted"),
    ("NUMPYVIT_THREADS", "0", "NUMPYVIT_THREADS='0' is not accepted"),
    ("NUMPYVIT_BACKEND", "tpu", "NUMPYVIT_BACKEND='tpu' is not accepted: it must be one of numpy, cupy"),
    ("NUMPYVIT_PARALLEL", "fastest", "NUMPYVIT_PARALLEL='fastest' is not accepted"),
    ("NUMPYVIT_TUNING", "maybe", "NUMPYVIT_TUNING='maybe' is not accepted: it must be one of on, 1, true, off"),
    ("NUMPYVIT_TUNING_QUIET", "yes", "NUMPYVIT_TUNING_QUIET='yes' is not accepted"),
    ("NUMPYVIT_MALLOC_TUNING", "2", "NUMPYVIT_MALLOC_TUNING='2' is not accepted"),
    ("NUMPYVIT_CACHE_DIR", "{file}", "NUMPYVIT_CACHE_DIR='{file}' is not accepted: it must be a folder"),
    ("NUMPYVIT_DATA", "{file}", "NUMPYVIT_DATA='{file}' is not accepted: it must be a folder"),
    ("XDG_CACHE_HOME", "{file}", "XDG_CACHE_HOME='{file}' is not accepted: it must be a folder"),
])
def test_a_bad_environment_variable_is_one_line_naming_it(monkeypatch, capsys, afile, variable, value, says):
    monkeypatch.setenv(variable, value.format(file=afile))
    with pytest.raises(environment.EnvironmentVariableError, match=variable):
        environment.check_all()
    assert exit_status("evaluate", ["--checkpoint", afile]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says.format(file=afile) in err


def test_empty_environment_variables_mean_the_defaults(monkeypatch):
    for variable in ("NUMPYVIT_THREADS", "NUMPYVIT_BACKEND", "NUMPYVIT_PARALLEL", "NUMPYVIT_TUNING"):
        monkeypatch.setenv(variable, " ")
    environment.check_all()
    assert environment.threads() == environment.CPUS and environment.backend() is None


# ----- the IDX reader -----------------------------------------------------------------------------
def test_a_gzip_bomb_is_read_no_further_than_its_header_says(tmp_path):
    header = b"\x00\x00\x08\x01" + np.array([10], ">u4").tobytes()
    with gzip.open(tmp_path / "bomb.gz", "wb") as f:                 # 10 bytes declared, 200 MB inside
        f.write(header)
        for _ in range(200):
            f.write(bytes(2**20))
    assert (tmp_path / "bomb.gz").stat().st_size < 2**20
    with pytest.raises(IDXError, match=r"bomb.gz \(after gunzip\): trailing bytes: header says 10 uint8 = 10 bytes"):
        read_idx(tmp_path / "bomb.gz")


@pytest.mark.parametrize("what", ["/dev/zero", "fifo", "folder"])
def test_only_regular_files_are_read_as_idx(tmp_path, what):
    path = {"/dev/zero": "/dev/zero", "fifo": tmp_path / "f", "folder": tmp_path}[what]
    if what == "fifo":
        os.mkfifo(path)
    with at_most(10), pytest.raises(IDXError, match="is not a regular file"):
        read_idx(path)


# ----- fuzzing the new doors ------------------------------------------------------------------------
FLAG_WORDS = ["--epochs", "--lr", "--batch-size", "--depth", "--embed-dim", "--out", "--seed", "--erase",
              "--drop-path", "--limit-train", "--img-size", "--top", "--num-test", "--target", "--weights",
              "--checkpoint", "--resume", "--recipe", "--dataset", "--label-smoothing", "--mlp-ratio"]
VALUE_WORDS = ["0", "1", "-1", "1e3", "nan", "inf", "-inf", "0.5", "2", "abc", "", "1" * 30, "/dev/null",
               "runs/x", "mnist", "default"]


@pytest.mark.parametrize("name", ["train_mnist", "evaluate", "predict", "classify", "finetune", "visualize",
                                  "plot_runs"])
@FUZZ
@given(words=st.lists(st.sampled_from(FLAG_WORDS + VALUE_WORDS) | st.text(max_size=6), max_size=8))
def test_the_demos_parsers_take_anything_or_refuse_it_in_one_line(name, words, capsys):
    module = demo(name)
    capsys.readouterr()
    try:
        module.parse_args(words)
    except SystemExit as stop:
        err = capsys.readouterr().err
        assert stop.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err


@FUZZ
@given(content=json_values | st.binary(max_size=64))
def test_any_tuning_cache_is_read_or_ignored_never_a_crash(tmp_path, monkeypatch, content):
    monkeypatch.setenv("NUMPYVIT_CACHE_DIR", str(tmp_path))
    path = cache.cache_path()
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    loaded = cache.load_cache()
    assert isinstance(loaded, dict)
    if loaded:
        cache.check_schema(loaded)


def test_a_history_nested_too_deep_is_refused(tmp_path):
    (tmp_path / "history.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(HistoryError, match="history.json is not JSON"):
        read_history(tmp_path)


VALID_HISTORY = {"config": {"dataset": "mnist", "train": {"seed": 0}},
                 "epochs": [{"epoch": 1, "test_acc": 0.9, "time": 3.0, "images": 128, "train_loss": 0.5}]}


@FUZZ
@given(content=json_values, where=st.sampled_from(["config", "epochs", "record", "whole"]))
def test_any_history_is_read_or_refused_never_a_crash(tmp_path, content, where):
    history = json.loads(json.dumps(VALID_HISTORY))
    if where == "whole":
        history = content
    elif where == "record":
        history["epochs"][0]["test_acc"] = content
    else:
        history[where] = content
    (tmp_path / "history.json").write_text(json.dumps(history))
    try:
        read = read_history(tmp_path, need_images=True)
    except HistoryError as error:
        assert "history.json" in str(error)
        return
    assert 0 <= read["epochs"][-1]["test_acc"] <= 1
