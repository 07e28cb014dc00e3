"""Time of a data-parallel training step, split into compute and gradient all-reduce, and an
estimate for N machines.

    mpiexec -n 2 python demos/benchmark_distributed.py --config c          # mnist_large, global batch 32
    python demos/benchmark_distributed.py --config a --bandwidth 25          # one process: compute only

Each rank runs forward + backward + AdamW on its B / N images (numpyvit.distributed); the
all-reduce of the flat gradient buffers is timed on its own. The estimate assumes machines like
this one, each doing B / N images, joined by a network of --bandwidth Gbit/s running a ring
all-reduce, which sends and receives 2 (N - 1) / N times the gradient bytes per rank per step:

    step(N) ~ compute(B / N) + 2 (N - 1) / N * bytes / bandwidth + latency
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpyvit  # noqa: E402
from numpyvit import cli, distributed  # noqa: E402

CONFIGS = {"a": ("mnist_tiny", 128), "b": ("mnist_small", 128), "c": ("mnist_large", 32)}


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="c", choices=sorted(CONFIGS))
    p.add_argument("--batch", type=cli.positive_int, help="global batch (default: the config's)")
    p.add_argument("--repeats", type=cli.positive_int, default=8)
    p.add_argument("--bandwidth", type=cli.positive_float, default=10.0, help="network Gbit/s for the estimate (default 10)")
    p.add_argument("--latency-ms", type=cli.positive_float, default=0.05, help="per all-reduce (default 0.05 ms)")
    return cli.run(estimate, p.parse_args(argv))


def estimate(args):
    world = distributed.world()
    preset, batch = CONFIGS[args.config][0], args.batch or CONFIGS[args.config][1]
    model = numpyvit.create_model(preset)
    optimizer = numpyvit.AdamW(model.parameters(), lr=1e-4)
    loss = numpyvit.CrossEntropyLoss()
    rng = np.random.default_rng(world.rank)
    share = batch // world.size
    x = rng.standard_normal((share, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, share)

    def compute():
        optimizer.zero_grad()
        loss(model(x), y)
        model.backward(loss.backward())
        optimizer.step()

    def all_reduce():
        distributed.average_gradients(world, optimizer)

    compute()
    all_reduce()
    seconds_compute = timed(compute, args.repeats)
    seconds_reduce = timed(all_reduce, args.repeats)
    nbytes = sum(group.grad.nbytes for group in optimizer.groups)
    if not world.is_root:
        return 0
    print(f"{preset}, global batch {batch}, {world.size} rank(s), {model.num_parameters():,} parameters "
          f"= {nbytes / 1e6:.1f} MB of gradients per step; cpu: {numpyvit.engine.tuning.cpu_model()}")
    print(f"per step: compute {1e3 * seconds_compute:.1f} ms (forward + backward + AdamW on {share} images), "
          f"all-reduce {1e3 * seconds_reduce:.1f} ms; {batch / (seconds_compute + seconds_reduce):.0f} img/s")
    one_machine = seconds_compute * world.size                        # compute of the whole batch on one rank
    print(f"\nestimate for ranks like these (one per machine) on a {args.bandwidth:g} Gbit/s network:")
    print(f"{'machines':>9}{'compute ms':>12}{'all-reduce ms':>15}{'img/s':>9}")
    for n in (1, 2, 4, 8, 16, 32):
        reduce_s = 0.0 if n == 1 else 2 * (n - 1) / n * nbytes * 8 / (args.bandwidth * 1e9) + args.latency_ms / 1e3
        step = one_machine / n + reduce_s
        print(f"{n:>9}{1e3 * one_machine / n:>12.1f}{1e3 * reduce_s:>15.1f}{batch / step:>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
