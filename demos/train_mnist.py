"""Train a Vision Transformer on MNIST or Fashion-MNIST.

    python demos/train_mnist.py                          # the "default" recipe: mnist_tiny, 13 epochs
    python demos/train_mnist.py --dataset fashion-mnist  # its clothes half: D 96, 70 epochs, test-time aug.
    python demos/train_mnist.py --recipe gpu             # mnist_large on CuPy
    python demos/train_mnist.py --depth 4 --epochs 3     # flags override the recipe
    python demos/train_mnist.py --resume                 # continue the run in --out after Ctrl-C
    mpiexec -n 2 python demos/train_mnist.py             # data-parallel over 2 processes (pip install -e ".[dist]")

Run from the repository root with PYTHONPATH=. (or after `pip install -e .`). Writes
checkpoint.npz, history.json and curves.png into --out (default runs/<dataset>). Exit codes:
0 done, 2 refused (a bad flag, file or setting: one line says which), 1 the run failed (its loss
went NaN), 130 stopped by Ctrl-C (resumable).
"""
import argparse
import json
import sys
from pathlib import Path

import numpyvit.data
import numpyvit.distributed
from numpyvit import PRESETS, VisionTransformer, cli
from numpyvit.errors import InputError
from numpyvit.memory import check_fits
from numpyvit.presets import preset_config
from numpyvit.backend import backend_name
from numpyvit.io import CHECKPOINT_NAME, load_arrays
from numpyvit.train import CURVES_NAME, HISTORY_NAME, RECIPES, TrainConfig, fit, recipe
from numpyvit.train.progress import format_duration, with_tta

# flag -> VisionTransformer keyword
MODEL_FLAGS = dict(patch_size="patch_size", embed_dim="embed_dim", depth="depth", num_heads="num_heads",
                   mlp_ratio="mlp_ratio", drop_path="drop_path_rate", act="act", pos_embed="pos_embed",
                   pool="global_pool")
