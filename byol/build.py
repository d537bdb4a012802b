"""From a config to what a run is made of: the model with its view recipes, its schedules' lengths, and the
size its images are decoded at (the device and precision: ``precision.py``; the data itself: ``train_data.py``).

Shared by pretraining (``train.py``) and the steps after it (``pipeline.py``).
"""

from dataclasses import replace
from typing import Optional, Union

import torch
from torch import nn

from .augment import Augment, ViewConfig, view_presets
from .backbones import NetDoesNotRun, cut_at, feature_width
from .resnets import resnet
from .config import Config, ConfigError
from .datasets import NATIVE_SIZE
from .dropin import BYOL
# byol.build.autocast_dtype and native_bf16 as well, as BENCHMARKS.md and earlier docs/python_api.md name them
from .precision import autocast_dtype, native_bf16

__all__ = ["autocast_dtype", "native_bf16", "build_model", "schedule_of", "end_step_of", "views_of", "load_size",
           "eval_crop"]


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
        # (a ConfigError, a ValueError still: a sweep's except byol.ByolError went on past it, as past other settings)
        raise ConfigError(f"net does not run on {size}x{size} images, the size of the run's views (data.image_size="
                          f"{size}): {e.why}; give a network that takes (B, 3, {size}, {size}) images, or set "
                          "data.image_size to a size it takes") from None


def check_evaluated_size(config: Config, encoder: nn.Module) -> None:
    """A ConfigError where ``encoder``, a network given from Python (cut), runs on the views (``data.image_size``)
    but not on the images that the kNN monitor, eval and embed feed it at ``config``'s settings (an evaluation's
    with its overrides: a folder fed at a size given, a review); for a run, only where its kNN monitor is on, and
    not for load_encoder, whose caller feeds the encoder."""
    size = config.data.image_size
    seen = eval_crop(config) or load_size(config)  # what the kNN monitor, eval and embed feed it
    if seen == size:  # (the views' size: checked where the model is built)
        return
    # (a user test: a ViT built for 24 pixels, data.image_size=24 on CIFAR-10, ended at the kNN monitor in
    # torchvision's bare "AssertionError: Wrong image height! Expected 24 but got 32!")
    try:
        feature_width(encoder, seen, next(encoder.parameters(), torch.empty(0)).device)
    except NetDoesNotRun as e:
        raise ConfigError(f"net runs on the run's {size}x{size} views (data.image_size={size}) but not on the "
                          f"{seen}x{seen} images that the kNN monitor, eval and embed feed it ({_fed(config)}): "
                          f"{e.why}; give a network that takes both sizes, or set data.image_size={seen}") from None


def _fed(config: Config) -> str:
    """Which images evaluation feeds an encoder of ``config``'s run, for :func:`build_model`'s error."""
    d = config.data
    return f"{d.dataset}'s own, whole" if d.dataset != "folder" else "each image decoded at data.load_size, whole"


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
        views = tuple(replace(view, color_ops=a.color_ops) for view in views)
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
