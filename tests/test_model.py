import copy
import warnings
from itertools import chain

import pytest
import torch
import torchvision
from torch import nn

import byol.distributed
import byol.dropin
from byol import BYOL, resnet
from byol.augment import paper_views
from byol.backbones import HookedLayer, cut_at
from byol.distributed import GlobalBatchNorm
from byol.schedules import tau_schedule


def identity(x):
    return x


def small_byol(**kwargs):
    torch.manual_seed(0)
    net = resnet("resnet18", cifar_stem=True, width=8)
    kwargs.setdefault("augment_fn", identity)
    kwargs.setdefault("augment_fn2", identity)
    model = BYOL(net, image_size=32, hidden_layer="avgpool", projection_size=16,
                 projection_hidden_size=32, **kwargs)
    return net, model


def views(seed=0, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.rand(n, 3, 32, 32, generator=g)


def test_structure_after_init():
    _, model = small_byol()
    assert isinstance(model.online.projector[0], nn.Linear) and model.online.projector[0].in_features == 64
    assert isinstance(model.online.projector[1], nn.BatchNorm1d)
    assert model.predictor[0].in_features == 16 and model.predictor[-1].out_features == 16
    online = dict(model.online.named_parameters())
    target = dict(model.target.named_parameters())
    assert online.keys() == target.keys()  # the target copies encoder and projector, not the predictor
    assert all(not p.requires_grad for p in target.values())


def test_target_gets_no_gradient_and_optimizer_leaves_it():
    _, model = small_byol()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    target_before = [p.clone() for p in model.target.parameters()]
    online_before = [p.clone() for p in model.online.parameters()]
    v1, v2 = views()
    for _ in range(2):
        opt.zero_grad()
        model(v1, v2).backward()
        opt.step()
    assert all(p.grad is None for p in model.target.parameters())
    for b, p in zip(target_before, model.target.parameters()):
        torch.testing.assert_close(p, b, rtol=0, atol=0)
    assert any(not torch.equal(b, p) for b, p in zip(online_before, model.online.parameters()))


def test_loss_is_symmetric_in_the_views():
    _, model = small_byol()
    v1, v2 = views()
    torch.testing.assert_close(model(v1, v2), model(v2, v1))


def test_concat_views_shares_batchnorm_statistics():
    _, per_view = small_byol()
    _, concat = small_byol(concat_views=True)
    v1, v2 = views()
    per_view.eval(), concat.eval()  # with running statistics both are the same function
    torch.testing.assert_close(per_view(v1, v2), concat(v1, v2))
    per_view.train(), concat.train()
    a, b = per_view(v1, v2), concat(v1, v2)
    assert torch.isfinite(a) and torch.isfinite(b)
    assert not torch.allclose(a, b)  # different BatchNorm batches -> different outputs


def test_update_target_through_the_model():
    _, model = small_byol()
    with torch.no_grad():
        for p in model.online.parameters():
            p.add_(1.0)
    model.update_target(0.0)
    for po, pt in zip(model.online.parameters(), model.target.parameters()):
        torch.testing.assert_close(pt, po, rtol=0, atol=0)


def test_update_moving_average_follows_schedule_or_constant():
    _, model = small_byol(moving_average_decay=0.99, total_steps=10)
    assert model.current_tau() == pytest.approx(0.99)
    for _ in range(5):
        model.update_moving_average()
    assert model.ema_step == 5
    assert model.current_tau() == pytest.approx(tau_schedule(5, 10, 0.99))
    # The step count travels in the state_dict.
    _, other = small_byol(moving_average_decay=0.99, total_steps=10)
    other.load_state_dict(model.state_dict())
    assert other.ema_step == 5
    _, constant = small_byol(moving_average_decay=0.9)
    constant.update_moving_average()
    assert constant.current_tau() == 0.9


def test_no_momentum_uses_online_network_as_target():
    _, model = small_byol(use_momentum=False)
    assert model.target is None
    v1, v2 = views()
    assert torch.isfinite(model(v1, v2))
    model.update_moving_average()  # a no-op, not an error


def test_return_embedding():
    _, model = small_byol()
    x = torch.rand(4, 3, 32, 32)
    projection, embedding = model(x, return_embedding=True)
    assert projection.shape == (4, 16) and embedding.shape == (4, 64)
    assert model(x, return_embedding=True, return_projection=False).shape == (4, 64)


def test_byol_pytorch_style_training_improves_the_network_passed_in(tmp_path):
    torch.manual_seed(0)
    net = resnet("resnet18", cifar_stem=True, width=8)
    learner = BYOL(net, image_size=32, hidden_layer="avgpool", projection_size=16, projection_hidden_size=32)
    opt = torch.optim.Adam(learner.parameters(), lr=3e-4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    for _ in range(2):
        loss = learner(images)  # both views drawn inside with the default augmentations
        opt.zero_grad()
        loss.backward()
        opt.step()
        learner.update_moving_average()
    after = net.state_dict()
    changed = [k for k in before if k.endswith("weight") and not torch.equal(before[k], after[k])]
    assert "conv1.weight" in changed and "layer4.1.conv2.weight" in changed
    assert torch.equal(before["fc.weight"], after["fc.weight"])  # the classifier is not used
    torch.save(net.state_dict(), tmp_path / "net.pt")
    reloaded = resnet("resnet18", cifar_stem=True, width=8)
    reloaded.load_state_dict(torch.load(tmp_path / "net.pt", weights_only=True))
    torch.testing.assert_close(reloaded.layer1[0].conv1.weight, learner.encoder.body.layer1.get_submodule("0").conv1.weight)


# byol-pytorch 0.9.1 compatibility: what its users write works the same way here.

class Branchy(nn.Module):
    """A network with data-dependent control flow, which symbolic tracing cannot cut."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        h = self.conv(x).mean((2, 3))
        if h.sum() > 0:
            h = h * 2
        return self.fc(h)


def test_projector_and_predictor_go_to_the_networks_device():
    net = resnet("resnet18", cifar_stem=True, width=8).to("meta")
    learner = BYOL(net, image_size=32, projection_size=16, projection_hidden_size=32)
    tensors = dict(chain(learner.named_parameters(), learner.named_buffers()))
    assert "online.projector.0.weight" in tensors and "predictor.0.weight" in tensors
    assert {name: t.device.type for name, t in tensors.items() if t.device.type != "meta"} == {}


def test_default_hidden_layer_is_the_penultimate_child():
    net = torchvision.models.resnet18()
    learner = BYOL(net, image_size=64, projection_size=16, projection_hidden_size=32)
    assert learner.online.projector[0].in_features == 512  # avgpool's width, not fc's 1000
    net = resnet("resnet18", cifar_stem=True, width=8).eval()
    learner = BYOL(net, image_size=32, projection_size=16, projection_hidden_size=32).eval()
    x = torch.rand(2, 3, 32, 32)
    trunk = nn.Sequential(*list(net.children())[:-1])  # up to avgpool, without fc
    torch.testing.assert_close(learner(x, return_embedding=True, return_projection=False), trunk(x).flatten(1))


def test_hidden_layer_minus_one_is_the_networks_own_output_without_tracing():
    torch.manual_seed(0)
    net = Branchy()
    learner = BYOL(net, image_size=16, hidden_layer=-1, projection_size=16, projection_hidden_size=32,
                   augment_fn=identity)
    x = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(learner(x, return_embedding=True, return_projection=False), net(x))
    learner(x).backward()
    assert net.conv.weight.grad is not None


def test_a_networks_own_output_of_more_than_two_dimensions_is_flattened_as_byol_pytorch_does():
    """hidden_layer=-1 on a network ending in a pooling layer, (B, C, 1, 1): the projector takes it
    flattened, and the embedding is (B, C)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    learner = BYOL(net, image_size=16, hidden_layer=-1, projection_size=16, projection_hidden_size=32)
    x = torch.rand(4, 3, 16, 16)
    learner(x).backward()
    assert net[0].weight.grad is not None
    projection, embedding = learner(x, return_embedding=True)
    assert projection.shape == (4, 16)
    torch.testing.assert_close(embedding, net(x).flatten(1))


def test_a_network_tracing_cannot_cut_is_cut_by_a_forward_hook_as_byol_pytorch_does():
    """Branchy's forward branches on a value, so symbolic tracing fails: its default hidden layer
    (-2, the conv) is taken by a forward hook while the whole network runs, and training reaches it."""
    torch.manual_seed(0)
    net = Branchy()
    with pytest.warns(UserWarning, match="could not cut the network at hidden_layer='conv' .*forward hook"):
        learner = BYOL(net, image_size=16, projection_size=16, projection_hidden_size=32, augment_fn=identity)
    assert type(learner.encoder).__name__ == "HookedLayer"
    x = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(learner(x, return_embedding=True, return_projection=False), net.conv(x).flatten(1))
    learner(x).backward()
    assert net.conv.weight.grad is not None and net.fc.weight.grad is None  # fc runs, unused
    target = learner.target.encoder  # the target's copy hooks its own copy of the layer
    torch.testing.assert_close(target(x), target.net.conv(x).flatten(1))
    assert not any(m._forward_hooks for m in chain(net.modules(), target.modules()))  # removed after each call
    with pytest.raises(ValueError, match="could not cut the network at hidden_layer='conv'"):
        cut_at(Branchy(), "conv", hook_fallback=False)  # what the config's models ask for: no silent hook


def test_a_hooked_layer_is_its_own_output_even_with_an_in_place_layer_after_it():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Flatten())
    encoder = HookedLayer(net, "1")  # the BatchNorm, whose output the ReLU then changes in place
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(encoder(x), net[1](net[0](x)).flatten(1))
    assert float(encoder(x).detach().min()) < 0  # not the ReLU's output


def test_sync_batchnorm_applies_to_projector_and_predictor():
    def norms(model):
        return [type(model.online.projector[1]), type(model.predictor[1]), type(model.target.projector[1])]

    _, plain = small_byol(sync_batchnorm=False)
    _, synced = small_byol(sync_batchnorm=True)
    assert norms(plain) == [nn.BatchNorm1d] * 3 and norms(synced) == [nn.SyncBatchNorm] * 3
    assert type(synced.online.encoder.body.bn1) is nn.BatchNorm2d  # the network's own are left as they are
    v1, v2 = views()
    torch.testing.assert_close(synced(v1, v2), plain(v1, v2))  # one process: the same statistics
    assert norms(small_byol()[1]) == [nn.BatchNorm1d] * 3  # None: no process group, no sync


def test_sync_batchnorm_default_follows_the_process_group(monkeypatch):
    monkeypatch.setattr(byol.dropin, "world_size", lambda: 2)
    _, model = small_byol()  # None, in a process group of 2 (on the CPU: PyTorch's SyncBatchNorm refuses)
    assert type(model.online.projector[1]) is GlobalBatchNorm and type(model.predictor[1]) is GlobalBatchNorm
    assert type(small_byol(sync_batchnorm=False)[1].predictor[1]) is nn.BatchNorm1d


def test_online_encoder_is_byol_pytorchs():
    net, learner = small_byol()
    online_encoder = learner.online_encoder
    assert online_encoder.net is net and online_encoder.projector is learner.online.projector
    x = torch.rand(4, 3, 32, 32)
    projection, representation = online_encoder(x)
    assert projection.shape == (4, 16) and representation.shape == (4, 64)
    assert online_encoder(x, return_projection=False).shape == (4, 64)
    expected = {f"net.{k}" for k in net.state_dict()} | \
        {f"projector.{k}" for k in learner.online.projector.state_dict()}  # byol-pytorch's keys
    assert set(online_encoder.state_dict()) == expected
    assert {id(p) for p in online_encoder.parameters()} >= {id(p) for p in learner.online.parameters()}
    assert not any(k.startswith("net.") for k in learner.state_dict())  # checkpoints keep their keys


def test_augment_fn_alone_draws_both_views():
    calls = []

    def augment(x):
        calls.append(x)
        return x

    _, model = small_byol(augment_fn=augment, augment_fn2=None)
    assert model.augment_fn2 is augment
    model(views()[0])
    assert len(calls) == 2


def test_float_images_in_0_255_are_refused_at_the_first_batch(monkeypatch):
    _, model = small_byol(augment_fn=None, augment_fn2=None)  # the paper's views: uint8 or [0, 1]
    images = torch.rand(4, 3, 32, 32)
    with pytest.raises(ValueError, match="divide it by 255"):
        model(images * 255)
    with pytest.raises(ValueError, match="images of dtype torch.int64 are neither uint8"):
        model((images * 255).long())  # before: taken as floats in [0, 1], views all but white
    checks = []
    monkeypatch.setattr(byol.dropin, "check_pixel_range", checks.append)
    model(images), model(images)
    assert len(checks) == 1  # once: each check is a host sync
    _, custom = small_byol()  # the user's own augmentations take whatever range they take
    assert torch.isfinite(custom(images * 255))


def test_every_batch_s_dtype_is_checked_and_the_first_s_nan(monkeypatch):
    """A user test: a learner first called with torch.rand trained on later int64 or bool batches as
    floats, its views all but white; a NaN first batch trained on, poisoning BatchNorm's statistics."""
    _, model = small_byol(augment_fn=None, augment_fn2=None)
    images = torch.rand(4, 3, 32, 32)
    model(images)  # the first batch: its range checked
    for later in ((images * 255).long(), images > 0.5):
        with pytest.raises(ValueError, match=f"images of dtype {later.dtype} are neither uint8"):
            model(later)
    assert torch.isfinite(model((images * 255).to(torch.uint8)))
    _, fresh = small_byol(augment_fn=None, augment_fn2=None)
    with pytest.raises(ValueError, match="holds NaN"):
        fresh(torch.full((4, 3, 32, 32), float("nan")))


def test_return_embedding_refuses_pixels_it_would_feed_the_network_as_they_are():
    """A user test: README says feed uint8 or floats in [0, 1], but learner(uint8, return_embedding=True)
    failed inside the first convolution ("expected scalar type Byte but found Float")."""
    _, model = small_byol(augment_fn=None, augment_fn2=None)
    model.eval()
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(ValueError, match="return_embedding feeds the images to the network as they are, as "
                                         "byol-pytorch does, so torch.uint8 cannot go in"):
        model(pixels, return_embedding=True)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (model.augment1.config.mean, model.augment1.config.std))
    x = (pixels / 255 - mean) / std  # as the message says: normalized as the views are
    torch.testing.assert_close(model(x, return_embedding=True, return_projection=False), model.encoder(x).flatten(1))
    _, custom = small_byol()  # the user's own augmentations: whatever the network takes, unchecked
    custom.eval()
    assert custom(torch.rand(2, 3, 32, 32), return_embedding=True)[1].shape == (2, 64)


