import copy
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from byol.backbones import cut_at, feature_dim, feature_width, resnet, strided_over_one_pixel


@pytest.mark.parametrize("name, width, dim", [("resnet18", 64, 512), ("resnet34", 16, 128), ("resnet50", 16, 512),
                                             ("resnet101", 4, 128), ("resnet152", 4, 128)])
def test_feature_dim_is_found(name, width, dim):
    net = resnet(name, cifar_stem=True, width=width)
    assert feature_dim(cut_at(net, "avgpool"), 32) == dim


@pytest.mark.parametrize("name, cifar_stem, size, found", [
    ("resnet18", False, 16, ["layer4.0.conv1"]), ("resnet50", False, 16, ["layer4.0.conv2"]),  # (not the 1x1 shortcut)
    ("resnet18", False, 8, ["layer3.0.conv1", "layer4.0.conv1"]), ("resnet18", False, 17, []),
    ("resnet18", False, 224, []), ("resnet18", True, 16, []), ("resnet18", True, 4, ["layer4.0.conv1"])])
def test_strided_convolutions_over_one_pixel_are_found(name, cifar_stem, size, found):
    """Where torch's bf16 CPU convolutions give wrong weight gradients (byol.precision.checked_precision)."""
    assert strided_over_one_pixel(resnet(name, cifar_stem=cifar_stem, width=8), size) == found


def test_cifar_stem():
    net = resnet("resnet18", cifar_stem=True)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)
    encoder = cut_at(net, "avgpool")
    assert encoder(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    plain = resnet("resnet18")
    assert plain.conv1.kernel_size == (7, 7) and isinstance(plain.maxpool, nn.MaxPool2d)


def test_hidden_layer_output_matches_manual_forward_and_shares_parameters():
    torch.manual_seed(0)
    net = resnet("resnet18", cifar_stem=True, width=8).eval()
    encoder = cut_at(net, "avgpool")
    x = torch.randn(3, 3, 32, 32)
    trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3,
                          net.layer4, net.avgpool, nn.Flatten(1))
    torch.testing.assert_close(encoder(x), trunk(x))
    own = {id(p) for p in net.parameters()}
    assert all(id(p) in own for p in encoder.parameters())
    # An index picks among the direct children as byol-pytorch does: -2 is avgpool.
    torch.testing.assert_close(cut_at(net, -2)(x), trunk(x))


def test_none_uses_the_network_itself():
    net = nn.Linear(3, 2)
    assert cut_at(net, None) is net and cut_at(net, -1) is net  # byol-pytorch's -1: the network's output


def test_bad_hidden_layer_and_backbone_names():
    net = resnet("resnet18", width=8)
    with pytest.raises(ValueError, match="not a module"):
        cut_at(net, "pool5")
    with pytest.raises(ValueError, match="out of range"):
        cut_at(net, 40)
    # What to give instead: a misspelt name's likely meaning, the children; -1 for a network of one child
    with pytest.raises(ValueError, match=r"'avgpol' is not a module of the network \(did you mean 'avgpool'\?\); "
                                         r"its children are conv1, bn1, relu, maxpool, layer1, .*, avgpool, fc$"):
        cut_at(net, "avgpol")
    with pytest.raises(ValueError, match=r"hidden_layer=-2 is out of range: the network has 1 child \(body\); "
                                         r"hidden_layer=-1 takes the network's own output"):
        cut_at(nn.Sequential(OrderedDict(body=nn.Conv2d(3, 4, 3))), -2)
    with pytest.raises(ValueError, match="unknown backbone"):
        resnet("vgg16")
    # (a user test: the module itself was "not a module of the network", a list a bare TypeError, True child 1)
    with pytest.raises(TypeError, match="hidden_layer must be a module's name .* not AdaptiveAvgPool2d .*; for this "
                                        "module, hidden_layer='avgpool'"):
        cut_at(net, net.avgpool)
    for bad in (["avgpool"], True, 2.0):
        with pytest.raises(TypeError, match="hidden_layer must be a module's name"):
            cut_at(net, bad)
    with pytest.raises(ValueError, match="hidden_layer='' names no layer"):
        cut_at(net, "")
    assert cut_at(net, np.int64(-2))(torch.rand(2, 3, 32, 32)).shape == (2, 64)  # NumPy's ints index too


@pytest.mark.parametrize("hidden_layer", [-2, -1, "avgpool"])
def test_what_is_not_a_network_is_a_clear_error(hidden_layer):
    """A user test: a function failed on "no attribute 'named_children'", and with -1 came back as the encoder."""
    with pytest.raises(TypeError, match="cut_at takes the network \\(an nn.Module\\), not function"):
        cut_at(lambda x: x, hidden_layer)


