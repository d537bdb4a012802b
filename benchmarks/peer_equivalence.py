"""Are byol's numbers the peers' numbers? The kNN classifier, the loss, the EMA step, the tau
schedule and the heads, each set beside lightly's and byol-pytorch's on the same inputs, and the
drop-in learner beside byol-pytorch's.

    benchmarks/.venv/bin/python -m benchmarks.peer_equivalence [--data ../shared/data/cifar10]

Runs in the peers' virtual environment (benchmarks/setup_peers.sh); CPU, about a minute. The kNN
check uses real CIFAR-10 features: a randomly initialized ResNet-18 (CIFAR stem) over the first
2,000 training images as the bank and the first 500 test images as queries, as the kNN monitor and
``byol eval knn`` use them (features of the online encoder, L2-normalized, votes exp(cos / 0.1)).
"""

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from byol_pytorch import byol_pytorch as byol_pytorch_module
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import update_momentum
from lightly.utils.benchmarking import knn_predict
from lightly.utils.scheduler import cosine_schedule

from byol.backbones import resnet
from byol.ema import update_target
from byol.evaluate import CIFAR10_MEAN, CIFAR10_STD, extract_features, knn_classify
from byol.loss import byol_loss
from byol.model import MLP
from byol.schedules import tau_schedule


def read_cifar(root: Path, name: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    raw = np.fromfile(root / "cifar-10-batches-bin" / name, np.uint8, count=n * 3073).reshape(n, 3073)
    return torch.from_numpy(raw[:, 1:].reshape(n, 3, 32, 32).copy()), torch.from_numpy(raw[:, 0].astype(np.int64))


def knn(root: Path) -> None:
    torch.manual_seed(0)
    bank_x, bank_y = read_cifar(root, "data_batch_1.bin", 2000)
    query_x, query_y = read_cifar(root, "test_batch.bin", 500)
    net = resnet("resnet18", cifar_stem=True)
    net.fc = torch.nn.Identity()
    bank, queries = (extract_features(net, x, batch_size=250, mean=CIFAR10_MEAN, std=CIFAR10_STD)
                     for x in (bank_x, query_x))
    for k in (20, 200):
        ours = knn_classify(bank, bank_y, queries, k=k, temperature=0.1, num_classes=10).argmax(1)
        # lightly's BenchmarkModule normalizes both sides and passes the bank as (D, N)
        theirs = knn_predict(F.normalize(queries), F.normalize(bank).t().contiguous(), bank_y, 10, knn_k=k, knn_t=0.1)
        theirs = theirs[:, 0]
        top1 = [100.0 * float((p == query_y).float().mean()) for p in (ours, theirs)]
        print(f"kNN k={k}: byol {top1[0]:.2f}%, lightly knn_predict {top1[1]:.2f}%; predictions that differ: "
              f"{int((ours != theirs).sum())} of {len(query_y)}")


def loss() -> None:
    g = torch.Generator().manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(512, 256, generator=g) for _ in range(4))
    ours = float(byol_loss(p1, p2, z1, z2))
    cosine = byol_pytorch_module.cosine_loss_fn  # its BYOL.forward: both directions, then the mean
    theirs = float((cosine(p1, z2) + cosine(p2, z1)).mean())
    ncs = NegativeCosineSimilarity()
    lightly_example = float(0.5 * (ncs(p1, z2) + ncs(p2, z1)))  # lightly's BYOL example: -mean cos, averaged
    print(f"loss: byol {ours:.7f}, byol-pytorch {theirs:.7f} (|difference| {abs(ours - theirs):.1e}); lightly's "
          f"example {lightly_example:.7f}, and byol = 4 + 4 x it to {abs(ours - (4 + 4 * lightly_example)):.1e}")


def ema() -> None:
    torch.manual_seed(0)
    online, ours, lightly_target = (MLP(64, 128, 32) for _ in range(3))
    ours.load_state_dict(lightly_target.state_dict())
    pytorch_target = [p.detach().clone() for p in lightly_target.parameters()]
    updater = byol_pytorch_module.EMA(0.99)
    update_target(ours, online, 0.99)
    update_momentum(online, lightly_target, m=0.99)
    pytorch_target = [updater.update_average(old, new.detach())
                      for old, new in zip(pytorch_target, online.parameters())]
    params = [p.detach() for p in ours.parameters()]
    light = max(float((a - b.detach()).abs().max()) for a, b in zip(params, lightly_target.parameters()))
    torch_ = max(float((a - b).abs().max()) for a, b in zip(params, pytorch_target))
    print(f"EMA step (tau 0.99): max |byol - lightly| {light:.1e}, max |byol - byol-pytorch| {torch_:.1e}")


