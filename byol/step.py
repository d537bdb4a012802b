"""One BYOL training step: both views augmented on the device, forward, backward, optimizer step.

The loop (``train.py``) calls :func:`train_step` and then the EMA update once per step. What makes
the step fast lives here:

* the views and the convolution weights in channels_last (NHWC), the layout cuDNN's tensor-core
  kernels and oneDNN's CPU kernels take without a reorder (``ViewsForward``);
* bf16 autocast where the device has bf16 arithmetic (the caller's ``amp``; ``precision.native_bf16``);
* ``torch.compile`` of the loss computation (forward and backward) and of each view's
  augmentation, with a fallback to eager where compiling is unavailable or fails
  (:mod:`byol.compiling`, which gives :func:`train_step` what it runs);
* no host synchronization: the loss comes back as a device tensor, to be accumulated on the
  device and read every N steps;
* on the CPU, freed memory kept for the next step instead of being handed back to the operating
  system and faulted in again (:func:`byol.allocator.keep_freed_memory`).
"""

import math
import sys
from typing import Optional, Sequence

import torch
from torch import nn

from . import distributed as dist
from .backbones import HookedLayer
from .compiling import AugmentFn, Compiled, compile_step
from .dropin import BYOL
from .faults import NonFiniteGuard
from .monitor import effective_rank, normalized_std
from .schedules import cosine_lr, tau_schedule


