"""Where one core's training-step time goes, per layer type.

    python demos/profile_step.py                    # configs a-d
    python demos/profile_step.py --configs b,c --steps 10

Each layer's own time is measured (a Block's excludes its LayerNorms, attention and MLP). On the
CPU this is one shard's work, batch / threads images on one thread with single-threaded BLAS:
what each core does when numpyvit shards the batch over the cores.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_setup import CONFIGS, add_config_arguments, build, numpyvit_step, synchronizer  # noqa: E402
from numpyvit import cli, parallel  # noqa: E402
from numpyvit.engine import tuning  # noqa: E402


def timed_layers(model, sync):
    """Wrap every layer's forward and backward to add its own time to the returned dict."""
    own = {}                                                         # layer type -> seconds
    open_calls = []                                                  # time spent in children

    def timed(fn, kind):
        def call(*a, **kw):
            sync()
            start = time.perf_counter()
            open_calls.append(0.0)
            try:
                return fn(*a, **kw)
            finally:
                sync()
                elapsed = time.perf_counter() - start
                own[kind] = own.get(kind, 0.0) + elapsed - open_calls.pop()
                if open_calls:
                    open_calls[-1] += elapsed
        return call

    for module in model.modules():
        kind = type(module).__name__
        if kind != "VisionTransformer":
            module.forward, module.backward = timed(module.forward, kind), timed(module.backward, kind)
        if hasattr(module, "normalize"):                             # a LayerNorm whose affine map is folded
            module.normalize = timed(module.normalize, kind)
    return own


def profile(key, backend="numpy", batch=None, steps=5):
    """{layer type: seconds per step} for one core's shard of config ``key``, and ms per step."""
    threads = parallel.num_threads() if backend == "numpy" else 1
    shard = max(1, (batch or CONFIGS[key][2]) // threads)
    model, x, y, training = build(key, backend, shard)
    sync = synchronizer(backend)
    with tuning.forced("blas"):
        inner = numpyvit_step(model, x, y, training)

    def step():
        with tuning.forced("blas"), parallel.single_threaded_blas():
            parallel.run_on_threads([inner])                         # as a worker: nothing split further
    own = timed_layers(model, sync)
    step()                                                           # warm-up
    own.clear()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    total = time.perf_counter() - start
    own["rest (loss, AdamW, wiring)"] = total - sum(own.values())
    return {kind: seconds / steps for kind, seconds in own.items()}, shard


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__)
    add_config_arguments(parser)
    parser.add_argument("--batch", type=cli.positive_int, help="override every config's batch size (before sharding)")
    parser.add_argument("--steps", type=cli.positive_int, default=5)
    return cli.run(profile_configs, parser.parse_args(argv))


def profile_configs(args):
    for key in args.configs:
        own, shard = profile(key, args.backend, args.batch, args.steps)
        total = sum(own.values())
        print(f"\nwhere one core's time goes, config {key} ({CONFIGS[key][0]}), a shard of {shard} images on one "
              f"thread, {total * 1e3:.0f} ms/step:")
        for kind, seconds in sorted(own.items(), key=lambda item: -item[1]):
            print(f"  {kind:<28}{seconds * 1e3:>8.1f} ms {seconds / total:>6.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
