#!/usr/bin/env bash
# Issue #5's GPU reproduction: `byol pretrain --config cifar10` (ResNet-18 with the CIFAR stem,
# batch 512, 200 epochs) on the lent GPU machine, over several calls, then kNN and the linear probe.
#
# A call carries at most 64 MiB and CIFAR-10 is 184 MB, so the data goes over in two pieces,
# each 62 MiB compressed (xz with a delta filter: 70% of the raw size). Here, once, before the
# first call (~2.5 minutes; .data/ is git-ignored):
#   bash benchmarks/gpu_cifar10.sh stage       # .data/c10-1: data_batch_1, 2, 3; .data/c10-2:
#                                              # data_batch_4, 5, test_batch, batches.meta.txt; MD5SUMS in both
# There, the same command every call, back to back (the machine keeps its files only while warm):
#   bash benchmarks/gpu_cifar10.sh run         # call 1: carry [".data/c10-1"]; call 2: carry
#                                              # [".data/c10-2"]; then no carry
# A machine that went cold in between lost the first piece: the run says what is missing; carry it again.
# Each run unpacks what was carried into ~/byol-cifar10 (it stays while the machine is warm, ~30 s
# after a call). Once all six files are there and match MD5SUMS it trains, resuming, for at
# most TRAIN_SECONDS (default 480; a call may run 10 minutes) and stops cleanly with a checkpoint
# (SIGTERM); once the 200 epochs are done it evaluates, as far as the call's BUDGET (default 560 s)
# allows, the online encoder and the same encoder at random init: kNN (k = 20, 200) and the linear
# probe. It copies the log, metrics, config, plots and results.json to $OUT (or gpu-results/); the
# wall clock there is the sum of the training calls, each with its start-up (and its compile with
# EXTRA=--train.compile=true; train.compile's auto is eager until compiling is verified on a GPU).
# EXTRA (overrides for pretrain), EVAL_ARGS (e.g. --limit 1000), TRAIN_SECONDS and DEVICE=cpu try
# the script itself on a small budget.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${PYTHON:-python3}"

case "${1:-}" in
stage)
    shared="${SHARED:-../shared/data/cifar10}"
    rm -rf .data/c10 .data/c10-1 .data/c10-2 && mkdir -p .data/c10-1 .data/c10-2 || exit 1
    "$python" - "$shared/cifar-10-batches-bin" <<'PY' || exit 1
import lzma, sys
from pathlib import Path
src = Path(sys.argv[1])
filters = [{"id": lzma.FILTER_DELTA, "dist": 1}, {"id": lzma.FILTER_LZMA2, "preset": 6}]
pieces = {".data/c10-1": ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin"],
          ".data/c10-2": ["data_batch_4.bin", "data_batch_5.bin", "test_batch.bin", "batches.meta.txt"]}
for dest, names in pieces.items():
    for name in names:
        packed = lzma.compress((src / name).read_bytes(), lzma.FORMAT_XZ, filters=filters)
        (Path(dest) / (name + ".xz")).write_bytes(packed)
PY
    cp "$shared/MD5SUMS" .data/c10-1/ && cp "$shared/MD5SUMS" .data/c10-2/ || exit 1
    du -sh .data/c10-1 .data/c10-2
    exit 0 ;;
run) ;;
*) echo "usage: $0 stage (here) | run (on the GPU machine)" >&2; exit 2 ;;
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
        "(data_batch_1-3: .data/c10-1; the rest: .data/c10-2)"
    exit 0
fi
(cd "$home/data" && grep ' cifar-10-batches-bin/' MD5SUMS | md5sum --check --quiet) \
    || { echo "CIFAR-10 files do not match MD5SUMS: stage and carry them again"; exit 1; }
echo "CIFAR-10 complete in $data, MD5SUMS match"

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this project from the checkout, not installed
device="${DEVICE:-cuda}"
# shellcheck disable=SC2086  # EXTRA is a list of overrides
common="--config cifar10 --data.root=$home/data --train.out_dir=$run_dir --train.device=$device ${EXTRA:-}"
ckpt="$run_dir/checkpoints/last.pt"

status=0
if [ ! -f "$home/train_done" ]; then
    resume=""
    [ -f "$ckpt" ] && resume="--resume"
    echo "=== training, at most ${TRAIN_SECONDS:-480}s this call${resume:+, resuming}"
    start=$(date +%s)
    # --foreground: the signal goes to byol alone (it finishes the step and writes the checkpoint),
    # not to torch.compile's worker processes.
    # shellcheck disable=SC2086
    timeout --foreground -s TERM -k 120 "${TRAIN_SECONDS:-480}" "$python" -m byol pretrain $common $resume \
        --train.progress=false
    rc=$?
    echo "$(( $(date +%s) - start ))" >> "$home/train_seconds.txt"
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
        $([ "$1" = knn ] && echo --k 20 200) --data.root="$home/data" --train.device="$device" ${EVAL_ARGS:-} \
        || { echo "=== eval $1${2:+ $2} FAILED"; [ "$status" -ne 0 ] || status=1; }
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
    rates = [r["train/images_per_s"] for r in rows if "train/images_per_s" in r]
    results["images_per_s_median"] = sorted(rates)[len(rates) // 2] if rates else None
out.write_text(json.dumps(results, indent=2))
print(json.dumps({k: v for k, v in results.items() if k != "knn_monitor"}, indent=2))
PY
for f in metrics.jsonl config.yaml knn.png collapse.png loss.png; do
    [ -f "$run_dir/$f" ] && cp "$run_dir/$f" "$out/"
done
exit "$status"
