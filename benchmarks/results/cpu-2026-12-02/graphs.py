"""What torch.compile makes of our step (the harness's compiled `byol` system: LoopStep over ResNet-18,
CIFAR stem, heads 4096): graphs, graph breaks and recompilations over six steps, and each step's time.

Run from the repository root: TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 TORCH_LOGS=graph_breaks,recompiles \
    python benchmarks/results/cpu-2026-12-02/graphs.py [batch]
"""
import sys
import time

import torch
from torch._dynamo.utils import counters

sys.path.insert(0, ".")
from benchmarks.systems import Ours  # noqa: E402

batch = int(sys.argv[1]) if len(sys.argv) > 1 else 16
torch.manual_seed(0)
images = torch.randint(0, 256, (4 * batch, 3, 32, 32), dtype=torch.uint8)
ours = Ours(images, batch, torch.device("cpu"), None, compile=True)
for i in range(6):
    start = time.perf_counter()
    ours.step()
    print(f"step {i}: {time.perf_counter() - start:.2f} s", flush=True)
print("compile status:", ours.compile_status() or "all parts compiled")
for name in ("frames", "stats", "graph_break"):
    print(name, dict(counters[name]))
