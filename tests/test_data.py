"""Tests for byol.data and byol.datasets: CIFAR / STL-10 readers, the image folder with bad files, TensorBatches."""

import contextlib
import errno
import io
import itertools
import os
import pickle
import re
import shutil
import signal
import struct
import sys
import tarfile
import threading
import time
import urllib.error
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from byol.data import DataError, ImageSet, TensorBatches, data_home
from byol.decoding_processes import _shared_memory_full
from byol.datasets import build_dataset, load_cifar, load_stl10
from byol.folder import ImageFolder, Skipped, class_names, escape_name, unescape_name
from byol.folder_splits import first_names, labeled_folders
from byol.loaders import folder_loader, load_folder_share, load_folder_tensor, start_pass_at
from byol.images import decode_image, storage_failure
from byol.scan import PackedNames
from conftest import CIFAR10_JPG_TAR as JPG_TAR, SHARED_DATA as SHARED, extract_jpegs

CIFAR_BIN = SHARED / "cifar10" / "cifar-10-batches-bin"
needs_cifar = pytest.mark.skipif(not CIFAR_BIN.is_dir(), reason=f"real CIFAR-10 not found in {CIFAR_BIN}")
needs_jpg = pytest.mark.skipif(not JPG_TAR.is_file(), reason=f"CIFAR-10 JPEG set not found at {JPG_TAR}")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def cifar_train():
    return load_cifar(SHARED / "cifar10", "cifar10", "train")


@pytest.fixture(scope="module")
def cifar_test():
    return load_cifar(SHARED / "cifar10", "cifar10", "test")


# ----------------------------------------------------------------------------------- CIFAR

@needs_cifar
def test_cifar10_binary_real(cifar_train, cifar_test):
    for s, n in ((cifar_train, 50000), (cifar_test, 10000)):
        assert s.images.shape == (n, 3, 32, 32) and s.images.dtype == torch.uint8
        assert s.labels.shape == (n,) and s.labels.dtype == torch.int64
        assert s.labels.bincount().tolist() == [n // 10] * 10
        assert s.classes == CIFAR10_CLASSES
    raw = np.fromfile(CIFAR_BIN / "data_batch_1.bin", np.uint8, count=2 * 3073)
    for i in range(2):
        record = raw[i * 3073:(i + 1) * 3073]
        assert cifar_train.labels[i] == record[0]
        assert np.array_equal(cifar_train.images[i].numpy(), record[1:].reshape(3, 32, 32))
    last = np.fromfile(CIFAR_BIN / "test_batch.bin", np.uint8)[-3073:]
    assert np.array_equal(cifar_test.images[-1].numpy(), last[1:].reshape(3, 32, 32))
    # root may also be the layout folder itself
    again = load_cifar(CIFAR_BIN, "cifar10", "test")
    assert torch.equal(again.images, cifar_test.images) and torch.equal(again.labels, cifar_test.labels)


class _Python2Pickler(pickle._Pickler):
    """Writes bytes and str as Python 2's str (SHORT_BINSTRING, BINSTRING), as the official files' cPickle
    did, keys and the arrays' data alike (Python 3's protocol 2 writes bytes through _codecs.encode)."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_str(self, obj):
        b = obj.encode("latin1") if isinstance(obj, str) else obj
        self.write(pickle.SHORT_BINSTRING + bytes([len(b)]) if len(b) < 256 else
                   pickle.BINSTRING + len(b).to_bytes(4, "little"))
        self.write(b)
        self.memoize(obj)

    dispatch[bytes] = dispatch[str] = save_python2_str


def _write_pickle(path: Path, obj) -> None:
    """``obj`` pickled as the official CIFAR python files are: protocol 2, by Python 2."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = io.BytesIO()
    _Python2Pickler(f, protocol=2).dump(obj)
    assert b"_codecs" not in f.getvalue()
    path.write_bytes(f.getvalue())


@needs_cifar
def test_cifar10_pickle_layout_matches_binary(tmp_path, cifar_train, cifar_test):
    folder = tmp_path / "cifar-10-batches-py"
    rows = []
    for b in range(5):
        idx = np.arange(b * 10000, b * 10000 + 4)
        rows.append(idx)
        _write_pickle(folder / f"data_batch_{b + 1}", {b"data": cifar_train.images[idx].numpy().reshape(4, -1),
                                                        b"labels": cifar_train.labels[idx].tolist()})
    _write_pickle(folder / "test_batch", {b"data": cifar_test.images[:3].numpy().reshape(3, -1),
                                          b"labels": cifar_test.labels[:3].tolist()})
    _write_pickle(folder / "batches.meta", {b"label_names": [c.encode() for c in CIFAR10_CLASSES]})
    rows = np.concatenate(rows)
    train = load_cifar(tmp_path, "cifar10", "train")
    assert torch.equal(train.images, cifar_train.images[rows])
    assert torch.equal(train.labels, cifar_train.labels[rows])
    assert train.classes == CIFAR10_CLASSES
    test = load_cifar(folder, "cifar10", "test")
    assert torch.equal(test.images, cifar_test.images[:3]) and torch.equal(test.labels, cifar_test.labels[:3])


def _synthetic_cifar100(n, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    coarse = rng.integers(0, 20, n).astype(np.uint8)
    fine = rng.integers(0, 100, n).astype(np.uint8)
    return images, coarse, fine


def test_cifar100_binary_and_pickle(tmp_path):
    names = [f"class{i:02d}" for i in range(100)]
    data = {"train": _synthetic_cifar100(7, seed=0), "test": _synthetic_cifar100(3, seed=1)}
    binary, python = tmp_path / "bin" / "cifar-100-binary", tmp_path / "py" / "cifar-100-python"
    binary.mkdir(parents=True)
    (binary / "fine_label_names.txt").write_text("\n".join(names) + "\n")
    for split, (images, coarse, fine) in data.items():
        records = np.concatenate([coarse[:, None], fine[:, None], images.reshape(len(images), -1)], axis=1)
        records.tofile(binary / f"{split}.bin")
        _write_pickle(python / split, {b"data": images.reshape(len(images), -1),
                                       b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist()})
    _write_pickle(python / "meta", {b"fine_label_names": [n.encode() for n in names]})
    for root in (tmp_path / "bin", tmp_path / "py"):
        for split, (images, coarse, fine) in data.items():
            s = load_cifar(root, "cifar100", split)
            assert np.array_equal(s.images.numpy(), images)
            assert s.labels.tolist() == fine.tolist()  # fine, not coarse
            assert s.classes == names
    # A file of the right size holding other bytes (labels of 100 and more): refused, not trained on
    records = np.full((2, 2 + 3 * 32 * 32), 100, np.uint8)  # 100, the first label past 0..99 (a mutation audit)
    records.tofile(binary / "test.bin")
    with pytest.raises(DataError, match=r"cifar100 test files in .* have labels outside 0..99: they are damaged"):
        load_cifar(tmp_path / "bin", "cifar100", "test")


def test_pickle_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return os.mkdir, (str(tmp_path / "pwned"),)

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="refusing"):
        load_cifar(tmp_path, "cifar10", "test")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("data, says", [
    (np.zeros((2, 32, 32, 3), np.uint8), r"shape \(2, 32, 32, 3\), not CIFAR's \(N, 3072\) rows"),  # torchvision's .data
    (np.full((2, 3072), 0.5, np.float32), "float32 data, not CIFAR's whole numbers 0..255"),
    (np.full((2, 3072), 256, np.int64), "int64 data, not CIFAR's whole numbers 0..255"),
    (np.zeros((2, 1024), np.uint8), r"shape \(2, 1024\), not CIFAR's \(N, 3072\) rows"),  # one gray plane an image
    (np.arange(2 * 3072).reshape(2, 3072) % 256 - 1, "int64 data, not CIFAR's whole numbers"),  # -1: not 255
])
def test_python_layout_data_not_in_cifars_rows_of_bytes_is_refused_not_read_scrambled(tmp_path, data, says):
    _write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": data, b"labels": [0, 1]})
    with pytest.raises(DataError, match=says):
        load_cifar(tmp_path, "cifar10", "test")
    rows = np.arange(2 * 3072).reshape(2, 3072) % 256  # int64 rows of 0..255, as a list-built file has: read
    _write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": rows, b"labels": [0, 1]})
    assert np.array_equal(load_cifar(tmp_path, "cifar10", "test").images.numpy(), rows.reshape(2, 3, 32, 32))


def test_python_layout_labels_that_do_not_match_the_images_are_refused(tmp_path):
    """A mutation audit: 2 images with 3 labels loaded as they were, the labels out of line with the images,
    survived every test."""
    _write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": np.zeros((2, 3072), np.uint8),
                                                                    b"labels": [0, 1, 2]})
    with pytest.raises(DataError, match="test_batch holds 2 images but 3 labels"):
        load_cifar(tmp_path, "cifar10", "test")


def test_python_layout_labels_out_of_line_with_one_file_s_images_are_refused(tmp_path):
    """A label too many in one file and one too few in the next add up: the labels of every image after the
    first file's were one image out of line, without a word."""
    for i in range(1, 6):
        labels = [i] * {1: 3, 2: 1}.get(i, 2)  # 3 labels in the first file, 1 in the second: 10 in all
        _write_pickle(tmp_path / "cifar-10-batches-py" / f"data_batch_{i}",
                      {b"data": np.full((2, 3072), i, np.uint8), b"labels": labels})
    with pytest.raises(DataError, match="data_batch_1 holds 2 images but 3 labels"):
        load_cifar(tmp_path, "cifar10", "train")


def test_python_layout_labels_below_0_or_not_numbers_are_refused(tmp_path):
    """A mutation audit: a label of -1 (byol's "unlabeled") loaded as it was, and labels written as class names
    were a ValueError's traceback, both without a failing test; labels of None or a dict were a TypeError's."""
    for labels, says in (([-1, 0], "have labels outside 0..9: they are damaged"),
                         (["cat", "dog"], r"lack data or labels \(invalid literal"),
                         (None, r"lack data or labels \(int\(\) argument"), ({0: 1}, "lack data or labels")):
        _write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": np.zeros((2, 3072), np.uint8),
                                                                        b"labels": labels})
        with pytest.raises(DataError, match=says):
            load_cifar(tmp_path, "cifar10", "test")


def test_class_names_of_a_python_3_pickle_are_its_bytes_decoded(tmp_path):
    """The official meta files are Python 2's (names read as str); one written by Python 3 holds bytes, which
    were named "b'airplane'" in embed's classes file had they gone through str() (a mutation audit)."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 9]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [c.encode() for c in CIFAR10_CLASSES]}))
    assert load_cifar(tmp_path, "cifar10", "test").classes == CIFAR10_CLASSES


def test_a_python_layout_file_without_its_data_or_labels_is_refused(tmp_path):
    """A file of the right name but another content (coverage: the refusal was never run)."""
    for entry, missing in (({b"labels": [0, 1]}, "data"), ({b"data": np.zeros((2, 3072), np.uint8)}, "labels")):
        _write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", entry)
        with pytest.raises(DataError, match=f"the cifar10 files in .* lack data or labels \\('{missing}'\\); "
                                            "download them again"):
            load_cifar(tmp_path, "cifar10", "test")


def test_truncated_binary_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(bytes(3073 * 2 + 5))
    with pytest.raises(DataError, match="multiple of 3073-byte records"):
        load_cifar(tmp_path, "cifar10", "test")
    # An empty file (a copy that failed): one sentence too (a mutation audit: np.memmap's ValueError otherwise)
    (folder / "test_batch.bin").write_bytes(b"")
    with pytest.raises(DataError, match="its size, 0 bytes, is not a multiple of 3073-byte records"):
        load_cifar(tmp_path, "cifar10", "test")


def _cifar100_binary(folder: Path, n: int) -> np.ndarray:
    """A CIFAR-100 binary train.bin and test.bin of ``n`` records each (coarse, fine, 3072 pixels); the records."""
    images, coarse, fine = _synthetic_cifar100(n, seed=0)
    records = np.concatenate([coarse[:, None], fine[:, None], images.reshape(n, -1)], axis=1)
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        records.tofile(folder / f"{split}.bin")
    return records


def test_a_file_cut_short_at_a_whole_image_is_said_not_read_as_a_smaller_set(tmp_path, monkeypatch, capsys):
    """A user test: a CIFAR-100 train.bin cut after 49 of its 50 records (a copy or an unpacking stopped at a
    record's end) trained on 49 images without a word; only a cut inside a record was an error. The files'
    sizes are compared with the official ones' (here made 50 a file, as writing 50,000 records would take long)."""
    import byol.datasets
    for split in ("train", "test"):
        monkeypatch.setitem(byol.datasets.OFFICIAL_SIZE, ("cifar100", split), 50)
    monkeypatch.setitem(byol.datasets.OFFICIAL_SIZE, ("cifar10", "train"), 5 * 10)
    monkeypatch.setitem(byol.datasets.OFFICIAL_SIZE, ("stl10", "unlabeled"), 30)
    folder = tmp_path / "cifar-100-binary"
    records = _cifar100_binary(folder, 50)
    assert len(load_cifar(tmp_path, "cifar100", "train")) == 50 and capsys.readouterr().err == ""  # whole: quiet
    records[:49].tofile(folder / "train.bin")
    for _ in range(2):  # a run reads its training split twice (to train, and as the kNN bank): said once
        assert len(load_cifar(tmp_path, "cifar100", "train")) == 49
    err = capsys.readouterr().err
    assert err.count("note: ") == 1 and f"note: in {folder}, train.bin holds 49 images, where the official cifar100 " \
        "train file holds 50: a file cut short at a whole image" in err, err
    assert len(load_cifar(tmp_path, "cifar100", "test")) == 50 and capsys.readouterr().err == ""
    python = tmp_path / "cifar-10-batches-py"  # the python layout: the file that is short is named
    for b in range(1, 6):
        _write_pickle(python / f"data_batch_{b}", {b"data": np.zeros((9 if b == 3 else 10, 3072), np.uint8),
                                                   b"labels": [0] * (9 if b == 3 else 10)})
    assert len(load_cifar(tmp_path, "cifar10", "train")) == 49
    assert f"note: in {python}, data_batch_3 holds 9 images, where the official cifar10 train files hold 10 each: " \
        "a file cut short at a whole image" in capsys.readouterr().err
    stl = tmp_path / "stl10_binary"
    stl.mkdir()
    np.zeros((29, 3, 96, 96), np.uint8).tofile(stl / "unlabeled_X.bin")
    assert len(load_stl10(tmp_path, "unlabeled")) == 29
    assert f"note: in {stl}, unlabeled_X.bin holds 29 images, where the official stl10 unlabeled file holds 30" \
        in capsys.readouterr().err
    np.zeros((31, 3, 96, 96), np.uint8).tofile(stl / "unlabeled_X.bin")  # more: not cut short (a review)
    assert len(load_stl10(tmp_path, "unlabeled")) == 31
    assert f"note: in {stl}, unlabeled_X.bin holds 31 images, where the official stl10 unlabeled file holds 30: " \
        "these are not the official files\n" in capsys.readouterr().err


def test_class_names_that_are_not_the_data_sets_are_refused_not_written_beside_its_labels(tmp_path):
    """A user test: CIFAR-100's 20 coarse names in fine_label_names.txt, CIFAR-10's batches.meta as
    CIFAR-100's meta, an STL-10 class_names.txt of 9 lines: all loaded, and embed wrote a classes file
    whose line i was not label i's name (or none, unsaid)."""
    folder = tmp_path / "bin" / "cifar-100-binary"
    _cifar100_binary(folder, 3)
    assert load_cifar(folder, "cifar100", "test").classes is None  # no names file: no names
    (folder / "fine_label_names.txt").write_text("\n".join(f"coarse{i}" for i in range(20)) + "\n")
    with pytest.raises(DataError, match=r"fine_label_names.txt names 20 classes, not cifar100's 100: it is not"):
        load_cifar(folder, "cifar100", "test")
    python = tmp_path / "py" / "cifar-100-python"
    _write_pickle(python / "test", {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 99],
                                    b"coarse_labels": [0, 19]})
    _write_pickle(python / "meta", {b"label_names": [b"airplane"] * 10})  # CIFAR-10's batches.meta
    with pytest.raises(DataError, match=r"cifar-100-python/meta has no fine_label_names: it is not cifar100's meta"):
        load_cifar(python, "cifar100", "test")
    _write_pickle(python / "meta", {b"fine_label_names": [b"apple"] * 99})
    with pytest.raises(DataError, match="meta names 99 classes, not cifar100's 100"):
        load_cifar(python, "cifar100", "test")
    stl = tmp_path / "stl10_binary"
    stl.mkdir()
    np.zeros((2, 3, 96, 96), np.uint8).tofile(stl / "train_X.bin")
    np.array([1, 10], np.uint8).tofile(stl / "train_y.bin")
    (stl / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(9)) + "\n")
    with pytest.raises(DataError, match="class_names.txt names 9 classes, not stl10's 10"):
        load_stl10(tmp_path, "train")


