"""byol-pytorch's scripts, run unchanged: what a user test of the drop-in found different."""

import copy
import importlib
import warnings
import zipfile

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from byol import BYOL, resnet
from byol.augment import paper_views
from byol.backbones import HiddenLayer


def identity(x):
    return x


def learner_on(net, **kwargs):
    kwargs.setdefault("hidden_layer", "avgpool")
    return BYOL(net, image_size=32, projection_size=16, projection_hidden_size=32, augment_fn=identity, **kwargs)


@pytest.mark.parametrize("trace", [True, False])
def test_a_layer_that_runs_twice_gives_its_last_output_as_byol_pytorch_hook_does(trace):
    """A BasicBlock's relu runs twice; byol-pytorch's hook keeps the last output, and ours took the
    first (4.66 apart on the same weights, no warning)."""
    torch.manual_seed(0)
    net = resnet("resnet18", cifar_stem=True, width=8).eval()
    x = torch.rand(2, 3, 32, 32)
    outputs = []
    hook = net.layer4[1].relu.register_forward_hook(lambda module, inputs, output: outputs.append(output.clone()))
    net(x)
    hook.remove()
    assert len(outputs) == 2 and not torch.allclose(outputs[0], outputs[1])
    learner = learner_on(net, hidden_layer="layer4.1.relu", trace=trace).eval()
    _, embedding = learner(x, return_embedding=True)
    torch.testing.assert_close(embedding, outputs[-1].flatten(1), rtol=0, atol=0)


class ModuleThenFunction(nn.Module):
    """A module ``relu`` once, then ``F.relu``; a module ``add`` then ``+``; modules ``act_1``, ``act_2``
    and no ``act``: torchvision's node names (``relu_1``, ``add_1``, ``act``) are not the modules'."""

    def __init__(self):
        super().__init__()
        self.conv, self.relu, self.conv2 = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)
        self.add, self.act_1, self.act_2 = nn.Identity(), nn.Sigmoid(), nn.Tanh()

    def forward(self, x):
        x = nn.functional.relu(self.conv2(self.relu(self.conv(x)) - 0.5))
        x = self.add(x) + 1
        return self.act_2(self.act_1(x) - 0.5).mean((2, 3))


@pytest.mark.parametrize("layer", ["relu", "add", "act_1", "act_2"])
def test_the_layer_taken_is_the_module_named_not_a_node_named_like_it(layer):
    """A review: picking calls by name took F.relu's node for hidden_layer='relu' (64 features for 144)
    and the '+' after a module 'add'; 'act_1' took act_2's output, before this change too."""
    torch.manual_seed(0)
    net = ModuleThenFunction().eval()
    x = torch.rand(2, 3, 16, 16)
    outputs = []
    getattr(net, layer).register_forward_hook(lambda module, inputs, output: outputs.append(output.clone()))
    net(x)
    expected = outputs[-1].flatten(1)
    traced = BYOL(net, image_size=16, hidden_layer=layer, augment_fn=identity, projection_hidden_size=8).eval()
    assert isinstance(traced.encoder, HiddenLayer)  # cut by tracing, not by the hook fallback
    torch.testing.assert_close(traced(x, return_embedding=True)[1], expected, rtol=0, atol=0)


def test_trace_false_follows_what_the_net_does_at_each_call():
    """Tracing fixes the network at construction: a hook on a container, a module replaced and an
    attribute read in forward were all ignored; with trace=False, as in byol-pytorch, they count."""
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = 1.0
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.pool(self.body(x) * self.scale).flatten(1))

    x = torch.rand(2, 3, 32, 32)
    for trace, follows in ((True, False), (False, True)):
        torch.manual_seed(0)
        net = Scaled()
        learner = learner_on(net, hidden_layer="pool", trace=trace).eval()
        before = learner(x, return_embedding=True)[1]
        fired = []
        net.body.register_forward_hook(lambda module, inputs, output: fired.append(1))
        net.scale = 0.0
        after = learner(x, return_embedding=True)[1]
        assert bool(fired) is follows and torch.equal(after, torch.zeros_like(after)) is follows
        assert not torch.equal(before, torch.zeros_like(before))


