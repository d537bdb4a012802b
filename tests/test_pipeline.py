"""The steps after pretraining on a folder: its images are embedded as they are decoded."""

import json
import re
import shutil

import pytest
import torch
from PIL import Image
from torch import nn

import byol
import byol.build
import byol.folder
import byol.precision
from byol import encoders, pipeline
from byol.checkpoint import CheckpointError
from byol.config import Config, ConfigError, load_config
from byol.data import DataError, ImageSet
from byol.evaluate import extract_features
from byol.folder import ImageFolder
from byol.loaders import load_folder_tensor
from conftest import extract_jpegs, tiny_overrides


class Recorder(nn.Module):
    """A small encoder that notes how many files had been decoded at each of its calls."""

    def __init__(self, decoded: list):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.decoded, self.seen = decoded, []

    def forward(self, x):
        self.seen.append(len(self.decoded))
        return self.conv(x).mean((2, 3))


def test_a_folder_is_embedded_as_it_streams_in_order_without_its_bad_files(tmp_path, monkeypatch, capsys):
    root = extract_jpegs(tmp_path / "images", per_class=3)  # 30 files
    (root / "cat" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    decoded: list = []
    decode = byol.folder.decode_image
    monkeypatch.setattr(byol.folder, "decode_image", lambda path, size: decoded.append(path) or decode(path, size))
    monkeypatch.setattr(pipeline, "EVAL_BATCH", 8)
    config = Config()
    config.data.workers = 0
    config.train.precision = "fp32"
    folder = ImageFolder(root, size=32)
    net = Recorder(decoded)
    feats, labels, indices = pipeline.features(net, config, folder, torch.device("cpu"))
    # The first batch went through the encoder after 8 files were decoded, not all 31.
    assert net.seen == [8, 16, 24, 31]
    # Every decodable file once, in folder order, with its label; the corrupt one left out.
    bad = folder.paths.index(str(root / "cat" / "corrupt.jpg"))
    assert indices.tolist() == [i for i in range(31) if i != bad]
    assert torch.equal(labels, folder.labels[indices])
    whole = load_folder_tensor(ImageFolder(root, size=32))  # the same files decoded into memory first
    view1, _ = pipeline.views_of(config)
    expected = extract_features(net, whole.images, mean=view1.mean, std=view1.std)
    torch.testing.assert_close(feats, expected)
    assert list(folder.bad_files) == [str(root / "cat" / "corrupt.jpg")]
    assert f"note: 1 of the 31 image files in {root} could not be decoded and is left out (e.g. " \
        f"{root / 'cat' / 'corrupt.jpg'}: " in capsys.readouterr().err


def test_a_bad_file_whose_name_has_a_line_break_is_named_on_one_line(tmp_path, capsys):
    """A file name may hold a line break: the note and the error name it as skipped_files.txt does, on one line."""
    root = extract_jpegs(tmp_path / "images", per_class=1)
    (root / "cat" / "two\nlines.jpg").write_bytes(b"not a jpeg")
    config = Config()
    config.data.workers, config.train.precision = 0, "fp32"
    pipeline.features(Recorder([]), config, ImageFolder(root, size=32), torch.device("cpu"))
    err = capsys.readouterr().err
    assert "could not be decoded" in err and "two\\nlines.jpg: " in err and err.count("\n") == 1
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "two\nlines.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"two\\nlines\.jpg: ") as caught:
        pipeline.features(Recorder([]), config, ImageFolder(alone, size=32), torch.device("cpu"))
    assert "\n" not in str(caught.value)


class Interrupted(nn.Module):
    """An encoder whose second batch is interrupted, as Ctrl-C in a notebook interrupts a slow embed."""

    def __init__(self):
        super().__init__()
        self.conv, self.calls = nn.Conv2d(3, 4, 3), 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return self.conv(x).mean((2, 3))


def test_an_interrupted_folder_embedding_leaves_no_decoding_processes(tmp_path, monkeypatch):
    """They were kept for another pass that never comes, and the traceback a notebook keeps held them."""
    import multiprocessing
    root = extract_jpegs(tmp_path / "images", per_class=3)  # 30 files
    monkeypatch.setattr(pipeline, "EVAL_BATCH", 8)
    config = Config()
    config.data.workers, config.train.precision = 2, "fp32"
    before = set(multiprocessing.active_children())  # another test's, if any: not this one's to judge
    with pytest.raises(KeyboardInterrupt) as interrupted:
        pipeline.features(Interrupted(), config, ImageFolder(root, size=32), torch.device("cpu"))
    assert interrupted.traceback  # held, as a notebook holds it
    assert set(multiprocessing.active_children()) <= before


def test_a_folder_with_nothing_decodable_is_one_clear_error(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    config = Config()
    config.data.workers = 0
    with pytest.raises(DataError, match=r"none of the 1 image files in .* could be decoded \(.*corrupt.jpg: "):
        pipeline.features(Recorder([]), config, ImageFolder(tmp_path, size=32), torch.device("cpu"))


def test_the_notes_of_a_class_embedded_alone_name_its_folder(tmp_path, capsys):
    """A user test: ``byol embed --split cat`` of a plain folder said its bad files were of the whole folder."""
    root = extract_jpegs(tmp_path / "images", per_class=1)
    (root / "cat" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    config = Config()
    config.data.workers = 0
    cat = ImageFolder(root, size=32).inside("cat")
    pipeline.features(Recorder([]), config, cat, torch.device("cpu"))
    assert f"note: 1 of the 2 image files in {root / 'cat'} could not be decoded" in capsys.readouterr().err
    next(p for p in (root / "cat").iterdir() if p.name != "corrupt.jpg").write_bytes(b"no jpeg")
    with pytest.raises(DataError, match=f"^none of the 2 image files in {re.escape(str(root / 'cat'))} could "
                       "be decoded"):
        pipeline.features(Recorder([]), config, ImageFolder(root, size=32).inside("cat"), torch.device("cpu"))


def test_features_show_progress_on_rank_0_only(monkeypatch, capsys):
    config = Config()
    config.train.precision = "fp32"
    images = ImageSet(torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8), None)
    for rank, shown in ((1, False), (0, True)):
        monkeypatch.setattr(pipeline.dist, "rank", lambda: rank)
        pipeline.features(Recorder([]), config, images, torch.device("cpu"), progress="train features")
        assert ("train features" in capsys.readouterr().err) == shown


def test_a_folder_is_evaluated_at_the_size_training_decoded_it_at(tmp_path):
    """Without data.load_size, a folder run decodes at 8/7 of image_size for training and its kNN
    monitor; eval, embed and export.json use that size too, so eval reproduces the monitor, and all
    of them feed the encoder the center image_size of it (the paper's test protocol)."""
    from byol.build import eval_crop, load_size
    from byol.config import load_config
    from byol.exports import _eval_input
    from byol.pipeline import labeled_splits
    extract_jpegs(tmp_path / "set" / "train", per_class=1)
    extract_jpegs(tmp_path / "set" / "val", per_class=1)
    config = load_config("cifar10", ["--data.dataset=folder", f"--data.root={tmp_path / 'set'}",
                                     "--data.image_size=32", "--data.load_size=null"])
    assert load_size(config) == 37
    assert [s.size for s in labeled_splits(config)] == [37, 37]
    assert eval_crop(config) == 32 and _eval_input(config, (0.5,) * 3, (1.0,) * 3)["image_size"] == 32
    # The imagenet preset decodes at 256 for its 224 crops, and at 8/7 of an image_size given instead
    assert load_size(load_config("imagenet")) == 256
    assert load_size(load_config("imagenet", ["--data.image_size=32"])) == 37
    # CIFAR and STL-10 at their own size, whatever their views' (the Python recipe for files of your own)
    assert load_size(load_config("cifar10-cpu")) == 32 and load_config("cifar10-cpu").data.image_size == 24
    assert load_size(load_config("stl10", ["--data.image_size=64"])) == 96


@pytest.mark.parametrize("given, sizes", [([], (32, None)), (["--data.image_size=32"], (32, None)),
                                          (["--data.image_size=24"], (24, None)), (["--data.load_size=40"], (40, 32)),
                                          (["--data.image_size=24", "--data.load_size=40"], (40, 24))])
def test_a_cifar_encoder_on_a_folder_takes_each_image_whole_at_32_but_for_sizes_given(given, sizes):
    """A cifar10-cpu run (24-pixel views) evaluated on a folder: (load_size, crop). A review: giving the
    image_size the note names, 32, gave the center 32 of 37, and a load_size alone the center 24 of it."""
    from byol.build import eval_crop, load_size
    from byol.config import apply_overrides, load_config
    from byol.assumed_input import folder_at_native_size
    config = apply_overrides(load_config("cifar10-cpu"), ["--data.dataset=folder", *given])
    folder_at_native_size(config, "cifar10", [g.removeprefix("--").split("=")[0] for g in given])
    assert (load_size(config), eval_crop(config)) == sizes


def test_a_folder_s_features_are_of_the_center_crop_of_its_decoded_squares(tmp_path):
    """A mutation audit: features of a folder computed on the whole decoded square (no eval crop) survived
    every test, which checked the crop's size only (eval_crop, export.json), not what the encoder is fed."""
    import numpy as np
    from byol.config import load_config
    from byol.features import center_crop
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    config = load_config("cifar10", ["--data.dataset=folder", f"--data.root={tmp_path}", "--data.image_size=8",
                                     "--data.load_size=12", "--data.workers=0", "--train.precision=fp32"])
    folder = ImageFolder(tmp_path, size=12)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten())  # its width says the input's size: 2 x 6 x 6 for 8 x 8
    feats, _, _ = pipeline.features(net, config, folder, torch.device("cpu"))
    view1, _ = pipeline.views_of(config)
    whole = load_folder_tensor(folder).images
    torch.testing.assert_close(feats, extract_features(net, center_crop(whole, 8), mean=view1.mean, std=view1.std))


def test_features_of_a_folder_decoded_whole_note_nothing_and_images_with_no_labels_are_labeled_minus_1(
        tmp_path, capsys):
    """A mutation audit: the note on undecodable files given for every folder ("0 of the 3 image files could not
    be decoded"), and an ImageSet without labels given label 0 (the first class) rather than -1, survived."""
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 2 * i, 3 * i)).save(tmp_path / f"{i}.png")
    config = load_config("cifar10", ["--data.dataset=folder", f"--data.root={tmp_path}", "--data.image_size=8",
                                     "--data.load_size=8", "--data.workers=0", "--train.precision=fp32"])
    folder = ImageFolder(tmp_path, size=8)
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten())
    capsys.readouterr()
    feats, _, indices = pipeline.features(net, config, folder, torch.device("cpu"))
    assert len(feats) == 3 and indices.tolist() == [0, 1, 2]
    assert "could not be decoded" not in "".join(capsys.readouterr())
    unlabeled = ImageSet(load_folder_tensor(folder).images, None)
    _, labels, _ = pipeline.features(net, config, unlabeled, torch.device("cpu"))
    assert labels.tolist() == [-1, -1, -1]