def test_class_names_that_are_not_utf8_text_are_one_sentence_not_a_traceback(tmp_path):
    """A user test: an STL-10 class_names.txt saved in Latin-1 ("airpl\xe9ne") was a UnicodeDecodeError's
    traceback, as were CIFAR's names files and a python-layout meta of such bytes."""
    stl = tmp_path / "stl10_binary"
    stl.mkdir()
    np.zeros((2, 3, 96, 96), np.uint8).tofile(stl / "train_X.bin")
    np.array([1, 10], np.uint8).tofile(stl / "train_y.bin")
    (stl / "class_names.txt").write_bytes(b"airpl\xe9ne\n" + b"".join(b"c%d\n" % i for i in range(9)))
    with pytest.raises(DataError, match=r"class_names.txt cannot be read as a list of class names .*as UTF-8"):
        load_stl10(tmp_path, "train")
    folder = tmp_path / "cifar-100-binary"
    _cifar100_binary(folder, 3)
    (folder / "fine_label_names.txt").write_bytes((stl / "class_names.txt").read_bytes() * 10)
    with pytest.raises(DataError, match=r"fine_label_names.txt cannot be read as a list of class names"):
        load_cifar(tmp_path, "cifar100", "test")
    python = tmp_path / "py" / "cifar-100-python"
    _write_pickle(python / "test", {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 99]})
    with open(python / "meta", "wb") as f:  # a Python 3 pickle: its names bytes, not Python 2's str
        pickle.dump({b"fine_label_names": [b"airpl\xe9ne"] * 100}, f)
    with pytest.raises(DataError, match=r"cifar-100-python/meta has fine_label_names that are not UTF-8 text"):
        load_cifar(python, "cifar100", "test")


# ----------------------------------------------------------------------------------- STL-10

def test_stl10_transpose_labels_and_splits(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    n = 3
    y, x = np.meshgrid(np.arange(96), np.arange(96), indexing="ij")
    truth = np.zeros((n, 3, 96, 96), np.uint8)  # image i: red = row, green = column, blue = 10 i
    truth[:, 0], truth[:, 1] = y, x
    truth[:, 2] = (10 * np.arange(n))[:, None, None]
    truth.transpose(0, 1, 3, 2).tofile(folder / "train_X.bin")  # column-major planes, as STL-10 stores them
    np.array([1, 10, 4], np.uint8).tofile(folder / "train_y.bin")
    truth[:2][:, :, ::-1].transpose(0, 1, 3, 2).tofile(folder / "unlabeled_X.bin")
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")

    train = load_stl10(tmp_path, "train")
    assert train.images.shape == (n, 3, 96, 96) and train.images.dtype == torch.uint8
    assert np.array_equal(train.images.numpy(), truth)
    assert train.images[1, 0, 5, 90] == 5 and train.images[1, 1, 5, 90] == 90
    assert train.labels.tolist() == [0, 9, 3] and train.classes == [f"c{i}" for i in range(10)]
    unlabeled = load_stl10(folder, "unlabeled")
    assert np.array_equal(unlabeled.images.numpy(), truth[:2][:, :, ::-1])
    assert unlabeled.labels.tolist() == [-1, -1]
    both = load_stl10(tmp_path, "train+unlabeled")
    assert torch.equal(both.images, torch.cat([train.images, unlabeled.images]))
    assert both.labels.tolist() == [0, 9, 3, -1, -1]
    with pytest.raises(DataError, match="test_X.bin"):
        load_stl10(tmp_path, "test")


def test_a_cifar10_class_names_file_of_cifar100_s_100_names_is_refused(tmp_path):
    """A mutation audit: a check that refused too few names only (not too many) survived every test."""
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    np.zeros((2, 3073), np.uint8).tofile(folder / "test_batch.bin")
    (folder / "batches.meta.txt").write_text("\n".join(f"fine{i}" for i in range(100)) + "\n")
    with pytest.raises(DataError, match="batches.meta.txt names 100 classes, not cifar10's 10"):
        load_cifar(tmp_path, "cifar10", "test")


def test_stl10_images_and_labels_of_different_counts_name_both_files(tmp_path):
    """A user test: train_X.bin cut after 19 of 20 images was said as "train_y.bin does not hold 19
    labels in 1..10": the file named was the whole one, the labels were in 1..10."""
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    np.zeros((2, 3, 96, 96), np.uint8).tofile(folder / "train_X.bin")
    np.array([1, 2, 3], np.uint8).tofile(folder / "train_y.bin")
    with pytest.raises(DataError, match=r"train_X.bin holds 2 images but train_y.bin 3 labels: one of them is cut"):
        load_stl10(tmp_path, "train")
    for y in ([0, 2], [1, 11]):  # 0..9, as some conversions write them; 11, past the last class
        np.array(y, np.uint8).tofile(folder / "train_y.bin")
        with pytest.raises(DataError, match=r"train_y.bin holds labels outside 1..10, not STL-10's"):
            load_stl10(tmp_path, "train")


# ----------------------------------------------------------------------------------- missing / download

def test_missing_files_name_the_ones_lacking_beside_those_there(tmp_path):
    """A user test: stl10_binary without unlabeled_X.bin, pretraining on train+unlabeled, was said only as
    the three files expected (the two that were there among them); so was a CIFAR folder without one batch."""
    stl = tmp_path / "stl10_binary"
    stl.mkdir()
    np.zeros((2, 3, 96, 96), np.uint8).tofile(stl / "train_X.bin")
    np.array([1, 2], np.uint8).tofile(stl / "train_y.bin")
    with pytest.raises(DataError, match=re.escape(f"in {tmp_path} ({stl} lacks unlabeled_X.bin); put the files")):
        load_stl10(tmp_path, "train+unlabeled")
    np.zeros((2, 3, 96, 96), np.uint8).tofile(stl / "test_X.bin")
    with pytest.raises(DataError, match=re.escape(f"in {stl} ({stl} lacks test_y.bin); put the files")):
        load_stl10(stl, "test")  # the layout folder itself as the root
    cifar = tmp_path / "cifar-10-batches-bin"
    cifar.mkdir()
    for i in (1, 2, 4, 5):
        np.zeros((1, 3073), np.uint8).tofile(cifar / f"data_batch_{i}.bin")
    with pytest.raises(DataError, match=re.escape(f"({cifar} lacks data_batch_3.bin)")):
        load_cifar(tmp_path, "cifar10", "train")
    python = tmp_path / "py" / "cifar-10-batches-py"  # the python layout, where no binary file is there
    for i in (1, 2, 4, 5):
        _write_pickle(python / f"data_batch_{i}", {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]})
    with pytest.raises(DataError, match=re.escape(f"({python} lacks data_batch_3)")):
        load_cifar(tmp_path / "py", "cifar10", "train")
    with pytest.raises(DataError) as e:  # none of a split's files there: the files expected say it
        load_cifar(tmp_path, "cifar10", "test")
    assert "lacks" not in str(e.value)


def test_missing_files_say_what_and_where(tmp_path):
    with pytest.raises(DataError) as e:
        load_cifar(tmp_path, "cifar10", "train")
    msg = str(e.value)
    assert "cifar-10-batches-bin/" in msg and "data_batch_5.bin" in msg and "cifar-10-batches-py/" in msg
    assert str(tmp_path) in msg and "--download" in msg
    with pytest.raises(DataError, match="cifar-100-binary/test.bin"):
        load_cifar(tmp_path, "cifar100", "test")
    with pytest.raises(DataError, match=r"stl10_binary/\{unlabeled_X.bin\}|stl10_binary/unlabeled_X.bin"):
        load_stl10(tmp_path, "unlabeled")
    with pytest.raises(DataError, match="choose train or test"):
        load_cifar(tmp_path, "cifar10", "val")


def test_files_not_found_from_inside_another_data_set_s_folder_say_so(tmp_path, monkeypatch):
    """A review: data.root=. from inside cifar-100-binary said only the files expected (Path('.').name is '')."""
    _cifar100_binary(tmp_path / "cifar-100-binary", 2)
    monkeypatch.chdir(tmp_path / "cifar-100-binary")
    with pytest.raises(DataError, match="it holds cifar-100-binary, cifar100's files: for them, set "
                                        "--data.dataset=cifar100$"):
        load_cifar(".", "cifar10", "test")


def test_files_not_found_say_what_is_there_instead(tmp_path):
    """A user test: each of these was said only as the files expected where, and for another data set's
    files with advice (--download) that would fetch the wrong one."""
    with pytest.raises(DataError, match=f"in {tmp_path / 'nope'}; {tmp_path / 'nope'} does not exist: check the path"):
        load_cifar(tmp_path / "nope", "cifar10", "train")
    _cifar100_binary(tmp_path / "cifar-100-binary", 2)
    with pytest.raises(DataError, match="it holds cifar-100-binary, cifar100's files: for them, set "
                                        "--data.dataset=cifar100$"):  # the layout itself
        load_cifar(tmp_path / "cifar-100-binary", "cifar10", "test")
    # a folder of data sets (a review): cifar10's not among them yet, for which --download is the advice
    for load, name in ((lambda: load_cifar(tmp_path, "cifar10", "test"), "cifar10"),
                       (lambda: load_stl10(tmp_path, "train"), "stl10")):
        with pytest.raises(DataError, match=r"it holds cifar-100-binary, cifar100's files \(for them, set "
                                            rf"--data.dataset=cifar100\); for {name}'s, put them there, or pass "
                                            r"--download when online$"):
            load()
    (tmp_path / "stl10_binary").mkdir()  # its own layout beside it, a file missing: not another data set's
    with pytest.raises(DataError, match=r"stl10_binary/\{train_X.bin, train_y.bin\} in \S+; put the files there"):
        load_stl10(tmp_path, "train")
    (tmp_path / "cifar-100-binary" / "test.bin").unlink()  # its own files, one missing: nothing else to say
    with pytest.raises(DataError, match=r"cifar-100-python/test \(python\) in \S+; put the files there, or pass"):
        load_cifar(tmp_path, "cifar100", "test")
    deeper = tmp_path / "unpacked" / "cifar10"  # (a review: a folder of data sets, or a layout in its own name)
    _cifar100_binary(deeper / "cifar-100-binary", 2)
    (deeper / "cifar-100-binary").rename(deeper / "cifar-10-batches-bin")
    with pytest.raises(DataError, match=rf"in {deeper.parent}; cifar-10-batches-bin is one level further down, in "
                                        rf"{deeper}: set --data.root={deeper}$"):
        load_cifar(deeper.parent, "cifar10", "train")
    (tmp_path / "stl10_binary" / "stl10_binary").mkdir()
    with pytest.raises(DataError, match=rf"stl10_binary is one level further down, in {tmp_path / 'stl10_binary'}: "
                                        rf"set --data.root={tmp_path / 'stl10_binary'}$"):
        load_stl10(tmp_path, "train")
    archive = tmp_path / "packed"
    archive.mkdir()
    (archive / "stl10_binary.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(DataError, match=r"it holds stl10_binary.tar.gz, not unpacked: unpack it there \(tar -xf "
                                        r"stl10_binary.tar.gz, in \S+packed\)"):
        load_stl10(archive, "unlabeled")
    with pytest.raises(DataError, match=r"in \S+packed; put the files there, or pass --download"):
        load_cifar(archive, "cifar10", "train")  # another data set's archive: no advice to unpack it
    (archive / "stl10_binary.tar.gz").rename(archive / "cifar-10-python (1).tar")  # saved unzipped, a copy
    with pytest.raises(DataError, match=r"it holds cifar-10-python \(1\).tar, not unpacked: unpack it there "
                                        r"\(tar -xf 'cifar-10-python \(1\).tar', in "):  # -xzf fails on it
        load_cifar(archive, "cifar10", "train")


def test_files_not_found_in_a_file_say_it_is_one(tmp_path):
    """A user review: data.root naming the archive itself, or one of the files, was told to put the files there
    (with --download: 'could not download ... into' the file, 'File exists')."""
    _cifar100_binary(tmp_path / "cifar-100-binary", 2)
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"\x1f\x8b")
    for download in (False, True):
        with pytest.raises(DataError, match=r"; it is an archive, not a folder: unpack it \(tar -xf cifar-100-python"
                                            rf".tar.gz, in {tmp_path}\) and set --data.root={tmp_path}$"):
            load_cifar(tmp_path / "cifar-100-python.tar.gz", "cifar100", "train", download)
        with pytest.raises(DataError, match="; it is a file, not a folder: set --data.root to the folder that holds "
                                            "the data set's files$"):
            load_stl10(tmp_path / "cifar-100-binary" / "train.bin", "train", download)


def test_download_offline_is_a_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    calls = []

    def offline(url, download_root, **kwargs):
        calls.append((url, download_root))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvu, "download_and_extract_archive", offline)
    with pytest.raises(DataError) as e:
        load_cifar(tmp_path / "data", "cifar10", "train", download=True)
    msg = str(e.value)
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", str(tmp_path / "data"))]
    assert "could not download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert "name resolution" in msg and "Traceback" not in msg and "\n" not in msg
    assert not (tmp_path / "data").exists()  # the folder made for the download is gone with it
    with pytest.raises(DataError, match="stl10_binary.tar.gz"):
        load_stl10(tmp_path, "train", download=True)
    assert tmp_path.is_dir()  # one that was there stays

    def corrupted(url, download_root, **kwargs):  # torchvision's error for an archive whose md5 differs
        raise RuntimeError("File not found or corrupted.")

    monkeypatch.setattr(tvu, "download_and_extract_archive", corrupted)
    with pytest.raises(DataError, match=r"could not download \S+cifar-10-python.tar.gz into \S+ \(File not found "):
        load_cifar(tmp_path / "data", "cifar10", "test", download=True)


