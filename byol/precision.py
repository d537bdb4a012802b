"""Where a run computes and in what precision: the device (``train.device``: ``auto``, ``cpu``, ``cuda:N``), the
autocast dtype (``train.precision``: ``auto`` is bf16 where the device has bf16 arithmetic), and torch's usual
defaults around a run whatever the caller set.

Shared by pretraining (``train.py``), resuming (``resume.py``) and the steps after it (``pipeline.py``).
"""

from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Iterator, Optional, Union

import torch

from .backbones import strided_over_one_pixel
from .config import Config, ConfigError
from .dropin import BYOL
from . import distributed as dist


def resolve_device(name: str) -> torch.device:
    """``auto`` picks this process's CUDA device when there is one, else the CPU."""
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if name in ("auto", "cuda") and torch.cuda.is_available():
        local, count = dist.local_rank(), torch.cuda.device_count()
        if local >= count:  # more torchrun processes on this machine than GPUs: else torch's "invalid device
            # ordinal" (auto), or, for cuda, the current device, cuda:0, which distributed.init left it
            raise ConfigError(f"this is torchrun's process LOCAL_RANK={local}, but this machine has {count} CUDA "
                              f"GPU{'s' * (count != 1)}: start at most {count} a machine (--nproc_per_node={count}), "
                              "or train.device=cpu")
        if name == "auto":
            return torch.device(f"cuda:{local}")
    device = torch.device(name)
    if device.type == "cpu":  # one CPU device: cpu:0 is cpu (a note compared them and said a copy was made)
        return torch.device("cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no CUDA GPU is available; use train.device=cpu")
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and device.index is not None and device.index >= count:  # else torch's "invalid
        gpus = "cuda:0" + (f" to cuda:{count - 1}" if count > 1 else "")  # device ordinal", a traceback
        raise ConfigError(f"train.device={name} but this machine has {count} CUDA GPU{'s' * (count != 1)} ({gpus}); "
                          "choose one of them, or train.device=cuda")
    return device


@contextmanager
def usual_torch_defaults() -> Iterator[None]:
    """float32 as torch's default dtype, gradients on and autocast off, whatever the caller set (a
    notebook's ``torch.set_default_dtype(torch.float64)``, a call inside ``torch.no_grad()`` or
    ``torch.autocast``: user tests saw pretraining fail deep in autograd, eval on mixed dtypes, kNN on
    its votes' dtype, and results change while they said float32; ``train.precision`` is what sets
    autocast); the caller's put back on exit. Also a decorator. The default dtype is the process's:
    where the caller set another, its other threads see float32 meanwhile (grad mode and autocast are
    each thread's own). And the CPU as the default device, also where the caller set another
    (``torch.set_default_device("cuda")``, ``with torch.device(...)``: its tensors made without a device, a
    generator's state say, would land there: a review saw pretrain under "meta" fail, and its caller's
    random generators not put back). And float32 matrix products in full float32 (``"highest"``), whatever
    ``torch.set_float32_matmul_precision`` the caller chose (a notebook's ``"medium"`` made the CPU's oneDNN
    compute them in bf16: a sweep's run of the same seed gave other losses than in a fresh process, while it
    said float32)."""
    dtype = torch.get_default_dtype()
    if dtype != torch.float32:
        torch.set_default_dtype(torch.float32)
    try:
        with torch.inference_mode(False), torch.enable_grad(), _outside_autocast(), _cpu_by_default(), \
                _full_float32_matmul():
            yield
    finally:
        if dtype != torch.float32:
            torch.set_default_dtype(dtype)


@contextmanager
def _full_float32_matmul() -> Iterator[None]:
    """Within, float32 matrix products in full float32; after, the caller's precision as it was: torch's
    (``torch.set_float32_matmul_precision``) and each backend's, which torch >= 2.9 sets apart
    (``torch.backends.mkldnn.matmul.fp32_precision = "bf16"``, bf16 products on the CPU as "medium"'s; a
    review: set so, ``torch.get_float32_matmul_precision()`` raised, and every byol function with it)."""
    backends = [b for b in (getattr(torch.backends.mkldnn, "matmul", None), torch.backends.cuda.matmul)
                if hasattr(b, "fp32_precision")]
    each = [b.fp32_precision for b in backends]
    try:
        matmul = torch.get_float32_matmul_precision()
    except RuntimeError:  # (backends set apart: "a mix of the legacy and new APIs")
        matmul = None
    torch.set_float32_matmul_precision("highest")  # (each backend's too)
    try:
        yield
    finally:
        if matmul is not None:
            torch.set_float32_matmul_precision(matmul)
        for backend, precision in zip(backends, each):
            backend.fp32_precision = precision


def _cpu_by_default():
    """Within, tensors made without a device are the CPU's, whatever default device the caller set (a
    device context of its own, innermost, as ``with torch.device("cpu")`` is; torch's default device is each
    thread's own)."""
    default = getattr(torch, "get_default_device", None)  # (torch >= 2.3: none to set before it)
    return torch.device("cpu") if default is not None and default().type != "cpu" else nullcontext()


