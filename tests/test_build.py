"""What a config builds: its schedules' lengths and its view recipes."""

import pytest
import torch
from torch import nn

from byol.build import build_model, end_step_of, schedule_of, views_of
from byol.config import load_config
from byol.reporting import note_no_augmentation


@pytest.mark.parametrize("settings, steps_per_epoch, expected", [
    ({}, 10, (2.0, 100, 2000)),  # the cifar10 preset: lr 1.0 per 256 images at batch 512, 10 of 200 epochs
    ({"train.batch_size": 128, "optim.lr": 0.4, "optim.warmup_epochs": 0.6, "train.epochs": 2}, 3, (0.2, 2, 6)),
    ({"train.batch_size": 256, "optim.lr": 1.0, "optim.warmup_epochs": 0.1, "train.epochs": 1}, 4, (1.0, 0, 4)),
])
def test_the_schedules_scale_the_learning_rate_to_the_batch_and_round_the_warm_up(settings, steps_per_epoch,
                                                                                 expected):
    """optim.lr is per 256 images; a warm-up of a fraction of an epoch is rounded to the nearest step (1.8 -> 2,
    not 1; a mutation audit: truncating survived)."""
    config = load_config("cifar10", [f"--{k}={v}" for k, v in settings.items()])
    lr, warmup, total = schedule_of(config, steps_per_epoch)
    assert (lr, warmup, total) == pytest.approx(expected)
    assert end_step_of(config, total) == total
    config.train.max_steps = total - 1
    assert end_step_of(config, total) == total - 1
    config.train.max_steps = total + 1  # a limit beyond the schedule's end: the schedule's end
    assert end_step_of(config, total) == total


def test_each_views_blur_and_solarize_probability_goes_over_the_presets_and_the_rest_stays():
    """A researcher's ablation of the paper's asymmetric views without writing a loop (these were not settings)."""
    paper = views_of(load_config("imagenet", ["--data.image_size=64"]))
    assert [(v.blur_p, v.solarize_p) for v in paper] == [(1.0, 0.0), (0.1, 0.2)]
    given = views_of(load_config("imagenet", ["--data.image_size=64", "--augment.view1_blur_p=0.5",
                                              "--augment.view2_blur_p=0", "--augment.view1_solarize_p=0.3",
                                              "--augment.view2_solarize_p=1", "--augment.crop_min_scale=0.2"]))
    assert [(v.blur_p, v.solarize_p) for v in given] == [(0.5, 0.3), (0.0, 1.0)]
    for before, after in zip(paper, given):  # nothing else moved, but the crops asked for
        assert after == type(before)(**{**vars(before), "blur_p": after.blur_p, "solarize_p": after.solarize_p,
                                        "crop_scale": (0.2, 1.0)})
    one = views_of(load_config("cifar10", ["--augment.view2_solarize_p=0.5"]))  # one given: the others the preset's
    assert [(v.blur_p, v.solarize_p) for v in one] == [(0.0, 0.0), (0.0, 0.5)]


def test_no_augmentation_with_blur_or_solarization_given_says_what_makes_the_views_differ(capsys):
    note_no_augmentation(load_config("cifar10", ["--augment.preset=none", "--augment.view2_blur_p=1"]))
    assert capsys.readouterr().err == ("note: augment.preset=none with augment.view2_blur_p=1 gives views that differ "
                                       "only by the blur given (no flip or colour change): an "
                                       "ablation; BYOL's recipes are --augment.preset=paper or cifar\n")
    note_no_augmentation(load_config("cifar10", ["--augment.preset=none", "--augment.crop_min_scale=0.5",
                                                 "--augment.view1_solarize_p=0.2", "--augment.view2_blur_p=0"]))
    assert "with augment.crop_min_scale=0.5, augment.view1_solarize_p=0.2 gives views that differ only by their " \
        "square crops, of 0.5 to all of the image and the solarization given (no flip, colour change or blur)" \
        in capsys.readouterr().err
    note_no_augmentation(load_config("cifar10", ["--augment.preset=none", "--augment.view1_blur_p=0.5",
                                                 "--augment.view2_solarize_p=0.2"]))
    assert "differ only by the blur and solarization given (no flip or colour change)" in capsys.readouterr().err


@pytest.mark.parametrize("heads", [{}, {"model.use_predictor": "false", "model.concat_views": "true"}])
def test_the_model_of_a_config_is_its_resnet_cut_at_the_average_pool_with_the_config_s_heads_views_and_tau(heads):
    """A mutation audit: build_model cutting the ResNet at layer4 (a representation 16 times as wide), swapping the
    projector's output and hidden widths, giving view 2 view 1's recipe, or leaving out train.tau_base,
    model.use_predictor or model.concat_views each survived every test of this module."""
    settings = {"model.projection_size": 24, "model.projection_hidden_size": 40, "train.tau_base": 0.95, **heads}
    config = load_config("cifar10-cpu", [f"--{k}={v}" for k, v in settings.items()])
    byol = build_model(config)
    size = config.data.image_size
    assert byol.encoder(torch.zeros(2, 3, size, size)).shape == (2, 8 * config.model.width)  # resnet18's avgpool
    widths = [(m.in_features, m.out_features) for m in byol.online.projector.modules() if isinstance(m, nn.Linear)]
    assert widths == [(8 * config.model.width, 40), (40, 24)]
    assert (byol.augment_fn.config, byol.augment_fn2.config) == views_of(config)
    assert byol.augment_fn.config != byol.augment_fn2.config  # (the paper's views differ: blur and solarization)
    assert byol.moving_average_decay == 0.95
    assert isinstance(byol.predictor, nn.Identity) == bool(heads) and byol.concat_views == bool(heads)