def test_download_then_load(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    def fake_download(url, download_root, **kwargs):  # what extracting the official archive leaves
        folder = Path(download_root) / "cifar-10-batches-py"
        _write_pickle(folder / "test_batch", {b"data": np.full((2, 3072), 7, np.uint8), b"labels": [3, 4]})

    monkeypatch.setattr(tvu, "download_and_extract_archive", fake_download)
    s = load_cifar(tmp_path, "cifar10", "test", download=True)
    assert s.labels.tolist() == [3, 4] and int(s.images.sum()) == 7 * 2 * 3072 and s.classes is None


# ----------------------------------------------------------------------------------- image folder

def _png_header(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels and holds none: a decompression bomb as far as the header goes."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b"")


def _odd_images(root: Path) -> tuple[dict, dict]:
    """Write odd-mode images and bad files into class folders; return ({name: path}, {name: path})."""
    odd, bad = {}, {}

    def put(table, cls, name, image=None, data=None, **save):
        path = root / cls / name
        if image is not None:
            image.save(path, **save)
        else:
            path.write_bytes(data)
        table[name] = str(path)

    put(odd, "airplane", "gray.png", Image.new("L", (40, 40), 100))
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (20, 0, 40, 40))
    put(odd, "bird", "palette.png", palette, transparency=0)  # index 0 (red) transparent
    put(odd, "cat", "rgba.png", Image.new("RGBA", (40, 40), (200, 100, 50, 128)))
    put(odd, "deer", "la.png", Image.new("LA", (40, 40), (200, 64)))
    put(odd, "dog", "cmyk.tif", Image.new("CMYK", (40, 40), (0, 255, 0, 0)))
    gray16 = np.zeros((40, 40), np.uint16)
    gray16[:, :20], gray16[:, 20:] = 65535, 32896
    put(odd, "frog", "gray16.png", Image.fromarray(gray16))
    wide = Image.new("RGB", (80, 40), (255, 0, 0))
    wide.paste((0, 0, 255), (40, 0, 80, 40))  # left red, right blue; EXIF: rotate 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    put(odd, "horse", "rotated.jpg", wide, exif=exif, quality=95)

    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noise.save(buf, "JPEG")
    put(bad, "ship", "truncated.jpg", data=buf.getvalue()[: len(buf.getvalue()) // 2])
    garbage = np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes()
    put(bad, "ship", "corrupt.jpg", data=b"\xff\xd8\xff\xe0" + garbage)  # a JPEG marker, then noise
    put(bad, "ship", "text.jpg", data=b"this is not an image\n")
    put(bad, "truck", "empty.png", data=b"")
    put(bad, "truck", "bomb.png", data=_png_header(20000, 20000))  # > 2 x MAX_IMAGE_PIXELS: an error
    put(bad, "truck", "bomb_warning.png", data=_png_header(10000, 10000))  # > MAX_IMAGE_PIXELS, no pixels
    for name in ("notes.txt", "README", ".hidden.png"):  # not images or hidden: never listed
        Image.new("RGB", (8, 8)).save(root / "truck" / name, format="PNG")
    return odd, bad


@pytest.fixture(scope="module")
def jpg_folder(tmp_path_factory):
    if not JPG_TAR.is_file():
        pytest.skip(f"CIFAR-10 JPEG set not found at {JPG_TAR}")
    out = tmp_path_factory.mktemp("jpg")
    with tarfile.open(JPG_TAR) as tar:  # 20 per class: test/<class>/0000.jpg .. 0019.jpg
        members = [m for m in tar.getmembers() if m.isfile() and int(Path(m.name).stem) < 20]
        tar.extractall(out, members=members, filter="data")
    root = out / "test"
    odd, bad = _odd_images(root)
    return root, len(members), odd, bad


def test_file_names_take_their_own_length_not_that_of_the_longest():
    """A user test at ImageNet scale: a folder's names were a fixed-width NumPy bytes array, each as
    long as the longest; one name of 3,834 bytes among 1.3 million files took 4.75 GB."""
    names = ["x" * 3834] + [f"n{i % 1000:08d}/{i}.JPEG" for i in range(100_000)] + ["\udcff\u00e9.png"]
    packed = PackedNames(names)
    assert packed.nbytes < 4 * sum(map(len, names))  # 3.8 MB (fixed width: 384 MB)
    assert [packed[i] for i in (0, 1, 100_001)] == [os.fsencode(names[i]) for i in (0, 1, 100_001)]
    taken = packed.take(np.array([100_001, 7, 0]))
    assert len(taken) == 3 and [taken[i] for i in range(3)] == [os.fsencode(names[i]) for i in (100_001, 7, 0)]


def test_the_digest_of_file_names_is_that_of_the_names_in_their_order(monkeypatch):
    """What a resumed run compares (checkpoint extra files_digest): a subset's digest is that of its
    names packed anew, gathered a few at a time; names that join to the same bytes differ."""
    import byol.scan
    names = [f"n{i % 100:04d}/{i}.JPEG" for i in range(1000)] + ["\udcff\u00e9.png"]
    packed = PackedNames(names)
    monkeypatch.setattr(byol.scan, "_GATHERED", 7)
    for idx in (np.arange(len(names)), np.arange(10, 500), np.arange(0, 1001, 3), np.array([9, 2, 1000]),
                np.array([], dtype=np.int64)):
        assert packed.take(idx).digest() == PackedNames([names[i] for i in idx]).digest(), idx[:4]
    assert packed.take(np.array([2, 9])).digest() != packed.take(np.array([9, 2])).digest()
    assert PackedNames(["ab", "c"]).digest() != PackedNames(["a", "bc"]).digest()


def test_a_subset_of_file_names_pickled_for_a_spawned_worker_takes_its_own_names_only(monkeypatch):
    """Worker processes that are spawned (macOS's, Windows's) get the data set pickled: a kNN split of
    10,000 names took the whole folder's buffer with it (ImageNet's train split: some 40 MB, to each worker)."""
    import pickle
    import byol.scan
    names = [f"n{i % 100:04d}/{i}.JPEG" for i in range(20_000)] + ["\udcff\u00e9.png"]
    packed = PackedNames(names)
    monkeypatch.setattr(byol.scan, "_GATHERED", 7)
    for idx in (np.array([20_000, 3, 19_999, 3]), np.arange(0, 20_001, 1000), np.arange(5, 12), np.arange(0)):
        taken = packed.take(idx)
        back = pickle.loads(pickle.dumps(taken))
        assert [back[i] for i in range(len(back))] == [os.fsencode(names[i]) for i in idx], idx[:4]
        assert back.nbytes < 64 * len(idx) + 8192 and back.digest() == taken.digest()
        again = back.take(np.arange(len(back))[::-1])  # a subset of the copy: its own offsets
        assert [again[i] for i in range(len(again))] == [os.fsencode(names[i]) for i in idx[::-1]]
    whole = pickle.loads(pickle.dumps(packed))
    assert whole._buffer.nbytes == packed._buffer.nbytes and whole.digest() == packed.digest()
    sub = packed.take(np.arange(100, 103))  # take itself shares the buffer, a subset's too
    assert sub.take(np.array([2, 0]))._buffer is packed._buffer
    assert [sub.take(np.array([2, 0]))[i] for i in range(2)] == [os.fsencode(names[i]) for i in (102, 100)]

def test_a_long_scan_says_what_it_has_found_and_a_short_one_says_nothing(tmp_path, monkeypatch, capsys):
    """A user test at ImageNet scale: 1.3 million files took 13 s to list, 89 s on a slow file
    system, and nothing was said meanwhile: as if the run hung."""
    import byol.progress
    root = extract_jpegs(tmp_path / "images", per_class=2)
    ImageFolder(root, size=8)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(byol.progress, "SCAN_NOTES", (0.0, 3600.0))  # at once, then not again
    ImageFolder(root, size=8)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"note: scanning {root} for image files: 0 found so far, ")
    assert re.fullmatch(rf"note: found 20 image files in {re.escape(str(root))} in \d+ s", lines[1])
    monkeypatch.setenv("RANK", "1")  # under torchrun, rank 0 says it
    monkeypatch.setenv("WORLD_SIZE", "2")
    ImageFolder(root, size=8)
    assert capsys.readouterr().err == ""


def test_folders_nested_too_deep_to_scan_are_one_sentence(tmp_path):
    """A user test: 1,000 nested folders ended the scan in a RecursionError's traceback (Python
    before 3.12 walks by recursion; 3.12's walk reads them)."""
    folders = [tmp_path / "images" / "d"]
    while len(folders) < 1100:  # one at a time: pathlib's mkdir(parents=True) recurses too
        folders.append(folders[-1] / "d")
    # Python's default limit: the first torch.compile that compiles (a cold cache) in this process raises it
    # to 2000 for good, and then the scan read all 1,100 levels (this test failed after test_step's)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        for folder in folders:
            folder.mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(folders[-1] / "a.png")
        if sys.version_info < (3, 12):
            with pytest.raises(DataError, match=r"the folders under .* nest too deep to read \(over about \d+ "
                                                r"levels\); move the images into shallower folders"):
                ImageFolder(tmp_path / "images", size=8)
        else:
            assert len(ImageFolder(tmp_path / "images", size=8)) == 1
    finally:  # pytest's removal of old temporary folders recurses too, and would fail on these
        (folders[-1] / "a.png").unlink(missing_ok=True)
        for folder in reversed(folders):
            if folder.is_dir():
                folder.rmdir()
        sys.setrecursionlimit(limit)


def test_folder_order_is_a_function_of_the_epoch(jpg_folder):
    """A resumed run rebuilds its loader and must see the epoch's order the first run saw."""
    root = jpg_folder[0]

    def order(epoch, loader=None):
        loader = loader or folder_loader(ImageFolder(root, size=8), batch_size=50, workers=0, seed=3, drop_last=False)
        loader.sampler.set_epoch(epoch)
        return torch.cat([i for _, _, i in loader]).tolist()

    first_run = folder_loader(ImageFolder(root, size=8), batch_size=50, workers=0, seed=3, drop_last=False)
    epochs = [order(e, first_run) for e in range(3)]
    assert order(2) == epochs[2]  # a fresh loader, as after --resume in epoch 2
    assert epochs[0] != epochs[1] != epochs[2]
    assert sorted(epochs[0]) == sorted(epochs[1])


def _passes(loader, epoch):
    """The indices of the batches of ``epoch``, begun again where they run out, as training takes them."""
    while True:
        loader.sampler.set_epoch(epoch)
        yield from (i.tolist() for _, _, i in loader)


@pytest.mark.parametrize("world, workers", [(1, 0), (2, 0), (1, 2)])
def test_a_pass_started_at_a_batch_yields_what_the_epoch_yields_from_it(tmp_path, world, workers):
    """A resumed run starts its epoch at its batch without decoding those before (start_pass_at),
    also where whole batches cannot be decoded and the epoch is begun again, knowing only the bad
    files of the batches the run before it took."""
    root = extract_jpegs(tmp_path / "images", per_class=2)  # 20 files, and 30 that cannot be decoded
    for n in range(30):
        (root / "cat" / f"junk{n:02d}.jpg").write_bytes(b"")

    def loader():
        folder = ImageFolder(root, size=8)
        sampler = torch.utils.data.DistributedSampler(folder, world, 1, seed=3, drop_last=True) if world > 1 else None
        return folder_loader(folder, batch_size=3, workers=workers, seed=3, sampler=sampler)
    expected = list(itertools.islice(_passes(loader(), 1), 40))
    steps = len(loader())  # 16 batches an epoch (8 for each of two processes), some all undecodable
    assert len({tuple(b) for b in expected[:steps]}) < steps  # begun again within the epoch
    for index in range(1, steps, 1 if workers == 0 else 5):
        run = loader()
        list(itertools.islice(_passes(run, 1), index))  # the run before the resume: what it knows is bad
        resumed = loader()
        resumed.dataset.bad_files.update(run.dataset.bad_files)
        resumed.sampler.set_epoch(1)
        assert start_pass_at(resumed, index)
        assert list(itertools.islice(_passes(resumed, 1), 12)) == expected[index:index + 12]


def test_labeled_folders_find_val_beside_a_train_folder_given_as_dot(tmp_path, monkeypatch):
    """A root of "." from inside ROOT/train (the folder a run trains on) is ROOT/train, as its absolute path is:
    its name was "", so the kNN monitor and eval found no ROOT/val beside it."""
    for where in ("train/ant/a.png", "train/bee/b.png", "val/ant/c.png", "val/bee/d.png"):
        (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / where)
    monkeypatch.chdir(tmp_path / "train")
    for root in (".", "./"):
        train, test = labeled_folders(root, size=8)
        assert (train.root, test.root) == (str(tmp_path / "train"), str(tmp_path / "val"))


def test_labeled_folders_spread_a_limit_over_every_class_and_shares_split_them(tmp_path):
    train = extract_jpegs(tmp_path / "set" / "train", per_class=6)
    assert labeled_folders(tmp_path / "set", size=8) is None  # no val/ or test/ yet
    extract_jpegs(tmp_path / "set" / "test", per_class=4)
    for root in (tmp_path / "set", train):  # ROOT, or ROOT/train as a run trained on
        bank, queries = (load_folder_share(s) for s in labeled_folders(root, size=8, limit=20))
        assert len(bank) == len(queries) == 20 and bank.images.shape[1:] == (3, 8, 8)
        assert torch.bincount(bank.labels).tolist() == [2] * 10  # the first 20 would be 4 classes
        assert torch.bincount(queries.labels).tolist() == [2] * 10
    folder = labeled_folders(train, size=8)[0]
    assert len(folder) == 60
    # Under torchrun each process decodes its share alone; the shares make up the whole.
    whole = load_folder_share(folder)
    Path(folder.path(7)).write_bytes(b"not a jpeg")  # one bad file, in rank 1's share
    folder = labeled_folders(train, size=8)[0]
    shares = [load_folder_share(folder, rank, 2) for rank in range(2)]
    assert shares[0].indices.tolist() == list(range(0, 60, 2))
    assert shares[1].indices.tolist() == [i for i in range(1, 60, 2) if i != 7]
    for share in shares:
        assert torch.equal(share.images, whole.images[share.indices])
        assert torch.equal(share.labels, whole.labels[share.indices])
    # The share's bad file is the folder's, which skipped_files.txt and the notes list (a mutation audit:
    # leaving it in the share's own copy passed every test).
    assert list(folder.bad_files) == [folder.path(7)]
    # Fewer files than processes, or a share of bad files only: an empty share, not an error
    # (one process alone gets the error: nothing to monitor with).
    assert [len(load_folder_share(folder.subset(torch.tensor([0])), rank, 2)) for rank in range(2)] == [1, 0]
    bad_only = folder.subset(torch.tensor([7]))
    assert len(load_folder_share(bad_only, 0, 2)) == 0
    with pytest.raises(DataError, match="none of the 1 image files"):
        load_folder_share(bad_only)


def test_labeled_folders_say_what_is_wrong_with_their_layout(tmp_path):
    train = extract_jpegs(tmp_path / "set" / "train", per_class=1)
    val = extract_jpegs(tmp_path / "set" / "val", per_class=1)
    (val / "cat").rename(val / "kitten")
    with pytest.raises(DataError, match=r"class sub-folders of .*train and .*val differ \(only in .*val: kitten\); "
                                        r"every class of .*val needs its sub-folder of "
                                        r"images in .*train too"):
        labeled_folders(train, size=8)
    (val / "kitten").rename(val / "cat")
    (val / "cat" / next(iter(os.listdir(val / "cat")))).rename(val / "stray.jpg")
    with pytest.raises(DataError, match=r"stray\.jpg is not inside a class subfolder"):
        labeled_folders(train, size=8)


def test_classes_that_differ_are_said_with_both_folders_in_full_and_an_empty_class_folder_is_no_class(
        tmp_path, monkeypatch, capsys):
    """A held-out split short of a training class (an empty class folder is no class) is a note, its labels
    numbered by the training split's classes (a user test: such a val/ turned the kNN monitor off and eval
    refused it); one with a class the training split lacks is refused, both folders said in full, and only
    the held-out split's classes named (a user test: those only train/ has, fine now, were named as the
    difference, cut to 5 with no sign of the rest)."""
    for path in ("set/train/a/0.png", "set/train/b/0.png", "set/train/c/0.png", "set/val/c/0.png", "set/val/c/1.png"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), "white" if "val" in path else "black").save(tmp_path / path)  # (same bytes: noted)
    (tmp_path / "set" / "val" / "b").mkdir()  # there, but empty: val has no class b
    monkeypatch.chdir(tmp_path)
    train, val = labeled_folders("set", size=8)
    assert train.classes == val.classes == ["a", "b", "c"] and val.labels.tolist() == [2, 2]
    assert capsys.readouterr().err == (f"note: {tmp_path / 'set' / 'val'} has no images of 2 of the 3 classes of "
                                       f"{tmp_path / 'set' / 'train'} (a, b): its accuracies are over the classes it "
                                       "has\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "set" / "val" / "b" / "0.png")
    (tmp_path / "set" / "val" / "d").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "set" / "val" / "d" / "0.png")
    with pytest.raises(DataError) as e:
        labeled_folders("set", size=8)
    assert str(e.value) == (f"the class sub-folders of {tmp_path / 'set' / 'train'} and {tmp_path / 'set' / 'val'} "
                            f"differ (only in {tmp_path / 'set' / 'val'}: d); every class of "
                            f"{tmp_path / 'set' / 'val'} needs its sub-folder of images in "
                            f"{tmp_path / 'set' / 'train'} too (a class is a sub-folder that holds images)")
    for name in "efghi":
        (tmp_path / "set" / "val" / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / "set" / "val" / name / "0.png")
    with pytest.raises(DataError, match=rf"differ \(6 classes only in {re.escape(str(tmp_path / 'set' / 'val'))}: "
                                        r"d, e, f, g, h, \.\.\.\); every class"):
        labeled_folders("set", size=8)


def test_labeled_folders_note_how_many_held_out_images_are_training_images(tmp_path, capsys):
    """A review: a val/CLASS linked to train/CLASS, or files copied or hard-linked from train/, made each such
    image its own nearest neighbour (100% at k=1), without a word; they are counted, once each, in one note.
    A file of the same name with other bytes (of the same size) is not one of them, nor is one of another class."""
    train = extract_jpegs(tmp_path / "set" / "train", per_class=3)
    val = extract_jpegs(tmp_path / "set" / "val", per_class=3)  # the same files: copies
    shutil.rmtree(val / "cat")
    (val / "cat").symlink_to(train / "cat", target_is_directory=True)
    hard = sorted((val / "ship").iterdir())[0]
    hard.unlink()
    os.link(train / "ship" / hard.name, hard)
    for path in (val / "dog").iterdir():  # same name and size, another byte
        data = bytearray(path.read_bytes())
        data[-3] ^= 1
        path.write_bytes(bytes(data))
    (val / "frog" / "moved.jpg").write_bytes((train / "frog" / sorted(os.listdir(val / "frog"))[0]).read_bytes())
    (val / "frog" / sorted(os.listdir(val / "frog"))[0]).unlink()  # renamed: not looked for
    os.rename(val / "horse" / sorted(os.listdir(val / "horse"))[0], val / "deer" / "from_horse.jpg")
    capsys.readouterr()
    assert [len(s) for s in labeled_folders(tmp_path / "set", size=8)] == [30, 30]
    notes = [line for line in capsys.readouterr().err.splitlines() if "also in" in line]
    assert notes == [f"note: 25 of the 30 images of {val} are also in {train} (the same file, or the same bytes, "
                     "under the same class and file name): each is its own nearest neighbour, so the accuracies "
                     "over them are inflated; hold them out of one of the splits"]
    labeled_folders(tmp_path / "set", size=8, limit=1)  # the images scored: 1 of each split, the same file
    assert "note: 1 of the 1 images of" in capsys.readouterr().err
    shutil.rmtree(val)
    extract_jpegs(tmp_path / "set" / "val", per_class=5)
    for path in val.rglob("*.jpg"):  # names of their own (a copy renamed, too, is not looked for: its bytes are
        path.rename(path.with_name("val_" + path.name))  # read only where the names agree)
    labeled_folders(tmp_path / "set", size=8)
    assert "also in" not in capsys.readouterr().err


def _many_classes(tmp_path: Path, names: list[str]) -> ImageFolder:
    """A one-image folder that says it has ``names`` for classes, one file labeled each."""
    (tmp_path / "one" / "a").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "a" / "0.png")
    folder = ImageFolder(tmp_path / "one", size=8)
    folder.classes, folder.labels = names, torch.arange(len(names))
    return folder


