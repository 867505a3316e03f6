#!/usr/bin/env bash
# Runs ALL the tests on a fresh machine: first installs, idempotently and as root, whatever they
# need (PoCL for the OpenCL backend, OpenBLAS for LAPACK, the no_std target, NVRTC from its
# Python wheel), then formatting, lints, the no_std build, every test, the PyTorch package
# ire_torch and its pytest suite (in a shared environment with torch, scripts/torch-env.sh),
# and the bench smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

step() { printf '\n==> %s\n' "$*"; }

# ---- disk --------------------------------------------------------------------------------------
# A clean build of everything below takes about BUILD_GB of disk under target/; when the disk
# fills up, the linker dies with SIGBUS and says nothing about space, so say it here first.
BUILD_GB=5
avail_mb=$(df -Pm "$ROOT" | awk 'NR == 2 {print $4}')
if [ "${avail_mb:-0}" -lt $((BUILD_GB * 1024)) ]; then
    echo "warning: only ${avail_mb} MiB free on the disk of $ROOT; a clean build needs about ${BUILD_GB} GiB" >&2
fi

# ---- system packages -------------------------------------------------------------------------
APT_PKGS=(pocl-opencl-icd ocl-icd-opencl-dev libopenblas-dev pkg-config dataset-fashion-mnist fonts-dejavu-core
          openmpi-bin libopenmpi-dev libclang-dev)
missing=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    step "installing ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# ---- Rust targets and components -------------------------------------------------------------
rustup target list --installed | grep -q '^thumbv7em-none-eabihf$' || rustup target add thumbv7em-none-eabihf
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

# ---- NVRTC (CUDA's run-time compiler) from its wheel, to compile every CUDA kernel to PTX ----
NVRTC_VERSION=12.9.86
VENV=$ROOT/.venv-nvrtc
if ! "$VENV/bin/python" -c "import nvidia.cuda_nvrtc" 2>/dev/null; then
    step "installing nvidia-cuda-nvrtc-cu12==$NVRTC_VERSION into .venv-nvrtc"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "nvidia-cuda-nvrtc-cu12==$NVRTC_VERSION"
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
export LD_LIBRARY_PATH="$SITE/nvidia/cuda_nvrtc/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# ---- environment of the tests ----------------------------------------------------------------
export POCL_CACHE_DIR=$ROOT/target/pocl-cache
mkdir -p "$POCL_CACHE_DIR"
export OPENBLAS_NUM_THREADS=1
# Absence of these is a failure here, not a skip: the OpenCL device (PoCL), NVRTC, the data
# the tests read beside the repository (`../shared/data`: CIFAR-10 and the text corpora) or
# from the system (Debian's Fashion-MNIST, installed above), and `mpirun` (Open MPI, installed
# above) for ire-mpi's tests on 2 and 3 ranks.
export IRE_REQUIRE=${IRE_REQUIRE:-opencl,nvrtc,data,mpi}
export CARGO_TERM_COLOR=never

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, all features)"
cargo clippy --workspace --all-targets --all-features -- -D warnings
step "cargo clippy (all targets, default features: the main job's build)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo doc (workspace, all features; broken or private doc links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features

step "no_std build of ire-core for thumbv7em-none-eabihf"
cargo build -p ire-core --target thumbv7em-none-eabihf --no-default-features --features libm
cargo build -p ire-core --target thumbv7em-none-eabihf --no-default-features --features libm,serde

step "cargo test (workspace, all features)"
cargo test --workspace --all-features

step "ire_torch: the PyTorch package, built with pip into a venv with torch, and its pytest suite"
source scripts/torch-env.sh
ire_torch_env
# pytest fails the run on a failed test, and on a run that collects none (exit code 5).
(cd integrations/torch && PYTHONPATH="$TORCH_PKG" "$TORCH_VENV/bin/python" -m pytest -q \
    -p no:cacheprovider tests)

# Each bench once, in criterion's test mode, on the test build already made above: a release
# build of the benches would add minutes of compiling and time nothing here anyway.
step "bench smoke run (each bench once)"
cargo test -p ire-bench --all-features --benches

step "all tests passed"
