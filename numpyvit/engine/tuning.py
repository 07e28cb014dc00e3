"""How numpyvit uses the CPU cores on this machine: measured on it, not assumed.

What pays differs between machines: on one 2-core AMD server splitting every product across
threads beat PyTorch, on a 2-core Intel server of the same size the same split was slower than one
thread (its threads wake up more slowly). So two kinds of decision are timed here, once per
machine, and remembered:

1. Sizes (``numpyvit.engine.calibration``, about a second): the piece size of row-wise passes
   (numpyvit.parallel.Settings.chunk_bytes: the one at which a GELU runs fastest) and the sizes
   below which a product or an elementwise pass runs in one piece (where splitting stops paying).
2. The strategy each workload uses the cores (``choose_strategy``): for a model architecture, batch size,
   training or inference and thread count, the first forward of that kind times one forward pass of
   each strategy of numpyvit.parallel (processes, threads, split, blas) on the model itself, in eval mode
   (no dropout, so no random numbers are drawn): a forward under no_grad for inference, a forward
   and a backward for training (the gradients are restored afterwards), and keeps the fastest
   (worker processes only if 5% faster than threads, since they cost memory). When the two fastest
   are within 25%, they are timed three more times each, taking turns, and compared by medians.
   Batch sizes are rounded to a power of two for this.
   What it costs is kept small (``measure``): a step longer than STEP_BUDGET is timed on a slice of
   the batch (4 images a thread at least), a strategy clearly slower at its first step is not timed
   again, and inside ``planned(images)`` (numpyvit.train.fit) measuring takes at most RUN_SHARE of
   the run's estimated time, or is skipped for a run too short to repay it (fewer than
   STEPS_TO_MEASURE / RUN_SHARE = 280 steps of the smallest slice; then the rule below runs it,
   and nothing is cached). One line on stderr says when it measures and how long it took;
   the training loop leaves that time out of its img/s. Where the worker processes' files cannot be
   made in shared memory (numpyvit.engine.workers.SharedMemoryError: no room, as in Docker's 64 MB
   /dev/shm, or not writable), processes are left out of the choice for the rest of the process,
   with a warning, and nothing is cached.

Both are kept in ``<cache>/tuning.json`` (cache: $NUMPYVIT_CACHE_DIR, else $XDG_CACHE_HOME/numpyvit,
else ~/.cache/numpyvit) under a fingerprint of the machine: CPU model, usable cores, NumPy and BLAS
versions, BLAS kernel, OPENBLAS_CORETYPE, numpyvit's version. Another machine, or a new NumPy
or numpyvit, measures again. A measurement is evidence, not a verdict: inside ``fit`` the training
loop's own step times are compared with it (``observe_step``), and a cached measurement they
disagree with by more than DISAGREE times is dropped and taken again, once. The cache is disposable
(numpyvit.engine.cache): anything malformed in it is ignored with a warning and rewritten.
``python -m numpyvit.engine --show`` prints what was measured; ``--forget`` removes it.

    NUMPYVIT_PARALLEL=processes|threads|split|blas   always this strategy (nothing is measured)
    NUMPYVIT_TUNING=off                              measure nothing: default sizes, and shards on
                                                     threads when the batch has an image per thread
    NUMPYVIT_THREADS=n                               the number of cores to use
    NUMPYVIT_TUNING_QUIET=1                          no line on stderr when it measures
"""
import contextlib
import json
import platform
import sys
import threading
import time
import warnings

import numpy as np

from .. import environment, parallel
from ..grad_mode import grad_enabled
from ..per_thread import PerThread
from ..version import __version__
from .cache import cache_path, load_cache, write_cache
from .calibration import best_time, calibrate_settings
from .workers import SUPPORTED as PROCESSES_SUPPORTED, SharedMemoryError

PROCESS_MARGIN = 1.05    # worker processes are chosen only when this much faster than threads: each
                         # holds an interpreter, and the weights are copied to them every step