def schedule() -> None:
    steps = 19_500  # 200 epochs of 97 steps (CIFAR-10, batch 512)
    paper = [1 - (1 - 0.996) * (math.cos(math.pi * k / steps) + 1) / 2 for k in range(steps + 1)]
    ours = [tau_schedule(k, steps, 0.996) for k in range(steps + 1)]
    # lightly's reaches its end value at max_steps - 1: given steps + 1, the paper's schedule
    lightly = [cosine_schedule(k, steps, 0.996, 1.0) for k in range(steps + 1)]
    shifted = [cosine_schedule(k, steps + 1, 0.996, 1.0) for k in range(steps + 1)]
    most = lambda other: max(abs(a - b) for a, b in zip(ours, other))
    print(f"tau schedule over {steps} steps: max |byol - paper| {most(paper):.1e}; max |byol - lightly's "
          f"cosine_schedule| {most(lightly):.1e} (it ends a step early), {most(shifted):.1e} given one step more")


def heads() -> None:
    count = lambda m: sum(p.numel() for p in m.parameters())
    print(f"heads (512 -> 4096 -> 256, 256 -> 4096 -> 256), parameters: byol {count(MLP(512))} and {count(MLP(256))}, "
          f"lightly {count(BYOLProjectionHead(512, 4096, 256))} and {count(BYOLPredictionHead(256, 4096, 256))} "
          "(its first Linear has no bias, which the BatchNorm after it cancels in training)")


def learner() -> None:
    """The drop-in learner beside byol-pytorch's, in its way (one BatchNorm batch for both views, tau 0.99,
    no simplicial embedding), on the same weights and views: the loss, the network's gradients, and the
    target after three SGD steps and EMA updates."""
    import copy
    import torchvision
    from byol import BYOL
    torch.manual_seed(0)
    views = dict(augment_fn=lambda x: x, augment_fn2=lambda x: x.flip(-1))  # fixed views: no random draws
    kw = dict(image_size=32, hidden_layer="avgpool", projection_size=16, projection_hidden_size=32,
              moving_average_decay=0.99, **views)
    net_theirs = torchvision.models.resnet18()
    net_ours = copy.deepcopy(net_theirs)
    theirs = byol_pytorch_module.BYOL(net_theirs, use_simplicial_embeddings=False, **kw)
    ours = BYOL(net_ours, concat_views=True, **kw)
    net_ours.load_state_dict(net_theirs.state_dict())  # its construction's forward moved the BatchNorm statistics
    ours.online.projector.load_state_dict(theirs.online_encoder.projector.state_dict())
    ours.predictor.load_state_dict(theirs.online_predictor.state_dict())
    ours.reset_moving_average()
    most = lambda pairs: max(float((a.detach() - b.detach()).abs().max()) for a, b in pairs)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (theirs, ours)]
    for step in range(3):
        x = torch.rand(4, 3, 32, 32)
        losses = [theirs(x), ours(x)]
        for opt, loss in zip(optimizers, losses):
            opt.zero_grad()
            loss.backward()
        if step == 0:
            grads = most((a.grad, b.grad) for a, b in zip(net_theirs.parameters(), net_ours.parameters())
                         if a.grad is not None)
            print(f"drop-in learner (ResNet-18, batch 4 of 32x32): loss byol {losses[1].item():.7f}, byol-pytorch "
                  f"{losses[0].item():.7f}; max |difference| of the network's gradients {grads:.1e}")
        for opt in optimizers:
            opt.step()
        theirs.update_moving_average()
        ours.update_moving_average()
    target = dict(ours.target_encoder.net.named_parameters())
    apart = most((p, target[name]) for name, p in theirs.target_encoder.net.named_parameters()
                 if not name.startswith("fc."))
    print(f"  after 3 SGD steps and EMA updates: max |difference| of the target networks {apart:.1e}, of the "
          f"last losses {abs(losses[0].item() - losses[1].item()):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cifar10"), help="CIFAR-10's root")
    args = parser.parse_args()
    knn(args.data)
    loss()
    ema()
    schedule()
    heads()
    learner()


if __name__ == "__main__":
    main()