def test_two_views_are_refused_as_pixels_the_network_would_take_as_they_are():
    """A user test: learner(view1, view2) with uint8 views failed inside the first convolution
    ("expected scalar type Byte but found Float"); the docs did not say they go in as they are."""
    _, model = small_byol(augment_fn=None, augment_fn2=None)
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    for view1, view2 in ((pixels, pixels / 255), (pixels / 255, pixels)):
        with pytest.raises(ValueError, match=r"^learner\(view1, view2\) feeds the views to the network as they "
                                             r"are, so torch.uint8 cannot go in: .* learner\(images\), which"):
            model(view1, view2)
    assert torch.isfinite(model(pixels / 255, pixels / 255))
    _, custom = small_byol()  # the user's own augmentations: whatever the network takes, unchecked
    with pytest.raises(RuntimeError, match="Byte"):
        custom(pixels, pixels)


@pytest.mark.parametrize("setting, value", [("moving_average_decay", 1.5), ("moving_average_decay", -1),
                                            ("moving_average_decay", "0.99"), ("projection_size", 0),
                                            ("projection_size", None), ("projection_hidden_size", 2.5),
                                            ("total_steps", 0), ("feature_dim", 0), ("feature_dim", True),
                                            ("feature_dim", -5), ("feature_dim", "576")])