CLOSE_CALL = 1.25        # the two fastest strategies within this factor are timed again, taking turns
STEP_BUDGET = 0.4        # seconds: a workload whose step takes longer is timed on a slice of its batch
DROP = 2.0               # a strategy whose first step takes this much longer than the best is timed no more
MIN_IMAGES_PER_THREAD = 4   # ... but of this many images a thread at least: with fewer, the strategies' ranking
                         # changes (ViT-B at 1 image a thread ranked blas first, 13% slower at 4)
RUN_SHARE = 0.05         # measuring may cost this share of a planned run's estimated time, at most
STEPS_TO_MEASURE = 14    # about how many steps measuring takes (4 strategies, a close call in turns)
PROBE_REPEATS = 3        # the probe of one image a thread: the best of this many, after a warm-up
DISAGREE = 2.0           # a run's own steps this many times slower or faster than measured: measure again
STEPS_TO_CHECK = 6       # ... judged by the median of this many training steps (after the first two)
_forced = PerThread(None)               # a strategy forced on this thread (measuring, tests)
_planned = PerThread(None)              # images the run on this thread will process (``planned``)
_state = dict(settings_applied=False, fingerprint=None)
_decisions = {}                        # workload key -> strategy, for this process
_refused = dict(processes=None)        # why worker processes cannot run in this process, if they cannot
_spent = dict(seconds=0.0)             # time spent measuring in this process
_said = set()                          # lines printed once
_observed = {}                         # workload key -> seconds an image of the training loop's steps
_rechecked = set()                     # workload keys measured again after a disagreement (once each)
_lock = threading.RLock()


def machine():
    """A description of what makes timings differ between machines (the cache's key)."""
    blas = [dict(api=lib.internal_api, version=lib.version, kernel=getattr(lib, "architecture", None))
            for lib in parallel.blas_libraries()]
    return dict(cpu=cpu_model(), cores=parallel.num_threads(), numpy=np.__version__, blas=blas,
                coretype=environment.openblas_coretype(), numpyvit=__version__)


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


# ----- the cache file (numpyvit.engine.cache: validated, disposable) ---------------------------------
def _update_cache(update):
    """Apply ``update(entry)`` to this machine's entry and write the file atomically."""
    with _lock:
        cache = load_cache()
        entry = cache.setdefault(fingerprint(), dict(machine=machine(), settings=None, workloads={}))
        update(entry)
        write_cache(cache)


def machine_entry():
    return load_cache().get(fingerprint(), {})


# ----- 1. sizes ------------------------------------------------------------------------------------------
def apply_settings():
    """Set numpyvit.parallel.settings from this machine's measurements (measuring them once)."""
    with _lock:
        if _state["settings_applied"]:
            return
        _state["settings_applied"] = True
        if not environment.tuning_enabled():
            return
        saved = machine_entry().get("settings")
        if saved is None:
            saved = calibrate_settings()
            _update_cache(lambda entry: entry.update(settings=saved))
        parallel.settings = parallel.Settings(**{k: saved[k] for k in ("chunk_bytes", "min_split_work",
                                                                        "min_split_elements")})


# ----- 2. the strategy to use the cores ---------------------------------------------------------------------
def forced(strategy):
    """Inside (a context manager), every model forward on this thread uses ``strategy``."""
    return _forced.set(strategy)


def forced_strategy():
    """The strategy forced by ``forced`` or $NUMPYVIT_PARALLEL, else None."""
    return _forced.get() or environment.forced_strategy()


def planned(images):
    """Inside (a context manager), the run on this thread will push about ``images`` images through
    the model (numpyvit.train.fit says so): measuring is kept to a small share of that, and skipped
    for a run too short to repay it."""
    return _planned.set(images)


