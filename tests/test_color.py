"""Tests for byol.color's reference colour ops (augment.color_ops=reference) against the reference code.

Each op is checked against a direct NumPy transcription, image by image, of deepmind-research
byol/utils/augmentations.py (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue, its TF-style
rgb_to_hsv / hsv_to_rgb, and _color_transform_single_image's clip after every op): the transcription below
is independent of byol.color (no shared code, the reference's own HSV formulas, NHWC layout).
"""

from dataclasses import replace

import numpy as np
import pytest
import torch

from byol.augment import Augment, ViewConfig, cifar_views, paper_views
from byol.build import views_of
from byol.color import (
    COLOR_OPS, color_jitter, reference_brightness, reference_color_jitter, reference_contrast, reference_hue,
    reference_saturation,
)
from byol.config import load_config

# float32 against float64 NumPy: observed differences are ~1e-7; a wrong formula (grey mean for the channel
# mean, a blend for the saturation scale, a missing clip) moves values by >= 1e-2.
ATOL = 1e-5


def _images(b=6, h=9, w=7, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# --- the reference, transcribed (one HWC image, float64) ---------------------------------------------------

def _ref_rgb_to_hsv(r, g, b):
    vv = np.maximum(np.maximum(r, g), b)
    range_ = vv - np.minimum(np.minimum(r, g), b)
    with np.errstate(divide="ignore", invalid="ignore"):
        sat = np.where(vv > 0, range_ / vv, 0.)
        norm = np.where(range_ != 0, 1. / (6. * range_), 1e9)
    hr = norm * (g - b)
    hg = norm * (b - r) + 2. / 6.
    hb = norm * (r - g) + 4. / 6.
    hue = np.where(r == vv, hr, np.where(g == vv, hg, hb))
    hue = hue * (range_ > 0)
    hue = hue + (hue < 0)
    return hue, sat, vv


def _ref_hsv_to_rgb(h, s, v):
    c = s * v
    m = v - c
    dh = (h % 1.) * 6.
    fmodu = dh % 2.
    x = c * (1 - np.abs(fmodu - 1))
    hcat = np.floor(dh).astype(np.int32)
    rr = np.where((hcat == 0) | (hcat == 5), c, np.where((hcat == 1) | (hcat == 4), x, 0)) + m
    gg = np.where((hcat == 1) | (hcat == 2), c, np.where((hcat == 0) | (hcat == 3), x, 0)) + m
    bb = np.where((hcat == 3) | (hcat == 4), c, np.where((hcat == 2) | (hcat == 5), x, 0)) + m
    return rr, gg, bb


def _ref_op(rgb, op, value):
    """The reference's op ``op`` (0 brightness, 1 contrast, 2 saturation, 3 hue), then its clip to [0, 1]."""
    if op == 0:
        out = tuple(c + value for c in rgb)
    elif op == 1:
        out = tuple(value * (c - c.mean(axis=(-2, -1), keepdims=True)) + c.mean(axis=(-2, -1), keepdims=True)
                    for c in rgb)
    else:
        h, s, v = _ref_rgb_to_hsv(*rgb)
        if op == 2:
            s = np.clip(s * value, 0., 1.)
        else:
            h = (h + value) % 1.0
        out = _ref_hsv_to_rgb(h, s, v)
    return tuple(np.clip(c, 0., 1.) for c in out)


def _ref_jitter(image, values, order):
    """_color_transform_single_image's jitter on one (3, H, W) image: the ops in ``order``, each clipped."""
    hwc = image.permute(1, 2, 0).double().numpy()
    rgb = tuple(hwc[..., c] for c in range(3))
    for op in order:
        rgb = _ref_op(rgb, int(op), float(values[int(op)]))
    return torch.from_numpy(np.stack(rgb, axis=0)).float()


# --- each op ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("op, fn, lo, hi", [(0, reference_brightness, -0.4, 0.4), (1, reference_contrast, 0.6, 1.4),
                                            (2, reference_saturation, 0.8, 1.2), (3, reference_hue, -0.1, 0.1)])
def test_each_reference_op_is_the_reference_s_formula_image_by_image(op, fn, lo, hi):
    x = _images()
    values = torch.linspace(lo, hi, x.shape[0])
    got = fn(x, values)
    for i in range(x.shape[0]):
        want = _ref_jitter(x[i], [values[i]] * 4, [op])
        torch.testing.assert_close(got[i], want, atol=ATOL, rtol=0)


