#!/usr/bin/env bash
# Build the virtual environment that holds the peers for benchmarks/speed.py: byol-pytorch and lightly.
# They are not dependencies of byol; the project and its tests never import them.
#
# The venv sees the system site-packages, so it reuses the torch/torchvision already installed there
# (and byol itself) instead of downloading another multi-GB torch. pip is told to keep them: a peer
# that pins another torch fails here, loudly, rather than replacing the one we measure with.
#
#   bash benchmarks/setup_peers.sh [VENV_DIR]      (default: benchmarks/.venv, git-ignored)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/.venv}"
python="${PYTHON:-python3}"

"$python" -m venv --system-site-packages "$venv"
# The installed distributions' versions, as pip sees them (no local "+cu..." label).
version() { "$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))"; }
torch_version="$(version torch)"
vision_version="$(version torchvision)"
# A constraints file pins torch/torchvision to the system ones, so the peers' requirements resolve to them.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
printf 'torch==%s\ntorchvision==%s\n' "$torch_version" "$vision_version" > "$constraints"
"$venv/bin/python" -m pip install --quiet -c "$constraints" "byol-pytorch==${BYOL_PYTORCH_VERSION:-0.9.1}" \
    "lightly==${LIGHTLY_VERSION:-1.6.0}"
"$venv/bin/python" - <<'PY'
import importlib.metadata as md
import torch
for name in ("torch", "torchvision", "byol-pytorch", "lightly"):
    print(f"{name:14s} {md.version(name)}")
print(f"torch at {torch.__file__} ({torch.__version__})")
PY
echo "peers ready: $venv/bin/python -m benchmarks.speed --device cpu"
