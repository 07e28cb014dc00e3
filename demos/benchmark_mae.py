"""Speed of a masked autoencoder's training step against the classifier's, per unit of work.

    python demos/benchmark_mae.py                       # Fashion-MNIST's encoder, pretrain.py's decoder
    python demos/benchmark_mae.py --embed-dim 64 --rounds 15

An MAE step does about half of the classifier's arithmetic (its encoder sees 25% of the patches;
a narrow decoder sees them all), so images per second do not compare. What compares is the rate
of that work: matrix-multiply GFLOP/s (each product counted as PyTorch runs it: 2 m n k, a
backward twice the forward's), and tokens per second through the encoder. Contestants, in one
process, taking turns (``--block`` timed steps each per round after ``--warmup`` untimed ones,
``--rounds`` rounds); the medians compare:

    classifier      the classifier's training step (cross-entropy, backward, AdamW) on the cores as
                    numpyvit.engine.tuning chose for it on this machine
    mae-processes   an MAE step (forward, masked MSE, backward, AdamW) in shards: this process and a
                    worker process per other core (numpyvit.engine.mae_steps; what pretrain.py runs)
    mae-threads     the same on threads (NUMPYVIT_PARALLEL=threads)
    as-encoder      the classifier on images of as many patches as the MAE keeps (4 of 16: 5 tokens)
    as-decoder      a classifier shaped as the decoder (its width, depth and MLP, all 17 tokens)

GFLOP/s is not the whole story: a narrow decoder does more elementwise work (GELU, LayerNorm,
softmax) per multiply than the encoder, and few tokens make small products. The last two
contestants are the MAE's blocks trained as classifiers (average-pooled, so that every block
computes every token, as in the MAE); the MAE is as fast per token as the classifier when its
step takes as long as theirs together.

Every contestant steps on the same batch of 128 random images (the same masks every step). Peak
memory: this process's peak resident set, printed at the end (worker processes not included).
"""
import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_setup import numpyvit_step  # noqa: E402
import numpyvit  # noqa: E402
from numpyvit import cli  # noqa: E402
from numpyvit.engine import tuning  # noqa: E402
from numpyvit.engine.mae_steps import ShardedSteps  # noqa: E402
from numpyvit.layers.masking import random_keep  # noqa: E402
from numpyvit.mae import MaskedAutoencoder  # noqa: E402
from numpyvit.train import recipe  # noqa: E402


def products(config, tokens, width, hidden, depth):
    """Multiply-adds of ``depth`` transformer blocks over ``tokens`` tokens of ``width``."""
    return depth * (tokens * width * 3 * width + 2 * tokens * tokens * width + tokens * width * width
                    + 2 * tokens * width * hidden)


