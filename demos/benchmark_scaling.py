"""How numpyvit's training-step time grows with the tokens, the width and the depth of an
MNIST-shaped model (batch 128, 28x28 images).

    python demos/benchmark_scaling.py
    python demos/benchmark_scaling.py --repeats 10
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_setup import make_batch, matmul_flops, numpyvit_step, synchronizer  # noqa: E402
import numpyvit  # noqa: E402
from numpyvit import cli  # noqa: E402

BASE = dict(img_size=28, in_chans=1, num_classes=10, patch_size=7, embed_dim=64, depth=6, num_heads=4, mlp_ratio=2.0)
VARIATIONS = ([("patch_size", p) for p in (14, 7, 4, 2)] + [("embed_dim", d) for d in (32, 64, 128, 256)]
              + [("depth", L) for L in (3, 6, 12)])


def step_seconds(model, batch, repeats, sync):
    """Median seconds of a training step, after two untimed ones."""
    x, y = make_batch(model.config, batch)
    step = numpyvit_step(model, x, y, True)
    for _ in range(2):
        step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    parser.add_argument("--repeats", type=cli.positive_int, default=5)
    parser.add_argument("--batch", type=cli.positive_int, default=128)
    return cli.run(scaling, parser.parse_args(argv))


def scaling(args):
    sync = synchronizer(args.backend)
    print(f"scaling (numpyvit, batch {args.batch}, training step):")
    print(f"{'change':<16}{'tokens':>7}{'width':>6}{'depth':>6}{'ms/step':>9}{'MFLOP/img':>11}{'GFLOP/s':>9}")
    for name, value in VARIATIONS:
        model = numpyvit.VisionTransformer(backend=args.backend, **dict(BASE, **{name: value}))
        seconds = step_seconds(model, args.batch, args.repeats, sync)
        flops = matmul_flops(model.config, args.batch, True)
        print(f"{name + '=' + str(value):<16}{model.patch_embed.num_patches + 1:>7}{model.embed_dim:>6}"
              f"{len(model.blocks):>6}{seconds * 1e3:>9.1f}{flops / args.batch / 3 / 1e6:>11.1f}"
              f"{flops / seconds / 1e9:>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
