#!/usr/bin/env bash
# Issue #4's GPU measurements in one command, for the lent GPU machine (or any CUDA machine).
#
#   bash benchmarks/peer_wheels.sh      # here, once: the peers as wheels in .whl/ (git-ignored)
#   bash benchmarks/gpu_speed.sh        # there (device tool: carry [".whl"], timeout_s 590)
#
# Two calls, back to back (the second finds the first's compile caches in /tmp while the machine
# is warm, ~30 s after a call): `bash benchmarks/gpu_speed.sh` (device tool timeout_s 590), then at
# once `bash benchmarks/gpu_speed.sh more` (timeout_s 330). Each call's parts run most important
# first, each under its own time limit and all within BUDGET seconds (530 for the first call, 300
# for the second), so that one that hangs or compiles for long leaves the next its time. On the H100
# (2026-12-05) calls of 530 and 340 held the machine 783 s with its start and the transfers: the two
# take about all of a task's 15 minutes of device time. With the second call's 300 s, the compiled
# tests (part 7, 140 s each) get what the parts before leave, about 130 s: a larger BUDGET (and
# timeout_s) where more device time is at hand.
# First call:
#   0. graphed-test: the experimental CUDA-graph step (byol.cuda_graph.GraphedLoopStep) alone: its
#      refusals, the same losses as the eager step with no host sync in a replay, and
#      `byol pretrain --train.cuda_graph=true` against the eager loop, through a kNN evaluation, a
#      checkpoint and a resume;
#   1. speed-eager: the table of the three systems, ours eager, with the experiments byol-graphed and
#      byol-graphed-tail (the optimizer step, EMA, guard and metrics in the graph too; not yet run on a GPU):
#      nothing to compile, so it comes back whatever the compile does (the first session's table,
#      with the compiled system in it, did not: its compile outlasted the part);
#   2. compile-test: the compiled and eager steps give the same loss on CUDA (a tiny ResNet-18),
#      with the traceback if not (failed on an H200, its reason lost when its part was killed; passed
#      on an H100 since, at a lower learning rate);
#   3. speed-compiled: our compiled step against our eager one. Its first step (the compile) is timed
#      apart and may take all that is left of the budget but 60 s for the rounds (167 s on the H100,
#      after parts of 35, 150 and 81 s, where the compile took 77 s; the H200 session's compile did not
#      end within the 240 s of its part); past that it is stopped with its stacks printed. It prints torch.compile's
#      timers, and its stacks every 100 s while it compiles.
# A third form, `quick` (BUDGET 150, no peers, nothing compiled), for a task that spends its device time on
# issue #5: in its first carrying call, after `gpu_cifar10.sh run` (which only unpacks there), part 0 and
# the CUDA graph with and without its tail against the eager step (speed-graphed, 3 rounds: speed_graphed.json).
# Second call (`more`):
#   4. gpu-tests-eager: the GPU tests that compile nothing (no CUDA sync in the eager loop step;
#      pretrain on CUDA from a training set in host memory; CUDA augmentations equal to the CPU's; last,
#      a step that waits for the host refused by the CUDA graph, a failed capture), each under
#      pytest-timeout's limit (TEST_TIMEOUT, 60 s) where that plugin is installed;
#   5. host-floor: the same three systems, ours eager, and the byol-graphed two at ResNet-18 width 8, heads
#      64, batch 2: the same ops with negligible arithmetic, so the time of a step is the host's cost
#      of issuing its ops, the floor under an eager step of the reference workload on this machine
#      (on the CPU machine of the CPU table: ours 30 ms, byol-pytorch 22; BENCHMARKS.md, "The host
#      floor");
#   6. profile-eager: where an eager step's time goes, phase by phase; profile-graphed: the CUDA-graph
#      step whole against one replay of its graph alone (what its eager rest adds; CUDA only);
#   7. gpu-tests-compiled: no CUDA sync in the compiled loop step; pretrain on CUDA compiled in bf16
#      with kNN, checkpoint and resume (140 s each: on the H100 the harness's first compiled step took
#      77 s, the compile test 71 s, and in this call, with the first call's caches, the first compiled
#      test 58 s); then profile-compiled and the ablations (our step without
#      channels_last, without bf16): as far as the time goes. On CUDA a compiling part with less left
#      than it needs to finish anything (gpu-tests-compiled 90 s, profile-compiled 100, ablations 180) is
#      skipped, not started and killed mid-compile (the default 300 s of this call leave the compiled
#      tests about 130 s after the parts before them; BUDGET=340 ran one of them on 2026-12-05).
# A part cut short keeps what it wrote (the speed JSONs are written after every round), and a
# Python process killed at a time limit prints its stacks first. Output: $OUT (or gpu-results/):
# gpu_speed.log or gpu_speed_more.log, speed.json, speed_compiled.json, host_floor.json,
# ablations.json (quick: gpu_speed_quick.log, speed_graphed.json). The exit code is that of the first part that failed (a speed part fails, exit 4,
# when a system it asked for got no timed round). On CUDA the script first checks that the peers
# import (from .whl/) and stops at once, exit 1, if they do not: PEERS=0 times our rows alone, on
# purpose. DEVICE=cpu SPEED_ARGS=... PROFILE_ARGS=... run the script on a CPU, to try it (there the
# peers are timed if they import, and the byol-graphed two, CUDA only, are left out).
set -uo pipefail
unset PART_MIN  # a part's own minimum (below), never the caller's environment's
ulimit -c 0  # test_part's SIGABRT reaches pytest's children too (compile workers): no core files
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
call="${1:-first}"
case "$call" in first|more|quick) ;; *) echo "usage: $0 [first|more|quick]" >&2; exit 2 ;; esac
suffix=""
[ "$call" = first ] || suffix="_$call"
exec > >(tee "$out/gpu_speed$suffix.log") 2>&1
export PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
device="${DEVICE:-cuda}"
budget="${BUDGET:-$(case "$call" in more) echo 300 ;; quick) echo 150 ;; *) echo 530 ;; esac)}"
deadline=$(( $(date +%s) + budget ))

