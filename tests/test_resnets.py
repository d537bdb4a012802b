import pytest
import torch
import torchvision

from byol.resnets import RESNETS, resnet, resnet_settings


@pytest.mark.parametrize("width", [0, -8, 2.5, True])
def test_a_width_that_is_not_a_number_of_channels_is_refused(width):
    """resnet(width=0) built a network of empty convolutions without a word."""
    with pytest.raises(ValueError, match=f"width must be a whole number of channels >= 1, not {width!r}"):
        resnet("resnet18", width=width)
    import numpy as np
    assert resnet("resnet18", width=np.int64(4)).conv1.out_channels == 4


def test_full_width_resnet_has_torchvision_keys():
    ours = resnet("resnet50").state_dict()
    theirs = torchvision.models.resnet50().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_the_resnet_of_a_state_dict_is_read_from_its_keys_and_shapes():
    """What a bare state_dict (no config beside it) is loaded as: each ResNet byol builds, and
    torchvision's own, read back as built; other ResNets are none of them."""
    with torch.device("meta"):  # shapes only: nothing allocated
        for name in RESNETS:
            for cifar_stem, width in ((True, 8), (False, 16), (True, 64)):
                state = resnet(name, cifar_stem=cifar_stem, width=width).state_dict()
                assert resnet_settings(state) == {"backbone": name, "cifar_stem": cifar_stem, "width": width}
            state = getattr(torchvision.models, name)().state_dict()
            assert resnet_settings(state) == {"backbone": name, "cifar_stem": False, "width": 64}
        for other in ("resnet101", "wide_resnet50_2", "resnext50_32x4d"):
            assert resnet_settings(getattr(torchvision.models, other)().state_dict()) is None, other
    assert resnet_settings({"a": 1}) is None