def test_byol_pytorch_simplicial_embedding_off_is_accepted_and_on_is_a_clear_error():
    """byol-pytorch 0.9 users who want the paper's BYOL pass use_simplicial_embeddings=False: a TypeError here."""
    net = resnet("resnet18", cifar_stem=True, width=8)
    learner_on(net, use_simplicial_embeddings=False, sem_num_simplices=16, sem_simplex_dim=4, sem_temperature=0.2)
    for asked in ({"use_simplicial_embeddings": True}, {"sem_temperature": 0.2}):  # alone: byol-pytorch's default on
        with pytest.raises(ValueError, match=r"^byol-pytorch's simplicial embedding \(use_simplicial_embeddings"):
            learner_on(net, **asked)


def test_return_embedding_given_positionally_as_any_truthy_number():
    """byol-pytorch's learner(x, 1): ours took 1 for a second view ("'int' object has no attribute 'shape'")."""
    learner = learner_on(resnet("resnet18", cifar_stem=True, width=8))
    x = torch.rand(4, 3, 32, 32)
    projection, embedding = learner(x, 1)
    assert projection.shape == (4, 16) and embedding.shape == (4, 64)
    assert learner(x, 1, False).shape == (4, 64)
    assert learner(x, 0).ndim == 0  # the loss
    for flag in (np.True_, torch.tensor(True), torch.tensor(1), 1.0):  # NumPy's, a 0-dim tensor, a float
        assert isinstance(learner(x, flag), tuple)
    with pytest.raises(TypeError, match=r"^the second argument must be a tensor \(the second view\) or"):
        learner(x, "yes")


def test_target_encoder_net_loads_into_the_network_and_is_the_target():
    """byol-pytorch's target_encoder.net is a copy of the whole net; ours had the traced encoder's
    keys (body.*, no fc), so saving it for the plain ResNet failed with 222 key errors."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    learner = learner_on(net)
    opt = torch.optim.SGD(learner.parameters(), lr=0.1)
    x = torch.rand(4, 3, 32, 32)
    learner(x).backward()
    opt.step()
    learner.update_moving_average()
    target_net = learner.target_encoder.net
    plain = torchvision.models.resnet18()
    plain.load_state_dict(target_net.state_dict())  # strict
    plain.fc = nn.Identity()
    learner.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), learner.target.encoder(x), rtol=0, atol=0)
        assert not torch.equal(plain(x), learner.encoder(x))  # the target, not the online net
    target = {t.data_ptr() for t in learner.target.parameters()}
    assert all(p.data_ptr() in target for name, p in target_net.named_parameters() if not name.startswith("fc"))
    assert {k.partition(".")[0] for k in learner.target_encoder.state_dict()} == {"net", "projector"}
    assert not any(p.requires_grad for p in learner.target_encoder.parameters())  # its fc too (a user test)


def test_online_and_target_encoder_are_one_object_each_as_byol_pytorch_attributes_are():
    """A new object at each access: learner.target_encoder.eval() or an attribute set on it was lost."""
    learner = learner_on(resnet("resnet18", cifar_stem=True, width=8))
    assert learner.online_encoder is learner.online_encoder and learner.online_encoder.net is learner.net
    target = learner.target_encoder
    assert learner.target_encoder is target
    learner.to(torch.float64)  # its copies of the layers no branch runs follow the learner
    assert learner.target_encoder is not target and learner.target_encoder.net.fc.weight.dtype == torch.float64
    target = learner.target_encoder
    learner.reset_moving_average()  # a new target: a new view of it
    assert learner.target_encoder is not target
    assert next(learner.target_encoder.net.parameters()) is next(learner.target.encoder.parameters())
    learner.load_state_dict(learner.state_dict(), assign=True)  # new tensors in the target: a new view
    assert next(learner.target_encoder.net.parameters()) is next(learner.target.encoder.parameters())
    del learner.__dict__["_online_view"]  # a learner pickled before the views were kept
    assert learner.online_encoder.net is learner.net


def test_a_byol_pytorch_learner_state_dict_is_one_sentence():
    """Loading one gave torch's list of 400 missing and unexpected keys."""
    learner = learner_on(resnet("resnet18", cifar_stem=True, width=8))
    theirs = {f"online_encoder.net.{k}": v for k, v in learner.net.state_dict().items()}
    with pytest.raises(ValueError, match=r"^this is a byol-pytorch learner's state_dict, whose keys are not byol's"):
        learner.load_state_dict(theirs)
    learner.load_state_dict(learner.state_dict())  # ours still loads


