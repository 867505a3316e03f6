#!/usr/bin/env bash
# The ire_torch step benchmark on the CPU, in one command (not part of the tests):
#   bash scripts/torch-bench.sh
# builds the package (release) into the shared PyTorch environment's clone-local folder
# (scripts/torch-env.sh), then times one optimizer step at 1M and 10M float32 parameters:
# ire_torch's AdmIRE (ire_torch.IRE and ire_torch.compat.AdamWIRE_PARAMS), the official
# AdamWIRE_PARAMS update re-implemented in PyTorch, and torch's fused AdamW, all in one run;
# writes docs/torch-bench.md (TORCH_BENCH_DOC to change it). A few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/torch-env.sh
ire_torch_env
PYTHONPATH="$TORCH_PKG" "$TORCH_VENV/bin/python" integrations/torch/bench/bench_step.py \
    --out "${TORCH_BENCH_DOC:-docs/torch-bench.md}" "$@"
