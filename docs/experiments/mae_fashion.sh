#!/usr/bin/env bash
# Does MAE pretraining help a small ViT on Fashion-MNIST at equal wall clock? (issue 35)
# Three routes, seeds 0-2, each about BUDGET minutes alone on 2 cores (epochs chosen from the speed
# measured on the machine: scratch ~42 s an epoch, MAE pretraining ~27 s, fine-tuning ~42 s):
#   scratch     the default Fashion-MNIST recipe (D 96, 16 patches of 7x7), fewer epochs
#   mae-norm    MAE pretraining (75% hidden, per-patch normalized targets), then fine-tuning
#   mae-plain   the same with raw-pixel targets (the ablation)
# Accuracy on the image alone; test-time augmentation (10 views) beside it.
# Usage: bash docs/experiments/mae_fashion.sh ROUTE SEED [DATA_DIR]   (results in runs/mae_fashion)
set -euo pipefail
route=$1 seed=$2 data=${3:-../shared/data}
out=runs/mae_fashion/$route-$seed
SCRATCH_EPOCHS=14 PRETRAIN_EPOCHS=8 FINETUNE_EPOCHS=9
case $route in
  scratch)
    python demos/train_mnist.py --dataset fashion-mnist --data-dir "$data" --epochs $SCRATCH_EPOCHS \
        --seed "$seed" --out "$out" ;;
  mae-norm|mae-plain)
    python demos/pretrain.py --data fashion-mnist --data-dir "$data" --epochs $PRETRAIN_EPOCHS \
        --pixel-loss "${route#mae-}" --seed "$seed" --out "$out/pretrain"
    python demos/finetune.py --weights "$out/pretrain" --data fashion-mnist --data-dir "$data" \
        --epochs $FINETUNE_EPOCHS --batch-size 128 --lr 1e-3 --tta --seed "$seed" --out "$out/finetune" ;;
  *) echo "route: scratch, mae-norm or mae-plain" >&2; exit 2 ;;
esac
