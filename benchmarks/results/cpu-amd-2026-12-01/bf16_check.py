import time, torch
from byol.backbones import resnet
torch.manual_seed(0)
net = resnet("resnet18", cifar_stem=True, width=64).to(memory_format=torch.channels_last)
x = torch.rand(64, 3, 32, 32).to(memory_format=torch.channels_last)
def step(bf16):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = net(x).float().sum()
    y.backward()
for bf16 in (False, True): step(bf16)
for r in range(3):
    for bf16 in (False, True):
        t = time.perf_counter(); step(bf16); print(r, "bf16" if bf16 else "fp32", round(time.perf_counter() - t, 2), flush=True)
