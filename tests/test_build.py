"""What a config builds on a machine: the autocast dtype that train.precision resolves to."""

import re

import pytest
import torch

from byol.build import end_step_of, schedule_of, views_of
from byol.precision import autocast_dtype, resolve_device
from byol.config import load_config
from byol.reporting import note_no_augmentation


@pytest.mark.parametrize("avx512_bf16, amx, auto", [(True, False, torch.bfloat16), (False, True, torch.bfloat16),
                                                    (False, False, None), ("absent", "absent", None)])
def test_auto_precision_is_bf16_on_a_cpu_with_bf16_arithmetic_only(monkeypatch, avx512_bf16, amx, auto):
    for probe, has in (("_is_avx512_bf16_supported", avx512_bf16), ("_is_amx_tile_supported", amx)):
        if has == "absent":  # a torch without the probe
            monkeypatch.delattr(torch.cpu, probe, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, probe, lambda has=has: has, raising=False)
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is auto
    assert autocast_dtype("fp32", cpu) is None and autocast_dtype("bf16", cpu) is torch.bfloat16


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


def test_a_cuda_device_this_machine_does_not_have_is_one_sentence(monkeypatch):
    """--train.device=cuda:1 on a one-GPU machine went on to torch's "CUDA error: invalid device ordinal", a
    traceback (found reading build.py in a mutation audit); the GPUs there are named instead."""
    from byol.config import ConfigError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for count, said in ((1, "this machine has 1 CUDA GPU (cuda:0)"), (2, "this machine has 2 CUDA GPUs (cuda:0 to "
                                                                           "cuda:1)")):
        monkeypatch.setattr(torch.cuda, "device_count", lambda count=count: count)
        with pytest.raises(ConfigError, match=rf"^train.device=cuda:2 but {re.escape(said)}; choose one of them, or "
                                              "train.device=cuda$"):
            resolve_device("cuda:2")
        assert resolve_device(f"cuda:{count - 1}") == torch.device(f"cuda:{count - 1}")
        assert resolve_device("cuda") == torch.device("cuda")


def test_more_torchrun_processes_on_a_machine_than_its_gpus_is_one_sentence(monkeypatch):
    """torchrun --nproc_per_node=8 on a 4-GPU machine: processes 4 to 7 took cuda:4 to cuda:7, and torch's
    "invalid device ordinal" traceback (left by the mutation audit, found reading build.py)."""
    from byol.config import ConfigError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == torch.device("cuda:3")
    monkeypatch.setenv("LOCAL_RANK", "4")
    with pytest.raises(ConfigError, match=r"^this is torchrun's process LOCAL_RANK=4, but this machine has 4 CUDA "
                                          r"GPUs: start at most 4 a machine \(--nproc_per_node=4\), or "
                                          r"train.device=cpu$"):
        resolve_device("auto")
    # train.device=cuda is this process's current device, which distributed.init sets to cuda:LOCAL_RANK only
    # where there is one: past the GPUs it stayed cuda:0, shared with process 0 (NCCL: "Duplicate GPU detected")
    with pytest.raises(ConfigError, match=r"^this is torchrun's process LOCAL_RANK=4, but this machine has 4 CUDA "):
        resolve_device("cuda")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("cuda") == torch.device("cuda")


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
