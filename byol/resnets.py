"""torchvision ResNets by name, of any width, with a CIFAR stem or not, and read back from a state_dict's
keys and shapes. Cut at a hidden layer by ``backbones.py``."""

import numbers
from typing import Optional

import torch
from torch import nn
import torchvision


# torchvision's ResNets: blocks per stage, and whether a block is a bottleneck (1x1, 3x3, 1x1 convolutions,
# four times as wide out as in) rather than two 3x3 convolutions. The paper evaluates ResNet-50, 101, 152 and 200
# (torchvision builds no ResNet-200).
_BLOCKS = {"resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False), "resnet50": ((3, 4, 6, 3), True),
           "resnet101": ((3, 4, 23, 3), True), "resnet152": ((3, 8, 36, 3), True)}
RESNETS = tuple(_BLOCKS)


def resnet(name: str = "resnet18", cifar_stem: bool = False, width: int = 64) -> nn.Module:
    """A torchvision ResNet, randomly initialized, with its classifier intact.

    Args:
        name: one of ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``, ``resnet152`` (``RESNETS``).
        cifar_stem: a 3x3 stride-1 first convolution and no max-pool, for 32x32 images.
        width: channels of the first stage (64 in torchvision); smaller is faster, for tests
            and CPU runs.

    Use it with ``hidden_layer="avgpool"`` so that BYOL trains the trunk; the state_dict keys
    are those of the torchvision model, so the trained network loads into it.
    """
    if name not in RESNETS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(RESNETS)}")
    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
        raise ValueError(f"width must be a whole number of channels >= 1, not {width!r}")
    net = getattr(torchvision.models, name)(weights=None) if width == 64 else _narrow_resnet(name, width)
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    return net


def resnet_settings(state: dict) -> Optional[dict]:
    """``{"backbone", "cifar_stem", "width"}`` of the :func:`resnet` whose ``state_dict`` ``state`` is,
    read from its keys and shapes (blocks per stage, bottlenecks, the first convolution); None where
    they are not those of one (another depth, another first convolution)."""
    conv1 = state.get("conv1.weight")
    if not (torch.is_tensor(conv1) and conv1.dim() == 4 and conv1.shape[-1] in (3, 7)):
        return None
    blocks = tuple(len({k.split(".")[1] for k in state if isinstance(k, str) and k.startswith(f"layer{i}.")})
                   for i in range(1, 5))
    kinds = {kind: name for name, kind in _BLOCKS.items()}
    name = kinds.get((blocks, "layer1.0.conv3.weight" in state))  # conv3: a bottleneck block's
    inner = state.get("layer1.0.conv1.weight")  # twice as wide in wide_resnet50_2 and resnext50_32x4d (and 101)
    if name is None or not torch.is_tensor(inner) or tuple(inner.shape[:2]) != (conv1.shape[0],) * 2:
        return None
    return {"backbone": name, "cifar_stem": conv1.shape[-1] == 3, "width": conv1.shape[0]}


def _narrow_resnet(name: str, width: int) -> nn.Module:
    """A ResNet whose stages have ``width, 2w, 4w, 8w`` channels instead of ``64, 128, 256, 512``."""
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    layers, bottleneck = _BLOCKS[name]
    block = Bottleneck if bottleneck else BasicBlock
    net = ResNet.__new__(ResNet)
    nn.Module.__init__(net)
    net._norm_layer = nn.BatchNorm2d
    net.inplanes = width
    net.dilation = 1
    net.groups = 1
    net.base_width = 64
    net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.relu = nn.ReLU(inplace=True)
    net.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    net.layer1 = net._make_layer(block, width, layers[0])
    net.layer2 = net._make_layer(block, width * 2, layers[1], stride=2)
    net.layer3 = net._make_layer(block, width * 4, layers[2], stride=2)
    net.layer4 = net._make_layer(block, width * 8, layers[3], stride=2)
    net.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    net.fc = nn.Linear(width * 8 * block.expansion, 1000)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return net
