"""Batched image augmentations with per-image randomness, and the paper's two view recipes.

Every random parameter has a batch dimension: two identical images in one batch get different
crops, flips, colour jitter, grayscale, blur and solarization (byol-pytorch applies torchvision
transforms to a whole batch tensor, which gives every image the same crop). Each transform is a
few batched tensor ops, with no loop over images and no data-dependent Python control flow, so it
runs on the GPU and under torch.compile. Each op matches torchvision.transforms.v2 image by image
(on float images: on uint8 ones torchvision rounds after each op). The per-pixel ops (colour
jitter, grayscale, solarize, normalize) are in color.py.

Paper, section 3.3: "a random patch of the image is selected and resized to 224 x 224 with a
random horizontal flip, followed by a color distortion, consisting of a random sequence of
brightness, contrast, saturation, hue adjustments, and an optional grayscale conversion. Finally
Gaussian blur and solarization are applied to the patches." Parameters: appendix B, table 6.
"""

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .color import (
    COLOR_OPS, color_jitter, normalize, per_image, reference_color_jitter, rgb_to_grayscale, solarize, to_float,
)
from .inputs import check_pixel_type

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

_CROP_TRIES = 10  # torchvision's RandomResizedCrop.get_params
_CROP_UNIFORMS = 2 * _CROP_TRIES + 2  # area and log-ratio per try, then top and left


