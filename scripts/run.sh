#!/usr/bin/env bash
# The main job: builds the `ire` command in release mode and reproduces the paper's Figure 1
# (gradient descent vs IRE on L(u, v) = (1 + u²) v² / 2) on the CPU backend, writing each
# trajectory as CSV under runs/toy/. Needs nothing but cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/toy}
mkdir -p "$OUT"
cargo build --release -q -p ire-models --bin ire
IRE=target/release/ire
printf '%-28s %s\n' "run" "result after 100 steps"
run() {
    local name=$1; shift
    local line
    line=$("$IRE" toy --backend cpu --steps 100 --csv "$OUT/$name.csv" "$@" 2>/dev/null) || true
    printf '%-28s %s\n' "$name" "$line"
}
run gd-lr1 --optimizer gd --lr 1
run ire-kappa90 --optimizer ire --kappa 90
run ire-kappa900 --optimizer ire --kappa 900
run ire-kappa9000 --optimizer ire --kappa 9000
run gd-lr2 --optimizer gd --lr 2
run ire-exact-kappa1 --optimizer ire --projector exact --kappa 1
echo "trajectories written to $OUT/"