# flag -> TrainConfig field
TRAIN_FLAGS = ("epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "augment", "erase", "tta", "seed",
               "limit_train")


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__)
    p.add_argument("--recipe", choices=sorted(RECIPES), help="model preset + training settings (default: default)")
    p.add_argument("--backend", choices=["numpy", "cupy"],
                   help="default: the recipe's, else $NUMPYVIT_BACKEND, else numpy")
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], help="default: mnist")
    p.add_argument("--data-dir", help="folder with the IDX .gz files (default: $NUMPYVIT_DATA, then the cache)")
    p.add_argument("--out", type=cli.folder, help="output folder (default: runs/<dataset>)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    model = p.add_argument_group("model (override the recipe's preset)")
    model.add_argument("--preset", help=f"one of {', '.join(sorted(PRESETS))}")
    model.add_argument("--patch-size", type=cli.positive_int)
    model.add_argument("--embed-dim", type=cli.positive_int)
    model.add_argument("--depth", type=cli.positive_int)
    model.add_argument("--num-heads", type=cli.positive_int)
    model.add_argument("--mlp-ratio", type=cli.positive_float)
    model.add_argument("--drop-path", type=cli.fraction, help="stochastic depth rate of the last block")
    model.add_argument("--act", choices=["gelu", "gelu_tanh", "relu"])
    model.add_argument("--pos-embed", choices=["learned", "learned_2d", "sincos"])
    model.add_argument("--pool", choices=["token", "avg"])
    train = p.add_argument_group("training (override the recipe)")
    train.add_argument("--epochs", type=cli.positive_int)
    train.add_argument("--batch-size", type=cli.positive_int)
    train.add_argument("--lr", type=cli.positive_float, help="peak learning rate")
    train.add_argument("--weight-decay", type=cli.nonnegative_float)
    train.add_argument("--label-smoothing", type=cli.fraction)
    train.add_argument("--no-augment", dest="augment", action="store_const", const=False)
    train.add_argument("--erase", type=cli.probability, metavar="P",
                       help="random erasing of this share of the images (0: none)")
    train.add_argument("--tta", action=argparse.BooleanOptionalAction,
                       help="evaluate the final model also with test-time augmentation (mean logits over the "
                            "mirrored and shifted views the training augmentation makes)")
    train.add_argument("--seed", type=cli.nonnegative_int, help="seeds the weights, data order, augmentation and dropout")
    train.add_argument("--limit-train", type=cli.positive_int, metavar="N",
                       help="train on the first N images (quick runs)")
    return p.parse_args(argv)


def explicit(args, names):
    """{name: value} of the flags given on the command line (argparse leaves the rest None)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def plan(args):
    """(preset or None, model keywords, TrainConfig, dataset name, out folder): the recipe's, or
    with --resume the checkpoint's (preset None), with the flags given on top."""
    out = Path(args.out or f"runs/{args.dataset or 'mnist'}")
    model_kw = {MODEL_FLAGS[flag]: value for flag, value in explicit(args, MODEL_FLAGS).items()}
    if args.resume:
        if args.recipe or args.preset:
            raise ValueError("--recipe and --preset start a new run; --resume continues with the checkpoint's "
                             "settings (other flags given with it still override them)")
        _, meta = load_arrays(out)
        if not (isinstance(meta.get("config"), dict) and isinstance(meta.get("train"), dict)
                and isinstance(meta.get("dataset"), str)):
            raise InputError(f"{out} holds no training state (model config, training settings and data set): it "
                             "was not written by a training run, so there is nothing to --resume")
        backend = args.backend or meta["config"]["backend"]
        preset, model_kw = None, dict(meta["config"], **model_kw, backend=backend)
        train, dataset_name = TrainConfig.from_dict(meta["train"]), args.dataset or meta["dataset"]
    else:
        dataset_name = args.dataset or "mnist"
        chosen = recipe(args.recipe or "default", dataset_name)
        train = chosen["train"]
        seed = args.seed if args.seed is not None else train.seed
        preset = args.preset or chosen["preset"]
        model_kw = dict(chosen["model"], **model_kw, backend=backend_name(args.backend or chosen["backend"]),
                        seed=seed)
    train = TrainConfig.from_dict(dict(train.to_dict(), **explicit(args, TRAIN_FLAGS)))
    return preset, model_kw, train, dataset_name, out


def main(argv=None):
    return cli.run(train, parse_args(argv))


def train(args):
    world = numpyvit.distributed.world()
    say = print if world.is_root else (lambda *a, **k: None)        # under mpiexec: rank 0 speaks
    preset, model_kw, config, dataset_name, out = plan(args)
    dataset = numpyvit.data.load_dataset(dataset_name, args.data_dir)
    if preset is not None:                                  # the data decides the input and output sizes
        H, W = dataset.train_images.shape[1:]
        model_kw = dict(preset_config(preset), **model_kw, img_size=H if H == W else (H, W), in_chans=1,
                        num_classes=len(dataset.classes))
    check_fits(model_kw, config.batch_size)                 # a model too big to train is refused before it is built
    model = VisionTransformer(**model_kw)
    n_train = min(len(dataset.train_labels), config.limit_train or len(dataset.train_labels))
    say(f"{dataset_name}: {n_train} training / {len(dataset.test_labels)} test images; "
        f"backend {model.config['backend']}; {model.num_parameters():,} parameters")
    say("model:", json.dumps(model.config))
    say("train:", json.dumps(config.to_dict()), flush=True)
    history = fit(model, dataset, config, out, resume=args.resume)
    last = history["epochs"][-1]
    curves = out / CURVES_NAME
    say(f"test accuracy {100 * last['test_acc']:.2f}%{with_tta(last)} after {last['epoch']} epochs, "
        f"{format_duration(last['time'])} of training")
    say(f"checkpoint {out / CHECKPOINT_NAME}, history {out / HISTORY_NAME}"
        + (f", curves {curves}" if curves.exists() else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
