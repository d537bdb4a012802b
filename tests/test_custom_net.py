"""byol.pretrain(config, net=...): a network of your own, pretrained with the run folder's checkpoints, resumes and
monitors, then evaluated and embedded from Python with net= (the command line cannot build it)."""

import ast
import copy
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import byol
import byol.run_setup
from byol.build import views_of
from byol.precision import autocast_dtype
from byol.checkpoint import CheckpointError, load_checkpoint
from byol.config import ConfigError, load_config
from byol.datasets import build_dataset
from byol.features import extract_features
from conftest import tiny_overrides
from test_distributed import RENDEZVOUS, torchrun_env

HIDDEN = 3  # SmallNet's pool: a layer of its own, not the default -2


class SmallNet(nn.Sequential):
    """A network byol does not build: conv, BatchNorm, pool, and a classifier after the representation;
    ``dropout``: after the ReLU (torch's generator draws it, as a ViT's or EfficientNet's stochastic depth)."""

    def __init__(self, width: int = 8, seed: int = 0, dropout: float = 0.0):
        torch.manual_seed(seed)
        relu = nn.Sequential(nn.ReLU(), nn.Dropout(dropout)) if dropout else nn.ReLU()
        super().__init__(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), relu, nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, 10))


def settings(out_dir, root, **extra) -> list[str]:
    return tiny_overrides(out_dir, **extra) + [f"--data.root={root}"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step run on SmallNet (the kNN monitor on: at its start and its end), its results and its net (given in
    training mode, its BatchNorm layer in eval mode: frozen, as fine-tuning may leave one)."""
    from conftest import CIFAR10
    if not (CIFAR10 / "cifar-10-batches-bin" / "data_batch_1.bin").is_file():
        pytest.skip(f"real CIFAR-10 not found at {CIFAR10}")
    out = tmp_path_factory.mktemp("custom") / "run"
    net = SmallNet()
    net[1].eval()
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    results = byol.pretrain(load_config("cifar10", settings(out, CIFAR10, **{"train.max_steps": 4})), net=net,
                            hidden_layer=HIDDEN)
    return out, results, net, initial


def test_a_run_on_a_network_of_your_own_trains_it_and_records_it(run):
    out, results, net, initial = run
    assert results["step"] == 4 and "knn" in results and "knn_init" in results
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["extra"]["net"] == {"class": "SmallNet", "hidden_layer": "3"}  # the child's name
    assert state["config"]["model"]["backbone"] == "custom"
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["backbone"] == "custom"
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 4
    # Training went into net's own weights: the checkpoint's online encoder is net, the classifier after it untouched.
    assert not torch.equal(net[0].weight, initial["0.weight"])
    assert torch.equal(net[0].weight, state["model"]["online.encoder.body.0.weight"])
    assert torch.equal(net[1].running_mean, state["model"]["online.encoder.body.1.running_mean"])
    assert torch.equal(net[5].weight, initial["5.weight"])
    # Each module's mode as given (a mutation audit: the network's own mode set last put its layers' back to it)
    assert [m.training for m in net] == [True, False, True, True, True, True] and net.training


def test_a_cut_is_recorded_the_same_whichever_way_it_is_spelled():
    """-1 and None both take the network's own output, and a child's index from either end is that child's name
    (a resume given the other spelling was refused: a review; -1 was left as -1 and None, a mutation audit)."""
    from byol.given_net import net_record
    net = SmallNet()
    assert net_record(net, -1) == net_record(net, None) == {"class": "SmallNet", "hidden_layer": None}
    assert net_record(net, -3) == net_record(net, 3) == net_record(net, "3") == {"class": "SmallNet",
                                                                                 "hidden_layer": "3"}


def test_knn_and_embed_with_net_take_the_representation_the_run_trained_and_monitored(run, tmp_path):
    out, results, net, _ = run
    path = out / "checkpoints" / "last.pt"
    limit = 200  # train.knn_limit: the monitor's bank and queries
    scored = byol.knn(path, net=SmallNet(seed=1), limit=limit, ks=(20, 200))
    assert scored["knn_top1"] == pytest.approx(results["knn"], abs=1e-6)
    assert scored["model"] == {"backbone": "custom", "class": "SmallNet", "hidden_layer": "3"}  # what it is of
    # random_init: the net's own weights as given, here the run's start (SmallNet's seed), which the monitor scored
    initial = byol.knn(path, net=SmallNet(), limit=limit, ks=(20, 200), random_init=True)
    assert initial["knn_top1"] == pytest.approx(results["knn_init"], abs=1e-6)
    embedded = byol.embed(path, tmp_path / "e.npy", net=SmallNet(seed=2), limit=50)
    config = byol.config.config_from_dict(load_checkpoint(path)["config"])
    images = build_dataset("cifar10", config.data.root, "test", None, False).images[:50]
    view1, _ = views_of(config)
    trained = byol.cut_at(net, HIDDEN).eval()  # the very net pretrain trained
    expected = extract_features(trained, images, mean=view1.mean, std=view1.std,
                                amp_dtype=autocast_dtype(config.train.precision, torch.device("cpu")))
    np.testing.assert_allclose(np.load(embedded), expected.float().numpy(), rtol=1e-5, atol=1e-6)
    encoder, _ = byol.load_encoder(path, net=(loaded := SmallNet(seed=3)))
    assert torch.equal(loaded[0].weight, net[0].weight) and next(encoder.parameters()) is loaded[0].weight
    assert not any(m.training for m in loaded.modules())  # in eval mode, as said (a mutation audit)


def test_random_init_refuses_a_net_holding_the_run_s_trained_weights(run):
    """byol.knn(path, net=net) loads the checkpoint into net, as pretrain trained net itself: a second call with that
    net and random_init=True scored the trained encoder, recorded as the baseline at step 0 (a user test)."""
    out, _, net, _ = run
    path = out / "checkpoints" / "last.pt"
    byol.load_encoder(path, net=(loaded := SmallNet(seed=5)))
    for trained in (loaded, copy.deepcopy(net)):
        with pytest.raises(CheckpointError, match="trained weights"):
            byol.knn(path, net=trained, limit=20, ks=(5,), random_init=True)
    # a review: weights changed since they were loaded or trained, or given for another checkpoint of the run (an
    # earlier epoch's, here the same file by another name): still no network at random initialization
    with torch.no_grad():
        loaded[0].weight.add_(1.0)
    (other := out.parent / "other.pt").write_bytes(path.read_bytes())
    for trained in (loaded, net):
        with pytest.raises(CheckpointError, match=r"^net holds trained weights \(of "):
            byol.knn(other, net=trained, limit=20, ks=(5,), random_init=True)
    assert byol.knn(path, net=SmallNet(), limit=20, ks=(5,), random_init=True)["step"] == 0  # one built anew


def test_eval_and_embed_take_the_run_s_hidden_layer_given_again_and_refuse_another(run, tmp_path):
    """A user test: hidden_layer=, given to byol.pretrain, given again to byol.knn (linear, embed, load_encoder)
    was Python's TypeError (an unexpected keyword); the run's own is taken, in any spelling, another refused."""
    out, results, net, _ = run
    path = out / "checkpoints" / "last.pt"
    scored = byol.knn(path, net=SmallNet(seed=1), hidden_layer=HIDDEN, limit=200, ks=(20, 200))
    assert scored["knn_top1"] == pytest.approx(results["knn"], abs=1e-6)
    assert byol.linear(path, net=SmallNet(), hidden_layer=-3, limit=20, epochs=1)["n_train"] == 20
    assert np.load(byol.embed(path, tmp_path / "e.npy", net=SmallNet(), hidden_layer="3", limit=20)).shape == (20, 8)
    encoder, _ = byol.load_encoder(path, net=SmallNet(), hidden_layer=HIDDEN)
    assert encoder(torch.rand(2, 3, 32, 32)).shape == (2, 8)
    for call in (lambda: byol.knn(path, net=SmallNet(), hidden_layer=-2, limit=20),  # Flatten, "4"
                 lambda: byol.linear(path, net=SmallNet(), hidden_layer=None, limit=20),
                 lambda: byol.embed(path, tmp_path / "f.npy", net=SmallNet(), hidden_layer="2", limit=20),
                 lambda: byol.load_encoder(path, net=SmallNet(), hidden_layer=-1)):
        with pytest.raises(CheckpointError, match=r"run took its representation at hidden_layer='3', .*leave hidden_"
                                                  r"layer out \(the run's is taken\), or give hidden_layer='3'$"):
            call()
    assert not (tmp_path / "f.npy").exists()


def test_a_resume_that_is_refused_is_refused_before_the_data_is_read(run, cifar10_root, monkeypatch):
    """A user test: a resume given another hidden_layer or network read the whole data set first."""
    out = run[0]
    monkeypatch.setattr(byol.run_setup, "load_data", lambda *a, **k: pytest.fail("the data was read"))
    more = byol.resume_config(None, [f"--train.out_dir={out}", "--train.max_steps=6"])
    with pytest.raises(CheckpointError, match=r"resume with hidden_layer='3'"):
        byol.pretrain(more, resume=True, net=SmallNet())
    with pytest.raises(CheckpointError, match=r"does not match this model \(net is a SmallNet of another size"):
        byol.pretrain(more, resume=True, net=SmallNet(width=4), hidden_layer=HIDDEN)
    deeper = SmallNet()
    deeper[2] = nn.Sequential(nn.ReLU(), nn.Conv2d(8, 8, 1))  # a layer more: its optimizer's groups differ too
    with pytest.raises(CheckpointError, match=r"does not match this model \(net is a SmallNet of another size.*: 4 of "
                                              r"the model's keys missing there"):  # (not "a parameter frozen?")
        byol.pretrain(more, resume=True, net=deeper, hidden_layer=HIDDEN)
    with pytest.raises(CheckpointError, match=r"train.batch_size=16"):
        byol.pretrain(byol.resume_config(None, [f"--train.out_dir={out}", "--train.batch_size=32"]), resume=True,
                      net=SmallNet(), hidden_layer=HIDDEN)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 4


def test_a_resume_whose_data_is_gone_leaves_net_known_as_trained(run, monkeypatch):
    """The checkpoint is loaded into net before the data is read: where the data then fails, net holds the
    run's weights, and a new run given it says that it starts from them (byol.given_net.note_trained_before)."""
    from byol.data import DataError
    from byol.given_net import _TRAINED

    out = run[0]

    def gone(*args, **kwargs):
        raise DataError("cifar10 train files not found")

    monkeypatch.setattr(byol.run_setup, "load_data", gone)
    net = SmallNet(seed=5)
    with pytest.raises(DataError):
        byol.pretrain(byol.resume_config(None, [f"--train.out_dir={out}", "--train.max_steps=6"]), resume=True,
                      net=net, hidden_layer=HIDDEN)
    assert not all(torch.equal(v, w) for v, w in zip(net.state_dict().values(), SmallNet(seed=5).state_dict().values()))
    assert _TRAINED.get(net) == str(out)


def test_a_net_that_cannot_be_trained_is_refused_before_the_data_is_read(tmp_path, monkeypatch):
    """net= cut at a layer it lacks is one sentence before the data set is read (a scan of a large folder; a
    review found it after the data when a change read the data first, to leave net where it was if that failed)."""
    import byol.run_setup
    monkeypatch.setattr(byol.run_setup, "load_data", lambda *args, **kwargs: pytest.fail("the data was read"))
    with pytest.raises(ValueError, match="hidden_layer='nope' is not a module"):
        byol.pretrain(load_config("cifar10", settings(tmp_path / "run", tmp_path / "gone")), net=SmallNet(),
                      hidden_layer="nope")


class Branching(SmallNet):
    """SmallNet with a branch on its data, which symbolic tracing cannot follow: cut with a forward hook instead."""

    def forward(self, x):
        return super().forward(x if x.sum() >= 0 else -x)


def test_the_warning_that_a_net_is_cut_with_a_hook_names_the_line_of_the_user_s_that_led_to_it(tmp_path):
    """Given to byol.pretrain, it named byol/build.py (BYOL(net) named the user's line: two calls fewer of byol's)."""
    config = load_config("cifar10", settings(tmp_path / "run", tmp_path / "gone"))
    with pytest.warns(UserWarning, match="symbolic tracing could not cut") as caught, pytest.raises(byol.DataError):
        byol.pretrain(config, net=Branching(), hidden_layer=HIDDEN)  # (the data, not there, is read after the net)
    with pytest.warns(UserWarning, match="symbolic tracing could not cut") as direct:
        byol.BYOL(Branching(), image_size=8, hidden_layer=HIDDEN)
    assert [w.filename for w in [*caught, *direct]] == [__file__, __file__]


@pytest.mark.parametrize("refused", ["optimizer", "frozen"])
def test_a_resume_refused_by_its_optimizer_leaves_net_as_given(run, refused):
    """Another optim.name, or a layer of net frozen (the optimizer's groups of other sizes), is refused before
    the checkpoint's weights are loaded into net: they were loaded first, and net, left with the run's
    weights, was not known as trained (a later run given it would not say that it starts from them)."""
    from byol.given_net import _TRAINED

    out = run[0]
    net = SmallNet(seed=5)
    if refused == "frozen":
        next(net.parameters()).requires_grad_(False)
    more = [f"--train.out_dir={out}", "--train.max_steps=6", *(["--optim.name=adamw"] if refused == "optimizer"
                                                               else [])]
    with pytest.raises(CheckpointError, match="resume with the same optimizer" if refused == "optimizer" else
                       r"the optimizer state .* does not fit this run \(its parameter groups hold"):
        byol.pretrain(byol.resume_config(None, more), resume=True, net=net, hidden_layer=HIDDEN)
    assert all(torch.equal(v, w) for v, w in zip(net.state_dict().values(), SmallNet(seed=5).state_dict().values()))
    assert _TRAINED.get(net) is None


def test_a_run_on_a_network_of_your_own_resumes_as_the_uninterrupted_run(tmp_path, cifar10_root):
    common = {"train.knn_every": -1, "optim.name": "sgd"}
    # Dropout: torch's generator goes on as the checkpoint saved it (a review: the CPU memory check before a
    # resume's first step drew from it)
    straight = SmallNet(dropout=0.5)
    byol.pretrain(load_config("cifar10", settings(tmp_path / "a", cifar10_root, **common, **{"train.max_steps": 6})),
                  net=straight, hidden_layer=HIDDEN)
    byol.pretrain(load_config("cifar10", settings(tmp_path / "b", cifar10_root, **common, **{"train.max_steps": 3})),
                  net=SmallNet(dropout=0.5), hidden_layer=HIDDEN)
    resumed = SmallNet(seed=5, dropout=0.5)  # another instance: its weights are the checkpoint's
    unused = "--model.width=16"  # a ResNet's setting, which a network given does not use: not refused
    results = byol.pretrain(byol.resume_config(None, [f"--train.out_dir={tmp_path / 'b'}", "--train.max_steps=6",
                                                      unused]), resume=True, net=resumed, hidden_layer=-3)
    # (-3 is the same child as 3, which the run was given: a review found the other spelling refused)
    assert results["step"] == 6
    a, b = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt")["model"] for run in "ab")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key] if isinstance(a[key], dict) else torch.equal(a[key], b[key]), key
    assert torch.equal(resumed[0].weight, straight[0].weight)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 6


class LayerNormed(nn.Sequential):
    """A network with a LayerNorm over (C, H, W) of 32x32 views: 3-D weight and bias."""

    def __init__(self):
        torch.manual_seed(0)
        super().__init__(nn.Conv2d(3, 4, 3, padding=1), nn.LayerNorm([4, 32, 32]), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 10))