def train_step(model: nn.Module, byol: BYOL, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               generator: Optional[torch.Generator], amp: Optional[torch.dtype],
               augment: Optional[Sequence[AugmentFn]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment both views on the device, forward, backward, optimizer step; returns (loss, z1).

    Args:
        model: computes ``(loss, z1)`` from two views: :class:`ViewsForward`, or it wrapped in
            DDP and/or :class:`Compiled`.
        byol: the model, for its view recipes when ``augment`` is not given.
        images: (B, 3, H, W) uint8 batch on the device.
        generator: the augmentation RNG, on the images' device (a CUDA generator draws without a sync).
        amp: autocast dtype (bf16 where the device has it, ``precision.native_bf16``) or None for float32.
        augment: the two views' augmentations, ``fn(images, generator)``; default byol's own
            (``byol.compiling.compile_step`` gives compiled ones).

    Returns:
        The loss (a detached 0-d device tensor: no host sync) and the online projections of view 1.
    """
    # torch compiles the backward at the first backward through a compiled forward: where that
    # fails, the step is done again eagerly, from the same draws (the weights are not touched yet).
    probe = model if isinstance(model, Compiled) and model.backward_unproven else None
    drawn = generator.get_state() if probe is not None and generator is not None else None
    loss, z1 = views_loss(model, byol, images, generator, amp, augment)
    optimizer.zero_grad(set_to_none=True)
    failed = False
    try:
        loss.backward()
    except Exception as e:
        if probe is None or not probe.backward_failed(e):
            raise
        failed = True
    if failed:  # redone eagerly (BatchNorm's running statistics take this batch twice), out of the
        del loss, z1  # except block and with the failed graph freed first
        if drawn is not None:
            generator.set_state(drawn)
        return train_step(model, byol, optimizer, images, generator, amp, augment)
    if probe is not None:
        probe.backward_unproven = False
    optimizer.step()
    return loss.detach(), z1


def views_loss(model: nn.Module, byol: BYOL, images: torch.Tensor, generator: Optional[torch.Generator],
               amp: Optional[torch.dtype], augment: Optional[Sequence[AugmentFn]] = None,
               autocast_cache: Optional[bool] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both views augmented, then ``model``'s (loss, z1) under autocast: :func:`train_step`'s
    forward (arguments as there). ``autocast_cache=False`` for a CUDA graph's capture (None: torch's setting)."""
    augment1, augment2 = augment if augment is not None else (byol.augment_fn, byol.augment_fn2)
    view1 = augment1(images, generator)
    view2 = augment2(images, generator)
    with torch.autocast(images.device.type, dtype=amp or torch.float32, enabled=amp is not None,
                        cache_enabled=autocast_cache):
        return model(view1, view2)


class LoopStep:
    """One iteration of the pretraining loop, as ``byol.train.pretrain`` runs it and
    ``benchmarks.speed`` times it: the schedules, the non-finite guard's snapshot,
    :func:`train_step`, the EMA update, the guard's settle, and the metrics summed on the device.

    Nothing in a call reads a value back to the host; :meth:`read` does, every ``log_every`` steps.

    Args:
        forward, byol, optimizer, generator, amp, augment: as for :func:`train_step`.
        lr: the peak learning rate (already scaled by the batch size).
        warmup_steps, total_steps, tau_base: the schedules' (:mod:`byol.schedules`).
    """

    def __init__(self, forward: nn.Module, byol: BYOL, optimizer: torch.optim.Optimizer,
                 generator: Optional[torch.Generator], amp: Optional[torch.dtype],
                 augment: Optional[Sequence[AugmentFn]], lr: float, warmup_steps: int, total_steps: int,
                 tau_base: float):
        self.forward, self.byol, self.optimizer, self.generator = forward, byol, optimizer, generator
        self.amp, self.augment = amp, augment
        # Over the whole learner, target included: the EMA update runs before the settle (_finish).
        self.guard = NonFiniteGuard([byol], optimizer, next(byol.parameters()).device)
        self.lr, self.warmup_steps, self.total_steps, self.tau_base = lr, warmup_steps, total_steps, tau_base
        self.sums = torch.zeros(3, device=self.guard.streak.device)  # loss, z std, good steps since the last read
        self.tau = tau_base

    def __call__(self, step: int, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on ``images`` (a uint8 batch on the device) as global step ``step``; returns (loss, z1)."""
        self._schedules(step)
        self.guard.snapshot()
        loss, z1 = train_step(self.forward, self.byol, self.optimizer, images, self.generator, self.amp,
                              self.augment)
        return self._finish(loss, z1)

    def _schedules(self, step: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = cosine_lr(step, self.total_steps, self.lr, self.warmup_steps)
        self.tau = tau_schedule(step, self.total_steps, self.tau_base)

    def _finish(self, loss: torch.Tensor, z1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """After the optimizer step: the EMA update, the guard's settle (a step it undoes moved the
        target too), the metrics' sums."""
        self._update_target()
        ok = self.guard.settle(loss)
        self.sums += step_metrics(loss, z1, ok)
        return loss, z1

    def _update_target(self) -> None:
        self.byol.update_target(self.tau)

    def read(self, z1: torch.Tensor) -> dict:
        """The host sync: the means since the last read, the effective rank of ``z1`` (the last
        batch's projections; an SVD, which syncs on CUDA by itself, so it is computed here only)
        and the guard's counts."""
        loss_sum, std_sum, good = self.sums.tolist()
        self.sums.zero_()
        eff_rank = effective_rank(z1).item() if len(z1) > 1 and torch.isfinite(z1).all() else float("nan")
        mean = (lambda v: v / good) if good else (lambda v: float("nan"))
        record = {"train/loss": mean(loss_sum), "monitor/z_std": mean(std_sum), "monitor/effective_rank": eff_rank,
                  "train/nonfinite_streak": self.guard.reset_max(),
                  "train/skipped_steps": int(self.guard.skipped.item()),
                  "train/lr": self.optimizer.param_groups[0]["lr"], "train/tau": self.tau}
        record["monitor/z_std_ratio"] = record["monitor/z_std"] * math.sqrt(z1.shape[1])
        record["monitor/effective_rank_ratio"] = eff_rank / min(z1.shape)
        return record


def step_metrics(loss: torch.Tensor, z1: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """A step's share of the sums :class:`LoopStep` reads: (loss, z std, 1), zeros for a step the
    guard undid (``ok`` False). On the device, no host sync."""
    okf = ok.float()
    # A share of one image (train.batch_size = processes under torchrun) has no spread to measure: NaN, as its
    # effective rank in read, not torch's std of one row, which warned on every process, and a rank of 1, which
    # the collapse monitor took for a collapse (a user test)
    std = normalized_std(z1) if len(z1) > 1 else torch.full((), math.nan, device=z1.device)
    # where, not a product: an undone step's NaN times 0 is NaN, which blanked its whole record's std
    return torch.stack([torch.where(ok, loss, 0.0), torch.where(ok, std, 0.0), okf])


def channels_last_crash(byol: BYOL, batch: int, device: torch.device, image_size: Optional[int] = None
                        ) -> Optional[str]:
    """Where channels_last would crash this step, why (for a note); None where it would not. On a
    CPU, torch 2.14's oneDNN corrupts the heap (abort, segfault, or with more threads a hang) in the
    weight gradient of a 1x1 stride-2 convolution with 2 to 7 input channels at any batch (a ResNet
    narrower than 8, as ``model.width=4``), and with 8 to 15 (as ``model.width=8``) at an odd batch,
    or at views larger than 32x32 (``image_size``). Measured with one such convolution, 10 steps, one thread: 2 to 7
    input channels crash at batches 16, 32 and 64 and at 8 to 32 px (7 passed at 8 px); 1, 8 to 16 do
    not there; at batch 13 (7 and 15 too) 4, 8 and 12 crash, 16 to 64 do not. 3x3 and 1x1 stride-1
    convolutions with 2 to 12 do not; NCHW does not. With the width-8 CIFAR-stem ResNet-18 at batch 16:
    56, 64, 128 and 224 px crash (96 did once); 24, 32, 40 and 48 do not, nor 24 and 32 px at batches
    8, 64 and 256."""
    narrow = [m.in_channels for m in byol.online.modules()
              if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels < 16]
    if device.type != "cpu" or not narrow:
        return None
    if min(narrow) < 8:
        return "a strided 1x1 convolution narrower than 8 channels"
    if batch * (2 if byol.concat_views else 1) % 2 == 1:
        return f"an odd batch of {batch}"
    return f"views of {image_size}x{image_size}" if (image_size or 0) > 32 else None


class ViewsForward(nn.Module):
    """``forward_views`` as a module's forward, so DDP and torch.compile wrap the loss computation.

    With ``channels_last`` (the default) it converts ``byol``'s parameters to channels_last in
    place (the same parameter objects, so an optimizer built before keeps working) and feeds the
    views in that layout: convolutions then run without layout reorders, on the GPU (cuDNN NHWC
    tensor-core kernels) and on the CPU (oneDNN); see BENCHMARKS.md for the measurements.
    """

    def __init__(self, byol: BYOL, channels_last: bool = True):
        super().__init__()
        self.byol = byol
        self.memory_format = to_step_layout(byol, channels_last)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        view1 = view1.contiguous(memory_format=self.memory_format)
        view2 = view2.contiguous(memory_format=self.memory_format)
        return self.byol.forward_views(view1, view2)


def to_step_layout(byol: BYOL, channels_last: bool) -> torch.memory_format:
    """``byol``'s parameters put in the layout the steps run in (channels_last, in place), which is returned."""
    if channels_last:
        byol.to(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def step_forward(byol: BYOL, compile: object, device: torch.device, world: int, rank: int, batch: int,
                 image_size: int):
    """The step's (loss computation, augmentations): channels_last where that does not crash,
    DDP-wrapped under torchrun, compiled with ``train.compile=true``; augmentations None for byol's
    own view recipes."""
    crash = channels_last_crash(byol, batch, device, image_size)
    if crash and rank == 0:
        print(f"note: this narrow encoder trains in NCHW, not channels_last, on the CPU ({crash}): "
              "channels_last crashes torch's convolution there", file=sys.stderr)
    views = ViewsForward(byol, channels_last=crash is None)
    forward = dist.wrap_ddp(views, device, isinstance(byol.online.encoder, HookedLayer)) if world > 1 else views
    # auto is eager: on an H100 (BENCHMARKS.md, "GPU") the compiled step's losses equal the eager one's, but
    # its compile took 77 s and it ran 1.29x the eager step, where train.cuda_graph ran 1.51x (2 rounds), no compile
    # (on an H200 before, its first steps did not end within 4 minutes). On a CPU it does not pay.
    if compile is not True:
        return forward, None
    if rank == 0:
        print("compiling the training step (torch.compile): the first steps can take several minutes",
              file=sys.stderr)
    return compile_step(forward, byol)  # loss and both augmentations; eager where that fails