def refuse_processes(error):
    """Choose no worker processes in this process from now on: ``error`` (a SharedMemoryError) says
    their files cannot be made. Warns once; the other strategies need no shared memory."""
    if _refused["processes"] is None:
        _refused["processes"] = str(error)
        warnings.warn(f"{error}. numpyvit goes on without worker processes (small models train up to a "
                      "third slower on threads).", RuntimeWarning, stacklevel=3)


def available_strategies(batch, threads):
    """The strategies a batch of this size can use ``threads`` cores."""
    strategies = []
    if threads > 1 and batch >= threads:
        processes = PROCESSES_SUPPORTED and _refused["processes"] is None
        strategies += (["processes"] if processes else []) + ["threads"]
    if threads > 1:
        strategies += ["split"] + (["blas"] if parallel.blas_libraries() else [])
    return strategies or ["blas"]


def default_strategy(batch, threads):
    """The choice when nothing is measured (NUMPYVIT_TUNING=off): shards on threads if the batch
    has an image per thread, else split."""
    strategies = available_strategies(batch, threads)
    return "threads" if "threads" in strategies else strategies[0]


def workload_key(config, batch, training, threads):
    keys = ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads", "mlp_ratio",
            "act", "dtype")
    bucket = 1 << max(0, round(np.log2(batch)))
    return json.dumps(dict({k: config[k] for k in keys}, batch=bucket, training=bool(training), threads=threads),
                      sort_keys=True)


def choose_strategy(model, batch):
    """The strategy ``model`` (a NumPy VisionTransformer) uses the cores for a batch of ``batch`` images."""
    threads = parallel.num_threads()
    strategies = available_strategies(batch, threads)
    strategy = forced_strategy()
    if strategy:
        return strategy if strategy in strategies else strategies[0]
    if len(strategies) == 1:
        return strategies[0]
    with _counted():
        apply_settings()                                             # measures the sizes the first time
    if not environment.tuning_enabled():
        return default_strategy(batch, threads)
    training = model.training and grad_enabled()
    key = workload_key(model.config, batch, training, threads)
    if _decisions.get(key) not in strategies:
        entry = machine_entry().get("workloads", {}).get(key)
        if entry is None or entry.get("strategy") not in strategies:
            with _counted():
                entry = measure(model, batch, strategies, training)
            if _refused["processes"] is None and not entry.get("unmeasured"):   # (a full /dev/shm is the
                _update_cache(lambda cache_entry: cache_entry["workloads"].update({key: entry}))   # container's)
        _decisions[key] = entry["strategy"]
    return _decisions[key]