def test_numbering_by_another_splits_classes_is_not_quadratic_in_the_classes(tmp_path):
    """A folder of 60,000 class folders (identities, landmarks) is renumbered in well under a second (a review at
    scale: classes.index for each class took 11 s for 30,000, some 2 minutes for 100,000)."""
    n = 60_000
    folder = _many_classes(tmp_path, [f"c{i:06d}" for i in range(n)])
    other = sorted([f"c{i:06d}" for i in range(0, n, 2)] + [f"d{i:06d}" for i in range(n // 2)])
    start = time.perf_counter()
    numbered, lacking = folder.numbered_as(other)
    assert time.perf_counter() - start < 3
    assert numbered.labels[:4].tolist() == [0, -1, 1, -1] and lacking[:2] == ["c000001", "c000003"]
    assert len(lacking) == n // 2


def test_labeled_folders_tell_the_classes_val_lacks_in_time_linear_in_the_classes(tmp_path, monkeypatch, capsys):
    """The note on a val/ short of classes is found in a time linear in them (a review at scale: quadratic)."""
    n = 60_000
    classes = [f"c{i:06d}" for i in range(n)]
    for split in ("train", "val"):
        (tmp_path / "set" / split).mkdir(parents=True)
    monkeypatch.setattr("byol.folder_splits.ImageFolder", lambda root, size, labeled: _many_classes(
        tmp_path / Path(root).name, classes if Path(root).name == "train" else classes[n // 2:]))
    start = time.perf_counter()
    labeled_folders(tmp_path / "set", size=8)
    assert time.perf_counter() - start < 3
    assert f"has no images of {n // 2} of the {n} classes" in capsys.readouterr().err


def test_train_beside_test_alone_is_the_split_also_beside_other_folders_and_val_is_preferred_to_test(tmp_path):
    """A mutation audit: telling a split by a val/ beside it only (not a test/), and taking test/ before
    val/ for the held-out split, each survived every test: ROOT/{train,test,extra}/ would have trained on
    all of ROOT, its test images included, and a ROOT with both would have monitored (and tuned) on test/."""
    for path in ("set/train/a/0.png", "set/train/b/0.png", "set/test/a/0.png", "set/test/b/0.png", "set/extra/0.png"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / path)
    root = tmp_path / "set"
    assert Path(build_dataset("folder", root, "train", 8, False).root) == root / "train"
    assert Path(labeled_folders(root, size=8)[1].root) == root / "test"
    for path in ("set/val/a/0.png", "set/val/b/0.png"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / path)
    assert Path(labeled_folders(root, size=8)[1].root) == root / "val"


def test_a_class_folder_taken_alone_holds_its_own_files_not_those_of_a_folder_whose_name_it_begins(tmp_path):
    """A mutation audit: matching a class folder by the start of the files' names (dog/ and dogs/ alike)
    survived every test; embed --split dog of a plain folder would have embedded dogs/ too."""
    for path in ("dog/0.png", "dogs/1.png", "dogs/2.png", "dog_x.png"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / path)
    dog = ImageFolder(tmp_path, size=8, labeled="partial").inside("dog")
    assert [os.path.relpath(p, tmp_path) for p in dog.paths] == [os.path.join("dog", "0.png")]
    assert dog.labels.tolist() == [0]


@pytest.mark.parametrize("names", [("a\nb.png", "back\\slash.png", "tab\t.png"),
                                   ("form\x0cfeed.png", "line\u2028separator.png")])
def test_the_list_of_skipped_files_a_resume_reads_back_names_the_files_written_to_it(tmp_path, names):
    """A mutation audit: reading skipped_files.txt without undoing its escapes survived every test; a resumed
    run would have held 'a\\nb.png' (backslash, n) for the file a<line break>b.png, so not known it bad,
    and listed it twice, the second time escaped twice. A review: a form feed (or U+2028) in a name was written
    as it is, and reading it back split the line there, so a resumed run forgot that file was bad."""
    (tmp_path / "images").mkdir()
    for name in ("ok.png", *names):
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / name)
    folder = ImageFolder(tmp_path / "images", size=8)
    folder.bad_files = {p: "UnidentifiedImageError: cannot identify image file" for p in folder.paths if "ok" not in p}
    assert folder.write_skipped(tmp_path / "skipped_files.txt") == len(names)
    resumed = ImageFolder(tmp_path / "images", size=8)
    resumed.read_skipped(tmp_path / "skipped_files.txt")
    assert resumed.bad_files == folder.bad_files and set(resumed.bad_files) <= set(resumed.paths)


def test_a_skipped_files_list_written_before_the_escapes_still_reads_back_its_form_feed_name(tmp_path):
    """A run started before byol escaped a form feed (or U+2028) in skipped_files.txt wrote it as it is; its resume
    read the line split there: the bad file forgotten, a file named 'feed.png' (none) listed instead."""
    (tmp_path / "images").mkdir()
    for name in ("ok.png", "form\x0cfeed.png", "line\u2028separator.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / name)
    folder = ImageFolder(tmp_path / "images", size=8)
    bad = {p: "UnidentifiedImageError: cannot identify image file" for p in folder.paths if "ok" not in p}
    (tmp_path / "skipped_files.txt").write_text("".join(f"{p}\t{r}\n" for p, r in sorted(bad.items())),
                                                encoding="utf-8")  # as the version before the escapes wrote it
    folder.read_skipped(tmp_path / "skipped_files.txt")
    assert folder.bad_files == bad


def test_every_character_str_splitlines_breaks_at_is_escaped_and_read_back():
    """A mutation audit: dropping a character from the escaped line breaks (vertical tab, the file and group
    separators, U+2029) survived the tests above, which name a few of them only; and an escape written with
    fewer digits or the wrong width read back as another name. Every character that splitlines breaks at is
    found here from Python itself, and text that only looks like an escape stays as it was."""
    breaks = [chr(c) for c in range(0x3000) if len(f"a{chr(c)}b".splitlines()) == 2]
    assert len(breaks) >= 10
    for c in breaks:
        name = f"dir{c}name{c}.png"
        assert escape_name(name).splitlines() == [escape_name(name)], repr(c)
        assert unescape_name(escape_name(name)) == name, repr(c)
    assert escape_name("a\x0b\x85\u2029") == "a\\x0b\\x85\\u2029"  # as a Python string literal writes them
    for text in ("\\x0c.png", "\\u2028.png", "x0c\\", "caf\u00e9 \x85", "\\\x0c"):
        assert unescape_name(escape_name(text)) == text, text


def test_a_resume_of_a_moved_folder_reads_its_skipped_files_back_at_their_new_place(tmp_path):
    """A user test: resumed with --data.root=NEW, a run listed each skipped file twice, at its old place and its
    new one. The kNN monitor's ROOT/val files move with a data.root of ROOT/train."""
    for split in ("train", "val"):
        (tmp_path / "new" / "imagenet" / split / "cat").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "new" / "imagenet" / split / "cat" / "ok.png")
    for bad in ("train/cat/a.png", "val/cat/b.png"):  # the listed files, empty, moved with their folder
        (tmp_path / "new" / "imagenet" / bad).touch()
    old = tmp_path / "old" / "data" / "imagenet"
    (tmp_path / "skipped_files.txt").write_text(f"{old / 'train' / 'cat' / 'a.png'}\tempty file\n"
                                                f"{old / 'val' / 'cat' / 'b.png'}\tempty file\n")
    folder = ImageFolder(tmp_path / "new" / "imagenet" / "train", size=8)
    folder.read_skipped(tmp_path / "skipped_files.txt",
                        moved=(str(old / "train"), str(tmp_path / "new" / "imagenet" / "train")))
    new = tmp_path / "new" / "imagenet"
    assert sorted(folder.bad_files) == [str(new / "train" / "cat" / "a.png"), str(new / "val" / "cat" / "b.png")]
    same = ImageFolder(tmp_path / "new" / "imagenet" / "train", size=8)
    same.read_skipped(tmp_path / "skipped_files.txt", moved=(str(old / "train"), str(old / "train")))
    assert sorted(same.bad_files) == [str(old / "train" / "cat" / "a.png"), str(old / "val" / "cat" / "b.png")]


def test_a_resume_on_root_train_after_root_lists_the_bad_images_where_they_are(tmp_path):
    """A run on ROOT resumed with --data.root=ROOT/train (not moved: the same files) read ROOT/train/x as
    ROOT/train/train/x, a file that never was, had the place it moved to not been checked (a mutation audit)."""
    (tmp_path / "root" / "train" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "root" / "train" / "cat" / "ok.png")
    bad = tmp_path / "root" / "train" / "cat" / "a.png"
    bad.touch()
    (tmp_path / "skipped_files.txt").write_text(f"{bad}\tempty file\n")
    folder = ImageFolder(tmp_path / "root" / "train", size=8)
    root = tmp_path / "root"
    folder.read_skipped(tmp_path / "skipped_files.txt", moved=(str(root), str(root / "train")))
    assert list(folder.bad_files) == [str(bad)]


def test_a_train_split_of_another_name_alone_in_its_folder_is_the_split(tmp_path):
    """data.train_split=mine with ROOT/mine/ the only sub-folder (no val/ beside it; a hidden one aside) is the
    split, its sub-folders the classes (a mutation audit: counting the split itself, or a hidden folder, as one of
    ROOT's classes, which took all of ROOT as one class, mine, survived every test)."""
    for path in ("set/mine/cat/0.png", "set/mine/dog/1.png"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / path)
    (tmp_path / "set" / ".cache").mkdir()  # a tool's hidden folder: no class
    data = build_dataset("folder", tmp_path / "set", "mine", 8, False)
    assert (Path(data.root), data.classes, data.labels.tolist()) == (tmp_path / "set" / "mine", ["cat", "dog"], [0, 1])


def test_an_imagenet_style_root_named_train_is_a_root_not_its_parent_s_split(tmp_path):
    """labeled_folders(ROOT/train) scores ROOT's train/ and val/; a ROOT that is itself named train, with its own
    train/ and val/ splits, is that ROOT, not a split of its parent (a mutation audit: always going up from a
    folder named train survived every test; it found no held-out split there: None, no kNN to score)."""
    for path in ("data/train/train/cat/0.png", "data/train/val/cat/1.png"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / path)
    bank, queries = labeled_folders(tmp_path / "data" / "train", size=8)
    assert (Path(bank.root), Path(queries.root)) == (tmp_path / "data/train/train", tmp_path / "data/train/val")


def test_labeled_folders_take_a_scanned_folder_only_where_it_is_root_train_at_their_size(tmp_path):
    """A run's scan of its training split stands in for ROOT/train's (a mutation audit: none of its three
    conditions was tested): not another folder's scan, nor one at another size, nor one without classes, which a
    scan of ROOT/train refuses, naming the image outside the class folders."""
    for path in ("set/train/cat/0.png", "set/train/dog/1.png", "set/val/cat/2.png", "other/cat/3.png",
                 "other/dog/4.png"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / path)
    same = ImageFolder(tmp_path / "set" / "train", 8, True)
    assert labeled_folders(tmp_path / "set", 8, scanned=same)[0] is same
    bank = labeled_folders(tmp_path / "set", 8, scanned=ImageFolder(tmp_path / "other", 8, True))[0]
    assert Path(bank.root) == tmp_path / "set" / "train"
    assert labeled_folders(tmp_path / "set", 8, scanned=ImageFolder(tmp_path / "set" / "train", 16, True))[0].size == 8
    Image.new("RGB", (8, 8)).save(tmp_path / "set" / "train" / "stray.png")
    unlabeled = ImageFolder(tmp_path / "set" / "train", 8)
    assert unlabeled.classes is None
    with pytest.raises(DataError, match=r"stray\.png is not inside a class subfolder"):
        labeled_folders(tmp_path / "set", 8, scanned=unlabeled)


def test_a_message_s_list_of_names_says_dots_only_where_it_leaves_some_out():
    assert first_names(list("abcde")) == "a, b, c, d, e" and first_names(list("abcdef")) == "a, b, c, d, e, ..."
    assert first_names(["a"], n=1) == "a" and first_names([]) == ""


def test_a_class_folder_named_train_is_a_class_not_the_train_split(tmp_path):
    """veh/{train,val}/{bus,car,train}/ trained on veh/train, as the README has an ImageNet-style layout
    trained: every class is read (veh/train/train alone was, unlabeled), eval's splits are veh/train and
    veh/val, and embed's train split is veh/train. Where train/ is beside val/, it is still the split."""
    from byol.datasets import build_dataset
    from byol.config import CONFIG_HEADER
    from byol.embeddings import _find_split
    veh = tmp_path / "veh"
    for split in ("train", "val"):
        for c in ("bus", "car", "train"):
            (veh / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(veh / split / c / "0.png")
    (veh / "train" / ".cache").mkdir()  # hidden: not a class that would make train/ one
    trained = build_dataset("folder", veh / "train", "train", 8, False)
    assert (Path(trained.root), trained.classes, len(trained)) == (veh / "train", ["bus", "car", "train"], 3)
    bank, queries = labeled_folders(veh / "train", size=8)
    assert (Path(bank.root), Path(queries.root), bank.classes) == (veh / "train", veh / "val", ["bus", "car", "train"])
    assert Path(_find_split(veh / "train", "train", 8, "train").root) == veh / "train"
    assert Path(_find_split(veh / "train", None, 8, "train").root) == veh / "val"
    plain = build_dataset("folder", veh / "val", "train", 8, False)  # a plain folder of classes, one of them train
    assert (Path(plain.root), plain.classes) == (veh / "val", ["bus", "car", "train"])
    assert Path(build_dataset("folder", veh, "train", 8, False).root) == veh / "train"  # the layout's split
    (veh / "val").rename(tmp_path / "val")  # no val/ beside train/: a split only where no class is
    (veh / "runs").mkdir()  # a byol run's folder is none of the data
    (veh / "runs" / "config.yaml").write_text(CONFIG_HEADER + "\n")
    assert Path(build_dataset("folder", veh, "train", 8, False).root) == veh / "train"
    (veh / "boat").mkdir()
    assert Path(build_dataset("folder", veh, "train", 8, False).root) == veh  # boat/ and train/ are classes


def test_a_folder_reached_twice_through_symbolic_links_is_read_once(tmp_path):
    root = extract_jpegs(tmp_path / "images", per_class=2)  # 20 files in 10 class folders
    (root / "cat" / "up").symlink_to("..")  # a loop: cat/up/cat/up/...
    (root / "dog" / "cats").symlink_to(root / "cat")  # the same folder under another name
    (root / "linked.jpg").symlink_to(root / "dog" / os.listdir(root / "dog")[0])  # a file: read, as itself
    ds = ImageFolder(root, size=8)
    assert len(ds) == 21 and len(set(map(os.path.realpath, ds.paths))) == 20


def test_class_names_are_the_classes_a_full_scan_finds_without_looking_at_all_files(tmp_path):
    """embed of a val split numbers its labels by train's classes: a user test at ImageNet scale scanned
    all 1.3M files of train for them. class_names stops at a class folder's first image, and agrees."""
    from byol.config import CONFIG_HEADER
    from byol.folder import class_names
    from byol.scan import scan
    root = tmp_path / "train"
    for name in ("a/x/y/0.png", "c/0.png", "c/1.png", "c/sub/2.png", "loose.png", ".hidden/0.png", "run/0.png",
                 "twice/0.png", "outside/0.png", "shared/0.png"):
        img((root if not name.startswith(("outside", "shared")) else tmp_path) / name)
    (root / "b").mkdir()
    (root / "b" / "notes.txt").write_text("no image")
    (root / "run" / "config.yaml").write_text(CONFIG_HEADER + "\n")  # a byol run's folder: none of the data
    (root / "d").symlink_to(root / "a")  # read in its own place: no class d
    (root / "e").symlink_to(tmp_path / "outside")  # out of the root: followed, class e
    for holder in ("f", "g"):  # one folder linked from two: read under f, the first (g has no class)
        (root / holder).mkdir()
        (root / holder / "link").symlink_to(tmp_path / "shared")
    (root / "f" / "0.png").write_bytes(b"")  # f has one already: the link's folder is still walked there
    full = ImageFolder(root, 8, "partial").classes
    assert full == ["a", "c", "e", "f", "twice"]
    assert class_names(root) == full
    assert sorted(scan(str(root), one_per_class=True)[0]) == ["a/x/y/0.png", "c/0.png", "e/0.png", "f/0.png",
                                                             "loose.png", "twice/0.png"]
    for bad in (tmp_path / "missing", root / "b"):  # the same sentences as ImageFolder's
        with pytest.raises(DataError) as full_said:
            ImageFolder(bad, 8, "partial")
        with pytest.raises(DataError) as said:
            class_names(bad)
        assert str(said.value) == str(full_said.value)


def test_image_folder_skips_bad_files_with_workers(jpg_folder, tmp_path, fault_table):
    root, n_jpg, odd, bad = jpg_folder
    ds = ImageFolder(root, size=32)
    assert len(ds) == n_jpg + len(odd) + len(bad) == 200 + 7 + 6
    assert ds.classes == CIFAR10_CLASSES
    seen = {}
    for images, labels, indices in folder_loader(ds, batch_size=16, workers=2, drop_last=False, seed=1):
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
        assert len(images) == len(labels) == len(indices)
        for x, y, i in zip(images, labels.tolist(), indices.tolist()):
            assert i not in seen and ds.classes[y] == Path(ds.path(i)).parent.name
            seen[i] = x
    by_path = {ds.path(i): x for i, x in seen.items()}
    assert len(seen) == n_jpg + len(odd) and set(by_path) >= set(odd.values())
    assert set(ds.bad_files) == set(bad.values()) and not set(bad.values()) & set(by_path)
    reasons = {Path(p).name: r for p, r in ds.bad_files.items()}
    assert reasons["empty.png"] == "empty file"
    assert "truncated" in reasons["truncated.jpg"]
    assert "UnidentifiedImageError" in reasons["text.jpg"]
    assert "DecompressionBombError" in reasons["bomb.png"]
    assert reasons["bomb_warning.png"] == "OSError: cannot load this image"  # read, not refused for its size

    # odd modes, converted to RGB
    px = {name: by_path[path].permute(1, 2, 0).numpy().astype(int) for name, path in odd.items()}
    assert (px["gray.png"] == 100).all()
    assert (px["palette.png"][:, :15] == 0).all() and (px["palette.png"][:, 17:] == [0, 255, 0]).all()
    assert np.abs(px["rgba.png"] - [100, 50, 25]).max() <= 1  # composited on black: RGB * 128 / 255
    assert np.abs(px["la.png"] - 50).max() <= 1
    assert (px["cmyk.tif"] == [255, 0, 255]).all()
    assert (px["gray16.png"][:, :15] == 255).all() and (px["gray16.png"][:, 17:] == 128).all()
    rotated = px["rotated.jpg"]  # upright: 40 x 80 portrait, red above blue; center crop keeps both halves
    assert (rotated[2, :, 0] > 200).all() and (rotated[2, :, 2] < 60).all()
    assert (rotated[29, :, 2] > 200).all() and (rotated[29, :, 0] < 60).all()

    # a real JPEG at its own size comes out exactly as Pillow decodes it
    jpg = str(root / "cat" / "0003.jpg")
    assert np.array_equal(by_path[jpg].permute(1, 2, 0).numpy(), np.asarray(Image.open(jpg).convert("RGB")))

    written = ds.write_skipped(tmp_path / "skipped_files.txt")
    lines = (tmp_path / "skipped_files.txt").read_text().splitlines()
    assert written == len(bad) == len(lines)
    assert {line.split("\t")[0] for line in lines} == set(bad.values())
    assert all(len(line.split("\t")) == 2 for line in lines)
    listed, ds.bad_files = dict(ds.bad_files), {}
    ds.read_skipped(tmp_path / "skipped_files.txt")  # as a resumed run starts its list
    assert ds.bad_files == listed
    odd_names = {"/x/tab\there.jpg": "r1", "/x/new\nline.jpg": "r2", "/x/back\\t.jpg": "r3"}
    ds.bad_files = dict(odd_names)  # a tab or line break in a name neither splits nor adds a line
    assert ds.write_skipped(tmp_path / "odd.txt") == 3 == len((tmp_path / "odd.txt").read_text().splitlines())
    ds.bad_files = {}
    ds.read_skipped(tmp_path / "odd.txt")
    assert ds.bad_files == odd_names
    for name, what in [("truncated.jpg", "truncated JPEG"), ("corrupt.jpg", "JPEG marker followed by noise"),
                       ("text.jpg", "text file named .jpg"), ("empty.png", "zero-byte file"),
                       ("bomb.png", "decompression bomb (PNG declaring 20000 x 20000)"),
                       ("bomb_warning.png", "PNG declaring 10000 x 10000 (over Pillow's decompression-bomb "
                                            "warning, not its error) with no pixel data")]:
        reason = reasons[name].replace(str(root), "ROOT")  # (the table: no machine's own paths)
        fault_table(f"image folder: {what}", f"skipped and listed in skipped_files.txt ({reason}); "
                    "the other images load")
    for name, what in [("gray.png", "grayscale (L)"), ("palette.png", "palette with transparency (P)"),
                       ("rgba.png", "RGBA"), ("la.png", "gray + alpha (LA)"), ("cmyk.tif", "CMYK TIFF"),
                       ("gray16.png", "16-bit grayscale"), ("rotated.jpg", "JPEG with EXIF rotation")]:
        fault_table(f"image folder: {what}", "converted to 8-bit RGB (pixel values checked)")


@needs_cifar
def test_jpeg_folder_agrees_with_cifar_binary(jpg_folder, cifar_test):
    root, *_ = jpg_folder
    ds = ImageFolder(root, size=32)
    s = load_folder_tensor(ds, workers=0)
    assert len(s) == len(ds) - 6 and s.images.shape[1:] == (3, 32, 32) and s.classes == CIFAR10_CLASSES
    assert torch.equal(s.indices, s.indices.sort().values)
    assert len(ds.bad_files) == 6
    rows = {ds.path(int(i)): r for r, i in enumerate(s.indices)}
    for c, name in enumerate(CIFAR10_CLASSES):  # test/<class>/0000.jpg is that class's first test image
        first = int((cifar_test.labels == c).nonzero()[0])
        r = rows[str(root / name / "0000.jpg")]
        assert s.labels[r] == c
        diff = (s.images[r].float() - cifar_test.images[first].float()).abs().mean()
        assert diff < 8, (name, diff)  # JPEG quality 75 of the same picture


def img(path, size=(10, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (1, 2, 3)).save(path)


def test_image_folder_labels_and_errors(tmp_path):
    img(tmp_path / "nested" / "b" / "deep" / "x.png")
    img(tmp_path / "nested" / "a" / "y.JPG")  # extension case does not matter
    ds = ImageFolder(tmp_path / "nested", size=8)
    assert ds.classes == ["a", "b"] and ds.labels.tolist() == [0, 1]
    x, y, i = ds[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.uint8 and (y, i) == (0, 0)

    img(tmp_path / "nested" / "loose.png")  # one image outside a class folder: unlabeled
    ds = ImageFolder(tmp_path / "nested", size=8)
    assert ds.classes is None and ds.labels.tolist() == [-1, -1, -1]
    assert ds.loose == str(tmp_path / "nested" / "loose.png")  # why, for embed's note
    assert ImageFolder(tmp_path / "nested" / "a", size=8).loose is None  # no sub-folders: nothing to say
    with pytest.raises(DataError, match="not inside a class subfolder"):
        ImageFolder(tmp_path / "nested", size=8, labeled=True)
    assert ImageFolder(tmp_path / "nested" / "a", size=8, labeled=False).labels.tolist() == [-1]

    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("hi")
    for name in ("a.json", "b.json", "README"):
        (tmp_path / "empty" / name).write_text("{}")
    # what it holds said (a user test on a folder of .txt files: "no image files found" alone)
    for find in (lambda: ImageFolder(tmp_path / "empty", size=8), lambda: class_names(tmp_path / "empty")):
        with pytest.raises(DataError, match=r"^no image files found in .*empty or its subfolders \(looked for .*\); "
                                            r"it holds 4 other files \(.json 2, .txt 1, no extension 1\)$"):
            find()
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match=r"Pillow opens\)$"):
        ImageFolder(tmp_path / "none", size=8)
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(tmp_path / "missing", size=8)
    (tmp_path / "nested" / "a" / "bad.png").write_bytes(b"")
    bad = ImageFolder(tmp_path / "nested", size=8)[1]
    assert isinstance(bad, Skipped) and bad.reason == "empty file" and bad.path.endswith("bad.png")
    (tmp_path / "nested" / "a" / "gone.png").symlink_to(tmp_path / "moved.png")  # a link whose file is gone
    broken = ImageFolder(tmp_path / "nested", size=8)[2]
    assert isinstance(broken, Skipped) and broken.path.endswith("gone.png")
    assert broken.reason == f"broken symbolic link (to {tmp_path / 'moved.png'}, which does not exist)"
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"; it holds 1 other file \(.txt 1\)$"):
        ImageFolder(tmp_path / "one", size=8)


def test_32_bit_gray_is_scaled_from_the_smallest_usual_range_that_holds_it(tmp_path, fault_table):
    """32-bit float (F) and integer (I) TIFFs keep their picture: [0, 1] and 0..255 floats, 0..255 and
    0..65535 integers as such; beyond those, from 0 to the image's maximum (not clipped to a flat image)."""
    ramp = np.tile(np.linspace(0, 1, 16), (16, 1))
    cases = {"unit.tif": ramp.astype(np.float32), "wide.tif": (ramp * 300 - 20).astype(np.float32),
             "int8.tif": np.round(ramp * 255).astype(np.int32), "int16.tif": np.round(ramp * 65535).astype(np.int32),
             "int31.tif": np.round(ramp * (2**31 - 1)).astype(np.int32)}
    cases["unit.tif"][0, 0] = np.nan
    for name, values in cases.items():
        Image.fromarray(values).save(tmp_path / name)
    got = {name: decode_image(str(tmp_path / name), 16)[0].numpy().astype(int) for name in cases}
    expected = np.round(ramp * 255)
    for name in ("int8.tif", "int16.tif", "int31.tif"):
        assert np.abs(got[name] - expected).max() <= 1, name
    assert got["unit.tif"][0, 0] == 0 and np.array_equal(got["unit.tif"][1:], expected[1:])  # NaN as black
    wide = cases["wide.tif"][1].astype(np.float64)  # -20 .. 280: black below 0, 280 the white
    assert np.array_equal(got["wide.tif"][1], np.clip(np.round(wide * 255 / 280), 0, 255))
    fault_table("image folder: 32-bit float TIFF (F) in [0, 1] with a NaN, one in -20..280; 32-bit integer "
                "TIFF (I) in 0..255, 0..65535, 0..2^31-1",
                "scaled from [0, 1] (NaN as 0), from 0..280, from 0..255, 0..65535, 0..2^31-1 (pixel values checked)")


def test_infinite_float_pixels_are_the_image_s_white_or_black_and_an_rgb_png_s_transparent_colour_is_black(
        tmp_path):
    """A mutation audit: +inf taken as black, and an RGB PNG's transparent colour (its tRNS) left as it is,
    survived. +inf is the image's top (white), -inf black; the transparent colour is composited onto black,
    as the palette and RGBA images' transparency is."""
    values = np.tile(np.linspace(0, 1, 16), (16, 1)).astype(np.float32)
    values[0, 0], values[0, 1] = np.inf, -np.inf
    Image.fromarray(values).save(tmp_path / "inf.tif")
    got = decode_image(str(tmp_path / "inf.tif"), 16)[0]
    assert (got[0, 0], got[0, 1]) == (255, 0) and got[1, -1] == 255
    keyed = Image.new("RGB", (16, 16), (255, 0, 0))
    keyed.paste((0, 0, 255), (8, 0, 16, 16))  # left red (transparent), right blue
    keyed.save(tmp_path / "keyed.png", transparency=(255, 0, 0))
    image = decode_image(str(tmp_path / "keyed.png"), 16)
    assert image[:, :, :8].eq(0).all() and image[:, :, 8:].tolist() == [[[0] * 8] * 16, [[0] * 8] * 16,
                                                                           [[255] * 8] * 16]


def test_a_16_bit_gray_png_s_transparent_value_is_black(tmp_path):
    """docs/data.md: a PNG's transparent colour becomes black. A 16-bit gray PNG's (its tRNS, a 16-bit value) was
    scaled as any other gray: a white key stayed white."""
    gray = np.full((16, 16), 65535, np.uint16)
    gray[:, 8:] = 32768  # left white (transparent), right mid-gray
    Image.fromarray(gray).save(tmp_path / "keyed16.png", transparency=65535)
    image = decode_image(str(tmp_path / "keyed16.png"), 16)
    assert image[:, :, :8].eq(0).all() and image[:, :, 8:].eq(128).all()


def test_a_downscaled_image_is_filtered_not_sampled(tmp_path):
    """A mutation audit: nearest-neighbour resizing for bilinear survived (the tests' images were already the
    size asked for). Stripes a pixel wide, shrunk fourfold, average to gray rather than alias to one stripe."""
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::2] = 255
    Image.fromarray(stripes).save(tmp_path / "stripes.png")
    image = decode_image(str(tmp_path / "stripes.png"), 16)
    assert image.shape == (3, 16, 16) and 96 <= image.min() <= image.max() <= 160


def test_a_partly_labeled_folder_gives_its_loose_images_no_class(tmp_path):
    """A mutation audit: labeling the images outside every class folder as class 0 survived: they are -1
    (no label), as ``byol embed`` writes them, and counted in ``loose_count``."""
    for where in ("ant/a.png", "bee/b.png", "loose.png", "zzz.png"):
        (tmp_path / where).parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / where)
    folder = ImageFolder(tmp_path, 8, "partial")
    labels = {os.path.basename(p): int(y) for p, y in zip(folder.paths, folder.labels)}
    assert labels == {"a.png": 0, "b.png": 1, "loose.png": -1, "zzz.png": -1}
    assert folder.classes == ["ant", "bee"] and folder.loose_count == 2


def test_a_held_out_split_is_one_beside_train_and_skipped_inside_counts_the_folder_s_own_files(tmp_path):
    """A mutation audit: a ``test/`` (or ``val/``) folder taken as the held-out split without a ``train/`` beside
    it (a plain folder with a class named test), and the skipped files of a kNN split counted as the folder's
    own (a resume's check of its skipped files), survived."""
    from byol.folder_splits import held_out_folder
    for where in ("test/a.png", "other/b.png"):
        (tmp_path / where).parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / where)
    assert held_out_folder(tmp_path) is None
    (tmp_path / "train").mkdir()
    assert held_out_folder(tmp_path) == tmp_path / "test"
    folder = ImageFolder(tmp_path / "other", 8)
    folder.bad_files = {str(tmp_path / "other" / "x.png"): "empty file", str(tmp_path / "test" / "y.png"): "empty file",
                        str(tmp_path / "other2" / "z.png"): "empty file"}
    assert folder.skipped_inside() == 1


def test_dark_16_bit_gray_is_scaled_from_0_to_65535_in_every_format_that_stores_it(tmp_path):
    """A 16-bit file's values are 0..65535 even where its own are all under 256: PGM (and PNG before
    Pillow 10.3) open as 32-bit "I", which the 0..255 guess for I TIFFs would make 257 times brighter."""
    from byol.images import _to_rgb
    dark = np.tile(np.arange(0, 256, 16, dtype=np.uint16), (16, 1))  # 0..240 of 65535: all but black
    # A 16-bit PGM written by hand, byte for byte as Pillow 11 writes it (Pillow 10 writes none)
    (tmp_path / "dark.pgm").write_bytes(b"P5\n16 16\n65535\n" + dark.astype(">u2").tobytes())
    for name in ("dark.pgm", "dark.png", "dark.tif"):
        path = tmp_path / name
        if name != "dark.pgm":
            Image.fromarray(dark).save(path)
        assert decode_image(str(path), 16).max() == 1, name  # 240 * 255 / 65535, rounded
    as_old_pillow_opens_png = Image.fromarray(dark.astype(np.int32))  # mode "I"
    assert np.asarray(_to_rgb(as_old_pillow_opens_png, "PNG")).max() == 1
    assert np.asarray(_to_rgb(as_old_pillow_opens_png, "TIFF")).max() == 240  # a 32-bit TIFF: 0..255 it is


def test_a_big_endian_16_bit_tiff_is_scaled_as_a_little_endian_one(tmp_path):
    """A mutation audit: taking only "I;16" for 16-bit gray survived. A big-endian TIFF (a Mac's, a scientific
    camera's) opens as "I;16B", which Pillow's own conversion clips at 255: all but the darkest pixels white."""
    gray = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (16, 1))
    Image.frombytes("I;16B", (16, 16), gray.astype(">u2").tobytes()).save(tmp_path / "big_endian.tif")
    with Image.open(tmp_path / "big_endian.tif") as im:
        assert im.mode == "I;16B"
    image = decode_image(str(tmp_path / "big_endian.tif"), 16)
    assert np.array_equal(image[0].numpy(), (gray.astype(np.int64) * 255 + 32767) // 65535)
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])


@pytest.mark.parametrize("shape", ["wide", "tall"])
def test_an_image_is_cut_to_its_middle_square(tmp_path, shape):
    """A mutation audit: a crop box at a landscape image's left edge survived (the tests' wide image was turned
    upright by its EXIF, so only a portrait one was cut), and then one at a portrait image's top edge. Of red, green
    and blue thirds (left to right, or top to bottom), the middle, green, is kept."""
    def box(third):  # (left, top, right, bottom) of the third-th of three squares of 16
        return (16 * third, 0, 16 * third + 16, 16) if shape == "wide" else (0, 16 * third, 16, 16 * third + 16)
    image = Image.new("RGB", (48, 16) if shape == "wide" else (16, 48), (255, 0, 0))
    image.paste((0, 255, 0), box(1))
    image.paste((0, 0, 255), box(2))
    image.save(tmp_path / f"{shape}.png")
    image = decode_image(str(tmp_path / f"{shape}.png"), 16)
    assert image.shape == (3, 16, 16) and image[0].eq(0).all() and image[1].eq(255).all() and image[2].eq(0).all()


def test_an_image_whose_exif_cannot_be_read_is_decoded_as_stored(tmp_path, monkeypatch):
    """A mutation audit: letting a malformed EXIF's error through survived: the image was skipped as undecodable
    rather than kept in its stored orientation (Pillow's exif_transpose raises on some, as Pillow 9.1 did on any
    TIFF once loaded)."""
    def malformed(image, **kwargs):
        raise SyntaxError("not a TIFF file (header b'\\x00\\x00' not valid)")

    monkeypatch.setattr(ImageOps, "exif_transpose", malformed)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "photo.jpg", quality=100)
    image = decode_image(str(tmp_path / "photo.jpg"), 8)
    assert image.shape == (3, 8, 8) and (image.float().mean((1, 2)) - torch.tensor([10.0, 20, 30])).abs().max() < 3


