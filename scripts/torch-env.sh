# Sourced by scripts/test.sh and scripts/torch-bench.sh: the Python environment of ire_torch.
#
# ire_torch_env: makes sure the shared environment with torch exists and holds what the package
# and its tests need (torch, maturin 1.16, pytest, numpy), then builds ./integrations/torch with
# pip into this clone's own folder. Sets TORCH_VENV (the environment: the shared one outside the
# clone, ${IRE_TORCH_VENV:-$HOME/.cache/ire/venv-torch}, about 5 GB; other scripts of the
# project use it too, so it is created and completed under a lock beside it) and TORCH_PKG (the
# folder to put first on PYTHONPATH). The package is not installed into the shared environment,
# so clones testing different versions at the same time do not collide.
ire_torch_env() {
    TORCH_VENV=${IRE_TORCH_VENV:-$HOME/.cache/ire/venv-torch}
    mkdir -p "$(dirname "$TORCH_VENV")"
    (
        flock 9
        [ -x "$TORCH_VENV/bin/python" ] || python3 -m venv "$TORCH_VENV"
        local need=()
        "$TORCH_VENV/bin/python" -c "import torch" 2>/dev/null || need+=(torch)
        "$TORCH_VENV/bin/python" -c "import pytest" 2>/dev/null || need+=(pytest)
        "$TORCH_VENV/bin/python" -c "import numpy" 2>/dev/null || need+=(numpy)
        "$TORCH_VENV/bin/maturin" --version 2>/dev/null | grep -q '^maturin 1\.16\.' ||
            need+=("maturin>=1.16,<1.17")
        if ((${#need[@]})); then
            echo "installing ${need[*]} into $TORCH_VENV"
            "$TORCH_VENV/bin/pip" install --disable-pip-version-check -q "${need[@]}"
        fi
    ) 9>"$TORCH_VENV.lock"
    TORCH_PKG=$PWD/target/ire-torch-python
    rm -rf "$TORCH_PKG"
    # A release build (maturin's default), in place in the workspace's target/.
    PATH="$TORCH_VENV/bin:$PATH" "$TORCH_VENV/bin/pip" install --disable-pip-version-check -q \
        --no-deps --no-build-isolation --target "$TORCH_PKG" ./integrations/torch
}
