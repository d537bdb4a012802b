"""What a config builds on a machine: the autocast dtype that train.precision resolves to."""

import pytest
import torch

from byol.build import autocast_dtype


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