def test_settings_that_build_a_broken_learner_fail_at_construction(setting, value):
    """A user test: tau 1.5 extrapolated the target away from the online network, and projection_size=0
    built empty layers, both silently; feature_dim=0 was taken as None and True as 1 (another one)."""
    settings = {"feature_dim": 64, setting: value}
    with pytest.raises(ValueError, match=f"{setting}.* but got {value!r}"):
        BYOL(resnet("resnet18", cifar_stem=True, width=8), image_size=32, **settings)


@pytest.mark.parametrize("tau", [0, 0.0, 1.0])
def test_the_ends_of_the_moving_average_decay_are_taken(tau):
    """tau 0 (the target is the online network: the paper's ablation, table 5a) and 1 (a fixed target) are
    settings, not mistakes (a mutation audit: refusing tau 0 passed every test)."""
    BYOL(resnet("resnet18", cifar_stem=True, width=8), image_size=32, feature_dim=64, moving_average_decay=tau)


def test_normalized_or_random_float_images_warn_once_and_train(recwarn):
    """byol-pytorch's README trains on torch.randn images, and a ToTensor()+Normalize loader gives
    values below 0: both run, with a warning that says what the default augmentations expect."""
    torch.manual_seed(0)
    for images in (torch.randn(4, 3, 32, 32), (torch.rand(4, 3, 32, 32) - 0.485) / 0.229):
        _, model = small_byol(augment_fn=None, augment_fn2=None)
        with pytest.warns(UserWarning, match="normalized") as caught:
            loss = model(images)
        assert caught[0].filename == __file__  # it points at the caller's line
        assert torch.isfinite(loss)
        model(images)  # the second batch is not checked
    _, model = small_byol(augment_fn=None, augment_fn2=None)
    recwarn.clear()
    model(torch.rand(4, 3, 32, 32))
    assert not [w for w in recwarn if "normalized" in str(w.message)]