# This project from the checkout (on PYTHONPATH, not installed), the peers from wheels into a folder
# on PYTHONPATH beside it: that machine reaches no package registry.
site="${TMPDIR:-/tmp}/byol-peers"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" .whl/*.whl || { echo "could not install the wheels in .whl/"; exit 1; }
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
# The systems of the tables: the peers are what this script is for (issue #4: the three systems in
# one run), so on CUDA it stops here, before spending the budget, if they do not import.
peers=",byol-pytorch,lightly" graphed=",byol-graphed,byol-graphed-tail"
case "$device" in cuda*) ;; *) graphed="" ;; esac  # the CUDA-graph experiment needs CUDA
if [ "$call" = quick ]; then
    peers=""  # (the CUDA graph's two forms only)
elif [ "${PEERS:-1}" = 0 ]; then
    peers=""
    echo "note: PEERS=0: the peers are not timed"
elif ! why=$(timeout 120 "$python" -c "import byol_pytorch, lightly" 2>&1); then
    why="$(printf '%s' "$why" | tail -n 1)"; why="${why:-no message, exit or time limit}"
    case "$device" in
    cuda*) echo "the peers do not import ($why): bash benchmarks/peer_wheels.sh here, then carry .whl;" \
            "or PEERS=0 to time this project alone"
        exit 1 ;;
    *) peers=""; echo "note: the peers do not import ($why): on $device they are not timed" ;;
    esac
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
"$python" - <<'PY'
import importlib.metadata as md, os, torch
names = ("torch", "torchvision", "triton", "byol-pytorch", "lightly")
print(", ".join(f"{n} {md.version(n) if n in {d.metadata['Name'] for d in md.distributions()} else '-'}"
                for n in names), f"| {os.cpu_count()} CPUs | cuda {torch.cuda.is_available()}")
