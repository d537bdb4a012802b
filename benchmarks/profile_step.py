"""Where the time of one step of this project goes: augmentation, forward, backward, optimizer, EMA,
and the loop's non-finite guard and on-device metrics.

    python -m benchmarks.profile_step --device cpu --batch 128 --steps 5
    python -m benchmarks.profile_step --device cuda --variants compiled-cl,eager-cl,eager-nchw

The phases are those of ``byol.step.LoopStep`` (pretrain's loop body): ``train_step``, the EMA
update, the guard's snapshot and settle (``byol.faults.NonFiniteGuard``, summed as "guard") and the
metrics summed on the device, run one by one with a device synchronization between them (so,
unlike the real step, nothing overlaps; on the GPU the sum is a little above the step's time).
``--variants`` times several settings interleaved, step by step, so that a change of machine load
hits them alike; the table gives the median per phase.

``--variants graphed-cl`` (CUDA only) times the CUDA-graph step (``byol.cuda_graph.GraphedLoopStep``, as
``byol pretrain --train.cuda_graph=true`` runs it) whole, and one replay of its graph alone (both
views' augmentation, forward and backward), in a table of its own: the difference is what the
eager rest of the step (schedules, guard, optimizer, EMA, metrics) adds to the replay.
"""

import argparse
import faulthandler
import signal
import statistics
import sys
import time

import torch

from benchmarks import systems
from benchmarks.speed import load_average, machine, widths
from benchmarks.timed import load_images, setup, sync
from byol.precision import autocast_dtype
from byol.data import TensorBatches
from byol.faults import NonFiniteGuard
from byol.compiling import compile_step, eager_fallbacks
from byol.allocator import keep_freed_memory
from byol.step import ViewsForward, step_metrics

PHASES = ("augment", "forward", "backward", "optimizer", "ema", "guard", "metrics")
VARIANTS = ("compiled-cl", "compiled-nchw", "eager-cl", "eager-nchw", "graphed-cl")