def test_learner_to_and_eval_reach_all_of_the_network_passed_in():
    """The network is not a submodule (the encoder holds its parameters), yet .to() and .eval() reach
    the parts the encoder leaves out (a ResNet's fc), as byol-pytorch's registered net does."""
    net, learner = small_byol()
    learner.to(torch.float64)
    assert net.fc.weight.dtype == torch.float64 and net.conv1.weight.dtype == torch.float64
    assert net(torch.rand(2, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64
    assert learner.online.encoder.body.conv1.weight is net.conv1.weight  # still one set of weights
    learner.eval()
    assert not any(m.training for m in net.modules())
    learner.train()
    assert all(m.training for m in net.modules())
    # Wrapping leaves each module's mode as given (tracing and the width probe set them all, then).
    net = resnet("resnet18", cifar_stem=True, width=8)
    net.layer1.eval()
    BYOL(net, image_size=32, hidden_layer="avgpool", projection_size=16, projection_hidden_size=32)
    assert net.training and net.layer2.training and not any(m.training for m in net.layer1.modules())


def test_byol_pytorchs_positional_return_embedding_and_attribute_names():
    net, learner = small_byol()
    x = torch.rand(4, 3, 32, 32)
    projection, embedding = learner(x, True)  # byol-pytorch: forward(x, return_embedding, return_projection)
    assert projection.shape == (4, 16) and embedding.shape == (4, 64)
    torch.testing.assert_close(learner(x, True, False), embedding)
    torch.testing.assert_close(learner(x, True, return_projection=False), embedding)
    assert learner.online_predictor is learner.predictor and learner.use_momentum
    assert learner.augment1 is learner.augment_fn and learner.augment2 is learner.augment_fn2
    learner.eval()
    target_projection, target_embedding = learner.target_encoder(x)
    torch.testing.assert_close(target_projection, learner.target(x))
    assert target_embedding.shape == (4, 64)
    with torch.no_grad():
        learner.online.projector[0].weight.add_(1.0)
    learner.reset_moving_average()  # the target becomes a copy of the online branch as it is now
    torch.testing.assert_close(learner.target(x), learner.online(x))
    assert not learner.target.projector[0].weight.requires_grad
    assert BYOL(resnet("resnet18", cifar_stem=True, width=8), 32, "avgpool", 16, 32, use_momentum=False
                ).target_encoder is None


def test_positional_arguments_in_byol_pytorchs_order():
    net = resnet("resnet18", cifar_stem=True, width=8)
    learner = BYOL(net, 32, "avgpool", 16, 32, identity, identity, 0.9, False, True)
    assert learner.moving_average_decay == 0.9 and learner.target is None  # use_momentum=False
    assert type(learner.predictor[1]) is nn.SyncBatchNorm  # sync_batchnorm=True
    assert learner.total_steps is None  # ours are keyword-only


def test_a_batch_of_the_wrong_shape_is_a_clear_error():
    torch.manual_seed(0)
    net = resnet("resnet18", cifar_stem=True, width=8)
    learner = BYOL(net, image_size=32, hidden_layer="avgpool", projection_size=16, projection_hidden_size=32)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"at least 2 inputs in training mode.*got shape \(1, 3, 32, 32\)"):
        learner(images[:1])  # the projector's BatchNorm needs two images
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*got shape \(3, 32, 32\)"):
        learner(images[0])  # one image without its batch dimension
    with pytest.raises(ValueError, match=r"got shape \(4, 32, 32, 3\)"):
        learner(images.permute(0, 2, 3, 1))  # channels last
    with pytest.raises(ValueError, match=r"got shape \(1, 3, 32, 32\)"):
        learner(images[:1].float() / 255, images[:1].float() / 255)  # two views of one image each
    learner.eval()  # running statistics: one image is fine
    assert torch.isfinite(learner(images[:1]))
    assert learner(images[:1].float() / 255, return_embedding=True)[1].shape == (1, 64)
    with pytest.raises(ValueError, match=r"got shape \(3, 32, 32\)"):
        learner(images[0])


def test_a_wrong_net_or_image_size_is_a_clear_error_at_construction():
    """They failed deep inside torch (a kernel larger than the input, "'str' object has no attribute
    'parameters'"): now one sentence naming the argument."""
    net = resnet("resnet18", cifar_stem=True, width=8)
    with pytest.raises(TypeError, match=r"^net must be a torch.nn.Module, .* but got str 'resnet'; for a ResNet by "
                                        r"name, use byol.resnet\('resnet50'\)$"):
        BYOL("resnet", image_size=32)
    for size in (0, 1, -3):  # the paper's view 1 blurs with reflect padding: 2 pixels at least
        with pytest.raises(ValueError, match=f"^image_size must be >= 2, the side of the augmented views .* {size}$"):
            BYOL(net, image_size=size)
    for size in (32.0, "32", True):
        with pytest.raises(TypeError, match="^image_size must be a whole number"):
            BYOL(net, image_size=size)
    BYOL(net, image_size=2, projection_size=8, projection_hidden_size=16)(torch.zeros(2, 3, 8, 8))  # the least
    with pytest.raises(ValueError, match=r"^net does not run on two blank 4x4 images \(image_size=4\): "
                                         r".*Kernel size"):
        BYOL(nn.Sequential(nn.Conv2d(3, 4, 7), nn.Flatten()), image_size=4, hidden_layer=-1)


class FixedSize(nn.Module):
    """A network that checks its input's size as a bare ``assert`` does (which pytest would rewrite here,
    giving it a message), in a way symbolic tracing cannot take."""

    def __init__(self):
        super().__init__()
        self.conv, self.pool = nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        if x.shape[-1] != 32:
            raise AssertionError
        return self.pool(self.conv(x))


def test_a_network_that_asserts_its_input_size_is_a_clear_error_at_construction():
    """A user test: torchvision's ViT at another image_size raised a bare AssertionError ("Wrong image
    height! ..."), where the docs promise a ValueError naming image_size; so did a bare ``assert``. The advice was
    feature_dim=D alone (a user test), which a network built for another image size does not need."""
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=1,
                                              hidden_dim=8, mlp_dim=8)
    with pytest.raises(ValueError, match=r"^net does not run on two blank 16x16 images \(image_size=16\): "
                                         r"Wrong image height! Expected 32 but got another!; .*: give image_size the "
                                         r"size the network takes, or .*feature_dim=D\)$"):
        BYOL(vit, image_size=16, hidden_layer="encoder")  # (not torch.fx's "but got Proxy(getitem_2)!")
    learner = BYOL(vit, image_size=32, hidden_layer="encoder", projection_hidden_size=16)
    assert learner.online.projector[0].in_features == 5 * 8  # (class token and 4 patches) x hidden_dim
    with pytest.warns(UserWarning, match="symbolic tracing could not cut"), pytest.raises(
            ValueError, match=r"^net does not run on two blank 16x16 images \(image_size=16\): AssertionError; "):
        BYOL(FixedSize(), image_size=16, hidden_layer="pool")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_a_network_converted_before_the_learner_is_built_trains_in_its_dtype(dtype):
    """A user test: BYOL(net.double(), ...) failed with "net does not run on 32x32 images ... Input type
    (float) and bias type (double)": the width was probed, and the MLPs built, in float32."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 10)).to(dtype)
    learner = BYOL(net, image_size=16, projection_size=8, projection_hidden_size=16)
    loss = learner(torch.rand(4, 3, 16, 16))
    loss.backward()
    assert net[0].weight.grad.dtype == dtype  # (the loss is float32: byol_loss computes it so)
    assert {p.dtype for p in learner.parameters()} == {dtype}


def test_a_bfloat16_trunk_that_returns_float32_gets_float32_mlps():
    """From a review: the MLPs were built in the network's dtype, not in that of the representation
    it returns, and a bfloat16 trunk that converts its output to float32 failed at its first call."""
    class Trunk(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).bfloat16()

        def forward(self, x):
            return self.body(x).float()

    torch.manual_seed(0)
    net = Trunk()
    learner = BYOL(net, image_size=16, hidden_layer=-1, projection_size=8, projection_hidden_size=16)
    assert learner.online.projector[0].weight.dtype == torch.float32
    learner(torch.rand(4, 3, 16, 16)).backward()
    assert net.body[0].weight.grad.dtype == torch.bfloat16 and net.body[0].weight.grad.abs().sum() > 0


def test_a_learner_built_under_autocast_has_float32_mlps_for_a_float32_network():
    """From a review: a network whose forward reads values is probed by running it, and under the
    caller's bf16 autocast that gave bfloat16 MLPs, which failed at the first call outside it."""
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())

        def forward(self, x):
            return self.body(x) if x.sum() >= 0 else -self.body(x)  # (on the meta device: no value to read)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        learner = BYOL(Branchy(), image_size=16, hidden_layer=-1, projection_size=8, projection_hidden_size=16)
    assert learner.online.projector[0].weight.dtype == torch.float32
    learner(torch.rand(4, 3, 16, 16)).backward()


