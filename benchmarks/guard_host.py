"""The host's cost of the non-finite guard (``byol.faults.NonFiniteGuard``: a step's snapshot and settle),
this tree's against another revision's, interleaved round by round in one process.

    python -m benchmarks.guard_host --against 2e99631

The learner is the reference workload's (ResNet-18, CIFAR stem, LARS: 339 tensors to guard) made narrow
(``--width 4 --head-width 16``), so that the values moved are few and what is timed is the Python and
the dispatch around them: on a GPU the host's share, which a CUDA-graph step's eager tail pays each step.
On a CPU the foreach ops still loop over the tensors one by one in C++ (on a GPU each is a few launches),
so the figure is an upper bound for a GPU's host. One thread; a finite loss (the restore's arithmetic
runs the same for a step kept or undone).
"""

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import systems
from byol import faults


def guard_module_at(revision: str):
    """``byol/faults.py`` as it was at ``revision``, imported as a module of the byol package."""
    source = subprocess.run(["git", "show", f"{revision}:byol/faults.py"], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    path = Path(tempfile.mkdtemp()) / "faults_then.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("byol.faults_then", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", required=True, help="a git revision whose byol/faults.py to compare with")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calls", type=int, default=200, help="snapshot + settle calls per timed round")
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--head-width", type=int, default=16)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device("cpu")
    byol, optimizer = systems.our_model(8, device, args.width, args.head_width)
    byol(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)).backward()
    optimizer.step()  # the optimizer's state exists, as from a run's second step on
    guards = {"this tree": faults.NonFiniteGuard([byol], optimizer, device),
              args.against: guard_module_at(args.against).NonFiniteGuard([byol], optimizer, device)}
    loss, times = torch.tensor(1.0), {name: [] for name in guards}
    for _ in range(args.rounds):
        for name, guard in guards.items():
            for _ in range(10):  # untimed: the round's caches warm
                guard.snapshot(), guard.settle(loss)
            start = time.perf_counter()
            for _ in range(args.calls):
                guard.snapshot(), guard.settle(loss)
            times[name].append((time.perf_counter() - start) / args.calls * 1e3)
    print(f"{len(guards['this tree']._tensors())} tensors guarded; {args.rounds} interleaved rounds of "
          f"{args.calls} snapshot + settle calls; {sys.version.split()[0]}, torch {torch.__version__}, 1 thread")
    for name, values in times.items():
        print(f"{name}: {statistics.median(values):.3f} ms a step (median; {min(values):.3f}-{max(values):.3f})")


if __name__ == "__main__":
    main()
