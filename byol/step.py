"""One BYOL training step: both views augmented on the device, forward, backward, optimizer step."""

from typing import Optional

import torch
from torch import nn

from .model import BYOL


def train_step(model: nn.Module, byol: BYOL, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               generator: torch.Generator, amp: Optional[torch.dtype]) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment both views on the device, forward, backward, optimizer step; returns (loss, z1)."""
    view1 = byol.augment_fn(images, generator)
    view2 = byol.augment_fn2(images, generator)
    with torch.autocast(images.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        loss, z1 = model(view1, view2)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), z1


class ViewsForward(nn.Module):
    """``forward_views`` as a module's forward, so DDP and torch.compile wrap the loss computation."""

    def __init__(self, byol: BYOL):
        super().__init__()
        self.byol = byol

    def forward(self, view1, view2):
        return self.byol.forward_views(view1, view2)
