"""Time one full BYOL step of this project, byol-pytorch and lightly, side by side.

    bash benchmarks/setup_peers.sh                      # once: a venv with the peers (git-ignored)
    benchmarks/.venv/bin/python -m benchmarks.speed --device cuda
    benchmarks/.venv/bin/python -m benchmarks.speed --device cpu --batch 512 --warmup 1 --repeats 3

The workload (the issue's): ResNet-18 with the CIFAR stem, CIFAR-10 32x32, batch 512, both views
augmented, online forward and backward on both, target forward on both, optimizer step, EMA update.
Each system runs in a process of its own (``benchmarks.timed``: what one does to its process, such as our allocator
setting or lightly's DataLoader workers, touches no other). Each first runs ``--warmup`` steps
(compilation, allocator, cuDNN/oneDNN autotuning); then ``--repeats`` rounds, each running every
system in turn for ``--settle`` untimed and ``--steps`` timed steps (the order rotates from round
to round, so a change of machine load hits all systems alike), after which the system's process
hands its free memory back. The table gives the median round. Run with the venv's python to
include the peers; without them (and without ``--systems``) only this project is timed. A peer named in
``--systems`` that cannot be imported gets a FAILED row. The exit code is 4 when a system asked for
has no timed round (after the table and the JSON).
"""

import argparse
import json
import multiprocessing as mp
import os
import platform
import signal
import statistics
import sys
from pathlib import Path
from typing import Optional

import torch

from benchmarks import systems
from benchmarks.timed import PEERS, serve, setup

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CIFAR = ROOT.parent / "shared" / "data" / "cifar10"


def machine(device: torch.device) -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if device.type == "cuda":
        text = f"{torch.cuda.get_device_name(device)}; host {text}"
    return text


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


DEFAULT_SYSTEMS = "byol,byol-pytorch,lightly"


class Remote:
    """The parent's handle on a system running in its own process (see :func:`benchmarks.timed.serve`)."""

    def __init__(self, name: str, args):
        context = mp.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=serve, args=(child, name, args))
        self.process.start()
        child.close()
        reply = self._recv(name)
        self.key = name  # as --systems names it
        self.skipped = reply[1] if reply[0] == "skip" else None  # not installed: no row
        self.failed: Optional[str] = reply[1] if reply[0] == "failed" else None  # a row that says why
        # ahead: batches its input pipeline prepares ahead of the step (lightly's DataLoader workers)
        self.name, self.notes, self.source, self.ahead = (name, "", "", 0) if reply[0] != "ready" else reply[1:]

    def _recv(self, name: str):
        try:
            return self.conn.recv()
        except EOFError:  # e.g. killed for memory, or a crash in native code
            self.process.join(timeout=60)
            return ("failed", f"the process timing {name} died (exit code {self.process.exitcode})")

    def seconds(self, steps: int, settle: int = 0, limit: Optional[float] = None) -> Optional[float]:
        """Run ``settle`` untimed steps there, then ``steps`` timed ones; their wall time, measured
        there between device syncs. None when the system failed (``failed`` says why); it is then
        not timed again. A request still running after ``limit`` seconds counts as failed: the
        process prints its stacks (SIGUSR1, :func:`benchmarks.timed.serve`) and is killed, and the others go on."""
        if self.failed is not None:
            return None
        self.conn.send((settle, steps))
        if limit is not None and not self.conn.poll(limit):
            os.kill(self.process.pid, signal.SIGUSR1)
            self.process.join(timeout=5)  # time to print the stacks
            self.process.kill()
            self.process.join(timeout=60)
            self.failed = f"{steps} step(s) did not finish within {limit:.0f} s (its stacks are in the log above)"
            return None
        reply = self._recv(self.name)
        if reply[0] == "failed":
            self.failed = reply[1]
            return None
        _, seconds, compile_status = reply
        if compile_status and compile_status not in self.notes:
            self.notes += f"; {compile_status}"
        return seconds

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.kill()


