# In a process started by spawn (as benchmarks.speed runs each system): how long a DataLoader takes to start
# 8 workers over 50,000 CIFAR-sized uint8 images and give its first batch, by the start method it inherits
# (spawn) and by fork. Run: python benchmarks/results/cpu-amd-2026-12-05/worker_start.py default fork
import sys, time, multiprocessing as mp
import numpy as np, torch
class DS(torch.utils.data.Dataset):
    def __init__(self, a): self.a = a
    def __len__(self): return len(self.a)
    def __getitem__(self, i): return torch.from_numpy(self.a[i]), 0
def child(ctx):
    a = np.random.randint(0, 255, (50000, 32, 32, 3), dtype=np.uint8)
    t = time.time()
    dl = torch.utils.data.DataLoader(DS(a), batch_size=2, num_workers=8, persistent_workers=True,
                                     multiprocessing_context=ctx)
    it = iter(dl); next(it)
    print(ctx, "iter+first batch", round(time.time() - t, 1), "s", flush=True)
if __name__ == "__main__":
    for ctx in sys.argv[1:]:
        p = mp.get_context("spawn").Process(target=child, args=(None if ctx == "default" else ctx,)); p.start(); p.join()
