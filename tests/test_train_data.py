"""The data a run trains on and its kNN monitor's splits, from a config."""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from byol import train_data
from byol.config import load_config
from byol.precision import resolve_device
from test_train import fake_cifar10


def test_knn_holdout_monitors_on_training_images_kept_out_of_the_bank_and_never_reads_the_test_split(
        monkeypatch, cifar10_root):
    """train.knn_holdout=N: the monitor's queries are N training images, the same for every seed,
    disjoint from its memory bank, which holds all the others; the test split is not read at all."""
    from byol.data import DataError
    from byol.datasets import build_dataset

    read = []

    def recording(dataset, root, split, *args):
        read.append(split)
        return build_dataset(dataset, root, split, *args)

    monkeypatch.setattr(train_data, "build_dataset", recording)
    splits = {}
    for seed in (0, 1):
        config = load_config("cifar10", [f"--data.root={cifar10_root}", "--train.knn_holdout=5000",
                                         f"--train.seed={seed}"])
        splits[seed] = train_data._knn_splits(config, torch.device("cpu"), 0, 1, None)[:2]
    assert read == ["train", "train"]
    bank, queries = splits[0]
    assert (len(bank), len(queries)) == (45000, 5000)
    assert torch.equal(queries.indices, splits[1][1].indices)  # a fixed draw, whatever the seed
    assert queries.indices[:6].tolist() == [14, 22, 24, 28, 64, 76]  # and whatever the version: NumPy's fixed stream
    assert not set(bank.indices.tolist()) & set(queries.indices.tolist())
    train = build_dataset("cifar10", cifar10_root, "train", 32, False)
    for part in (bank, queries):  # each image is the training image its index says, with its label
        assert torch.equal(part.images, train.images[part.indices])
        assert torch.equal(part.labels, train.labels[part.indices])
    assert torch.bincount(queries.labels).min() > 400  # a draw over the split, not its last classes
    with pytest.raises(DataError, match="holding out 50,000 images leaves no memory bank: the train split has 50,000"):
        train_data.held_out(train, 50000)


def test_a_folder_decoded_below_the_training_size_is_said(tmp_path, capsys):
    """data.load_size below data.image_size scales every crop up: legal, but said."""
    from conftest import extract_jpegs
    root = extract_jpegs(tmp_path / "set", per_class=1)
    for load, said in ((16, True), (32, False), (40, False)):  # (32: not below; a mutation audit)
        config = load_config("cifar10", ["--data.dataset=folder", f"--data.root={root}", "--data.image_size=32",
                                         f"--data.load_size={load}", "--train.batch_size=2", "--data.workers=0"])
        train_data._training_split(config, torch.device("cpu"), 0, 1)
        err = capsys.readouterr().err
        assert ("note: data.load_size=16 is below data.image_size=32: each image is decoded to 16x16 and its crops "
                "are scaled up to 32x32" in err) == said, err
        assert ("is below data.image_size" in err) == said, err  # (32: the same size, not below)


@pytest.mark.parametrize("given, said", [
    ("--data.load_size=64", "note: data.load_size=64 is not used: cifar10 is read at its own 32x32 "
                            "(data.image_size=32 is the size of its views)"),
    ("--data.workers=8", "note: data.workers=8 is not used: cifar10 is held in memory and batched by index, "
                         "with no decoding processes")])
def test_folder_settings_given_for_cifar_or_stl10_are_said_not_to_be_used(tmp_path, capsys, given, said):
    """CIFAR and STL-10 are read at their own size, into memory: a load_size or a number of decoding
    processes given for them is said to be unused; without one, nothing is said."""
    import numpy as np
    (tmp_path / "cifar-10-batches-bin").mkdir()
    np.zeros((4, 3073), np.uint8).tofile(tmp_path / "cifar-10-batches-bin" / "test_batch.bin")
    for overrides, expected in (([given], True), ([], False)):
        config = load_config("cifar10", [f"--data.root={tmp_path}", "--data.train_split=test", "--train.batch_size=2",
                                         *overrides])
        train_data._training_split(config, torch.device("cpu"), 0, 1)
        err = capsys.readouterr().err
        assert (said in err) == expected and ("is not used" in err) == expected, err


