"""What the learner is given, checked where torch would fail deep inside or go on silently wrong:
its arguments and each batch, in one sentence."""

import math
import numbers
import warnings
from typing import Optional

import torch
from torch import nn


def check_arguments(net: object, image_size: object, default_views: bool, augment_fns: tuple = ()) -> None:
    """Refuse a ``net``, ``image_size`` or ``augment_fn`` that would fail deep inside torch or at the first
    call, in one sentence."""
    if not isinstance(net, nn.Module):
        hint = "; for a ResNet by name, use byol.resnet('resnet50')" if isinstance(net, str) else ""
        raise TypeError(f"net must be a torch.nn.Module, such as torchvision.models.resnet50(), but got "
                        f"{type(net).__name__} {net!r:.60}{hint}")
    scripted = next((name for name, m in net.named_modules() if isinstance(m, torch.jit.ScriptModule)), None)
    if scripted is not None:  # (a user test: tracing called a scripted layer without its weights, never trained)
        what = f"net's module {scripted!r} is" if scripted else "net is"
        raise TypeError(f"{what} TorchScript (torch.jit.script or trace), which the learner can neither trace into "
                        "(its weights would go untrained) nor copy for its target: give the plain nn.Module (script "
                        "it after pretraining)")
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral):
        raise TypeError(f"image_size must be a whole number, the side of the augmented views (e.g. 224), but "
                        f"got {type(image_size).__name__} {image_size!r:.60}")
    low = 2 if default_views else 1  # the paper's views blur with reflect padding of 1: 2 pixels at least
    if image_size < low:
        raise ValueError(f"image_size must be >= {low}, the side of the augmented views (e.g. 224), but got "
                         f"{image_size}")
    for name, fn in zip(("augment_fn", "augment_fn2"), augment_fns):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be a callable from a batch to a batch of views, such as "
                            f"byol.augment.Augment(cifar_views()[0]), but got {type(fn).__name__} {fn!r:.60}")


def check_settings(**settings) -> None:
    """Refuse the learner's numbers that would build a broken model or drift silently: widths
    (``projection_size``, ``projection_hidden_size``) whole numbers >= 1, ``moving_average_decay`` in
    [0, 1] (above 1 the target moves away from the online network), ``total_steps`` and ``feature_dim``
    None or >= 1 (a user test: feature_dim=0 was taken as None, True as 1, -5 failed in torch's words)."""
    for name in ("projection_size", "projection_hidden_size", "total_steps", "feature_dim"):
        value = settings.get(name)
        if value is None and name in ("total_steps", "feature_dim"):
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, but got {value!r:.60}")
    tau = settings["moving_average_decay"]
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not 0 <= tau <= 1:
        raise ValueError(f"moving_average_decay (the EMA rate tau) must be a number in [0, 1] (the paper's 0.996), "
                         f"but got {tau!r:.60}")


def check_pixel_type(images: torch.Tensor) -> None:
    """Refuse integers other than uint8 (and bool): the default augmentations take uint8 or floats in
    [0, 1]. The dtype alone, no host sync: it runs on every call."""
    if not images.is_floating_point() and images.dtype != torch.uint8:
        raise ValueError(f"images of dtype {images.dtype} are neither uint8 (0..255) nor float in [0, 1]; "
                         "convert them, e.g. images.to(torch.uint8) for 8-bit pixels")


def check_pixel_range(images: torch.Tensor, advice: Optional[str] = None, stacklevel: int = 5) -> None:
    """Refuse a float batch in 0..255 or holding NaN, and warn of one with values below -0.5
    (normalized, or random like byol-pytorch's README example): the augmentations take floats in
    [0, 1] (or uint8). One host sync: the learner asks it of its first batch. ``advice``: what the
    warning says to do instead (the learner's by default); ``stacklevel``: where it points (by default,
    the learner's caller: forward, Module._call_impl, _wrapped_call_impl)."""
    check_pixel_type(images)
    if not (images.is_floating_point() and images.numel()):
        return
    low, high = (float(v) for v in torch.aminmax(images.detach()))  # one host sync
    if math.isnan(low) or math.isnan(high):
        raise ValueError("this batch of images holds NaN; the augmentations take floats in [0, 1] (or uint8)")
    # -0.5 and 2, not 0 and 1: resizing with antialiasing or bicubic interpolation overshoots a little.
    if low >= -0.5 and high > 2:
        raise ValueError(f"float images must be in [0, 1], but this batch reaches {high:.4g}; "
                         "divide it by 255, or pass the uint8 images as they are")
    if low < -0.5:
        warnings.warn(f"float images should be in [0, 1], but this batch spans {low:.3g} to {high:.3g} (normalized?): "
                      + (advice or "the default augmentations take [0, 1] (colour jitter clips to it, solarize "
                         "inverts above 0.5) and normalize the views themselves, so give the images before "
                         "Normalize (ToTensor() alone gives [0, 1]), or pass your own augment_fn"),
                      stacklevel=stacklevel)


