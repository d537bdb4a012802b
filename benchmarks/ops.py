"""How many aten ops one eager step of this project dispatches, per phase: a noise-free proxy for
kernel launches on the GPU (each op is about one launch; a foreach op is one launch per few dozen
tensors), which bound a small-image step when the host cannot issue them as fast as the GPU runs.

    python -m benchmarks.ops                      # counts on the CPU; the same ops run on the GPU
    python -m benchmarks.ops --time-guard 20      # and the guard's snapshot + restore, timed
"""

import argparse
import statistics
import time
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks import systems
from byol.faults import NonFiniteGuard
from byol.step import ViewsForward, step_metrics


class Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count(batch: int = 8, top: int = 0) -> dict[str, Counter]:
    torch.manual_seed(0)
    byol, optimizer = systems.our_model(batch, torch.device("cpu"))
    forward = ViewsForward(byol)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    guard = NonFiniteGuard([byol], optimizer, images.device)
    sums = torch.zeros(3)
    phases: dict[str, Counter] = {}
    for step in range(3):  # the third step: the optimizer state and the guard's buffers exist
        modes = {name: Ops() for name in ("augment", "forward", "backward", "optimizer", "ema", "guard", "metrics")}
        with modes["guard"]:  # the non-finite guard's snapshot, counted with its restore below
            guard.snapshot()
        with modes["augment"]:
            view1, view2 = byol.augment_fn(images, generator), byol.augment_fn2(images, generator)
        with modes["forward"]:
            loss, z1 = forward(view1, view2)
        optimizer.zero_grad(set_to_none=True)
        with modes["backward"]:
            loss.backward()
        with modes["optimizer"]:
            optimizer.step()
        with modes["ema"]:  # before the settle, as in byol.step.LoopStep: an undone step's EMA is undone too
            byol.update_target(0.996)
        with modes["guard"]:
            ok = guard.settle(loss.detach())
        with modes["metrics"]:  # as byol.step.LoopStep sums them on the device
            sums += step_metrics(loss.detach(), z1, ok)
        phases = {name: m.counts for name, m in modes.items()}
    return phases


def time_guard(repeats: int) -> str:
    """Median wall time of the guard's snapshot + restore on the CPU, one thread, the real model's
    ~210 tensors and their optimizer state (the restore is timed on a good step: it does the
    same work either way)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    byol, optimizer = systems.our_model(8, torch.device("cpu"))
    forward = ViewsForward(byol)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    loss, _ = forward(byol.augment_fn(images), byol.augment_fn2(images))
    loss.backward()
    optimizer.step()  # the momentum buffers exist from here on
    guard = NonFiniteGuard([byol], optimizer, images.device)
    tensors = guard._tensors()
    times = []
    for _ in range(repeats + 1):  # the first builds the kept buffers
        start = time.perf_counter()
        guard.snapshot()
        guard.settle(loss.detach())
        times.append(time.perf_counter() - start)
    elements = sum(t.numel() for t in tensors)
    return (f"guard snapshot + restore: {statistics.median(times[1:]) * 1e3:.1f} ms (median of {repeats}; "
            f"{len(tensors)} tensors, {elements / 1e6:.1f}M elements, 1 thread)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--top", type=int, default=5, help="most frequent ops shown per phase")
    p.add_argument("--time-guard", type=int, default=0, metavar="N",
                   help="also time the non-finite guard's snapshot + restore, N repeats")
    args = p.parse_args(argv)
    if args.time_guard:
        print(time_guard(args.time_guard))
    phases = count()
    print("| phase | aten ops | most frequent |\n| --- | ---: | --- |")
    for name, c in phases.items():
        common = ", ".join(f"{op} {n}" for op, n in c.most_common(args.top))
        print(f"| {name} | {sum(c.values())} | {common} |")
    print(f"| total | {sum(sum(c.values()) for c in phases.values())} | |")


if __name__ == "__main__":
    main()