# What sets the speed of a first compile: inductor's parallel compile workers (it may take fewer where
# memory looks short, and this machine's memory grows as it is used) and the memory available now.
try:
    import torch._inductor.config as inductor
    print(f"inductor: compile_threads {inductor.compile_threads}, "
          f"worker_start_method {getattr(inductor, 'worker_start_method', '?')}")
except Exception as e:  # a report only
    print(f"inductor: {e!r}")
meminfo = dict(line.split(":", 1) for line in open("/proc/meminfo") if ":" in line)
print("memory:", ", ".join(f"{k} {meminfo[k].strip()}" for k in ("MemTotal", "MemAvailable") if k in meminfo))
PY

status=0
part() {  # part NAME SECONDS COMMAND...: COMMAND under min(SECONDS, what is left of BUDGET), stopped by
    # PART_SIGNAL (TERM; test_part's ABRT, on which pytest's faulthandler prints every thread's stack);
    # skipped where less than 30 s are left, or on CUDA less than PART_MIN: what it needs there to bring back
    # anything at all (a part cut mid-compile brings back nothing and spends the call's device time)
    local name="$1" limit="$2" least="${PART_MIN:-30}" left start rc
    shift 2
    case "$device" in cuda*) [ "$least" -ge 30 ] || least=30 ;; *) least=30 ;; esac
    left=$(( deadline - $(date +%s) - 15 ))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt "$least" ]; then
        if [ "$least" -gt 30 ] && [ "$limit" -ge 30 ]; then
            echo "=== $name: skipped, ${limit}s left of the budget, under the ${least}s it needs to finish" \
                "anything (BUDGET, or a call of its own)"
        else
            echo "=== $name: skipped, the budget is spent" \
                "(a second call within the machine's ~30 s warm time finds the compile caches)"
        fi
        [ "$status" -ne 0 ] || status=3
        return
    fi
    echo "=== $name (limit ${limit}s): $*"
    start=$(date +%s)
    timeout -s "${PART_SIGNAL:-TERM}" -k 10 "$limit" "$@"
    rc=$?
    case $rc in
        0) echo "=== $name: done in $(( $(date +%s) - start ))s" ;;
        124|137) echo "=== $name: TIME LIMIT after $(( $(date +%s) - start ))s" ;;
        *) echo "=== $name: FAILED with exit $rc after $(( $(date +%s) - start ))s" ;;
    esac
    [ "$status" -ne 0 ] || status=$rc
}
test_part() { PART_SIGNAL=ABRT part "$@"; }  # a pytest part

# pytest-timeout, where installed (the GPU machine's image has it): a test that hangs fails with its
# stacks, and the others still run and report.
# A test that compiles the whole step cold gets 140 s: on the H100 machine (2026-12-05) one compile of it
# took 71 s in a test and 77 s in the harness, and a test that compiles it, checkpoints and resumes was
# stopped at 60 s while compiling.
timeout_opt=() compile_timeout_opt=() graphed_timeout_opt=()
if "$python" -c "import pytest_timeout" 2>/dev/null; then
    timeout_opt=(--timeout "${TEST_TIMEOUT:-60}") compile_timeout_opt=(--timeout 140) graphed_timeout_opt=(--timeout 90)
fi
graphed_test() {  # graphed_test SECONDS: part 0, the CUDA-graph step's GPU tests
    test_part graphed-test "$1" "$python" -m pytest -v -rA --tb=long -p no:cacheprovider -p no:logging -m gpu \
        "${graphed_timeout_opt[@]}" \
        -k "(graphed or cuda_graph) and not waits_for_the_host" tests/test_cuda_graph.py tests/test_train.py
}  # (-k matches the module's name too; the failed capture's test runs last, in the second call)
# shellcheck disable=SC2086  # SPEED_ARGS and PROFILE_ARGS are lists of arguments
if [ "$call" = quick ]; then
    graphed_test 90
    part speed-graphed 100 "$python" -m benchmarks.speed --device "$device" --systems "byol-eager$graphed" \
        --repeats 3 --json "$out/speed_graphed.json" ${SPEED_ARGS:-}