class DictOutput(nn.Module):
    """A detection- or multi-head-style network: its forward returns a dict."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        features = self.backbone(x).flatten(1)
        return {"features": features, "logits": self.head(features)}


class TupleLayer(nn.Module):
    def forward(self, x):
        return x, x.mean()


class BranchyTuple(nn.Module):
    """A layer giving a tuple, in a forward that symbolic tracing cannot cut."""

    def __init__(self):
        super().__init__()
        self.pair, self.conv = TupleLayer(), nn.Conv2d(3, 4, 3)

    def forward(self, x):
        h, m = self.pair(x)
        return self.conv(h * 2 if m > 0 else h)


def test_a_representation_that_is_not_one_tensor_is_a_clear_error_naming_hidden_layer():
    """A dict or tuple output failed with "'dict' object has no attribute 'flatten'"; a hidden layer
    giving one is named. A layer that gives a tensor trains."""
    with pytest.raises(TypeError, match=r"^the network's own output \(hidden_layer=-1\) is a dict with keys "
                                        r"\['features', 'logits'\], not a tensor: .* set hidden_layer"):
        BYOL(DictOutput(), image_size=8, hidden_layer=-1)
    with pytest.warns(UserWarning, match="forward hook"):  # tracing fails on the branch
        with pytest.raises(TypeError, match=r"^the output of hidden_layer='pair' is a tuple, not a tensor"):
            BYOL(BranchyTuple(), image_size=8, hidden_layer="pair")
    learner = BYOL(DictOutput(), image_size=8, hidden_layer="backbone", projection_size=8, projection_hidden_size=16)
    learner(torch.rand(2, 3, 8, 8)).backward()
    # A tensor in eval mode, where the width is found, and a namedtuple in training mode (GoogLeNet's aux outputs).
    googlenet = torchvision.models.googlenet(aux_logits=True, init_weights=True)
    learner = BYOL(googlenet, image_size=32, hidden_layer=-1, projection_size=8, projection_hidden_size=16)
    with pytest.raises(TypeError, match=r"^the projector's input, the representation at hidden_layer, is a "
                                        r"GoogLeNetOutputs, not a tensor"):
        learner(torch.rand(2, 3, 32, 32))


def test_inputs_that_are_not_images_are_a_clear_error_without_feature_dim():
    """The width found on (2, 3, H, W) images was wrong for a network on vectors (a Linear applied
    to the last axis gave 384, not 8): the first call failed with "mat1 and mat2 shapes cannot be
    multiplied"; now it says to give feature_dim, with which it trains."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    noise = lambda x: x + 0.1 * torch.randn_like(x)  # noqa: E731
    learner = BYOL(net, image_size=16, hidden_layer=-1, augment_fn=noise, projection_hidden_size=32)
    with pytest.raises(ValueError, match=r"takes 384 features, but its input has 8 \(shape \(4, 8\)\); .* give "
                                         r"BYOL\(\.\.\., feature_dim=D\)"):
        learner(torch.rand(4, 16))
    learner = BYOL(net, image_size=16, hidden_layer=-1, augment_fn=noise, projection_hidden_size=32, feature_dim=8)
    learner(torch.rand(4, 16)).backward()
    assert net[0].weight.grad is not None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_a_learner_converted_to_another_dtype_trains_on_its_default_views(dtype):
    """learner.to(dtype) reaches the network, but the default views came out float32: "Input type
    (torch.FloatTensor) and weight type (CPUBFloat16Type) should be the same"."""
    torch.manual_seed(0)
    net = resnet("resnet18", cifar_stem=True, width=8)
    learner = BYOL(net, image_size=16, projection_size=8, projection_hidden_size=16).to(dtype)
    learner(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)).backward()
    assert net.conv1.weight.grad.dtype == dtype


