import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from byol import knn
from byol.augment import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from byol.backbones import resnet
from byol.build import build_model, eval_crop, load_size
from byol.checkpoint import CheckpointError
from byol.config import load_config
from byol.embeddings import embed
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


@pytest.mark.parametrize("name", ["resnet101", "resnet152"])
def test_a_bare_state_dict_of_a_deep_resnet_is_read_as_that_resnet(tmp_path, name):
    """The paper's deeper ResNets by name: their state_dict, narrow here (torchvision's own at full width:
    test_resnets.py), is read off its keys as the network it is, and loaded."""
    torch.manual_seed(0)
    net = resnet(name, cifar_stem=True, width=4)
    torch.save(net.state_dict(), tmp_path / "deep.pt")
    loaded, config = load_encoder(tmp_path / "deep.pt")
    assert (config.model.backbone, config.model.cifar_stem, config.model.width) == (name, True, 4)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items() if not k.startswith("fc."))


@pytest.mark.parametrize("setting", [{"optim": {"ema_warmup": 3}}, {"train": {"epochs": "many"}}])
def test_a_checkpoint_whose_settings_do_not_load_is_named(tmp_path, setting):
    """A checkpoint of another byol (a setting this one does not have, or another type): the error names the
    checkpoint; it said "unknown config key 'optim.ema_warmup'", as if the user had given that setting."""
    import re
    from byol.config import Config
    config = Config().to_dict()
    for section, values in setting.items():
        config[section].update(values)
    path = tmp_path / "last.pt"
    torch.save({"model": {}, "config": config, "step": 3}, path)
    said = f"^the settings saved in {re.escape(str(path))} do not load in this version of byol "
    with pytest.raises(CheckpointError, match=said + r"\(.*(ema_warmup|train.epochs).*\); it was written by another "
                       r"version \(or edited\): use the byol that wrote it$"):  # (not "to resume it": a run's)
        load_encoder(path)


def test_a_relative_data_root_is_found_from_where_the_run_started_unless_one_is_given(tmp_path, monkeypatch, capsys):
    """An older run stored data.root as typed (relative): eval from elsewhere looks it up from the folder the run
    was started in, BASE of BASE/out_dir/checkpoints/, and says so; a --data.root given is taken as it is,
    without that note (a mutation audit found neither tested)."""
    from byol.config import Config, save_config
    base = tmp_path / "base"
    (base / "data").mkdir(parents=True)
    folder = base / "runs" / "r1" / "checkpoints"
    folder.mkdir(parents=True)
    config = Config()
    config.data.root, config.train.out_dir, config.model.width, config.model.cifar_stem = "data", "runs/r1", 8, True
    save_config(config, folder / "config.yaml")
    torch.save(resnet("resnet18", cifar_stem=True, width=8).state_dict(), folder / "encoder.pt")
    monkeypatch.chdir(tmp_path)
    _, found = load_encoder(folder / "encoder.pt")
    data = (base / "data").resolve()
    assert found.data.root == str(data)
    assert f"note: data.root data is relative and not found here; using {data}, from the directory the run was " \
        "started in" in capsys.readouterr().err
    _, given = load_encoder(folder / "encoder.pt", ["--data.root=elsewhere"])
    assert given.data.root == "elsewhere" and "relative" not in capsys.readouterr().err


def test_an_exported_encoder_at_random_init_is_the_encoder_its_run_started_from(tmp_path, cifar10_root):
    """``byol eval knn encoder.pt --random-init``: the baseline of an export is its run's, as of the checkpoint
    (coverage: random_init of an exported encoder was never run)."""
    from byol.exports import export
    from byol.train import pretrain
    from conftest import tiny_overrides
    run = tmp_path / "run"
    pretrain(load_config("cifar10", tiny_overrides(run, **{"train.max_steps": 2, "train.knn_every": -1,
                                                           "train.seed": 3}) + [f"--data.root={cifar10_root}"]))
    export(run / "checkpoints" / "last.pt", tmp_path / "export")
    initial = load_encoder(run / "checkpoints" / "last.pt", random_init=True)[0].state_dict()
    exported = load_encoder(tmp_path / "export" / "encoder.pt", random_init=True)[0].state_dict()
    trained = load_encoder(tmp_path / "export" / "encoder.pt")[0].state_dict()
    trunk = [k for k in initial if not k.startswith("fc.")]
    assert all(torch.equal(initial[k], exported[k]) for k in trunk)
    assert not all(torch.equal(initial[k], trained[k]) for k in trunk)


