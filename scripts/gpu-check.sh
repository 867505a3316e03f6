#!/usr/bin/env bash
# shellcheck disable=SC2317  # step functions run through run_step, indirectly
# Checks the CUDA backend on a machine with an NVIDIA GPU, from nothing pre-built, in one
# command. The steps run under time limits that add up to GPU_CHECK_BUDGET_S (540 s by
# default); no run of this script is committed yet (its summary belongs in docs/gpu.md, which
# does not exist), so no run time is quoted here and CUDA arithmetic counts as unverified:
#
#   scripts/gpu-check.sh OUT_DIR
#
# Steps: toolchain and GPU facts; NVRTC (found in the CUDA install, a Python package or the
# loader's path, else the PyPI wheel nvidia-cuda-nvrtc-cu12 installed into .venv-nvrtc);
# release build; the device report (examples/cuda_info); every test of ire-backend-cuda with
# IRE_REQUIRE=cuda,nvrtc (so the conformance suite fails instead of skipping without a GPU);
# (the conformance suite on the GPU: every element-wise op bit for bit against the reference,
# SAM/ASAM(-IRE) against the independent oracle); the `ire` command on CUDA (Figure 1's u to
# the last bit); every small preset's neural-network ops, every optimizer and the estimator
# (sampled labels, ĝ) on CUDA against the CPU backend, and its training throughput on both
# (train.md); the cross-backend equivalence runner and the CUDA benches when they exist
# (skipped with a note otherwise). Commit OUT_DIR/summary.md as docs/gpu.md (with the logs it
# names) to record what a GPU verified.
#
# Writes OUT_DIR/summary.md (step, status, seconds, note), one log per step and env.txt.
# Exits 0 when every step passed or was skipped for a stated reason; otherwise non-zero and
# names the failing steps.
#
# Environment: GPU_CHECK_BUDGET_S (total seconds for the steps, default 540),
# GPU_CHECK_CARGO_FLAGS (extra cargo flags, e.g. --offline), CARGO_TARGET_DIR, NVRTC_WHEEL
# (default nvidia-cuda-nvrtc-cu12==12.9.86).
set -u -o pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
mkdir -p "$1" || { echo "cannot create $1" >&2; exit 2; }
OUT=$(cd "$1" && pwd)
SUMMARY=$OUT/summary.md
BUDGET=${GPU_CHECK_BUDGET_S:-540}
NVRTC_WHEEL=${NVRTC_WHEEL:-nvidia-cuda-nvrtc-cu12==12.9.86}
read -r -a CARGO_FLAGS <<< "${GPU_CHECK_CARGO_FLAGS:-}"
export CARGO_TERM_COLOR=never
export RUST_BACKTRACE=1
START=$(date +%s)

NAMES=(); STATUSES=(); SECONDS_TAKEN=(); NOTES=(); FAILED=()

elapsed() { echo $(( $(date +%s) - START )); }

record() { # name status seconds note
    NAMES+=("$1"); STATUSES+=("$2"); SECONDS_TAKEN+=("$3"); NOTES+=("$4")
    [ "$2" = pass ] || [ "$2" = skip ] || FAILED+=("$1")
    printf '==> %-12s %-8s %4ss  %s\n' "$1" "$2" "$3" "$4"
}