@contextlib.contextmanager
def _counted():
    """Time spent inside is measuring the machine (``seconds_measuring``; left out of img/s)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        _spent["seconds"] += time.perf_counter() - start


def measure(model, batch, strategies, training):
    """Time each strategy on ``model`` itself with a random batch: a forward, and for a ``training``
    workload a forward and a backward; the fastest wins. Returns {"strategy": fastest,
    "ms": {strategy: milliseconds}, "images": the batch it was timed on, "seconds": what measuring took}.

    What measuring costs stays small next to the work it serves: a workload whose step would take
    longer than STEP_BUDGET is timed on a slice of its batch (``measuring_batch``), and a strategy whose
    first step takes DROP times the best so far is not timed again. One line on stderr says that
    it measures, and how long it took."""
    started = time.perf_counter()
    with _untouched(model, training):
        images = measuring_batch(model, batch, strategies, training)
        if images is None:                                           # not worth it for this run
            strategy = default_strategy(batch, parallel.num_threads())
            _say(f"numpyvit: this run is too short to repay measuring how to use the cores; it runs on {strategy} "
                 "(a longer run measures, once)", once=True)
            return dict(strategy=strategy, unmeasured=True)
        _announce(model, batch, training, images)
        step = _timed_step(model, images, training)
        times = {}
        for strategy in strategies:
            with forced(strategy):
                try:
                    first = best_time(step, 1, warm_up=False)       # starts worker processes
                except SharedMemoryError as error:
                    refuse_processes(error)
                    continue
                if times and first > DROP * min(times.values()):
                    times[strategy] = first                               # clearly slower: no more timing
                    continue
                times[strategy] = best_time(step, 2 if first < 1.0 else 1, warm_up=False)
        ranked = sorted(times, key=times.get)
        if len(ranked) > 1 and times[ranked[1]] < CLOSE_CALL * times[ranked[0]]:
            rounds = 3 if times[ranked[0]] < STEP_BUDGET else 1          # fewer for steps beyond the budget
            times.update(_in_turns(step, ranked[:2], times, rounds))
    best = min(times, key=times.get)
    if best == "processes" and times.get("threads", float("inf")) < PROCESS_MARGIN * times[best]:
        best = "threads"                                             # close: threads cost no extra memory
    model.runner.release(keep=best)
    seconds = time.perf_counter() - started
    _say(f"numpyvit: measured in {seconds:.1f} s: {best} (left out of the training's img/s)")
    return dict(strategy=best, ms={strategy: round(t * 1e3, 2) for strategy, t in times.items()}, images=images,
                seconds=round(seconds, 2), measured=time.strftime("%Y-%m-%d %H:%M"))


def measuring_batch(model, batch, strategies, training):
    """The batch size to time the strategies on, or None when measuring would not pay. The workload's own
    batch when its step is estimated to take at most STEP_BUDGET, else the largest multiple of the
    thread count that fits (MIN_IMAGES_PER_THREAD a thread at least: the smallest slice).

    Inside ``planned(images)``: measuring takes about STEPS_TO_MEASURE steps, so it is skipped (None)
    only when that many steps of the smallest slice would cost more than RUN_SHARE of the run, which
    is STEPS_TO_MEASURE * smallest > RUN_SHARE * images: the image counts decide, so no timing can
    make a long run skip. Otherwise the slice is also kept within RUN_SHARE of the run. The estimates
    scale a probe taken afresh each time (never cached: a probe taken on a busy machine must not
    decide later runs): the best of PROBE_REPEATS steps of one image a thread (products on BLAS's
    threads) after a warm-up, a few percent of what measuring then costs."""
    threads = parallel.num_threads()
    smallest, step_budget = min(batch, threads * MIN_IMAGES_PER_THREAD), STEP_BUDGET
    run = _planned.get()
    if run is not None and STEPS_TO_MEASURE * smallest > RUN_SHARE * run:
        return None
    probe = min(batch, threads)
    with forced(next((strategy for strategy in ("blas", "split") if strategy in strategies), strategies[-1])):   # no shards to make
        per_image = best_time(_timed_step(model, probe, training), PROBE_REPEATS) / probe
    if run is not None:
        step_budget = max(min(step_budget, RUN_SHARE * per_image * run / STEPS_TO_MEASURE), per_image * smallest)
    if per_image * batch <= step_budget:
        return batch
    return max(smallest, min(batch, threads * int(step_budget / per_image / threads)))


def observe_step(model, batch, seconds):
    """The training loop's timing of one step of ``batch`` images (forward, backward, optimizer;
    measuring left out). The median seconds an image of STEPS_TO_CHECK steps (after the first two)
    is compared with what measuring found for the strategy in use; when they disagree by more
    than DISAGREE times either way, the cached decision was taken on a busy (or another) machine:
    it is dropped, one line says so, and the next step measures again (once a workload a
    process)."""
    threads = parallel.num_threads()
    key = workload_key(model.config, batch, True, threads)
    if key in _rechecked or key not in _decisions or forced_strategy():
        return
    samples = _observed.setdefault(key, [])
    samples.append(seconds / batch)
    if len(samples) < STEPS_TO_CHECK + 2:
        return
    _rechecked.add(key)
    entry = machine_entry().get("workloads", {}).get(key)
    if entry is None or entry.get("strategy") != _decisions[key] or "images" not in entry:
        return                                                       # unmeasured: nothing to disagree with
    expected = entry["ms"][entry["strategy"]] / 1e3 / entry["images"]
    actual = float(np.median(samples[2:]))
    if max(actual / expected, expected / actual) <= DISAGREE:
        return
    _say(f"numpyvit: this run's steps take {actual * 1e3:.2f} ms an image, but the cached measurement of this "
         f"workload ({entry['strategy']}, {expected * 1e3:.2f} ms an image) says otherwise: it was taken on a "
         "busy or different machine; measuring again, once")

    _update_cache(lambda cache_entry: cache_entry.get("workloads", {}).pop(key, None))
    del _decisions[key]


def _timed_step(model, images, training):
    """One forward (and backward, for ``training``) of ``model`` on ``images`` random images."""
    C, (H, W) = model.patch_embed.in_chans, model.patch_embed.img_size
    x = np.random.default_rng(0).standard_normal((images, C, H, W)).astype(model.dtype)
    dlogits = np.full((images, model.num_classes), 1.0 / images, dtype=model.dtype)

    def step():
        model.forward(x)
        if training:
            model.backward(dlogits)
    return step


def _announce(model, batch, training, images):
    c = model.config
    slice_note = f" (timed on {images} of its images)" if images < batch else ""
    _say(f"numpyvit: measuring how to run this ViT (D {c['embed_dim']}, depth {c['depth']}, {c['img_size']} px, "
         f"patch {c['patch_size']}) {'training' if training else 'inference'} at batch {batch}{slice_note} on this "
         f"machine's {parallel.num_threads()} cores, once; cached in {cache_path()}")


def _say(line, once=False):
    """A line on stderr (NUMPYVIT_TUNING_QUIET=1: none); with ``once``, only the first time."""
    if once and line in _said:
        return
    _said.add(line)
    if not environment.tuning_quiet():
        print(line, file=sys.stderr, flush=True)


def seconds_measuring():
    """Seconds this process has spent measuring how to run workloads (the training loop leaves
    them out of its img/s)."""
    return _spent["seconds"]


def _in_turns(step, strategies, times, rounds=3):
    """{strategy: median seconds} of ``rounds`` more steps of each strategy, the strategies taking turns (so that a
    change in the machine's speed meanwhile hits both), counting the first timings in ``times``."""
    samples = {strategy: [times[strategy]] for strategy in strategies}
    for _ in range(rounds):
        for strategy in strategies:
            with forced(strategy):
                samples[strategy].append(best_time(step, 1, warm_up=False))
    return {strategy: float(np.median(seconds)) for strategy, seconds in samples.items()}


@contextlib.contextmanager
def _untouched(model, training):
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
    """This machine's measured sizes and choices, as printable lines (``python -m
    numpyvit.engine --show``, demos/benchmark.py)."""
    entry = machine_entry()
    lines = [f"cache: {cache_path()}", f"machine: {json.dumps(machine())}",
             f"settings: {json.dumps(entry.get('settings'))}"]
    workloads = entry.get("workloads", {})
    lines.append(f"workloads measured: {len(workloads)}" + ("" if workloads else " (none yet)"))
    for key, choice in workloads.items():
        if "ms" in choice:
            timed = ", ".join(f"{s} {ms:g}" for s, ms in sorted(choice["ms"].items(), key=lambda item: item[1]))
            lines.append(f"  {_describe(key)}: {choice['strategy']}  (ms a step of {choice.get('images', '?')} "
                         f"images: {timed}; measured {choice.get('measured', 'at an unknown time')} in "
                         f"{choice.get('seconds', '?')} s)")
    return lines


def _describe(key):
    """A workload key in words: 'D 64, depth 6, 28 px, patch 7, training, batch 128, 2 threads'."""
    k = json.loads(key)
    return (f"D {k['embed_dim']}, depth {k['depth']}, {k['img_size']} px, patch {k['patch_size']}, "
            f"{'training' if k['training'] else 'inference'}, batch {k['batch']}, {k['dtype']}, {k['threads']} threads")