elif [ "$call" = first ]; then
    graphed_test 120
    part speed-eager 150 "$python" -m benchmarks.speed --device "$device" \
        --systems "byol-eager$peers$graphed" --first-step-limit 60 --json "$out/speed.json" ${SPEED_ARGS:-}
    test_part compile-test 160 "$python" -m pytest -v -rA --tb=long -p no:cacheprovider -p no:logging -m gpu \
        "${compile_timeout_opt[@]}" \
        "tests/test_step.py::test_compiled_and_eager_steps_give_the_same_loss_on_cuda"
    # The compiled step gets what is left: its first step (the compile) may take up to all of it but the
    # last 60 s, which are for the rounds (against our eager step again, for the ratio).
    first_limit=$(( deadline - $(date +%s) - 15 - 60 ))
    [ "$first_limit" -gt 30 ] || first_limit=30
    part speed-compiled 600 "$python" -m benchmarks.speed --device "$device" --systems byol,byol-eager \
        --first-step-limit "$first_limit" --stacks-after 100 --json "$out/speed_compiled.json" ${SPEED_ARGS:-}
else
    test_part gpu-tests-eager 60 "$python" -m pytest -v -rA --tb=short --durations=0 -p no:cacheprovider \
        -p no:logging -m gpu "${timeout_opt[@]}" "tests/test_step.py::test_loop_step_makes_no_cuda_sync[False]" \
        tests/test_train.py::test_pretrain_on_cuda_from_a_training_set_kept_in_host_memory \
        tests/test_augment.py::test_cuda_with_cpu_generator_matches_cpu \
        tests/test_cuda_graph.py::test_a_step_that_waits_for_the_host_is_not_captured_on_cuda  # last: a failed capture
    part host-floor 75 "$python" -m benchmarks.speed --device "$device" --data random --batch 2 --width 8 \
        --head-width 64 --systems "byol-eager$peers$graphed" --warmup 5 --repeats 3 --steps 20 \
        --settle 2 --json "$out/host_floor.json"
    part profile-eager 45 "$python" -m benchmarks.profile_step --device "$device" --variants eager-cl ${PROFILE_ARGS:-}
    case "$device" in cuda*)
        part profile-graphed 45 "$python" -m benchmarks.profile_step --device "$device" --variants graphed-cl \
            ${PROFILE_ARGS:-} ;;
    esac
    # Its first test took 58 s on the H100 machine (2026-12-05), mostly compiling the step, and pytest's
    # start and collection some 25 s more (a part of 142 s for 118 s of tests): with less than 90 s left it
    # would be killed mid-compile and bring back nothing, so it does not start.
    PART_MIN=90 test_part gpu-tests-compiled 300 "$python" -m pytest -v -rA --tb=short --durations=0 \
        -p no:cacheprovider -p no:logging -m gpu "${compile_timeout_opt[@]}" \
        "tests/test_step.py::test_loop_step_makes_no_cuda_sync[True]" \
        tests/test_train.py::test_pretrain_on_cuda_compiled_in_bf16_checkpoints_and_resumes
    # (the other GPU tests ran in the first call; -v: a cut run shows what passed)
    # (a compile of the step: 58-77 s on the H100; this part was cut at 42 s while compiling there on
    # 2026-12-05)
    PART_MIN=100 part profile-compiled 110 "$python" -m benchmarks.profile_step --device "$device" \
        --variants compiled-cl ${PROFILE_ARGS:-}
    # (two steps the first call did not compile, NCHW and float32, ~77 s each cold, before a round)
    PART_MIN=180 part ablations 600 "$python" -m benchmarks.speed --device "$device" \
        --systems byol,byol-nchw,byol-fp32 --first-step-limit 100 --json "$out/ablations.json" ${SPEED_ARGS:-}
fi
echo "=== done (exit $status); results in $out"
exit "$status"