@contextmanager
def _outside_autocast() -> Iterator[None]:
    """Within, as outside any ``torch.autocast`` the caller entered or turned on: autocast off, and no
    enclosing context. Not off alone: an autocast inside another (the step's) keeps its bf16 copies of the
    weights until the outermost one ends, so that a run inside the caller's context, even one with
    ``enabled=False``, trained on the first step's copies. The caller's are emptied; all else is put back."""
    devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    enabled = {d: _autocast_enabled(d) for d in devices}
    depth = torch.autocast_increment_nesting() - 1  # the caller's contexts (this thread's)
    torch.autocast_decrement_nesting()
    if depth == 0 and not any(enabled.values()):  # the usual case: nothing to undo
        yield
        return
    undone = 0
    try:
        while undone < depth:
            torch.autocast_decrement_nesting()
            undone += 1
        torch.clear_autocast_cache()
        for d in devices:
            _autocast_enabled(d, False)
        yield
    finally:
        for d in devices:
            _autocast_enabled(d, enabled[d])
        for _ in range(undone):
            torch.autocast_increment_nesting()


def _autocast_enabled(device_type: str, set_to: Optional[bool] = None) -> bool:
    """Whether autocast is on for ``device_type`` (``set_to``: turned on or off first); the per-device
    calls came in torch 2.4, the CPU's and CUDA's own before."""
    try:
        if set_to is not None:
            torch.set_autocast_enabled(device_type, set_to)
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        cpu = device_type == "cpu"
        if set_to is not None:
            (torch.set_autocast_cpu_enabled if cpu else torch.set_autocast_enabled)(set_to)
        return torch.is_autocast_cpu_enabled() if cpu else torch.is_autocast_enabled()


def autocast_dtype(precision: str, device: Union[torch.device, str]) -> Optional[torch.dtype]:
    """bf16 where the device computes it natively (``auto``), or as asked; ``None`` means float32."""
    device = torch.device(device)  # "cpu" too, as extract_features takes it
    if precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    if precision == "bf16":
        if device.type == "cuda" and not native_bf16(device):
            raise ConfigError("train.precision=bf16 but this GPU has no bfloat16; use fp32")
        return torch.bfloat16
    raise ConfigError(f"train.precision={precision!r}; choose auto, bf16 or fp32")


def checked_precision(byol: BYOL, config: Config, device: torch.device,
                      amp: Optional[torch.dtype]) -> Optional[torch.dtype]:
    """``amp``, but float32 where ``train.precision=auto`` would train in bf16 on a CPU a network that torch's bf16
    convolutions get wrong (:func:`~byol.backbones.strided_over_one_pixel`: their weight gradients there are off by
    orders of magnitude, at times NaN; torch 2.14.1, benchmarks/results/cpu-amd-2026-12-06/); refused where
    ``train.precision=bf16`` asks for it."""
    if amp is None or device.type != "cpu":
        return amp
    size = config.data.image_size
    faulty = strided_over_one_pixel(byol.online.encoder, size)
    if not faulty:
        return amp
    why = (f"torch's bf16 convolutions on the CPU give wrong weight gradients (off by orders of magnitude, at times "
           f"NaN) for a strided convolution over a map one pixel high or wide, which {faulty[0]} is at "
           f"data.image_size={size}")
    if config.train.precision == "bf16":
        raise ConfigError(f"train.precision=bf16: {why}; use train.precision=fp32, a larger data.image_size or, for "
                          "a ResNet, model.cifar_stem=true")
    dist.note(f"train.precision=auto trains in float32 here, not bf16: {why}")
    return None


def bf16_taken(byol: BYOL, config: Config, device: torch.device) -> bool:
    """Whether ``train.precision=bf16`` trains ``byol`` on ``device``, not refused: on a GPU with bf16, on a CPU but
    for a strided convolution over one pixel (:func:`autocast_dtype`, :func:`checked_precision`, which refuse it).
    A resume offers it only where it is."""
    bf16 = replace(config, train=replace(config.train, precision="bf16"))
    try:
        checked_precision(byol, bf16, device, autocast_dtype("bf16", device))
    except ConfigError:
        return False
    return True


def evaluation_precision(encoder: torch.nn.Module, config: Config,
                         device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype ``byol eval`` and ``embed`` compute ``encoder``'s features in: ``train.precision``'s on
    ``device``, but float32 where ``auto`` would train it in float32 at ``config.data.image_size``
    (:func:`checked_precision`: a CPU, a strided convolution over one pixel). Evaluated on CIFAR or STL-10 that is
    the size it was trained at (load_encoder keeps it), so eval reproduces its kNN monitor, which scored it so; on a
    folder, the size given there (a review: the size a CIFAR run trained at is not known there)."""
    amp = autocast_dtype(config.train.precision, device)
    if amp is None or device.type != "cpu" or config.train.precision != "auto":
        return amp
    return None if strided_over_one_pixel(encoder, config.data.image_size) else amp


def precision_name(amp: Optional[torch.dtype]) -> str:
    """How a run's autocast dtype is said: in the closing table, in checkpoints, on resume."""
    return "bf16 autocast" if amp is not None else "float32"


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` has bf16 arithmetic: a GPU that supports it, or a CPU with AVX-512-BF16 or
    AMX, where oneDNN's bf16 convolutions run (a ResNet-18 step at batch 512 1.9x faster than in
    float32 on a 2-core AMD EPYC, BENCHMARKS.md). Elsewhere bf16 on a CPU is emulated, and slower."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    # Private in torch 2.x, and from torch 2.5 on; a torch without them (2.2 to 2.4) is taken to have neither.
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported",
                                                                          "_is_amx_tile_supported"))
