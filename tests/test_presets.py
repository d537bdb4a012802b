"""Every shipped preset runs two real training steps (on small batches, with the preset's model)."""

import numpy as np
import pytest

from byol.config import load_config
from byol.config_files import preset_names
from byol.reporting import note_train_split
from byol.train import pretrain
from conftest import CIFAR10, extract_jpegs


def fake_stl10(root):
    """A tiny STL-10 binary layout: 96x96 images, labels 1..10."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 16), ("unlabeled", 16)):
        rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8).tofile(folder / f"{split}_X.bin")
        if split != "unlabeled":
            (np.arange(n) % 10 + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    return root


def data_root(preset, tmp_path):
    dataset = load_config(preset).data.dataset
    if dataset in ("cifar10", "cifar100"):
        if not CIFAR10.is_dir() or dataset == "cifar100":
            pytest.skip(f"no local {dataset}")
        return CIFAR10
    if dataset == "stl10":
        return fake_stl10(tmp_path / "stl")
    return extract_jpegs(tmp_path / "images", per_class=1)


# What a start says does not depend on its network: the tests of it train a narrow one, whose checkpoints take
# a few MB, not a preset's (ResNet-18 at full width, the paper's projector: 1.1 GB for the tests below, twice as slow)
NARROW = ("--model.width=8", "--model.projection_hidden_size=64", "--model.projection_size=32")


def two_steps(preset, tmp_path, *overrides):
    return load_config(preset, [
        f"--data.root={data_root(preset, tmp_path)}", f"--train.out_dir={tmp_path / 'run'}",
        "--train.batch_size=4", "--train.max_steps=2", "--train.knn_limit=16", "--train.progress=false",
        "--train.device=cpu", "--data.workers=0", "--train.log_every=1", *overrides])


@pytest.mark.parametrize("preset", preset_names())
def test_preset_runs_two_steps(preset, tmp_path, capsys):
    results = pretrain(two_steps(preset, tmp_path))
    assert results["step"] == 2 and np.isfinite(results["loss"])
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert "STL-10 is usually" not in capsys.readouterr().err  # the stl10 preset takes train+unlabeled


def test_stl10_pretrained_on_its_labeled_images_alone_gets_a_note(tmp_path, capsys):
    """A user test found --data.dataset=stl10 without the preset training on 5,000 of its 105,000 images, unsaid."""
    pretrain(two_steps("stl10", tmp_path, "--data.train_split=train", *NARROW))
    assert "note: this run pretrains on STL-10's labeled train split alone" in capsys.readouterr().err


def test_stl10_trained_on_views_of_another_size_than_its_images_gets_a_note(tmp_path, capsys):
    """A user test: --data.dataset=stl10 with the default (cifar10) preset trained on 32x32 views with the CIFAR
    stem, while the kNN monitor, eval and embed take the 96x96 images whole, and nothing said so."""
    said = "note: the views are 32x32 (data.image_size) while the kNN monitor, byol eval and embed take STL-10's"
    for size, noted in ((32, True), (96, False)):  # (96: the preset's)
        (tmp_path / str(size)).mkdir()
        pretrain(two_steps("stl10", tmp_path / str(size), f"--data.image_size={size}", *NARROW))
        assert (said in capsys.readouterr().err) is noted


def test_pretraining_with_no_augmentation_gets_a_note(tmp_path, capsys):
    """A user test: --augment.preset=none trained BYOL on two identical views without a word."""
    pretrain(two_steps("cifar10-cpu", tmp_path, "--augment.preset=none", "--train.knn_every=-1", *NARROW))
    assert "note: augment.preset=none with augment.crop_min_scale=0.2 gives views that differ only by their square " \
        "crops, of 0.2 to all of the image (no flip, colour change or blur): an ablation; BYOL's recipes are " \
        "--augment.preset=paper or cifar" in capsys.readouterr().err
    pretrain(two_steps("cifar10", tmp_path / "whole", "--augment.preset=none", "--train.knn_every=-1",
                       "--optim.name=adamw", *NARROW))
    err = capsys.readouterr().err
    assert "note: augment.preset=none gives both views the same whole image, from which BYOL has nothing to learn: " \
        "an ablation" in err
    # (a user test: AdamW over the cifar10 preset kept its LARS settings without a word)
    assert "note: optim.name=adamw does not use optim.trust_coefficient=0.02, optim.lars_clip=true; they are " \
        "ignored" in err
    pretrain(two_steps("cifar10", tmp_path / "usual", "--train.knn_every=-1", *NARROW))
    err = capsys.readouterr().err
    assert "augment.preset=none" not in err and "does not use" not in err
    pretrain(two_steps("cifar10", tmp_path / "betas", "--train.knn_every=-1", "--optim.beta2=0.95", *NARROW))
    assert "note: optim.name=lars does not use optim.beta2=0.95; it is ignored" in capsys.readouterr().err
    pretrain(two_steps("cifar10", tmp_path / "usual", "--train.knn_every=-1", "--train.max_steps=3",
                       "--augment.preset=none", "--augment.crop_min_scale=1", *NARROW), resume=True)  # (a review)
    assert "note: augment.preset=none gives both views the same whole image" in capsys.readouterr().err


def test_pretraining_on_the_test_split_gets_a_note(tmp_path, capsys):
    """--data.train_split=test trains on the images the kNN monitor and byol eval score on: said, not silent."""
    pretrain(two_steps("stl10", tmp_path, "--data.train_split=test", *NARROW))
    assert "note: this run pretrains on stl10's test split" in capsys.readouterr().err
    pretrain(two_steps("stl10", tmp_path / "held", "--data.train_split=test", "--train.knn_holdout=4", *NARROW))
    assert "the images that byol eval scores on" in capsys.readouterr().err  # the monitor's are train images
    pretrain(two_steps("stl10", tmp_path / "again", "--data.train_split=train+unlabeled", *NARROW))
    assert "test split" not in capsys.readouterr().err


@pytest.mark.parametrize("name, instead", [
    ("stl10", "(--data.train_split=train+unlabeled or unlabeled, as --config stl10 takes the first)"),
    ("cifar10", "(the default --data.train_split is train)")])
def test_the_test_split_s_note_points_stl10_at_its_unlabeled_images(capsys, name, instead):
    """A user test: STL-10 pretrained on test was told the default train_split is train, whose own note then
    says to pretrain on train+unlabeled; STL-10's advice is its unlabeled images."""
    note_train_split(load_config(name, ["--data.train_split=test"]))
    assert capsys.readouterr().err.endswith(f"has not seen {instead}\n")


@pytest.mark.parametrize("splits, train_split, said", [
    (("train", "val"), "val", True), (("train", "test"), "test", True), (("train", "val", "test"), "test", False),
    (("train", "val"), "train", False), (("val",), "val", False)])
def test_pretraining_a_folder_on_its_held_out_split_gets_a_note(tmp_path, capsys, splits, train_split, said):
    """A user test: a folder pretrained on ROOT/val, which its kNN monitor and eval score on, got no note, as
    CIFAR's test split did. Held out: ROOT/val, else ROOT/test, beside ROOT/train (byol.folder_splits.labeled_folders)."""
    from byol.reporting import note_train_split
    for split in splits:
        (tmp_path / split / "a").mkdir(parents=True)
    note_train_split(load_config("imagenet", [f"--data.root={tmp_path}", f"--data.train_split={train_split}"]))
    note = (f"note: this run pretrains on {tmp_path / train_split}, the held-out split the kNN monitor and byol "
            "eval score on, so their accuracies will not measure images the encoder has not seen (the default "
            "--data.train_split is train)\n")
    assert capsys.readouterr().err == (note if said else "")
