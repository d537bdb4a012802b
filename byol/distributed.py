"""torchrun-based distributed training: init from the environment, rank helpers, DDP wrapping."""

import contextlib
import os
import sys
import threading
from typing import Iterator

import torch
from torch import nn


def init() -> tuple[int, int]:
    """Join the process group that torchrun describes in the environment; return (rank, world size).

    Without torchrun (no ``WORLD_SIZE``) this is a single process: (0, 1).
    """
    world = _env_count("WORLD_SIZE", 1, least=1)
    if world == 1:
        _note_a_slurm_step_of_several_tasks()
        return 0, 1
    import torch.distributed as td
    if not td.is_initialized():
        # gloo for CPU tensors (train.device=cpu, CPU-side collectives), NCCL for CUDA ones where torch has
        # it (Windows' builds have not: gloo for both there)
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and td.is_nccl_available() else "gloo"
        if torch.cuda.is_available() and local_rank() < torch.cuda.device_count():  # (else build says why, or
            torch.cuda.set_device(local_rank())  # this process is one of train.device=cpu's)
        try:
            td.init_process_group(backend)
        except ValueError as e:  # torchrun's other variables missing or wrong (RANK, MASTER_ADDR, ...)
            from .config import ConfigError
            raise ConfigError(f"WORLD_SIZE={world} asks for {world} processes, but the process group could not be "
                              f"joined ({e}); start byol with torchrun, which sets that and the rest, or unset "
                              "WORLD_SIZE to run as one process") from None
    return td.get_rank(), td.get_world_size()


def _note_a_slurm_step_of_several_tasks() -> None:
    """A note, once a process and by Slurm's task 0, where ``srun`` started this command as one of several tasks
    without torchrun: byol reads torchrun's variables only, so each task runs on its own (a user test: of
    ``srun --ntasks=2 byol pretrain``, one task trained alone and the other said another run was writing the
    folder; on nodes that share no file system, each trained its own run unnoticed). Not refused: a sweep's
    tasks (``srun --ntasks=4 python sweep.py``, a run each) are several on purpose. A job script's own step,
    which runs one command, has no SLURM_STEP_NUM_TASKS."""
    global _slurm_noted
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS", "1")
    if _slurm_noted or not tasks.isdigit() or int(tasks) < 2 or os.environ.get("SLURM_PROCID", "0") != "0" \
            or "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun of one process a task: "only under torchrun" misreads
        return
    _slurm_noted = True
    note(f"Slurm started this command as {tasks} tasks (SLURM_STEP_NUM_TASKS={tasks}), and byol runs several "
         "processes as one run only under torchrun: each task runs on its own (for one run across them, start one "
         "task a node that runs torchrun: srun --ntasks-per-node=1 torchrun --nnodes=$SLURM_NNODES "
         "--nproc_per_node=GPUS --rdzv_backend=c10d --rdzv_endpoint=HOST:29400 -m byol ...)")


_slurm_noted = False


def shutdown() -> None:
    """Leave the process group, if one was joined. Without this, a torchrun process can abort at
    exit ("terminate called without an active exception") while gloo's threads are torn down."""
    import torch.distributed as td
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def rank() -> int:
    """This process's global rank (0 without torchrun)."""
    import torch.distributed as td
    return td.get_rank() if td.is_available() and td.is_initialized() else 0


def note(message: str) -> None:
    """``note: message`` on stderr, once: from rank 0 (every process of a torchrun job runs the same code);
    kept too in the lists of the :func:`noted` blocks open."""
    for heard in getattr(_heard, "open", ()):
        heard.append(message)
    if rank() == 0:
        print(f"note: {message}", file=sys.stderr)


# The lists of the noted() blocks open now, each thread's own: a result keeps its own computation's notes, not
# those of another thread's (a sweep's byol.knn calls in threads)
_heard = threading.local()


@contextlib.contextmanager
def noted() -> Iterator[list[str]]:
    """The notes said inside the block, in order (an evaluation's result keeps those said while it
    was computed: a note that its accuracy is inflated was lost with the terminal's scroll-back)."""
    heard: list[str] = []
    if not hasattr(_heard, "open"):
        _heard.open = []
    _heard.open.append(heard)
    try:
        yield heard
    finally:  # this block's list itself (list.remove took the first equal one: an enclosing block's)
        _heard.open = [h for h in _heard.open if h is not heard]


def world_size() -> int:
    """The number of processes (1 without torchrun)."""
    import torch.distributed as td
    return td.get_world_size() if td.is_available() and td.is_initialized() else 1


def local_rank() -> int:
    """This process's rank on its machine: torchrun's LOCAL_RANK; 0 in one process (no WORLD_SIZE, or 1), where
    a LOCAL_RANK is a cluster's or another launcher's, not ours (its process took cuda:1 of one GPU and failed)."""
    if _env_count("WORLD_SIZE", 1, least=1) == 1:
        return 0
    return _env_count("LOCAL_RANK", 0, least=0)


def _env_count(name: str, default: int, least: int) -> int:
    """A whole number >= ``least`` torchrun sets in the environment (``default`` where it is not set);
    anything else is a :class:`~byol.config.ConfigError` (a traceback said it: a user's own launcher
    set it wrong)."""
    value = os.environ.get(name, str(default))
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < least:
        from .config import ConfigError
        raise ConfigError(f"the environment variable {name} is {value!r:.40}, not a whole number >= {least}: "
                          "torchrun sets it for each process; unset it to run as one process")
    return number


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm statistics over the global batch, as the paper computes them.

    PyTorch's SyncBatchNorm on the GPU; :class:`GlobalBatchNorm` on the CPU, where PyTorch's
    refuses to run (gloo clusters and the CPU test of this equivalence).
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(model, name, GlobalBatchNorm.like(child))
        else:
            convert_sync_batchnorm(child, device)
    return model