def test_a_run_whose_norm_layers_an_older_byol_decayed_is_refused_on_resume_saying_why(tmp_path, cifar10_root,
                                                                                      monkeypatch):
    """param_groups told norms and biases by shape alone, and decayed a LayerNorm([C, H, W])'s (a review): such a
    run's optimizer state holds the same parameters in other groups, which a resume says, not 'frozen?'."""
    import byol.optim

    def by_shape(model, weight_decay):  # the older byol's split
        return [{"params": [p for p in model.parameters() if p.ndim > 1], "weight_decay": weight_decay,
                 "lars_exclude": False},
                {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0, "lars_exclude": True}]
    quick = {"train.max_steps": 1, "train.knn_every": -1, "data.image_size": 32}
    with monkeypatch.context() as m:
        m.setattr(byol.optim, "param_groups", by_shape)
        byol.pretrain(load_config("cifar10", settings(tmp_path, cifar10_root, **quick)), net=LayerNormed(),
                      hidden_layer=3)
    with pytest.raises(CheckpointError, match=r"the same parameters, 2 of which this byol excludes from weight decay "
                                              r"and LARS, .* a byol before 2026-12-06 decayed and adapted"):
        byol.pretrain(byol.resume_config(None, [f"--train.out_dir={tmp_path}", "--train.max_steps=2"]), resume=True,
                      net=LayerNormed(), hidden_layer=3)