def test_a_network_of_other_inputs_is_told_about_feature_dim():
    """A one-channel network: the error blamed the image size and never said feature_dim=D, which works."""
    class Gray(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool = nn.Conv2d(1, 8, 3), nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            return self.pool(self.conv(x))

    with pytest.raises(ValueError, match=r"^net does not run on two blank 16x16 images "
                                         r".*other number of channels\) BYOL\(\.\.\., feature_dim=D\)$"):
        BYOL(Gray(), image_size=16, hidden_layer="pool", augment_fn=identity)
    learner = BYOL(Gray(), image_size=16, hidden_layer="pool", augment_fn=identity, feature_dim=8,
                   projection_hidden_size=16)
    assert learner(torch.rand(4, 1, 16, 16)).ndim == 0


def test_no_torchvision_note_when_the_train_and_eval_graphs_differ():
    """googlenet (auxiliary heads in training) printed torchvision's NOTE on tracing at every construction."""
    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool, self.aux = nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Linear(4, 2)

        def forward(self, x):
            x = self.pool(self.conv(x)).flatten(1)
            return self.aux(x) if self.training else x

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learner_on(Branches(), hidden_layer="pool")
    assert not [w for w in caught if "NOTE" in str(w.message)], [str(w.message) for w in caught]


def test_concat_views_runs_the_predictor_on_both_views_as_one_batch_as_byol_pytorch():
    """concat_views=True is documented as byol-pytorch's one BatchNorm batch for both views, but the
    predictor ran one view at a time: 0.0117 off byol-pytorch 0.9.1's loss on the same weights and views
    (a user test; 0 with the predictor on the 2B rows, gradients too)."""
    torch.manual_seed(0)
    learner = learner_on(resnet("resnet18", cifar_stem=True, width=8), concat_views=True)
    view1 = torch.rand(4, 3, 32, 32)
    view2 = view1.flip(-1)
    loss = learner(view1, view2)
    loss.backward()
    got = [p.grad.clone() for p in learner.online.parameters()]
    learner.zero_grad()
    both = torch.cat([view1, view2])  # (2B, 3, 32, 32): every BatchNorm normalizes over the 2B rows
    p1, p2 = learner.predictor(learner.online(both)).chunk(2)
    with torch.no_grad():
        z1, z2 = learner.target(both).chunk(2)
    cos = nn.functional.cosine_similarity  # the paper's loss, 2 - 2 cos, symmetrized, mean over the batch
    expected = (2 - 2 * cos(p1, z2, dim=-1) + 2 - 2 * cos(p2, z1, dim=-1)).mean()
    expected.backward()
    torch.testing.assert_close(loss, expected)
    for g, p in zip(got, learner.online.parameters()):
        torch.testing.assert_close(g, p.grad)
    one = torch.rand(1, 3, 32, 32)  # every BatchNorm of the learner sees two rows, the predictor's too
    assert torch.isfinite(learner(one, one.flip(-1)))


@pytest.mark.parametrize("trace", [True, False])
def test_building_the_learner_leaves_the_network_as_it_was(trace):
    """byol-pytorch's constructor runs a forward in train mode on random images, which moves the network's
    BatchNorm running statistics and counts (a user test beside it); docs/python_api.md says ours does not."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    learner_on(net, trace=trace)
    after = net.state_dict()
    assert after.keys() == before.keys() and net.training
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_a_batch_that_is_not_a_tensor_or_an_augment_fn_that_is_not_callable_is_one_sentence():
    from byol.augment import Augment, cifar_views
    learner = BYOL(resnet("resnet18", cifar_stem=True, width=8), image_size=8, projection_size=8,
                   projection_hidden_size=8)
    images = np.zeros((2, 3, 8, 8), dtype=np.uint8)
    for call in (lambda: learner(images), lambda: learner(images, return_embedding=True),
                 lambda: learner(list(torch.zeros(2, 3, 8, 8)))):
        with pytest.raises(TypeError, match="torch.Tensor"):
            call()
    with pytest.raises(TypeError, match="augment_fn must be a callable"):
        BYOL(resnet("resnet18", cifar_stem=True, width=8), image_size=8, augment_fn="cifar")
    with pytest.raises(TypeError, match="augment_fn2 must be a callable"):
        BYOL(resnet("resnet18", cifar_stem=True, width=8), image_size=8, augment_fn=identity, augment_fn2=0.5)
    with pytest.raises(TypeError, match=r"one ViewConfig, such as cifar_views\(\)\[0\]"):
        Augment(cifar_views(8))


@pytest.mark.parametrize("path", ["config", "net"])
def test_the_learner_is_the_method_s_model_with_the_same_state_dict_as_before_the_split(path, tmp_path):
    """A review moved byol-pytorch's surface out of model.py into dropin.py, as a subclass of the method's
    class: the learner of either path (a config's build_model, BYOL(net) from Python) holds the tensors of
    a BYOLModel on the same encoder, under the keys of checkpoints written before (online.*, predictor.*,
    target.*, and _extra_state), and a state saved loads strictly into a new learner, giving the same tensors."""
    from byol.build import build_model
    from byol.checkpoint import load_model_state, read_state
    from byol.config import load_config
    from byol.model import BYOLModel

    def learner():
        torch.manual_seed(0)
        if path == "config":
            return build_model(load_config("cifar10-cpu", ["--model.projection_hidden_size=32"]))
        return BYOL(resnet("resnet18", cifar_stem=True, width=8), image_size=32, hidden_layer="avgpool",
                    projection_size=16, projection_hidden_size=32)

    model = learner()
    assert type(model) is BYOL and isinstance(model, BYOLModel)
    state = model.state_dict()
    keys = list(state)
    assert keys[0] == "_extra_state" and state["_extra_state"] == {"ema_step": 0}
    prefixes = ("online.encoder.", "online.projector.", "predictor.", "target.encoder.", "target.projector.")
    assert [p for p in prefixes if not any(k.startswith(p) for k in keys)] == []
    assert all(k.startswith(prefixes) for k in keys[1:])

    # The method alone on the same encoder: the same keys and shapes (a strict load), _extra_state the learner's
    projector = model.online.projector
    core = BYOLModel(copy.deepcopy(model.encoder), projector[0].in_features, projector[-1].out_features,
                     projector[0].out_features)
    assert list(core.state_dict()) == keys[1:]
    core.load_state_dict({k: v for k, v in state.items() if k != "_extra_state"})

    model.update_moving_average()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    other = learner()
    load_model_state(other, read_state(tmp_path / "model.pt"))
    assert other.ema_step == 1
    for key, value in model.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(other.state_dict()[key], value), key


def test_a_learner_pickled_whole_before_the_drop_in_had_its_own_module_loads(tmp_path):
    """A review: byol-pytorch's learner moved from byol.model to byol.dropin, and a learner saved whole before
    (torch.save(learner), which names byol.model.BYOL) no longer loaded: "Can't get attribute 'BYOL'"."""
    from byol.dropin import OnlineEncoder
    learner = learner_on(resnet("resnet18", cifar_stem=True, width=8))
    learner.online_encoder  # (its view, kept in the pickle)
    try:  # pickled as a byol before the move pickled it
        BYOL.__module__ = OnlineEncoder.__module__ = "byol.model"
        torch.save(learner, tmp_path / "learner.pt")
    finally:
        BYOL.__module__ = OnlineEncoder.__module__ = "byol.dropin"
    with zipfile.ZipFile(tmp_path / "learner.pt") as archive:  # (torch.save's: the pickle is its data.pkl)
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert b"byol.model" in pickled and b"byol.dropin" not in pickled
    loaded = torch.load(tmp_path / "learner.pt", weights_only=False)
    assert type(loaded) is BYOL and type(loaded.online_encoder) is OnlineEncoder
    for key, value in learner.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(loaded.state_dict()[key], value), key


def test_an_unpooled_representation_is_warned_of_and_a_pooled_one_is_not():
    """A user test of a ViT: the default hidden_layer=-2 took its token sequence flattened (151,296 values for
    vit_b_16: a first projector layer of 620 million weights), silently, as byol-pytorch does."""
    wide = nn.Sequential(nn.Conv2d(3, 17, 1), nn.Flatten(), nn.Linear(17 * 32 * 32, 10))  # -2: 17,408 values
    with pytest.warns(UserWarning, match=r"^the representation at hidden_layer=-2 is 17,408 values an image, a "
                                         r"layer's output flattened, not pooled, it seems: the projector's first "
                                         r"layer holds 71 million weights;") as seen:
        BYOL(wide, image_size=32)
    assert seen[0].filename == __file__  # where the learner is made
    narrow = nn.Sequential(nn.Conv2d(3, 16, 1), nn.Flatten(), nn.Linear(16 * 32 * 32, 10))  # 16,384
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BYOL(narrow, image_size=32, projection_hidden_size=64)


@pytest.mark.parametrize("saved_trace", [True, False])
def test_a_state_dict_of_a_learner_cut_the_other_way_is_one_sentence(saved_trace):
    """A user test: resuming with trace= changed (or a network that tracing cut before and not now) listed every
    encoder key as missing and unexpected (online.encoder.body.* against online.encoder.net.*)."""
    saved = learner_on(resnet("resnet18", cifar_stem=True, width=8), trace=saved_trace).state_dict()
    learner = learner_on(resnet("resnet18", cifar_stem=True, width=8), trace=not saved_trace)
    with pytest.raises(ValueError, match=f"trace={saved_trace}") as e:
        learner.load_state_dict(saved)
    assert "\n" not in str(e.value) and "Missing" not in str(e.value)
    learner_on(resnet("resnet18", cifar_stem=True, width=8), trace=saved_trace).load_state_dict(saved)


def test_a_learner_s_own_state_dict_loads_where_its_network_has_children_called_body_and_net():
    """A review: hidden_layer=-1 keeps the network's own children's names (online.encoder.body.*, .net.*), and a
    buffers-only first child named body was read as a cut by tracing against the parameters' net: refused."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.BatchNorm2d(3, affine=False)  # buffers only: first in a state_dict, not in the parameters
            self.net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())

        def forward(self, x):
            return self.net(self.body(x))

    saved = BYOL(Net(), image_size=32, hidden_layer=-1, projection_hidden_size=64).state_dict()
    BYOL(Net(), image_size=32, hidden_layer=-1, projection_hidden_size=64).load_state_dict(saved)


def test_learner_eval_puts_the_target_encoder_view_in_eval_mode_too():
    """A review: target_encoder, read before learner.eval(), kept its copy of net in training mode, so
    target_encoder.net(x) normalized each batch by itself and moved the target's BatchNorm statistics."""
    torch.manual_seed(0)
    learner = learner_on(resnet("resnet18", cifar_stem=True, width=8))
    target, online = learner.target_encoder, learner.online_encoder  # (as a logging hook reads them)
    learner.eval()
    assert not target.net.training and not any(m.training for m in target.net.modules())
    assert not online.training and not target.training
    statistics = learner.target.encoder.body.bn1.running_mean.clone()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target.net(x)[:2], target.net(x[:2]))  # each image on its own
    assert torch.equal(learner.target.encoder.body.bn1.running_mean, statistics)
    learner.train()
    assert target.net.training and target.training and online.training


