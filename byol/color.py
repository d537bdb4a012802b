"""Per-pixel ops on batches of images: colour jitter, grayscale, solarize, normalize.

Images are (B, 3, H, W), uint8 in [0, 255] or float in [0, 1]; per-image parameters are (B,) or
(B, k) tensors. Each op returns float32 in [0, 1] (normalize: standardized) and equals
torchvision.transforms.v2.functional applied image by image to float images (on uint8 ones
torchvision rounds to uint8 after each op, and differs by up to about 1/255 an op); the reference_* ops
are the reference code's instead (deepmind-research byol/utils/augmentations.py). The view recipes that
use them are in augment.py.
"""

import torch
from torch import Tensor

_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2 luma)


def to_float(images: Tensor) -> Tensor:
    """uint8 in [0, 255] or float in [0, 1] -> float32 in [0, 1]."""
    return images.float().div(255) if images.dtype == torch.uint8 else images.float()


def per_image(v: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1), to broadcast one value per image."""
    return v.view(-1, 1, 1, 1)


def _gray(x: Tensor) -> Tensor:
    r, g, b = x.unbind(dim=1)
    return (r * _GRAY_WEIGHTS[0] + g * _GRAY_WEIGHTS[1] + b * _GRAY_WEIGHTS[2]).unsqueeze(1)  # (B, 1, H, W)


def rgb_to_grayscale(images: Tensor, mask: Tensor) -> Tensor:
    """Replace the images where mask is True by their luma (0.2989 R + 0.587 G + 0.114 B) in 3 channels."""
    x = to_float(images)
    return torch.where(per_image(mask), _gray(x).expand_as(x), x)


def _blend(x: Tensor, ref: Tensor, factors: Tensor) -> Tensor:
    # torchvision's _blend, x*f + ref*(1-f) clamped; lerp is the same in one pass (exact at f = 1).
    return torch.lerp(ref.expand_as(x), x, per_image(factors)).clamp_(0, 1)


def adjust_brightness(images: Tensor, factors: Tensor) -> Tensor:
    """Multiply image b by factors[b], clamped to [0, 1]."""
    return (to_float(images) * per_image(factors)).clamp(0, 1)


def adjust_contrast(images: Tensor, factors: Tensor) -> Tensor:
    """Blend image b with the mean of its grayscale image by factors[b], clamped to [0, 1]."""
    x = to_float(images)
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), factors)


def adjust_saturation(images: Tensor, factors: Tensor) -> Tensor:
    """Blend image b with its grayscale image by factors[b], clamped to [0, 1]."""
    x = to_float(images)
    return _blend(x, _gray(x), factors)


def _rgb_to_hsv(x: Tensor) -> Tensor:
    # torchvision's _rgb_to_hsv with fewer passes: (max-b)/c - (max-g)/c there is (g-b)/c here.
    r, g, b = x.unbind(dim=1)
    minc, maxc = torch.aminmax(x, dim=1)
    chroma = maxc - minc
    flat = chroma == 0  # gray pixels: hue and saturation 0, and no division by zero
    s = chroma / torch.where(flat, 1.0, maxc)
    max_r, max_g = maxc == r, maxc == g
    h = torch.where(max_r, g - b, torch.where(max_g, b - r, r - g)) / torch.where(flat, 1.0, chroma)
    h = h + torch.where(max_r, 0.0, torch.where(max_g, 2.0, 4.0))
    h = (h * (1.0 / 6.0) + 1.0).fmod(1.0)
    return torch.stack((h, s, maxc), dim=1)


def _hsv_to_rgb(x: Tensor) -> Tensor:
    # The closed form r, g, b = v - v*s*clamp(min(k, 4 - k), 0, 1) with k = (n + 6h) mod 6 and
    # n = 5, 3, 1: torchvision's six-sector table (v, p, q, t) in a few batched ops.
    h, s, v = x.unbind(dim=1)
    n = (5 - 2 * torch.arange(3, device=x.device, dtype=x.dtype)).view(1, 3, 1, 1)  # 5, 3, 1 (no host copy)
    k = (n + (h * 6).unsqueeze(1)).remainder_(6)  # (B, 3, H, W)
    ramp = torch.minimum(k, 4 - k).clamp_(0, 1)
    return v.unsqueeze(1) - ramp.mul_((v * s).unsqueeze(1))


def adjust_hue(images: Tensor, factors: Tensor) -> Tensor:
    """Rotate the hue of image b by factors[b] (in [-0.5, 0.5], fractions of a turn) via HSV."""
    h, s, v = _rgb_to_hsv(to_float(images)).unbind(dim=1)
    h = (h + factors.view(-1, 1, 1)).remainder(1.0)
    return _hsv_to_rgb(torch.stack((h, s, v), dim=1))


def _blend_slots(x: Tensor, ops: Tensor, factors: Tensor, active: Tensor) -> Tensor:
    for k in range(ops.shape[1]):
        op = ops[:, k]  # (B,) 0 brightness, 1 contrast, 2 saturation
        f = torch.where(active[:, k], factors.gather(1, op.unsqueeze(1)).squeeze(1), 1.0)
        gray = _gray(x)
        ref = torch.where(per_image(op == 2), gray, gray.mean(dim=(1, 2, 3), keepdim=True))
        x = _blend(x, torch.where(per_image(op == 0), 0.0, ref), f)
    return x


def color_jitter(images: Tensor, factors: Tensor, order: Tensor, hue: bool = True) -> Tensor:
    """torchvision's ColorJitter with per-image factors and a per-image order of the four ops.

    Args:
        images: (B, 3, H, W).
        factors: (B, 4) brightness, contrast, saturation and hue factors (identity: 1, 1, 1, 0).
        order: (B, 4) a permutation of 0..3 per image (0 brightness, 1 contrast, 2 saturation,
            3 hue): the order torchvision's ColorJitter draws with randperm(4) on every call.
        hue: False skips the hue op, as torchvision does when ColorJitter's hue is 0.
    """
    x = to_float(images)
    # Brightness, contrast and saturation are all blends x*f + ref*(1-f) (ref: 0, mean gray, gray),
    # so one masked blend per slot serves every image; hue is the one op that is not. Each image runs
    # its blends that precede hue in 3 slots, hue, then the rest in 3 more slots; an idle slot has
    # f = 1, an exact identity. That is 6 cheap blends + 1 hue instead of 4 masked passes of each.
    rank = order.argsort(dim=1)  # (B, 4) position of each op in the image's order
    blends = rank[:, :3].argsort(dim=1)  # (B, 3) the three blend ops in the image's order
    before_hue = torch.arange(3, device=x.device) < rank[:, 3:]  # (B, 3)
    x = _blend_slots(x, blends, factors, before_hue)
    if hue:
        x = adjust_hue(x, factors[:, 3])
    return _blend_slots(x, blends, factors, ~before_hue)


# ---------------------------------------------------------------------------------------------
# The reference code's colour ops (deepmind-research byol/utils/augmentations.py), for
# ViewConfig.color_ops="reference". Where torchvision's differ: brightness adds a delta, contrast pulls
# each channel toward its own mean, saturation scales the HSV saturation (clipped to [0, 1]). Each op is
# clipped to [0, 1] after it, as the reference's cond_fn does. Its HSV conversions (TF's) are the same
# functions as torchvision's on [0, 1] (same hue sector ties, saturation 0 for black), so ours serve.

COLOR_OPS = ("torchvision", "reference")  # ViewConfig.color_ops, augment.color_ops


def reference_brightness(images: Tensor, deltas: Tensor) -> Tensor:
    """Add deltas[b] to image b, clipped to [0, 1] (the reference's adjust_brightness)."""
    return (to_float(images) + per_image(deltas)).clamp(0, 1)


def reference_contrast(images: Tensor, factors: Tensor) -> Tensor:
    """factor * (x - mean) + mean with each channel's own spatial mean, clipped (reference adjust_contrast)."""
    x = to_float(images)
    mean = x.mean(dim=(2, 3), keepdim=True)  # (B, 3, 1, 1)
    return (per_image(factors) * (x - mean) + mean).clamp(0, 1)


def _reference_hsv(x: Tensor, saturation: Tensor | None, hue: Tensor | None) -> Tensor:
    # One HSV round trip serves both HSV ops: saturation scaled and clipped, hue shifted mod 1.
    h, s, v = _rgb_to_hsv(x).unbind(dim=1)
    if saturation is not None:
        s = (s * saturation.view(-1, 1, 1)).clamp(0, 1)
    if hue is not None:
        h = (h + hue.view(-1, 1, 1)).remainder(1.0)
    return _hsv_to_rgb(torch.stack((h, s, v), dim=1)).clamp(0, 1)


def reference_saturation(images: Tensor, factors: Tensor) -> Tensor:
    """Scale the HSV saturation of image b by factors[b], clipped to [0, 1] (reference adjust_saturation)."""
    return _reference_hsv(to_float(images), factors, None)


def reference_hue(images: Tensor, deltas: Tensor) -> Tensor:
    """Shift the HSV hue of image b by deltas[b] mod 1, clipped to [0, 1] (reference adjust_hue)."""
    return _reference_hsv(to_float(images), None, deltas)


def reference_color_jitter(images: Tensor, factors: Tensor, order: Tensor,
                           enabled: tuple[bool, bool, bool, bool] = (True, True, True, True)) -> Tensor:
    """The reference's colour jitter with per-image parameters and a per-image order of the four ops.

    Args:
        images: (B, 3, H, W).
        factors: (B, 4) brightness delta, contrast factor, saturation factor, hue delta (identity: 0, 1, 1, 0).
        order: (B, 4) a permutation of 0..3 per image (0 brightness, 1 contrast, 2 saturation, 3 hue),
            the reference's jax.random.permutation: order[b, t] is the op image b applies t-th.
        enabled: which ops run at all (the reference skips an op whose range is 0).
    """
    x = to_float(images)
    for t in range(order.shape[1]):
        # Every op runs on every image, and each image keeps the one its order puts in this slot: 4 slots
        # of masked passes (one HSV round trip serves saturation and hue), no per-image loop or host sync.
        op = order[:, t]  # (B,)
        out = x
        if enabled[0]:
            out = torch.where(per_image(op == 0), reference_brightness(x, factors[:, 0]), out)
        if enabled[1]:
            out = torch.where(per_image(op == 1), reference_contrast(x, factors[:, 1]), out)
        if enabled[2] or enabled[3]:
            # The other HSV op's identity (factor 1, delta 0) leaves s and h exactly as they were.
            saturation = torch.where(op == 2, factors[:, 2], 1.0) if enabled[2] else None
            hue = torch.where(op == 3, factors[:, 3], 0.0) if enabled[3] else None
            in_hsv = ((op == 2) & enabled[2]) | ((op == 3) & enabled[3])
            out = torch.where(per_image(in_hsv), _reference_hsv(x, saturation, hue), out)
        x = out
    return x


def solarize(images: Tensor, mask: Tensor, threshold: float = 0.5) -> Tensor:
    """Where mask is True, invert the pixels >= threshold (x -> 1 - x); paper, appendix B."""
    x = to_float(images)
    return torch.where(per_image(mask) & (x >= threshold), 1.0 - x, x)


def normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(x - mean) / std per channel."""
    x = to_float(images)
    # Python scalars per channel: a (3,) tensor would be a blocking host-to-GPU copy on every call.
    return torch.stack([(x[:, c] - m) / s for c, (m, s) in enumerate(zip(mean, std))], dim=1)
