"""How numpyvit uses the CPU cores on this machine: measured on it, not assumed.

What pays differs between machines: on one 2-core AMD server splitting every product across
threads beat PyTorch, on a 2-core Intel server of the same size the same split was slower than one
thread (its threads wake up more slowly). So two kinds of decision are timed here, once per
machine, and remembered:

1. Sizes (``numpyvit.calibration``, about a second): the piece size of row-wise passes
   (numpyvit.parallel.Settings.chunk_bytes: the one at which a GELU runs fastest) and the sizes
   below which a product or an elementwise pass runs in one piece (where splitting stops paying).
2. The way each workload uses the cores (``choose_strategy``): for a model architecture, batch size,
   training or inference and thread count, the first forward of that kind times one forward pass of
   each way of numpyvit.parallel (processes, threads, split, blas) on the model itself, in eval mode
   (no dropout, so no random numbers are drawn): a forward under no_grad for inference, a forward
   and a backward for training (the gradients are restored afterwards), and keeps the fastest
   (worker processes only if 5% faster than threads, since they cost memory). When the two fastest
   are within 25%, they are timed three more times each, taking turns, and compared by medians.
   Batch sizes are rounded to a power of two for this. Where the worker processes' files cannot be
   made in shared memory (numpyvit.workers.SharedMemoryError: no room, as in Docker's 64 MB
   /dev/shm, or not writable), processes are left out of the choice for the rest of the process,
   with a warning, and nothing is cached.

Both are kept in ``<cache>/tuning.json`` (cache: $NUMPYVIT_CACHE_DIR, else $XDG_CACHE_HOME/numpyvit,
else ~/.cache/numpyvit) under a fingerprint of the machine: CPU model, usable cores, NumPy and BLAS
versions, BLAS kernel, OPENBLAS_CORETYPE, numpyvit's version. Another machine, or a new NumPy
or numpyvit, measures again.

    NUMPYVIT_PARALLEL=processes|threads|split|blas   always this way (nothing is measured)
    NUMPYVIT_TUNING=off                              measure nothing: default sizes, and shards on
                                                     threads when the batch has an image per thread
    NUMPYVIT_THREADS=n                               the number of cores to use
"""
import contextlib
import json
import os
import platform
import threading
import warnings
from pathlib import Path

import numpy as np

from . import parallel
from .calibration import best_time, calibrate_settings
from .data.datasets import cache_dir
from .grad_mode import grad_enabled
from .io import atomic_file
from .per_thread import PerThread
from .workers import SUPPORTED as PROCESSES_SUPPORTED, SharedMemoryError

STRATEGIES = ("processes", "threads", "split", "blas")
CACHE_NAME = "tuning.json"
PROCESS_MARGIN = 1.05    # worker processes are chosen only when this much faster than threads: each
                         # holds an interpreter, and the weights are copied to them every step
CLOSE_CALL = 1.25        # the two fastest ways within this factor are timed again, taking turns
_forced = PerThread(None)               # a way forced on this thread (measuring, tests)
_state = dict(settings_applied=False, fingerprint=None)
_decisions = {}                        # workload key -> strategy, for this process
_refused = dict(processes=None)        # why worker processes cannot run in this process, if they cannot
_lock = threading.RLock()


class TuningError(ValueError):
    """NUMPYVIT_PARALLEL or NUMPYVIT_TUNING holds a value numpyvit does not know."""


def cache_path():
    return Path(os.environ.get("NUMPYVIT_CACHE_DIR") or cache_dir()) / CACHE_NAME


def tuning_enabled():
    value = os.environ.get("NUMPYVIT_TUNING", "on").strip().lower()
    if value not in ("on", "off", "1", "0"):
        raise TuningError(f"NUMPYVIT_TUNING must be 'on' or 'off', got {value!r}")
    return value in ("on", "1")


