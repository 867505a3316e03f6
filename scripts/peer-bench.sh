#!/usr/bin/env bash
# Peer benchmark against PyTorch on the CPU, in one command:
#   bash scripts/peer-bench.sh
# 1. uses the shared PyTorch virtual environment outside the clone,
#    ${IRE_TORCH_VENV:-$HOME/.cache/ire/venv-torch} (other tools of the project use it too),
#    creating it with `pip install torch` when it is missing or has no torch (the PyPI wheel:
#    about 5 GB with the CUDA libraries it does not need here; it runs on the CPU). The torch
#    version it holds is recorded in the report;
# 2. builds ire-bench's `peer` binary and, when OpenCL is available, `train_steps` (release);
# 3. in PEER_ROUNDS rounds (default 2), the order of the two sides reversed in even rounds,
#    times ours and PyTorch's back to back: optimizer steps (1M and 10M f32 parameters); one
#    training step of `mlp` and `resnet20` (batch 128), `lm-paper` at context 128 (batch 32)
#    and 1024 (batch 8) and a GPT-2-small-shaped block at context 1024 (batch 4), each row in
#    a process of its own so that its peak resident memory is its own; the optimizer step
#    from 1M to 100M parameters; causal attention from context 128 to 4096; and the STREAM
#    triad bandwidth. Both sides use one worker thread per core (rayon's pool;
#    torch.set_num_threads), PEER_THREADS to change it;
# 4. once: AdmIRE over AdamW per whole training step (ours alone), and the OpenCL training
#    steps against the native CPU backend on the same cores (PoCL; skipped, and said so in
#    the report, where no OpenCL platform is found);
# 5. joins the results into docs/peer-bench.md (the goals and whether each was met; per side
#    the lowest per-round median; every round's numbers and load averages listed).
# Raw JSON goes to PEER_OUT (default target/peer-bench). About 15 minutes on a quiet 2-core
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

OPENCL=${PEER_OPENCL:-auto}
if [ "$OPENCL" = auto ]; then
    OPENCL=0
    if [ -n "$(ls /etc/OpenCL/vendors/*.icd 2>/dev/null)" ]; then OPENCL=1; fi
fi
echo "==> building the peer binaries"
if [ "$OPENCL" = 1 ]; then
    cargo build --release -q -p ire-bench --features opencl --bin peer --bin train_steps
else
    cargo build --release -q -p ire-bench --bin peer
fi
BIN=${CARGO_TARGET_DIR:-target}/release
PEER=$BIN/peer
PY="$VENV/bin/python"

# The same settings for both sides (the two programs take the same arguments).
# shellcheck disable=SC2054 # --sizes takes one comma-separated argument
COMMON=(--threads "$THREADS" --sizes 1000000,10000000 --opt-warmup 5 --opt-iters 50
    --gamma 0.6 --image-batch 128)
# Training rows: name, model, batch, context, vocabulary, warm-up and timed steps. The language
# model runs at the paper's batch (32) and the WikiText-2 word vocabulary on a context of 128,
# and at the paper's context (1,000, rounded to 1,024) with the batch that fits comfortably in
# memory on both sides (8); the GPT-2-small-shaped block over a byte-sized vocabulary, so that
# the block is what is timed.
ROWS=(
    "mlp mlp 128 0 2 3 10"
    "resnet20 resnet20 128 0 2 3 10"
    "lm-paper-128 lm-paper 32 128 33278 3 10"
    "lm-paper-1024 lm-paper 8 1024 33278 1 3"
    "gpt2-block-1024 gpt2-block 4 1024 256 1 3"
)

rm -rf "$OUT"
mkdir -p "$OUT"
load() { echo "$2 $1 $3 $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/load.txt"; }
# run SIDE PART ROUND ARGS...: one process of one side.
run() {
    local side=$1 part=$2 r=$3
    shift 3
    load "$part" "$r" "$side"
    if [ "$side" = ire ]; then
        "$PEER" --json "$OUT/ire-$part-$r.json" "${COMMON[@]}" "$@"
    else
        "$PY" scripts/peer/torch_bench.py --json "$OUT/torch-$part-$r.json" "${COMMON[@]}" "$@"
    fi
}
# both PART ROUND ARGS...: ours and PyTorch's, the order reversed in even rounds.
both() {
    if [ $(($2 % 2)) -eq 1 ]; then
        run ire "$@"
        run torch "$@"
    else
        run torch "$@"
        run ire "$@"
    fi
}
for r in $(seq 1 "$ROUNDS"); do
    echo "==> round $r: optimizer steps"
    both optim "$r" --part optim
    for row in "${ROWS[@]}"; do
        read -r name model batch ctx vocab warm iters <<< "$row"
        echo "==> round $r: training step $name"
        both "train-$name" "$r" --part train --models "$model" --lm-batch "$batch" \
            --lm-context "$ctx" --lm-vocab "$vocab" --train-warmup "$warm" \
            --train-iters "$iters"
    done
    echo "==> round $r: scaling tables"
    both scaling "$r" --part scaling
    both attention "$r" --part attention
    run ire triad "$r" --part triad
done
echo "==> AdmIRE over AdamW per training step (lm-paper, context 128, batch 8)"
run ire overhead 1 --part overhead --models lm-paper --lm-batch 8 --lm-context 128
OCL_JSON=""
if [ "$OPENCL" = 1 ]; then
    echo "==> OpenCL (PoCL) training steps against the CPU backend"
    load opencl 1 ire
    "$BIN/train_steps" --backends cpu,opencl --workloads resnet-small:128,lm-paper:32:64 \
        --json "$OUT/opencl.json"
    OCL_JSON="$OUT/opencl.json"
else
    echo "==> no OpenCL platform: the OpenCL rows are left out"
fi
load "(after)" "$ROUNDS" -

"$PY" scripts/peer/join.py \
    --ire "$OUT"/ire-*.json --torch "$OUT"/torch-*.json --out "$DOC" \
    --opencl "$OCL_JSON" --rounds "$ROUNDS" --loads "$OUT/load.txt" \
    --rustc "$(rustc --version)" --elapsed "$(($(date +%s) - start))"
echo "==> wrote $DOC ($(($(date +%s) - start)) s)"
