"""The data sets byol reads by name: CIFAR-10/100 and STL-10 from their files, or a folder of images.

CIFAR and STL-10 are read (or downloaded) into one :class:`~byol.data.ImageSet`, uint8 at their
own resolution; "folder" is an :class:`~byol.folder.ImageFolder` (``folder.py``).
:func:`build_dataset` picks one by its name in :data:`DATASETS`.
"""

import functools
import pickle
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .data import DataError, ImageSet
from .dataset_files import (CIFAR_BINARY, CIFAR_PICKLE, STL_DIR, FilesNotFound, describe, download_archive,
                            find_layout, lacking_files)
from .distributed import note
from .folder import ImageFolder
from .folder_splits import split_folder

DATASETS = ("cifar10", "cifar100", "stl10", "folder")
NATIVE_SIZE = {"cifar10": 32, "cifar100": 32, "stl10": 96}  # the side of each data set's own images
CLASSES = {"cifar10": 10, "cifar100": 100, "stl10": 10}
# the images of each split in the official files (CIFAR-10's train split: 5 files of 10,000)
OFFICIAL_SIZE = {("cifar10", "train"): 50_000, ("cifar10", "test"): 10_000, ("cifar100", "train"): 50_000,
                 ("cifar100", "test"): 10_000, ("stl10", "train"): 5_000, ("stl10", "test"): 8_000,
                 ("stl10", "unlabeled"): 100_000}


# ----------------------------------------------------------------------------------- what the files hold

def _read_names(path: Path) -> Optional[list[str]]:
    if not path.is_file():
        return None
    try:  # (a user test: a class name saved in Latin-1, "airpl\xe9ne", was a UnicodeDecodeError's traceback)
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path} cannot be read as a list of class names ({e}); save it as UTF-8 text, one name "
                        "a line, or remove it (the classes then go unnamed)") from e
    return [line.strip() for line in text.splitlines() if line.strip()]


def _checked_names(names: Optional[list[str]], path: Path, name: str) -> Optional[list[str]]:
    """``names``, read from ``path``, where they are as many as ``name``'s classes: another list (CIFAR-100's
    20 coarse names, another data set's) would name the labels wrongly in embed's classes file, unsaid."""
    if names is not None and len(names) != CLASSES[name]:
        raise DataError(f"{path} names {len(names)} classes, not {name}'s {CLASSES[name]}: it is not this data "
                        f"set's list of class names; put the official file there, or remove it (the classes "
                        f"then go unnamed)")
    return names


def _record_count(path: Path, record: int, what: str) -> int:
    nbytes = path.stat().st_size
    if nbytes == 0 or nbytes % record:
        raise DataError(f"{path} is not {what} file: its size, {nbytes} bytes, is not a multiple "
                        f"of {record}-byte records; download it again")
    return nbytes // record


def _note_other_counts(name: str, split: str, folder: Path, files: list[str], counts: list[int]) -> None:
    """Say which of a split's files hold another number of images than the official ones: one cut short
    at a whole record (a copy or an unpacking stopped there) loses the images after it without an error;
    one with more is not the official file."""
    official = OFFICIAL_SIZE[name, split] // len(files)
    other = [f"{f} holds {n:,}" for f, n in zip(files, counts) if n != official]
    if other:
        each = "s hold" if len(files) > 1 else " holds"
        why = ("a file cut short at a whole image (an interrupted download, copy or unpacking) loses the images "
               f"after it without an error; download {name} again, unless these are files you made"
               if min(counts) < official else "these are not the official files")  # (more: made by someone)
        _note_once(f"in {folder}, {', '.join(other)} images, where the official {name} {split} file{each} "
                   f"{official:,}{' each' * (len(files) > 1)}: {why}")


@functools.lru_cache(maxsize=None)
def _note_once(message: str) -> None:
    """A note said once a process: a run reads its training split twice (to train, and as the kNN bank)."""
    note(message)


# ----------------------------------------------------------------------------------- CIFAR

_CIFAR_URL = {  # the official python archives, with their md5
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "eb9058c3a382ffc7106e4002c42a8d85"),
}