@dataclass(frozen=True)
class ViewConfig:
    """One augmentation recipe (the paper's T or T'); every probability is per image."""

    size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int | None = None  # None: about 10% of size, made odd, at least 3 (23 at 224, 3 at 32)
    solarize_p: float = 0.0
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    antialias: bool = True  # antialiased downscaling in the crop-resize, as torchvision and PIL
    color_ops: str = "torchvision"  # the jitter's four ops: torchvision's ColorJitter, or "reference" (see paper_views)

    def __post_init__(self):
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ViewConfig.{name}={getattr(self, name)} must be a probability in [0, 1]")
        for name in ("crop_scale", "crop_ratio", "blur_sigma"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"ViewConfig.{name}={getattr(self, name)} must be (low, high) with 0 < low <= high")
        if min(self.brightness, self.contrast, self.saturation) < 0 or not 0 <= self.hue <= 0.5:
            raise ValueError("ViewConfig brightness, contrast and saturation must be >= 0, and hue in [0, 0.5]")
        if self.color_ops not in COLOR_OPS:
            raise ValueError(f"ViewConfig.color_ops={self.color_ops!r} must be one of {', '.join(COLOR_OPS)}")
        if self.blur_kernel is not None and (self.blur_kernel < 1 or self.blur_kernel % 2 == 0):
            raise ValueError(f"ViewConfig.blur_kernel={self.blur_kernel} must be a positive odd integer")
        if isinstance(self.size, bool) or not isinstance(self.size, numbers.Integral) or self.size < 1:
            raise ValueError(f"ViewConfig.size={self.size!r} must be a whole number of pixels >= 1")
        if self.blur_p > 0 and self.kernel_size // 2 >= self.size:  # reflection pads by less than the side
            raise ValueError(f"ViewConfig.blur_kernel={self.kernel_size} is too large for views of {self.size} "
                             f"pixels: it must be below {2 * self.size} (its half below the side)")

    @property
    def kernel_size(self) -> int:
        """Blur kernel side: blur_kernel, else about 10% of size, odd, at least 3 (paper: 23 at 224)."""
        if self.blur_kernel is not None:
            return self.blur_kernel
        return max(3, int(0.1 * self.size) // 2 * 2 + 1)


def paper_views(size: int = 224) -> tuple[ViewConfig, ViewConfig]:
    """The paper's two augmentation distributions T and T' (appendix B, table 6).

    Both: random resized crop (scale 0.08-1, ratio 3/4-4/3), flip p=0.5, colour jitter p=0.8
    (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, random order), grayscale p=0.2,
    blur sigma in [0.1, 2]. View 1: blur p=1.0, solarize p=0. View 2: blur p=0.1, solarize p=0.2.

    The parameters are the reference code's (deepmind-research byol/utils/augmentations.py,
    ``augment_config``); its ops are not all torchvision's, which these follow by default (as
    byol-pytorch, solo-learn and lightly do). Deliberate deviations from it: brightness multiplies by a
    factor in [0.6, 1.4] (the reference adds a delta in [-0.4, 0.4], the paper's "shifted by a uniformly
    random offset"); contrast blends toward the grey image's mean (the reference: each channel's own
    mean); saturation blends toward the grey image (the reference scales the HSV saturation, clipped to
    [0, 1]). ``color_ops="reference"`` (``augment.color_ops``) removes these three: the reference's
    four ops with its ranges, same per-image draws and random order, each clipped to [0, 1] (color.py,
    ``reference_color_jitter``). Deviations either way: the blur pads by reflection (the reference:
    zeros, 'SAME'); crops are torchvision's RandomResizedCrop boxes resized bilinearly with
    antialiasing (the reference: TF's sample_distorted_bounding_box with min_object_covered=0.1,
    resized bicubically). Matching it:
    random op order per image, each op clipped to [0, 1], grayscale (0.2989, 0.587, 0.114) after the
    jitter, hue as a shift of the HSV hue, blur kernel 2 * int(size / 20) + 1 (23 at 224, 9 at 96;
    below 20 pixels the reference's is 1, no blur, and ours 3), solarize x >= 0.5 -> 1 - x.
    """
    return ViewConfig(size=size, blur_p=1.0, solarize_p=0.0), ViewConfig(size=size, blur_p=0.1, solarize_p=0.2)


def cifar_views(size: int = 32) -> tuple[ViewConfig, ViewConfig]:
    """The paper's recipe adapted to 32x32 CIFAR, as solo-learn's CIFAR BYOL configs do.

    Changes from `paper_views`: no Gaussian blur in either view (blur_p=0; at 32x32 a blur
    removes most of the little detail there is), and CIFAR-10 mean/std for normalization.
    Unchanged: crops (scale 0.08-1), flip, jitter, grayscale, solarize p=0 / 0.2.
    """
    common = dict(size=size, blur_p=0.0, mean=CIFAR_MEAN, std=CIFAR_STD)
    return ViewConfig(**common, solarize_p=0.0), ViewConfig(**common, solarize_p=0.2)


def identity_views(size: int = 32) -> tuple[ViewConfig, ViewConfig]:
    """No augmentation: the whole image at ``size``, normalized with the CIFAR statistics.

    Not for training (BYOL needs two different views); for checks where the views must be a
    known function of the images, such as the distributed-equivalence test.
    """
    view = ViewConfig(size=size, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                      grayscale_p=0.0, blur_p=0.0, solarize_p=0.0, mean=CIFAR_MEAN, std=CIFAR_STD)
    return view, view


_PRESETS = {"paper": paper_views, "cifar": cifar_views, "none": identity_views}


def view_preset_names() -> list[str]:
    """The names :func:`view_presets` takes (``augment.preset``'s values)."""
    return sorted(_PRESETS)


def view_presets(name: str, size: int) -> tuple[ViewConfig, ViewConfig]:
    """The two view configs of a named recipe: "paper" (ImageNet, the paper's) or "cifar"."""
    if name not in _PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; valid names: {', '.join(sorted(_PRESETS))}")
    return _PRESETS[name](size)


# ---------------------------------------------------------------------------------------------
# Geometric ops and blur: (B, 3, H, W) images, uint8 in [0, 255] or float in [0, 1]; per-image
# parameters as (B,) tensors. Each returns float32 in [0, 1] and equals
# torchvision.transforms.v2.functional applied image by image. The per-pixel ops are in color.py.


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device) -> Tensor:
    # Drawn on the generator's own device, else with the global RNG of `device`. A CPU generator with
    # CUDA images: one pinned, non-blocking copy, so drawing on the host never syncs the GPU.
    draw_device = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=draw_device)
    if device is None or u.device == torch.device(device):
        return u
    if u.device.type == "cpu" and torch.device(device).type == "cuda":
        u = u.pin_memory()
    return u.to(device, non_blocking=True)