def flops_per_image(config, mae=None):
    """Matrix-multiply FLOPs of one training step per image (forward x 3), the classifier's or an MAE's."""
    D, P, N = config["embed_dim"], config["patch_size"], (config["img_size"] // config["patch_size"]) ** 2
    patch, hidden = config["in_chans"] * P * P, int(round(D * config["mlp_ratio"]))
    if mae is None:
        macs = N * patch * D + products(config, N + 1, D, hidden, config["depth"]) + D * config["num_classes"]
    else:
        E, kept = mae["decoder_dim"], 1 + max(1, int(round(N * (1 - mae["mask_ratio"]))))
        macs = (N * patch * D + products(config, kept, D, hidden, config["depth"]) + kept * D * E
                + products(config, N + 1, E, int(round(E * mae["decoder_mlp_ratio"])), mae["decoder_depth"])
                + N * E * patch)
    return 2 * macs * 3


def mae_step(config, decoder, x, kind):
    mae = MaskedAutoencoder(numpyvit.VisionTransformer(**config), **decoder)
    optimizer, steps = numpyvit.AdamW(mae.parameters(), lr=1e-4), ShardedSteps(mae)
    rows, hidden = random_keep(np.random.default_rng(1), len(x), mae.encoder.patch_embed.num_patches, mae.mask_ratio)

    def step():
        with tuning.forced(kind):
            optimizer.zero_grad()
            steps.step(x, rows, hidden)
            optimizer.step()
    return step


def timed(step, warmup, block):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(block):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embed-dim", type=cli.positive_int, help="the encoder's width (default: the recipe's)")
    parser.add_argument("--batch", type=cli.positive_int, default=128)
    parser.add_argument("--decoder-dim", type=cli.positive_int, default=64)
    parser.add_argument("--decoder-depth", type=cli.positive_int, default=2)
    parser.add_argument("--rounds", type=cli.positive_int, default=7)
    parser.add_argument("--block", type=cli.positive_int, default=3, help="timed steps per turn")
    parser.add_argument("--warmup", type=cli.nonnegative_int, default=2, help="untimed steps per turn")
    args = parser.parse_args(argv)
    settings = recipe("default", "fashion-mnist")
    config = numpyvit.PRESETS[settings["preset"]] | settings["model"]
    config |= dict(embed_dim=args.embed_dim) if args.embed_dim else {}
    decoder = dict(decoder_dim=args.decoder_dim, decoder_depth=args.decoder_depth, decoder_heads=4,
                   decoder_mlp_ratio=4.0, mask_ratio=0.75)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, config["in_chans"], config["img_size"], config["img_size"])).astype(np.float32)
    y = rng.integers(0, config["num_classes"], args.batch)
    N = (config["img_size"] // config["patch_size"]) ** 2
    kept = max(1, round(N * (1 - decoder["mask_ratio"])))
    side = int(kept ** 0.5) * config["patch_size"]                   # an image of the kept patches' count
    as_encoder = dict(config, img_size=side, global_pool="avg")      # avg: every block computes every token
    as_decoder = dict(as_encoder, img_size=config["img_size"], embed_dim=args.decoder_dim, depth=args.decoder_depth,
                      num_heads=4, mlp_ratio=4.0)
    contestants = {"classifier": numpyvit_step(numpyvit.VisionTransformer(**config), x, y, training=True),
                   "mae-processes": mae_step(config, decoder, x, "processes"),
                   "mae-threads": mae_step(config, decoder, x, "threads"),
                   "as-encoder": numpyvit_step(numpyvit.VisionTransformer(**as_encoder), x[:, :, :side, :side], y,
                                                 training=True),
                   "as-decoder": numpyvit_step(numpyvit.VisionTransformer(**as_decoder), x, y, training=True)}
    flops = {"classifier": flops_per_image(config), "mae-processes": flops_per_image(config, decoder),
             "mae-threads": flops_per_image(config, decoder), "as-encoder": flops_per_image(as_encoder),
             "as-decoder": flops_per_image(as_decoder)}
    tokens = {"classifier": N + 1, "mae-processes": 1 + kept, "mae-threads": 1 + kept, "as-encoder": 1 + kept,
              "as-decoder": 0}
    print(f"encoder D {config['embed_dim']}, depth {config['depth']}, {N} patches; decoder {decoder}; batch "
          f"{args.batch}; {numpyvit.parallel.num_threads()} cores: {tuning.cpu_model()}", flush=True)
    times = {name: [] for name in contestants}
    for _ in range(args.rounds):
        for name, step in contestants.items():
            times[name] += timed(step, args.warmup, args.block)
    rate, median = {}, {}
    print(f"{'contestant':<15}{'median step':>12}{'img/s':>9}{'MFLOP/img':>11}{'GFLOP/s':>9}{'enc tokens/s':>14}")
    for name, seconds in times.items():
        median[name] = float(np.median(seconds))
        rate[name] = flops[name] * args.batch / median[name] / 1e9
        print(f"{name:<15}{median[name] * 1e3:>10.1f}ms{args.batch / median[name]:>9.0f}{flops[name] / 1e6:>11.1f}"
              f"{rate[name]:>9.1f}{tokens[name] * args.batch / median[name]:>14.0f}")
    parts = median["as-encoder"] + median["as-decoder"]
    for name in ("mae-processes", "mae-threads"):
        print(f"{name}: {rate[name] / rate['classifier']:.2f}x the classifier's GFLOP/s; its step takes "
              f"{median[name] / parts:.2f}x the time of its blocks trained as two classifiers")
    print(f"peak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