def test_a_weight_frozen_and_a_bias_unfrozen_on_resume_is_not_said_to_be_an_older_byol_s_run(tmp_path, cifar10_root):
    """A review: the optimizer's group sizes alone (as many parameters, fewer decayed) were read as an older byol's
    split by shape, which a weight frozen and a bias unfrozen between the starts also makes: 'frozen?' is said."""
    quick = {"train.max_steps": 1, "train.knn_every": -1}
    net = SmallNet()
    net[0].bias.requires_grad_(False)
    byol.pretrain(load_config("cifar10", settings(tmp_path, cifar10_root, **quick)), net=net, hidden_layer=HIDDEN)
    net = SmallNet()
    net[0].weight.requires_grad_(False)
    with pytest.raises(CheckpointError, match=r"this run's \[\d+, \d+\]: a parameter frozen or unfrozen\?\)$"):
        byol.pretrain(byol.resume_config(None, [f"--train.out_dir={tmp_path}", "--train.max_steps=2"]), resume=True,
                      net=net, hidden_layer=HIDDEN)


def test_a_frozen_batchnorm_layer_of_a_network_given_stays_frozen_with_the_knn_monitor_on(tmp_path, cifar10_root):
    """A review: the kNN monitor's evaluation at random initialization put the network's modes back by its own flag,
    which set a BatchNorm layer given in eval mode (frozen) to training for every step after: the run trained
    otherwise than with the monitor off (docs/runs.md: the same weights, bit for bit)."""
    nets = []
    for run, every in (("off", -1), ("on", 0)):
        net = SmallNet()
        net[1].eval()
        quick = {"train.max_steps": 3, "train.knn_every": every, "train.knn_limit": 50, "optim.name": "sgd"}
        byol.pretrain(load_config("cifar10", settings(tmp_path / run, cifar10_root, **quick)), net=net,
                      hidden_layer=HIDDEN)
        nets.append(net)
    off, on = nets
    assert torch.equal(on[1].running_mean, SmallNet()[1].running_mean)  # frozen: its statistics never moved
    for (key, a), b in zip(off.state_dict().items(), on.state_dict().values()):
        assert torch.equal(a, b), key


