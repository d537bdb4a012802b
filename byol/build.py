"""From a config to what a run is made of: the device and precision, the model with its view
recipes, and the size its images are decoded at (the data itself: ``train_data.py``).

Shared by pretraining (``train.py``) and the steps after it (``pipeline.py``).
"""

from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator, Optional, Union

import torch
from torch import nn

from .augment import Augment, ViewConfig, view_presets
from .backbones import NetDoesNotRun, cut_at, resnet, strided_over_one_pixel
from .config import Config, ConfigError
from .datasets import NATIVE_SIZE
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
    each thread's own)."""
    dtype = torch.get_default_dtype()
    if dtype != torch.float32:
        torch.set_default_dtype(torch.float32)
    try:
        with torch.inference_mode(False), torch.enable_grad(), _outside_autocast():
            yield
    finally:
        if dtype != torch.float32:
            torch.set_default_dtype(dtype)


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


def build_model(config: Config, net: Optional[nn.Module] = None, hidden_layer: Union[str, int, None] = -2) -> BYOL:
    """The BYOL model of a config: backbone by name, cut at its average pool, with its view recipes; or
    ``net``, a network given from Python, cut at ``hidden_layer`` as :class:`~byol.BYOL` cuts it."""
    m = config.model
    if net is None:
        # Cut here, not by BYOL: these ResNets trace, and a failure must not fall back to a hook (other
        # checkpoint keys, no TorchScript export, DDP's unused parameters).
        net = cut_at(resnet(m.backbone, cifar_stem=m.cifar_stem, width=m.width), "avgpool", hook_fallback=False)
        hidden_layer = None
    view1, view2 = views_of(config)
    size = config.data.image_size
    try:
        return BYOL(net, image_size=size, hidden_layer=hidden_layer,
                    projection_size=m.projection_size, projection_hidden_size=m.projection_hidden_size,
                    augment_fn=Augment(view1), augment_fn2=Augment(view2), moving_average_decay=config.train.tau_base,
                    use_predictor=m.use_predictor, concat_views=m.concat_views,
                    sync_batchnorm=False)  # under torchrun the loop converts the whole model (convert_sync_batchnorm)
    except NetDoesNotRun as e:  # (a user test: the advice was BYOL's feature_dim=, which no run can be given)
        raise ValueError(f"net does not run on {size}x{size} images, the size of the run's views (data.image_size="
                         f"{size}): {e.why}; give a network that takes (B, 3, {size}, {size}) images, or set "
                         "data.image_size to a size it takes") from None


def schedule_of(config: Config, steps_per_epoch: int) -> tuple[float, int, int]:
    """The training loop's base learning rate (``optim.lr`` per 256 images, scaled to the batch),
    warm-up steps and total steps."""
    t, o = config.train, config.optim
    return o.lr * t.batch_size / 256, round(o.warmup_epochs * steps_per_epoch), t.epochs * steps_per_epoch


def end_step_of(config: Config, total_steps: int) -> int:
    """The step a run ends at: its schedules' ``total_steps``, or ``train.max_steps`` where that is sooner."""
    return min(total_steps, config.train.max_steps) if config.train.max_steps else total_steps


def views_of(config: Config) -> tuple[ViewConfig, ViewConfig]:
    """The two view recipes of a config."""
    try:
        a = config.augment
        views = view_presets(a.preset, config.data.image_size)
        if a.crop_min_scale is not None:
            views = tuple(replace(view, crop_scale=(a.crop_min_scale, 1.0)) for view in views)
        return (_over(views[0], blur_p=a.view1_blur_p, solarize_p=a.view1_solarize_p),
                _over(views[1], blur_p=a.view2_blur_p, solarize_p=a.view2_solarize_p))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _over(view: ViewConfig, **given: Optional[float]) -> ViewConfig:
    """``view`` with the settings ``given`` that are not None (null: the preset's)."""
    return replace(view, **{name: value for name, value in given.items() if value is not None})


def load_size(config: Config) -> int:
    """The size images are decoded at: a folder's ``data.load_size``, by default 8/7 of ``data.image_size``
    (room for the crops); CIFAR's and STL-10's own (32, 96), at which they are stored and read, and at
    which eval and embed of a folder feed an encoder trained on them."""
    d = config.data
    if d.dataset != "folder":
        return NATIVE_SIZE.get(d.dataset, d.image_size)  # (an unknown data set: refused where it is read)
    return d.load_size or round(d.image_size * 8 / 7)


def eval_crop(config: Config) -> Optional[int]:
    """The center crop that evaluation (the kNN monitor, ``byol eval`` and ``embed``) takes of a
    folder's decoded square: ``data.image_size`` where the square is larger, as the paper's test
    protocol does (shorter side resized to 256, the center 224: Grill et al. 2020, appendix C);
    None, the whole image, for CIFAR and STL-10 and for a square no larger than the views."""
    d = config.data
    return d.image_size if d.dataset == "folder" and load_size(config) > d.image_size else None
