#!/usr/bin/env bash
# Create (once) the MONAI Label virtual environment used to serve monai-uda bundles.
#
#   bash scripts/monailabel/setup_env.sh          # prints the env path on its last line
#
# Location: ${MONAI_UDA_LABEL_ENV:-$HOME/.cache/monai-uda/monailabel-env}. It is reused when it is
# complete (a stamp file holds the hash of requirements.txt); a changed requirements.txt re-runs pip
# in the same env. It is NOT the toolkit's environment: MONAI Label needs torchvision, which has no
# build that imports beside the toolkit's CPU torch 2.13, so this env gets torch 2.14.1 +
# torchvision 0.29.1 (on this machine a CUDA build taken from local disk, ~5.5 GB; it runs on CPU).
# monai_uda goes in with --no-deps (its setup.cfg caps torch<2.14); the serve script also puts the
# checkout on PYTHONPATH so the server always runs the checkout's monai_uda.
#
# Environment: MONAI_UDA_LABEL_ENV (where), MONAI_UDA_LABEL_PYTHON (which python3 makes the venv).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
ENV_DIR="${MONAI_UDA_LABEL_ENV:-$HOME/.cache/monai-uda/monailabel-env}"
PY="${MONAI_UDA_LABEL_PYTHON:-python3}"
REQ="$HERE/requirements.txt"
STAMP="$ENV_DIR/.monai-uda-label-ready"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$ENV_DIR/bin/python" ]; then
    echo "$ENV_DIR"
    exit 0
fi

start=$(date +%s)
echo "[monailabel-env] setting up $ENV_DIR (once; several minutes, ~6 GB)" >&2
if [ ! -x "$ENV_DIR/bin/python" ]; then
    "$PY" -m venv "$ENV_DIR"
fi
PIP=("$ENV_DIR/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip setuptools wheel >&2
# sam2 (a monailabel dependency on Python >= 3.10) builds from source; skip its CUDA extension
SAM2_BUILD_CUDA=0 "${PIP[@]}" install -r "$REQ" >&2

# monai_uda without its dependencies, built from a clean copy so the checkout gets no build/ files
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp -r "$REPO/monai_uda" "$REPO/setup.py" "$REPO/setup.cfg" "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/LICENSE" "$tmp/"
find "$tmp" -name __pycache__ -prune -exec rm -rf {} +
"${PIP[@]}" install -q --no-deps --force-reinstall "$tmp" >&2

# fail here, not at serve time, if the stack does not import together
"$ENV_DIR/bin/python" - >&2 <<'EOF'
import monai, monailabel, numpy, torch, torchvision
import monai_uda.bundle, monai_uda.networks, monai_uda.transforms
from monailabel.tasks.infer.bundle import BundleInferTask  # noqa: F401
print(f"[monailabel-env] monailabel {monailabel.__version__}, monai {monai.__version__}, torch {torch.__version__}, "
      f"torchvision {torchvision.__version__}, numpy {numpy.__version__}")
EOF
test -d "$("$ENV_DIR/bin/python" -c 'import sys; print(sys.prefix)')/monailabel/sample-apps/monaibundle" || {
    echo "[monailabel-env] the monailabel wheel did not install sample-apps/monaibundle" >&2; exit 1; }

echo "$want" > "$STAMP"
echo "[monailabel-env] ready in $(( $(date +%s) - start )) s: $ENV_DIR ($(du -sh "$ENV_DIR" | cut -f1))" >&2
echo "$ENV_DIR"