def test_eval_limit_takes_as_many_images_of_the_held_out_split_as_of_the_train_split(cifar10_root):
    """A mutation audit: --limit applied to the train split only survived every test; eval --limit 40 would
    have scored all 10,000 test images (slowly), and said so."""
    from byol.config import load_config
    config = load_config("cifar10", [f"--data.root={cifar10_root}"])
    for holdout in (0, 100):
        train, test = pipeline.labeled_splits(config, limit=40, holdout=holdout)
        assert (len(train), len(test)) == (40, 40)


def test_a_bare_state_dict_is_loaded_as_the_resnet_its_keys_say_and_anything_else_is_one_sentence(tmp_path):
    """Without a config.yaml beside it, a torchvision resnet50's state_dict was read as the default
    resnet18 with a CIFAR stem (a long key mismatch); a file holding no state_dict said the same."""
    import torchvision
    from byol.checkpoint import CheckpointError
    torch.manual_seed(0)
    tv = torchvision.models.resnet50()
    torch.save(tv.state_dict(), tmp_path / "r50.pt")
    net, config = encoders.load_encoder(tmp_path / "r50.pt")
    m = config.model
    assert (m.backbone, m.cifar_stem, m.width) == ("resnet50", False, 64)
    assert torch.equal(net.layer4[2].conv3.weight, tv.layer4[2].conv3.weight)
    small = torchvision.models.resnet18(num_classes=10)  # a classifier of its own: not the encoder, not loaded
    wrapped = {f"module.{k}": v for k, v in small.state_dict().items()}  # saved from DDP
    headless = {k: v for k, v in small.state_dict().items() if not k.startswith("fc.")}  # fc = Identity
    for i, state in enumerate((small.state_dict(), wrapped, headless)):
        torch.save(state, tmp_path / f"r18_{i}.pt")
        net, config = encoders.load_encoder(tmp_path / f"r18_{i}.pt")
        assert config.model.backbone == "resnet18" and torch.equal(net.layer4[1].conv2.weight,
                                                                     small.layer4[1].conv2.weight)
    torch.save({"a": 1}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=r"^\S*x.pt holds neither a byol checkpoint nor an encoder state_dict "
                                              r"\(its keys: a\)$"):
        encoders.load_encoder(tmp_path / "x.pt")


