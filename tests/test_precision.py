"""Where a run computes and in what precision: the device train.device names, the autocast dtype that
train.precision resolves to."""

import re

import pytest
import torch

import byol.precision
from byol.build import build_model
from byol.config import Config, ConfigError
from byol.precision import (autocast_dtype, checked_precision, evaluation_precision, resolve_device,
                             usual_torch_defaults)
from byol.resnets import resnet


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


def test_a_cuda_device_this_machine_does_not_have_is_one_sentence(monkeypatch):
    """--train.device=cuda:1 on a one-GPU machine went on to torch's "CUDA error: invalid device ordinal", a
    traceback (found reading build.py in a mutation audit); the GPUs there are named instead."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for count, said in ((1, "this machine has 1 CUDA GPU (cuda:0)"), (2, "this machine has 2 CUDA GPUs (cuda:0 to "
                                                                           "cuda:1)")):
        monkeypatch.setattr(torch.cuda, "device_count", lambda count=count: count)
        with pytest.raises(ConfigError, match=rf"^train.device=cuda:2 but {re.escape(said)}; choose one of them, or "
                                              "train.device=cuda$"):
            resolve_device("cuda:2")
        assert resolve_device(f"cuda:{count - 1}") == torch.device(f"cuda:{count - 1}")
        assert resolve_device("cuda") == torch.device("cuda")


def test_a_cuda_device_on_a_machine_without_cuda_is_one_sentence(monkeypatch):
    """train.device=cuda (a GPU preset run on a laptop) where torch sees no GPU: one sentence pointing to the cpu."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match=rf"^train.device={name} but no CUDA GPU is available; use "
                                              "train.device=cpu$"):
            resolve_device(name)
    assert resolve_device("auto") == torch.device("cpu")


def test_more_torchrun_processes_on_a_machine_than_its_gpus_is_one_sentence(monkeypatch):
    """torchrun --nproc_per_node=8 on a 4-GPU machine: processes 4 to 7 took cuda:4 to cuda:7, and torch's
    "invalid device ordinal" traceback (left by the mutation audit, found reading build.py)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("WORLD_SIZE", "8")  # torchrun's (a LOCAL_RANK without it is not: tests/test_distributed.py)
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


@pytest.mark.parametrize("stem, size, device, precision, expected", [
    (False, 16, "cpu", "auto", None),  # layer4.0.conv1 strided over a 1x1 map: auto trained in float32
    (False, 32, "cpu", "auto", torch.bfloat16),
    (True, 16, "cpu", "auto", torch.bfloat16),
    (False, 16, "cpu", "bf16", torch.bfloat16),  # asked for: eval computes what it is asked
    (False, 16, "cpu", "fp32", None)])
def test_eval_precision_is_auto_s_as_pretraining_resolved_it(monkeypatch, stem, size, device, precision, expected):
    """The precision byol eval and embed compute features in: auto's float32 where pretraining's auto trained in
    float32 (byol.precision.checked_precision), so that eval reproduces the kNN monitor."""
    monkeypatch.setattr(byol.precision, "native_bf16", lambda device: True)
    config = Config()
    config.data.image_size, config.train.precision = size, precision
    net = resnet("resnet18", cifar_stem=stem, width=8)
    net.fc = torch.nn.Identity()
    assert evaluation_precision(net, config, torch.device(device)) is expected


def test_bf16_on_a_gpu_without_it_is_one_sentence_and_a_gpu_keeps_bf16_for_any_network(monkeypatch):
    """A mutation audit: dropping the refusal of bf16 on a GPU without bfloat16, and applying the CPU's bf16
    convolution fault to a GPU (float32 there for an ImageNet-stem ResNet at 16 px), each survived every test."""
    gpu = torch.device("cuda:0")  # (not touched: native_bf16 answers for it)
    monkeypatch.setattr(byol.precision, "native_bf16", lambda device: False)
    with pytest.raises(ConfigError, match="^train.precision=bf16 but this GPU has no bfloat16; use fp32$"):
        autocast_dtype("bf16", gpu)
    config = Config()
    config.model.backbone, config.model.cifar_stem, config.model.width = "resnet18", False, 8
    config.data.image_size, config.train.precision = 16, "bf16"
    model = build_model(config)
    assert checked_precision(model, config, gpu, torch.bfloat16) is torch.bfloat16
    with pytest.raises(ConfigError, match="^train.precision=bf16: torch's bf16 convolutions on the CPU"):
        checked_precision(model, config, torch.device("cpu"), torch.bfloat16)


@pytest.mark.parametrize("caller", ["medium", "high"])
def test_a_caller_s_float32_matmul_precision_is_highest_within_and_put_back_after(caller):
    """A sweep in a notebook that had set torch.set_float32_matmul_precision("medium") (Lightning's advice) got other
    losses from pretrain than the same seed in a fresh process: oneDNN computed the float32 products in bf16 on the
    CPU while the run said float32 (a user test of a sweep in one process)."""
    a, b = torch.randn(64, 256, generator=torch.Generator().manual_seed(0)), torch.randn(256, 64)
    full = a @ b
    torch.set_float32_matmul_precision(caller)
    try:
        with usual_torch_defaults():
            assert torch.get_float32_matmul_precision() == "highest"
            assert torch.equal(a @ b, full)
        assert torch.get_float32_matmul_precision() == caller
    finally:
        torch.set_float32_matmul_precision("highest")


@pytest.mark.skipif(not hasattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision"),
                    reason="torch < 2.9 has no backend's own float32 matmul precision")
def test_a_backend_s_own_float32_matmul_precision_is_ieee_within_and_put_back_after():
    """torch >= 2.9's own way to ask for bf16 products on the CPU (torch.backends.mkldnn.matmul.fp32_precision, which
    the legacy getter then refuses to read: "a mix of the legacy and new APIs"): a review saw every byol function
    raise with it, before computing anything."""
    backends = torch.backends.mkldnn.matmul, torch.backends.cuda.matmul
    saved = [b.fp32_precision for b in backends]
    a, b = torch.randn(64, 256, generator=torch.Generator().manual_seed(0)), torch.randn(256, 64)
    full = a @ b
    try:
        backends[0].fp32_precision = "bf16"
        with usual_torch_defaults():
            assert [m.fp32_precision for m in backends] == ["ieee", "ieee"]
            assert torch.equal(a @ b, full)
        assert backends[0].fp32_precision == "bf16" and backends[1].fp32_precision == saved[1]
    finally:
        for m, precision in zip(backends, saved):
            m.fp32_precision = precision
