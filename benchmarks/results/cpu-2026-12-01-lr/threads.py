# The eager step alone on 1 CPU thread against 2, at lr 0.1 and 1e-3 (tests/test_step.py tiny network): BENCHMARKS.md, "GPU".
import sys, torch
sys.path.insert(0, "tests")
from test_step import tiny_byol, images, run_steps
from byol.step import ViewsForward
for lr in (0.1, 1e-3):
    out = []
    for n in (1, 2):
        torch.set_num_threads(n)
        b = tiny_byol(); out.append(torch.stack(run_steps(b, ViewsForward(b), images(16), steps=3, lr=lr)))
    print(lr, out[0].tolist(), out[1].tolist(), (out[0] - out[1]).abs().max().item())