class Headed(nn.Module):
    """A network whose output comes from a layer named ``fc``, as a torchvision ResNet's does."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def test_a_network_trained_whole_is_evaluated_whole(tmp_path, cifar10_root):
    """hidden_layer=None: the representation is the network's own output, which its fc gives; the fc that byol
    drops from its own ResNets stays in the network given (a mutation audit: replaced, unnoticed)."""
    quick = {"train.max_steps": 1, "train.knn_every": -1}
    byol.pretrain(load_config("cifar10", settings(tmp_path, cifar10_root, **quick)), net=Headed(), hidden_layer=None)
    encoder, _ = byol.load_encoder(tmp_path / "checkpoints" / "last.pt", net=(given := Headed(seed=1)))
    assert isinstance(given.fc, nn.Linear) and encoder(torch.rand(2, 3, 32, 32)).shape == (2, 4)


def test_a_resume_is_given_the_network_the_run_trained(run, cli, cifar10_root, tmp_path):
    out = run[0]
    more = [f"--train.out_dir={out}", "--train.max_steps=6"]
    with pytest.raises(CheckpointError, match=r"network given from Python \(SmallNet\).*byol.pretrain\(byol.resume_"
                                              r"config\(None, \['--train.out_dir=.*'\]\), resume=True, "
                                              r"net=SmallNet\(...\), hidden_layer='3'\)"):
        byol.pretrain(byol.resume_config(None, more), resume=True)
    with pytest.raises(CheckpointError, match=r"\(SmallNet\).*net=SmallNet"):  # a config that says a ResNet
        byol.pretrain(load_config("cifar10", settings(out, cifar10_root, **{"train.max_steps": 6})), resume=True)
    proc = cli("pretrain", "--resume", *more, check=False)
    assert proc.returncode == 2 and "net=SmallNet" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(CheckpointError, match=r"hidden_layer='3'.*resume with hidden_layer='3'"):
        byol.pretrain(byol.resume_config(None, more), resume=True, net=SmallNet())  # the default -2: Flatten, '4'
    with pytest.raises(CheckpointError, match=r"does not match this model \(net is a SmallNet of another size or "
                                              r"layout than the run's\?\)"):  # (not a ResNet's backbone or width)
        byol.pretrain(byol.resume_config(None, more), resume=True, net=SmallNet(width=4), hidden_layer=HIDDEN)
    with pytest.raises(CheckpointError, match=r"\(the run trained a SmallNet, and net is a Sequential\)"):
        byol.knn(out / "checkpoints" / "last.pt", net=nn.Sequential(*SmallNet(width=4)), limit=20)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 4  # nothing trained by any of them


def test_byol_pretrain_resume_of_a_given_network_s_run_names_a_python_call_that_runs_as_written(run, cli):
    """A review: `byol pretrain --resume` was told to call byol.pretrain(config, resume=True, net=...), and the
    command line has no config to give: the call names byol.resume_config with the run's folder."""
    out = run[0]
    proc = cli("pretrain", "--resume", f"--train.out_dir={out}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    call = re.search(r"(byol\.pretrain\(.*\)), a network", proc.stderr)
    assert call, proc.stderr
    parsed = ast.parse(call.group(1)).body[0].value  # (a Python call, as written)
    config = parsed.args[0]
    assert isinstance(config, ast.Call) and ast.unparse(config.func) == "byol.resume_config", ast.unparse(config)
    assert [ast.literal_eval(a) for a in config.args] == [None, [f"--train.out_dir={out}"]]
    assert {k.arg: ast.unparse(k.value) for k in parsed.keywords} == {"resume": "True", "net": "SmallNet(...)",
                                                                      "hidden_layer": "'3'"}


def test_a_network_that_does_not_take_the_run_s_weights_is_left_as_it_was(run, cifar10_root):
    out = run[0]
    net = SmallNet(seed=5)
    net[0] = nn.Conv2d(3, 8, 5, padding=2)  # another kernel: the BatchNorm after it fits the run's
    given = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"2 of another shape \(e.g. online.encoder.body.0.weight"):
        byol.knn(out / "checkpoints" / "last.pt", net=net, limit=20)
    more = [f"--train.out_dir={out}", "--train.max_steps=6"]
    with pytest.raises(CheckpointError, match="of another shape"):
        byol.pretrain(byol.resume_config(None, more), resume=True, net=net, hidden_layer=HIDDEN)
    assert all(torch.equal(v, given[k]) for k, v in net.state_dict().items())  # none of the BatchNorm's loaded