@pytest.mark.parametrize("wrap", [torch.compile, nn.DataParallel])
@pytest.mark.parametrize("layer", ["avgpool", -2])
def test_a_compiled_or_data_parallel_network_is_told_to_be_given_unwrapped(wrap, layer):
    """A user test: BYOL(torch.compile(resnet), hidden_layer="avgpool") said only that its children are _orig_mod."""
    net = wrap(resnet("resnet18", width=8))
    with pytest.raises(ValueError, match=r"; net is (OptimizedModule|DataParallel)'s wrapper of a ResNet: give the "
                                         r"ResNet itself, and compile or wrap the learner instead$"):
        cut_at(net, layer)
    with pytest.raises(ValueError, match=r"its children are fc$"):  # (no hint for a network that is no wrapper)
        cut_at(nn.Sequential(OrderedDict(fc=nn.Linear(2, 2))), "module")


class _Block(nn.Module):
    """A block that keeps a side output (deep supervision), computed after what it returns."""

    def __init__(self):
        super().__init__()
        self.conv, self.aux = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        out = torch.relu(self.conv(x))
        self.aux_out = self.aux(out)
        return out


class _Net(nn.Module):
    def __init__(self, last=nn.Identity()):
        super().__init__()
        self.block, self.pool, self.fc, self.last = _Block(), nn.AdaptiveAvgPool2d(1), nn.Linear(8, 10), last

    def forward(self, x):
        return self.last(self.fc(self.pool(self.block(x)).flatten(1)))


def test_a_block_cut_by_tracing_gives_what_it_returns_not_the_last_value_computed_in_it():
    """A user test: a module with children was traced inline and cut at its last node, the side
    output here (B, 2, 32, 32) where the block returns (B, 8, 32, 32), without a word."""
    net, x = _Net(), torch.rand(2, 3, 32, 32)
    traced = cut_at(net, "block")
    assert type(traced).__name__ == "HiddenLayer"
    torch.testing.assert_close(traced(x), net.block(x).flatten(1))
    torch.testing.assert_close(cut_at(net, "block", trace=False)(x), net.block(x).flatten(1))
    # In a module of its own type (kept whole by type, the outer Sequential would hide it), traced, not hooked
    seq = nn.Sequential(nn.Sequential(nn.Identity(), nn.Sequential(_Block())), nn.Flatten())
    torch.testing.assert_close(cut_at(seq, "0.1", hook_fallback=False)(x), seq[0][1](x).flatten(1))


def test_a_representation_that_is_not_a_batch_of_vectors_is_one_sentence():
    net = _Net(last=nn.Flatten(0))  # (B * 10,): no batch dimension left
    with pytest.raises(ValueError, match=r"has shape \(20,\): BYOL's representation is a batch of vectors"):
        cut_at(net, "last")(torch.rand(2, 3, 32, 32))


def test_an_error_inside_a_traced_hidden_layer_is_raised_without_torch_fx_printing_it(capsys):
    """A user test that ran out of memory: torch.fx's call printed 24 lines of traceback to stderr before
    the one sentence of `byol: error: the batch does not fit in memory`."""
    from byol.backbones import HiddenLayer

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool = nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            x = x.view(x.shape[0], 3, 8, 8)  # in the traced code itself, where torch.fx's call reports errors
            return self.pool(self.conv(x))

    hidden = HiddenLayer(Net(), "pool")
    assert hidden(torch.zeros(2, 3, 8, 8)).shape == (2, 4)
    with pytest.raises(RuntimeError, match="shape"):
        hidden(torch.zeros(2, 3, 4, 4))
    assert capsys.readouterr().err == ""


def test_a_copy_of_a_traced_layer_switches_between_train_and_eval_with_torchvision_before_0_21_too(monkeypatch):
    """torchvision 0.17 to 0.20 copied a traced network (its DualGraphModule) with one graph, not its train
    and eval ones: BYOL(net, hidden_layer=...).eval() failed in the target, a deep copy ('GraphModule' object
    has no attribute 'eval_graph'), and so did a copy of the learner."""
    import copy
    from torchvision.models.feature_extraction import DualGraphModule
    from byol import BYOL
    for own in ("__deepcopy__", "_deepcopy_init"):  # torch.fx's alone, as in torchvision 0.17 to 0.20
        if own in vars(DualGraphModule):
            monkeypatch.delattr(DualGraphModule, own)
    torch.manual_seed(0)
    learner = BYOL(resnet("resnet18", cifar_stem=True, width=8), image_size=32, hidden_layer="layer4",
                   projection_size=16, projection_hidden_size=32)
    x = torch.rand(4, 3, 32, 32)
    for model in (learner, copy.deepcopy(copy.deepcopy(learner))):
        model.eval()
        assert not model.target.training and not model.target.encoder.body.training
        torch.testing.assert_close(model.target(x), model.online(x), rtol=0, atol=0)  # the same weights, eval mode
        model.train()
        assert model.target.encoder.body.training and model.target.encoder.body.graph is not None