def test_skipped_files_txt_is_written_only_when_a_file_was_skipped(tmp_path):
    """No file for a run that skipped nothing (it wrote an empty one), and an empty one that an earlier
    version left is removed; a list is written whole."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    ds = ImageFolder(tmp_path / "images", size=8)
    listed = tmp_path / "skipped_files.txt"
    assert ds.write_skipped(listed) == 0 and not listed.exists()
    listed.write_text("")
    assert ds.write_skipped(listed) == 0 and not listed.exists()
    ds.bad_files = {"/x/bad.jpg": "empty file"}
    assert ds.write_skipped(listed) == 1 and listed.read_text() == "/x/bad.jpg\tempty file\n"


def test_images_over_pillows_bomb_warning_decode_and_over_its_error_are_skipped(tmp_path, monkeypatch):
    """A 100-megapixel photo is over Pillow's decompression-bomb warning (89 million pixels) but not
    its error (twice that): it decodes. Checked with the limit lowered to 1,000 pixels."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("RGB", (40, 40), (10, 20, 30)).save(tmp_path / "warned.png")  # 1,600 pixels: a warning
    Image.new("RGB", (50, 50)).save(tmp_path / "refused.png")  # 2,500: over twice the limit
    assert decode_image(str(tmp_path / "warned.png"), 8)[:, 0, 0].tolist() == [10, 20, 30]
    with pytest.raises(Image.DecompressionBombError):
        decode_image(str(tmp_path / "refused.png"), 8)