def test_a_resnet_run_is_neither_resumed_nor_evaluated_with_a_net(tmp_path, cifar10_root, monkeypatch):
    config = load_config("cifar10", settings(tmp_path, cifar10_root, **{"train.max_steps": 1, "train.knn_every": -1}))
    byol.pretrain(config)
    monkeypatch.setattr(byol.run_setup, "load_data",
                        lambda *a, **k: pytest.fail("the data was read"))  # (refused first)
    with pytest.raises(CheckpointError, match="model.backbone=resnet18.*resume it without net="):
        byol.pretrain(config, resume=True, net=SmallNet(), hidden_layer=HIDDEN)
    with pytest.raises(CheckpointError, match="net= takes the checkpoint of a run pretrained on a network given"):
        byol.knn(tmp_path / "checkpoints" / "last.pt", net=SmallNet(), limit=20)
    with pytest.raises(CheckpointError, match=r"hidden_layer= goes with net=.*leave hidden_layer out$"):
        byol.knn(tmp_path / "checkpoints" / "last.pt", hidden_layer="avgpool", limit=20)


def test_without_net_eval_embed_and_export_name_the_python_call(run, cli, tmp_path):
    path = run[0] / "checkpoints" / "last.pt"
    for call in (lambda: byol.knn(path, limit=20), lambda: byol.linear(path, limit=20),
                 lambda: byol.embed(path, tmp_path / "e.npy", limit=20), lambda: byol.load_encoder(path)):
        with pytest.raises(CheckpointError, match=r"given from Python \(SmallNet\).*byol.knn\(path, net=net\)"):
            call()
    with pytest.raises(CheckpointError, match=r"byol export cannot write.*byol.load_encoder\(path, net=SmallNet"
                                              r"\(...\)\).*torch.save\(net.state_dict\(\)"):
        byol.export(path, tmp_path / "export")
    assert not (tmp_path / "export").exists()
    torch.save(run[2].state_dict(), tmp_path / "encoder.pt")  # the net saved beside the run's config.yaml: no ResNet
    (tmp_path / "config.yaml").write_bytes((run[0] / "config.yaml").read_bytes())  # (a review: a traceback)
    for call in (lambda: byol.knn(tmp_path / "encoder.pt", limit=20),
                 lambda: byol.knn(tmp_path / "encoder.pt", limit=20, random_init=True)):
        with pytest.raises(CheckpointError, match=r"a state_dict beside the config.yaml of a run on a network given "
                                                  r"from Python \(model.backbone=custom\)"):
            call()
    with pytest.raises(CheckpointError, match=r"encoder.pt is not a byol run's checkpoint: load its weights into "
                                              r"net yourself, then give its features from byol.features"):
        byol.knn(tmp_path / "encoder.pt", limit=20, net=SmallNet())  # (a review: said to be a ResNet's)
    (tmp_path / "r18").mkdir()  # a torchvision ResNet's, alone
    torch.save(byol.resnet("resnet18", cifar_stem=True, width=8).state_dict(), tmp_path / "r18" / "r18.pt")
    with pytest.raises(CheckpointError, match=r"r18.pt is not a byol run's checkpoint: it is a ResNet's state_dict, "
                                              r"which byol reads without net=: leave net out"):
        byol.knn(tmp_path / "r18" / "r18.pt", limit=20, net=SmallNet())
    other = tmp_path / "other"  # a config.yaml from elsewhere beside a file that is no state_dict: said as before
    other.mkdir()
    (other / "config.yaml").write_text("model:\n  depth: 3\n")
    torch.save({"0.weight": torch.zeros(2)}, other / "net.pt")
    with pytest.raises(CheckpointError, match="holds neither a byol checkpoint nor an encoder state_dict"):
        byol.knn(other / "net.pt", limit=20)
    for args in (("eval", "knn", path, "--limit", 20), ("embed", path, "--out", tmp_path / "e.npy"),
                 ("export", path, "--out", tmp_path / "export")):
        proc = cli(*args, check=False)
        assert proc.returncode == 2 and "given from Python (SmallNet)" in proc.stderr, (args, proc.stderr)