def test_a_class_folder_named_as_the_train_split_is_said_to_be_read_as_a_class(tmp_path, capsys):
    """bus/ car/ train/: train/ is a class there (byol.folder_splits.split_folder), which a note says; the
    train/ of a train/ + val/ layout is the split, without a note."""
    from PIL import Image
    for path in ("plain/bus/0.png", "plain/train/0.png", "layout/train/bus/0.png", "layout/train/bus/1.png",
                 "layout/val/bus/0.png"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / path)
    for root, said in (("plain", True), ("layout", False)):
        config = load_config("cifar10", ["--data.dataset=folder", f"--data.root={tmp_path / root}",
                                         "--data.image_size=8", "--train.batch_size=2", "--data.workers=0"])
        train_data._training_split(config, torch.device("cpu"), 0, 1)
        err = capsys.readouterr().err
        assert (f"note: {tmp_path / root / 'train'} is read as a class of {tmp_path / root}, as its other sub-folders "
                "are, not as its train/ split: a split has val/ or test/ beside it" in err) == said, err


def test_a_train_split_that_is_not_there_is_refused_not_read_as_the_whole_folder(tmp_path):
    """A user test: --data.train_split=trian trained on all of ROOT, its val/ too (which the kNN
    monitor then scored), exit 0. A split given that is not there is an error naming the folders;
    the default, train, still falls back to the whole of a plain folder."""
    from byol.data import DataError
    from PIL import Image
    for path in ("train/bus/0.png", "train/bus/1.png", "val/bus/0.png", "plain/bus/0.png", "plain/car/0.png"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / path)

    def split(root, *more):
        config = load_config("cifar10", ["--data.dataset=folder", f"--data.root={root}", "--data.image_size=8",
                                         "--train.batch_size=2", "--data.workers=0", *more])
        return train_data._training_split(config, torch.device("cpu"), 0, 1)

    with pytest.raises(DataError, match=f"data.train_split=trian, but {tmp_path} has no folder trian \\(its "
                                        "sub-folders are plain, train, val\\); leave data.train_split at train "
                                        f"to train on {tmp_path / 'train'}$"):
        split(tmp_path, "--data.train_split=trian")
    # ROOT/train given as the root: not "to train on ROOT/train/train" (a user test)
    with pytest.raises(DataError, match=f"leave data.train_split at train to train on all of {tmp_path / 'train'}, "
                                        "which has no train folder$"):
        split(tmp_path / "train", "--data.train_split=val")
    assert split(tmp_path)[1] == 2 and split(tmp_path / "plain")[1] == 2  # ROOT/train; all of a plain folder


def test_under_torchrun_the_shares_of_a_folder_epoch_are_disjoint_and_no_file_is_trained_twice(tmp_path):
    """A mutation audit: a DistributedSampler that pads the shares to equal length (drop_last=False) survived
    every test; with 5 files and 2 processes one file was trained twice an epoch, and each process had a
    step more than the whole shares make."""
    from PIL import Image
    for i in range(5):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / f"{i}.png")
    config = load_config("cifar10", ["--data.dataset=folder", f"--data.root={tmp_path}", "--data.image_size=8",
                                     "--train.batch_size=2", "--data.workers=0"])
    shares = []
    for rank in range(2):
        batches = train_data._training_split(config, torch.device("cpu"), rank, 2)[0]
        batches.sampler.set_epoch(1)
        shares.append([int(i) for _, _, indices in batches for i in indices])
        assert len(batches) == 2
    assert len(shares[0]) == len(shares[1]) == 2 and not set(shares[0]) & set(shares[1])