def test_a_data_parallel_replica_embeds_with_its_own_modules(monkeypatch):
    """A review: a DataParallel replica's __dict__ holds the original's online_encoder view, built by a call before
    the learner was wrapped, so learner(x, return_embedding=True) ran the original's modules (those on the first
    GPU) in every replica. The replicas made on the CPU: broadcast as copies."""
    replicate = importlib.import_module("torch.nn.parallel.replicate")  # (the package's name is the function)
    monkeypatch.setattr(replicate, "_get_device_index", lambda device, *args: 0)
    monkeypatch.setattr(replicate, "_broadcast_coalesced_reshape",
                        lambda tensors, devices, detach=False: [[t.detach().clone() for t in tensors] for _ in devices])
    torch.manual_seed(0)
    learner = learner_on(resnet("resnet18", cifar_stem=True, width=8))
    x = torch.rand(4, 3, 32, 32)
    learner(x, return_embedding=True)
    learner.target_encoder
    replica = replicate.replicate(learner, ["cpu", "cpu"])[1]
    assert replica.online_encoder.projector is replica.online.projector
    assert replica.online_encoder.encoder is replica.online.encoder
    assert replica.target_encoder.encoder is replica.target.encoder
    assert learner.online_encoder.encoder is learner.online.encoder  # the original keeps its own
    with torch.no_grad():
        replica.online.projector[0].weight.zero_()  # (the replica's alone: its projection is its bias)
        projection, _ = replica(x, return_embedding=True)
    torch.testing.assert_close(projection, replica.online.projector(replica.online.encoder(x)))