def _peers_checkpoints(online: torch.nn.Module, target: torch.nn.Module) -> dict:
    """The ways the peers save a BYOL model, the online and target ResNets under their own keys."""
    def under(prefix, net):
        return {prefix + k: v for k, v in net.state_dict().items()}

    def numbered(net):  # lightly's backbone: nn.Sequential(*list(resnet.children())[:-1])
        return torch.nn.Sequential(*list(net.children())[:-1])

    head = {"projector.0.weight": torch.zeros(4, 2)}
    return {
        "byol-pytorch": {**under("net.", online), **under("online_encoder.net.", online), **head,
                         **under("target_encoder.net.", target)},
        "solo-learn": {"state_dict": {**under("backbone.", online), **under("momentum_backbone.", target), **head},
                       "epoch": 1},
        "lightning": {"state_dict": online.state_dict(), "epoch": 1},
        "lightly": {**under("backbone.", numbered(online)), **under("backbone_momentum.", numbered(target)), **head},
        "lightly-lightning": {"state_dict": {**under("backbone.", numbered(online)),
                                             **under("backbone_momentum.", numbered(target))}},
        # MoCo v2's: its key encoder (the target) as long as the query one, which the set's order picked by turns
        "moco": {"state_dict": {**under("module.encoder_k.", target), **under("module.encoder_q.", online)},
                 "arch": "resnet18"},
        "semantic": {**under("semantic_encoder.", online), **head},  # (no EMA's: 'ema' is inside the word)
    }


@pytest.mark.parametrize("peer", ["byol-pytorch", "solo-learn", "lightning", "lightly", "lightly-lightning", "moco",
                                  "semantic"])
def test_a_peer_s_checkpoint_is_refused_in_a_sentence_that_says_where_its_online_encoder_is(tmp_path, peer,
                                                                                          monkeypatch):
    """byol-pytorch's learner, lightly's and solo-learn's BYOL modules and Lightning checkpoints were refused
    with their first keys alone (a user test): the sentence now names the online ResNet's keys (not the
    target's) and how to save it as the state_dict byol reads, and doing as it says loads the online weights."""
    import re
    torch.manual_seed(0)
    online, target = resnet("resnet18", cifar_stem=True, width=8), resnet("resnet18", cifar_stem=True, width=8)
    path = tmp_path / "peer.pt"
    torch.save(_peers_checkpoints(online, target)[peer], path)
    with pytest.raises(CheckpointError, match="holds neither a byol checkpoint nor an encoder state_dict") as e:
        load_encoder(path)
    line = str(e.value)
    assert "\n" not in line and ("the target's" in line) == (peer not in ("lightning", "semantic")), line
    if peer.startswith("lightly"):  # numbered as an nn.Sequential: its resnet holds the same weights
        assert "nn.Sequential(*list(resnet.children())[:-1])" in line and "resnet.state_dict()" in line, line
        return
    code = re.search(r"save that alone, (.*), and give encoder\.pt$", line).group(1)
    monkeypatch.chdir(tmp_path)  # the sentence's code writes encoder.pt where it runs
    exec(code, {"torch": torch}, {})
    loaded, config = load_encoder(tmp_path / "encoder.pt")
    assert config.model.width == 8
    trunk = {k: v for k, v in online.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trunk.items())