def test_cpu_0_is_the_cpu(tmp_path, capsys):
    """``--train.device=cpu:0`` trains where ``cpu`` does, without a note that the set stays in host
    memory and each batch is copied to cpu:0 (a user test saw that one)."""
    assert resolve_device("cpu:0") == torch.device("cpu") == resolve_device("cpu")
    (tmp_path / "cifar-10-batches-bin").mkdir()
    np.zeros((4, 3073), np.uint8).tofile(tmp_path / "cifar-10-batches-bin" / "test_batch.bin")
    config = load_config("cifar10", [f"--data.root={tmp_path}", "--data.train_split=test", "--train.batch_size=2"])
    train_data._training_split(config, resolve_device("cpu:0"), 0, 1)
    assert "host memory" not in capsys.readouterr().err


def test_a_kNN_monitor_without_the_labeled_splits_says_how_to_turn_it_off(tmp_path):
    """A user test: pretraining on STL-10's unlabeled split alone, where the labeled ones are not, failed
    with "stl10 train files not found" and no word of the kNN monitor, which is what read them."""
    from byol.data import DataError
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    np.zeros((2, 3, 96, 96), np.uint8).tofile(folder / "unlabeled_X.bin")
    config = load_config("stl10", [f"--data.root={tmp_path}", "--data.train_split=unlabeled"])
    with pytest.raises(DataError, match=r"stl10 train files not found: .*; the kNN monitor scores the labeled train "
                                        r"and test splits: put them there, or turn the monitor off with "
                                        r"--train.knn_every=-1$"):
        train_data._knn_splits(config, torch.device("cpu"), 0, 1, None)


@pytest.mark.parametrize("overrides, reads", [
    ([], ["train", "test"]),
    (["--data.limit=100"], ["train", "test"]),  # the bank is the whole split, the training set its first 100
    (["--data.train_split=test"], ["test", "train", "test"]),  # trained on another split: the bank read on its own
])
def test_cifar_training_images_are_read_once_and_are_the_kNN_monitor_bank(tmp_path, monkeypatch, overrides, reads):
    """The cifar10-cpu run read CIFAR-10's train split twice at every start, for training and for the kNN
    monitor's bank, and held it twice (150 MB). It is read once, and the bank is the training images' tensor."""
    from byol.datasets import build_dataset
    read = []

    def recording(dataset, root, split, *args):
        read.append(split)
        return build_dataset(dataset, root, split, *args)

    monkeypatch.setattr(train_data, "build_dataset", recording)
    root = fake_cifar10(tmp_path / "data")
    config = load_config("cifar10-cpu", [f"--data.root={root}", "--train.batch_size=16"] + overrides)
    data = train_data.load_data(config, torch.device("cpu"), 0, 1)
    assert read == reads
    train = build_dataset("cifar10", root, "train", None, False)
    assert torch.equal(data.knn_train.images, train.images) and torch.equal(data.knn_train.labels, train.labels)
    assert data.knn_images == (320, 64) and data.size == (100 if overrides == ["--data.limit=100"] else
                                                          64 if overrides else 320)
    shared = data.knn_train.images.data_ptr() == data.batches.images.data_ptr()
    assert shared == ("--data.train_split=test" not in overrides)


def _train_and_val(tmp_path):
    """ROOT/train (10 classes, 3 images each) and ROOT/val (1 each), and the settings to train on ROOT/train."""
    from conftest import extract_jpegs
    extract_jpegs(tmp_path / "set" / "train", per_class=3)
    extract_jpegs(tmp_path / "set" / "val", per_class=1)
    return tmp_path / "set", ["--data.dataset=folder", f"--data.root={tmp_path / 'set' / 'train'}",
                              "--data.image_size=8", "--train.batch_size=2", "--data.workers=0"]