def test_a_view_built_after_learner_eval_is_in_eval_mode():
    """A review: learner.eval() before the first read of online_encoder / target_encoder left the views built then
    saying they were training (byol-pytorch's online_encoder, a submodule, follows the learner)."""
    learner = learner_on(resnet("resnet18", cifar_stem=True, width=8)).eval()
    assert not learner.online_encoder.training and not learner.target_encoder.training
    learner.train()
    assert learner.online_encoder.training and learner.target_encoder.training


def test_a_hook_on_the_online_encoder_view_runs_in_a_data_parallel_replica(monkeypatch):
    """A review: a replica rebuilds the view of its own encoder, and the user's forward hook on
    learner.online_encoder was left behind (DataParallel's replicas of byol-pytorch's online_encoder keep it)."""
    replicate = importlib.import_module("torch.nn.parallel.replicate")
    monkeypatch.setattr(replicate, "_get_device_index", lambda device, *args: 0)
    monkeypatch.setattr(replicate, "_broadcast_coalesced_reshape",
                        lambda tensors, devices, detach=False: [[t.detach().clone() for t in tensors] for _ in devices])
    torch.manual_seed(0)
    learner = learner_on(resnet("resnet18", cifar_stem=True, width=8))
    calls = []
    learner.online_encoder.register_forward_hook(lambda module, args, output: calls.append(module))
    x = torch.rand(4, 3, 32, 32)
    replica = replicate.replicate(learner, ["cpu", "cpu"])[1]
    with torch.no_grad():
        replica(x, return_embedding=True)
    assert calls == [replica.online_encoder] and replica.online_encoder.encoder is replica.online.encoder