# run_step NAME MAX_SECONDS NOTE COMMAND...: runs COMMAND with its output in OUT/NAME.log,
# under a timeout that is the smaller of MAX_SECONDS and what is left of the budget.
run_step() {
    local name=$1 max=$2 note=$3; shift 3
    local log=$OUT/$name.log left limit t0 rc
    left=$(( BUDGET - $(elapsed) ))
    if [ "$left" -lt 10 ]; then
        record "$name" "not-run" 0 "time budget of ${BUDGET}s spent before this step"
        return 1
    fi
    limit=$(( max < left ? max : left ))
    echo "--> $name (at most ${limit}s, log $log)"
    t0=$(date +%s)
    { echo "\$ $*"; echo; } > "$log"
    if declare -F "$1" > /dev/null; then
        # `timeout` runs programs, not shell functions: hand the function (and the variables
        # the functions use) to a child bash.
        timeout --signal=TERM --kill-after=10 "$limit" bash -c \
            "$(declare -f); $(declare -p ROOT CARGO_FLAGS NVRTC_WHEEL); set -u -o pipefail; $*" \
            >> "$log" 2>&1
    else
        timeout --signal=TERM --kill-after=10 "$limit" "$@" >> "$log" 2>&1
    fi
    rc=$?
    local secs=$(( $(date +%s) - t0 ))
    if [ "$rc" -eq 0 ]; then
        record "$name" pass "$secs" "$note"
        return 0
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        record "$name" TIMEOUT "$secs" "stopped after ${limit}s; see $name.log"
    else
        record "$name" FAIL "$secs" "exit code $rc; see $name.log (last lines below)"
        tail -n 15 "$log" | sed 's/^/    /'
    fi
    return 1
}

write_summary() {
    {
        echo "# GPU check of the CUDA backend"
        echo
        echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown), total $(elapsed) s"
        echo
        echo "| step | status | seconds | note |"
        echo "| --- | --- | ---: | --- |"
        local i
        for i in "${!NAMES[@]}"; do
            echo "| ${NAMES[$i]} | ${STATUSES[$i]} | ${SECONDS_TAKEN[$i]} | ${NOTES[$i]} |"
        done
        echo
        if [ "${#FAILED[@]}" -eq 0 ]; then
            echo "Result: every step passed (or was skipped for the reason given)."
        else
            echo "Result: FAILED at ${FAILED[*]}. Logs: one file per step next to this one."
        fi
    } > "$SUMMARY"
}

finish() {
    write_summary
    echo
    cat "$SUMMARY"
    if [ "${#FAILED[@]}" -ne 0 ]; then
        echo "gpu-check: FAILED step(s): ${FAILED[*]} (logs in $OUT)" >&2
        exit 1
    fi
    echo "gpu-check: all steps passed (logs in $OUT)"
    exit 0
}

# ---- toolchain ----------------------------------------------------------------------------
if ! command -v cargo > /dev/null 2>&1; then
    record toolchain FAIL 0 "cargo not found: install Rust (https://rustup.rs) and rerun"
    finish
fi
if ! command -v timeout > /dev/null 2>&1; then
    record toolchain FAIL 0 "coreutils 'timeout' not found"
    finish
fi
{
    echo "date: $(date -u)"
    echo "host: $(uname -a)"
    echo "cpus: $(nproc 2>/dev/null || echo '?')"
    echo "cargo: $(cargo --version 2>&1)"
    echo "rustc: $(rustc --version 2>&1)"
    echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
} > "$OUT/env.txt"
record toolchain pass 0 "$(cargo --version 2>&1)"

# ---- the GPU as the driver reports it --------------------------------------------------------
gpu_facts() {
    if command -v nvidia-smi > /dev/null 2>&1; then
        nvidia-smi --query-gpu=index,name,driver_version,compute_cap,memory.total \
            --format=csv 2> /dev/null || nvidia-smi
    else
        echo "nvidia-smi not found"
        ldconfig -p 2> /dev/null | grep -q 'libcuda\.so' || {
            echo "libcuda.so is not in the loader cache either: no NVIDIA driver"
            return 1
        }
    fi
}
run_step gpu 30 "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2> /dev/null | head -n 1)" gpu_facts
cat "$OUT/gpu.log" >> "$OUT/env.txt"

