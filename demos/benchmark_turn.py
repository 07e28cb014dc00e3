"""One turn of the benchmark: one framework, alone in a fresh process, times a few steps.

    python demos/benchmark_turn.py numpyvit --config a --steps 3
    python demos/benchmark_turn.py torch-math --config a --weights w.npz --steps 3

demos/benchmark.py starts one such process per framework and turn, so that while one framework
is timed nothing of the other is alive: no numpyvit worker processes or threads, no PyTorch
(OpenMP) threads. It prints one JSON line: the seconds of each timed step (after ``--warmup``
untimed ones), how numpyvit used the cores, the peak memory of the process during the timed
steps (and of numpyvit's worker processes) above its size after the imports, and with ``--logits`` the logits of the
first four images before any step (to check that both frameworks compute the same function).

Contestants: ``numpyvit``; ``torch-sdpa`` and ``torch-math`` (PyTorch eager, attention by
``F.scaled_dot_product_attention`` or written out: demos/torch_reference.py); ``torch-compile``
(the faster eager form through ``torch.compile``; its compile time is reported, not timed).
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_setup import CONFIGS, build, make_batch, numpyvit_step, synchronizer, torch_step  # noqa: E402
from numpyvit import cli  # noqa: E402

CONTESTANTS = ("numpyvit", "torch-sdpa", "torch-math", "torch-compile")


def memory_mb(field, pid="self"):
    """VmRSS (now), VmHWM (peak) or RssShmem of a process (this one by default) in MB. (Not
    getrusage's ru_maxrss, which a child inherits from the parent it was forked from.)"""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def reset_peak_memory():
    """Start VmHWM afresh (Linux: writing 5 to /proc/self/clear_refs), so the peak counts the steady
    steps and not one-off work before them (numpyvit measuring the machine, torch.compile)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def numpyvit_contestant(args):
    """(one step, the logits of the first 4 images, how the cores are used, the peak memory in MB
    above ``baseline``, the version) for numpyvit."""
    import numpyvit
    from numpyvit.backend import to_numpy

    model, x, y, training = build(args.config, args.backend, args.batch)

    def logits():                                                    # of the first 4 images
        with model.inference():
            return to_numpy(model(model.xp.asarray(x[:4])))

    def peak_mb(baseline):
        if args.backend == "cupy":
            import cupy
            return cupy.get_default_memory_pool().total_bytes() / 2**20
        workers = [worker.process.pid for shards in model.runner.shard_sets.values()
                   for worker in getattr(shards, "workers", [])]
        # a worker's shared memory (weights, its shard's inputs and gradients) is counted in this process
        return memory_mb("VmHWM") - baseline + sum(memory_mb("VmHWM", pid) - memory_mb("RssShmem", pid)
                                                    for pid in workers)

    way = model.runner.strategy(x.shape[0]) if model.xp is np else "cupy"
    return numpyvit_step(model, x, y, training), logits, way, peak_mb, numpyvit.__version__


def torch_contestant(args):
    """The same five things for a PyTorch form (the weights from ``--weights``)."""
    import torch
    from torch_reference import from_npz

    torch.set_num_threads(args.threads)
    from numpyvit.presets import preset_config

    _, preset, default_batch, training = CONFIGS[args.config]
    config = preset_config(preset)
    device = "cuda" if args.backend == "cupy" else "cpu"
    form = args.contestant.split("-")[1] if args.contestant != "torch-compile" else args.attention
    reference = from_npz(config, args.weights, device, form)
    x, y = make_batch(config, args.batch or default_batch)
    x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    model = torch.compile(reference) if args.contestant == "torch-compile" else reference

    def logits():                                                    # of the first 4 images
        reference.eval()
        with torch.inference_mode():
            out = model(x[:4]).cpu().numpy()
        reference.train(training)
        return out

    def peak_mb(baseline):
        if device == "cuda":
            return torch.cuda.max_memory_allocated() / 2**20
        return memory_mb("VmHWM") - baseline

    return torch_step(model, x, y, training), logits, f"{torch.get_num_threads()} threads", peak_mb, torch.__version__


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("contestant", choices=CONTESTANTS)
    parser.add_argument("--config", required=True, choices=list(CONFIGS))
    parser.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    parser.add_argument("--batch", type=cli.positive_int, help="the config's batch size unless given")
    parser.add_argument("--weights", help="PyTorch: the numpyvit model's state_dict as .npz")
    parser.add_argument("--attention", default="math", choices=["sdpa", "math"], help="torch-compile's form")
    parser.add_argument("--threads", type=cli.positive_int, default=2, help="PyTorch's threads")
    parser.add_argument("--warmup", type=cli.nonnegative_int, default=2)
    parser.add_argument("--steps", type=cli.positive_int, default=3)
    parser.add_argument("--logits", action="store_true", help="also report the logits of the first 4 images")
    args = parser.parse_args(argv)
    if args.contestant.startswith("torch"):
        import torch  # noqa: F401  (imported before the memory baseline, as numpy is)
    baseline = memory_mb("VmRSS")
    make = numpyvit_contestant if args.contestant == "numpyvit" else torch_contestant
    step, logits, way, peak_mb, version = make(args)
    first_logits = logits().tolist() if args.logits else None       # before any step changes the weights
    sync = synchronizer(args.backend)
    start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - start
    reset_peak_memory()                                              # the peak of the timed steps alone
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    report = dict(times=times, way=way, peak_mb=peak_mb(baseline), warmup_s=warmup_s, version=version)
    if first_logits is not None:
        report["logits"] = first_logits
    print(json.dumps(report))


if __name__ == "__main__":
    main()
