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


@pytest.mark.parametrize("setting", [{"optim": {"ema_warmup": 3}}, {"train": {"epochs": "many"}}])
def test_a_checkpoint_whose_settings_do_not_load_is_named(tmp_path, setting):
    """A checkpoint of another byol (a setting this one does not have, or another type): the error names the
    checkpoint; it said "unknown config key 'optim.ema_warmup'", as if the user had given that setting."""
    import re
    from byol.checkpoint import CheckpointError
    from byol.config import Config
    config = Config().to_dict()
    for section, values in setting.items():
        config[section].update(values)
    path = tmp_path / "last.pt"
    torch.save({"model": {}, "config": config, "step": 3}, path)
    said = f"^the settings saved in {re.escape(str(path))} do not load in this version of byol "
    with pytest.raises(CheckpointError, match=said + r"\(.*(ema_warmup|train.epochs).*\); it was written by another"):
        load_encoder(path)