def test_loading_an_encoder_leaves_the_caller_s_random_number_generator_as_it_was(tmp_path):
    """The network the weights are loaded into is initialized first, which drew from torch's generator:
    a notebook's draws after byol.knn, linear, embed or export were not its own seed's."""
    import torchvision
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pt")
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    encoders.load_encoder(tmp_path / "r18.pt")
    assert torch.equal(torch.rand(3), expected)


def test_eval_and_embed_of_a_folder_leave_the_caller_s_random_number_generator_as_it_was(tmp_path):
    """A user test: byol.linear moved a notebook's generator (the probe's head was initialized, then
    zeroed), and so did knn and embed of a folder (each pass's DataLoader drew its processes' seed)."""
    import torchvision
    from byol import embed, knn, linear
    extract_jpegs(tmp_path / "set" / "train", per_class=2)
    extract_jpegs(tmp_path / "set" / "val", per_class=1)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pt")
    given = ["--data.dataset=folder", f"--data.root={tmp_path / 'set'}", "--data.image_size=32", "--data.workers=1",
             "--train.device=cpu"]
    for call in (lambda: knn(tmp_path / "r18.pt", given, ks=(3,)), lambda: linear(tmp_path / "r18.pt", given, epochs=2),
                 lambda: embed(tmp_path / "r18.pt", tmp_path / "e.npy", overrides=given)):
        torch.manual_seed(7)
        expected = torch.rand(3)
        torch.manual_seed(7)
        call()
        assert torch.equal(torch.rand(3), expected)


