#!/usr/bin/env bash
# Issue #5's GPU reproduction: `byol pretrain --config cifar10` (ResNet-18 with the CIFAR stem,
# batch 512, 200 epochs) on the lent GPU machine, over several calls, then kNN and the linear probe.
#
# A call carries at most 64 MiB and CIFAR-10 is 184 MB, so the data goes over in three pieces,
# each ~41 MiB compressed (xz with a delta filter: 70% of the raw size). Here, once, before the
# first call (~2.5 minutes; .data/ is git-ignored):
#   bash benchmarks/gpu_cifar10.sh stage       # .data/c10-1: data_batch_1, 2; .data/c10-2: data_batch_3, 4;
#                                              # .data/c10-3: data_batch_5, test_batch, batches.meta.txt;
#                                              # MD5SUMS in each
# A call carries the working tree too (tracked files and untracked ones not ignored: 1.8 MiB on
# 2026-12-05); stage (and stage-state) print each folder with the tree and refuse one over 64 MiB.
# (Two pieces of 62 MiB, until 2026-12-05, left 0.3 MiB for the tree to grow: one call more buys ~20.)
# There, the same command every call, back to back (the machine keeps its files only while warm):
#   bash benchmarks/gpu_cifar10.sh run         # call 1: carry [".data/c10-1"]; call 2: carry
#                                              # [".data/c10-2"]; call 3: [".data/c10-3"]; then no carry
# A machine that went cold in between lost the pieces carried before: the run says what is missing; carry it again.
# Each run unpacks what was carried into ~/byol-cifar10 (it stays while the machine is warm, ~30 s
# after a call). Once all six files are there and match MD5SUMS it trains, resuming, for at
# most TRAIN_SECONDS (default 480; a call may run 10 minutes) and stops cleanly with a checkpoint
# (SIGTERM); once the 200 epochs are done it evaluates, as far as the call's BUDGET (default 560 s)
# allows, the online encoder and the same encoder at random init: kNN (k = 20, 200) and the linear
# probe, their features in float32 as the peers compute theirs (train.precision's auto would take
# bf16 on the GPU: a few tenths of a point of noise on a kNN, an audit measured on the CPU). results.json
# also has the kNN monitor's best accuracy and its step: lightly's 86.8% is such a best over its
# epochs, picked on the test split; ours to set beside it is the final one. It copies the log,
# metrics, config, plots and results.json to $OUT (or gpu-results/); the wall clock there is the sum
# of the training calls that trained (done, stopped at the limit, or failed after writing a
# checkpoint; not a start that failed), each with its start-up (and its compile with
# EXTRA=--train.compile=true, which trains without the CUDA graph; train.compile's auto is eager).
# Training stops in time for the rest of the call: at
# min(TRAIN_SECONDS, what is left of BUDGET but 90 s); a call killed anyway is counted by the next
# call, from its start to the run's last write. BUDGET is this call's, whatever the task has left: in
# a task's last training call, set it to the device time left (status's budget_left_s) less about 2
# minutes for the three `save` calls after it (an estimate: not yet timed there), or the tool stops the
# call at the task's end and the run's state, which only `save` brings back, is lost with the machine.
# On CUDA it trains with --train.cuda_graph=true (CUDA_GRAPH=false for the eager step).
# EXTRA (overrides for pretrain), EVAL_ARGS (e.g. --limit 1000), TRAIN_SECONDS and DEVICE=cpu try
# the script itself on a small budget (tests/test_gpu_cifar10.py does so in CI's slow run: the whole flow, a
# stand-in CIFAR-10, two tasks).
#
# A run longer than one task's device time goes on in a later task. Right after the last training
# call of a task (the machine still warm), `bash benchmarks/gpu_cifar10.sh save`, as many calls as it
# asks for: each brings back up to 4 parts of 16 MB of the run's state (checkpoints/last.pt, metrics,
# TensorBoard events, config, the wall clock so far; not the kept epoch_N.pt), with a MANIFEST: 3
# calls for the ~190 MB of the cifar10 preset. A call whose files did not come back: `save PART...`
# sends those parts again (4 a call), `save --again` starts the sending over. Here,
# `bash benchmarks/gpu_cifar10.sh stage-state FOLDER...` (the folders those calls' files came back
# in) checks the parts against the MANIFEST, names the save command for any part missing, and lays
# them out as .data/state-1, -2, ... (4 parts each, under a call's 64 MiB). In the later task, carry
# each with a `run` call, then the CIFAR-10 pieces: nothing trains until the state is whole, and a
# carried state never overwrites a run the machine already has.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${PYTHON:-python3}"