# ---- NVRTC ------------------------------------------------------------------------------------
# Prints the first folder holding libnvrtc.so*: the loader's path, the CUDA install, any
# Python's nvidia-cuda-nvrtc package, this repository's .venv-nvrtc.
find_nvrtc() {
    local d py cands=()
    IFS=: read -r -a cands <<< "${LD_LIBRARY_PATH:-}"
    for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
        [ -n "$d" ] && cands+=("$d/lib64" "$d/lib" "$d/targets/x86_64-linux/lib")
    done
    while IFS= read -r d; do cands+=("$d/lib64"); done < <(printf '%s\n' /usr/local/cuda-* | sort -rV)
    cands+=(/usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib /opt/conda/lib)
    for py in "$ROOT/.venv-nvrtc/bin/python" python3; do
        d=$("$py" -c 'import nvidia.cuda_nvrtc as m, os; print(os.path.join(list(m.__path__)[0], "lib"))' 2> /dev/null) \
            && cands+=("$d")
    done
    for d in "${cands[@]}"; do
        [ -n "$d" ] && compgen -G "$d/libnvrtc.so*" > /dev/null && { echo "$d"; return 0; }
    done
    d=$(ldconfig -p 2> /dev/null | awk '/libnvrtc\.so/ {print $NF; exit}')
    [ -n "$d" ] && { dirname "$d"; return 0; }
    return 1
}
install_nvrtc_wheel() {
    python3 -m venv "$ROOT/.venv-nvrtc" && "$ROOT/.venv-nvrtc/bin/pip" install -q "$NVRTC_WHEEL"
}
t0=$(date +%s)
if NVRTC_DIR=$(find_nvrtc); then
    echo "libnvrtc found in $NVRTC_DIR" > "$OUT/nvrtc.log"
    record nvrtc pass $(( $(date +%s) - t0 )) "found in $NVRTC_DIR"
else
    run_step nvrtc 150 "installed $NVRTC_WHEEL into .venv-nvrtc" install_nvrtc_wheel
    NVRTC_DIR=$(find_nvrtc) || NVRTC_DIR=""
fi
if [ -n "$NVRTC_DIR" ]; then
    export LD_LIBRARY_PATH="$NVRTC_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >> "$OUT/env.txt"
fi

# ---- build ------------------------------------------------------------------------------------
run_step build 300 "release build of ire-backend-cuda (with NCCL), its tests and examples" \
    cargo test "${CARGO_FLAGS[@]}" --release -p ire-backend-cuda --features nccl --all-targets \
    --no-run

# ---- device report and the test suite on the GPU ----------------------------------------------
run_step devices 60 "probe, driver/NVRTC versions, one axpy per device" \
    cargo run "${CARGO_FLAGS[@]}" --release -q -p ire-backend-cuda --example cuda_info
cp "$OUT/devices.log" "$OUT/devices.txt" 2> /dev/null
# The NCCL test runs a group of one GPU where libnccl is installed, and says it skipped if not.
run_step conformance 180 "all ire-backend-cuda tests (NCCL too), IRE_REQUIRE=cuda,nvrtc" \
    env IRE_REQUIRE=cuda,nvrtc cargo test "${CARGO_FLAGS[@]}" --release -p ire-backend-cuda \
    --features nccl --no-fail-fast -- --nocapture

# ---- the ire command on CUDA --------------------------------------------------------------------
ire_on_cuda() {
    cargo build "${CARGO_FLAGS[@]}" --release -q -p ire-models --features cuda --bin ire || return 1
    local ire=${CARGO_TARGET_DIR:-$ROOT/target}/release/ire
    "$ire" devices || return 1
    # Figure 1 of the paper, IRE with kappa 90: element-wise ops only, so the GPU must print
    # the CPU's bits, u = 0.9284907628015818 (ire-models/tests/toy.rs has the Python behind it).
    local out u
    out=$("$ire" toy --backend cuda --optimizer ire --kappa 90 --steps 100) || return 1
    echo "$out"
    u=$(sed -n 's/.* u=\([^ ]*\).*/\1/p' <<< "$out")
    [ "$u" = 0.9284907628015818 ] || {
        echo "expected u = 0.9284907628015818 after 100 steps (bit for bit), got '$u'"
        return 1
    }
}
if grep -q '^cuda *=' ire-models/Cargo.toml 2> /dev/null; then
    run_step ire-toy 150 "ire devices; ire toy --backend cuda (Figure 1, kappa 90, bit for bit)" ire_on_cuda
else
    record ire-toy skip 0 "ire-models has no cuda feature"
fi

