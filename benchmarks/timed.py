"""A system's own process in the speed harness (benchmarks.speed): build the system, then time the steps
the parent asks for. Each system runs in a process of its own, so that what one does to the process (our
step keeps freed memory in the C allocator; lightly starts DataLoader workers) touches no other.
"""

import faulthandler
import signal
import sys
import time
import traceback
from typing import Optional

import torch

from benchmarks import systems
from byol.allocator import glibc
from byol.precision import autocast_dtype
from byol.compiling import eager_fallbacks


def load_images(data: str, device: torch.device) -> tuple[torch.Tensor, str]:
    """CIFAR-10's 50,000 training images as one uint8 (N, 3, 32, 32) tensor on ``device``."""
    if data != "random":
        from byol.data import DataError
        from byol.datasets import build_dataset

        try:
            images = build_dataset("cifar10", data, "train", 32, False).images
            return images.to(device), f"CIFAR-10 train ({data})"
        except DataError as e:
            print(f"note: {e}; using random images of the same shape", file=sys.stderr)
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8, generator=g).to(device), "random uint8"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


PEERS = ("byol-pytorch", "lightly")


PEER_ADVICE = ("bash benchmarks/setup_peers.sh, then benchmarks/.venv/bin/python; on a machine without a package "
               "registry: benchmarks/peer_wheels.sh where there is one, carry .whl, run benchmarks/gpu_speed.sh")


def make(name: str, images: torch.Tensor, args, device: torch.device, amp):
    """One system by its ``--systems`` name."""
    shape = dict(width=args.width, head_width=args.head_width)
    if name == "byol":
        return systems.Ours(images, args.batch, device, amp, compile=args.compile, channels_last=not args.nchw,
                            **shape)
    if name == "byol-eager":  # ablation: the same step without torch.compile
        return systems.Ours(images, args.batch, device, amp, compile=False, channels_last=not args.nchw,
                            name="byol, eager", **shape)
    if name == "byol-graphed":  # experiment: the eager step's augment, forward and backward in a CUDA graph
        return systems.Ours(images, args.batch, device, amp, compile=False, channels_last=not args.nchw,
                            graphed=True, name="byol, CUDA graph", **shape)
    if name == "byol-graphed-tail":  # experiment: the optimizer step, EMA, guard and metrics in the graph too
        return systems.Ours(images, args.batch, device, amp, compile=False, channels_last=not args.nchw,
                            graphed=True, capture_tail=True, name="byol, CUDA graph with the tail", **shape)
    if name == "byol-nchw":  # ablation: the same step in the default NCHW layout
        return systems.Ours(images, args.batch, device, amp, compile=args.compile, channels_last=False,
                            name="byol, NCHW", **shape)
    if name == "byol-fp32":  # ablation: the same step without bf16 autocast
        return systems.Ours(images, args.batch, device, None, compile=args.compile, channels_last=not args.nchw,
                            name="byol, float32", **shape)
    if name == "byol-bf16":  # ablation: the same step with bf16 autocast on any device (auto's is float32 on some)
        return systems.Ours(images, args.batch, device, torch.bfloat16, compile=args.compile,
                            channels_last=not args.nchw, name="byol, bf16 autocast", **shape)
    if name == "byol-nokeep":  # ablation: freed memory handed back to the system, glibc's default
        return systems.Ours(images, args.batch, device, amp, compile=args.compile, channels_last=not args.nchw,
                            keep_memory=False, name="byol, freed memory handed back", **shape)
    if name == "byol-pytorch":
        return systems.BYOLPytorch(images, args.batch, device, amp if args.peer_amp else None, **shape)
    if name == "lightly":
        return systems.Lightly(images, args.batch, device, amp if args.peer_amp else None, args.workers, **shape)
    raise ValueError(f"unknown system {name!r}")


