"""Optimizers: LARS as in the paper, SGD and AdamW, with the paper's parameter groups."""

from typing import Iterable, Optional

import torch
from torch import nn


# Normalization layers, whose parameters are all excluded whatever their shape (a LayerNorm over (C, H, W) has 3-D ones)
_NORMS = tuple(getattr(nn, name) for name in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm",
                                              "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "GroupNorm",
                                              "LayerNorm", "LocalResponseNorm", "RMSNorm") if hasattr(nn, name))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into two groups.

    Biases and normalization parameters get no weight decay and no LARS adaptation (paper,
    appendix C: "we exclude the biases and batch normalization parameters from both LARS
    adaptation and weight decay"): every 1-D parameter, and whatever its shape every parameter of a
    normalization layer (BatchNorm, GroupNorm, LayerNorm, ...) and every one named ``bias``. Each
    parameter once (one shared by two modules), excluded where either names it so.
    """
    if not isinstance(model, nn.Module):  # model.parameters() failed on "no attribute 'parameters'"
        raise TypeError(f"param_groups takes the model (an nn.Module), not {type(model).__name__}: it tells biases and "
                        "norm layers from weights by the parameters' shapes and layers, "
                        "param_groups(model, weight_decay)")
    # (by shape alone, a LayerNorm([C, H, W])'s weight and bias were decayed and LARS-adapted: a review)
    norm_or_bias = {id(p) for m in model.modules() for name, p in m.named_parameters(recurse=False)
                    if isinstance(m, _NORMS) or name == "bias"}
    regular, excluded = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (excluded if p.ndim <= 1 or id(p) in norm_or_bias else regular).append(p)
    return [
        {"params": regular, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": excluded, "weight_decay": 0.0, "lars_exclude": True},
    ]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017), SGD with momentum underneath.

    Per parameter ``w`` with gradient ``g``: ``g ← g + wd·w``; unless the group sets
    ``lars_exclude``, ``g ← η ||w|| / (||g|| + ε) · g`` (η the trust coefficient, ε ``eps``, which the
    reference code does without; skipped when a norm is zero); then ``v ← m v + g`` and
    ``w ← w - lr v``. With ``clip`` the trust ratio is capped so that a layer's step is at most plain
    SGD's: ``g ← min(η ||w|| / ||g|| / lr, 1) · g`` (LARC's clipping, as solo-learn's CIFAR recipes use
    it with η = 0.02; the paper does not clip).
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 1e-8, clip: bool = False):
        for name, value in (("learning rate", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not value >= 0:  # (as torch's SGD; a negative one was taken)
                raise ValueError(f"invalid {name} {value}: it must be >= 0")
        if not trust_coefficient > 0:
            raise ValueError(f"invalid trust_coefficient {trust_coefficient}: it must be > 0 (the paper's 0.001)")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps, clip=clip, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None, lr: Optional[torch.Tensor] = None):
        """One update; ``lr``, a 0-d tensor on the parameters' device, is then every group's learning rate in
        place of ``group["lr"]``, read by the kernels when they run: a CUDA graph that captured this step
        replays it with the value written there since (``byol.cuda_graph``)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            rate = group["lr"] if lr is None else lr
            grads = [p.grad for p in params]
            if group["weight_decay"] != 0:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if not group["lars_exclude"]:
                # All trust ratios at once, as one (n,) tensor: a handful of kernels per step
                # instead of several per parameter (what bounds a small-image step on a GPU).
                w_norms = torch.stack(torch._foreach_norm(params))
                g_norms = torch.stack(torch._foreach_norm(grads))
                trust = group["trust_coefficient"] * w_norms / (g_norms + group["eps"])
                if group["clip"]:  # lr 0 (a schedule's end) gives inf, clamped to 1
                    trust = (trust / rate).clamp_(max=1.0)
                # No adaptation where either norm is zero (fresh zero-init weights, no signal).
                scales = torch.where((w_norms > 0) & (g_norms > 0), trust, 1.0)
                grads = torch._foreach_mul(grads, scales.unbind())
            bufs, old_bufs, old_grads = [], [], []
            for p, g in zip(params, grads):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    old_bufs.append(state["momentum_buffer"])
                    old_grads.append(g)
                bufs.append(state["momentum_buffer"])
            if old_bufs:
                torch._foreach_mul_(old_bufs, group["momentum"])
                torch._foreach_add_(old_bufs, old_grads)
            if lr is None:
                torch._foreach_add_(params, bufs, alpha=-rate)
            else:  # (alpha takes a number only)
                torch._foreach_add_(params, torch._foreach_mul(bufs, -rate))
        return loss


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float,
                    momentum: float = 0.9, trust_coefficient: float = 0.001,
                    lars_clip: bool = False, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """Build ``lars``, ``sgd`` or ``adamw`` over :func:`param_groups` of ``model`` (``betas``: AdamW's)."""
    groups = param_groups(model, weight_decay)
    name = name.lower()
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
                    trust_coefficient=trust_coefficient, clip=lars_clip)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=betas)
    raise ValueError(f"unknown optimizer {name!r}; choose lars, sgd or adamw")