def test_eval_of_a_folder_says_which_classes_no_train_image_has(tmp_path, capsys):
    """A user test: a train class folder none of whose files decoded capped the kNN accuracy silently
    (its val images could never be right), where a class with no image files at all is refused."""
    import torchvision
    from byol import knn
    train = extract_jpegs(tmp_path / "set" / "train", per_class=2)
    extract_jpegs(tmp_path / "set" / "val", per_class=1)
    for path in (train / "cat").iterdir():
        path.write_bytes(b"not a jpeg")
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pt")
    given = ["--data.dataset=folder", f"--data.root={tmp_path / 'set'}", "--data.image_size=32", "--data.workers=0",
             "--train.device=cpu"]
    assert knn(tmp_path / "r18.pt", given, ks=(3,))["n_train"] == 18
    # the causes named are those the options given allow (a review: --limit named where none was given)
    assert ("note: class cat has no image among the train features (its files could not be decoded), so none of the "
            "1 val image of it can be classified right") in capsys.readouterr().err
    knn(tmp_path / "r18.pt", given, ks=(3,), limit=5)  # 5 files of 10 classes' in each split
    assert "no image among the train features (its files could not be decoded, or --limit left them out)" \
        in capsys.readouterr().err
    extract_jpegs(tmp_path / "set" / "train", per_class=3)  # (cat's files written again, whole)
    knn(tmp_path / "r18.pt", given, ks=(3,))
    assert "no image among the train features" not in capsys.readouterr().err
    train_set = ImageSet(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]), ["plane", "car", "bird"])
    for limit, holdout, why in ((None, 0, ""), (5, 0, " (--limit left them out)"),
                                (None, 9, " (--holdout left them out)"), (5, 9, " (--limit or --holdout left them out)")):
        said = pipeline._classes_missing(train_set, train_set.labels, torch.tensor([2, 1, 2]), "test", limit, holdout)
        assert said == (f"class bird has no image among the train features{why}, so none of the 2 test images of it "
                        "can be classified right")


def test_eval_of_one_class_says_its_accuracies_are_no_measure_of_the_encoder(tmp_path, capsys):
    """A review: a folder of one class scored 100.00% for kNN and the linear probe's top-1, without a word."""
    import torchvision
    from byol import knn, linear
    for split in ("train", "val"):
        folder = extract_jpegs(tmp_path / "set" / split, per_class=2)
        for other in folder.iterdir():
            if other.name != "cat":
                shutil.rmtree(other)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pt")
    given = ["--data.dataset=folder", f"--data.root={tmp_path / 'set'}", "--data.image_size=32", "--data.workers=0",
             "--train.device=cpu"]
    said = ("note: the train images are all of one class, so every val image is classified as it: top-1 is the "
            "share of the val images of that class, whatever the encoder")
    assert knn(tmp_path / "r18.pt", given, ks=(1,))["knn_top1"] == {1: 100.0} and said in capsys.readouterr().err
    assert linear(tmp_path / "r18.pt", given, epochs=1)["top1"] == 100.0 and said in capsys.readouterr().err
    extract_jpegs(tmp_path / "set" / "train", per_class=2)  # two classes: no such note
    knn(tmp_path / "r18.pt", given, ks=(1,))
    assert "all of one class" not in capsys.readouterr().err