class Phased:
    """Our step, cut into its phases."""

    def __init__(self, images, batch, device, amp, compile: bool, channels_last: bool, width: int = systems.WIDTH,
                 head_width: int = systems.HEAD_WIDTH):
        self.byol, self.optimizer = systems.our_model(batch, device, width, head_width)
        self.forward = ViewsForward(self.byol, channels_last=channels_last)
        self.augment = (self.byol.augment_fn, self.byol.augment_fn2)
        if compile:
            self.forward, self.augment = compile_step(self.forward, self.byol)
        self.batches = systems.Cycle(TensorBatches(images, None, batch, generator=0))
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.guard = NonFiniteGuard([self.byol], self.optimizer, device)
        self.sums = torch.zeros(3, device=device)
        self.device, self.amp = device, amp
        self.name = f"{'compiled' if compile else 'eager'}, {'channels_last' if channels_last else 'NCHW'}"

    def step(self) -> dict[str, float]:
        times, device = {}, self.device
        images = next(self.batches)
        sync(device)
        t = time.perf_counter()

        def mark(phase):
            nonlocal t
            sync(device)
            now = time.perf_counter()
            times[phase] = times.get(phase, 0.0) + now - t
            t = now

        self.guard.snapshot()
        mark("guard")
        view1 = self.augment[0](images, self.generator)
        view2 = self.augment[1](images, self.generator)
        mark("augment")
        with torch.autocast(device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            loss, z1 = self.forward(view1, view2)
        mark("forward")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        mark("backward")
        self.optimizer.step()
        mark("optimizer")
        self.byol.update_target(0.996)  # before the settle, as in byol.step.LoopStep
        mark("ema")
        ok = self.guard.settle(loss.detach())
        mark("guard")
        self.sums += step_metrics(loss.detach(), z1, ok)
        mark("metrics")
        return times


class GraphedWhole:
    """Our CUDA-graph step (``systems.Ours`` with ``byol.cuda_graph.GraphedLoopStep``), timed whole, then one
    more replay of its graph alone. The extra replay recomputes the gradients (the graph zeroes them
    first) and moves BatchNorm's running statistics and the augmentations' generator once more: the
    next step replays anew, so only the run's numbers change, not what a step costs. Each step is
    timed between syncs, so the next step's host work (the schedules, the guard's snapshot) does not
    overlap this one's replay as it does in a run: set its "whole" beside ``benchmarks.speed``'s rate
    for ``byol-graphed`` before reading the difference as the eager rest's cost."""

    def __init__(self, images, batch, device, amp, width: int, head_width: int):
        self.ours = systems.Ours(images, batch, device, amp, compile=False, graphed=True, width=width,
                                 head_width=head_width)
        self.device = device
        self.name = "CUDA graph, channels_last"

    def step(self) -> dict[str, float]:
        sync(self.device)
        start = time.perf_counter()
        self.ours.step()
        sync(self.device)
        whole = time.perf_counter() - start
        graph = self.ours.loop_step.graph
        if graph is None:  # its eager steps, before the capture (warm-up)
            return {"whole": whole, "replay": float("nan")}
        start = time.perf_counter()
        graph.replay()
        sync(self.device)
        return {"whole": whole, "replay": time.perf_counter() - start}


def print_graphed(runs: list, samples: dict, batch: int) -> None:
    print("\n| variant | replay alone | whole step | the rest (whole - replay) | images/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in runs:
        rows = [row for row in samples[r.name] if row["replay"] == row["replay"]]  # not NaN: after the capture
        replay = statistics.median(row["replay"] for row in rows)
        whole = statistics.median(row["whole"] for row in rows)
        print(f"| {r.name} | {replay * 1e3:,.1f} ms | {whole * 1e3:,.1f} ms | {(whole - replay) * 1e3:,.1f} ms "
              f"| {batch / whole:,.1f} |")


def main(argv=None) -> None:
    # Stacks when killed by a time limit outside (gpu_speed.sh's `timeout`): where a compile that never ends waits.
    faulthandler.register(signal.SIGTERM, all_threads=True, chain=True)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--warmup", type=int, default=None, help="steps before timing (cuda 15, cpu 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (cuda 50, cpu 5)")
    p.add_argument("--variants", default="auto",
                   help="comma-separated: compiled-cl, compiled-nchw, eager-cl, eager-nchw, graphed-cl "
                        "(CUDA: the CUDA-graph step, whole and its replay alone); auto = what benchmarks.speed runs")
    p.add_argument("--data", default=str(systems_default_data()))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--width", type=int, default=systems.WIDTH, help="ResNet-18's first-stage channels (64)")
    p.add_argument("--head-width", type=int, default=systems.HEAD_WIDTH,
                   help="projector and predictor hidden width (4096); --width 8 --head-width 64: the host's cost")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="our step's, as train.precision (auto: bf16 where the device has it natively)")
    p.add_argument("--no-keep-memory", action="store_true",
                   help="CPU: leave glibc's malloc as it is (byol.train keeps freed memory: train.keep_freed_memory)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    warmup = args.warmup if args.warmup is not None else (15 if cuda else 1)
    steps = args.steps if args.steps is not None else (50 if cuda else 5)
    setup(args, device)  # threads, cuDNN autotuning and TF32 as benchmarks.speed sets them
    amp = autocast_dtype(args.precision, device)
    kept = not cuda and not args.no_keep_memory and keep_freed_memory()
    variants = ("compiled-cl" if cuda else "eager-cl") if args.variants == "auto" else args.variants
    names = variants.split(",")
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or ("graphed-cl" in names and not cuda):
        p.error(f"--variants: {', '.join(unknown)} unknown (known: {', '.join(VARIANTS)})" if unknown
                else "--variants: graphed-cl needs a CUDA device (CUDA graphs)")
    images, source = load_images(args.data, device)
    runs = [GraphedWhole(images, args.batch, device, amp, args.width, args.head_width) if v == "graphed-cl" else
            Phased(images, args.batch, device, amp, compile=v.startswith("compiled"), channels_last=v.endswith("-cl"),
                   width=args.width, head_width=args.head_width)
            for v in names]
    for r in runs:  # a graphed run's eager steps and its capture are warm-up whatever --warmup says
        for _ in range(max(warmup, r.ours.loop_step.eager_steps + 2) if isinstance(r, GraphedWhole) else warmup):
            r.step()
    load_before = load_average()
    samples = {r.name: [] for r in runs}
    for _ in range(steps):
        for r in runs:
            samples[r.name].append(r.step())
    print(f"{machine(device)}\nbatch {args.batch}, {source}, warm-up {warmup}, {steps} steps interleaved, "
          f"{'bf16 autocast' if amp else 'float32'}{', freed memory kept' if kept else ''}{widths(args)}; "
          f"load average before {load_before}, after {load_average()}\n"
          f"python -m benchmarks.profile_step " + " ".join(argv if argv is not None else sys.argv[1:]) + "\n")
    phased = [r for r in runs if isinstance(r, Phased)]
    if phased:
        print_phased(phased, samples, args.batch)
    graphed = [r for r in runs if isinstance(r, GraphedWhole)]
    if graphed:
        print_graphed(graphed, samples, args.batch)


def print_phased(runs: list, samples: dict, batch: int) -> None:
    print("| variant | " + " | ".join(PHASES) + " | sum | images/s |")
    print("| --- |" + " ---: |" * (len(PHASES) + 2))
    for r in runs:
        rows = samples[r.name]
        med = {ph: statistics.median(row[ph] for row in rows) for ph in PHASES}
        total = statistics.median(sum(row.values()) for row in rows)
        cells = " | ".join(f"{med[ph] * 1e3:,.1f} ms ({med[ph] / total:.0%})" for ph in PHASES)
        failed = eager_fallbacks(r.forward, r.augment)
        name = r.name + (f" (COMPILE FAILED for {len(failed)} parts: eager there)" if failed else "")
        print(f"| {name} | {cells} | {total * 1e3:,.1f} ms | {batch / total:,.1f} |")


def systems_default_data():
    from benchmarks.speed import DEFAULT_CIFAR

    return DEFAULT_CIFAR


if __name__ == "__main__":
    main()