def load_cifar(root: Union[str, Path], name: str = "cifar10", split: str = "train",
               download: bool = False) -> ImageSet:
    """CIFAR-10 or CIFAR-100 (fine labels) as uint8 (N, 3, 32, 32).

    Reads the binary layout (``cifar-10-batches-bin``, ``cifar-100-binary``) or the python
    layout (``cifar-10-batches-py``, ``cifar-100-python``); ``root`` is the folder holding the
    layout folder, or the layout folder itself. ``download`` fetches the official python
    archive into ``root`` when the files are missing.
    """
    if name not in _CIFAR_URL:
        raise DataError(f"unknown CIFAR data set {name!r}; choose cifar10 or cifar100")
    if split not in ("train", "test"):
        raise DataError(f"unknown {name} split {split!r}; choose train or test")
    root = Path(root).expanduser()
    found = _find_cifar(root, name, split)
    if found is None and download:
        url, md5 = _CIFAR_URL[name]
        download_archive(url, root, md5)
        found = _find_cifar(root, name, split)
    if found is None:
        (bin_dir, bin_files, _), (py_dir, py_files, *_) = CIFAR_BINARY[name], CIFAR_PICKLE[name]
        lacking = lacking_files(root, bin_dir, bin_files[split]) or lacking_files(root, py_dir, py_files[split])
        raise FilesNotFound(f"{name} {split} files not found: expected {describe(bin_dir, bin_files[split])} "
                            f"(binary) or {describe(py_dir, py_files[split])} (python) in {root}{lacking}", root, name)
    kind, folder = found
    read = _read_cifar_binary if kind == "binary" else _read_cifar_pickle
    data = read(folder, name, split)
    classes = CLASSES[name]
    if len(data.labels) and not 0 <= int(data.labels.min()) <= int(data.labels.max()) < classes:
        raise DataError(f"the {name} {split} files in {folder} have labels outside 0..{classes - 1}: they are "
                        "damaged or not CIFAR's; download them again")
    return data


def _find_cifar(root: Path, name: str, split: str) -> Optional[tuple[str, Path]]:
    for kind, (folder, files, *_) in (("binary", CIFAR_BINARY[name]), ("pickle", CIFAR_PICKLE[name])):
        found = find_layout(root, folder, files[split])
        if found is not None:
            return kind, found
    return None


def _read_cifar_binary(folder: Path, name: str, split: str) -> ImageSet:
    _, files, names_file = CIFAR_BINARY[name]
    n_label = 1 if name == "cifar10" else 2  # CIFAR-100 records start with coarse, fine
    record = n_label + 3 * 32 * 32
    counts = [_record_count(folder / f, record, f"a {name} binary") for f in files[split]]
    _note_other_counts(name, split, folder, files[split], counts)
    classes = _checked_names(_read_names(folder / names_file), folder / names_file, name)
    images = np.empty((sum(counts), 3, 32, 32), np.uint8)
    labels = np.empty(sum(counts), np.int64)
    start = 0
    for f, n in zip(files[split], counts):
        raw = np.memmap(folder / f, np.uint8, mode="r", shape=(n, record))  # one copy, into `images`
        labels[start:start + n] = raw[:, n_label - 1]
        images[start:start + n] = raw[:, n_label:].reshape(n, 3, 32, 32)
        start += n
        del raw
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), classes)


class _NumpyUnpickler(pickle.Unpickler):
    """Loads numpy arrays and plain containers only, so a pickle from anywhere cannot run code."""

    _NUMPY = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")

    def find_class(self, module: str, name: str):
        if ((module, name) in {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
                or (module in self._NUMPY and name in ("_reconstruct", "scalar", "_frombuffer"))):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            # latin1: the official files are Python 2 pickles; keys are str there, bytes in Python 3 ones
            entry = _NumpyUnpickler(f, encoding="latin1").load()
        return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    except Exception as e:
        raise DataError(f"{path} is not a readable CIFAR python file ({e}); download it again") from e


def _pickle_images(data: object, path: Path) -> np.ndarray:
    """A python-layout ``data`` array as uint8 (N, 3, 32, 32): it must be as the official files have
    it, one row of 3072 values 0..255 per image (1024 red, 1024 green, 1024 blue, each row-major).
    Anything else (images as (N, 32, 32, 3), floats in [0, 1]) would be read as scrambled or black
    pixels without a word."""
    array = np.asarray(data)
    if array.ndim != 2 or array.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path} holds data of shape {array.shape}, not CIFAR's (N, 3072) rows (1024 red, "
                        "1024 green, then 1024 blue values per image); write it in that layout")
    if array.dtype != np.uint8 and (array.dtype.kind not in "iu" or array.size and
                                    not 0 <= int(array.min()) <= int(array.max()) <= 255):
        raise DataError(f"{path} holds {array.dtype} data, not CIFAR's whole numbers 0..255; write it as uint8")
    return array.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32)


def _read_cifar_pickle(folder: Path, name: str, split: str) -> ImageSet:
    _, files, meta_file, label_key, names_key = CIFAR_PICKLE[name]
    parts = [_load_pickle(folder / f) for f in files[split]]
    try:
        arrays = [_pickle_images(p["data"], folder / f) for p, f in zip(parts, files[split])]
        images = np.concatenate(arrays)
        each = [np.asarray(p[label_key], np.int64) for p in parts]
        labels = np.concatenate(each)
    except (KeyError, ValueError, TypeError) as e:  # (TypeError: labels of None or a dict, a mutation audit)
        raise DataError(f"the {name} files in {folder} lack data or {label_key} ({e}); "
                        f"download them again") from e
    for f, a, y in zip(files[split], arrays, each):  # file by file: a label too many in one and one too few in
        if len(a) != len(y):                         # the next had every later label one image out of line
            raise DataError(f"{folder / f} holds {len(a)} images but {len(y)} labels; download it again")
    _note_other_counts(name, split, folder, files[split], [len(a) for a in arrays])
    classes = None
    if (folder / meta_file).is_file():
        raw = _load_pickle(folder / meta_file).get(names_key)
        if raw is None:
            raise DataError(f"{folder / meta_file} has no {names_key}: it is not {name}'s {meta_file} file; put the "
                            "official one there, or remove it (the classes then go unnamed)")
        try:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
        except UnicodeDecodeError as e:
            raise DataError(f"{folder / meta_file} has {names_key} that are not UTF-8 text ({e}); put the official "
                            "file there, or remove it (the classes then go unnamed)") from e
        classes = _checked_names(names, folder / meta_file, name)
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), classes)