def test_a_link_to_a_class_folder_inside_the_root_leaves_its_images_their_class(tmp_path, fault_table):
    """a/link_to_b -> b: b's images are read once, in b (walked first through the link, they had been
    filed under a, and class b had gone)."""
    for name in ("a/0.png", "b/0.png", "b/1.png"):
        img(tmp_path / "set" / name)
    (tmp_path / "set" / "a" / "link_to_b").symlink_to(tmp_path / "set" / "b")
    (tmp_path / "outside").mkdir()
    img(tmp_path / "outside" / "2.png")
    (tmp_path / "set" / "a" / "link_out").symlink_to(tmp_path / "outside")  # outside the root: followed
    ds = ImageFolder(tmp_path / "set", size=8)
    names = [os.path.relpath(p, ds.root) for p in ds.paths]
    assert ds.classes == ["a", "b"] and names == ["a/0.png", "a/link_out/2.png", "b/0.png", "b/1.png"]
    assert ds.labels.tolist() == [0, 0, 1, 1]
    # said, as a user test at ImageNet scale met a link to / that read 4 million files without a word
    assert ds.notes() == [f"the images of 1 symbolic link out of {ds.root} are read as its own: "
                          f"{ds.root}/a/link_out -> {os.path.realpath(tmp_path / 'outside')}"]
    fault_table("image folder: a symbolic link in class folder a to class folder b, and one to a folder outside",
                "b's images read once, in b, with b's label; the outside folder's read as a's, and said")


def test_the_folders_a_note_names_are_written_on_its_one_line(tmp_path):
    """A link or run folder whose name holds a line break broke its note in two, where skipped_files.txt and
    embed's paths write it as \\n."""
    from byol.config import Config, config_text
    for name in ("a/0.png", "b/0.png", "b/run\nfolder/loss.png", "out\nside/1.png"):
        img(tmp_path / name)
    (tmp_path / "b" / "run\nfolder" / "config.yaml").write_text(config_text(Config()))
    (tmp_path / "a" / "link\nout").symlink_to(tmp_path / "out\nside")
    ds = ImageFolder(tmp_path / "a", size=8)
    assert ds.notes() == [f"the images of 1 symbolic link out of {ds.root} are read as its own: "
                          f"{ds.root}/link\\nout -> {os.path.realpath(tmp_path)}/out\\nside"]
    assert ImageFolder(tmp_path / "b", size=8).notes() == [
        f"left out {tmp_path}/b/run\\nfolder: a byol run's folder (its plots are not data)"]


def test_the_folders_of_byol_runs_inside_the_root_are_left_out(tmp_path, fault_table):
    """A run whose train.out_dir lies in its data.root writes plots there (loss.png, ...): a folder that
    a new run would take for a run's (byol's config.yaml, or checkpoints/*.pt) is left out at any depth,
    so no class "runs" appears and a resumed run lists what its first start listed."""
    from byol.config import Config, config_text
    root = tmp_path / "set"
    for name in ("a/0.png", "b/0.png", "runs/new/loss.png", "a/old/loss.png", "b/hand/loss.png"):
        img(root / name)
    (root / "runs" / "new" / "config.yaml").write_text(config_text(Config()))
    (root / "a" / "old" / "checkpoints").mkdir()
    (root / "a" / "old" / "checkpoints" / "last.pt").write_bytes(b"")  # a run from before config.yaml's header
    (root / "b" / "hand" / "config.yaml").write_text("model:\n  width: 8\n")  # written by hand: not a run's
    ds = ImageFolder(root, size=8)
    names = [os.path.relpath(p, ds.root) for p in ds.paths]
    assert ds.classes == ["a", "b"] and names == ["a/0.png", "b/0.png", "b/hand/loss.png"]
    assert ds.runs == ["a/old", "runs/new"] and ds.others == {".yaml": 1}  # the runs' files not counted either
    assert ds.runs_note() == (f"left out {root / 'a' / 'old'}, {root / 'runs' / 'new'}: byol runs' folders "
                              "(their plots are not data)")
    assert ImageFolder(root / "a", size=8).runs_note() == \
        f"left out {root / 'a' / 'old'}: a byol run's folder (its plots are not data)"
    assert ImageFolder(root / "runs" / "new", size=8).runs == []  # a run's folder named as the root is read
    fault_table("image folder: byol run folders inside the root (byol's config.yaml; checkpoints/*.pt) beside "
                "one with a config.yaml written by hand",
                "the runs' folders left out, with a note naming them; the other read")


def test_a_named_pipe_among_the_images_is_skipped_not_waited_on(tmp_path, fault_table):
    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)
    # Without the check, decoding would open the pipe and wait for a writer: this one writes junk and
    # closes, so that a broken check fails the test (a decode error) instead of hanging it.
    def write():
        with contextlib.suppress(BrokenPipeError):  # the reader below leaves at once
            pipe.write_bytes(b"not a picture")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with pytest.raises(OSError, match="not a regular file"):
        decode_image(str(pipe), 8)
    os.close(os.open(pipe, os.O_RDONLY | os.O_NONBLOCK))  # lets the writer's open return
    writer.join(timeout=5)
    fault_table("image folder: a named pipe called pipe.jpg", "skipped as not a regular file; not opened, so no wait")


# ----------------------------------------------------------------------------------- TensorBatches

def _set(n=103):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    return images, torch.arange(n) * 10


def _epoch(batches, epoch):
    batches.set_epoch(epoch)
    out = list(batches)
    assert len(out) == len(batches)
    for x, y, idx in out:
        assert torch.equal(x[:, 0, 0, 0].long(), idx) and torch.equal(y, idx * 10)
    return torch.cat([idx for _, _, idx in out])


def test_tensor_batches_epochs_are_seeded_permutations():
    images, labels = _set()
    b = TensorBatches(images, labels, batch_size=10, generator=3)
    e0, e1 = _epoch(b, 0), _epoch(b, 1)
    assert len(b) == 10 and len(e0) == 100 and len(set(e0.tolist())) == 100
    assert not torch.equal(e0, e1)
    seeded = torch.Generator().manual_seed(3)
    assert torch.equal(e0, _epoch(TensorBatches(images, labels, 10, generator=seeded), 0))
    assert not torch.equal(e0, _epoch(TensorBatches(images, labels, 10, generator=4), 0))
    full = TensorBatches(images, labels, 10, drop_last=False, generator=3)
    assert len(full) == 11 and sorted(_epoch(full, 0).tolist()) == list(range(103))
    assert len(list(full)[-1][2]) == 3
    plain = TensorBatches(images, None, 10, shuffle=False)
    assert torch.equal(torch.cat([i for _, _, i in plain]), torch.arange(100))
    assert all(y is None for _, y, _ in plain)
    with pytest.raises(DataError, match="smaller batch size"):
        TensorBatches(images, labels, 60, world_size=2)


def test_the_first_images_and_those_taken_by_index_keep_where_each_comes_from():
    """A mutation audit: ``first`` that kept all the indices, and ``take`` of a set whose indices are not 0..N-1
    (a folder decoded without its bad files) that gave the positions taken, not the sources, survived."""
    images, labels = _set(6)
    s = ImageSet(images, labels, indices=torch.tensor([2, 3, 5, 7, 11, 13]))
    head = s.first(4)
    assert head.indices.tolist() == [2, 3, 5, 7] and head.labels.tolist() == [0, 10, 20, 30]
    taken = s.take(torch.tensor([5, 1, 2]))
    assert taken.indices.tolist() == [13, 3, 5] and taken.labels.tolist() == [50, 10, 20]
    assert taken.images[:, 0, 0, 0].tolist() == [5, 1, 2]
    assert s.first(2).take(torch.tensor([1])).indices.tolist() == [3]
    assert ImageSet(images, labels).take(torch.tensor([4, 0])).indices.tolist() == [4, 0]


def test_tensor_batches_ranks_are_disjoint():
    images, labels = _set()
    r0, r1 = (TensorBatches(images, labels, 10, generator=5, rank=r, world_size=2) for r in (0, 1))
    for epoch in (0, 1):
        a, b = _epoch(r0, epoch), _epoch(r1, epoch)
        assert len(r0) == len(r1) == 5 and len(a) == len(b) == 50
        assert not set(a.tolist()) & set(b.tolist())
    p0, p1 = (TensorBatches(images, labels, 10, drop_last=False, generator=5, rank=r, world_size=2)
              for r in (0, 1))
    a, b = _epoch(p0, 0), _epoch(p1, 0)
    assert len(a) == len(b) == 52 and set(a.tolist()) | set(b.tolist()) == set(range(103))


def test_folder_loaders_start_at_most_one_decoding_process_per_core(jpg_folder):
    ds = ImageFolder(jpg_folder[0], size=32)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert folder_loader(ds, 4, workers=cores + 5).num_workers == cores  # torch warns above that
    assert folder_loader(ds, 4, workers=0).num_workers == 0


def test_data_home_follows_data_on_device():
    # Where the training set's tensor lives: no GPU is needed to decide, only its memory size.
    gpu, cpu, gib = torch.device("cuda", 0), torch.device("cpu"), 2 ** 30
    assert data_home("auto", 3 * gib, gpu, capacity=80 * gib) == gpu    # CIFAR or STL-10 on any GPU
    assert data_home("auto", 20 * gib, gpu, capacity=80 * gib) == gpu   # a quarter: still fits
    assert data_home("auto", 21 * gib, gpu, capacity=80 * gib) == cpu   # more: host memory
    assert data_home(True, 60 * gib, gpu, capacity=80 * gib) == gpu   # asked for: as asked
    assert data_home(False, 1, gpu, capacity=80 * gib) == cpu
    assert data_home("auto", 60 * gib, torch.device("mps"), capacity=None) == torch.device("mps")  # size unknown
    assert all(data_home(s, 1, cpu) == cpu for s in ("auto", True, False))


# ----------------------------------------------------------------------------------- build_dataset

@needs_cifar
def test_build_dataset(tmp_path):
    s = build_dataset("cifar10", str(SHARED / "cifar10"), "test", None, False)
    assert isinstance(s, ImageSet) and len(s) == 10000
    (tmp_path / "train" / "cls").mkdir(parents=True)
    Image.new("RGB", (5, 5)).save(tmp_path / "train" / "cls" / "a.png")
    folder = build_dataset("folder", str(tmp_path), "train", 16, False)
    assert isinstance(folder, ImageFolder) and folder.classes == ["cls"] and folder.size == 16
    with pytest.raises(DataError, match="needs an image size"):
        build_dataset("folder", str(tmp_path), "train", None, False)
    with pytest.raises(DataError, match="cifar10, cifar100, stl10, folder"):
        build_dataset("imagenet", str(tmp_path), "train", 224, False)


def test_a_folder_of_images_read_as_cifar_or_stl10_gets_a_hint(tmp_path):
    """The default data set is CIFAR-10: a folder of one's own images given as data.root is told
    to set data.dataset=folder; a folder without images is not."""
    (tmp_path / "images" / "cats").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "cats" / "a.png")
    (tmp_path / "layout" / "train" / "cats").mkdir(parents=True)  # ROOT/train/<class>: two levels down
    Image.new("RGB", (8, 8)).save(tmp_path / "layout" / "train" / "cats" / "a.png")
    (tmp_path / "camera").mkdir()  # a camera's names: IMG_0001.JPG
    Image.new("RGB", (8, 8)).save(tmp_path / "camera" / "IMG_0001.JPG", format="JPEG")
    (tmp_path / "empty").mkdir()
    for load in (lambda root: load_cifar(root, "cifar10", "train"), lambda root: load_stl10(root, "train")):
        for images in ("images", "layout", "camera"):
            with pytest.raises(DataError, match="it holds image files: .* set --data.dataset=folder$"):
                load(tmp_path / images)  # and nothing after it: no advice to put CIFAR's files there
        with pytest.raises(DataError) as error:
            load(tmp_path / "empty")
        assert "dataset=folder" not in str(error.value) and "put the files there" in str(error.value)


def test_a_resume_on_a_folder_whose_files_changed_says_so(tmp_path, capsys, monkeypatch):
    """A user test: an image added to the folder between a stop and the resume gave other weights,
    and nothing said why (only another number of steps an epoch was said). One renamed, the count the
    same, and files taken out so that the run was finished at once, were not said either."""
    import shutil
    from byol.folder import ImageFolder
    digests, digest = [], ImageFolder.names_digest
    monkeypatch.setattr(ImageFolder, "names_digest", lambda self: digests.append(1) or digest(self))
    from byol.config import load_config
    from byol.resume import resume_config
    from byol.train import pretrain
    from conftest import tiny_overrides
    root = extract_jpegs(tmp_path / "photos", per_class=2)  # 20 images: 5 steps of 4 an epoch
    run = tmp_path / "run"
    pretrain(load_config("cifar10-cpu", tiny_overrides(run, **{"data.limit": "null", "train.batch_size": 4}) + [
        f"--data.root={root}", "--data.dataset=folder", "--train.knn_every=-1", "--train.max_steps=1"]))
    shutil.copy(next((root / "cat").iterdir()), root / "cat" / "added.jpg")  # 21: still 5 steps an epoch
    capsys.readouterr()
    digests.clear()
    pretrain(resume_config(None, [f"--train.out_dir={run}", "--train.max_steps=2"]), resume=True)
    assert len(digests) == 1  # the resume's comparison and the checkpoint's record: one digest of the names
    err = capsys.readouterr().err
    assert "note: the data now holds 21 images, the checkpoint's run 20: the batches from here are not those the " \
        "run would have had" in err, err
    pretrain(resume_config(None, [f"--train.out_dir={run}", "--train.max_steps=3"]), resume=True)
    assert "the data now holds" not in capsys.readouterr().err  # the same images as the last start's
    # Another file in place of one, the count the same: that was silent (the ImageNet-scale user test).
    (root / "cat" / "added.jpg").rename(root / "cat" / "renamed.jpg")
    pretrain(resume_config(None, [f"--train.out_dir={run}", "--train.max_steps=4"]), resume=True)
    assert "note: the data now holds other files than the checkpoint's run (as many, 21, with other names): the " \
        "batches from here are not those the run would have had" in capsys.readouterr().err
    # Files taken out, so that the run's epochs end before its step: said as the reason it is finished.
    pretrain(resume_config(None, [f"--train.out_dir={run}", "--train.max_steps=null", "--train.epochs=1"]),
             resume=True)  # step 5 of 5: finished
    for c in ("dog", "frog", "horse", "ship", "truck"):
        shutil.rmtree(root / c)  # 11 images: 2 steps an epoch
    capsys.readouterr()
    pretrain(resume_config(None, [f"--train.out_dir={run}", "--train.epochs=2"]), resume=True)
    err = capsys.readouterr().err
    assert "note: the data now makes 2 steps an epoch, the checkpoint's run 5: its 2 epochs now end at step 4, " \
        "before the checkpoint's step 5" in err and "is finished: step 5, and train.epochs=2 ends it" in err, err


