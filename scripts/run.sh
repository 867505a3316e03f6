#!/usr/bin/env bash
# The main job: builds the `ire` command in release mode and trains a network with IRE on the
# CPU backend, on real data: ResNet (small preset) with SGD-IRE on CIFAR-10 when the CIFAR-10
# binary files are found (IRE_CIFAR10_DIR, default ../shared/data/cifar10), else an MLP on the
# handwritten digits shipped in data/. Then it reproduces the paper's Figure 1 (GD vs IRE on
# L(u, v) = (1 + u²) v² / 2). Needs nothing but cargo; about 2 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs}
CIFAR=${IRE_CIFAR10_DIR:-../shared/data/cifar10}
cargo build --release -q -p ire-models --bin ire
IRE=target/release/ire

if [ -f "$CIFAR/data_batch_1.bin" ] && [ -f "$CIFAR/test_batch.bin" ]; then
    echo "==> ResNet (small preset) + SGD-IRE on CIFAR-10 ($CIFAR), 4 epochs"
    "$IRE" train --model resnet-small --dataset cifar10 --data "$CIFAR" --optimizer sgd-ire \
        --lr 0.1 --epochs 4 --batch-size 128 --kappa 2 --gamma 0.8 --eval-every 78 \
        --backend cpu --out "$OUT/resnet-small-sgd-ire" --overwrite
else
    echo "==> no CIFAR-10 files at $CIFAR: MLP + SGD-IRE on the handwritten digits in data/"
    "$IRE" train --model mlp --dataset digits --data data/digits.csv.gz --optimizer sgd-ire \
        --lr 0.05 --epochs 20 --batch-size 32 --eval-every 100 --backend cpu --out "$OUT/mlp-digits-sgd-ire" \
        --overwrite
fi

echo
echo "==> Figure 1: GD and IRE on the toy problem (trajectories in $OUT/toy/)"
mkdir -p "$OUT/toy"
printf '%-20s %s\n' "run" "result after 100 steps"
toy() {
    local name=$1; shift
    local line
    line=$("$IRE" toy --backend cpu --steps 100 --csv "$OUT/toy/$name.csv" "$@" 2>/dev/null) || true
    printf '%-20s %s\n' "$name" "$line"
}
toy gd-lr1 --optimizer gd --lr 1
toy ire-kappa90 --optimizer ire --kappa 90
toy ire-kappa900 --optimizer ire --kappa 900
toy ire-kappa9000 --optimizer ire --kappa 9000
toy gd-lr2 --optimizer gd --lr 2
toy ire-exact-kappa1 --optimizer ire --projector exact --kappa 1