def test_a_state_dict_of_a_resnet_byol_does_not_build_is_one_sentence_that_says_so(tmp_path):
    """A torchvision resnet101's state_dict (byol builds it now: a resnext50_32x4d's here) was read as the default
    resnet18 with a CIFAR stem (its 7x7 conv1 notwithstanding) and refused with 500 keys' mismatch and a guess about
    projectors (a user test)."""
    torch.save(torchvision.models.resnext50_32x4d().state_dict(), tmp_path / "rx50.pt")
    with pytest.raises(CheckpointError) as e:
        load_encoder(tmp_path / "rx50.pt")
    line = str(e.value)
    assert "is a state_dict whose keys and shapes are not those of a ResNet byol builds (resnet18, resnet34, " \
        "resnet50, resnet101, resnet152, of any width" in line and "byol.features.extract_features(" in line, line
    assert "read as" not in line and "projector" not in line, line


def test_the_note_on_a_bare_state_dict_says_what_it_was_read_as_and_which_preset_is_imagenet_s(tmp_path, capsys):
    """byol.BYOL's, byol-pytorch's and lightly's default views normalize with ImageNet's mean and std, not the
    CIFAR-10's once assumed, and the note did not say which preset has those (nor that byol's own learner's do: a
    user test saved resnet.state_dict() after BYOL(resnet, image_size=32), as the docs show, and eval read it
    with CIFAR-10's); nor what architecture the keys were read as (a 3x3 first convolution is read as the CIFAR
    stem, without max-pool, which the keys cannot show)."""
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pt")
    load_encoder(tmp_path / "r18.pt")
    err = capsys.readouterr().err
    assert "its input is taken to be augment.preset=paper (ImageNet's mean and std, as torchvision's pretrained " \
        "weights, byol.BYOL's default views, byol-pytorch and lightly normalize); give --augment.preset if it was " \
        "not (--augment.preset=cifar for an encoder pretrained with byol's cifar presets, CIFAR-10's mean and std); " \
        "its network is read off its keys as model.backbone=resnet18, model.cifar_stem=false, model.width=64" \
        in err, err
    load_encoder(tmp_path / "r18.pt", ["--model.width=16"], random_init=True)  # (a review: said to be the keys')
    assert "its network is built as given, model.backbone=resnet18, model.cifar_stem=false, model.width=16" in \
        capsys.readouterr().err


def test_a_resnet_state_dict_named_otherwise_than_torchvision_s_is_said_to_be_that(tmp_path):
    """A CIFAR ResNet's state_dict with other names for its shortcut and classifier (shortcut, linear: a
    popular CIFAR repository's) was refused with a guess about projectors and predictors (a user test)."""
    state = {k.replace("downsample", "shortcut").replace("fc.", "linear."): v
             for k, v in resnet("resnet18", cifar_stem=True, width=8).state_dict().items()}
    torch.save(state, tmp_path / "cifar_resnet.pt")
    with pytest.raises(CheckpointError, match=r"not named as torchvision's: conv1, bn1, layerN.M.downsample\?\): "
                                              r".*layer2.0.downsample"):
        load_encoder(tmp_path / "cifar_resnet.pt")


def test_a_state_dict_of_a_network_of_another_input_than_rgb_says_so(tmp_path):
    """A bad-input fuzz: a grayscale ResNet's state_dict (conv1 of 1 input channel) was refused with the guess that
    its modules are named otherwise than torchvision's."""
    state = resnet("resnet18", cifar_stem=True, width=8).state_dict()
    state["conv1.weight"] = state["conv1.weight"][:, :1].clone()
    torch.save(state, tmp_path / "gray.pt")
    for given in ([], ["--model.width=8"]):
        with pytest.raises(CheckpointError, match=r"gray.pt is a state_dict whose first convolution \(conv1\) takes 1 "
                                                  r"channel\(s\), not the 3 of the RGB images byol eval and embed feed "
                                                  r"it; load it yourself and give its features from byol.features"):
            load_encoder(tmp_path / "gray.pt", given)


