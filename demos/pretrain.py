"""Pretrain a ViT without labels: a masked autoencoder (MAE) hides most patches of each image from
the ViT and learns to paint them back; then fine-tune the ViT on the labels.

    python demos/pretrain.py --data fashion-mnist --epochs 30             # -> runs/pretrain
    python demos/pretrain.py --data mnist --epochs 5 --limit-train 10000
    python demos/pretrain.py --out runs/pretrain --resume                   # continue after Ctrl-C
    python demos/finetune.py --weights runs/pretrain --data fashion-mnist   # the encoder, fine-tuned

--data: mnist, fashion-mnist, or a folder of class subfolders (its labels are not used; give
--preset and --img-size). The encoder is the default recipe's classifier for that dataset (the one
demos/train_mnist.py trains; --preset, --embed-dim, --depth, --num-heads change it); the decoder is
light (--decoder-dim, --decoder-depth, --decoder-heads). --mask-ratio of each image's patches are
hidden (0.75, the paper's); --pixel-loss plain predicts raw pixels instead of each patch normalized
(the paper's default, norm). Writes checkpoint.npz, history.json and reconstructions.png (every
--figure-every epochs) into --out. The checkpoint is the MAE's; as weights (create_model(...,
weights=), finetune.py --weights) it is its encoder's, a ViT's. Exit codes as train_mnist.py's.
"""
import json
import sys
from pathlib import Path

import numpyvit.data
from numpyvit import VisionTransformer, cli
from numpyvit.errors import InputError
from numpyvit.io import CHECKPOINT_NAME, load_arrays
from numpyvit.mae import MaskedAutoencoder, encoder_weights
from numpyvit.memory import check_fits
from numpyvit.presets import preset_config
from numpyvit.train import TrainConfig, recipe
from numpyvit.train.pretrain import FIGURE_NAME, pretrain
from numpyvit.train.progress import format_duration

# flag -> MaskedAutoencoder keyword
DECODER_FLAGS = dict(decoder_dim="decoder_dim", decoder_depth="decoder_depth", decoder_heads="decoder_heads",
                     mask_ratio="mask_ratio")


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="fashion-mnist", help="mnist, fashion-mnist or an image folder")
    p.add_argument("--data-dir", help="where the MNIST files are (default: $NUMPYVIT_DATA, then the cache)")
    p.add_argument("--img-size", type=cli.positive_int, help="with a folder: the images' size")
    p.add_argument("--out", type=cli.folder, default="runs/pretrain", help="output folder (default: runs/pretrain)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--preset", help="the encoder's preset (default: the recipe's for --data)")
    p.add_argument("--embed-dim", type=cli.positive_int)
    p.add_argument("--depth", type=cli.positive_int)
    p.add_argument("--num-heads", type=cli.positive_int)
    p.add_argument("--decoder-dim", type=cli.positive_int, default=64)
    p.add_argument("--decoder-depth", type=cli.positive_int, default=2)
    p.add_argument("--decoder-heads", type=cli.positive_int, default=4)
    p.add_argument("--mask-ratio", type=cli.fraction, default=0.75, help="share of each image's patches hidden")
    p.add_argument("--pixel-loss", choices=("norm", "plain"), default="norm",
                   help="predict each patch normalized by its own mean and variance (norm) or raw pixels")
    p.add_argument("--epochs", type=cli.positive_int, default=20)
    p.add_argument("--batch-size", type=cli.positive_int, default=128)
    p.add_argument("--lr", type=cli.positive_float, default=1.5e-3, help="peak learning rate")
    p.add_argument("--weight-decay", type=cli.nonnegative_float, default=0.05)
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--limit-train", type=cli.positive_int, metavar="N", help="pretrain on the first N images")
    p.add_argument("--figure-every", type=cli.positive_int, default=5, help="draw reconstructions every N epochs")
    p.add_argument("--seed", type=cli.nonnegative_int, default=0)
    p.add_argument("--backend", choices=["numpy", "cupy"], help="default: $NUMPYVIT_BACKEND, else numpy")
    return p.parse_args(argv)


