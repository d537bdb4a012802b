"""torchrun-based distributed training: init from the environment, rank helpers, DDP wrapping."""

import os

import torch
from torch import nn


def init() -> tuple[int, int]:
    """Join the process group that torchrun describes in the environment; return (rank, world size).

    Without torchrun (no ``WORLD_SIZE``) this is a single process: (0, 1).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as td
    if not td.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        td.init_process_group(backend)
    return td.get_rank(), td.get_world_size()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """BatchNorm statistics over the global batch, as the paper computes them."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any (a collective: call it on all ranks)."""
    import torch.distributed as td
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return bool(t.item())