def test_a_layer_called_twice_is_cut_at_its_last_call():
    """As byol-pytorch's hook keeps a layer's last output: the traced cut takes the last call of a layer that
    runs twice in train and in eval mode (a mutation audit: its first call survived every test)."""
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act, self.fc = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4, 2)

        def forward(self, x):
            x = self.act(self.conv(x) - 0.1)
            x = self.act(x * 2 - 0.5)  # its last call
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    net, x = Twice(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        last = net.act(net.act(net.conv(x) - 0.1) * 2 - 0.5).flatten(1)
        for mode in (True, False):
            net.train(mode)
            torch.testing.assert_close(cut_at(net, "act")(x), last)


def test_networks_cut_in_threads_at_once_are_traced_and_leave_torch_as_it_was():
    """A user test: BYOL learners built at once in a thread pool (a sweep) failed with "NameError: module is not
    installed as a submodule", and from then on every nn.Module call in the process did (torch.fx's tracing
    patches nn.Module's methods process-wide, and two traces at once restored each other's patches)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from byol.backbones import HiddenLayer
    original = (nn.Module.__call__, nn.Module.__getattr__)
    start = threading.Barrier(4)

    def cut(_: int) -> nn.Module:
        net = resnet("resnet18", cifar_stem=True, width=8)
        start.wait()
        encoder = cut_at(net, "avgpool", hook_fallback=False)
        assert feature_dim(encoder, 32) == 64  # (a network measured while another was traced failed too)
        return encoder

    try:
        with ThreadPoolExecutor(4) as pool:
            encoders = list(pool.map(cut, range(4)))
        assert all(isinstance(e, HiddenLayer) for e in encoders)
        assert (nn.Module.__call__, nn.Module.__getattr__) == original
    finally:  # (without the fix: the process's nn.Module put back, for the tests after this one)
        nn.Module.__call__, nn.Module.__getattr__ = original
    assert encoders[0](torch.rand(2, 3, 32, 32)).shape == (2, 64)


def test_a_hooked_hidden_layer_that_does_not_run_is_said_by_name():
    """A network that tracing cannot cut (data-dependent control flow) is cut with a hook; a hidden_layer its
    forward never calls is said as such, not an IndexError (a coverage audit: not run)."""
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.unused = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            x = self.a(x)
            return self.b(x) if x.sum() > -1e9 else x  # data-dependent: no tracing

    with pytest.warns(UserWarning, match="symbolic tracing could not cut"):
        cut = cut_at(Branchy(), "unused")
    with pytest.raises(ValueError, match=r"^hidden_layer='unused' did not run in the network's forward$"):
        cut(torch.randn(2, 4))
    with pytest.warns(UserWarning, match="symbolic tracing could not cut"):
        assert cut_at(Branchy(), "a")(torch.randn(2, 4)).shape == (2, 4)


class _Gated(nn.Module):
    """A network whose forward reads values (cannot run on the meta device), with BatchNorm statistics."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.bn(self.conv(x))
        return x.flatten(1) if x.abs().sum() >= 0 else x.mean((2, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_width_of_a_network_run_on_blank_images_leaves_its_batchnorm_statistics_and_gives_its_dtype(dtype):
    """A mutation audit: the blank images that measure a network the meta device cannot run through in training
    mode (its BatchNorm running statistics then learned blank images, for a learner built on it), or the width
    said in float32 whatever the network's dtype, each survived every test."""
    net = _Gated().to(dtype).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert feature_width(net, 8, torch.device("cpu"), dtype) == (4 * 6 * 6, dtype)
    assert net.training and all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


class _RunningCenter(nn.Module):
    """A custom layer (traced through, not a leaf) that updates its own statistic in place in training mode."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.ones(channels))
        self.register_buffer("calls", torch.zeros(()), persistent=False)

    def forward(self, x):
        if self.training:
            self.mean.mul_(0.5).add_(0.5 * x.detach().mean((0, 2, 3)))
            self.calls = self.calls + 1  # another tensor in its place
        return x - self.mean[:, None, None]


def test_a_forward_that_updates_its_own_tensors_is_hooked_and_tracing_leaves_them_as_they_were():
    """A user test: tracing ran a custom layer's in-place update of its statistic on the network's own tensor, once
    per trace (building a learner moved it twice), and the traced forward left the update out (training never moved
    it); such a network is cut with a hook, as byol-pytorch takes it, its tensors as they were."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), _RunningCenter(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    mean, calls = net[1].mean, net[1].calls
    with pytest.warns(UserWarning, match=r"net's forward changes 1\.mean, 1\.calls when it runs"):
        cut = cut_at(net, 3)
    assert net[1].mean is mean and net[1].calls is calls
    assert torch.equal(mean, torch.ones(4)) and calls.item() == 0
    x, copied = torch.rand(2, 3, 8, 8), copy.deepcopy(net)
    with torch.no_grad():
        torch.testing.assert_close(cut(x), copied[:4](x))
    torch.testing.assert_close(net[1].mean, copied[1].mean)
    assert net[1].calls.item() == 1