def test_the_embedding_and_projection_of_return_embedding_carry_gradients_to_the_network_and_projector():
    """A mutation audit: detaching either output of ``learner(x, return_embedding=True)`` survived every test.
    byol-pytorch's users fine-tune on it (a head on the embedding, a loss on the projection): the gradient reaches
    the network passed in through the embedding, and the projector and network through the projection."""
    torch.manual_seed(0)
    net = resnet("resnet18", cifar_stem=True, width=8)
    learner = learner_on(net)
    projection, embedding = learner(torch.rand(2, 3, 32, 32), return_embedding=True)
    embedding.square().sum().backward()
    assert net.conv1.weight.grad is not None and net.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in learner.online.projector.parameters())
    net.zero_grad(set_to_none=True)
    projection, _ = learner(torch.rand(2, 3, 32, 32), return_embedding=True)
    projection.square().sum().backward()
    assert learner.online.projector[0].weight.grad.abs().sum() > 0 and net.conv1.weight.grad.abs().sum() > 0


def test_one_image_without_its_batch_dimension_is_refused_on_every_call_with_the_default_views():
    """A user test: ``learner(image, return_embedding=True)`` with one (3, H, W) image ran the network unbatched:
    a network without BatchNorm gave an 'embedding' of shape (C, 1), silently, a ResNet torch's "expected 4D
    input"; as view1 and view2 too. An empty batch in eval mode was told of training mode and BatchNorm."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    learner = BYOL(net, image_size=16, projection_size=4, projection_hidden_size=8)
    image = torch.rand(3, 16, 16)
    for mode in (learner.train, learner.eval):
        mode()
        with pytest.raises(ValueError, match=r"^BYOL takes a batch of images shaped \(B, C, H, W\), but got shape "
                                             r"\(3, 16, 16\); for one image, image\[None\]$"):
            learner(image, return_embedding=True, return_projection=False)
        with pytest.raises(ValueError, match=r"shaped \(B, C, H, W\), but got shape \(3, 16, 16\)"):
            learner(image, image)
        with pytest.raises(ValueError, match=r"shaped \(B, C, H, W\), but got shape \(3, 16, 16\)"):
            learner(torch.rand(2, 3, 16, 16), image)  # the second view alone
    assert learner(image[None], return_embedding=True, return_projection=False).shape == (1, 8)
    with pytest.raises(ValueError, match=r"^BYOL takes a batch of at least 1 input, but got shape \(0, 3, 16, 16\)$"):
        learner(torch.rand(0, 3, 16, 16), return_embedding=True)  # in eval mode
    own_views = learner_on(nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 2)), hidden_layer=-1, feature_dim=2)
    assert own_views(torch.rand(4, 10), return_embedding=True)[1].shape == (4, 2)  # not images: any (B, ...)


@pytest.mark.parametrize("whole", [False, True])
def test_a_network_holding_a_torchscript_module_is_one_sentence(whole):
    """A scripted layer: tracing called it without registering its weights, which the optimizer then never
    trained, without a word (a user test); trace=False, or a whole scripted net, failed deep in the target's copy."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's deprecation
        if whole:
            net = torch.jit.script(net)
        else:
            net[0] = torch.jit.script(net[0])
    where = "net is" if whole else "net's module '0' is"
    for trace in (True, False):
        with pytest.raises(TypeError, match=rf"^{where} TorchScript .* give the plain nn.Module"):
            learner_on(net, hidden_layer=-1 if whole else 2, trace=trace)