def test_an_evals_result_keeps_the_notes_said_while_it_was_computed(tmp_path, capsys):
    """A review: the note that a val/ holding train files inflates the accuracy was said on stderr only, and
    lost with it; the JSON of the result, read later, gave the number alone."""
    import torchvision
    from byol import knn, linear
    train = extract_jpegs(tmp_path / "set" / "train", per_class=2)
    val = extract_jpegs(tmp_path / "set" / "val", per_class=2)
    for path in val.rglob("*.jpg"):  # names of their own: no image of val/ is a train image
        path.rename(path.with_name("val_" + path.name))
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pt")
    given = ["--data.dataset=folder", f"--data.root={tmp_path / 'set'}", "--data.image_size=32", "--data.workers=0",
             "--train.device=cpu"]
    bare = knn(tmp_path / "r18.pt", given, ks=(1,))["notes"]  # the only note: what a bare state_dict is taken as
    assert len(bare) == 1 and "has no config.yaml beside it" in bare[0]
    shutil.rmtree(val / "cat")
    shutil.copytree(train / "cat", val / "cat")
    capsys.readouterr()
    result = knn(tmp_path / "r18.pt", given + ["--optim.lr=1"], ks=(1, 50))
    said = [line.removeprefix("note: ") for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(said) == 4 and said[0] == bare[0] and "optim.lr" in said[1] and "2 of the 20 images" in said[2] \
        and "k=50" in said[3]
    assert result["notes"] == said
    assert linear(tmp_path / "r18.pt", given, epochs=1)["notes"] == [bare[0], said[2]]
    assert knn(tmp_path / "r18.pt", given, ks=(1,))["notes"] == [bare[0], said[2]]  # its own, none kept since


def test_eval_holdout_scores_the_training_images_the_knn_monitor_holds_out(cifar10_root):
    """``byol eval --holdout N``: the train split without N images as the bank (or the probe's
    training set), those N as the queries, drawn as train.knn_holdout draws them; the test split is
    not the one scored. A folder has ROOT/val for that."""
    from byol.train_data import held_out
    from byol.config import load_config
    from byol.datasets import build_dataset
    config = load_config("cifar10", [f"--data.root={cifar10_root}"])
    bank, queries = pipeline.labeled_splits(config, None, 1000)
    _, monitored = held_out(build_dataset("cifar10", cifar10_root, "train", 32, False), 1000)
    assert (len(bank), len(queries)) == (49000, 1000) and torch.equal(queries.indices, monitored.indices)
    assert not set(bank.indices.tolist()) & set(queries.indices.tolist())
    bank, queries = pipeline.labeled_splits(config, 40, 1000)
    assert len(bank) == len(queries) == 40 and torch.equal(queries.indices, monitored.indices[:40])
    folder = load_config("cifar10", ["--data.dataset=folder", "--data.root=x"])
    with pytest.raises(DataError, match="--holdout is for CIFAR-10/100 and STL-10"):
        pipeline.labeled_splits(folder, None, 1000)


def test_the_python_callers_counts_are_checked_as_the_command_line_checks_them(tmp_path):
    """limit=0 evaluated everything, limit=-1 embedded all but the last image (a slice), holdout=-3
    scored the test split: each is one sentence now, before anything is read."""
    from byol.config import ConfigError
    from byol.exports import embed
    from byol.pipeline import knn, linear
    missing = tmp_path / "never_read.pt"
    for call, match in ((lambda: knn(missing, limit=0), "limit must be a whole number >= 1 or None, got 0"),
                        (lambda: embed(missing, tmp_path / "e.npy", limit=-1), "limit must be .* got -1"),
                        (lambda: linear(missing, limit=2.5), "limit must be .* got 2.5"),
                        (lambda: knn(missing, limit=True), "limit must be .* got True"),  # (not 1 image)
                        (lambda: knn(missing, holdout=-3), "holdout must be a whole number >= 0, got -3"),
                        (lambda: knn(missing, ks=(20, 0)), r"ks must be a whole number >= 1, got \(20, 0\)"),
                        (lambda: knn(missing, ks=20), r"ks must be a list or tuple of whole numbers >= 1, such as "
                                                      r"\(20, 200\), got 20"),
                        (lambda: knn(missing, ks=()), r"ks must hold at least one whole number >= 1, such as "
                                                      r"\(20, 200\), got \(\)"),  # a ValueError after the features
                        (lambda: knn(missing, temperature=0), "temperature must be a finite number > 0, got 0"),
                        # as --temperature inf is refused (it was taken from Python, written to JSON as Infinity)
                        (lambda: knn(missing, temperature=float("inf")), "temperature must be a finite number > 0, "
                                                                         "got inf"),
                        (lambda: linear(missing, epochs=0), "epochs must be a whole number >= 1, got 0")):
        with pytest.raises(ConfigError, match=match):
            call()


def test_the_linear_probe_is_seeded_by_train_seed(monkeypatch):
    """A mutation audit: the probe seeded 0 whatever --train.seed (which eval linear reads, SETTINGS_READ) survived:
    a sweep over seeds gave the same result each time, recorded under each seed. So did half the epochs asked
    for, trained and recorded."""
    config = load_config(None, ["--train.seed=7"])
    feats, labels = torch.randn(8, 4), torch.arange(8) % 2
    monkeypatch.setattr(pipeline, "_labeled_features", lambda *args: (
        config, torch.device("cpu"), (feats, labels, feats, labels), {"n_train": 8}, None))
    given = {}
    monkeypatch.setattr(pipeline, "linear_probe", lambda *args, **kwargs: given.update(kwargs) or {})
    result = pipeline.linear("run.pt", epochs=3)
    assert (result["seed"], result["epochs"]) == (given["seed"], given["epochs"]) == (7, 3)


def test_eval_knn_votes_at_the_temperature_it_is_given(monkeypatch):
    """A mutation audit: votes at knn_accuracy's default 0.1 whatever temperature was given (and recorded) survived.
    The query's class has two neighbours at cosine 0.8, the other class one at 0.9: at 0.1 the nearer one outweighs
    the two (e^9 > 2e^8), at 1 the two outweigh it (2e^0.8 > e^0.9)."""
    bank = torch.tensor([[0.8, 0.6], [0.8, -0.6], [0.9, 0.19 ** 0.5]])
    bank_labels, query, query_labels = torch.tensor([0, 0, 1]), torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    monkeypatch.setattr(pipeline, "_labeled_features", lambda *args: (
        Config(), torch.device("cpu"), (bank, bank_labels, query, query_labels), {"n_train": 3}, None))
    assert pipeline.knn("run.pt", ks=(3,))["knn_top1"] == {3: 0.0}
    scored = pipeline.knn("run.pt", ks=(3,), temperature=1.0)
    assert (scored["knn_top1"], scored["temperature"]) == ({3: 100.0}, 1.0)


def test_features_of_images_in_memory_are_computed_in_the_precision_eval_takes(monkeypatch):
    """A mutation audit: features computed in float32 whatever train.precision survived this module's tests (a
    folder run's eval in test_cli only caught it). With bf16, CIFAR's are extract_features' in bf16 autocast."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten())
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    config = load_config(None, ["--train.precision=bf16"])
    feats, _, _ = pipeline.features(net, config, ImageSet(images, torch.arange(4)), torch.device("cpu"))
    view1, _ = byol.build.views_of(config)
    computed = {amp: extract_features(net, images, mean=view1.mean, std=view1.std, amp_dtype=amp)
                for amp in (torch.bfloat16, None)}
    assert torch.equal(feats, computed[torch.bfloat16]) and not torch.equal(feats, computed[None])


def test_features_of_images_in_memory_that_are_not_finite_are_an_error_naming_the_weights():
    """A mutation audit: the check of a folder's features only, not of CIFAR's and STL-10's (held in memory),
    survived the tests of this module."""
    overflowing = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    with torch.no_grad():
        overflowing[1].weight.fill_(1e38)  # finite weights whose activations overflow
    images = ImageSet(torch.full((2, 3, 4, 4), 255, dtype=torch.uint8), torch.arange(2))
    with pytest.raises(CheckpointError, match="^the encoder of x.pt gives NaN or infinite features for 2 of the 2 "):
        pipeline.features(overflowing, Config(), images, torch.device("cpu"), weights="the encoder of x.pt")


def test_numpy_counts_are_taken_as_python_s(tmp_path):
    """limit=np.int64(100) (a count computed with NumPy) was "limit must be a whole number >= 1 or
    None, got 100"; now it is checked as 100 is, and passed on as Python's int."""
    import numpy as np
    from byol.checkpoint import CheckpointError
    from byol.eval_arguments import check_counts
    from byol.pipeline import knn
    taken = check_counts(ks=np.array([20, 200]), temperature=np.float32(0.5), limit=np.int64(100), holdout=np.int32(0))
    assert taken == ((20, 200), 0.5, 100, 0)
    assert [type(v) for v in taken] == [tuple, float, int, int] and [type(k) for k in taken[0]] == [int, int]
    assert check_counts(ks=range(20, 201, 180)) == check_counts(ks=iter([20, 200])) == ((20, 200),)  # as before
    with pytest.raises(CheckpointError, match="does not exist"):  # past the checks, to the checkpoint
        knn(tmp_path / "missing.pt", limit=np.int64(100), ks=(np.int64(20),))


def test_eval_s_missing_data_root_says_what_to_do_once(tmp_path, monkeypatch):
    """A user test: a data.root that does not exist was said so with its advice, then told again to point
    --data.root at the files; a root that holds something else still gets the advice, and a relative
    one says where it is taken from. A checkpoint's root that is gone says --data.root=NEW (it moved since the
    run?) and eval's download option, --data.download=true (it named pretrain's --download, which eval refuses)."""
    from byol.config import load_config
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as e:
        pipeline.load_split(load_config("cifar10", [f"--data.root={missing}"]), "test")
    assert str(e.value).endswith(f"; {missing} does not exist: check the path, or pass --data.download=true when "
                                 "online to fetch the files there; where the data moved since the run, give "
                                 "--data.root=NEW") and "point --data.root" not in str(e.value), e.value
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"fetch the files there \(data.root is nope, relative to the current "
                                        r"directory\); where the data moved since the run, give --data.root=NEW$"):
        pipeline.load_split(load_config("cifar10", ["--data.root=nope"]), "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"; point --data.root=\.\.\. at the folder that holds them \(data.root is "
                                        r"empty, relative to the current directory\)$"):
        pipeline.load_split(load_config("cifar10", ["--data.root=empty"]), "test")


def test_eval_s_data_root_in_the_home_folder_is_not_said_relative_or_moved(tmp_path, monkeypatch):
    """A user test: --data.root=~/c100 (a CIFAR-100 folder given to an STL-10 run) was said to be "relative to the
    current directory" and to have moved since the run, though it is in the home folder and there."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "c100" / "cifar-100-binary").mkdir(parents=True)
    (tmp_path / "c100" / "cifar-100-binary" / "train.bin").write_bytes(bytes(3074))
    with pytest.raises(DataError) as e:
        pipeline.load_split(load_config("stl10", ["--data.root=~/c100"]), "train")
    assert "cifar100's files" in str(e.value), e.value
    assert "relative to the current directory" not in str(e.value) and "moved since" not in str(e.value), e.value


def test_eval_and_embed_compute_in_float32_where_auto_trained_and_monitored_in_float32(tmp_path, monkeypatch,
                                                                                       cifar10_root):
    """train.precision=auto trains a network torch's bf16 CPU convolutions get wrong in float32, and its kNN monitor
    scores it so (byol.precision.checked_precision); eval and embed computed its features in bf16 all the same (a
    review: the monitor's 14.5% at k=20 was 15.5% in byol eval knn), though docs/cli.md says they take auto's
    precision as training does and reproduce the monitor's numbers."""
    monkeypatch.setattr(byol.precision, "native_bf16", lambda device: True)  # auto: bf16 on this CPU, whatever it has
    run = tmp_path / "run"
    byol.pretrain(load_config("cifar10-cpu", tiny_overrides(run, **{
        "model.cifar_stem": "false", "data.image_size": 16, "data.root": cifar10_root})))  # layer4.0.conv1 at 1x1
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    assert state["extra"]["precision"] == "float32"
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    result = byol.knn(last, limit=200)  # the monitor's train.knn_limit
    assert result["precision"] == "float32"
    assert result["knn_top1"] == {k: logged[f"eval/knn_top1_k{k}"] for k in (20, 200)}
    # --data.image_size, which CIFAR's eval does not read (a note says it is ignored), changed it (a review)
    assert byol.knn(last, ["--data.image_size=32"], limit=200)["knn_top1"] == result["knn_top1"]
    assert byol.linear(last, limit=50, epochs=1)["precision"] == "float32"
    embedded = torch.load(byol.embed(last, tmp_path / "emb.pt", limit=8), weights_only=True)
    assert embedded["precision"] == "float32"


def test_a_command_line_option_given_as_an_override_is_told_the_argument_to_pass(tmp_path):
    """A review: byol.knn(path, "--limit=5") was told to pass ['--limit=5'], that was told 'did you mean data.limit?',
    and --data.limit was told to use limit=N: a loop. Each is one sentence now, with the argument to pass."""
    from byol.config import ConfigError
    from byol.exports import embed
    from byol.pipeline import knn, linear
    missing = tmp_path / "never_read.pt"
    for call, match in ((lambda: knn(missing, "--limit=5"), "pass limit=5 to byol.knn itself"),
                        (lambda: knn(missing, ["--data.root=x", "--limit=5"]), "pass limit=5 to byol.knn itself"),
                        (lambda: knn(missing, ["--limit", "5"]), "pass limit=N to byol.knn itself"),
                        (lambda: knn(missing, ["--k=5"]), r"pass ks=\(5,\) to byol.knn"),
                        (lambda: knn(missing, ["--random-init"]), "pass random_init=True to byol.knn"),
                        (lambda: linear(missing, ["--epochs=3"]), "pass epochs=3 to byol.linear"),
                        (lambda: embed(missing, tmp_path / "e.npy", overrides=["--split=train"]),
                         "pass split='train' to byol.embed")):
        with pytest.raises(ConfigError, match=r"is an option of the command line, not a config setting: " + match):
            call()
    with pytest.raises(ConfigError, match="overrides must be a list of strings"):  # a config setting: as before
        knn(missing, "--data.root=x")


def test_an_own_option_is_told_as_the_argument_of_the_function_given_it_only(tmp_path):
    """The edges of the hint above (a mutation audit): an option in a tuple, spelt with '_', given no value, or
    several values (--k takes several on the command line), each told as valid Python; an option of another
    command (linear has no ks, embed no holdout) is not told as an argument the function lacks."""
    from byol.checkpoint import CheckpointError
    from byol.config import ConfigError
    from byol.exports import embed
    from byol.pipeline import knn, linear
    missing = tmp_path / "never_read.pt"
    for overrides, said in ((("--temperature=0.5",), "pass temperature=0.5 to byol.knn"),
                            (["--data.root=x", "--holdout=30"], "pass holdout=30 to byol.knn"),
                            (["--holdout"], "pass holdout=N to byol.knn"),
                            (["--random_init"], "pass random_init=True to byol.knn"),
                            (["--random-init=false"], "pass random_init=False to byol.knn"),
                            (["--random-init=No"], "pass random_init=False to byol.knn"),
                            (["--random-init=1"], "pass random_init=True to byol.knn"),
                            (["--k=5 10"], r"pass ks=\(5, 10\) to byol.knn"),
                            (["--k=5,10"], r"pass ks=\(5, 10\) to byol.knn"),
                            (["--k="], r"pass ks=\(N,\) to byol.knn")):
        with pytest.raises(ConfigError, match=r"is an option of the command line, not a config setting: " + said):
            knn(missing, overrides)
    with pytest.raises(ConfigError, match=r"is an option of the command line, not a config setting: pass limit=5 to "
                                          r"byol\.embed itself"):
        embed(missing, tmp_path / "e.npy", overrides=["--limit=5"])
    for call in (lambda: linear(missing, ["--k=5"]), lambda: linear(missing, ["--temperature=0.5"]),
                 lambda: embed(missing, tmp_path / "e.npy", overrides=["--holdout=5"])):
        with pytest.raises(CheckpointError, match="does not exist"):  # on to the checkpoint, as any other override
            call()


@pytest.mark.parametrize("given, said", [("0", False), ("off", False), (" Off ", False), ("FALSE", False),
                                         ("true", True), ("yes", True), ("", True)])
def test_random_init_given_a_value_among_the_overrides_is_told_as_that_value(tmp_path, given, said):
    """A mutation audit: dropping "0" or "off" from the values read as false, or the strip of the spaces around
    one, survived the test above: '--random-init=0' would be told random_init=True, the opposite of what was
    meant."""
    with pytest.raises(ConfigError, match=rf"not a config setting: pass random_init={said} to byol\.knn itself"):
        pipeline.knn(tmp_path / "never_read.pt", [f"--random-init={given}"])


def test_an_evaluation_records_the_limit_holdout_and_settings_it_was_given(cifar10_root, tmp_path):
    """A review: the result said n_train 100, which does not tell --limit 100 from a split of 100 images, nor
    which config settings were given: now it records them, so that the number can be computed again."""
    torch.manual_seed(0)
    torch.save(byol.resnet("resnet18", width=8).state_dict(), tmp_path / "encoder.pt")
    given = [f"--data.root={cifar10_root}", "--train.device=cpu"]
    results = (byol.knn(tmp_path / "encoder.pt", given, ks=(5,), limit=20, holdout=30),
               byol.linear(tmp_path / "encoder.pt", given, epochs=1, limit=20))
    for result, holdout in zip(results, (30, 0)):
        assert (result["limit"], result["holdout"], result["overrides"]) == (20, holdout, given)
        assert json.loads(json.dumps(result))["overrides"] == given  # as byol eval writes it
        assert result["feature_dim"] == 64  # resnet18 of width 8's (a mutation audit: the images' number survived)


class OutOfMemory(nn.Module):
    """An encoder whose forward fails as an allocation does, with ``error``."""

    def __init__(self, error: Exception):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.error = error

    def forward(self, x):
        raise self.error


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
                 "allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)"),
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB"), MemoryError()])
def test_features_that_do_not_fit_in_memory_say_what_eval_and_embed_can_lower(error):
    """A user test (embed of a folder at --data.image_size=1024 under a memory limit): the sentence said to lower
    train.batch_size, which eval and embed ignore (a note says so), and the same error came again."""
    images = ImageSet(torch.zeros(3, 3, 8, 8, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(byol.ByolError) as raised:
        pipeline.features(OutOfMemory(error), Config(), images, torch.device("cpu"))
    said = str(raised.value)
    assert "do not fit in the memory of cpu" in said and "data.image_size" in said and "--limit" in said
    assert "lower train.batch_size" not in said
    with pytest.raises(ValueError, match="a bug"):  # another error is not taken for memory
        pipeline.features(OutOfMemory(ValueError("a bug")), Config(), images, torch.device("cpu"))
