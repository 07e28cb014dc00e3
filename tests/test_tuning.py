"""numpyvit.engine.tuning: the way to use the cores is measured once per machine and workload, cached,
and can be forced or switched off; the measuring leaves the model as it was."""
import errno
import json
import os
import time

import numpy as np
import pytest

import numpyvit
from numpyvit import parallel
from numpyvit.engine import cache, tuning
from numpyvit.environment import EnvironmentVariableError
from numpyvit.engine.__main__ import main as engine_main


@pytest.fixture
def tuned(monkeypatch, tmp_path):
    """Tuning switched on, with an empty cache in tmp_path and nothing remembered in memory."""
    monkeypatch.setenv("NUMPYVIT_TUNING", "on")
    monkeypatch.setenv("NUMPYVIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("NUMPYVIT_THREADS", "2")
    monkeypatch.delenv("NUMPYVIT_PARALLEL", raising=False)
    monkeypatch.setattr(tuning, "_decisions", {})
    monkeypatch.setattr(tuning, "_refused", dict(processes=None))
    monkeypatch.setattr(tuning, "_state", dict(settings_applied=False, fingerprint=None))
    monkeypatch.setattr(parallel, "settings", parallel.Settings())
    monkeypatch.setattr(tuning, "_spent", dict(seconds=0.0))
    monkeypatch.setattr(tuning, "_said", set())
    monkeypatch.setattr(tuning, "_observed", {})
    monkeypatch.setattr(tuning, "_rechecked", set())
    monkeypatch.setattr(cache, "_warned", set())
    return tmp_path / cache.CACHE_NAME


def model(**overrides):
    return numpyvit.VisionTransformer(**{**dict(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8,
                                                depth=1, num_heads=2), **overrides})


def images(batch=6):
    return np.random.default_rng(0).standard_normal((batch, 1, 8, 8)).astype(np.float32)


def test_the_first_forward_measures_every_way_and_the_cache_remembers(tuned, monkeypatch):
    first = model()
    logits = first(images())
    cache = json.loads(tuned.read_text())
    (entry,) = cache.values()
    assert entry["machine"]["cpu"] == tuning.cpu_model() and entry["machine"]["numpy"] == np.__version__
    assert set(entry["settings"]) >= {"chunk_bytes", "min_split_work", "min_split_elements"}
    (choice,) = entry["workloads"].values()
    assert set(choice["ms"]) == set(tuning.available_strategies(6, 2)) and choice["strategy"] in choice["ms"]
    ms, chosen = choice["ms"], choice["strategy"]                  # ms are rounded to 0.01: ties happen
    if chosen == "threads" and ms.get("processes", float("inf")) < ms["threads"]:
        assert ms["threads"] <= tuning.PROCESS_MARGIN * ms["processes"] + 0.01   # processes must win by the margin
    else:
        assert ms[chosen] <= min(ms.values()) + 0.01 and not (
            chosen == "processes" and ms["threads"] < tuning.PROCESS_MARGIN * ms["processes"] - 0.01)
    assert parallel.settings.chunk_bytes == entry["settings"]["chunk_bytes"]
    # a new process (nothing in memory) reads the file instead of measuring
    monkeypatch.setattr(tuning, "_decisions", {})
    monkeypatch.setattr(tuning, "measure", lambda *a: pytest.fail("measured again"))
    second = model()
    np.testing.assert_allclose(second(images()), logits, rtol=1e-5, atol=1e-6)
    assert second.runner.strategy(6) == choice["strategy"]
    assert second.runner.strategy(7) == choice["strategy"]                 # batch sizes share a power-of-two bucket


def test_measuring_leaves_the_model_as_it_was(tuned):
    m = model(drop_rate=0.2)
    state = [layer.rng.bit_generator.state for layer in m.modules() if hasattr(layer, "rng")]
    loss = numpyvit.CrossEntropyLoss()
    loss(m(images()), np.arange(6) % 3)                              # training forward: measures first
    assert m.training and m.has_cache()
    m.backward(loss.backward())
    reference = model(drop_rate=0.2)
    for layer, saved in zip([layer for layer in reference.modules() if hasattr(layer, "rng")], state):
        assert layer.rng.bit_generator.state == saved
    with tuning.forced(m.runner.strategy(6)):
        loss(reference(images()), np.arange(6) % 3)
        reference.backward(loss.backward())
    for p, q in zip(m.parameters(), reference.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)               # the measuring drew no dropout masks
    assert len(m.runner.shard_sets) <= 1                             # the slower ways' shards are released


def test_forced_way_and_switched_off_tuning(tuned, monkeypatch):
    monkeypatch.setattr(tuning, "measure", lambda *a: pytest.fail("measured although told not to"))
    monkeypatch.setenv("NUMPYVIT_PARALLEL", "split")
    assert model().runner.strategy(6) == "split"
    monkeypatch.setenv("NUMPYVIT_PARALLEL", "processes")
    assert model().runner.strategy(1) == "split"                           # one image cannot be sharded
    monkeypatch.setenv("NUMPYVIT_PARALLEL", "fastest")
    with pytest.raises(EnvironmentVariableError,
                       match="NUMPYVIT_PARALLEL='fastest' is not accepted: it must be one of processes, threads, split"):
        model().runner.strategy(6)
    monkeypatch.delenv("NUMPYVIT_PARALLEL")
    monkeypatch.setenv("NUMPYVIT_TUNING", "off")
    assert model().runner.strategy(6) == "threads" and model().runner.strategy(1) == "split"
    assert not tuned.exists()
    monkeypatch.setenv("NUMPYVIT_TUNING", "maybe")
    with pytest.raises(EnvironmentVariableError, match="NUMPYVIT_TUNING='maybe' is not accepted: it must be one of on"):
        model().runner.strategy(6)


def test_one_thread_uses_no_threads_and_measures_nothing(tuned, monkeypatch):
    monkeypatch.setenv("NUMPYVIT_THREADS", "1")
    monkeypatch.setattr(tuning, "measure", lambda *a: pytest.fail("measured with one thread"))
    assert model().runner.strategy(64) == "blas"


def test_an_unreadable_cache_is_measured_again_and_rewritten(tuned):
    tuned.write_text("{not json")
    model()(images())
    assert len(json.loads(tuned.read_text())) == 1


def test_calibrated_sizes_are_sane(tuned):
    sizes = tuning.calibrate_settings()
    assert sizes["chunk_bytes"] in (2**16, 2**17, 2**18, 2**19, 2**20, 2**21)
    assert sizes["min_split_work"] >= 64 * 128 * 128 and sizes["min_split_elements"] >= 2**14
    assert all(ms > 0 for ms in sizes["chunk_ms"].values())


@pytest.fixture
def full_shared_memory(monkeypatch):
    """Reserving space in shared memory fails as on a full /dev/shm (Docker's 64 MB); yields the
    shared-memory folder's numpyvit files before, to check that none is left behind."""
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if not hasattr(os, "posix_fallocate") or not numpyvit.engine.workers.SUPPORTED:
        pytest.skip("worker processes reserve shared memory with posix_fallocate (Linux)")
    monkeypatch.setattr(os, "posix_fallocate", no_space)
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
    return lambda: sorted(name for name in os.listdir(folder or "/tmp") if name.startswith("numpyvit-"))


def test_no_room_in_shared_memory_for_forced_processes_is_a_clear_error(tuned, monkeypatch, full_shared_memory):
    files = full_shared_memory()
    monkeypatch.setenv("NUMPYVIT_PARALLEL", "processes")
    with pytest.raises(numpyvit.engine.workers.SharedMemoryError,
                       match=r"(?s)need a file of .* MB in shared memory .* MB free .*--shm-size"
                             r".*NUMPYVIT_PARALLEL=threads"):
        model()(images())
    assert full_shared_memory() == files


def test_an_unwritable_shared_memory_folder_is_a_clear_error(monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(numpyvit.engine.workers.tempfile, "mkstemp", read_only)
    with pytest.raises(numpyvit.engine.workers.SharedMemoryError, match="cannot make a file in .*Read-only.*NUMPYVIT_PARALLEL"):
        numpyvit.engine.workers._shared_file(1024)


def test_no_room_in_shared_memory_means_threads_instead_of_processes(tuned, monkeypatch, full_shared_memory):
    files = full_shared_memory()
    reference = model()
    with tuning.forced("threads"):
        expected = reference(images())
    # measuring: processes cannot start, the others are timed, and the choice is not cached on disk
    with pytest.warns(RuntimeWarning, match="goes on without worker processes"):
        np.testing.assert_allclose(model()(images()), expected, rtol=1e-5, atol=1e-6)
    assert "processes" not in tuning.available_strategies(6, 2) and model().runner.strategy(6) != "processes"
    assert not json.loads(tuned.read_text()).popitem()[1]["workloads"]
    # a remembered choice of processes (measured where shared memory was ample) is left for threads
    monkeypatch.setattr(tuning, "_refused", dict(processes=None))
    monkeypatch.setattr(tuning, "_decisions", {key: "processes" for key in tuning._decisions})
    m = model()
    with pytest.warns(RuntimeWarning, match="goes on without worker processes"):
        np.testing.assert_allclose(m(images()), expected, rtol=1e-5, atol=1e-6)
    assert ("processes", 2) not in m.runner.shard_sets
    assert tuning._decisions and "processes" not in tuning._decisions.values()
    m.backward(np.ones((6, 3), np.float32))                         # on the way the forward used
    assert full_shared_memory() == files


def test_a_close_call_is_timed_again_in_turns_and_decided_by_medians():
    order = []

    def step():
        order.append(tuning._forced.get())
        time.sleep(0.001 if order[-1] == "threads" else 0.02)

    first = {"threads": 0.5, "processes": 0.001}                     # one misleading first timing each
    again = tuning._in_turns(step, ("threads", "processes"), first)
    assert order == ["threads", "processes"] * 3
    assert again["threads"] < 0.5 and again["processes"] >= 0.02 and again["threads"] < again["processes"]


def test_measuring_is_announced_and_its_time_counted(tuned, capsys):
    model()(images())
    err = capsys.readouterr().err
    assert "measuring how to run this ViT (D 8, depth 1, 8 px, patch 4) training at batch 6" in err
    assert f"cached in {tuned}" in err and "measured in" in err
    (choice,) = json.loads(tuned.read_text()).popitem()[1]["workloads"].values()
    assert tuning.seconds_measuring() >= choice["seconds"] - 0.01 > 0 and choice["images"] == 6   # (rounded)


def test_a_step_over_the_budget_is_timed_on_a_slice_of_the_batch(tuned, monkeypatch):
    monkeypatch.setattr(tuning, "STEP_BUDGET", 1e-9)                # every step is "too long"
    m = model()
    m(images(32))
    (choice,) = json.loads(tuned.read_text()).popitem()[1]["workloads"].values()
    assert choice["images"] == 2 * tuning.MIN_IMAGES_PER_THREAD     # two threads, the smallest slice
    assert m.runner.strategy(32) == choice["strategy"]


def test_a_run_too_short_to_repay_measuring_is_not_measured(tuned, monkeypatch, capsys):
    with tuning.planned(12):                                         # two batches of six, say
        m = model()
        m(images())
        m(images())
    assert m.runner.strategy(6) == tuning.default_strategy(6, 2)
    assert capsys.readouterr().err.count("too short to repay measuring") == 1
    entry = json.loads(tuned.read_text()).popitem()[1]
    assert not entry["workloads"]                                    # decided by image counts: not even a probe
    monkeypatch.setattr(tuning, "_decisions", {})
    with tuning.planned(10**9):                                      # a long run measures
        model()(images())
    entry = json.loads(tuned.read_text()).popitem()[1]
    assert len(entry["workloads"]) == 1 and "probes" not in entry   # probes are never cached


def plant(path, key, probe=None, workload=None):
    """Put a probe (seconds an image: what numpyvit 0.6.0 cached) and/or a decision for ``key``
    into this machine's cache entry."""
    entry = dict(machine=tuning.machine(), settings=None, workloads={}, probes={})
    if probe is not None:
        entry["probes"][key] = probe
    if workload is not None:
        entry["workloads"][key] = workload
    path.write_text(json.dumps({tuning.fingerprint(): entry}))


def training_key(m, batch):
    return tuning.workload_key(m.config, batch, True, 2)


def test_a_probe_planted_25_times_too_slow_does_not_stop_a_long_run_from_measuring(tuned, capsys):
    m = model()
    plant(tuned, training_key(m, 6), probe=25 * 0.005)               # as a busy machine's probe, cached by 0.6.0
    with tuning.planned(70 * 70_000):                                # Fashion-MNIST's 70 epochs
        m(images())
    assert "too short" not in capsys.readouterr().err
    choice = json.loads(tuned.read_text()).popitem()[1]["workloads"][training_key(m, 6)]
    assert choice["images"] == 6                                     # the whole batch: the stale probe is not read


def test_a_vit_b_sized_workload_planned_for_an_hour_measures_on_a_slice(tuned, monkeypatch):
    m = model()
    monkeypatch.setattr(tuning, "best_time", lambda step, repeats: 0.26 * 2)   # ViT-B/16 training on 2 cores
    with tuning.planned(int(3600 / 0.26)):                           # an hour of it
        assert tuning.measuring_batch(m, 64, ["threads", "blas"], True) == 2 * tuning.MIN_IMAGES_PER_THREAD
    with tuning.planned(2000):                                       # 2,000 images: measuring would cost more
        assert tuning.measuring_batch(m, 64, ["threads", "blas"], True) is None


def test_a_cached_decision_the_run_disagrees_with_is_measured_again_once(tuned, capsys):
    m = model()
    key = training_key(m, 6)
    plant(tuned, key, workload=dict(strategy="blas", ms={"blas": 600.0, "split": 700.0}, images=6, seconds=1.0))
    m(images())                                                      # takes the cached decision: 100 ms an image
    assert m.runner.strategy(6) == "blas"
    for _ in range(tuning.STEPS_TO_CHECK + 2):
        tuning.observe_step(m, 6, 6 * 0.002)                         # the steps take 2 ms an image
    err = capsys.readouterr().err
    assert "steps take 2.00 ms an image, but the cached measurement of this workload (blas, 100.00 ms" in err
    assert key not in json.loads(tuned.read_text()).popitem()[1]["workloads"]
    m(images())                                                      # measured again
    choice = json.loads(tuned.read_text()).popitem()[1]["workloads"][key]
    assert choice["images"] == 6 and "measured" in choice
    for _ in range(tuning.STEPS_TO_CHECK + 2):                       # once: no second look this process
        tuning.observe_step(m, 6, 6 * 10.0)
    assert "measuring again" not in capsys.readouterr().err


def test_steps_that_agree_keep_the_cached_decision(tuned, capsys):
    m = model()
    plant(tuned, training_key(m, 6), workload=dict(strategy="blas", ms={"blas": 6.0}, images=6, seconds=1.0))
    m(images())
    for seconds in (0.5, 0.5, 0.0015, 0.0009, 0.0011, 0.0012, 0.001, 0.0008):   # the first two are warm-ups
        tuning.observe_step(m, 6, 6 * seconds)
    assert "measuring again" not in capsys.readouterr().err
    assert training_key(m, 6) in json.loads(tuned.read_text()).popitem()[1]["workloads"]


BAD_CACHES = {
    "not json": "{not json",
    "a list": "[1, 2]",
    "a string for a time": '{"f": {"workloads": {"k": {"strategy": "blas", "ms": {"blas": "fast"}}}}}',
    "NaN for a time": '{"f": {"workloads": {"k": {"strategy": "blas", "ms": {"blas": NaN}}}}}',
    "images as text": '{"f": {"workloads": {"k": {"strategy": "blas", "ms": {}, "images": "8"}}}}',
    "an unknown strategy": '{"f": {"workloads": {"k": {"strategy": "gpu", "ms": {}}}}}',
    "a negative time": '{"f": {"workloads": {"k": {"strategy": "blas", "ms": {"blas": -1}}}}}',
    "settings as a list": '{"f": {"settings": [1, 2, 3]}}',
    "a machine entry as a number": '{"f": 3}',
    "nested too deep": "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("text", BAD_CACHES.values(), ids=BAD_CACHES.keys())
def test_a_malformed_cache_is_ignored_with_a_warning_and_rewritten(tuned, capsys, text):
    tuned.write_text(text)
    model()(images())
    assert "numpyvit: ignoring" in capsys.readouterr().err
    (entry,) = json.loads(tuned.read_text()).values()
    assert len(entry["workloads"]) == 1


@pytest.mark.parametrize("kind", ["fifo", "folder", "huge"])
def test_a_cache_that_is_no_regular_file_or_too_big_never_hangs_or_crashes(tuned, capsys, kind):
    if kind == "fifo":
        os.mkfifo(tuned)                                             # reading it would block forever
    elif kind == "folder":
        tuned.mkdir()
    else:
        tuned.write_bytes(b" " * (cache.MAX_BYTES + 1))
    m = model()
    m(images())
    assert m.runner.strategy(6) in cache.STRATEGIES
    assert "numpyvit: ignoring the tuning cache" in capsys.readouterr().err
    if kind != "folder":                                             # replaced by a good file
        assert len(json.loads(tuned.read_text())) == 1


def test_the_cache_can_be_shown_and_forgotten(tuned, capsys):
    model()(images())
    assert engine_main(["--show"]) == 0
    shown = capsys.readouterr().out
    assert f"cache: {tuned}" in shown and "workloads measured: 1" in shown
    assert "D 8, depth 1, 8 px, patch 4, training, batch 8, float32, 2 threads: " in shown
    assert engine_main(["--forget"]) == 0
    assert f"removed {tuned}" in capsys.readouterr().out and not tuned.exists()
    assert engine_main(["--forget"]) == 0
    assert "nothing to forget" in capsys.readouterr().out
