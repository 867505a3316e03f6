#!/usr/bin/env bash
# Peer benchmark against PyTorch on the CPU, in one command:
#   bash scripts/peer-bench.sh
# 1. uses the shared PyTorch virtual environment outside the clone,
#    ${IRE_TORCH_VENV:-$HOME/.cache/ire/venv-torch} (other tools of the project use it too),
#    creating it with `pip install torch` when it is missing or has no torch (the PyPI wheel:
#    about 5 GB with the CUDA libraries it does not need here; it runs on the CPU). The torch
#    version it holds is recorded in the report;
# 2. builds ire-bench's `peer` binary (release);
# 3. times optimizer steps (1M and 10M f32 parameters) and one training step of `mlp`,
#    `resnet20` and `lm-paper`, ours and PyTorch's, back to back in the same invocation, in
#    PEER_ROUNDS rounds (default 2), the order of the two sides reversed in even rounds; both
#    sides use one worker thread per core (rayon's pool; torch.set_num_threads), PEER_THREADS
#    to change it;
# 4. joins the results into docs/peer-bench.md (per side the lowest per-round median; ratios
#    ours/PyTorch against the targets; every round's numbers and load averages listed).
# Raw JSON goes to PEER_OUT (default target/peer-bench). About 5 minutes on a quiet 2-core
# machine (much longer under load), plus the first install.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${IRE_TORCH_VENV:-$HOME/.cache/ire/venv-torch}
THREADS=${PEER_THREADS:-$(nproc)}
ROUNDS=${PEER_ROUNDS:-2}
OUT=${PEER_OUT:-target/peer-bench}
DOC=${PEER_DOC:-docs/peer-bench.md}
start=$(date +%s)

# Created at most once, also when several scripts start at the same time (a lock beside it).
mkdir -p "$(dirname "$VENV")"
(
    flock 9
    if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
        echo "==> installing torch into $VENV (a large download)"
        [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
        "$VENV/bin/pip" install --disable-pip-version-check -q torch
    fi
) 9>"$VENV.lock"

echo "==> building the peer binary"
cargo build --release -q -p ire-bench --bin peer
PEER=${CARGO_TARGET_DIR:-target}/release/peer
PY="$VENV/bin/python"

# The same settings for both sides (the two programs take the same arguments). The language
# model runs at the paper's batch (32) and the WikiText-2 word vocabulary size, on a context
# of 128 tokens instead of the paper's 1,000 (a step would take tens of seconds on 2 cores).
LM=(--lm-batch 32 --lm-context 128 --lm-vocab 33278)
# shellcheck disable=SC2054 # --sizes and --models take one comma-separated argument each
COMMON=(--threads "$THREADS" --sizes 1000000,10000000 --opt-warmup 5 --opt-iters 50
    --gamma 0.6 --train-warmup 3 --train-iters 10 --models mlp,resnet20,lm-paper
    --image-batch 128 "${LM[@]}")

rm -rf "$OUT"
mkdir -p "$OUT"
load() { echo "$2 $1 $3 $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/load.txt"; }
ours() {
    load "$1" "$2" ire
    "$PEER" --part "$1" --json "$OUT/ire-$1-$2.json" "${COMMON[@]}"
}
theirs() {
    load "$1" "$2" PyTorch
    "$PY" scripts/peer/torch_bench.py --part "$1" --json "$OUT/torch-$1-$2.json" "${COMMON[@]}"
}
for r in $(seq 1 "$ROUNDS"); do
    for part in optim train; do
        echo "==> round $r: $part"
        if [ $((r % 2)) -eq 1 ]; then
            ours "$part" "$r"
            theirs "$part" "$r"
        else
            theirs "$part" "$r"
            ours "$part" "$r"
        fi
    done
done
load "(after)" "$ROUNDS" -

"$PY" scripts/peer/join.py \
    --ire "$OUT"/ire-*.json --torch "$OUT"/torch-*.json --out "$DOC" \
    --rounds "$ROUNDS" --loads "$OUT/load.txt" \
    --rustc "$(rustc --version)" "${LM[@]}" \
    --elapsed "$(($(date +%s) - start))"
echo "==> wrote $DOC ($(($(date +%s) - start)) s)"
