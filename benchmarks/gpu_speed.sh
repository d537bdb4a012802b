#!/usr/bin/env bash
# Issue #4's GPU measurements in one command, for the lent GPU machine (or any CUDA machine).
#
#   bash benchmarks/peer_wheels.sh      # here, once: the peers as wheels in .whl/ (git-ignored)
#   bash benchmarks/gpu_speed.sh        # there (device tool: carry [".whl"], timeout_s 600)
#
# Parts, most important first, each under its own time limit and all within BUDGET seconds
# (default 560, under a call's 10 minutes), so that one that hangs or compiles for long leaves
# the next its time:
#   1. speed: the table of the three systems, with our eager ablation (one compile);
#   2. gpu-tests: `pytest -m gpu` (no CUDA sync in the loop's step, eager and compiled; compiled
#      and eager losses equal; pretrain on CUDA compiled in bf16 with kNN, checkpoint and resume;
#      CUDA augmentations equal to the CPU's);
#   3. ablations: our step without channels_last, without bf16 (two more compiles);
#   4. profile: where a step's time goes, compiled and eager.
# A part cut short keeps what it wrote (the speed JSONs are written after every round). A second
# call while the machine is still warm (it goes back ~30 s after a call) is faster: torch.compile's
# caches stay in /tmp. Output: $OUT (or
# gpu-results/): gpu_speed.log, speed.json, ablations.json. The exit code is that of the first
# part that failed. DEVICE=cpu SPEED_ARGS=... PROFILE_ARGS=... run the script on a CPU, to try it.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
exec > >(tee "$out/gpu_speed.log") 2>&1
export PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
device="${DEVICE:-cuda}"
deadline=$(( $(date +%s) + ${BUDGET:-560} ))

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

status=0
part() {  # part NAME SECONDS COMMAND...: COMMAND under min(SECONDS, what is left of BUDGET)
    local name="$1" limit="$2" left start rc
    shift 2
    left=$(( deadline - $(date +%s) - 15 ))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 30 ]; then
        echo "=== $name: skipped, the budget is spent (a second call within the machine's ~30 s warm time finds the compile caches)"
        [ "$status" -ne 0 ] || status=3
        return
    fi
    echo "=== $name (limit ${limit}s): $*"
    start=$(date +%s)
    timeout -k 10 "$limit" "$@"
    rc=$?
    case $rc in
        0) echo "=== $name: done in $(( $(date +%s) - start ))s" ;;
        124|137) echo "=== $name: TIME LIMIT after $(( $(date +%s) - start ))s" ;;
        *) echo "=== $name: FAILED with exit $rc after $(( $(date +%s) - start ))s" ;;
    esac
    [ "$status" -ne 0 ] || status=$rc
}

# shellcheck disable=SC2086  # SPEED_ARGS and PROFILE_ARGS are lists of arguments
part speed 240 "$python" -m benchmarks.speed --device "$device" --systems byol,byol-pytorch,lightly,byol-eager \
    --json "$out/speed.json" ${SPEED_ARGS:-}
part gpu-tests 150 "$python" -m pytest -v -rA --durations=0 -p no:cacheprovider -m gpu tests/  # -v: a cut run shows what passed
# shellcheck disable=SC2086
part ablations 200 "$python" -m benchmarks.speed --device "$device" --systems byol,byol-nchw,byol-fp32 \
    --json "$out/ablations.json" ${SPEED_ARGS:-}
# shellcheck disable=SC2086
part profile 120 "$python" -m benchmarks.profile_step --device "$device" --variants compiled-cl,eager-cl \
    ${PROFILE_ARGS:-}
echo "=== done (exit $status); results in $out"
exit "$status"