fits_a_call() {  # fits_a_call FOLDER...: each folder with the working tree, as a call carries them, under 64 MiB
    local tree bytes over=0 folder
    # what every call carries: the tracked files and the untracked ones git does not ignore
    tree=$({ git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 stat -c %s 2>/dev/null \
        | awk '{s += $1} END {print s + 0}')
    for folder in "$@"; do
        bytes=$(find "$folder" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
        awk -v f="${folder/.stage-/}" -v b="$bytes" -v t="$tree" 'BEGIN {printf "%s: %.2f MiB, with the working tree " \
            "(%.2f MiB) %.2f MiB of the 64 MiB a call carries\n", f, b / 2^20, t / 2^20, (b + t) / 2^20}'
        [ $(( bytes + tree )) -le 67108864 ] || over=1
    done
    return "$over"
}

case "${1:-}" in
stage)
    shared="${SHARED:-../shared/data/cifar10}"
    for f in MD5SUMS cifar-10-batches-bin/{data_batch_{1,2,3,4,5},test_batch}.bin cifar-10-batches-bin/batches.meta.txt
    do
        [ -f "$shared/$f" ] || { echo "no $shared/$f: set SHARED to the folder that holds" \
            "cifar-10-batches-bin and MD5SUMS (.data/c10-* are left as they were)" >&2; exit 1; }
    done
    # Written beside the pieces under names that `run` does not take, renamed into place at the end:
    # a stage that fails leaves the pieces of an earlier one whole.
    staged=(.data/.stage-c10-1 .data/.stage-c10-2 .data/.stage-c10-3)
    rm -rf "${staged[@]}" && mkdir -p "${staged[@]}" || exit 1
    "$python" - "$shared/cifar-10-batches-bin" <<'PY' || exit 1
import lzma, sys
from pathlib import Path
src = Path(sys.argv[1])
filters = [{"id": lzma.FILTER_DELTA, "dist": 1}, {"id": lzma.FILTER_LZMA2, "preset": 6}]
pieces = {".data/.stage-c10-1": ["data_batch_1.bin", "data_batch_2.bin"],
          ".data/.stage-c10-2": ["data_batch_3.bin", "data_batch_4.bin"],
          ".data/.stage-c10-3": ["data_batch_5.bin", "test_batch.bin", "batches.meta.txt"]}
try:
    for dest, names in pieces.items():
        for name in names:
            packed = lzma.compress((src / name).read_bytes(), lzma.FORMAT_XZ, filters=filters)
            (Path(dest) / (name + ".xz")).write_bytes(packed)
except OSError as e:
    sys.exit(f"could not stage CIFAR-10: {e} (.data/c10-* are left as they were)")
PY
    for piece in "${staged[@]}"; do cp "$shared/MD5SUMS" "$piece/" || exit 1; done
    if ! fits_a_call "${staged[@]}"; then
        echo "a piece with the working tree is over a call's 64 MiB: remove the untracked files that git" \
            "status lists, or shrink the tree (.data/c10-* are left as they were)" >&2
        rm -rf "${staged[@]}"
        exit 1
    fi
    rm -rf .data/c10 .data/c10-[0-9] || exit 1
    for piece in "${staged[@]}"; do mv "$piece" "${piece/.stage-/}" || exit 1; done
    exit 0 ;;
stage-state)  # here: the parts that `save` calls brought back (their folders), laid out for carrying
    shift
    [ $# -gt 0 ] || { echo "usage: $0 stage-state FOLDER [FOLDER ...] (where the save calls' files came back)" >&2
                      exit 2; }
    "$python" - "$@" <<'PY'
import hashlib, json, shutil, sys
from pathlib import Path
found, manifest = {}, None
for folder in map(Path, sys.argv[1:]):
    for path in folder.rglob("*"):
        if path.name == "MANIFEST":
            manifest = json.loads(path.read_text())
        elif path.name.startswith("state.part"):
            found[path.name] = path
