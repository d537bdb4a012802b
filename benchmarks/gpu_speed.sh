#!/usr/bin/env bash
# Issue #4's GPU measurements in one command, for the lent GPU machine (or any CUDA machine).
#
#   bash benchmarks/peer_wheels.sh      # here, once: the peers as wheels in .whl/ (git-ignored)
#   bash benchmarks/gpu_speed.sh        # there (device tool: carry [".whl"]); about 8 minutes
#
# Parts, most important first, each under its own time limit so that one that hangs leaves the
# others their time: the speed table of all three systems with our ablations in the same run
# (compile off, NCHW, float32), the GPU tests (`-m gpu`: no CUDA sync in the loop's step, eager
# and compiled; compiled and eager losses equal), and the phase profile. What it prints also goes to
# $OUT/gpu_speed.log (or gpu-results/), the table to $OUT/speed.json. DEVICE=cpu SPEED_ARGS=...
# runs the same script on a CPU, to try the script itself.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
exec > >(tee -a "$out/gpu_speed.log") 2>&1
export PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
device="${DEVICE:-cuda}"

# This project from the checkout (on PYTHONPATH, not installed), the peers from wheels into a folder
# on PYTHONPATH beside it: that machine reaches no package registry.
site="${TMPDIR:-/tmp}/byol-peers"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" .whl/*.whl || { echo "could not install the wheels in .whl/"; exit 1; }
else
    echo "note: no .whl/ (bash benchmarks/peer_wheels.sh here, then carry .whl): the peers are skipped"
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
"$python" - <<'PY'
import importlib.metadata as md, os, torch
names = ("torch", "torchvision", "triton", "byol-pytorch", "lightly")
print(", ".join(f"{n} {md.version(n) if n in {d.metadata['Name'] for d in md.distributions()} else '-'}"
                for n in names), f"| {os.cpu_count()} CPUs | cuda {torch.cuda.is_available()}")
PY

part() {  # part NAME SECONDS COMMAND...: run COMMAND under a time limit and report how it ended
    local name="$1" limit="$2" start rc
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    start=$(date +%s)
    timeout -k 10 "$limit" "$@"
    rc=$?
    echo "=== $name: exit $rc after $(( $(date +%s) - start ))s$([ $rc -eq 124 ] && echo ' (TIME LIMIT)')"
}

# shellcheck disable=SC2086  # SPEED_ARGS and PROFILE_ARGS are lists of arguments
part speed "${SPEED_LIMIT:-330}" "$python" -m benchmarks.speed --device "$device" \
    --systems byol,byol-pytorch,lightly,byol-eager,byol-nchw,byol-fp32 --json "$out/speed.json" ${SPEED_ARGS:-}
part gpu-tests "${TESTS_LIMIT:-120}" "$python" -m pytest -q -p no:cacheprovider -m gpu tests/
# shellcheck disable=SC2086
part profile "${PROFILE_LIMIT:-120}" "$python" -m benchmarks.profile_step --device "$device" \
    --variants compiled-cl,eager-cl ${PROFILE_ARGS:-}
echo "=== done; results in $out"