class _SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over all ranks, differentiable: each rank's output depends on every rank's
    input, so the gradient of an input is the sum of the output gradients over ranks. (torch's own,
    ``torch.distributed.nn.functional.all_reduce``, is deprecated and warns on every call.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as td
        x = x.clone()
        td.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as td
        grad = grad.clone()
        td.all_reduce(grad)
        return grad


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over all ranks, differentiably (:class:`_SumOverRanks`)."""
    return _SumOverRanks.apply(x)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalization with statistics summed over all ranks (differentiable all_reduce)."""

    @classmethod
    def like(cls, bn: nn.modules.batchnorm._BatchNorm) -> "GlobalBatchNorm":
        """One in ``bn``'s place that shares its parameters and statistics (not a copy of them)."""
        source = next((t for t in (bn.running_mean, bn.weight) if t is not None), None)  # its device and dtype
        factory = {} if source is None else {"device": source.device, "dtype": source.dtype}
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, **factory)
        if bn.affine:  # keep the parameter objects, so optimizers and the feature extractor see them
            new.weight, new.bias = bn.weight, bn.bias
        # and the statistics, as torch's SyncBatchNorm.convert_sync_batchnorm does: bn holds what training computed
        # (a network given to byol.pretrain, whose own layers are put back after a torchrun)
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
        return new.train(bn.training)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        # In float32 at least (float64 stays so): sums and counts in bf16 (under autocast, or of a
        # bfloat16 network) lose digits. The running statistics keep their own dtype (float32 under
        # autocast, the network's where it was converted), and the output has the input's, as BatchNorm's.
        # (Under bf16 autograd keeps this float32 copy: twice a bf16 input's memory, for every BatchNorm
        # that torchrun's conversion made one of this, the encoder's too.)
        dtype, x = x.dtype, x.to(torch.promote_types(x.dtype, torch.float32))
        dims = [0, *range(2, x.dim())]
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        c = self.num_features
        stats = sum_over_ranks(torch.cat([x.sum(dims), count]))
        n = stats[-1]
        mean = stats[:c] / n
        shape = [1, c] + [1] * (x.dim() - 2)
        # Two passes: E[(x - mean)^2], not E[x^2] - mean^2, which cancels catastrophically in
        # float32 for channels whose mean is large next to their spread.
        var = sum_over_ranks((x - mean.view(shape)).pow(2).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                # momentum=None: a cumulative average, as BatchNorm's and SyncBatchNorm's (not 0.1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                self.running_var.lerp_((var.detach() * n / (n - 1)).to(self.running_var.dtype), m)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(dtype)


def wrap_ddp(module: nn.Module, device: torch.device, find_unused: bool = False) -> nn.Module:
    """``module`` under DDP; ``find_unused`` where some of its parameters get no gradient (a network cut by a
    forward hook, whose layers after the cut run unused: else DDP fails the second step, waiting for them)."""
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)


def barrier() -> None:
    """Each rank waits for all the others to get here (nothing where no process group is up)."""
    import torch.distributed as td
    if td.is_available() and td.is_initialized():
        td.barrier()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any (a collective: call it on all ranks)."""
    import torch.distributed as td
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return bool(t.item())


def gather_rows(rows: torch.Tensor, indices: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """Every rank's ``rows`` put at their ``indices`` of an (n, ...) tensor, on every rank (all_gather)."""
    import torch.distributed as td
    world = td.get_world_size()
    size = -(-n // world)
    padded = torch.zeros((size, *rows.shape[1:]), dtype=rows.dtype, device=device)
    padded[:len(rows)] = rows.to(device)
    padded_idx = torch.full((size,), -1, dtype=torch.int64, device=device)
    padded_idx[:len(indices)] = indices.to(device)
    all_rows = [torch.empty_like(padded) for _ in range(world)]
    all_idx = [torch.empty_like(padded_idx) for _ in range(world)]
    td.all_gather(all_rows, padded)
    td.all_gather(all_idx, padded_idx)
    out = torch.zeros((n, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)  # rows no rank had: 0
    for r, i in zip(all_rows, all_idx):
        keep = i >= 0
        out[i[keep].to(rows.device)] = r[keep].to(rows.device)
    return out


def gather_generator_states(generator: torch.Generator) -> list[torch.Tensor]:
    """Every rank's generator state (CPU byte tensors), in rank order, on every rank."""
    import torch.distributed as td
    states: list = [None] * td.get_world_size()
    td.all_gather_object(states, generator.get_state())
    return [torch.as_tensor(s) for s in states]


def merge_dicts(part: dict) -> dict:
    """The union of every rank's ``part`` (e.g. the bad files each rank met), on every rank."""
    import torch.distributed as td
    if not (td.is_available() and td.is_initialized()) or td.get_world_size() == 1:
        return dict(part)
    parts: list = [None] * td.get_world_size()
    td.all_gather_object(parts, part)
    return {k: v for p in parts for k, v in p.items()}


def all_ranks_ok(ok: torch.Tensor) -> torch.Tensor:
    """``ok`` true on every rank (a device-side all_reduce MIN; no host sync)."""
    import torch.distributed as td
    if not (td.is_available() and td.is_initialized()) or td.get_world_size() == 1:
        return ok
    flag = ok.to(torch.int32)
    td.all_reduce(flag, op=td.ReduceOp.MIN)
    return flag.bool()