if manifest is None:
    sys.exit("no MANIFEST in " + " ".join(sys.argv[1:]) + ": the first save call writes it")
missing = [name for name in manifest["parts"] if name not in found]
if missing:  # a save call whose files did not come back: the exact commands that send those parts again
    again = "; ".join("bash benchmarks/gpu_cifar10.sh save " + " ".join(missing[k:k + 4])
                      for k in range(0, len(missing), 4))
    sys.exit(f"{len(missing)} of {len(manifest['parts'])} parts not here ({', '.join(missing)}): there, while the "
             f"machine still has the run, one call each: {again}; then stage-state with their folders too")
md5, size = hashlib.md5(), 0
for name in manifest["parts"]:
    data = found[name].read_bytes()
    md5.update(data)
    size += len(data)
if (md5.hexdigest(), size) != (manifest["md5"], manifest["bytes"]):
    sys.exit("the parts do not add up to what MANIFEST says (md5 or size): there, "
             "`bash benchmarks/gpu_cifar10.sh save --again`, as many calls as it asks for, then stage-state those")
for old in Path(".data").glob("state-*"):
    shutil.rmtree(old)
parts = manifest["parts"]
for k in range(0, len(parts), PER_CALL := 4):  # 4 x 16 MB and the working tree: under a call's 64 MiB
    dest = Path(".data") / f"state-{k // PER_CALL + 1}"
    dest.mkdir(parents=True)
    for name in parts[k:k + PER_CALL]:
        shutil.copyfile(found[name], dest / name)
    (dest / "MANIFEST").write_text(json.dumps(manifest))
folders = sorted(str(p) for p in Path(".data").glob("state-*"))
print(f"run state of step {manifest.get('step', '?')} ({size:,} bytes, md5 ok) in {', '.join(folders)}: "
      "carry each with one `run` call, the first ones of a new task")
PY
    [ $? -eq 0 ] || exit 1
    fits_a_call .data/state-* || { echo "a folder with the working tree is over a call's 64 MiB: remove the" \
        "untracked files that git status lists, or shrink the tree" >&2; exit 1; }
    exit ;;
run|save) ;;
*) echo "usage: $0 stage | stage-state FOLDER... (here) | run | save [--again | PART...] (on the GPU machine)" >&2
   exit 2 ;;
esac

out="${OUT:-gpu-results}"
mkdir -p "$out"
exec > >(tee -a "$out/gpu_cifar10.log") 2>&1
export PYTHONUNBUFFERED=1
call_end=$(( $(date +%s) + ${BUDGET:-560} ))  # this call's end, under the device tool's 10 minutes
home="${BYOL_CIFAR10_HOME:-${HOME:-/tmp}/byol-cifar10}"
data="$home/data/cifar-10-batches-bin"
run_dir="$home/run"
mkdir -p "$data"
started="$home/train_started"  # there while a training call runs: its start, for a call killed before it counted

count_killed_call() {  # a training call killed before it counted its time: its start to the run's last write
    [ -f "$started" ] || return 0
    local began last
    began=$(stat -c %Y "$started")
    last=$(find "$run_dir" -type f -newer "$started" -printf '%T@\n' 2>/dev/null | sort -n | tail -n 1)
    if [ -n "$last" ]; then
        echo "$(( ${last%.*} - began ))" >> "$home/train_seconds.txt"
        echo "note: a training call was killed before it counted its time: $(( ${last%.*} - began ))s counted" \
            "(from its start to the run's last write)"
    fi
    rm -f "$started"
}
count_killed_call

if [ "$1" = save ]; then  # there, right after a run call: the run's state into $OUT, 4 parts a call
    shift
    "$python" - "$home" "$out" "$@" <<'PY'