def test_the_reference_ops_are_not_torchvision_s():
    """The test above can fail: torchvision's ops (byol's default) are measurably different on the same draws."""
    x, factors = _images(), torch.tensor([[1.3, 0.7, 1.2, 0.0]] * 6)
    order = torch.arange(4).repeat(6, 1)
    for op, value in ((0, 0.3), (1, 0.7), (2, 1.2)):
        ref = torch.stack([_ref_jitter(x[i], [value] * 4, [op]) for i in range(6)])
        only = torch.tensor([1.0, 1.0, 1.0, 0.0]).repeat(6, 1)
        only[:, op] = factors[:, op]
        tv = color_jitter(x, only, order, hue=False)
        assert (tv - ref).abs().max() > 1e-2, op


def test_saturation_is_clipped_to_one_and_a_negative_factor_gives_grey():
    x = _images()
    grey = reference_saturation(x, torch.full((6,), -0.5))  # s clipped to 0: every channel the value, max(r, g, b)
    torch.testing.assert_close(grey, x.amax(dim=1, keepdim=True).expand_as(x), atol=ATOL, rtol=0)
    full = reference_saturation(x, torch.full((6,), 50.0))
    assert (full.amin(dim=1) <= 1e-6).all()  # saturation 1: the smallest channel goes to 0


# --- the jitter: per-image order and factors ----------------------------------------------------------------

def test_reference_jitter_applies_each_image_s_own_order_and_factors():
    b = 24  # every one of the 4! orders once
    x = _images(b=b, seed=1)
    gen = torch.Generator().manual_seed(2)
    order = torch.stack([torch.randperm(4, generator=gen) for _ in range(b)])
    u = torch.rand(b, 4, generator=gen)
    values = torch.stack([-0.4 + 0.8 * u[:, 0], 0.6 + 0.8 * u[:, 1], 0.8 + 0.4 * u[:, 2], -0.1 + 0.2 * u[:, 3]], 1)
    got = reference_color_jitter(x, values, order)
    for i in range(b):
        torch.testing.assert_close(got[i], _ref_jitter(x[i], values[i], order[i]), atol=ATOL, rtol=0)
    assert len({tuple(o.tolist()) for o in order}) > 12


def test_the_order_matters_per_image():
    """Two copies of one image with the same factors and two orders differ (brightness then contrast is not
    contrast then brightness once a clip bites), so a batch-wide order would be caught."""
    x = _images(b=1).repeat(2, 1, 1, 1)
    values = torch.tensor([[0.4, 1.4, 1.2, 0.1]] * 2)
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    got = reference_color_jitter(x, values, order)
    assert (got[0] - got[1]).abs().max() > 1e-2
    for i in range(2):
        torch.testing.assert_close(got[i], _ref_jitter(x[i], values[i], order[i]), atol=ATOL, rtol=0)


def test_an_op_off_is_skipped_as_the_reference_skips_it():
    x = _images()
    values = torch.tensor([[0.2, 1.3, 1.1, 0.05]] * 6)
    order = torch.arange(4).repeat(6, 1)
    got = reference_color_jitter(x, values, order, enabled=(True, True, True, False))
    for i in range(6):
        torch.testing.assert_close(got[i], _ref_jitter(x[i], values[i], [0, 1, 2]), atol=ATOL, rtol=0)



@pytest.mark.parametrize("off", range(4))
def test_any_one_op_off_is_skipped_whatever_its_value(off):
    """A mutation audit: turning off saturation alone (hue on: the HSV pass must still run for hue), or
    brightness or contrast given a value that is not their identity, survived the test above, which turns off
    hue alone. Each op is turned off here in turn, its value far from the identity."""
    b = 24
    x = _images(b=b, seed=3)
    gen = torch.Generator().manual_seed(4)
    order = torch.stack([torch.randperm(4, generator=gen) for _ in range(b)])
    values = torch.tensor([[0.3, 1.4, 1.3, 0.08]] * b)
    got = reference_color_jitter(x, values, order, enabled=tuple(op != off for op in range(4)))
    for i in range(b):
        kept = [int(op) for op in order[i] if op != off]
        torch.testing.assert_close(got[i], _ref_jitter(x[i], values[i], kept), atol=ATOL, rtol=0)


