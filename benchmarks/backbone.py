"""The backbone alone: ResNet-18 (CIFAR stem) forward and backward, its time, page faults and memory.

    python -m benchmarks.backbone --batch 512                   # glibc's default allocator
    python -m benchmarks.backbone --batch 512 --keep-memory     # byol.allocator.keep_freed_memory first
    python -m benchmarks.backbone --batch 256 --keep-memory --profile   # where the time goes, by aten op

Each setting of the allocator is a process-wide change, so compare two runs, not two settings in
one process. CPU only: page faults and glibc's allocator are host matters.
"""

import argparse
import resource
import time

import torch

from benchmarks.speed import load_average, machine
from byol.backbones import resnet
from byol.allocator import keep_freed_memory


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=4, help="timed steps, after one warm-up step")
    p.add_argument("--keep-memory", action="store_true", help="call byol.allocator.keep_freed_memory() first")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's table for one more step")
    args = p.parse_args(argv)
    kept = args.keep_memory and keep_freed_memory()
    torch.manual_seed(0)
    net = resnet("resnet18", cifar_stem=True).to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)

    def step():
        net(x).sum().backward()

    step()
    print(f"{machine(torch.device('cpu'))}; batch {args.batch}, channels_last, "
          f"{'freed memory kept' if kept else 'glibc default allocator'}; load average {load_average()}")
    for _ in range(args.steps):
        faults, t0 = minor_faults(), time.perf_counter()
        step()
        print(f"  forward+backward {time.perf_counter() - t0:.3f} s, {minor_faults() - faults:,} minor page faults")
    print(f"  max resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


if __name__ == "__main__":
    main()
