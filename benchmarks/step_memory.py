"""How much more memory a CPU training step takes at its peak than it keeps for backward: the
factor behind the note of ``byol.memory.check_step_fits`` (whose refusal uses the saved bytes alone).

    python -m benchmarks.step_memory

For each case (ResNet-18 with the CIFAR stem, the ``cifar10`` preset's heads), in a process of its
own: the saved bytes of a step as ``byol.memory`` estimates them, then the rise of the process's peak
resident memory (``ru_maxrss``) over two real training steps, and their ratio.
"""

import resource
import subprocess
import sys

import torch

CASES = [(128, 32, "fp32"), (128, 32, "bf16"), (64, 64, "fp32")]  # (batch, image size, precision)


def measure(batch: int, size: int, precision: str) -> None:
    from byol.config import load_config
    from byol.memory import saved_bytes_per_image
    from byol.step import ViewsForward, train_step
    from byol.run_setup import build_run
    torch.set_num_threads(2)
    config = load_config("cifar10", [f"--data.image_size={size}", "--train.device=cpu"])
    byol, optimizer, generator = build_run(config, torch.device("cpu"), 0, 1, net=None, given=None)
    amp = torch.bfloat16 if precision == "bf16" else None
    saved = saved_bytes_per_image(byol, size, amp) * batch
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    model = ViewsForward(byol)
    for _ in range(2):
        train_step(model, byol, optimizer, images, generator, amp)
    rise = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    print(f"batch {batch:4d}, {size:3d} px, {precision}: saved {saved / 2**30:.2f} GiB, peak rise "
          f"{rise / 2**30:.2f} GiB, ratio {rise / saved:.2f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 4:
        measure(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
    else:
        for case in CASES:
            subprocess.run([sys.executable, "-m", "benchmarks.step_memory", *map(str, case)], check=True)