@pytest.mark.parametrize("limit", [None, 4])
def test_the_training_folder_is_scanned_once_and_is_the_kNN_monitor_bank(tmp_path, monkeypatch, limit):
    """A user test at ImageNet scale: ROOT/train (1.28 million files) was listed twice at every start,
    for training and for the kNN monitor's bank (4 s more on a local disk, minutes on a network file
    system). The bank is the training scan's, spread over every class, also where data.limit cuts the
    training set short."""
    from byol import folder as folder_module
    root, overrides = _train_and_val(tmp_path)
    listed, scan = [], folder_module.scan

    def listing(where, *args, **kwargs):
        listed.append(where)
        return scan(where, *args, **kwargs)

    monkeypatch.setattr(folder_module, "scan", listing)
    more = [f"--data.limit={limit}"] if limit else []
    data = train_data.load_data(load_config("cifar10", overrides + ["--train.knn_limit=10"] + more),
                                torch.device("cpu"), 0, 1)
    assert sorted(listed) == [str(root / "train"), str(root / "val")]
    assert data.size == (limit or 30) and data.knn_images == (10, 10)
    assert torch.bincount(data.knn_train.labels).tolist() == [1] * 10  # spread over all of ROOT/train


def test_a_val_folder_with_a_class_the_training_folder_lacks_turns_the_monitor_off_in_a_note(tmp_path, capsys):
    """The run trains on without a kNN monitor, saying why (coverage: the note was never said)."""
    import shutil
    root, overrides = _train_and_val(tmp_path)
    (root / "val" / "zebra").mkdir()
    shutil.copy(next((root / "val" / "cat").iterdir()), root / "val" / "zebra" / "z.jpg")
    data = train_data.load_data(load_config("cifar10", overrides), torch.device("cpu"), 0, 1)
    assert data.size == 30 and data.knn_train is None
    err = capsys.readouterr().err
    assert f"note: no kNN monitor: the class sub-folders of {root / 'train'} and {root / 'val'} differ (only in " \
        f"{root / 'val'}: zebra)" in err


def test_decoding_the_kNN_monitor_images_says_how_far_it_is_where_it_takes_long(tmp_path, monkeypatch, capsys):
    """A user test at ImageNet scale: the kNN monitor's 10,000 images of each split took some 2 minutes
    to decode on 2 cores, before the first step, with nothing said (as if the run hung)."""
    import re
    import byol.progress
    root, overrides = _train_and_val(tmp_path)
    config = load_config("cifar10", overrides)
    train_data.load_data(config, torch.device("cpu"), 0, 1)
    assert "note: decod" not in capsys.readouterr().err  # a short wait: nothing said
    monkeypatch.setattr(byol.progress, "SCAN_NOTES", (0.0, 3600.0))  # at once, then not again
    train_data.load_data(config, torch.device("cpu"), 0, 1)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: decod")]
    assert len(lines) == 4, lines
    for split, n, (so_far, done) in zip(("train", "val"), (30, 10), zip(lines[::2], lines[1::2])):
        where = re.escape(str(root / split))
        assert re.fullmatch(rf"note: decoding {n} images of {where} for the kNN monitor: {n} done, \d+ s", so_far)
        assert re.fullmatch(rf"note: decoded {n} images of {where} for the kNN monitor in \d+ s", done)


def test_a_batch_the_processes_cannot_share_equally_is_refused():
    """Under torchrun each process takes train.batch_size / processes images: a batch that does not divide
    is refused, not cut to a smaller global batch than the learning rate was scaled for (a mutation audit)."""
    from byol.config import ConfigError
    config = load_config("cifar10", ["--train.batch_size=10"])
    with pytest.raises(ConfigError, match=r"^train.batch_size=10 must be divisible by the 3 processes$"):
        train_data.load_data(config, torch.device("cpu"), 0, 3)


