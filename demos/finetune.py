"""Fine-tune pretrained ViT weights on your own classes: a new head, optionally a frozen backbone.

    python demos/finetune.py --weights runs/mnist --data fashion-mnist --epochs 1
    python demos/finetune.py --weights model.safetensors --data photos/ --img-size 224 --freeze-backbone
    python demos/finetune.py --out runs/finetune --resume --epochs 5      # continue a run
    python demos/finetune.py --weights runs/mnist --data fashion-mnist --from-scratch   # baseline
    python demos/finetune.py --weights runs/pretrain --data fashion-mnist     # a masked autoencoder's encoder

--data: a folder with one subfolder per class (or train/ and val/, each with one subfolder per
class), or mnist / fashion-mnist. --weights: timm's model.safetensors, an original JAX .npz, or a
numpyvit checkpoint / run folder (a classifier's, or demos/pretrain.py's: its encoder); the model is its architecture with a new, freshly initialized head
for the data's classes (--keep-head keeps the old one when the counts agree), position embeddings
resampled for --img-size, and the weights' mean and std for the images. --freeze-backbone trains the
head alone (the backbone's weight gradients are not even computed). --from-scratch trains the same
architecture from random weights, for comparison. Training is numpyvit.train.fit: checkpoints,
history.json, curves.png in --out, exact --resume, Ctrl-C stops cleanly (exit 130).
"""
import json
import sys
from pathlib import Path

import numpyvit
import numpyvit.data
import numpyvit.distributed
from numpyvit import VisionTransformer, cli
from numpyvit.data import check_normalization
from numpyvit.errors import InputError
from numpyvit.files import read_regular_file
from numpyvit.io import load_arrays
from numpyvit.presets import check_config
from numpyvit.train import TrainConfig, fit, refuse_to_overwrite
from numpyvit.train.config import CLOTHES
from numpyvit.train.progress import format_duration, with_tta
from numpyvit.weights.pretrained import new_head

SETTINGS = "finetune.json"             # in --out: what --resume needs besides the checkpoint


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__)
    p.add_argument("--weights", help="weights file or numpyvit run folder (not with --resume)")
    p.add_argument("--model", help="preset name (default: from the weights file)")
    p.add_argument("--data", help="image folder, or mnist / fashion-mnist")
    p.add_argument("--data-dir", help="where the MNIST files are (default: $NUMPYVIT_DATA, then the cache)")
    p.add_argument("--img-size", type=cli.positive_int, help="input size (default: the weights')")
    p.add_argument("--freeze-backbone", action="store_true", help="train the head alone")
    p.add_argument("--keep-head", action="store_true", help="keep the weights' head if the class counts agree")
    p.add_argument("--from-scratch", action="store_true", help="random weights instead (a baseline)")
    p.add_argument("--out", type=cli.folder, default="runs/finetune", help="output folder (default: runs/finetune)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--epochs", type=cli.positive_int, default=3)
    p.add_argument("--batch-size", type=cli.positive_int, default=64)
    p.add_argument("--lr", type=cli.positive_float, help="peak learning rate (default 5e-4; 2e-3 with --freeze-backbone)")
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--limit-train", type=cli.positive_int, metavar="N", help="train on the first N images")
    p.add_argument("--tta", action="store_true",
                   help="also evaluate the final model with test-time augmentation (reported beside)")
    p.add_argument("--seed", type=cli.nonnegative_int, default=0)
    p.add_argument("--backend", choices=["numpy", "cupy"], help="default: $NUMPYVIT_BACKEND, else numpy")
    return p.parse_args(argv)


def load_data(args, img_size, channels, mean, std):
    """The Dataset for --data, at the model's image size and channels."""
    if args.data in ("mnist", "fashion-mnist"):
        ds = numpyvit.data.load_dataset(args.data, args.data_dir)
        if (ds.train_images.shape[1:], channels) != (tuple(img_size), 1):
            ds = numpyvit.data.resize_dataset(ds, img_size, channels)
        return ds
    return numpyvit.data.load_image_folder(args.data, img_size, channels, mean=mean, std=std, seed=args.seed)


def augmentation(data, img_size):
    if data == "mnist":
        return {}                                                    # TrainConfig's defaults are MNIST's
    if data == "fashion-mnist":
        return CLOTHES
    return dict(hflip=True, max_translate=max(1.0, img_size[1] / 16), max_rotate=0.0, scale=(0.9, 1.1))


