#!/usr/bin/env bash
# Does MAE pretraining help a small ViT on Fashion-MNIST at equal wall clock? (issue 35)
# Three routes, seeds 0-2, each about BUDGET minutes (10 or 30) alone on 2 cores, on an Intel Xeon
# (family 6 model 167). The epochs are fixed beforehand from the speeds measured on that machine
# just before the runs: for 10 minutes (numpyvit 0.8.0, a slower hour) scratch training and
# fine-tuning ~44.6 s an epoch with their evaluation, MAE pretraining on threads ~27 s; for 30
# minutes (0.9.0) training and fine-tuning ~27.7 s, pretraining in worker processes ~20.3 s:
#   scratch     the default Fashion-MNIST recipe (D 96, 16 patches of 7x7), fewer epochs
#   mae-norm    MAE pretraining (75% hidden, per-patch normalized targets), then fine-tuning
#   mae-plain   the same with raw-pixel targets (the ablation)
# Accuracy on the image alone; test-time augmentation (10 views) beside it.
# Usage: bash docs/experiments/mae_fashion.sh ROUTE SEED [BUDGET] [DATA_DIR]
#        (results in runs/mae_fashion/ROUTE-SEED for 10 minutes, runs/mae_fashion30/ROUTE-SEED for 30)
set -euo pipefail
route=$1 seed=$2 budget=${3:-10} data=${4:-../shared/data}
case $budget in
  10) SCRATCH_EPOCHS=14 PRETRAIN_EPOCHS=8 FINETUNE_EPOCHS=9 out=runs/mae_fashion/$route-$seed ;;
  30) SCRATCH_EPOCHS=65 PRETRAIN_EPOCHS=40 FINETUNE_EPOCHS=35 out=runs/mae_fashion30/$route-$seed ;;
  *) echo "budget: 10 or 30 (minutes)" >&2; exit 2 ;;
esac
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