def test_one_image_in_training_where_batchnorm_does_not_need_two():
    _, model = small_byol()
    x = torch.rand(1, 3, 32, 32)
    assert model(x, return_embedding=True, return_projection=False).shape == (1, 64)  # the encoder alone
    with pytest.raises(ValueError, match="at least 2 inputs"):
        model(x, return_embedding=True)  # the projector needs two
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    gray = BYOL(net, image_size=32, hidden_layer=-1, projection_size=16, projection_hidden_size=32,
                augment_fn=identity, feature_dim=8)
    assert torch.isfinite(gray(torch.rand(4, 1, 32, 32)))  # the user's own augmentations: any channels
    mlp = BYOL(nn.Sequential(nn.Linear(10, 16), nn.ReLU()), hidden_layer=-1, feature_dim=16, augment_fn=identity,
               projection_size=8, projection_hidden_size=16)
    x = torch.randn(4, 10)  # not images at all: any shape (B, ...) with the user's own augmentations
    assert torch.isfinite(mlp(x)) and torch.isfinite(mlp(x, x)) and mlp(x, return_embedding=True)[1].shape == (4, 16)
    concat = BYOL(net, image_size=32, hidden_layer=-1, projection_size=16, projection_hidden_size=32,
                  augment_fn=identity, feature_dim=8, concat_views=True, use_predictor=False)
    one = torch.rand(1, 1, 32, 32)
    assert torch.isfinite(concat(one, one))  # views concatenated, no predictor: every BatchNorm sees two rows


def test_one_image_per_process_when_batchnorm_is_synchronized(monkeypatch):
    monkeypatch.setattr(byol.dropin, "world_size", lambda: 2)
    monkeypatch.setattr(byol.distributed, "sum_over_ranks", lambda t: t * 2)  # two equal processes
    _, model = small_byol()
    x = torch.rand(1, 3, 32, 32)
    assert torch.isfinite(model(x, x))  # statistics over 2 images, one per process


def test_synchronized_batchnorm_under_bf16_autocast_as_batchnorm(monkeypatch):
    """bf16 in, bf16 out, statistics in float32 (a torchrun on a CPU with bf16, where the running
    statistics' update failed on the dtype): as the CPU's own BatchNorm on the same bf16 input."""
    monkeypatch.setattr(byol.distributed, "sum_over_ranks", lambda t: t)  # one process
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(4)
    synced = GlobalBatchNorm.like(copy.deepcopy(ref))  # (like shares its running statistics)
    x = (torch.randn(6, 4, 5, 5) * 3 + 50).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, expected = synced(x), ref(x)
    assert y.dtype == expected.dtype == torch.bfloat16 and synced.running_mean.dtype == torch.float32
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(synced.running_mean, ref.running_mean)
    torch.testing.assert_close(synced.running_var, ref.running_var)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_synchronized_batchnorm_of_a_converted_projector_keeps_its_dtype(monkeypatch, dtype):
    """From reviews: BYOL(net.double(), sync_batchnorm=True) on the CPU (gloo) built float32 running
    statistics and normalized in float32; then a bfloat16 one failed at its first call (lerp_'s dtypes)."""
    monkeypatch.setattr(byol.distributed, "sum_over_ranks", lambda t: t)  # one process
    torch.manual_seed(0)
    ref = nn.BatchNorm1d(4).to(dtype)
    synced = GlobalBatchNorm.like(copy.deepcopy(ref))
    x = (torch.randn(6, 4, dtype=torch.float64) * 3 + 50).to(dtype)
    y = synced(x)
    ref(x)  # (its running statistics; its bfloat16 output is 10x further from the exact one than this)
    assert synced.running_mean.dtype == synced.running_var.dtype == y.dtype == dtype
    exact = nn.BatchNorm1d(4).double()(x.double()).to(dtype)
    torch.testing.assert_close(y, exact)  # (float64's tolerance, which float32 arithmetic misses)
    torch.testing.assert_close((synced.running_mean, synced.running_var), (ref.running_mean, ref.running_var))
    torch.testing.assert_close(synced.eval()(x), ref.eval()(x))