def build(names: list[str], args, built: list[Remote], optional: frozenset = frozenset()) -> None:
    """Start a process for each system, appending to ``built`` as they come up (so that the caller
    can close those already started if a later one fails). A peer that is not installed is skipped
    if it is in ``optional`` (not named by the user), else it gets a FAILED row."""
    for name in names:
        remote = Remote(name, args)
        if remote.skipped and name in optional:
            print(f"skipping {name}: {remote.skipped}", file=sys.stderr)
            remote.close()
            continue
        if remote.skipped:
            remote.failed, remote.skipped = f"could not be imported: {remote.skipped}"[:400], None
        built.append(remote)
    if not built:
        raise SystemExit("no system to time")


def measure(built: list[Remote], args, after_round=None) -> dict[str, list[float]]:
    """Warm up each system, then time interleaved rounds; images/s of every round, per system
    (``after_round(rates)`` is called after each round)."""
    for s in built:  # the first step alone: it holds the compile, cuDNN's autotuning, the allocator's growth
        first = s.seconds(1, limit=args.first_step_limit)
        more = first is not None and args.warmup > 1
        rest = s.seconds(args.warmup - 1, limit=args.first_step_limit) if more else None
        if first is None or (rest is None and s.failed):
            print(f"  warm-up {s.name}: FAILED: {s.failed}", file=sys.stderr)
        else:
            print(f"  warm-up {s.name}: first step {first:.1f} s"
                  + (f", then {args.warmup - 1} steps in {rest:.1f} s" if rest is not None else ""), file=sys.stderr)
    rates: dict[str, list[float]] = {s.name: [] for s in built}
    for r in range(args.repeats):
        order = built[r % len(built):] + built[:r % len(built)]
        this_round = {}
        for s in order:
            # at least as many untimed steps as batches prepared ahead: the buffer its input pipeline filled
            # while the others ran is taken before the clock starts, not by the timed steps
            seconds = s.seconds(args.steps, max(args.settle, s.ahead))
            if seconds is not None:
                this_round[s.name] = args.steps * args.batch / seconds
                rates[s.name].append(this_round[s.name])
        print(f"  round {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v:.1f}" for k, v in this_round.items())
              + f" images/s (load {load_average()})", file=sys.stderr)
        if after_round is not None:
            after_round(rates)
    return rates