def test_the_notes_of_a_training_folder_the_knn_monitor_reads_too_are_said_once(tmp_path, capsys):
    """ROOT/train is both the training folder and the kNN monitor's bank: what its scan left out is said once
    (a mutation audit: saying it again for the bank survived)."""
    from conftest import extract_jpegs
    train = extract_jpegs(tmp_path / "set" / "train", per_class=1)
    extract_jpegs(tmp_path / "set" / "val", per_class=1)
    (train / "cat" / "phone.heic").write_bytes(b"")
    config = load_config("cifar10", ["--data.dataset=folder", f"--data.root={train}", "--data.image_size=32",
                                     "--train.batch_size=2", "--data.workers=0", "--train.knn_every=0"])
    train_data.load_data(config, torch.device("cpu"), 0, 1)
    err = capsys.readouterr().err
    assert err.count(f"note: 1 file (.heic 1) in {train} is left out") == 1, err


def _eight_images(root):
    """A folder of 8 tiny images; the settings that train on it in batches of 2, with ``overrides``."""
    from PIL import Image
    for i in range(8):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(root / f"{i}.png")
    return lambda *overrides: load_config("cifar10", ["--data.dataset=folder", f"--data.root={root}",
                                                      "--data.image_size=8", "--train.batch_size=2",
                                                      "--data.workers=0", *overrides])


def test_the_order_of_the_training_images_is_drawn_from_train_seed_in_memory_streamed_and_under_torchrun(tmp_path):
    """A mutation audit: the DistributedSampler's seed (a folder under torchrun) and TensorBatches' (a set held
    in memory) each left out survived every test: runs of any train.seed then took their images in one order.
    The same seed takes the same order; the others, each its own."""
    config = _eight_images(tmp_path)

    def order(seed, world, on_device):
        settings = config(f"--train.seed={seed}", f"--data.on_device={on_device}")
        batches = train_data._training_split(settings, torch.device("cpu"), 0, world)[0]
        getattr(batches, "sampler", batches).set_epoch(1)
        return tuple(int(i) for _, _, indices in batches for i in indices)

    for world, on_device in ((1, "false"), (2, "false"), (1, "true")):
        orders = [order(seed, world, on_device) for seed in range(4)]
        assert order(2, world, on_device) == orders[2]
        assert len(set(orders)) == 4, (world, on_device)


def test_each_epoch_of_the_training_data_takes_the_order_its_number_draws(tmp_path):
    """A mutation audit: TrainData.epoch setting every epoch as epoch 0 survived every test: each epoch then took
    the first one's batches, in memory and streamed alike. Epochs 0, 1 and 2 differ, and epoch 1 again is epoch 1."""
    config = _eight_images(tmp_path)
    for on_device in ("false", "true"):
        batches, n = train_data._training_split(config(f"--data.on_device={on_device}"), torch.device("cpu"), 0, 1)[:2]
        data = train_data.TrainData(batches, n)
        orders = [tuple(int(i) for _, _, indices in data.epoch(epoch) for i in indices) for epoch in (0, 1, 2, 1)]
        assert orders[1] == orders[3] and len(set(orders[:3])) == 3, on_device


def test_data_limit_trains_on_the_first_n_images_of_a_folder_streamed_or_in_memory(tmp_path):
    """A mutation audit: data.limit taking a folder's last N files survived every test."""
    config = _eight_images(tmp_path)
    for on_device in ("false", "true"):
        batches, n, folder, _ = train_data._training_split(config("--data.limit=3", f"--data.on_device={on_device}"),
                                                           torch.device("cpu"), 0, 1)
        assert n == len(folder) == 3 and [Path(folder.path(i)).name for i in range(3)] == ["0.png", "1.png", "2.png"]
    assert sorted(batches.images[:, 0, 0, 0].tolist()) == [0, 1, 2]  # held in memory: the first three's pixels


def test_the_steps_from_a_resumed_step_take_the_batches_the_uninterrupted_run_took_into_the_next_epochs():
    """A mutation audit: a resume in the middle of an epoch that started the next epoch at the same batch
    (skipping its first ones too) survived every test: the resume test's run ended within its first epoch."""
    from itertools import islice

    from byol.data import TensorBatches
    images = torch.arange(24, dtype=torch.uint8).view(24, 1, 1, 1).expand(24, 3, 2, 2)
    data = train_data.TrainData(TensorBatches(images, None, 4, generator=7), 24)
    whole = [b[:, 0, 0, 0].tolist() for b in islice(train_data.step_images(data, 0, 6, 4), 18)]
    for step in (1, 5, 6, 8):
        resumed = [b[:, 0, 0, 0].tolist() for b in islice(train_data.step_images(data, step, 6, 4), 18 - step)]
        assert resumed == whole[step:], step


