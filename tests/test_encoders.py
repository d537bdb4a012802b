import pytest
import torch

from byol.backbones import resnet
from byol.encoders import load_encoder


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."])
def test_a_state_dict_saved_from_ddp_or_torch_compile_loads_in_either_order(tmp_path, prefix):
    """DDP(torch.compile(net)) saves module._orig_mod.* keys, torch.compile(DDP(net)) _orig_mod.module.*:
    both are the plain network's weights."""
    torch.manual_seed(0)
    net = resnet("resnet18", cifar_stem=True, width=8)
    path = tmp_path / "wrapped.pt"
    torch.save({prefix + k: v for k, v in net.state_dict().items()}, path)
    loaded, config = load_encoder(path)  # the architecture read off its keys
    assert (config.model.backbone, config.model.cifar_stem, config.model.width) == ("resnet18", True, 8)
    trunk = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trunk.items())