# ----------------------------------------------------------------------------------- STL-10

_STL_SPLITS = {"train": ["train"], "test": ["test"], "unlabeled": ["unlabeled"],
               "train+unlabeled": ["train", "unlabeled"]}
_STL_URL = ("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", "91f7769df0f17e558f3565bffb0c7dfb")


def load_stl10(root: Union[str, Path], split: str = "unlabeled", download: bool = False) -> ImageSet:
    """STL-10 binary layout (``stl10_binary/``) as uint8 (N, 3, 96, 96); labels 0..9, -1 unlabeled.

    ``root`` is the folder holding ``stl10_binary`` or that folder itself. The images are
    read through a memory map and copied once, straight into the returned tensor (the
    unlabeled split alone is 2.7 GB).
    """
    if split not in _STL_SPLITS:
        raise DataError(f"unknown stl10 split {split!r}; choose one of {', '.join(_STL_SPLITS)}")
    parts = _STL_SPLITS[split]
    files = [f"{p}_X.bin" for p in parts] + [f"{p}_y.bin" for p in parts if p != "unlabeled"]
    root = Path(root).expanduser()
    folder = find_layout(root, STL_DIR, files)
    if folder is None and download:
        download_archive(_STL_URL[0], root, _STL_URL[1])
        folder = find_layout(root, STL_DIR, files)
    if folder is None:
        raise FilesNotFound(f"stl10 {split} files not found: expected {describe(STL_DIR, files)} in {root}"
                            f"{lacking_files(root, STL_DIR, files)}", root, "stl10")
    counts = [_record_count(folder / f"{p}_X.bin", 3 * 96 * 96, "an STL-10 image") for p in parts]
    for p, n in zip(parts, counts):
        _note_other_counts("stl10", p, folder, [f"{p}_X.bin"], [n])
    images = torch.empty((sum(counts), 3, 96, 96), dtype=torch.uint8)
    labels = torch.full((sum(counts),), -1, dtype=torch.int64)
    start = 0
    for p, n in zip(parts, counts):
        # mode "c" (copy-on-write, never written) gives a writable array torch accepts without copying
        stored = torch.from_numpy(np.memmap(folder / f"{p}_X.bin", np.uint8, mode="c", shape=(n, 3, 96, 96)))
        # STL-10 stores every plane column-major (written from MATLAB): swap H and W.
        images[start:start + n].copy_(stored.transpose(2, 3))  # the one copy, multi-threaded
        del stored
        if p != "unlabeled":
            y = np.fromfile(folder / f"{p}_y.bin", np.uint8)
            if len(y) != n:  # either file may be the one cut short
                raise DataError(f"{folder}/{p}_X.bin holds {n:,} images but {p}_y.bin {len(y):,} labels: one of "
                                "them is cut short or not STL-10's; download it again")
            if y.min() < 1 or y.max() > 10:
                raise DataError(f"{folder}/{p}_y.bin holds labels outside 1..10, not STL-10's; download it again")
            labels[start:start + n] = torch.from_numpy(y.astype(np.int64) - 1)
        start += n
    return ImageSet(images, labels, _checked_names(_read_names(folder / "class_names.txt"),
                                                   folder / "class_names.txt", "stl10"))


def build_dataset(name: str, root: Union[str, Path], split: str, size: Optional[int],
                  download: bool) -> Union[ImageSet, ImageFolder]:
    """The data set ``name`` (one of :data:`DATASETS`) as an ImageSet, or an ImageFolder for "folder".

    ``size`` is the square side of a folder's images; CIFAR and STL-10 keep their own
    resolution. For "folder", ``root/split`` is used when it is a split of an ImageNet-style
    ``train/``, ``val/`` tree (:func:`~byol.folder_splits.split_folder`: not a class of a plain folder of
    classes), else ``root`` itself; ``download`` does not apply.
    """
    if name in ("cifar10", "cifar100"):
        return load_cifar(root, name, split, download)
    if name == "stl10":
        return load_stl10(root, split, download)
    if name == "folder":
        if not size:
            raise DataError("a folder data set needs an image size (the side of the square each "
                            "image is resized and cropped to); set it, e.g. 224")
        return ImageFolder((split_folder(root, split) if split else None) or root, size)
    raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