def test_a_resnet_state_dict_read_as_other_settings_given_says_those_not_its_names(tmp_path):
    """A review: a --model.width given over what the keys say was refused with the guess that the modules are
    named otherwise than torchvision's."""
    torch.save(resnet("resnet18", cifar_stem=True, width=8).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(CheckpointError, match=r"\(model.\* settings given other than its keys say\?\): 100 of another "
                                              r"shape"):
        load_encoder(tmp_path / "r18.pt", ["--model.width=16"])


def test_a_file_that_holds_no_dict_is_said_as_what_it_holds(tmp_path):
    """torch.save of a tensor or a list (no checkpoint, no state_dict): the sentence names its type (a coverage
    audit: never run)."""
    for name, held, said in (("tensor.pt", torch.zeros(3), "Tensor"), ("list.pt", [1, 2], "list")):
        torch.save(held, tmp_path / name)
        with pytest.raises(CheckpointError, match=rf"^\S*{name} holds neither a byol checkpoint nor an encoder "
                                                  rf"state_dict \(it holds a {said}\)$"):
            load_encoder(tmp_path / name)


def test_a_bare_state_dict_is_read_as_an_eval_mode_trunk_whatever_its_classifier_leaving_the_caller_s_rng(tmp_path):
    """A mutation audit: the encoder returned with its classifier (1000 logits, not the pooled features), in
    training mode, or its network built from the caller's random number generator each survived every test of
    this module. A classifier of another width (10 classes) is not the encoder's, and does not stop it loading."""
    torch.manual_seed(0)
    net = resnet("resnet18", cifar_stem=True, width=8)
    net.fc = torch.nn.Linear(64, 10)  # a classifier fine-tuned on CIFAR-10: not the encoder, not loaded
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    for random_init in (False, True):
        before = torch.get_rng_state()
        loaded = load_encoder(tmp_path / "r18.pt", random_init=random_init)[0]
        assert torch.equal(torch.get_rng_state(), before), random_init
        assert not any(m.training for m in loaded.modules()), random_init
        assert loaded(torch.rand(2, 3, 32, 32)).shape == (2, 64), random_init  # the pooled trunk's 8 x width


def test_an_encoder_with_a_batchnorm_statistic_that_is_not_finite_is_refused(tmp_path):
    """A mutation audit: checking the weights alone, not the BatchNorm statistics, survived every test; a run that
    diverged may leave NaN in a running variance only, and eval and embed of it gave NaN features."""
    state = resnet("resnet18", cifar_stem=True, width=8).state_dict()
    state["layer2.0.bn1.running_var"][3] = float("nan")
    torch.save(state, tmp_path / "diverged.pt")
    with pytest.raises(CheckpointError, match="holds NaN or infinite values in 1 of its tensors"):
        load_encoder(tmp_path / "diverged.pt")


def test_a_checkpoint_s_encoder_is_its_trained_online_encoder_not_the_target_or_the_initial_one(tmp_path):
    """A mutation audit: load_encoder of a byol checkpoint giving the target's encoder, or the network as built
    (the checkpoint's weights not loaded), each survived every test of this module and of eval's kNN."""
    config = load_config("cifar10-cpu")
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():
        for p in model.online.encoder.parameters():  # trained: the online encoder is neither its start nor the target
            p.normal_()
    torch.save({"model": model.state_dict(), "config": asdict(config), "step": 3}, tmp_path / "last.pt")
    loaded = load_encoder(tmp_path / "last.pt")[0].state_dict()
    online = model.online.encoder.body.state_dict()
    assert online and all(torch.equal(loaded[k], v) for k, v in online.items())


def test_a_bare_torchvision_state_dict_is_fed_imagenet_s_mean_and_std_unless_a_preset_is_given(tmp_path, capsys,
                                                                                                cifar10_root):
    """torchvision's pretrained weights, byol.BYOL's default views, byol-pytorch and lightly all normalize with
    ImageNet's mean and std; a bare state_dict was read with CIFAR-10's (the config default, augment.preset=cifar),
    which only byol pretrain's cifar presets use, and their checkpoints and exports carry config.yaml."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    net.fc = torch.nn.Identity()
    raw = np.fromfile(cifar10_root / "cifar-10-batches-bin" / "test_batch.bin", np.uint8, count=4 * 3073)
    images = torch.from_numpy(raw.reshape(4, 3073)[:, 1:].reshape(4, 3, 32, 32).copy()).float() / 255
    common = [f"--data.root={cifar10_root}", "--train.device=cpu", "--train.precision=fp32"]
    for given, mean, std in (([], IMAGENET_MEAN, IMAGENET_STD), (["--augment.preset=cifar"], CIFAR_MEAN, CIFAR_STD)):
        result = knn(tmp_path / "r18.pt", common + given, ks=(5,), limit=20)
        assert (result["mean"], result["std"]) == (list(mean), list(std)), given
        out = embed(tmp_path / "r18.pt", tmp_path / "e.pt", overrides=common + given, limit=4)
        with torch.no_grad():
            expected = net.eval()((images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
        torch.testing.assert_close(torch.load(out, weights_only=True)["embeddings"], expected, rtol=1e-4, atol=1e-4)
    err = capsys.readouterr().err
    assert "its input is taken to be augment.preset=paper (ImageNet's mean and std" in err and \
        "give --augment.preset if it was not (--augment.preset=cifar for an encoder pretrained with byol's cifar " \
        "presets" in err, err


RECORDS = "the mean and std export.json records"
NO_PRESET_S = "byol pretrain's default: export.json records no preset's mean and std"


@pytest.mark.parametrize("recorded, name, preset, why", [
    ((IMAGENET_MEAN, IMAGENET_STD), "r18.pt", "paper", RECORDS),
    ((CIFAR_MEAN, CIFAR_STD), "r18.pt", "cifar", RECORDS),
    ((CIFAR_MEAN, CIFAR_STD), "other.pt", "paper", "ImageNet's mean and std"),  # another file's record
    (((0.5,) * 3, (0.5,) * 3), "r18.pt", "cifar", NO_PRESET_S),
    (None, "r18.pt", "cifar", NO_PRESET_S)])  # (an export before 2026-12-01 recorded no input)
def test_a_bare_state_dict_beside_its_export_json_takes_the_preset_of_the_mean_and_std_it_records(
        tmp_path, capsys, recorded, name, preset, why):
    """An export folder copied without its config.yaml: the mean and std that export.json records for the file
    (a byol run's, CIFAR-10's with the cifar presets) are its input's. One that records none, or a mean and std
    of no preset, leaves byol pretrain's default (augment.preset=cifar), said; one of another file, ImageNet's."""
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pt")
    info = {"state_dict": name, "torchscript": "encoder_torchscript.pt", "backbone": "resnet18", "cifar_stem": False}
    if recorded is not None:
        info["input"] = {"image_size": 32, "mean": list(recorded[0]), "std": list(recorded[1])}
    (tmp_path / "export.json").write_text(json.dumps(info))
    _, config = load_encoder(tmp_path / "r18.pt")
    err = capsys.readouterr().err
    assert config.augment.preset == preset and err.count("note: ") == 1, err
    assert f"its input is taken to be augment.preset={preset} ({why}" in err, err
    assert load_encoder(tmp_path / "r18.pt", ["--augment.preset=none"])[1].augment.preset == "none"  # given: taken


def _export_folder(folder: Path, recorded: dict, sha256: str = "") -> Path:
    """A narrow ResNet's encoder.pt, and the export.json of it that records ``recorded`` as its input (and the
    file's SHA-256, or ``sha256`` where given), without the config.yaml beside them: an export folder copied so."""
    folder.mkdir()
    torch.manual_seed(0)
    torch.save(resnet("resnet18", cifar_stem=True, width=4).state_dict(), folder / "encoder.pt")
    info = {"state_dict": "encoder.pt", "torchscript": "encoder_torchscript.pt", "input": recorded,
            "state_dict_sha256": sha256 or hashlib.sha256((folder / "encoder.pt").read_bytes()).hexdigest()}
    (folder / "export.json").write_text(json.dumps(info))
    return folder / "encoder.pt"


PAPER_S = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def test_a_bare_state_dict_on_a_folder_is_fed_at_the_size_its_export_json_records(tmp_path, capsys):
    """An export folder copied without its config.yaml, evaluated on a folder: its images were fed at the
    config's default size (32, decoded at 37), not as export.json records eval and embed fed the encoder (the
    center 40 of each image's square at 48 here), and the note said 'data.image_size=32 (the default)'. Its
    image_size is what the encoder is fed (the crop where one is cut), its load_size the square decoded."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (60, 50, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
    folder = ["--data.dataset=folder", f"--data.root={tmp_path / 'images'}", "--data.workers=0",
              "--train.device=cpu", "--train.precision=fp32"]
    path = _export_folder(tmp_path / "copied", {"image_size": 40, "load_size": 48, "crop": 40, **PAPER_S})
    _, config = load_encoder(path, folder)
    assert (config.data.image_size, load_size(config), eval_crop(config)) == (40, 48, 40)
    err = capsys.readouterr().err
    assert "its input is taken to be data.image_size=40 and data.load_size=48 (export.json's record: each image's " \
        "center square resized to 48x48, its center 40x40 cut out), augment.preset=paper" in err, err
    # the features are those of the sizes it records, given
    said = embed(path, tmp_path / "said.pt", overrides=folder)
    given = embed(path, tmp_path / "given.pt", overrides=folder + ["--data.image_size=40", "--data.load_size=48"])
    assert torch.equal(torch.load(said, weights_only=True)["embeddings"],
                       torch.load(given, weights_only=True)["embeddings"])
    # whole at its size where no crop was cut; a size given is taken, export.json's record not
    path = _export_folder(tmp_path / "whole", {"image_size": 48, "load_size": 48, "crop": None, **PAPER_S})
    _, config = load_encoder(path, folder)
    assert (config.data.image_size, load_size(config), eval_crop(config)) == (48, 48, None)
    assert "data.image_size=48 (export.json's record: each image's center square resized to 48x48)" in \
        capsys.readouterr().err
    _, config = load_encoder(path, folder + ["--data.image_size=64"])
    assert (config.data.image_size, load_size(config)) == (64, 73) and "data.image_size" not in \
        capsys.readouterr().err


def test_an_export_json_that_records_another_file_s_sha256_says_nothing_of_this_one(tmp_path, capsys):
    """export.json names encoder.pt, but the file there is not the one exported (fine-tuned and saved over it, say):
    its mean and std were taken all the same (CIFAR-10's here), now ImageNet's, as of a file nothing says, with why;
    nor is its size taken for a folder."""
    cifar_s = {"image_size": 48, "load_size": 48, "crop": None, "mean": list(CIFAR_MEAN), "std": list(CIFAR_STD)}
    path = _export_folder(tmp_path / "copied", cifar_s)
    assert load_encoder(path)[1].augment.preset == "cifar"  # the file exported: its record's
    capsys.readouterr()
    path = _export_folder(tmp_path / "changed", cifar_s, sha256="0" * 64)
    _, config = load_encoder(path, ["--data.dataset=folder"])
    err = capsys.readouterr().err
    assert (config.augment.preset, config.data.image_size) == ("paper", 32), err
    assert "data.image_size=32 (the default), augment.preset=paper (ImageNet's mean and std, as torchvision's " \
        "pretrained weights, byol.BYOL's default views, byol-pytorch and lightly normalize; not export.json's: " \
        "this file does not match the SHA-256 it records)" in err, err


def test_a_bare_state_dict_s_export_json_is_read_once(tmp_path, monkeypatch):
    """Its preset, the note's reason for it and the export's step each read export.json (three times, and the
    file hashed for the step alone, while the preset trusted a file of another SHA-256): one reading serves all."""
    path = _export_folder(tmp_path / "copied", {"image_size": 32, "load_size": 32, "crop": None, **PAPER_S})
    reads = []
    read_text = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: reads.append(self.name) or read_text(self, *a, **k))
    _, config = load_encoder(path, ["--data.dataset=folder"])
    assert reads.count("export.json") == 1 and config.data.image_size == 32, reads