def test_a_finished_run_whose_data_now_ends_its_epochs_at_its_checkpoint_says_at_not_before(capsys):
    """From a review: the note said "before the checkpoint's step 4" of epochs that now end at step 4."""
    from byol.config import load_config
    from byol.resume import _note_ended_by_data
    config = load_config("cifar10-cpu", ["--train.epochs=2"])
    for step, where in ((4, "at"), (5, "before")):  # 2 epochs of 5 steps ran 10; of 2 steps they end at 4
        _note_ended_by_data({"step": step, "extra": {"steps_per_epoch": 5}}, config, 2)
        assert capsys.readouterr().err == (f"note: the data now makes 2 steps an epoch, the checkpoint's run 5: its 2 "
                                           f"epochs now end at step 4, {where} the checkpoint's step {step}\n")
    _note_ended_by_data({"step": 10, "extra": {"steps_per_epoch": 5}}, config, 2)  # finished with its own data
    assert capsys.readouterr().err == ""

def test_a_folder_run_whose_data_moved_or_is_too_small_is_one_sentence_that_says_what_to_do(tmp_path, fault_table):
    """A user test: a resume after the data folder moved said "check the path" (not --data.root), a
    data.root that is a file "does not exist", and a folder of one image "the 1 images"."""
    from byol.config import load_config
    from byol.pipeline import image_root
    from byol.resume import resume_config
    from byol.train import pretrain
    from conftest import tiny_overrides
    root = extract_jpegs(tmp_path / "photos", per_class=2)
    run = tmp_path / "run"
    folder_run = [f"--data.root={root}", "--data.dataset=folder", "--train.knn_every=-1", "--train.max_steps=1"]
    pretrain(load_config("cifar10-cpu", tiny_overrides(run, **{"data.limit": "null"}) + folder_run))
    root.rename(tmp_path / "moved")
    with pytest.raises(DataError, match=rf"^image folder {root} does not exist; where the data "
                                        r"moved since the run, resume with --data.root=NEW$"):
        pretrain(resume_config(None, [f"--train.out_dir={run}", "--train.max_steps=2"]), resume=True)
    fault_table("image folder moved before --resume", "one sentence saying to resume with --data.root=NEW")
    with pytest.raises(DataError, match=rf"^image folder {tmp_path / 'nowhere'} does not exist; "
                                        "check the path$"):  # a new root given, and wrong: not told to give one
        pretrain(resume_config(None, [f"--train.out_dir={run}", f"--data.root={tmp_path / 'nowhere'}"]), resume=True)
    (tmp_path / "file").write_text("")  # (a user test: pretrain said a file given as data.root might not exist)
    with pytest.raises(DataError, match=rf"^image folder {tmp_path / 'file'} is not a folder; check the path$"):
        pretrain(load_config("cifar10-cpu", tiny_overrides(tmp_path / "run2", **{"data.root": tmp_path / "file"})
                             + folder_run[1:]))
    one = tmp_path / "one"
    (one / "cat").mkdir(parents=True)
    next((tmp_path / "moved" / "cat").iterdir()).rename(one / "cat" / "only.jpg")
    with pytest.raises(DataError, match=r"^a batch of 16 images does not fit in the 1 image of .*; training needs "
                                        r"at least two, for a batch of two$"):
        pretrain(load_config("cifar10-cpu", tiny_overrides(tmp_path / "run1", **{"data.root": one}) + folder_run[1:]))
    with pytest.raises(DataError, match=r"^the image folder .*only\.jpg \(data\.root\) is a file, not a folder; "):
        image_root(one / "cat" / "only.jpg")
    fault_table("image folder of one image", "one sentence: a batch does not fit in the 1 image, training needs two")
    fault_table("data.root naming a file, not a folder (eval, embed)", "one sentence saying it is a file")


def test_decoding_processes_that_cannot_start_are_one_sentence_and_leave_no_process(tmp_path, monkeypatch,
                                                                                   fault_table):
    """A user test in a container whose /dev/shm was full: the second decoding process's queue could not
    be made, and the run printed a traceback and then waited for ever on the first one, which ignores
    SIGTERM (as a job's decoding processes must) and so outlived Python's exit."""
    import errno
    import gc
    import multiprocessing
    import re
    import sys
    folder = ImageFolder(extract_jpegs(tmp_path / "images", per_class=2), size=16)
    made = []
    queue = torch.multiprocessing.Queue

    def shm_full_at_the_second(*args, **kwargs):  # the results' queue, the first process's (started), ...
        made.append(1)
        if len(made) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return queue(*args, **kwargs)

    monkeypatch.setattr(torch.multiprocessing, "Queue", shm_full_at_the_second)
    ignored = []  # what Python would print as "Exception ignored in" (the half-built iterator's __del__)
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)
    others = multiprocessing.active_children()  # (torch 2.2's torch.compile, in an earlier test, forks 2 of its own)
    try:
        next(iter(folder_loader(folder, batch_size=4, workers=2)))
    except DataError as e:
        said = str(e)
    gc.collect()  # the error, its traceback and what it held are gone
    assert re.fullmatch(r"the 2 image decoding processes \(data.workers\) could not be started \(No space left on "
                        r"device\); shared memory, /dev/shm .*, is full: give it more \(docker run --shm-size=8g\) "
                        r"or lower data.workers \(0: decode in this process\)", said), said
    assert multiprocessing.active_children() == others
    assert ignored == [], [str(u.exc_value) for u in ignored]
    fault_table("shared memory (/dev/shm) full when the decoding processes start",
                "one sentence naming /dev/shm and data.workers; the processes already started are ended, "
                "no hang at exit")


def test_shared_memory_full_mid_pass_is_one_sentence_not_a_hang(tmp_path, monkeypatch, fault_table):
    """A user test in Docker's 64 MB /dev/shm: a decoding process's batch found no room there when its queue's
    feeder thread pickled it; that thread printed torch's traceback and dropped it, and the run waited for it for
    ever (SIGTERM too, the step never ending)."""
    import multiprocessing
    folder = ImageFolder(extract_jpegs(tmp_path / "images", per_class=2), size=16)
    main = os.getpid()
    share = torch.UntypedStorage._share_fd_cpu_

    def shm_full_in_decoding_processes(self, *args, **kwargs):
        if os.getpid() != main:
            raise RuntimeError("unable to allocate shared memory(shm) for file </torch_1_2_0>: No space left on "
                               "device (28)")
        return share(self, *args, **kwargs)

    monkeypatch.setattr(torch.UntypedStorage, "_share_fd_cpu_", shm_full_in_decoding_processes)
    others = multiprocessing.active_children()
    loader = folder_loader(folder, batch_size=4, workers=2, persistent=False)
    loader.timeout = 20  # without the fix: "DataLoader timed out", not a wait for ever
    with pytest.raises(DataError) as e:
        next(iter(loader))
    assert str(e.value).startswith("shared memory, /dev/shm"), str(e.value)
    assert "docker run --shm-size=8g" in str(e.value) and "data.workers (0: decode in this process)" in str(e.value)
    assert multiprocessing.active_children() == others
    fault_table("shared memory (/dev/shm) full while the decoding processes hand over a batch (Docker's 64 MB)",
                "one sentence naming /dev/shm, the batches' size and what to lower; no traceback, no hang")


def test_a_read_only_dev_shm_is_named_when_decoding_processes_cannot_start():
    """A user test with /dev/shm mounted read-only: the sentence said "Read-only file system", not where."""
    import errno
    from byol.decoding_processes import _not_started
    for e in (OSError(errno.EROFS, "Read-only file system"), OSError(errno.EACCES, "Permission denied")):
        said = _not_started(2, e)  # (a mutation audit: a /dev/shm the user may not write was not named)
        assert "/dev/shm" in said and "data.workers (0: decode in this process)" in said, said


def test_only_torch_s_error_for_a_full_dev_shm_is_taken_for_one():
    """A mutation audit: taking any decoding process's error for a full /dev/shm survived every test, and a
    process killed mid-pass would have been said to want more shared memory."""
    full = "DataLoader worker (pid 12) ... unable to allocate shared memory(shm) for file </torch_1>: No space left"
    assert _shared_memory_full(RuntimeError(full))
    assert not _shared_memory_full(RuntimeError("DataLoader worker (pid(s) 12) exited unexpectedly"))
    assert not _shared_memory_full(OSError(full))


def test_a_main_process_gone_mid_handover_leaves_no_traceback_from_a_decoding_process():
    """A CI run: a decoding process killed by the system ended the run with its one sentence, and beside it the
    traceback of a ConnectionResetError from another decoding process: the thread that hands a batch's memory to
    the main process (multiprocessing's resource sharer) lost its connection as the main process ended. Here the
    real sharer, in a process set up as a decoding process is, loses two connections (reset, and closed early);
    another thread's error, and a connection error of the main thread, are still told."""
    import subprocess
    script = (
        "import socket, struct, sys, threading, time\n"
        "from multiprocessing import resource_sharer\n"
        "from byol.decoding_processes import _start_decoding_process\n"
        "_start_decoding_process(0)\n"
        "shared = resource_sharer.DupFd(sys.stderr.fileno())\n"  # starts the sharer's thread, as a batch's handover
        "address = resource_sharer._resource_sharer._address\n"
        "for linger in (struct.pack('ii', 1, 0), None):\n"  # a reset, then a close before the handshake's answer
        "    s = socket.socket(socket.AF_UNIX)\n"
        "    s.connect(address)\n"
        "    s.recv(1)\n"  # the sharer's challenge has begun
        "    if linger: s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)\n"
        "    s.close()\n"
        "    time.sleep(0.5)\n"
        "def fails():\n"
        "    try:\n"
        "        raise ValueError('another error')\n"
        "    except ValueError:\n"
        "        sys.excepthook(*sys.exc_info())\n"
        "threading.Thread(target=fails).start()\n"
        "time.sleep(0.2)\n"
        "raise ConnectionResetError(104, 'of the main thread')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parent.parent)
    err = done.stderr
    assert "ValueError: another error" in err and "ConnectionResetError: [Errno 104] of the main thread" in err, err
    assert err.count("Traceback") == 2 and "_serve" not in err and "resource_sharer" not in err, err


def test_a_folder_decoded_into_memory_keeps_its_batches_in_shared_memory_small(tmp_path, monkeypatch):
    """A user test in Docker's 64 MB /dev/shm: the kNN monitor's folders were decoded in batches of 256 images of
    256 x 256 (48 MiB each, two for each decoding process at once), which could never fit there."""
    from byol import decoding_processes, loaders
    folder = ImageFolder(extract_jpegs(tmp_path / "images", per_class=1), size=256)
    sizes = []
    real = loaders._SkippingLoader

    def recording(*args, **kwargs):
        sizes.append(kwargs["batch_size"])
        return real(*args, **kwargs)

    monkeypatch.setattr(loaders, "_SkippingLoader", recording)
    monkeypatch.setattr(loaders, "usable_cores", lambda: 2)  # the folder's decoding processes, and the loader's
    monkeypatch.setattr(decoding_processes, "usable_cores", lambda: 2)
    assert len(loaders.load_folder_tensor(folder, workers=2).images) == 10
    assert sizes and sizes[0] * 3 * 256 * 256 * 2 * 2 <= 32 * 2**20, sizes


def test_a_folder_decoded_into_memory_says_how_far_it_is_every_few_dozen_images(tmp_path, monkeypatch, capsys):
    """A user test on a folder of big photos (12 MP JPEGs and PNGs, 0.06-0.7 s each): the kNN monitor's decoding
    said how far it was first after 26 s, not 5, as it counted at each batch of 256 images."""
    from byol import loaders
    folder = ImageFolder(extract_jpegs(tmp_path / "images", per_class=7), size=8)
    monkeypatch.setattr(loaders, "SlowNotes", _every_batch(loaders.SlowNotes))
    assert len(loaders.load_folder_tensor(folder, workers=0).images) == 70
    counts = [int(m) for m in re.findall(r": (\d+) done, ", capsys.readouterr().err)]
    assert counts and max(b - a for a, b in zip([0] + counts, counts + [70])) <= 64, counts


def _every_batch(slow_notes):
    """SlowNotes that say how far a wait is each time they are told (at once, then again at each count)."""
    class EveryBatch(slow_notes):
        def now(self, count: int) -> None:
            self.clock.next = 0.0
            super().now(count)
    return EveryBatch


def _interrupt_at(where: str, monkeypatch) -> None:
    """A Ctrl-C (KeyboardInterrupt) as a folder's decoding processes start, or while a batch is awaited."""
    import multiprocessing.process
    from torch.utils.data import dataloader
    if where == "a process just started":  # forked, not yet in torch's list of its processes
        start = multiprocessing.process.BaseProcess.start

        def started_then_interrupted(self):
            start(self)
            raise KeyboardInterrupt
        monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", started_then_interrupted)
        return
    method = "_reset" if where == "the first indices sent" else "_try_get_data"
    real = getattr(dataloader._MultiProcessingDataLoaderIter, method)

    def then_interrupted(self, *args, **kwargs):
        if where == "the first indices sent":
            real(self, *args, **kwargs)  # torch has the processes' pids: ended by a signal, they fail this one
        raise KeyboardInterrupt
    monkeypatch.setattr(dataloader._MultiProcessingDataLoaderIter, method, then_interrupted)


@pytest.mark.parametrize("where", ["a process just started", "the first indices sent", "a batch awaited"])
def test_a_ctrl_c_while_a_folder_is_decoded_leaves_no_decoding_process(tmp_path, monkeypatch, where, fault_table):
    """A user test of the Python API in one process (a notebook, a sweep): a Ctrl-C during pretrain's kNN
    images of a folder left, where it came as the decoding processes started, one that nothing ended (it
    ignores SIGTERM), so that the process hung at its exit, joining it; or, while a batch was awaited, all
    of them as long as the notebook kept the traceback."""
    import gc
    import multiprocessing
    import sys
    import time
    from byol.decoding_processes import end_processes
    folder = ImageFolder(extract_jpegs(tmp_path / "images", per_class=2), size=16)
    ignored = []  # what Python would print as "Exception ignored in" (the half-built iterator's __del__)
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)
    before = set(multiprocessing.active_children())  # another test's, if any: not this one's to judge
    try:
        with pytest.MonkeyPatch.context() as interrupting, pytest.raises(KeyboardInterrupt) as interrupted:
            _interrupt_at(where, interrupting)
            load_folder_tensor(folder, workers=2)
        assert interrupted.traceback  # held, as a notebook holds it
        time.sleep(0.2)  # (a process ended by a signal torch still watched would fail this one by now)
        assert set(multiprocessing.active_children()) <= before
        del interrupted
        gc.collect()
        assert ignored == [], [str(u.exc_value) for u in ignored]
    finally:
        end_processes(set(multiprocessing.active_children()) - before)  # (without the fix: no hang at exit)
    fault_table(f"Ctrl-C in Python (KeyboardInterrupt) while a folder is decoded: {where}",
                "KeyboardInterrupt; every decoding process started is ended at once, also while the traceback is "
                "kept (a notebook keeps it); no hang at exit")


def test_a_ctrl_c_while_the_decoding_processes_are_busy_ends_them_at_once(tmp_path, monkeypatch, fault_table):
    """A user test: a Ctrl-C while a folder of big photos was decoded (pretrain's kNN images, 256 to a
    batch) was acted on 15 s later with 2 decoding processes: torch's shutdown waits 5 s for each busy
    one to finish its batch, then sends it SIGTERM, which decoding processes ignore, and waits 5 s more."""
    import multiprocessing
    import time
    from byol import folder as folder_module
    from byol.decoding_processes import end_processes
    from torch.utils.data import dataloader
    folder = ImageFolder(extract_jpegs(tmp_path / "images", per_class=2), size=16)

    def slow_decode(path, size):  # a big photo's decoding, in the (forked) decoding processes
        time.sleep(60)
    monkeypatch.setattr(folder_module, "decode_image", slow_decode)
    real = dataloader._MultiProcessingDataLoaderIter._try_get_data

    def interrupted_while_awaited(self, *args, **kwargs):
        time.sleep(0.5)  # the processes are well into their batches
        raise KeyboardInterrupt
    monkeypatch.setattr(dataloader._MultiProcessingDataLoaderIter, "_try_get_data", interrupted_while_awaited)
    before = set(multiprocessing.active_children())
    try:
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            load_folder_tensor(folder, workers=2)
        assert time.monotonic() - start < 8  # (1 s; torch's own shutdown: 10 s and more; a loaded machine: room)
        assert set(multiprocessing.active_children()) <= before
    finally:
        monkeypatch.setattr(dataloader._MultiProcessingDataLoaderIter, "_try_get_data", real)
        end_processes(set(multiprocessing.active_children()) - before)
    fault_table("Ctrl-C in Python (KeyboardInterrupt) while the decoding processes are busy with a batch",
                "KeyboardInterrupt in a second or two, not 10 s and more: the busy decoding processes are killed, "
                "not awaited")