def load_data(data, data_dir, img_size):
    if data in ("mnist", "fashion-mnist"):
        return numpyvit.data.load_dataset(data, data_dir)
    if img_size is None:
        raise InputError("--data is a folder: give --img-size (and the encoder's --preset)")
    return numpyvit.data.load_image_folder(data, (img_size, img_size), 3)


def build(args, dataset):
    """(MaskedAutoencoder, TrainConfig) for a new run."""
    chosen = recipe("default", args.data if args.data in ("mnist", "fashion-mnist") else "mnist")
    channels = 1 if dataset.train_images.ndim == 3 else dataset.train_images.shape[1]
    H, W = dataset.train_images.shape[-2:] if channels == 1 else dataset.train_images.shape[2:]
    model_kw = dict(preset_config(args.preset or chosen["preset"]), **({} if args.preset else chosen["model"]),
                    img_size=H if H == W else (H, W), in_chans=channels, num_classes=len(dataset.classes),
                    seed=args.seed, backend=args.backend)
    model_kw.update({k: getattr(args, k) for k in ("embed_dim", "depth", "num_heads") if getattr(args, k)})
    check_fits(model_kw, args.batch_size)
    encoder = VisionTransformer(**model_kw)
    mae = MaskedAutoencoder(encoder, norm_pix_loss=args.pixel_loss == "norm", seed=args.seed,
                            **{key: getattr(args, flag) for flag, key in DECODER_FLAGS.items()})
    augment = {k: v for k, v in chosen["train"].to_dict().items() if k in ("hflip", "max_translate", "max_rotate",
                                                                          "scale")}
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                        warmup_epochs=min(1.0, args.epochs / 4), augment=args.augment, seed=args.seed,
                        limit_train=args.limit_train, **augment)
    return mae, train


def resumed(args):
    """(MaskedAutoencoder, TrainConfig, data name) of the run saved in --out."""
    _, meta = load_arrays(Path(args.out))
    if not all(isinstance(meta.get(key), dict) for key in ("config", "mae", "train")):
        raise InputError(f"{args.out} holds no pretraining run (its checkpoint lacks the MAE's settings): "
                         "--resume continues a run pretrain.py started in --out")
    encoder = VisionTransformer(**dict(meta["config"], backend=args.backend or meta["config"].get("backend")))
    mae = MaskedAutoencoder(encoder, **meta["mae"])
    data = meta["dataset"]                                           # a name, or folder:<its path>
    if data.startswith("folder:"):
        data, args.img_size = data[len("folder:"):], encoder.patch_embed.img_size[0]
    return mae, TrainConfig.from_dict(dict(meta["train"], epochs=args.epochs)), data


def main(argv=None):
    return cli.run(run, parse_args(argv))


def run(args):
    out = Path(args.out)
    if args.resume:
        mae, train, args.data = resumed(args)
        dataset = load_data(args.data, args.data_dir, args.img_size)
    else:
        dataset = load_data(args.data, args.data_dir, args.img_size)
        mae, train = build(args, dataset)
    n = len(dataset.train_images[:train.limit_train])
    encoder = sum(int(v.size) for v in encoder_weights(mae.state_dict()).values())
    print(f"{dataset.name}: {n} training images, labels unused; encoder {encoder:,} parameters (D "
          f"{mae.encoder.embed_dim}, depth {len(mae.encoder.blocks)}), decoder {mae.num_parameters() - encoder:,}; "
          f"{100 * mae.mask_ratio:.0f}% of the {mae.encoder.patch_embed.num_patches} patches hidden, "
          f"{'normalized' if mae.norm_pix_loss else 'plain'} pixel targets")
    print("mae:", json.dumps(mae.config), flush=True)
    history = pretrain(mae, dataset, train, out, resume=args.resume, figure_every=args.figure_every)
    last = history["epochs"][-1]
    print(f"test reconstruction loss {last['test_loss']:.4f} after {last['epoch']} epochs, "
          f"{format_duration(last['time'])}; checkpoint {out / CHECKPOINT_NAME}, figure {out / FIGURE_NAME}")
    print(f"fine-tune it: python demos/finetune.py --weights {out} --data {args.data}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