def test_a_synchronized_batchnorm_like_another_shares_its_parameters_and_statistics(monkeypatch):
    """GlobalBatchNorm.like(bn) holds bn's own tensors, not copies: a network given to byol.pretrain under torchrun
    gets its layers back holding what they trained (a mutation audit: only the torchrun tests, in processes of
    their own, saw copies)."""
    monkeypatch.setattr(byol.distributed, "sum_over_ranks", lambda t: t)  # one process
    bn = nn.BatchNorm2d(4)
    synced = GlobalBatchNorm.like(bn)
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        assert getattr(synced, name) is getattr(bn, name), name
    synced(torch.randn(6, 4, 5, 5) * 3 + 50)
    assert int(bn.num_batches_tracked) == 1 and bn.running_mean.mean() > 1  # what it trained, in bn


def test_torch_compile_of_the_learner_checks_the_first_batch_without_a_warning_of_a_graph_break(capfd):
    """A user test: torch.compile(learner) trained, but its first call printed torch's 14-line warning of a
    graph break (Tensor.item() in the first batch's range check)."""
    torch._dynamo.reset()
    _, model = small_byol(augment_fn=None, augment_fn2=None)
    compiled = torch.compile(model, backend="eager")
    images = torch.rand(4, 3, 32, 32)
    torch.manual_seed(1)
    from torch._dynamo.utils import counters
    counters.clear()
    first, second = compiled(images), compiled(images)
    assert "Graph break" not in capfd.readouterr().err  # (torch warns once a process: the counters below)
    breaks = list(counters["graph_break"])  # (torch before 2.6 words it "torch._dynamo.disable() wrapped")
    assert len(breaks) == 1 and "disable" in breaks[0] and "item()" not in breaks[0], breaks
    _, eager = small_byol(augment_fn=None, augment_fn2=None)
    torch.manual_seed(1)
    torch.testing.assert_close((first, second), (eager(images), eager(images)))
    with pytest.raises(ValueError, match="reaches 255"):  # the check still runs
        torch.compile(small_byol(augment_fn=None, augment_fn2=None)[1], backend="eager")(images * 255)


def test_the_compile_check_takes_torch_2_2_s_is_compiling(monkeypatch):
    """From a review: torch.compiler.is_compiling came in torch 2.3, and pyproject allows torch 2.2,
    where torch._dynamo.is_compiling is the one (in later torch it calls the other, so it is stood in for)."""
    assert byol.dropin._compiling() is False
    assert byol.dropin._is_compiling is getattr(torch.compiler, "is_compiling", torch._dynamo.is_compiling)
    monkeypatch.delattr(torch.compiler, "is_compiling", raising=False)  # (absent in torch 2.2)
    monkeypatch.setattr(torch._dynamo, "is_compiling", lambda: "torch._dynamo's")
    assert byol.dropin._is_compiling_function()() == "torch._dynamo's"


def test_the_loss_is_each_views_prediction_regressing_the_other_views_target_projection():
    """A mutation audit: the loss against the same view's target, against the online network as the target,
    and without the predictor each survived every test. Paper, eq. 2 symmetrized: q(z1) regresses z'2 of the
    target, q(z2) regresses z'1, each as 2 - 2 cos."""
    _, model = small_byol()
    with torch.no_grad():  # a target that has moved away from the online branch, as after training
        for p in model.target.parameters():
            p.add_(0.05 * torch.randn_like(p))
    v1, v2 = views()
    loss = model(v1, v2)
    with torch.no_grad():  # training mode, as there: each view's own BatchNorm statistics
        p1, p2 = model.predictor(model.online(v1)), model.predictor(model.online(v2))
        t1, t2 = model.target(v1), model.target(v2)

    def regression(p, z):
        return (2 - 2 * torch.cosine_similarity(p, z, dim=1)).mean()

    torch.testing.assert_close(loss, regression(p1, t2) + regression(p2, t1))


def test_forward_views_also_returns_the_online_projection_of_view_1_detached():
    """A mutation audit: returning the prediction p1 in its place survived every test. The collapse monitor
    reads it (the std and effective rank of the projections z, SimSiam's and RankMe's statistic)."""
    _, model = small_byol()
    v1, v2 = views()
    _, z1 = model.forward_views(v1, v2)
    assert not z1.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(z1, model.online(v1))


def test_the_two_views_of_one_batch_are_drawn_with_augment_fn_then_augment_fn2():
    """A mutation audit: forward(images) drawing both views with augment_fn survived every test (the default
    recipes are checked as built, not as called). View 1 is augment_fn's, view 2 augment_fn2's, each once."""
    calls = []

    def first(x):
        calls.append("first")
        return x

    def second(x):
        calls.append("second")
        return x.flip(-1)

    _, model = small_byol(augment_fn=first, augment_fn2=second)
    images = views()[0]
    loss = model(images)
    assert calls == ["first", "second"]
    torch.testing.assert_close(loss, model(images, images.flip(-1)))


def test_concat_views_returns_the_online_projection_of_view_1():
    """A mutation audit: with concat_views, the second half of the 2B projections (view 2's) in place of the first
    survived every test; the collapse monitor reads view 1's, as without concat_views."""
    _, model = small_byol(concat_views=True)
    v1, v2 = views()
    _, z1 = model.forward_views(v1, v2)
    with torch.no_grad():
        torch.testing.assert_close(z1, model.online(torch.cat([v1, v2]))[:len(v1)])


def test_the_projector_and_predictor_are_linear_batchnorm_relu_linear():
    """A mutation audit: an MLP without its ReLU (a linear map, Linear and BatchNorm folded into one) survived
    every test. Paper, section 3.3: a linear layer, batch normalization, ReLU, a linear layer."""
    _, model = small_byol()
    for mlp in (model.online.projector, model.predictor, model.target.projector):
        assert [type(m) for m in mlp] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]