def table(built: list, rates: dict[str, list[float]]) -> str:
    """The printed table; the ratio column is against ``byol`` (else the first system), NaN when
    that one has no rounds."""
    ref = next((s for s in built if s.key == "byol"), built[0] if built else None)
    ours = statistics.median(rates[ref.name]) if ref is not None and rates[ref.name] else float("nan")
    lines = ["| system | images/s (median) | min-max over rounds | s/epoch (50k) | byol is x faster | "
             "recipe and how it runs |", "| --- | ---: | ---: | ---: | ---: | --- |"]
    for s in built:
        r = rates[s.name]
        failed = f"FAILED: {s.failed}".replace("|", "/") if s.failed else ""  # no cell breaks
        if not r:
            lines.append(f"| {s.name} | - | - | - | - | {s.notes}{'; ' if s.notes else ''}{failed or 'no round'} |")
            continue
        med = statistics.median(r)
        lines.append(f"| {s.name} | {med:,.1f} | {min(r):,.1f}-{max(r):,.1f} | {systems.epoch_seconds(med):,.1f} | "
                     f"{ours / med:.2f} | {s.notes}{'; ' + failed if failed else ''} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (cuda 5, cpu 3)")
    p.add_argument("--steps", type=int, default=None, help="steps per system per round (cuda 20, cpu 1)")
    p.add_argument("--settle", type=int, default=None,
                   help="untimed steps per system at the start of each round (cuda 0, cpu 1)")
    p.add_argument("--systems", default=None,
                   help="comma-separated: byol, byol-pytorch, lightly, the ablations byol-eager, byol-nchw, "
                        "byol-fp32, byol-bf16, byol-nokeep, and the experiments byol-graphed and "
                        "byol-graphed-tail (CUDA only); "
                        f"default {DEFAULT_SYSTEMS}, skipping a peer that is not installed (named here: a FAILED row)")
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                   help="torch.compile our step: auto = on for cuda, off for cpu (where it does not help)")
    p.add_argument("--nchw", action="store_true", help="run our step in NCHW instead of channels_last")
    p.add_argument("--peer-amp", action="store_true",
                   help="give the peers bf16 autocast too (their docs run float32)")
    p.add_argument("--peer-keep-memory", action="store_true",
                   help="give the peers' processes our allocator setting too (byol.allocator.keep_freed_memory)")
    p.add_argument("--workers", type=int, default=systems.default_workers(), help="lightly's DataLoader workers")
    p.add_argument("--data", default=str(DEFAULT_CIFAR), help="CIFAR-10 root, or 'random'")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--width", type=int, default=systems.WIDTH,
                   help="channels of ResNet-18's first stage for every system (64: the reference workload)")
    p.add_argument("--head-width", type=int, default=systems.HEAD_WIDTH,
                   help="projector and predictor hidden width (4096); with --width 8 --head-width 64 the "
                        "arithmetic is negligible and what is timed is the host issuing the ops")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--stacks-after", type=float, default=None, metavar="SECONDS",
                   help="print a compiled system's stacks every SECONDS while a request runs (a compile that hangs)")
    p.add_argument("--first-step-limit", type=float, default=None, metavar="SECONDS",
                   help="a system whose first step (compile included), or the rest of its warm-up, takes longer "
                        "fails, with its stacks printed, and the others are timed")
    p.add_argument("--warmup", type=int, default=None,
                   help="steps per system before timing, the first timed apart (cuda 15, cpu 1)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.warmup = args.warmup if args.warmup is not None else (15 if cuda else 1)
    if args.warmup < 1:
        p.error("--warmup must be at least 1 (its first step is timed apart)")
    args.repeats = args.repeats if args.repeats is not None else (5 if cuda else 3)
    args.steps = args.steps if args.steps is not None else (20 if cuda else 1)
    args.settle = args.settle if args.settle is not None else (0 if cuda else 1)
    args.compile = args.compile == "on" or (args.compile == "auto" and cuda)
    optional = frozenset(PEERS) if args.systems is None else frozenset()
    args.systems = args.systems or DEFAULT_SYSTEMS
    amp = setup(args, device)
    built: list[Remote] = []
    try:
        build(args.systems.split(","), args, built, optional)
        source = next((s.source for s in built if s.source), "no data: no system was built")
        load_before = load_average()
        # The JSON after every round too: a run cut short (a time limit) keeps the rounds it finished.
        rates = measure(built, args, lambda rates: report(built, rates, args, source, amp, load_before, argv,
                                                          final=False))
    finally:
        for s in built:
            s.close()
    return report(built, rates, args, source, amp, load_before, argv, final=True)


def widths(args) -> str:
    """What the header says of widths other than the reference workload's."""
    if (args.width, args.head_width) == (systems.WIDTH, systems.HEAD_WIDTH):
        return ""
    return (f"; NOT the reference workload: ResNet-18 width {args.width}, heads {args.head_width} wide "
            "(the same ops, little arithmetic: the host's cost of issuing them)")


def report(built: list[Remote], rates: dict[str, list[float]], args, source: str, amp, load_before: str, argv,
           final: bool) -> dict:
    """The header and table (printed when ``final``) and the JSON (``--json``), from the rounds so far."""
    device = torch.device(args.device)
    rounds = max((len(r) for r in rates.values()), default=0)
    command = "python -m benchmarks.speed " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"{machine(device)}\nbatch {args.batch}, {source}, warm-up {args.warmup}, {rounds} rounds x "
              f"({args.settle} untimed + {args.steps} timed) steps, each system in its own process, "
              f"optimizer LARS for all, ours {'bf16 autocast' if amp else 'float32'}, "
              f"peers {'bf16 autocast' if amp and args.peer_amp else 'float32'}"
              f"{' (TF32 matmuls and convolutions on for all)' if device.type == 'cuda' else ''}"
              f"{widths(args)}\n"
              f"load average (1/5/15 min) before {load_before}, after {load_average()}\n{command}")
    result = table(built, rates)
    out = {"machine": machine(device), "args": vars(args), "rates": rates, "table": result, "header": header,
           "load_before": load_before, "load_after": load_average(),
           "complete": final, "rounds_done": rounds, "rounds_asked": args.repeats,
           "no_rounds": [s.name for s in built if not rates[s.name]]}
    if final:
        print(header + "\n\n" + result)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    if failed := main()["no_rounds"]:  # after the table and the JSON: a caller (gpu_speed.sh) sees it
        print(f"no timed round for {', '.join(failed)} (the reasons are in the table): exit 4", file=sys.stderr)
        sys.exit(4)
