import pytest
import torch
import torchvision

from byol.resnets import RESNETS, _narrow_resnet, resnet, resnet_settings


@pytest.mark.parametrize("width", [0, -8, 2.5, True])
def test_a_width_that_is_not_a_number_of_channels_is_refused(width):
    """resnet(width=0) built a network of empty convolutions without a word."""
    with pytest.raises(ValueError, match=f"width must be a whole number of channels >= 1, not {width!r}"):
        resnet("resnet18", width=width)
    import numpy as np
    assert resnet("resnet18", width=np.int64(4)).conv1.out_channels == 4


# Every torchvision ResNet byol builds by name (the paper's 50, 101 and 152 among them), spelled out: a test that
# iterated RESNETS would not see a name left out of it.
NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("cifar_stem", [False, True])
def test_full_width_resnet_has_torchvision_keys(name, cifar_stem):
    """What export.json's architecture says to build, torchvision's model (with the CIFAR stem swapped in where
    used), takes the network's state_dict: the same keys and shapes."""
    with torch.device("meta"):  # shapes only: nothing allocated
        ours = resnet(name, cifar_stem=cifar_stem).state_dict()
        net = getattr(torchvision.models, name)()
    if cifar_stem:
        net.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False, device="meta")
        net.maxpool = torch.nn.Identity()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in net.state_dict().items()}


@pytest.mark.parametrize("name", NAMES)
def test_the_narrow_builder_at_width_64_is_torchvision_s_network(name):
    """The builder of every width but 64 (every test's and CPU run's network), asked for 64, builds torchvision's
    network: the same modules, keys and shapes (a review: the test above, at width 64, compares torchvision's
    model with itself)."""
    with torch.device("meta"):
        ours, net = _narrow_resnet(name, 64), getattr(torchvision.models, name)()
    assert str(ours) == str(net)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_the_narrow_builder_at_width_64_initializes_its_weights_as_torchvision_does(name):
    """A mutation audit: the narrow builder's convolutions initialized with kaiming's fan_in, not torchvision's
    fan_out, survived every test (the init of every narrow network: tests, CPU runs); seeded alike, the builder
    asked for 64 draws torchvision's very weights."""
    torch.manual_seed(0)
    ours = _narrow_resnet(name, 64).state_dict()
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)().state_dict()
    assert all(torch.equal(ours[k], v) for k, v in theirs.items())


@pytest.mark.parametrize("name, blocks", [("resnet101", (3, 4, 23, 3)), ("resnet152", (3, 8, 36, 3))])
def test_a_narrow_deep_resnet_has_torchvisions_blocks_and_runs(name, blocks):
    """resnet101 and resnet152 at width 4: torchvision's bottleneck blocks per stage, features 32 x width wide."""
    torch.manual_seed(0)
    net = resnet(name, cifar_stem=True, width=4)
    assert tuple(len(getattr(net, f"layer{i}")) for i in range(1, 5)) == blocks
    assert isinstance(net.layer1[0], torchvision.models.resnet.Bottleneck)
    assert net.fc.in_features == 128 and net(torch.randn(2, 3, 8, 8)).shape == (2, 1000)


def test_the_resnet_of_a_state_dict_is_read_from_its_keys_and_shapes():
    """What a bare state_dict (no config beside it) is loaded as: each ResNet byol builds, and
    torchvision's own, read back as built; other ResNets are none of them."""
    assert RESNETS == NAMES
    with torch.device("meta"):  # shapes only: nothing allocated
        for name in NAMES:
            for cifar_stem, width in ((True, 8), (False, 16), (True, 64)):
                state = resnet(name, cifar_stem=cifar_stem, width=width).state_dict()
                assert resnet_settings(state) == {"backbone": name, "cifar_stem": cifar_stem, "width": width}
            state = getattr(torchvision.models, name)().state_dict()
            assert resnet_settings(state) == {"backbone": name, "cifar_stem": False, "width": 64}
        for other in ("wide_resnet50_2", "resnext50_32x4d", "wide_resnet101_2", "resnext101_32x8d", "resnext101_64x4d"):
            assert resnet_settings(getattr(torchvision.models, other)().state_dict()) is None, other
    assert resnet_settings({"a": 1}) is None
