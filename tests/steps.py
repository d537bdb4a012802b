"""Small BYOL models and pretrain's loop body over them, for the tests of the step and its CUDA graph."""

import torch
from torch import nn

from byol import BYOL
from byol.augment import Augment, cifar_views
from byol.backbones import resnet
from byol.optim import build_optimizer
from byol.step import LoopStep, ViewsForward

SIZE = 16


def tiny_byol(seed: int = 0) -> BYOL:
    torch.manual_seed(seed)
    view1, view2 = cifar_views(SIZE)
    return BYOL(resnet("resnet18", cifar_stem=True, width=8), image_size=SIZE, hidden_layer="avgpool",
                projection_size=16, projection_hidden_size=32, augment_fn=Augment(view1), augment_fn2=Augment(view2))


def optimizer_of(byol: BYOL, lr: float = 0.1) -> torch.optim.Optimizer:
    return build_optimizer("lars", nn.ModuleList([byol.online, byol.predictor]), lr=lr, weight_decay=1e-4)


def images(n: int = 8, seed: int = 0, device="cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g).to(device)


def make_loop_step(byol, forward=None, generator=None, augment=None, device="cpu", step_class=LoopStep, lr=0.1,
                   **kwargs):
    """pretrain's loop body (``LoopStep``: schedules, guard, step, EMA, metrics on the device) over
    ``byol``; by default eager (``ViewsForward``) with a generator seeded 0."""
    optimizer = optimizer_of(byol, lr)
    forward = forward if forward is not None else ViewsForward(byol)
    generator = generator if generator is not None else torch.Generator(device=device).manual_seed(0)
    return step_class(forward, byol, optimizer, generator, None, augment, lr=lr, warmup_steps=2,
                      total_steps=100, tau_base=0.99, **kwargs)


def loop_steps(byol, forward, batches, generator, steps, device, augment=None):
    """Steps of pretrain's loop body (:func:`make_loop_step`)."""
    loop_step = make_loop_step(byol, forward, generator, augment, device)
    it = iter(batches)
    for step in range(steps):
        batch, _, _ = next(it)
        loop_step(step, batch)
    return loop_step