def build(args):
    """(model, dataset, TrainConfig) for a new run."""
    if not args.weights or not args.data:
        raise ValueError("a new run needs --weights and --data (or --resume)")
    overrides = {} if args.img_size is None else {"img_size": args.img_size}
    pretrained = numpyvit.create_model(args.model, weights=args.weights, backend=args.backend, **overrides)
    cfg = pretrained.pretrained_cfg
    size, channels = pretrained.patch_embed.img_size, pretrained.patch_embed.in_chans
    ds = load_data(args, size, channels, cfg["mean"], cfg["std"])
    config = dict(pretrained.config, num_classes=len(ds.classes), seed=args.seed)
    if args.from_scratch:
        model = VisionTransformer(**config)
    else:
        keep = args.keep_head and pretrained.num_classes == len(ds.classes)
        model = pretrained if keep else numpyvit.create_model(args.model, weights=args.weights, backend=args.backend,
                                                              num_classes=len(ds.classes), seed=args.seed,
                                                              **overrides)
        if not keep and pretrained.num_classes == len(ds.classes):   # same count, other classes: new head too
            head = new_head(model)
            model.head.weight.data[...] = model.xp.asarray(head.weight.data)
            model.head.bias.data[...] = model.xp.asarray(head.bias.data)
    lr = args.lr if args.lr is not None else 2e-3 if args.freeze_backbone else 5e-4
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=lr, warmup_epochs=min(1.0, args.epochs / 4),
                        augment=args.augment, seed=args.seed, eval_batch_size=max(args.batch_size, 100),
                        limit_train=args.limit_train, tta=args.tta, **augmentation(args.data, size))
    return model, ds, train


def resume(args):
    """(model, dataset, TrainConfig) of the run saved in --out."""
    settings = Path(args.out) / SETTINGS
    try:
        saved = json.loads(read_regular_file(settings, 2**20, "the fine-tuning settings"))
        if not isinstance(saved, dict) or not {"data", "data_dir", "freeze"} <= set(saved):
            raise ValueError("it lacks data, data_dir or freeze")
    except InputError as err:                                        # missing, not a regular file, too big
        raise InputError(f"{err}; --resume continues a run that finetune.py started in --out") from None
    except (OSError, ValueError, RecursionError) as err:
        raise InputError(f"{settings} cannot be read ({err}); --resume continues a run that finetune.py started "
                         "in --out") from None
    _, meta = load_arrays(args.out)
    if not all(isinstance(meta.get(key), dict) for key in ("config", "data", "train")):
        raise InputError(f"{args.out}: the checkpoint's config, data or training settings are missing or damaged")
    check_config(meta["config"], f"{args.out}: the checkpoint's config")
    model = VisionTransformer(**dict(meta["config"], backend=args.backend or meta["config"].get("backend")))
    args.data, args.data_dir, args.freeze_backbone = saved["data"], args.data_dir or saved["data_dir"], saved["freeze"]
    mean, std = check_normalization(meta["data"].get("mean"), meta["data"].get("std"),
                                    f"{args.out}: the checkpoint's image normalization")
    ds = load_data(args, model.patch_embed.img_size, model.patch_embed.in_chans, mean, std)
    train = TrainConfig.from_dict(dict(meta["train"], epochs=args.epochs))
    return model, ds, train


def freeze_backbone(model):
    """Only the head (and fc_norm, with average pooling) keep requires_grad."""
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith(("head.", "fc_norm."))


def main(argv=None):
    return cli.run(finetune, parse_args(argv))


def finetune(args):
    out = Path(args.out)
    root = numpyvit.distributed.world().is_root                     # under mpiexec: rank 0 speaks and writes
    say = print if root else (lambda *a, **k: None)
    if not args.resume:
        refuse_to_overwrite(out)                                     # before anything is read or written
    model, ds, train = resume(args) if args.resume else build(args)
    if args.freeze_backbone:
        freeze_backbone(model)
    if not args.resume and root:
        out.mkdir(parents=True, exist_ok=True)
        (out / SETTINGS).write_text(json.dumps(dict(weights=str(args.weights), data=args.data, data_dir=args.data_dir,
                                                    freeze=args.freeze_backbone, from_scratch=args.from_scratch)))
    trainable = sum(p.data.size for p in model.parameters() if p.requires_grad)
    say(f"{ds.name}: {len(ds.train_labels[:train.limit_train])} training / {len(ds.test_labels)} test images, "
        f"{len(ds.classes)} classes; {trainable:,} of {model.num_parameters():,} parameters trained"
        + (" (from scratch)" if args.from_scratch else f" (from {args.weights})" if not args.resume else ""))
    history = fit(model, ds, train, out, resume=args.resume)
    last = history["epochs"][-1]
    say(f"test accuracy {100 * last['test_acc']:.2f}%{with_tta(last)} after {last['epoch']} epochs, "
        f"{format_duration(last['time'])} of training; checkpoint in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
