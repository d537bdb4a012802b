"""The target network: built once as a frozen deep copy, updated as an exponential moving average."""

import copy
import warnings
from operator import attrgetter

import torch
from torch import nn

from .errors import outside_stacklevel


_shape = attrgetter("shape")
_LOW_PRECISION = (torch.bfloat16, torch.float16)
# Measured with a ResNet-18 learner after two SGD steps: one EMA step at tau 0.996 changed 1.3% of its
# bfloat16 target's weights (9.5% in float16), 38% in float32; at tau 0.9999, 0.08% (float32: 38%).
_LOW_PRECISION_EMA = ("the target network is in {dtype}: each EMA step moves a weight by (1 - tau) of its distance "
                      "to the online one, mostly below {dtype}'s resolution, so it is rounded away and the target "
                      "barely moves; keep the learner in float32 and train under torch.autocast for bf16 speed")


def build_target(online: nn.Module) -> nn.Module:
    """Return a deep copy of ``online`` with gradients switched off.

    The target starts equal to the online network. The reference code instead initializes it apart,
    from another random key (its comment: no significant difference was seen); the paper does not say.
    """
    target = copy.deepcopy(online)
    target.requires_grad_(False)
    # A deep copy of an fx GraphModule is in training mode. train(), not the flag alone: a module may
    # act on the switch (torchvision's dual train/eval graphs); parents come first, so each module's
    # own mode is set last.
    for copied, original in zip(target.modules(), online.modules()):
        copied.train(original.training)
    return target


def own_tensors(modules: list[nn.Module], kind: str) -> list[torch.Tensor]:
    """The parameters (``kind`` ``"_parameters"``) or buffers (``"_buffers"``) of ``modules``, a module tree as
    ``modules()`` lists it, in the order and number of ``parameters()`` and ``buffers()``, which would each walk
    the tree again (four walks a step: ~0.3 ms of the host's time for a ResNet-18 learner, against two)."""
    seen, own = set(), []
    for m in modules:
        for t in getattr(m, kind).values():
            if t is not None and id(t) not in seen:  # (a tensor shared by two modules: once)
                seen.add(id(t))
                own.append(t)
    return own


@torch.no_grad()
def update_target(target: nn.Module, online: nn.Module, tau: float) -> None:
    """In-place EMA step ``ξ ← τ ξ + (1 - τ) θ`` (paper, eq. 1); buffers are copied.

    Buffers (BatchNorm running statistics) are copied from the online network, not averaged.
    The reference implementation instead keeps the target's own statistics from its forward
    passes. Training never uses them (the target runs in training mode, on batch statistics),
    and eval and export take the online encoder. A target whose parameters require gradients given with an
    online network whose do not (the two swapped), or whose parameters or buffers differ from the online
    network's in number or shape, is a ``ValueError``.
    """
    rate = float(tau)
    if not 0 <= rate <= 1:  # above 1 the target moves away from the online network, below 0 past it
        raise ValueError(f"tau must be in [0, 1] (the paper's 0.996 rising to 1), got {tau}")
    target_params, online_params, target_buffers, online_buffers = _pairs(target, online, warn=rate < 1)
    if target_params:
        torch._foreach_lerp_(target_params, online_params, 1.0 - rate)
    if target_buffers:  # one foreach copy, not a kernel per BatchNorm statistic
        torch._foreach_copy_(target_buffers, online_buffers)


@torch.no_grad()
def update_target_by(target: nn.Module, online: nn.Module, step: torch.Tensor) -> None:
    """:func:`update_target` with ``1 - τ`` read from ``step``, a 0-d tensor on the networks' device, when the
    kernels run (a CUDA graph that captured this replays it with the value written there since; its range is
    the writer's to check): ``ξ ← ξ + step (θ - ξ)``, three foreach ops where a number's lerp is one."""
    target_params, online_params, target_buffers, online_buffers = _pairs(target, online, warn=True)
    if target_params:
        moves = torch._foreach_sub(online_params, target_params)
        torch._foreach_mul_(moves, step)
        torch._foreach_add_(target_params, moves)
    if target_buffers:
        torch._foreach_copy_(target_buffers, online_buffers)


def _pairs(target: nn.Module, online: nn.Module, warn: bool) -> tuple[list, list, list, list]:
    """The target's and the online network's parameters, then their buffers, each list in the same order;
    ``warn``: of a target in low precision, where the EMA's steps round away."""
    target_tree, online_tree = list(target.modules()), list(online.modules())
    target_params, online_params = own_tensors(target_tree, "_parameters"), own_tensors(online_tree, "_parameters")
    if len(target_params) != len(online_params):
        raise ValueError("target and online networks have different parameter lists")
    # The lerp would broadcast an online (1, D) into a target (C, D), silently. Shapes are the host's: no device
    # sync; a ResNet-18 learner's take ~1/6 of the host time of this function's walks (a CUDA graph's replays: none)
    if list(map(_shape, target_params)) != list(map(_shape, online_params)):
        _refuse_shapes(target, online, "parameters")
    # (a user test: update_target(online, target, tau) moved the online network, and the target stayed at its init)
    if any(p.requires_grad for p in target_params) and not any(p.requires_grad for p in online_params):
        raise ValueError("the target's parameters require gradients and the online network's do not: the "
                         "arguments are swapped; give the target first, the one moved, "
                         "update_target(target, online, tau)")
    low = next((p.dtype for p in target_params if p.dtype in _LOW_PRECISION), None)
    if low is not None and warn:  # (the default filter shows it once)
        warnings.warn(_LOW_PRECISION_EMA.format(dtype=str(low).removeprefix("torch.")),
                      stacklevel=outside_stacklevel())  # (torch.no_grad's wrapper, update_moving_average: between)
    target_buffers, online_buffers = own_tensors(target_tree, "_buffers"), own_tensors(online_tree, "_buffers")
    if len(target_buffers) != len(online_buffers):
        raise ValueError("target and online networks have different buffer lists")
    if list(map(_shape, target_buffers)) != list(map(_shape, online_buffers)):
        _refuse_shapes(target, online, "buffers")
    return target_params, online_params, target_buffers, online_buffers


def _refuse_shapes(target: nn.Module, online: nn.Module, kind: str) -> None:
    """The ``ValueError`` of networks whose ``kind`` (parameters or buffers) pair up with other shapes, naming the
    first such pair (``named_parameters`` lists them in :func:`own_tensors`' order)."""
    named = {"parameters": nn.Module.named_parameters, "buffers": nn.Module.named_buffers}[kind]
    for (name, t), (_, o) in zip(named(target), named(online)):
        if t.shape != o.shape:
            raise ValueError(f"target and online networks' {kind} differ in shape: the target's {name} is "
                             f"{tuple(t.shape)}, the online network's {tuple(o.shape)}; the target must be a copy "
                             "of the online network (build_target)")
    raise ValueError(f"target and online networks' {kind} differ in shape")