def test_a_reference_range_above_one_draws_factors_below_zero_as_the_reference_does():
    """The reference draws contrast and saturation factors in 1 +- range with no floor at 0 (torchvision's
    ranges have one); a mutation audit: that floor put back in the reference branch survived every test.
    A negative saturation factor is grey (clipped), a negative contrast factor inverts about the mean."""
    view = ViewConfig(size=8, color_ops="reference", contrast=1.5, saturation=1.5)
    f = Augment(view).sample_params(512, 8, 8, torch.Generator().manual_seed(0))["factors"]
    for k in (1, 2):
        assert f[:, k].min() < -0.3 and f[:, k].max() > 2.3 and f[:, k].min() >= -0.5 and f[:, k].max() <= 2.5, k


# --- in the views -------------------------------------------------------------------------------------------

def test_a_reference_view_draws_the_reference_ranges_and_applies_its_ops():
    view = replace(paper_views(8)[0], color_ops="reference", crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                   flip_p=0.0, jitter_p=1.0, grayscale_p=0.0, blur_p=0.0, mean=(0.0,) * 3, std=(1.0,) * 3)
    augment = Augment(view)
    params = augment.sample_params(256, 8, 8, torch.Generator().manual_seed(0))
    f = params["factors"]
    assert f[:, 0].min() < -0.3 and f[:, 0].max() > 0.3 and f[:, 0].abs().max() <= 0.4  # a delta, not a factor
    assert f[:, 1].min() >= 0.6 and f[:, 2].min() >= 0.8 and f[:, 2].max() <= 1.2
    x = _images(b=256, h=8, w=8)
    out = augment.apply_params(x, params)
    for i in range(0, 256, 37):
        torch.testing.assert_close(out[i], _ref_jitter(x[i], f[i], params["order"][i]), atol=ATOL, rtol=0)


def test_a_reference_view_jitters_only_the_images_its_jitter_p_draws():
    """jitter_p=0.8 leaves a fifth of the images as they were; a mutation audit: the reference branch jittering
    every image, its per-image draw ignored, survived every test (which all used jitter_p=1)."""
    view = replace(paper_views(8)[0], color_ops="reference", crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                   flip_p=0.0, jitter_p=0.5, grayscale_p=0.0, blur_p=0.0, mean=(0.0,) * 3, std=(1.0,) * 3)
    augment = Augment(view)
    params = augment.sample_params(64, 8, 8, torch.Generator().manual_seed(0))
    x = _images(b=64, h=8, w=8)
    out = augment.apply_params(x, params)
    kept = ~params["jitter"]
    assert 10 < int(kept.sum()) < 54
    torch.testing.assert_close(out[kept], x[kept], atol=ATOL, rtol=0)
    assert ((out - x).abs().amax(dim=(1, 2, 3))[~kept] > 1e-3).all()


def test_the_default_views_are_torchvision_s_and_the_reference_s_differ():
    """The default everywhere is torchvision's ops (that those views are unchanged is test_augment.py's, which
    checks them against torchvision's own); the reference's, on the same draws, give other views."""
    assert ViewConfig().color_ops == "torchvision"
    assert all(v.color_ops == "torchvision" for v in (*cifar_views(), *paper_views()))
    assert all(v.color_ops == "torchvision" for v in views_of(load_config("cifar10")))
    view = replace(cifar_views()[1], jitter_p=1.0)
    x = _images(b=8, h=32, w=32)
    a, c = (Augment(v)(x, torch.Generator().manual_seed(3)) for v in (view, replace(view, color_ops="reference")))
    assert (a - c).abs().max() > 1e-2


def test_an_unknown_color_ops_is_refused():
    with pytest.raises(ValueError, match=r"ViewConfig.color_ops='tf' must be one of torchvision, reference"):
        ViewConfig(color_ops="tf")


# --- the setting ---------------------------------------------------------------------------------------------

def test_augment_color_ops_reaches_both_views_and_defaults_to_torchvision():
    assert COLOR_OPS == ("torchvision", "reference")
    assert [v.color_ops for v in views_of(load_config("cifar10"))] == ["torchvision"] * 2
    views = views_of(load_config("imagenet", ["--augment.color_ops=reference"]))
    assert [v.color_ops for v in views] == ["reference"] * 2
    assert views[1].solarize_p == 0.2  # the preset's other settings kept
