"""The FLOP and byte bound of one BYOL step: what the hardware cannot go below.

    python -m benchmarks.bound [--batch 512]

Counts, on the CPU at a small batch and scaled linearly to ``--batch`` (every op here is linear in
the batch), the floating-point operations of one full step with torch's FlopCounterMode (matmuls
and convolutions; elementwise work is not counted and is memory-bound anyway), and the bytes that
the ops write: every op's outputs, as eager PyTorch runs them (each written once and read at least
once), and the convolutions' and matmuls' outputs alone (a lower bound for a perfectly fused step,
where normalization and activations live in the convolutions' epilogues).
"""

import argparse
from collections import defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from byol.config import Config
from byol.build import build_model

SCALE_BATCH = 8
HEAVY = ("convolution", "mm", "addmm", "bmm", "matmul")


class Bytes(TorchDispatchMode):
    """Bytes of the outputs of every aten op, and of the heavy ones alone, per phase."""

    def __init__(self):
        super().__init__()
        self.phase = "?"
        self.all = defaultdict(int)
        self.heavy = defaultdict(int)
        self.ops = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        size = sum(o.numel() * o.element_size() for o in outs if isinstance(o, torch.Tensor))
        self.all[self.phase] += size
        self.ops[self.phase] += 1
        if any(h in func.__name__ for h in HEAVY):
            self.heavy[self.phase] += size
        return out


def count(batch: int) -> dict:
    torch.manual_seed(0)
    byol = build_model(Config())
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    view1, view2 = byol.augment_fn(images), byol.augment_fn2(images)
    flops, nbytes = {}, Bytes()
    phases = {
        "online forward (2 views)": lambda: [byol.predictor(byol.online(v)) for v in (view1, view2)],
        "target forward (2 views)": lambda: [byol.target(v) for v in (view1, view2)],
    }
    for name, fn in phases.items():
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            nbytes.phase = name
            with nbytes:
                fn()
        flops[name] = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        loss, _ = byol.forward_views(view1, view2)
        nbytes.phase = "backward"
        with nbytes:
            loss.backward()
    flops["backward"] = fc.get_total_flops() - flops["online forward (2 views)"] - flops["target forward (2 views)"]
    return {"flops": flops, "bytes": dict(nbytes.all), "heavy_bytes": dict(nbytes.heavy), "ops": dict(nbytes.ops)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--epoch", type=int, default=50_000)
    args = p.parse_args(argv)
    c = count(SCALE_BATCH)
    k = args.batch / SCALE_BATCH
    steps = args.epoch / args.batch
    total_flops = sum(c["flops"].values()) * k
    print(f"one step at batch {args.batch} (fp32 byte counts; bf16 halves the activations):\n")
    print("| phase | GFLOP | output bytes, eager (GB) | conv/matmul outputs only (GB) | aten ops |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for phase in c["flops"]:
        print(f"| {phase} | {c['flops'][phase] * k / 1e9:,.0f} | {c['bytes'].get(phase, 0) * k / 1e9:.2f} | "
              f"{c['heavy_bytes'].get(phase, 0) * k / 1e9:.2f} | {c['ops'].get(phase, 0)} |")
    eager_bytes = sum(c["bytes"].values()) * k
    heavy_bytes = sum(c["heavy_bytes"].values()) * k
    print(f"| total | {total_flops / 1e9:,.0f} | {eager_bytes / 1e9:.2f} | {heavy_bytes / 1e9:.2f} | |\n")
    print(f"per epoch of {args.epoch:,} images ({steps:.1f} steps): {total_flops * steps / 1e12:,.0f} TFLOP")
    for name, tflops, tbps in (("H100 SXM", 989, 3.35), ("H100 PCIe", 756, 2.0)):
        t_flop = total_flops * steps / (tflops * 1e12)
        # bf16 activations: half the fp32 bytes; written once and read once: x2.
        t_eager = eager_bytes / 2 * 2 * steps / (tbps * 1e12)
        t_fused = heavy_bytes / 2 * 2 * steps / (tbps * 1e12)
        print(f"{name} (bf16 dense {tflops} TFLOP/s, {tbps} TB/s): compute bound {t_flop:.2f} s/epoch; "
              f"memory bound {t_fused:.2f} s/epoch fused, {t_eager:.2f} s/epoch eager")


if __name__ == "__main__":
    main()