import hashlib, json, os, shutil, sys, tarfile
from pathlib import Path
home, out = Path(sys.argv[1]), Path(sys.argv[2])
again, named = "--again" in sys.argv[3:], [a for a in sys.argv[3:] if a != "--again"]
state, run = home / "state-out", home / "run"
if not (state / "MANIFEST").is_file():
    if not (run / "checkpoints" / "last.pt").is_file():
        sys.exit(f"no checkpoint in {run} to save: this machine has no run (it went cold?)")
    state.mkdir(parents=True, exist_ok=True)
    tar_path = state / "state.tar"
    with tarfile.open(tar_path, "w") as tar:  # what a resume needs: not the kept epoch_N.pt, not temporaries
        for path in sorted(run.rglob("*")):
            if path.is_file() and not path.name.startswith(".") and not (
                    path.parent.name == "checkpoints" and path.name.startswith("epoch_")):
                tar.add(path, arcname=str(path.relative_to(home)))
        for name in ("train_seconds.txt", "train_done"):
            if (home / name).is_file():
                tar.add(home / name, arcname=name)
    data = tar_path.read_bytes()
    tar_path.unlink()
    size = int(os.environ.get("STATE_PART_BYTES", 16_000_000))  # a file that comes back: under 16 MiB
    parts = [f"state.part{i:02d}" for i in range(-(-len(data) // size))]
    for i, name in enumerate(parts):
        (state / name).write_bytes(data[i * size:(i + 1) * size])
    import torch  # the checkpoint's own step (metrics.jsonl's last is the last logged one)
    step = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True).get("step")
    manifest = {"parts": parts, "bytes": len(data), "md5": hashlib.md5(data).hexdigest(), "step": step}
    (state / "MANIFEST").write_text(json.dumps(manifest))
manifest = json.loads((state / "MANIFEST").read_text())
if unknown := [name for name in named if name not in manifest["parts"]]:
    sys.exit(f"no part {', '.join(unknown)} in this run's state: its parts are {', '.join(manifest['parts'])}")
# "sent" is what was put in a call's files, not what arrived: `save PART...` or `save --again` sends again.
sent_file = state / "sent"
sent = [] if again else sent_file.read_text().split() if sent_file.is_file() else []
batch = (named or [name for name in manifest["parts"] if name not in sent])[:4]  # 4 x 16 MB: a call's 64 MiB back
for name in batch:
    shutil.copyfile(state / name, out / name)
shutil.copyfile(state / "MANIFEST", out / "MANIFEST")
sent += [name for name in batch if name not in sent]
sent_file.write_text(" ".join(sent))
left = [name for name in (named or manifest["parts"]) if name not in sent]
print(f"run state of step {manifest['step']}: parts {', '.join(batch) or 'none'} in this call's files; "
      + (f"{len(left)} left: run the same save again at once" if left else
         "all sent: `stage-state` them here (it names any part that did not come back)"))
PY
    exit
fi

if compgen -G ".data/state-*/*" > /dev/null; then  # a run's state carried from an earlier task
    mkdir -p "$home/state-in" && mv .data/state-*/* "$home/state-in/" || exit 1
fi
if [ -f "$home/state-in/MANIFEST" ]; then
    "$python" - "$home" <<'PY' || exit 1
import hashlib, json, shutil, sys, tarfile
from pathlib import Path
home = Path(sys.argv[1])
state = home / "state-in"
manifest = json.loads((state / "MANIFEST").read_text())
missing = [name for name in manifest["parts"] if not (state / name).is_file()]
if missing:
    print(f"run state of step {manifest['step']}: {len(missing)} of {len(manifest['parts'])} parts still to carry "
          f"(the next .data/state-N)")
    sys.exit(0)
md5 = hashlib.md5()
for name in manifest["parts"]:
    md5.update((state / name).read_bytes())
if md5.hexdigest() != manifest["md5"]:
    sys.exit("the carried run state does not match its MANIFEST: stage-state and carry it again")
if (home / "run").exists():
    sys.exit(f"{home / 'run'} exists already: a carried state would overwrite a run of this machine")
with open(state / "state.tar", "wb") as tar_file:
    for name in manifest["parts"]:
        tar_file.write((state / name).read_bytes())
with tarfile.open(state / "state.tar") as tar:
    tar.extractall(home, filter="data")
shutil.rmtree(state)
print(f"run state of step {manifest['step']} unpacked into {home / 'run'}: training resumes from it")
PY
    if [ -d "$home/state-in" ]; then
        echo "waiting for the rest of the run's state: nothing trains before it is all here"
        exit 0
    fi
fi
if compgen -G ".data/c10-*/*" > /dev/null; then  # what this call carried
    for piece in .data/c10-*/; do [ -f "$piece/MD5SUMS" ] && mv "$piece/MD5SUMS" "$home/data/MD5SUMS"; done
    "$python" - "$data" <<'PY' || { echo "could not unpack the carried files"; exit 1; }
import lzma, sys
from pathlib import Path
dest = Path(sys.argv[1])
for packed in sorted(Path(".data").glob("c10-*/*.xz")):
    (dest / packed.stem).write_bytes(lzma.decompress(packed.read_bytes()))
    packed.unlink()
PY
fi
needed="data_batch_1.bin data_batch_2.bin data_batch_3.bin data_batch_4.bin data_batch_5.bin test_batch.bin"
missing=""
for f in $needed; do [ -f "$data/$f" ] || missing="$missing $f"; done
if [ -n "$missing" ]; then
    echo "CIFAR-10 here so far: $(cd "$data" && ls | tr '\n' ' '); still to carry:$missing" \
        "(data_batch_1, 2: .data/c10-1; 3, 4: .data/c10-2; 5 and test_batch: .data/c10-3)"
    exit 0
fi
(cd "$home/data" && grep ' cifar-10-batches-bin/' MD5SUMS | md5sum --check --quiet) \
    || { echo "CIFAR-10 files do not match MD5SUMS: stage and carry them again"; exit 1; }
echo "CIFAR-10 complete in $data, MD5SUMS match"

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this project from the checkout, not installed
device="${DEVICE:-cuda}"
# shellcheck disable=SC2086  # EXTRA is a list of overrides
# On CUDA the step replays from a CUDA graph (CUDA_GRAPH=false: eager), not with EXTRA's
# --train.compile=true (the two are refused together): on an H100, 16,948 images/s against the eager
# step's 11,190 in the harness's 2 rounds, its GPU tests passed there (BENCHMARKS.md, "GPU"); at that
# rate 200 epochs would train in ~10 minutes (a prediction from the harness, not a run).
graph=""
case "$device" in cuda*) graph="--train.cuda_graph=${CUDA_GRAPH:-true}" ;; esac
prev=""
# shellcheck disable=SC2086  # EXTRA's words, as pretrain gets them
for word in ${EXTRA:-}; do  # --train.compile=true, or --train.compile true (true, yes, on, 1; any case)
    case "${prev,,}=${word,,}" in
        *=--train.compile=true|*=--train.compile=yes|*=--train.compile=on|*=--train.compile=1) graph="" ;;
        --train.compile=true|--train.compile=yes|--train.compile=on|--train.compile=1) graph="" ;;
    esac
    prev="$word"