def test_custom_is_a_backbone_only_python_gives(run, cli):
    with pytest.raises(ConfigError, match="--model.backbone=custom stands for a network given from Python"):
        load_config("cifar10", ["--model.backbone=custom"])
    proc = cli("pretrain", "--model.backbone=custom", check=False)
    assert proc.returncode == 2 and "network given from Python" in proc.stderr
    saved = load_config(str(run[0] / "config.yaml"), [f"--train.out_dir={run[0].parent / 'new'}"])
    with pytest.raises(ConfigError, match=r"model.backbone=custom is a network given from Python.*"
                                          r"byol.pretrain\(config, net=...\)"):
        byol.pretrain(saved)  # a new run from a custom run's config.yaml, without its network
    # its resume where nothing was trained: said as any resume without a checkpoint (a mutation audit: it was
    # blamed on the network, as if a run's checkpoint were there)
    with pytest.raises(CheckpointError, match=r"cannot resume: no checkpoint at .*new.*; start without --resume$"):
        byol.pretrain(saved, resume=True)
    assert not (run[0].parent / "new").exists()


def test_a_network_that_does_not_run_on_the_run_s_views_names_data_image_size(tmp_path, cifar10_root):
    """A user test: a network for 224-pixel images (a torchvision ViT) was told to give BYOL(..., feature_dim=D),
    which byol.pretrain takes no such argument for (and its views would not run either)."""
    config = load_config("cifar10", settings(tmp_path / "run", cifar10_root, **{"train.max_steps": 1}))
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 222 * 222, 10))  # 224x224 images only
    with pytest.raises(ValueError, match=r"^net does not run on 32x32 images, the size of the run's views "
                                         r"\(data.image_size=32\): mat1 and mat2 .*set data.image_size to a size") as e:
        byol.pretrain(config, net=net, hidden_layer=-1)
    assert "feature_dim" not in str(e.value)
    assert isinstance(e.value, byol.ByolError)  # (a ValueError alone: a sweep's except byol.ByolError stopped at it)
    assert not (tmp_path / "run").exists()


def test_a_network_that_runs_on_the_views_but_not_on_the_evaluated_images_is_one_sentence(tmp_path, cifar10_root):
    """A user test: a ViT built for 24 pixels, trained on CIFAR-10's 24-pixel views (data.image_size=24, as in
    cifar10-cpu), ended at the kNN monitor, which feeds CIFAR-10's own 32x32 images, in torchvision's bare
    "AssertionError: Wrong image height! Expected 24 but got 32!" (a traceback); byol.knn of such a run too."""
    config = load_config("cifar10", settings(tmp_path / "run", cifar10_root, **{
        "train.max_steps": 1, "data.image_size": 24}))
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 22 * 22, 10))  # 24x24 images only
    with pytest.raises(ConfigError, match=r"^net runs on the run's 24x24 views \(data.image_size=24\) but not on the "
                                          r"32x32 images that the kNN monitor, eval and embed feed it \(cifar10's own, "
                                          r"whole\): mat1 and mat2 .*set data.image_size=32$"):
        byol.pretrain(config, net=net, hidden_layer=-1)
    assert not (tmp_path / "run").exists()