def sample_crop_boxes(batch_size: int, height: int, width: int, scale: tuple[float, float] = (0.08, 1.0),
                      ratio: tuple[float, float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None,
                      device: torch.device | str | None = None) -> Tensor:
    """Random resized crop boxes, one per image: torchvision's RandomResizedCrop.get_params, batched.

    Up to 10 tries per image draw an area fraction ~ U(scale) and a log aspect ratio ~ U(log ratio);
    the first try that fits in the image wins, else the central crop fallback.

    Returns:
        (B, 4) int64 boxes: top, left, height, width in pixels.
    """
    u = _uniform((batch_size, _CROP_UNIFORMS), generator, device)
    return _crop_boxes(u, height, width, scale, ratio)


def _crop_boxes(u: Tensor, height: int, width: int, scale, ratio) -> Tensor:
    t = _CROP_TRIES
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:, :t])  # (B, tries)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, t:2 * t])
    w = torch.sqrt(area * aspect).round()  # round half to even, like Python's round
    h = torch.sqrt(area / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax returns the first maximum
    found = fits.any(dim=1)
    in_ratio = width / height
    if in_ratio < min(ratio):
        fallback_h, fallback_w = round(width / min(ratio)), width
    elif in_ratio > max(ratio):
        fallback_h, fallback_w = height, round(height * max(ratio))
    else:
        fallback_h, fallback_w = height, width
    h = torch.where(found, h.gather(1, first).squeeze(1), float(fallback_h))
    w = torch.where(found, w.gather(1, first).squeeze(1), float(fallback_w))
    # floor(u * n) is uniform on 0..n-1, like randint; the clamp guards u * n rounding up to n.
    top = torch.minimum((u[:, -2] * (height - h + 1)).floor(), height - h)
    left = torch.minimum((u[:, -1] * (width - w + 1)).floor(), width - w)
    top = torch.where(found, top, float((height - fallback_h) // 2))
    left = torch.where(found, left, float((width - fallback_w) // 2))
    return torch.stack([top, left, h, w], dim=1).long()


def _resize_weights(start: Tensor, length: Tensor, in_size: int, out_size: int, antialias: bool) -> Tensor:
    """(B, out_size, in_size) weights resampling input pixels [start, start + length) to out_size."""
    scale = (length / out_size).unsqueeze(1)  # (B, 1) input pixels per output pixel
    arange_out = torch.arange(out_size, device=start.device, dtype=torch.float32)
    src = scale * (arange_out + 0.5) - 0.5  # (B, out) output pixel centres in crop coordinates
    pos = torch.arange(in_size, device=start.device, dtype=torch.float32) - start.unsqueeze(1)  # (B, in)
    if antialias:
        # torchvision/PIL antialiasing: a triangle filter widened by the downscale factor,
        # restricted to the crop and renormalized; it reduces to bilinear when upscaling.
        support = scale.clamp(min=1).unsqueeze(2)
        inside = (pos >= 0) & (pos < length.unsqueeze(1))
        weights = (1 - (pos.unsqueeze(1) - src.unsqueeze(2)).abs() / support).clamp(min=0) * inside.unsqueeze(1)
        return weights / weights.sum(dim=2, keepdim=True)  # (B, out, in)
    # F.interpolate(bilinear, align_corners=False): sample points clamped to the crop's pixels.
    src = torch.minimum(src.clamp(min=0), length.unsqueeze(1) - 1)
    return (1 - (pos.unsqueeze(1) - src.unsqueeze(2)).abs()).clamp(min=0)  # (B, out, in)


def resized_crop(images: Tensor, boxes: Tensor, size: int, antialias: bool = True) -> Tensor:
    """Crop each image to its box and resize the crop to (size, size), bilinear.

    Equals torchvision's ``resized_crop(image, *box, [size, size], BILINEAR, antialias=antialias)``
    image by image. Resampling is linear along each axis, so one image's crop-and-resize is
    ``Wy @ image @ Wx^T`` with per-image weight matrices (which also place the crop): the whole
    batch is two batched matmuls, and antialiasing costs nothing extra.

    Args:
        images: (B, 3, H, W).
        boxes: (B, 4) top, left, height, width in pixels, inside the image.
        size: output side.
        antialias: triangle filter widened on downscale (torchvision's default); False is plain
            bilinear interpolation, which aliases on strong downscaling.
    """
    x = to_float(images)
    boxes = boxes.to(device=x.device, dtype=torch.float32)
    wy = _resize_weights(boxes[:, 0], boxes[:, 2], x.shape[-2], size, antialias)  # (B, size, H)
    wx = _resize_weights(boxes[:, 1], boxes[:, 3], x.shape[-1], size, antialias)  # (B, size, W)
    x = x @ wx.transpose(1, 2).unsqueeze(1)  # (B, 3, H, size)
    return wy.unsqueeze(1) @ x  # (B, 3, size, size)


def hflip(images: Tensor, mask: Tensor) -> Tensor:
    """Flip left-right the images where the (B,) bool mask is True."""
    x = to_float(images)
    return torch.where(per_image(mask), x.flip(-1), x)


def gaussian_blur(images: Tensor, sigmas: Tensor, kernel_size: int) -> Tensor:
    """Gaussian blur with a per-image sigma and a kernel_size x kernel_size kernel, reflect padding.

    The kernel is torchvision's (gaussian_blur); the 2-D Gaussian is separable, so two 1-D
    convolutions replace torchvision's k x k one.
    """
    x = to_float(images)
    b, c, height, width = x.shape
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    t = torch.linspace(-lim, lim, steps=kernel_size, device=x.device)
    kernel = torch.softmax(-(t / sigmas.view(-1, 1)).pow(2), dim=1)  # (B, k)
    kernel = kernel.repeat_interleave(c, dim=0)  # (B * C, k)
    pad = kernel_size // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    # Every (image, channel) becomes a channel of one batch element, so each image gets its own kernel.
    x = x.reshape(1, b * c, height + 2 * pad, width + 2 * pad)
    x = F.conv2d(x, kernel.view(b * c, 1, kernel_size, 1), groups=b * c)
    x = F.conv2d(x, kernel.view(b * c, 1, 1, kernel_size), groups=b * c)
    return x.view(b, c, height, width)


# ---------------------------------------------------------------------------------------------


class Augment(nn.Module):
    """One view's augmentation: (B, 3, H, W) uint8 or float images -> (B, 3, size, size) views.

    Random parameters are drawn per image (`sample_params`), then applied (`apply_params`: pure tensor ops
    with no host sync, which compiles with fullgraph=True). All draws come from one (B, 36) uniform
    tensor, drawn with the given generator on the generator's own device (a CPU generator also works
    for CUDA images: the draw goes over in one pinned, non-blocking copy; a CUDA generator draws on
    the GPU), or with the global RNG of the images' device when no generator is given. The same
    generator state gives the same views; CPU and CUDA generators give different streams. Under
    torch.compile, a generator argument breaks the graph at the draw: compile `apply_params`, or call
    forward without a generator.

    Computation is float32 with autocast off (on CUDA, TF32 matmul/conv settings apply to the
    resize and blur: errors ~1e-3, below uint8 quantization). The output is normalized with the
    config's mean/std and cast to `out_dtype`.
    """

    def __init__(self, config: ViewConfig, out_dtype: torch.dtype = torch.float32):
        super().__init__()
        if not isinstance(config, ViewConfig):  # e.g. Augment(cifar_views()), both views' configs
            raise TypeError(f"Augment takes one ViewConfig, such as cifar_views()[0] (cifar_views and paper_views "
                            f"return two, one per view), but got {type(config).__name__} {config!r:.60}")
        self.config = config
        self.out_dtype = out_dtype

    def sample_params(self, batch_size: int, height: int, width: int, generator: torch.Generator | None = None,
                      device: torch.device | str | None = None) -> dict[str, Tensor]:
        """Every random parameter of the view, one per image, all from one (B, 36) uniform draw."""
        cfg = self.config
        c = _CROP_UNIFORMS
        u = _uniform((batch_size, c + 14), generator, device)
        ranges = [(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness), (max(0.0, 1 - cfg.contrast), 1 + cfg.contrast),
                  (max(0.0, 1 - cfg.saturation), 1 + cfg.saturation), (-cfg.hue, cfg.hue)]
        if cfg.color_ops == "reference":  # its _random_brightness etc.: a delta, factors in 1 +- range (no floor)
            ranges = [(-cfg.brightness, cfg.brightness), (1 - cfg.contrast, 1 + cfg.contrast),
                      (1 - cfg.saturation, 1 + cfg.saturation), (-cfg.hue, cfg.hue)]
        factors = torch.stack([lo + (hi - lo) * u[:, c + 2 + k] for k, (lo, hi) in enumerate(ranges)], dim=1)
        sigma_lo, sigma_hi = cfg.blur_sigma
        return {
            "boxes": _crop_boxes(u[:, :c], height, width, cfg.crop_scale, cfg.crop_ratio),  # (B, 4)
            "flip": u[:, c] < cfg.flip_p,
            "jitter": u[:, c + 1] < cfg.jitter_p,
            "factors": factors,  # (B, 4) brightness (reference: a delta), contrast, saturation, hue
            "order": u[:, c + 6:c + 10].argsort(dim=1),  # (B, 4) a random permutation per image
            "grayscale": u[:, c + 10] < cfg.grayscale_p,
            "blur": u[:, c + 11] < cfg.blur_p,
            "sigma": sigma_lo + (sigma_hi - sigma_lo) * u[:, c + 12],
            "solarize": u[:, c + 13] < cfg.solarize_p,
        }

    # Not `apply`: that is nn.Module's apply(fn), which learner.apply(init_fn) calls on every submodule.
    def apply_params(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Apply drawn parameters: crop+resize, flip, jitter, grayscale, blur, solarize, normalize."""
        cfg = self.config
        # Ops that are off in the config are skipped outright (static, so torch.compile is fine).
        with torch.autocast(images.device.type, enabled=False):
            x = resized_crop(images, params["boxes"], cfg.size, cfg.antialias)  # (B, 3, size, size)
            if cfg.flip_p > 0:
                x = hflip(x, params["flip"])
            if cfg.jitter_p > 0:
                if cfg.color_ops == "reference":
                    enabled = (cfg.brightness > 0, cfg.contrast > 0, cfg.saturation > 0, cfg.hue > 0)
                    jittered = reference_color_jitter(x, params["factors"], params["order"], enabled)
                else:
                    jittered = color_jitter(x, params["factors"], params["order"], hue=cfg.hue > 0)
                x = torch.where(per_image(params["jitter"]), jittered, x)
            if cfg.grayscale_p > 0:
                x = rgb_to_grayscale(x, params["grayscale"])
            if cfg.blur_p > 0:
                x = torch.where(per_image(params["blur"]), gaussian_blur(x, params["sigma"], cfg.kernel_size), x)
            if cfg.solarize_p > 0:
                x = solarize(x, params["solarize"])
            return normalize(x, cfg.mean, cfg.std).to(self.out_dtype)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, 3, H, W) uint8 in [0, 255] or float in [0, 1] -> (B, 3, size, size) normalized views."""
        if not isinstance(images, Tensor):  # (a NumPy batch failed on "no attribute 'dim'")
            raise TypeError(f"Augment takes a tensor of images, (B, 3, H, W), not {type(images).__name__}: "
                            "convert it first, e.g. torch.from_numpy(batch)")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"Augment takes a batch of RGB images, (B, 3, H, W), got shape {tuple(images.shape)}")
        if not images.numel():  # (the blur's grouped convolution failed on it: "non-positive groups")
            raise ValueError(f"Augment takes a batch of at least one image, got shape {tuple(images.shape)}")
        check_pixel_type(images)  # int64 pixels were taken as floats in [0, 1] (a user test); the dtype only: no sync
        b, _, height, width = images.shape
        return self.apply_params(images, self.sample_params(b, height, width, generator, images.device))