def check_network_input(images: torch.Tensor, views: bool = False) -> None:
    """Refuse non-float ``images`` that the learner feeds to an image network as they are:
    ``learner(x, return_embedding=True)``'s ``x`` (as byol-pytorch does), or, with ``views``,
    ``learner(view1, view2)``'s views. uint8 pixels, which the default views take, would fail deep
    inside the first convolution ("expected scalar type Byte but found Float"). Called only where
    the learner draws the paper's views (no ``augment_fn``), so a network that takes uint8 itself
    is refused too, knowingly: its views are float, as this learner makes them."""
    if images.is_floating_point():
        return
    if views:
        raise ValueError(f"learner(view1, view2) feeds the views to the network as they are, so {images.dtype} "
                         "cannot go in: scale them to [0, 1] and normalize them as your network expects, or pass "
                         "the images alone, learner(images), which draws the paper's two views (uint8 or [0, 1])")
    raise ValueError(f"return_embedding feeds the images to the network as they are, as byol-pytorch does, so "
                     f"{images.dtype} cannot go in: scale them to [0, 1] and normalize them with "
                     f"learner.augment1.config.mean and .std, as the views are, or embed them with byol.features."
                     f"extract_features(learner.encoder, images, mean=..., std=...), which takes uint8")


def check_is_tensor(images: object) -> None:
    """Refuse a batch that is not a tensor (a NumPy array, a list of images), which the learner with the
    paper's views would fail on in an attribute lookup deep inside."""
    if not torch.is_tensor(images):
        raise TypeError(f"BYOL takes a batch of images as a torch.Tensor (B, 3, H, W), uint8 or floats in [0, 1], "
                        f"but got {type(images).__name__}; convert it, e.g. torch.from_numpy(images)")


def check_batch_shape(images: torch.Tensor, min_batch: int = 1, rgb: bool = False, image: bool = False) -> None:
    """Refuse a batch of fewer than ``min_batch`` inputs, with ``image`` (an image network's, the paper's views
    drawn for it) anything but a (B, C, H, W) batch, and with ``rgb`` (the paper's views) anything but
    (B, 3, H, W); other networks' inputs (``augment_fn`` given) may have any shape (B, ...).

    Shape checks only: no host sync, no kernel, so it runs on every call.
    """
    if not hasattr(images, "shape"):  # (a review: a list or None with augment_fn given was an AttributeError)
        raise TypeError(f"BYOL takes a batch as a torch.Tensor (B, ...), but got {type(images).__name__}; "
                        f"stack the inputs into one, e.g. torch.stack(images)")
    shape = tuple(images.shape)
    if rgb and (len(shape) != 4 or shape[1] != 3):
        raise ValueError(f"BYOL's default augmentations take a batch of images shaped (B, 3, H, W), but got "
                         f"shape {shape}; for other inputs, pass augment_fn (and augment_fn2) of your own")
    # (a user test: one image (3, H, W) went into the network unbatched, an 'embedding' (C, 1) out, or torch's error)
    if image and len(shape) != 4:
        hint = "; for one image, image[None]" if len(shape) == 3 else ""
        raise ValueError(f"BYOL takes a batch of images shaped (B, C, H, W), but got shape {shape}{hint}")
    if len(shape) < 1 or shape[0] < min_batch:
        # (an empty batch in eval mode was told of training mode and BatchNorm)
        need = " in training mode (the projector's BatchNorm needs two rows)" if min_batch > 1 else ""
        raise ValueError(f"BYOL takes a batch of at least {min_batch} input{'s' if min_batch > 1 else ''}{need}, "
                         f"but got shape {shape}")