done
common="--config cifar10 --data.root=$home/data --train.out_dir=$run_dir --train.device=$device $graph ${EXTRA:-}"
ckpt="$run_dir/checkpoints/last.pt"

status=0
# Training's limit leaves this call the time for a SIGTERM's stop (at most the 60 s of -k) and for
# what comes after it (results.json, the copies into $OUT): 90 s before the call's end.
limit=$(( call_end - $(date +%s) - 90 ))
[ "$limit" -le "${TRAIN_SECONDS:-480}" ] || limit="${TRAIN_SECONDS:-480}"
if [ ! -f "$home/train_done" ] && [ "$limit" -lt 30 ]; then
    echo "=== training: ${limit}s left for it in this call's budget (BUDGET, ${BUDGET:-560}s)," \
        "too little: run this again"
elif [ ! -f "$home/train_done" ]; then
    resume=""
    [ -f "$ckpt" ] && resume="--resume"
    rm -rf "$home/state-out"  # an earlier save's parts: a save after this call packs the state anew
    echo "=== training, at most ${limit}s this call${resume:+, resuming}"
    touch "$started"
    start=$(date +%s)
    # --foreground: the signal goes to byol alone (it finishes the step and writes the checkpoint),
    # not to torch.compile's worker processes.
    # shellcheck disable=SC2086
    timeout --foreground -s TERM -k 60 "$limit" "$python" -m byol pretrain $common $resume --train.progress=false
    rc=$?
    # The wall clock counts calls that trained: stopped at the limit (124, 143), done (0), or ended
    # otherwise after writing a checkpoint or at the limit (137: killed after -k's grace, or by the
    # kernel, out of memory, maybe before a step); not a start that failed (a config error).
    case $rc in
        0|124|143) counted=1 ;;
        *) counted=0
           if [ "$ckpt" -nt "$started" ] || [ $(( $(date +%s) - start )) -ge "$limit" ]; then counted=1; fi ;;
    esac
    if [ "$counted" = 1 ]; then
        echo "$(( $(date +%s) - start ))" >> "$home/train_seconds.txt"
    else
        echo "=== this call's $(( $(date +%s) - start ))s are not counted in the wall clock: it trained nothing"
    fi
    rm -f "$started"
    case $rc in
        0) touch "$home/train_done"; echo "=== training complete" ;;
        124|143) echo "=== stopped at this call's time budget: run this again to go on from the last checkpoint" ;;
        *) echo "=== training FAILED (exit $rc)"; status=$rc ;;
    esac