# ---- the neural-network ops on CUDA: every small preset against the CPU backend ---------------
run_step nn-models 300 "NN kernels by NVRTC; every NN op, each small preset, every optimizer and the estimator on CUDA vs CPU; ire train --backend cuda" \
    env IRE_REQUIRE=cuda,nvrtc cargo test "${CARGO_FLAGS[@]}" --release -p ire-models \
    --features cuda --test device_models --test device_nvrtc --test device_nn_cnn \
    --test device_nn_tf --test estimator -- --nocapture

# Training throughput of each small preset: a few hundred steps on CUDA, a few dozen on the CPU
# backend of the same machine. Language models read the text shipped in data/.
train_throughput() {
    cargo build "${CARGO_FLAGS[@]}" --release -q -p ire-models --features cuda --bin ire || return 1
    local ire=${CARGO_TARGET_DIR:-$ROOT/target}/release/ire tmp text model backend steps line
    tmp=$(mktemp -d)
    text=$ROOT/data/moby-dick-opening.txt
    echo "| model | backend | steps | seconds | throughput |"
    echo "| --- | --- | ---: | ---: | --- |"
    for model in mlp-small resnet-small wrn-small vit-mini gpt-nano llama-tiny lm-paper; do
        for backend in cuda cpu; do
            steps=300; [ "$backend" = cpu ] && steps=30
            local data=(--dataset digits --data "$ROOT/data/digits.csv.gz")
            case $model in
                gpt-nano|llama-tiny|lm-paper)
                    data=(--dataset text --data "$text" --tokenizer char --context 64) ;;
            esac
            line=$("$ire" train --backend "$backend" --quiet --model "$model" --optimizer admire \
                --steps "$steps" --batch-size 32 --eval-batches 1 "${data[@]}" \
                --out "$tmp/$model-$backend" 2> "$tmp/err" | grep '^steps ') \
                || { cat "$tmp/err"; return 1; }
            # "steps N (finished), S s, R unit/s, E s/epoch"
            awk -v m="$model" -v b="$backend" -v n="$steps" -F', ' \
                '{ printf "| %s | %s | %d | %s | %s |\n", m, b, n, $2, $3 }' <<< "$line"
        done
    done
    rm -rf "$tmp"
}
run_step train 240 "each small preset trained on CUDA (300 steps) and on the CPU backend (30)" \
    train_throughput
cp "$OUT/train.log" "$OUT/train.md" 2> /dev/null

# ---- equivalence runner and benches (when they exist) -----------------------------------------
has_bin() { # package bin
    local meta
    meta=$(cargo metadata "${CARGO_FLAGS[@]}" --no-deps --format-version 1 2> /dev/null) || return 1
    if ! command -v python3 > /dev/null 2>&1; then
        grep -q "\"kind\":\\[\"bin\"\\],\"crate_types\":\\[\"bin\"\\],\"name\":\"$2\"" <<< "$meta"
        return
    fi
    python3 -c '
import json, sys
pkg, name = sys.argv[1], sys.argv[2]
meta = json.load(sys.stdin)
sys.exit(0 if any(p["name"] == pkg and any(t["name"] == name and "bin" in t["kind"]
         for t in p["targets"]) for p in meta["packages"]) else 1)' "$1" "$2" <<< "$meta"
}
bench_features=()
grep -q '^cuda *=' ire-bench/Cargo.toml 2> /dev/null && bench_features=(--features cuda)
if has_bin ire-bench equivalence; then
    run_step equivalence 150 "cross-backend equivalence (${bench_features[*]:-no cuda feature})" \
        cargo run "${CARGO_FLAGS[@]}" --release -p ire-bench "${bench_features[@]}" --bin equivalence
else
    record equivalence skip 0 "no equivalence binary in ire-bench yet"
fi
if [ "${#bench_features[@]}" -gt 0 ] && grep -rqi 'cuda' ire-bench/benches 2> /dev/null; then
    run_step benches 200 "CUDA benches, short runs (filter: cuda)" \
        cargo bench "${CARGO_FLAGS[@]}" -p ire-bench "${bench_features[@]}" -- cuda \
        --warm-up-time 0.2 --measurement-time 0.5 --noplot
else
    record benches skip 0 "no CUDA benches in ire-bench yet"
fi

finish
