"""The host's cost of a piece of the step's eager tail, this tree's against another revision's, interleaved
round by round in one process: the non-finite guard (``byol.faults.NonFiniteGuard``: a step's snapshot and
settle) or the EMA update (``byol.ema.update_target``).

    python -m benchmarks.tail_host --part guard --against 2e99631
    python -m benchmarks.tail_host --part ema --against 366a519

The learner is the reference workload's (ResNet-18, CIFAR stem, LARS: 339 tensors to guard) made narrow
(``--width 4 --head-width 16``), so that the values moved are few and what is timed is the Python and
the dispatch around them: on a GPU the host's share, which a CUDA-graph step's eager tail pays each step.
On a CPU the foreach ops still loop over the tensors one by one in C++ (on a GPU each is a few launches),
so the figure is an upper bound for a GPU's host. One thread; a finite loss (the guard's restore runs the
same arithmetic for a step kept or undone); tau 0.99.
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

MODULES = {"guard": "faults", "ema": "ema"}  # --part -> the byol module it times


def module_at(revision: str, name: str):
    """``byol/NAME.py`` as it was at ``revision``, imported as a module of the byol package."""
    source = subprocess.run(["git", "show", f"{revision}:byol/{name}.py"], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    path = Path(tempfile.mkdtemp()) / f"{name}_then.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"byol.{name}_then", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _calls(part: str, module, byol, optimizer):
    """One step's call of ``part`` as ``module`` (this tree's or the revision's) defines it."""
    if part == "ema":
        return lambda: module.update_target(byol.target, byol.online, 0.99)
    guard, loss = module.NonFiniteGuard([byol], optimizer, torch.device("cpu")), torch.tensor(1.0)
    return lambda: (guard.snapshot(), guard.settle(loss))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=sorted(MODULES), default="guard")
    p.add_argument("--against", required=True, help="a git revision whose byol module to compare with")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calls", type=int, default=200, help="calls per timed round")
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--head-width", type=int, default=16)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    byol, optimizer = systems.our_model(8, torch.device("cpu"), args.width, args.head_width)
    byol(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)).backward()
    optimizer.step()  # the optimizer's state exists, as from a run's second step on
    now = importlib.import_module(f"byol.{MODULES[args.part]}")
    calls = {"this tree": _calls(args.part, now, byol, optimizer),
             args.against: _calls(args.part, module_at(args.against, MODULES[args.part]), byol, optimizer)}
    times = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, call in calls.items():
            for _ in range(10):  # untimed: the round's caches warm
                call()
            start = time.perf_counter()
            for _ in range(args.calls):
                call()
            times[name].append((time.perf_counter() - start) / args.calls * 1e3)
    tensors = len(faults.NonFiniteGuard([byol], optimizer, torch.device("cpu"))._tensors())
    counted = "guarded" if args.part == "guard" else "in the learner and its optimizer"  # (the EMA's are fewer)
    print(f"{args.part}: {tensors} tensors {counted}; {args.rounds} interleaved rounds of {args.calls} calls; "
          f"{sys.version.split()[0]}, torch {torch.__version__}, 1 thread")
    for name, values in times.items():
        print(f"{name}: {statistics.median(values):.3f} ms a step (median; {min(values):.3f}-{max(values):.3f})")


if __name__ == "__main__":
    main()