def machine():
    """A description of what makes timings differ between machines (the cache's key)."""
    blas = [dict(api=lib.internal_api, version=lib.version, kernel=getattr(lib, "architecture", None))
            for lib in parallel.blas_libraries()]
    from . import __version__

    return dict(cpu=cpu_model(), cores=parallel.num_threads(), numpy=np.__version__, blas=blas,
                coretype=os.environ.get("OPENBLAS_CORETYPE"), numpyvit=__version__)


def cpu_model():
    """The CPU's model name, with its family and model numbers (Linux: /proc/cpuinfo; elsewhere
    what ``platform`` knows)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    numbers = f" (family {fields['cpu family']} model {fields['model']})" if "cpu family" in fields else ""
    return fields["model name"] + numbers


def fingerprint():
    if _state["fingerprint"] is None:
        _state["fingerprint"] = json.dumps(machine(), sort_keys=True)
    return _state["fingerprint"]


# ----- the cache file ------------------------------------------------------------------------------
def load_cache():
    """{fingerprint: {"machine": ..., "settings": ..., "workloads": {key: entry}}}; {} if unreadable."""
    try:
        cache = json.loads(cache_path().read_text())
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        return {}


def _update_cache(update):
    """Apply ``update(entry)`` to this machine's entry and write the file atomically."""
    path = cache_path()
    with _lock:
        cache = load_cache()
        entry = cache.setdefault(fingerprint(), dict(machine=machine(), settings=None, workloads={}))
        update(entry)
        try:
            with atomic_file(path) as f:
                f.write(json.dumps(cache, indent=1).encode())
        except OSError:
            pass                                                     # a read-only home: measure again next time


def machine_entry():
    return load_cache().get(fingerprint(), {})


# ----- 1. sizes ------------------------------------------------------------------------------------------
def apply_settings():
    """Set numpyvit.parallel.settings from this machine's measurements (measuring them once)."""
    with _lock:
        if _state["settings_applied"]:
            return
        _state["settings_applied"] = True
        if not tuning_enabled():
            return
        saved = machine_entry().get("settings")
        if saved is None:
            saved = calibrate_settings()
            _update_cache(lambda entry: entry.update(settings=saved))
        parallel.settings = parallel.Settings(**{k: saved[k] for k in ("chunk_bytes", "min_split_work",
                                                                        "min_split_elements")})


# ----- 2. the way to use the cores ---------------------------------------------------------------------
def forced(strategy):
    """Inside (a context manager), every model forward on this thread uses ``strategy``."""
    return _forced.set(strategy)


def forced_way():
    """The way forced by ``forced`` or $NUMPYVIT_PARALLEL, else None."""
    return _forced.get() or os.environ.get("NUMPYVIT_PARALLEL")


def refuse_processes(error):
    """Choose no worker processes in this process from now on: ``error`` (a SharedMemoryError) says
    their files cannot be made. Warns once; the other ways need no shared memory."""
    if _refused["processes"] is None:
        _refused["processes"] = str(error)
        warnings.warn(f"{error}. numpyvit goes on without worker processes (small models train up to a "
                      "third slower on threads).", RuntimeWarning, stacklevel=3)


def possible(batch, threads):
    """The ways a batch of this size can use ``threads`` cores."""
    ways = []
    if threads > 1 and batch >= threads:
        processes = PROCESSES_SUPPORTED and _refused["processes"] is None
        ways += (["processes"] if processes else []) + ["threads"]
    if threads > 1:
        ways += ["split"] + (["blas"] if parallel.blas_libraries() else [])
    return ways or ["blas"]


def rule(batch, threads):
    """The choice when nothing is measured (NUMPYVIT_TUNING=off): shards on threads if the batch
    has an image per thread, else split."""
    ways = possible(batch, threads)
    return "threads" if "threads" in ways else ways[0]


def workload_key(config, batch, training, threads):
    keys = ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads", "mlp_ratio",
            "act", "dtype")
    bucket = 1 << max(0, round(np.log2(batch)))
    return json.dumps(dict({k: config[k] for k in keys}, batch=bucket, training=bool(training), threads=threads),
                      sort_keys=True)