def test_a_network_for_the_views_alone_trains_with_the_knn_monitor_off_and_loads(tmp_path, cifar10_root):
    """A review: the check on the images evaluation feeds refused a run with the kNN monitor off (train.knn_every=-1),
    which feeds none and trained before, byol.load_encoder of its checkpoint (whose encoder the caller feeds its
    own 24x24 images) and byol.knn of a folder fed at 24x24 (--data.image_size=24: the checkpoint's settings were
    checked, not the overrides); byol.knn and embed of CIFAR-10, fed 32x32, are still one sentence."""
    from PIL import Image
    def net24():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 22 * 22, 10))  # 24x24 images only
    config = load_config("cifar10", settings(tmp_path / "run", cifar10_root, **{
        "train.max_steps": 1, "data.image_size": 24, "train.knn_every": -1}))
    assert byol.pretrain(config, net=net24(), hidden_layer=-1)["step"] == 1
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    encoder, _ = byol.load_encoder(checkpoint, net=net24())
    assert encoder(torch.rand(2, 3, 24, 24)).shape == (2, 10)
    with pytest.raises(ConfigError, match=r"but not on the 32x32 images that the kNN monitor, eval and embed feed it"):
        byol.knn(checkpoint, net=net24())
    with pytest.raises(ConfigError, match=r"but not on the 32x32 images that the kNN monitor, eval and embed feed it"):
        byol.embed(checkpoint, tmp_path / "e.npy", net=net24())
    pixels = np.random.default_rng(0).integers(0, 256, (16, 40, 40, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        path = tmp_path / "folder" / ("train", "val")[i % 2] / ("a", "b")[i // 2 % 2] / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
    result = byol.knn(checkpoint, ["--data.dataset=folder", f"--data.root={tmp_path / 'folder'}",
                                   "--data.image_size=24"], net=net24())
    assert result["image_size"] == 24 and result["n_test"] == 8


def test_a_run_cut_at_the_network_s_own_output_is_told_to_resume_with_hidden_layer_minus_1(tmp_path):
    """A user test: a run given hidden_layer=-1 (as docs/python_api.md advises for a ViT) was told to resume
    with hidden_layer=None, the checkpoint's record of it."""
    from byol.given_net import check_eval, check_resume, net_record, resume_call
    state = {"extra": {"net": {"class": "SmallNet", "hidden_layer": None}}}
    with pytest.raises(CheckpointError, match=r"at hidden_layer=-1, and a resume .*resume with hidden_layer=-1$"):
        check_resume(state, net_record(SmallNet(), -2), tmp_path / "last.pt")
    assert resume_call(state["extra"]["net"]).endswith(
        "net=SmallNet(...), hidden_layer=-1), a network of the same architecture, which the checkpoint's weights "
        "are loaded into")
    with pytest.raises(CheckpointError, match=r"at hidden_layer=-1, where .*or give hidden_layer=-1$"):
        check_eval(state, SmallNet(), tmp_path / "last.pt", False, hidden_layer=-2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_network_not_in_float32_is_one_sentence(tmp_path, cifar10_root, dtype):
    """A user test: net.double() ended in a traceback from its first convolution (the views are float32), and
    net.bfloat16() trained a target whose EMA steps were rounded away."""
    config = load_config("cifar10", settings(tmp_path / "run", cifar10_root, **{"train.max_steps": 1}))
    with pytest.raises(TypeError, match=rf"net's parameters are {dtype}, .*float32.*give net.float\(\)"):
        byol.pretrain(config, net=SmallNet().to(dtype), hidden_layer=HIDDEN)
    assert not (tmp_path / "run").exists()


def test_a_network_on_the_meta_device_is_one_sentence(tmp_path, cifar10_root, run):
    """Noticed in a review: torch's traceback from moving it to the run's device; byol.knn's, a review of that,
    after the checkpoint's weights had loaded into it without a word (a copy into a meta tensor does nothing)."""
    config = load_config("cifar10", settings(tmp_path / "run", cifar10_root, **{"train.max_steps": 1}))
    with pytest.raises(TypeError, match=r"net's weights are on the meta device.*net.to_empty\(device=...\).*before "
                                        r"you pretrain$"):
        byol.pretrain(config, net=SmallNet().to("meta"), hidden_layer=HIDDEN)
    partly = SmallNet()
    partly[5] = nn.Linear(8, 10, device="meta")  # a layer after the representation, still to be made
    with pytest.raises(TypeError, match=r"net's weights are on the meta device"):
        byol.pretrain(config, net=partly, hidden_layer=HIDDEN)
    assert not (tmp_path / "run").exists()
    path = run[0] / "checkpoints" / "last.pt"
    with pytest.raises(TypeError, match=r"net's weights are on the meta device.*before you evaluate or embed$"):
        byol.knn(path, net=SmallNet().to("meta"), limit=20)
    with pytest.raises(TypeError, match=r"net's parameters are torch.float64, and byol takes a float32 network to "
                                        r"evaluate or embed"):
        byol.embed(path, tmp_path / "e.npy", net=SmallNet().double(), limit=20)


def test_a_new_run_given_a_network_an_earlier_run_trained_says_that_it_goes_on_from_its_weights(
        tmp_path, cifar10_root, capsys, monkeypatch):
    """A user test: a sweep that built its network once trained each run on from the one before, silently."""
    net, quick = SmallNet().eval(), {"train.max_steps": 1, "train.knn_limit": 50}  # (the monitor sets modes)
    with pytest.raises(byol.DataError):  # a start that trained no step (a mutation audit: it was remembered)
        byol.pretrain(load_config("cifar10", settings(tmp_path / "x", tmp_path / "no_data", **quick)), net=net,
                      hidden_layer=HIDDEN)
    byol.pretrain(load_config("cifar10", settings(tmp_path / "a", cifar10_root, **quick)), net=net, hidden_layer=HIDDEN)
    assert "trained by an earlier byol.pretrain" not in capsys.readouterr().err
    assert not any(m.training for m in net.modules())  # as given (a user test: its layers were left training)
    byol.pretrain(load_config("cifar10", settings(tmp_path / "b", cifar10_root, **quick)), net=net, hidden_layer=HIDDEN)
    said = capsys.readouterr().err
    assert f"net was trained by an earlier byol.pretrain in this process (in {tmp_path / 'a'})" in said, said
    byol.pretrain(byol.resume_config(None, [f"--train.out_dir={tmp_path / 'b'}", "--train.max_steps=2"]),
                  resume=True, net=net, hidden_layer=HIDDEN)  # a resume: the checkpoint's weights, nothing to say
    assert "trained by an earlier" not in capsys.readouterr().err
    failing = SmallNet()  # a run that trained a step, then failed (a review: its net was not remembered)
    knn = byol.knn_monitor.knn_eval
    calls = []
    monkeypatch.setattr(byol.knn_monitor, "knn_eval", lambda *a, **k: calls.append(1) or (
        knn(*a, **k) if len(calls) == 1 else 1 / 0))  # the final kNN fails, after the last step
    with pytest.raises(ZeroDivisionError):
        byol.pretrain(load_config("cifar10", settings(tmp_path / "c", cifar10_root, **quick)), net=failing,
                      hidden_layer=HIDDEN)
    monkeypatch.undo()
    capsys.readouterr()
    byol.pretrain(load_config("cifar10", settings(tmp_path / "d", cifar10_root, **quick)), net=failing,
                  hidden_layer=HIDDEN)
    assert f"earlier byol.pretrain in this process (in {tmp_path / 'c'})" in capsys.readouterr().err
    finished = SmallNet()  # a finished run resumed: nothing trained, its weights loaded (a mutation audit)
    byol.pretrain(byol.resume_config(None, [f"--train.out_dir={tmp_path / 'd'}"]), resume=True, net=finished,
                  hidden_layer=HIDDEN)
    capsys.readouterr()
    byol.pretrain(load_config("cifar10", settings(tmp_path / "e", cifar10_root, **quick)), net=finished,
                  hidden_layer=HIDDEN)
    assert f"earlier byol.pretrain in this process (in {tmp_path / 'd'})" in capsys.readouterr().err

TORCHRUN = """
import sys

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation

import byol
from byol.checkpoint import load_checkpoint
from byol.config import load_config

if __name__ == "__main__":
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), Conv2dNormActivation(8, 8, 1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    norms = [net[1], net[2][1]]  # net's own, and one inside a child (which the conversion replaced in place)
    layer = int(sys.argv[2]) if sys.argv[2].isdigit() else sys.argv[2]
    byol.pretrain(load_config("cifar10", sys.argv[3:]), net=net, hidden_layer=layer)
    assert net[1] is norms[0] and net[2][1] is norms[1], net
    state = load_checkpoint(sys.argv[1])  # (a user test: a rank but rank 0 found none, or the epoch's before)
    assert state["step"] == 3, state["step"]
    saved = state["model"]
    for key, value in net.state_dict().items():  # the weights and statistics the run trained, on every rank
        entry = saved.get(f"online.encoder.body.{key}", saved.get(f"online.encoder.net.{key}"))
        assert (entry is None and key.startswith("5.")) or torch.equal(value, entry), key
"""


@pytest.mark.parametrize("layer", [3, "2.1"])  # traced; inside a torchvision.ops block, taken by a forward hook
def test_under_torchrun_the_network_given_holds_its_own_batchnorm_layers_with_what_they_trained(tmp_path, layer,
                                                                                                cifar10_root):
    """A user test: after a torchrun, net's BatchNorm layers inside its children were byol's synchronized ones
    (in training mode, a call outside the run waited on the other ranks, or failed without a process group),
    and those of its own kept their initial statistics (the run's were in the synchronized copies); a layer
    taken by a forward hook failed at the second step (DDP: parameters that got no gradient, the layers after);
    and byol.pretrain returned on rank 1 before rank 0 wrote the last checkpoint, which rank 1 evaluated next."""
    script = tmp_path / "given.py"
    script.write_text(TORCHRUN)
    out = tmp_path / "run"
    overrides = settings(out, cifar10_root, **{"train.epochs": 2, "train.max_steps": 3, "train.knn_every": -1,
                                                "data.limit": 32})  # (a checkpoint at step 2, the epoch's end)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", *RENDEZVOUS,
                           str(script), str(out / "checkpoints" / "last.pt"), str(layer), *overrides],
                          capture_output=True, text=True, env={**torchrun_env(), "TMPDIR": str(tmp_path)}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