fi
evaluate() {  # evaluate PROTOCOL [--random-init]: once, and only if this call has time left for it
    local tag="${2:+_random_init}"
    [ -f "$run_dir/checkpoints/last_$1$tag.json" ] && return
    if [ $(( call_end - $(date +%s) )) -lt 90 ]; then
        echo "=== eval $1${2:+ $2}: no time left in this call; run this again"
        return
    fi
    # shellcheck disable=SC2086
    timeout -k 10 $(( call_end - $(date +%s) )) "$python" -m byol eval "$1" "$ckpt" ${2:-} \
        $([ "$1" = knn ] && echo --k 20 200) --data.root="$home/data" --train.device="$device" \
        --train.precision=fp32 ${EVAL_ARGS:-}
    case $? in
        0) ;;
        124) echo "=== eval $1${2:+ $2}: stopped at this call's time budget (BUDGET):" \
                "run this again to evaluate anew" ;;
        137) if [ "$(date +%s)" -ge "$call_end" ]; then  # killed by timeout's -k after the budget's TERM
                 echo "=== eval $1${2:+ $2}: killed at this call's time budget (BUDGET):" \
                     "run this again to evaluate anew"
             else
                 echo "=== eval $1${2:+ $2} FAILED (killed)"; [ "$status" -ne 0 ] || status=1
             fi ;;
        *) echo "=== eval $1${2:+ $2} FAILED"; [ "$status" -ne 0 ] || status=1 ;;
    esac
}
if [ -f "$home/train_done" ]; then
    for init in "" --random-init; do
        evaluate knn $init
        evaluate linear $init
    done
fi

"$python" - "$run_dir" "$home/train_seconds.txt" "$out/results.json" <<'PY'
import json, sys
from pathlib import Path
run, seconds_file, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
results = {"train_calls_seconds": [int(x) for x in seconds_file.read_text().split()] if seconds_file.is_file() else []}
results["train_wall_clock_s"] = sum(results["train_calls_seconds"])
for name in ("knn", "linear", "knn_random_init", "linear_random_init"):
    path = run / "checkpoints" / f"last_{name}.json"
    if path.is_file():
        results[name] = json.loads(path.read_text())
metrics = run / "metrics.jsonl"
if metrics.is_file():
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    results["last_step"] = rows[-1]["step"] if rows else 0
    results["knn_monitor"] = [(r["step"], r["eval/knn_top1"]) for r in rows if "eval/knn_top1" in r]
    if results["knn_monitor"]:  # (step, top-1): as lightly's benchmark reports, its best epoch on the test split
        results["knn_monitor_best"] = max(results["knn_monitor"], key=lambda row: row[1])
    rates = [r["train/images_per_s"] for r in rows if "train/images_per_s" in r]
    results["images_per_s_median"] = sorted(rates)[len(rates) // 2] if rates else None
out.write_text(json.dumps(results, indent=2))
print(json.dumps({k: v for k, v in results.items() if k != "knn_monitor"}, indent=2))
PY
for f in metrics.jsonl config.yaml knn.png collapse.png loss.png; do
    [ -f "$run_dir/$f" ] && cp "$run_dir/$f" "$out/"
done
exit "$status"