def test_a_data_limit_above_the_training_split_s_size_is_said(tmp_path, capsys):
    """data.limit=100000 on 320 images trained on all 320 without a word (a run's image count alone said it);
    a note says so, for CIFAR's and a folder's images alike, and nothing at or under the size."""
    root = fake_cifar10(tmp_path / "data")
    settings = [f"--data.root={root}", "--train.batch_size=16", "--train.knn_every=-1"]
    for limit, said in ((100_000, True), (320, False), (100, False)):
        data = train_data.load_data(load_config("cifar10-cpu", settings + [f"--data.limit={limit}"]),
                                    torch.device("cpu"), 0, 1)
        assert data.size == min(limit, 320)
        note = f"note: data.limit={limit:,} is above the 320 images of the training split: all of them are used"
        assert (note in capsys.readouterr().err) is said, limit
    (tmp_path / "folder").mkdir()
    config = _eight_images(tmp_path / "folder")
    for on_device in ("false", "true"):
        train_data._training_split(config("--data.limit=9", f"--data.on_device={on_device}"), torch.device("cpu"), 0, 1)
        err = capsys.readouterr().err
        assert err.count("note: data.limit=9 is above the 8 images of the training split") == 1, err


def test_a_folder_decoded_into_memory_is_put_on_the_training_device_with_its_labels(tmp_path):
    """A mutation audit: the images, or their labels, left in host memory with data.on_device=true survived every
    test (which train on the CPU, where both are one place): each step then copied its batch over. The meta device
    stands in for a GPU."""
    config = _eight_images(tmp_path)
    batches = train_data._training_split(config("--data.on_device=true"), torch.device("meta"), 0, 1)[0]
    assert (batches.images.device.type, batches.labels.device.type) == ("meta", "meta")


def test_under_torchrun_the_shares_of_a_set_held_in_memory_are_disjoint(tmp_path):
    """A mutation audit: every process given rank 0's share of a set held in memory survived every test (the
    test above streams): each image was then trained on by every process, a global batch of world copies."""
    config = _eight_images(tmp_path)("--train.batch_size=4", "--data.on_device=true")
    shares = [[int(i) for _, _, indices in train_data._training_split(config, torch.device("cpu"), rank, 2)[0]
               for i in indices] for rank in range(2)]
    assert len(shares[0]) == len(shares[1]) == 4 and not set(shares[0]) & set(shares[1])


def test_train_knn_limit_takes_that_many_images_of_both_kNN_monitor_splits(tmp_path):
    """A mutation audit: train.knn_limit applied to the memory bank alone survived every test: the monitor then
    scored every test image at each evaluation."""
    root = fake_cifar10(tmp_path / "data")
    config = load_config("cifar10-cpu", [f"--data.root={root}", "--train.batch_size=16", "--train.knn_limit=50"])
    data = train_data.load_data(config, torch.device("cpu"), 0, 1)
    assert data.knn_images == (50, 50) and data.knn_query == "test"


def test_a_streamed_batch_short_of_undecodable_files_is_filled_with_its_own_images_in_turn():
    """A mutation audit: a short batch yielded as it is (each new shape a recompile), or filled with repeats of
    its first image only, survived every test."""
    images = torch.arange(3, dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 3, 2, 2)
    data = train_data.TrainData([(images, None, torch.arange(3))], 3)
    steps = list(itertools.islice(train_data.step_images(data, 0, 1, 5), 2))
    assert [b[:, 0, 0, 0].tolist() for b in steps] == [[0, 1, 2, 0, 1]] * 2