def test_the_learner_s_defaults_are_byol_pytorch_s_widths_and_layer_and_the_paper_s_tau():
    """A mutation audit: a default projection_size of 128 survived every test. byol-pytorch's users leave them out:
    projection_size 256, projection_hidden_size 4096 (as there), hidden_layer -2, and tau the paper's 0.996
    (byol-pytorch's 0.99 is a documented difference: README)."""
    torch.manual_seed(0)
    net = resnet("resnet18", cifar_stem=True, width=8)
    learner = BYOL(net, image_size=32, augment_fn=identity)
    for mlp in (learner.online.projector, learner.predictor):
        assert (mlp[0].out_features, mlp[-1].out_features) == (4096, 256)
    assert learner.moving_average_decay == 0.996 and learner.current_tau() == 0.996
    projection, embedding = learner.eval()(torch.rand(2, 3, 32, 32), return_embedding=True)
    assert projection.shape == (2, 256) and embedding.shape == (2, 64)  # hidden_layer -2: the avgpool's 64


def test_augment_fn2_given_alone_draws_view_2_and_the_paper_s_first_recipe_view_1():
    """A mutation audit: augment_fn2 given without augment_fn, replaced by the paper's second recipe, survived every
    test. As in byol-pytorch, augment_fn2 alone is view 2's augmentation (augment_fn its default, here the
    paper's first recipe), called once per batch on the images."""
    calls = []

    def second(x):
        calls.append(x)
        return x.float() / 255

    torch.manual_seed(0)
    learner = BYOL(resnet("resnet18", cifar_stem=True, width=8), image_size=32, hidden_layer="avgpool",
                   projection_size=16, projection_hidden_size=32, augment_fn2=second)
    assert learner.augment2 is second and learner.augment1.config == paper_views(32)[0]
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert torch.isfinite(learner(images))
    assert len(calls) == 1 and calls[0] is images


def test_use_momentum_false_reads_back_false_with_no_target_encoder():
    """A mutation audit: ``learner.use_momentum`` always True survived every test. byol-pytorch's scripts read it
    (``if learner.use_momentum: learner.update_moving_average()``): False without a target, True with one."""
    torch.manual_seed(0)
    simsiam = learner_on(resnet("resnet18", cifar_stem=True, width=8), use_momentum=False)
    assert simsiam.use_momentum is False and simsiam.target is None and simsiam.target_encoder is None
    assert learner_on(resnet("resnet18", cifar_stem=True, width=8)).use_momentum is True