def setup(args, device: torch.device) -> Optional[torch.dtype]:
    """Threads and backend flags, the same in every process; returns our autocast dtype
    (``train.precision=auto``'s)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return autocast_dtype("auto", device)  # as byol pretrain: bf16 where the device has it natively


def serve(conn, name: str, args) -> None:
    """A system's own process: build it, then time the steps the parent asks for, one batch at a time.

    Each system runs in a process of its own, so that what one does to the process (our step keeps
    freed memory in the C allocator, ``byol.allocator.keep_freed_memory``; lightly starts DataLoader
    workers) touches no other system, as when each is run by a user.
    """
    # Stacks on request (the parent's time limit for a step) and when killed by a time limit
    # outside (`timeout` signals the process group): where a first compile that never ends waits.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    faulthandler.register(signal.SIGTERM, all_threads=True, chain=True)
    device = torch.device(args.device)
    amp = setup(args, device)
    peer = name in PEERS
    if args.peer_keep_memory and peer:
        from byol.allocator import keep_freed_memory

        keep_freed_memory()
    images, source = load_images(args.data, device)
    torch.manual_seed(0)
    try:
        system = make(name, images, args, device, amp)
    except Exception as e:  # noqa: BLE001 - one system that cannot be built must not cost the others
        if peer and isinstance(e, ImportError):  # not installed: the parent decides if that is a skip or a failure
            conn.send(("skip", f"{e} ({PEER_ADVICE})"))
        else:
            conn.send(("failed", f"could not be built: {e!r}"[:300]))
        return
    notes = system.notes + ("; our allocator setting (--peer-keep-memory)" if args.peer_keep_memory and peer else "")
    conn.send(("ready", system.name, notes, source, getattr(system, "ahead", 0)))
    compile_reported = False
    while (request := conn.recv()) is not None:
        settle, steps = request
        if args.stacks_after and system_is_compiled(system):  # a first compile that seems to hang shows where
            faulthandler.dump_traceback_later(args.stacks_after, repeat=True, file=sys.stderr)
        try:
            for _ in range(settle):
                system.step()
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                system.step()
            sync(device)
            seconds = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: reported, the other systems go on
            traceback.print_exc()  # the whole of it in the log; the table's row gets the start
            conn.send(("failed", f"{e!r}"[:300]))
            return
        finally:
            faulthandler.cancel_dump_traceback_later()
        if system_is_compiled(system) and not compile_reported:  # once: where the first compile's time went
            compile_reported = True
            print(f"  {system.name}: torch.compile's timers after its first request (seconds, nested, summed)\n"
                  f"{compile_phases()}", file=sys.stderr)
            for part in eager_fallbacks(system.forward, system.augment):  # why compiling failed, whole
                print(f"  {system.name}: a part fell back to eager:\n{part.trace}", file=sys.stderr)
        release_memory()
        conn.send(("ok", seconds, getattr(system, "compile_status", lambda: None)()))


def system_is_compiled(system) -> bool:
    return getattr(system, "compiled", False)


def compile_phases(top: int = 12) -> str:
    """torch.compile's own timers for this process (dynamo, AOT autograd, inductor, the kernel
    compiles), largest first: what a long first step spent its time on."""
    try:
        from torch._dynamo.utils import compile_times

        names, values = compile_times(repr="csv", aggregate=True)
        rows = sorted(((float(v), n) for n, v in zip(names, values)), reverse=True)[:top]
    except Exception as e:  # noqa: BLE001 - a private API of torch: a report, never a failure
        return f"    (not available: {e!r:.200})"
    return "\n".join(f"    {name}: {value:.1f}" for value, name in rows)


def release_memory() -> None:
    """Hand this process's free heap memory back to the system (glibc's ``malloc_trim``).

    Called after each round, outside the timing, in every system's process alike: an idle system
    must not hold the host memory of its last step while another one runs (our step keeps it by
    design; at batch 512 that is ~7 GB of a 24 GB machine, enough to make the others' page faults
    slower). The next round's settling steps bring the system back to its steady state.
    """
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)