def test_the_default_views_are_the_papers_two_recipes_in_order():
    """A mutation audit: drawing both views with the first recipe survived every test. The paper's T and
    T' differ (blur 1.0 and 0.1, solarize 0 and 0.2: appendix B, table 6)."""
    torch.manual_seed(0)
    model = BYOL(resnet("resnet18", cifar_stem=True, width=8), image_size=32, hidden_layer="avgpool",
                 projection_size=16, projection_hidden_size=32)
    assert (model.augment_fn.config, model.augment_fn2.config) == paper_views(32)


def test_the_first_moving_average_step_uses_the_schedules_tau_at_step_0():
    """A mutation audit: counting the step before the update (tau of step 1 at the first call) survived
    every test. With total_steps=2 and tau_base 0.9 the schedule gives 0.9, then 0.95."""
    _, model = small_byol(moving_average_decay=0.9, total_steps=2)
    with torch.no_grad():
        for p in model.online.parameters():
            p.add_(1.0)
    for tau in (0.9, 0.95):
        assert tau == pytest.approx(tau_schedule(model.ema_step, 2, 0.9))
        before = [p.clone() for p in model.target.parameters()]
        model.update_moving_average()
        for b, po, pt in zip(before, model.online.parameters(), model.target.parameters()):
            torch.testing.assert_close(pt, tau * b + (1 - tau) * po)


def test_the_predictor_has_the_projectors_architecture():
    """A mutation audit: a predictor whose hidden layer was projection_size wide survived every test.
    Paper, section 3.3: "The predictor q uses the same architecture as g" (4096 hidden, 256 out)."""
    _, model = small_byol()  # projection_size=16, projection_hidden_size=32
    projector, predictor = model.online.projector, model.predictor

    def shapes(mlp):
        return [(type(m), tuple(p.shape for p in m.parameters())) for m in list(mlp)[1:]]

    assert predictor[0].in_features == 16 and predictor[0].out_features == 32
    assert shapes(predictor) == shapes(projector)


def test_floats_a_resize_took_a_little_above_1_are_taken_and_one_channel_is_refused():
    """Bicubic or antialiased resizing overshoots [0, 1] a little: such a batch is not taken for 0..255
    pixels; a one-channel batch is refused in one sentence (a mutation audit: both survived every test)."""
    _, model = small_byol(augment_fn=None, augment_fn2=None)  # the paper's views
    images = torch.rand(4, 3, 32, 32) * 1.1 - 0.05  # -0.05 to 1.05
    with warnings.catch_warnings():  # nor warned of as normalized (a mutation audit: a warning below 0 survived)
        warnings.filterwarnings("error", message="float images should be in")
        assert torch.isfinite(model(images))
    _, model = small_byol(augment_fn=None, augment_fn2=None)
    with pytest.raises(ValueError, match="divide it by 255"):
        model(images * 2.5)  # 2.6 at most: 0..255 pixels of a dark image, say
    gray = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"^BYOL's default augmentations take a batch of images shaped \(B, 3, H, W\), "
                                         r"but got shape \(4, 1, 32, 32\); for other inputs, pass augment_fn "
                                         r"\(and augment_fn2\) of your own$"):
        model(gray)


def test_learner_apply_of_an_init_function_reaches_every_module_with_the_default_views():
    """``learner.apply(init_fn)``, torch's way to (re)initialize weights, calls ``apply(fn)`` on every
    submodule: the default views' Augment among them, whose own ``apply(images, params)`` shadowed it
    (TypeError: missing 'params')."""
    torch.manual_seed(0)
    learner = BYOL(resnet("resnet18", cifar_stem=True, width=8), image_size=32, hidden_layer="avgpool",
                   projection_size=16, projection_hidden_size=32)
    seen = []
    assert learner.apply(seen.append) is learner
    assert learner.augment_fn in seen and learner.augment_fn2 in seen and learner.predictor in seen


def test_the_method_alone_trains_an_encoder_as_python_api_md_shows():
    """byol.BYOLModel, the method without byol-pytorch's surface (docs/python_api.md): the loss of two views, an
    optimizer step that moves the online branch and not the target, then update_target, which moves the target."""
    import byol
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    core = byol.BYOLModel(encoder, 8, 4, 16)
    assert core.encoder is encoder and core.target is not None
    optimizer = torch.optim.SGD([p for p in core.parameters() if p.requires_grad], lr=0.5)
    view1, view2 = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    target = [p.clone() for p in core.target.parameters()]
    online = [p.clone() for p in core.online.parameters()]
    loss, z1 = core.forward_views(view1, view2)
    assert loss.shape == () and 0 < loss.item() < 8 and z1.shape == (4, 4) and not z1.requires_grad
    loss.backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(target, core.target.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(online, core.online.parameters()))
    core.update_target(0.5)
    for before, now, source in zip(target, core.target.parameters(), core.online.parameters()):
        torch.testing.assert_close(now, 0.5 * before + 0.5 * source.detach())


@pytest.mark.parametrize("concat_views", [False, True])
def test_views_of_two_batch_sizes_are_one_sentence(concat_views):
    """A review: concatenated, views of 4 and 6 images gave a loss, pairing them as 5 and 5; one at a time,
    the loss's words about predictions and projections."""
    _, model = small_byol(concat_views=concat_views)
    view1, view2 = views(n=6)
    with pytest.raises(ValueError, match="^view1 and view2 are two views of the same images, one each, but they "
                                         "hold 4 and 6: give batches of one size$"):
        model(view1[:4], view2)


@pytest.mark.parametrize("batch", [None, [torch.rand(3, 32, 32)] * 2])
def test_a_batch_that_is_not_a_tensor_is_one_sentence_with_augment_fn_given(batch):
    """A review: with the user's own augment_fn, a list of images or None was Python's AttributeError ('list'
    object has no attribute 'shape'), in both calls."""
    _, model = small_byol()
    for call in (lambda: model(batch), lambda: model(batch, return_embedding=True)):
        with pytest.raises(TypeError, match=r"^BYOL takes a batch as a torch.Tensor \(B, \.\.\.\), but got "):
            call()