def choose_strategy(model, batch):
    """The way ``model`` (a NumPy VisionTransformer) uses the cores for a batch of ``batch`` images."""
    threads = parallel.num_threads()
    ways = possible(batch, threads)
    strategy = forced_way()
    if strategy:
        if strategy not in STRATEGIES:
            raise TuningError(f"NUMPYVIT_PARALLEL must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        return strategy if strategy in ways else ways[0]
    if len(ways) == 1:
        return ways[0]
    apply_settings()
    if not tuning_enabled():
        return rule(batch, threads)
    training = model.training and grad_enabled()
    key = workload_key(model.config, batch, training, threads)
    if _decisions.get(key) not in ways:
        entry = machine_entry().get("workloads", {}).get(key)
        if entry is None or entry.get("strategy") not in ways:
            entry = measure(model, batch, ways, training)
            if _refused["processes"] is None:                      # (a full /dev/shm is the container's,
                _update_cache(lambda cache_entry: cache_entry["workloads"].update({key: entry}))   # not the machine's)
        _decisions[key] = entry["strategy"]
    return _decisions[key]


def measure(model, batch, ways, training):
    """Time each way on ``model`` itself with a random batch: a forward, and for a ``training``
    workload a forward and a backward; the fastest wins. Returns {"strategy": fastest,
    "ms": {way: milliseconds}}."""
    C, (H, W) = model.patch_embed.in_chans, model.patch_embed.img_size
    x = np.random.default_rng(0).standard_normal((batch, C, H, W)).astype(model.dtype)
    dlogits = np.full((batch, model.num_classes), 1.0 / batch, dtype=model.dtype)

    def step():
        model.forward(x)
        if training:
            model.backward(dlogits)

    times = {}
    with _unchanged(model, training):
        for way in ways:
            with forced(way):
                try:
                    warm_up = best_time(step, 1, warm_up=False)     # starts worker processes
                except SharedMemoryError as error:
                    refuse_processes(error)
                    continue
                times[way] = best_time(step, 2 if warm_up < 1.0 else 1, warm_up=False)
        ranked = sorted(times, key=times.get)
        if len(ranked) > 1 and times[ranked[1]] < CLOSE_CALL * times[ranked[0]]:
            times.update(_in_turns(step, ranked[:2], times))
    best = min(times, key=times.get)
    if best == "processes" and times.get("threads", float("inf")) < PROCESS_MARGIN * times[best]:
        best = "threads"                                             # close: threads cost no extra memory
    model.release_shards(keep=best)
    return dict(strategy=best, ms={way: round(t * 1e3, 2) for way, t in times.items()})


def _in_turns(step, ways, times, rounds=3):
    """{way: median seconds} of ``rounds`` more steps of each way, the ways taking turns (so that a
    change in the machine's speed meanwhile hits both), counting the first timings in ``times``."""
    samples = {way: [times[way]] for way in ways}
    for _ in range(rounds):
        for way in ways:
            with forced(way):
                samples[way].append(best_time(step, 1, warm_up=False))
    return {way: float(np.median(seconds)) for way, seconds in samples.items()}


@contextlib.contextmanager
def _unchanged(model, training):
    """Eval mode (no dropout: no random draws) and, for timing forwards alone, no_grad (nothing
    cached); for training timings the gradients are put back as they were afterwards."""
    if not training:
        with model.inference():
            yield
        return
    saved = [None if p.grad is None else p.grad.copy() for p in model.parameters()]
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
        for param, grad in zip(model.parameters(), saved):
            if grad is None:
                param.grad = None
            else:
                param.grad[...] = grad                               # in place: optimizer views stay views


def summary():
    """This machine's measured sizes and choices, as printable lines (demos/benchmark.py)."""
    entry = machine_entry()
    lines = [f"machine: {json.dumps(machine())}", f"settings: {json.dumps(parallel.settings.__dict__)}"]
    for key, choice in entry.get("workloads", {}).items():
        lines.append(f"  {key} -> {choice['strategy']}  (ms per forward: {choice['ms']})")
    return lines