def test_a_training_run_s_kept_decoding_processes_are_ended_at_once_busy_or_not(tmp_path, monkeypatch):
    """A review: a run stopped by a signal (or ended) closed its kept decoding processes with torch's shutdown,
    which waits 5 s for each busy one and 5 s more after a SIGTERM they ignore (TrainData.close)."""
    import multiprocessing
    import time
    import types
    from byol import folder as folder_module
    from byol.decoding_processes import _SkippingLoader, end_processes, skip_collate
    from byol.train_data import TrainData
    from torch.utils.data import DataLoader
    folder = ImageFolder(extract_jpegs(tmp_path / "images", per_class=2), size=16)

    def slow_decode(path, size):  # a big photo's decoding, in the (forked) decoding processes
        time.sleep(60)
    monkeypatch.setattr(folder_module, "decode_image", slow_decode)
    before = set(multiprocessing.active_children())
    loader = _SkippingLoader(folder, batch_size=4, num_workers=2, collate_fn=skip_collate, persistent_workers=True)
    try:
        DataLoader.__iter__(loader)  # the processes started and given their first batches (kept: _iterator)
        time.sleep(0.5)
        start = time.monotonic()
        TrainData.close(types.SimpleNamespace(batches=loader))
        assert time.monotonic() - start < 5  # (0.02 s; torch's own shutdown: 10 s and more)
        assert set(multiprocessing.active_children()) <= before and loader._iterator is None
    finally:
        end_processes(set(multiprocessing.active_children()) - before)


def test_decoding_processes_ended_at_once_leave_no_folder_in_tmp(tmp_path, monkeypatch):
    """A review: a decoding process hands its batches over by multiprocessing's resource sharer, whose socket
    is in a folder that the process makes (/tmp/pymp-*) and removes at its exit; killed (TrainData.close at
    every run's end, a Ctrl-C's pass), it left the folder behind, one a process and run (measured: 2 a run
    with 2). They take this process's, removed at its exit (checked as the folder they are started with: a
    look at /tmp would count other programs' folders)."""
    import multiprocessing
    import multiprocessing.process
    import types
    from byol.decoding_processes import _SkippingLoader, end_processes, skip_collate
    from byol.train_data import TrainData
    folder = ImageFolder(extract_jpegs(tmp_path / "images", per_class=2), size=8)
    # as in a fresh process (an earlier test may have made this one's folder)
    monkeypatch.delitem(multiprocessing.process.current_process()._config, "tempdir", raising=False)
    before = set(multiprocessing.active_children())
    loader = _SkippingLoader(folder, batch_size=2, num_workers=2, collate_fn=skip_collate, persistent_workers=True)
    try:
        next(iter(loader))
        started_with = [w._config.get("tempdir") for w in loader._iterator._workers]
    finally:
        TrainData.close(types.SimpleNamespace(batches=loader))
        end_processes(set(multiprocessing.active_children()) - before)
    own = multiprocessing.process.current_process()._config.get("tempdir")
    assert own is not None and started_with == [own, own]


def test_a_decoding_process_killed_while_handing_over_a_batch_is_torch_s_error_for_a_dead_one(tmp_path, monkeypatch):
    """A user test: the out-of-memory killer's SIGKILL to a decoding process as it handed a batch over reset the
    connection before torch found the process gone, and torch raised ConnectionResetError: a traceback where
    the command line says one sentence for a dead decoding process (tests/test_faults.py, once in some runs)."""
    import multiprocessing
    from torch.utils.data import dataloader
    from byol.error_lines import _decoding_process_died
    from byol.decoding_processes import _SkippingLoader, end_processes, skip_collate
    folder = ImageFolder(extract_jpegs(tmp_path / "images", per_class=2), size=8)

    def reset_as_it_dies(self, *args, **kwargs):
        os.kill(self._workers[0].pid, signal.SIGKILL)
        raise ConnectionResetError(104, "Connection reset by peer")  # before the process is seen gone
    monkeypatch.setattr(dataloader._MultiProcessingDataLoaderIter, "_try_get_data", reset_as_it_dies)
    before = set(multiprocessing.active_children())
    try:
        with pytest.raises(RuntimeError) as e:
            list(_SkippingLoader(folder, batch_size=4, num_workers=2, collate_fn=skip_collate))
        # the other process ended too, while the traceback is held (torch's SIGCHLD handler raised during the
        # wait for the dead one and skipped the ending: a script's exit then waited on it for ever)
        assert set(multiprocessing.active_children()) <= before
    finally:
        monkeypatch.undo()
        end_processes(set(multiprocessing.active_children()) - before)
    assert _decoding_process_died(e.value) is not None, e.value  # (torch's SIGCHLD handler may say it first)


def test_a_folder_that_cannot_be_listed_is_said_not_left_out_silently(tmp_path, monkeypatch, fault_table):
    """A user test: a class folder its permissions kept from being listed (chmod 000, as a user other than
    root) was left out with all its images and without a word, by pretrain, eval and embed: it is named
    in a note now; a root that cannot be listed is one sentence. (Root reads such folders anyway: the
    refusal is made here by os.scandir, which os.walk lists each folder with.)"""
    from byol.folder_splits import split_folder
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.new("RGB", (8, 8)).save(tmp_path / c / f"{i}.png")
    scandir, refused = os.scandir, set()

    def listing(path="."):
        if os.path.realpath(path) in refused:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)
    monkeypatch.setattr(os, "scandir", listing)
    refused.add(str(tmp_path / "b"))
    (tmp_path / "lost+found").mkdir()  # a mounted file system's own, which only root reads: no note for it
    refused.add(str(tmp_path / "lost+found"))
    folder = ImageFolder(tmp_path, 8)
    assert len(folder) == 2 and folder.classes == ["a"]
    assert folder.notes()[0] == (f"1 folder under {tmp_path} could not be read and is left out, with every image in "
                                 f"it: {tmp_path / 'b'} (Permission denied)")
    with pytest.raises(DataError, match=re.escape(f"cannot read the folder {tmp_path / 'b'} (Permission denied)")):
        folder.inside("b")
    refused.add(str(tmp_path))
    with pytest.raises(DataError, match=re.escape(f"cannot read the folder {tmp_path} (Permission denied); make it "
                                                  "readable, or point data.root elsewhere")):
        ImageFolder(tmp_path, 8)
    monkeypatch.setattr(Path, "is_dir", lambda self: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    with pytest.raises(DataError, match=re.escape(f"cannot read the folder {tmp_path} (Permission denied)")):
        split_folder(tmp_path, "train")  # (it said "[Errno 13] Permission denied: ROOT/train", not there)
    fault_table("a class folder that cannot be listed (its permissions); a data root that cannot be listed",
                "the folder is left out with its images and a note names it (an unreadable lost+found gets none); "
                "the root: one sentence")


def test_a_folder_that_cannot_be_listed_is_named_on_the_note_s_one_line(tmp_path, monkeypatch):
    """A mutation audit: the unreadable folders' note, unlike the links' and the runs', could name a folder whose name
    holds a line break as it is, breaking the note in two, and no test saw it."""
    for c in ("a", "b\nc"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / c / "0.png")
    scandir = os.scandir

    def listing(path="."):
        if os.path.realpath(path) == str(tmp_path / "b\nc"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)
    monkeypatch.setattr(os, "scandir", listing)
    assert ImageFolder(tmp_path, 8).notes()[0] == (f"1 folder under {tmp_path} could not be read and is left out, "
                                                   f"with every image in it: {tmp_path}/b\\nc (Permission denied)")


def test_a_rank_outside_the_processes_is_refused():
    images = torch.zeros(8, 3, 4, 4, dtype=torch.uint8)
    for rank in (-1, 2):
        with pytest.raises(ValueError, match=rf"^rank {rank} is not in 0\.\.1$"):
            TensorBatches(images, None, 2, rank=rank, world_size=2)
    assert len(TensorBatches(images, None, 2, rank=1, world_size=2)) == 2


def test_a_val_folder_that_is_a_link_to_train_is_refused_not_scored_against_itself(tmp_path):
    """A review: ROOT/val linked to ROOT/train (a folder without a held-out split, made to pass) had each image
    find itself at similarity 1: byol eval knn scored 100% at k=1 on an untrained encoder."""
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8), cls == "a" and "red" or "blue").save(tmp_path / "train" / cls / "x.png")
    (tmp_path / "val").symlink_to(tmp_path / "train")
    with pytest.raises(DataError, match=r"val is .*train itself \(a link to it\), so each of its images would be "
                                        r"its own nearest neighbour"):
        labeled_folders(tmp_path, size=8)
    (tmp_path / "val").unlink()
    (tmp_path / "val" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(tmp_path / "val" / "a" / "y.png")
    assert labeled_folders(tmp_path, size=8) is not None  # a val/ of its own is taken


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failing_storage_stops_the_pass_in_one_sentence_and_lists_no_file_as_undecodable(tmp_path, monkeypatch,
                                                                                          workers):
    """A disk's read errors, a stale NFS handle, a lost server: each file was skipped as undecodable, so a run
    trained on without the images of a storage that failed for a while, and listed them all in skipped_files.txt."""
    import byol.folder
    root = extract_jpegs(tmp_path / "photos", per_class=2)  # 20 images
    (root / "cat" / "empty.jpg").write_bytes(b"")  # a bad file: skipped as before
    folder = ImageFolder(root, 8)

    def one_pass() -> int:
        return sum(len(i) for _, _, i in folder_loader(folder, 4, workers, drop_last=False, persistent=False))

    assert one_pass() == 20 and folder.bad_files == {str(root / "cat" / "empty.jpg"): "empty file"}
    folder.bad_files.clear()
    for code in (errno.EIO, errno.ESTALE, errno.ENOTCONN, errno.EMFILE):
        def failing(path, size, code=code):
            raise OSError(code, os.strerror(code), path)
        monkeypatch.setattr(byol.folder, "decode_image", failing)  # before the pass: its processes inherit it
        with pytest.raises(DataError) as raised:
            one_pass()
        said = str(raised.value)
        cause = "the process may open no more files" if code == errno.EMFILE else "the storage it is on failed"
        assert re.match(rf"cannot read {re.escape(str(root))}/\w+/\w+\.jpg \({os.strerror(code)}, "
                        rf"{errno.errorcode[code]}\): {cause}", said) and "--resume" in said, said
        assert not folder.bad_files  # no good file listed as a bad one
    monkeypatch.undo()
    removed = root / "dog" / os.listdir(root / "dog")[0]
    removed.unlink()  # one file removed, its folder still there: the file's, skipped
    assert one_pass() == 19 and "No such file" in folder.bad_files[str(removed)] and len(folder.bad_files) == 2
    folder.bad_files.clear()
    root.rename(tmp_path / "moved")  # the folder moved away (or unmounted) after its scan
    with pytest.raises(DataError, match=r"\(No such file or directory, ENOENT\): the storage it is on failed"):
        one_pass()
    assert not folder.bad_files


def test_a_file_that_cannot_be_read_is_skipped_where_its_folder_can_and_stops_the_pass_where_it_cannot(
        tmp_path, monkeypatch):
    """Permissions: one file's (chmod 000) is the file's, skipped; its folder's changed mid-run, the storage's."""
    import byol.folder
    import byol.images
    root = extract_jpegs(tmp_path / "photos", per_class=1)
    folder = ImageFolder(root, 8)
    monkeypatch.setattr(byol.folder, "decode_image", lambda path, size: (_ for _ in ()).throw(
        PermissionError(errno.EACCES, "Permission denied", path)))
    assert list(folder_loader(folder, 2, 0, drop_last=False)) == [] and len(folder.bad_files) == 10
    assert all(r.startswith("PermissionError: [Errno 13] Permission denied") for r in folder.bad_files.values())
    monkeypatch.setattr(byol.images.os, "access", lambda path, mode: False)  # (root reads a chmod 000 folder)
    with pytest.raises(DataError, match=r"\(Permission denied, EACCES\): the storage it is on failed"):
        list(folder_loader(folder, 2, 0, drop_last=False))


@pytest.mark.parametrize("code", [errno.ENFILE, errno.ENODEV, errno.EHOSTDOWN, errno.ETIMEDOUT])
def test_each_failing_storage_s_or_open_file_limit_s_errno_is_said_as_such_not_skipped(tmp_path, code):
    """A mutation audit: the system's open-file limit (ENFILE) said as a failed storage, or a device gone (ENODEV)
    skipped as an undecodable file, survived every test (they tried EIO, ESTALE, ENOTCONN and EMFILE only)."""
    path = str(tmp_path / "x.jpg")
    said = storage_failure(path, OSError(code, os.strerror(code), path))
    limit = code == errno.ENFILE
    assert said is not None and said.startswith(f"cannot read {path} ({os.strerror(code)}, {errno.errorcode[code]}): ")
    assert ("the process may open no more files" in said) == limit and ("the storage it is on failed" in said) != limit


def test_a_folder_listed_but_not_entered_or_refused_by_eperm_is_the_storage_s_and_an_unreadable_file_its_own(
        tmp_path, monkeypatch):
    """A mutation audit: the folder check asking os.access for the file, for the folder's read alone (chmod a-x
    leaves it listed, not entered) or for EACCES alone (EPERM: an NFS root squash) survived every test, which made
    os.access refuse everything (root reads a chmod 000 folder, so os.access is made to say what the folder lets)."""
    import byol.images
    folder = str(tmp_path / "cat")
    path = os.path.join(folder, "x.jpg")
    monkeypatch.setattr(byol.images.os, "access", lambda p, mode: not (p == folder and mode & os.X_OK))  # chmod a-x
    for code in (errno.EACCES, errno.EPERM):
        said = storage_failure(path, PermissionError(code, os.strerror(code), path))
        assert said is not None and f"({os.strerror(code)}, {errno.errorcode[code]}): the storage it is on" in said
    monkeypatch.setattr(byol.images.os, "access", lambda p, mode: p != path)  # the file's own (chmod 000): skipped
    assert storage_failure(path, PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)) is None


def test_a_class_folder_linked_to_a_storage_that_went_away_stops_the_pass(tmp_path):
    """A mutation audit: a folder of links to class folders on another disk, that disk unmounted mid-run (each link
    left dangling), is the storage's; asking whether the folder exists (os.path.lexists: the link does) rather than
    whether it is a folder skipped every image as undecodable, and survived every test."""
    disk = extract_jpegs(tmp_path / "disk", per_class=1)
    root = tmp_path / "photos"
    root.mkdir()
    for cls in os.listdir(disk):
        (root / cls).symlink_to(disk / cls, target_is_directory=True)
    folder = ImageFolder(root, 8)
    assert len(folder) == 10
    disk.rename(tmp_path / "unmounted")
    with pytest.raises(DataError, match=r"\(No such file or directory, ENOENT\): the storage it is on failed"):
        list(folder_loader(folder, 2, 0, drop_last=False))
    assert not folder.bad_files


def test_a_batch_with_a_bad_file_and_a_failing_storage_s_stops_before_it_is_yielded(tmp_path, monkeypatch):
    """A mutation audit: raising only where every file of a batch failed with the storage (one batch holding an
    empty file too listed the storage's file as undecodable, and trained on), or after yielding the batch's good
    images, survived every test, whose storage failed under every file."""
    import byol.folder
    (tmp_path / "a").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), "red").save(tmp_path / "a" / f"{i}.png")
    (tmp_path / "a" / "empty.png").write_bytes(b"")  # a bad file, skipped before the storage fails
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a" / "z.png")
    folder = ImageFolder(tmp_path, 8)
    failing = str(tmp_path / "a" / "z.png")
    decode = byol.folder.decode_image

    def failing_at_z(path, size):
        if path == failing:
            raise OSError(errno.EIO, os.strerror(errno.EIO), path)
        return decode(path, size)
    monkeypatch.setattr(byol.folder, "decode_image", failing_at_z)
    yielded = []
    with pytest.raises(DataError, match=rf"^cannot read {re.escape(failing)} \({os.strerror(errno.EIO)}, EIO\)"):
        for batch in folder_loader(folder, 8, 0, shuffle=False, drop_last=False):  # (empty.png before z.png)
            yielded.append(batch)
    assert yielded == [] and list(folder.bad_files) == [str(tmp_path / "a" / "empty.png")]
