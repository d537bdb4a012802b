#!/usr/bin/env bash
# The peers as wheels, for a GPU machine that reaches no package registry (benchmarks/gpu_speed.sh).
#
# Downloads byol-pytorch and lightly, and those of their requirements that the lent GPU machine's
# image lacks (beartype, hydra-core, omegaconf, antlr4-python3-runtime; it has torch, torchvision,
# einops, accelerate, pytorch-lightning, torchmetrics, numpy, tqdm), into .whl/ (git-ignored), for
# Python 3.12 on x86-64 Linux. All of them are pure Python. Run it here, where pip reaches PyPI:
#
#   bash benchmarks/peer_wheels.sh [DIR]      (default: .whl in the repository root)
#
# The wheels go to a temporary folder first and replace DIR's only when all of them came: a run
# that cannot reach PyPI leaves the wheels already there as they were.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir="${1:-.whl}"
mkdir -p "$dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "could not download the peers' wheels ($1; pip's message is above): $dir is unchanged" >&2; exit 1; }
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "${PYTHON_VERSION:-3.12}" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$tmp" \
    "byol-pytorch==${BYOL_PYTORCH_VERSION:-0.9.1}" "lightly==${LIGHTLY_VERSION:-1.6.0}" \
    beartype==0.23.1 hydra-core==1.3.8 omegaconf==2.3.1 || fail "pip download"
# hydra-core pins antlr4-python3-runtime 4.9.*, published as source only: build its wheel here.
python3 -m pip wheel --quiet --no-deps -w "$tmp" antlr4-python3-runtime==4.9.3 || fail "pip wheel antlr4"
rm -f "$dir"/*.whl  # one version of each: two stop the install there
mv "$tmp"/*.whl "$dir"/ || { echo "could not move the downloaded wheels into $dir (it may be empty now):" \
    "run this again" >&2; exit 1; }
ls -l "$dir"
