"""Data sources -> uint8 images (+ labels), and the loaders that feed them to training.

Every source gives RGB uint8 images, (N, 3, H, W) or (3, H, W), and int64 labels, -1 for an
unlabeled image. Nothing is augmented here: augmentation runs batched on the device
(``augment.py``), so the host only reads and decodes.

* CIFAR-10/100 and STL-10 load into one :class:`ImageSet`; a small set is moved to the device
  once and batched there by :class:`TensorBatches`.
* A folder of image files is a :class:`~byol.folder.ImageFolder` (``folder.py``), decoded by
  DataLoader workers; a file that cannot be decoded is skipped and listed, never fatal.
"""

import itertools
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Union

import numpy as np
import torch

from .checkpoint import remove_empty_folders, topmost_missing
from .images import image_extensions

if TYPE_CHECKING:
    from .folder import ImageFolder

DATASETS = ("cifar10", "cifar100", "stl10", "folder")
NATIVE_SIZE = {"cifar10": 32, "cifar100": 32, "stl10": 96}  # the side of each data set's own images


class DataError(Exception):
    """A data set that cannot be found or read; the message says what is wrong and how to fix it."""


class FilesNotFound(DataError):
    """A data set's files are not where ``data.root`` says: ``what`` names them and the folder, and
    the message adds how to fix it (a caller with other advice uses ``what``)."""

    def __init__(self, what: str, root: Optional[Path] = None):
        if root is not None and holds_images(root):  # a folder of one's own images, read as CIFAR or STL-10
            what += "; it holds image files: for a folder of your own images, set --data.dataset=folder"
            super().__init__(what)
        else:
            super().__init__(f"{what}; put the files there, or pass --download when online")
        self.what = what


def holds_images(root: Path, limit: int = 100, max_folders: int = 50) -> bool:
    """Whether ``root`` or a folder up to two levels below it (``ROOT/train/<class>``) has image files
    among its first ``limit`` entries (a quick look: entries are read one at a time, never a whole
    large folder, and at most ``max_folders`` folders)."""
    extensions = image_extensions()
    folders = [(root, 0)]
    for folder, depth in itertools.islice(folders, max_folders):  # root, then the sub-folders found, by level
        try:
            with os.scandir(folder) as entries:
                for entry in itertools.islice(entries, limit):
                    if Path(entry.name).suffix.lower() in extensions:
                        return True
                    if depth < 2 and entry.is_dir():
                        folders.append((entry.path, depth + 1))
        except OSError:  # not a folder, or not readable: the next one
            continue
    return False


@dataclass
class ImageSet:
    """Images held in memory.

    Attributes:
        images: uint8 (N, 3, H, W), RGB.
        labels: int64 (N,), -1 for an unlabeled image; or None.
        classes: ``classes[label]`` is the class name; None when unknown or unlabeled.
        indices: int64 (N,), where each image comes from in its source (for an
            :class:`ImageFolder`, the index of its path, bad files being left out);
            None means ``0 .. N-1``.
    """

    images: torch.Tensor
    labels: Optional[torch.Tensor]
    classes: Optional[list[str]] = None
    indices: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: Union[str, torch.device]) -> "ImageSet":
        """The same set with its tensors on ``device`` (for :class:`TensorBatches`)."""
        def move(t):
            return None if t is None else t.to(device)

        return ImageSet(move(self.images), move(self.labels), self.classes, move(self.indices))

    def first(self, n: int) -> "ImageSet":
        """The first ``n`` images (all of them when there are fewer)."""
        def head(t):
            return None if t is None else t[:n]

        return ImageSet(self.images[:n], head(self.labels), self.classes, head(self.indices))

    def take(self, index: torch.Tensor) -> "ImageSet":
        """The images at ``index`` (int64), in its order; ``indices`` still say where each comes from."""
        where = torch.arange(len(self)) if self.indices is None else self.indices
        return ImageSet(self.images[index], None if self.labels is None else self.labels[index], self.classes,
                        where[index])


# ----------------------------------------------------------------------------------- files

def _find_layout(root: Path, folder: str, files: list[str]) -> Optional[Path]:
    """``root/folder`` or ``root`` itself, whichever holds all ``files``."""
    for candidate in (root / folder, root):
        if all((candidate / f).is_file() for f in files):
            return candidate
    return None


def _describe(folder: str, files: list[str]) -> str:
    return f"{folder}/{files[0]}" if len(files) == 1 else f"{folder}/{{{', '.join(files)}}}"


def _download(url: str, root: Path, md5: str) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    made = topmost_missing(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(url, download_root=str(root), md5=md5)
    except Exception as e:  # offline, HTTP error, checksum, full disk: all fixable by the user
        if made is not None:  # the folders made for it, when the download left nothing in them
            remove_empty_folders(root, made)
        raise DataError(f"could not download {url} into {root} ({e}); download and unpack it there "
                        f"on a machine that is online, or put the files there yourself") from e


def _read_names(path: Path) -> Optional[list[str]]:
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _record_count(path: Path, record: int, what: str) -> int:
    nbytes = path.stat().st_size
    if nbytes == 0 or nbytes % record:
        raise DataError(f"{path} is not a {what} file: its size, {nbytes} bytes, is not a multiple "
                        f"of {record}-byte records; download it again")
    return nbytes // record


# ----------------------------------------------------------------------------------- CIFAR

_CIFAR_BINARY = {  # layout folder, files per split, class-name file
    "cifar10": ("cifar-10-batches-bin", {"train": [f"data_batch_{i}.bin" for i in range(1, 6)],
                                         "test": ["test_batch.bin"]}, "batches.meta.txt"),
    "cifar100": ("cifar-100-binary", {"train": ["train.bin"], "test": ["test.bin"]}, "fine_label_names.txt"),
}
_CIFAR_PICKLE = {  # layout folder, files per split, meta file, label key, class-names key
    "cifar10": ("cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)],
                                        "test": ["test_batch"]}, "batches.meta", "labels", "label_names"),
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"]}, "meta",
                 "fine_labels", "fine_label_names"),
}
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
        _download(url, root, md5)
        found = _find_cifar(root, name, split)
    if found is None:
        (bin_dir, bin_files, _), (py_dir, py_files, *_) = _CIFAR_BINARY[name], _CIFAR_PICKLE[name]
        raise FilesNotFound(f"{name} {split} files not found: expected {_describe(bin_dir, bin_files[split])} "
                            f"(binary) or {_describe(py_dir, py_files[split])} (python) in {root}", root)
    kind, folder = found
    read = _read_cifar_binary if kind == "binary" else _read_cifar_pickle
    data = read(folder, name, split)
    classes = 10 if name == "cifar10" else 100
    if len(data.labels) and not 0 <= int(data.labels.min()) <= int(data.labels.max()) < classes:
        raise DataError(f"the {name} {split} files in {folder} have labels outside 0..{classes - 1}: they are "
                        "damaged or not CIFAR's; download them again")
    return data


def _find_cifar(root: Path, name: str, split: str) -> Optional[tuple[str, Path]]:
    for kind, (folder, files, *_) in (("binary", _CIFAR_BINARY[name]), ("pickle", _CIFAR_PICKLE[name])):
        found = _find_layout(root, folder, files[split])
        if found is not None:
            return kind, found
    return None


def _read_cifar_binary(folder: Path, name: str, split: str) -> ImageSet:
    _, files, names_file = _CIFAR_BINARY[name]
    n_label = 1 if name == "cifar10" else 2  # CIFAR-100 records start with coarse, fine
    record = n_label + 3 * 32 * 32
    counts = [_record_count(folder / f, record, f"{name} binary") for f in files[split]]
    images = np.empty((sum(counts), 3, 32, 32), np.uint8)
    labels = np.empty(sum(counts), np.int64)
    start = 0
    for f, n in zip(files[split], counts):
        raw = np.memmap(folder / f, np.uint8, mode="r", shape=(n, record))  # one copy, into `images`
        labels[start:start + n] = raw[:, n_label - 1]
        images[start:start + n] = raw[:, n_label:].reshape(n, 3, 32, 32)
        start += n
        del raw
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), _read_names(folder / names_file))


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


def _read_cifar_pickle(folder: Path, name: str, split: str) -> ImageSet:
    _, files, meta_file, label_key, names_key = _CIFAR_PICKLE[name]
    parts = [_load_pickle(folder / f) for f in files[split]]
    try:
        images = np.concatenate([np.asarray(p["data"], np.uint8).reshape(-1, 3, 32, 32) for p in parts])
        labels = np.concatenate([np.asarray(p[label_key], np.int64) for p in parts])
    except (KeyError, ValueError) as e:
        raise DataError(f"the {name} files in {folder} lack data or {label_key} ({e}); "
                        f"download them again") from e
    if len(images) != len(labels):
        raise DataError(f"the {name} files in {folder} hold {len(images)} images but {len(labels)} labels")
    classes = None
    if (folder / meta_file).is_file():
        raw = _load_pickle(folder / meta_file).get(names_key)
        classes = None if raw is None else [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), classes)


# ----------------------------------------------------------------------------------- STL-10

_STL_DIR = "stl10_binary"
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
    folder = _find_layout(root, _STL_DIR, files)
    if folder is None and download:
        _download(_STL_URL[0], root, _STL_URL[1])
        folder = _find_layout(root, _STL_DIR, files)
    if folder is None:
        raise FilesNotFound(f"stl10 {split} files not found: expected {_describe(_STL_DIR, files)} in {root}", root)
    counts = [_record_count(folder / f"{p}_X.bin", 3 * 96 * 96, "STL-10 image") for p in parts]
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
            if len(y) != n or y.min() < 1 or y.max() > 10:
                raise DataError(f"{folder}/{p}_y.bin does not hold {n} labels in 1..10; download it again")
            labels[start:start + n] = torch.from_numpy(y.astype(np.int64) - 1)
        start += n
    return ImageSet(images, labels, _read_names(folder / "class_names.txt"))


def data_home(setting: Union[bool, str], nbytes: int, device: torch.device,
              capacity: Optional[int] = None) -> torch.device:
    """Where a data set held as one uint8 tensor of ``nbytes`` lives while training on ``device``.

    ``setting`` is ``data.on_device``: ``True`` puts it on ``device`` (batches drawn there by
    index, nothing copied per step); ``False`` keeps it in host memory (each batch copied over);
    ``"auto"`` puts it on the device unless it would take more than a quarter of the device's
    memory (``capacity``, in bytes; by default the CUDA device's total, unknown elsewhere).
    """
    cpu = torch.device("cpu")
    if device.type == "cpu" or setting is False:
        return cpu
    if setting is True:
        return device
    if capacity is None and device.type == "cuda":
        capacity = torch.cuda.get_device_properties(device).total_memory
    return device if capacity is None or nbytes <= capacity // 4 else cpu


class TensorBatches:
    """Batches of an in-memory set already on the device: no DataLoader, no host sync.

    Each epoch draws one permutation on the images' device, from ``seed + epoch``, the same on
    every rank, and cuts it into global batches of ``batch_size * world_size``; rank ``r`` takes
    the ``r``-th share of each, so ranks get disjoint images in equal numbers and a step on N
    ranks sees the same images as one process with the global batch. With ``drop_last`` the ``n % world_size`` rest and the last incomplete
    batch are dropped; without it, the permutation is padded by wrapping around (as
    DistributedSampler does) and the last batch may be short. Call :meth:`set_epoch` before
    each epoch, or every epoch repeats the same order.

    Args:
        images: uint8 (N, 3, H, W); labels: (N,) on the same device, or None.
        batch_size: per process; the global batch is ``batch_size * world_size``.
        generator: the seed, an int or a ``torch.Generator`` (its ``initial_seed()``); it must
            be the same on every rank (not seed + rank), or the ranks' slices overlap.

    Yields ``(images (B, 3, H, W), labels (B,) or None, indices (B,))``.
    """

    def __init__(self, images: torch.Tensor, labels: Optional[torch.Tensor], batch_size: int,
                 shuffle: bool = True, drop_last: bool = True,
                 generator: Union[torch.Generator, int, None] = None, rank: int = 0, world_size: int = 1):
        if labels is not None and (labels.device != images.device or len(labels) != len(images)):
            raise ValueError("labels must have one entry per image, on the images' device")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        is_generator = isinstance(generator, torch.Generator)
        self.seed = generator.initial_seed() if is_generator else int(generator or 0)
        n = len(images)
        self.per_rank = n // world_size if drop_last else -(-n // world_size)
        if len(self) == 0:
            raise DataError(f"a batch of {batch_size} images per process x {world_size} processes does "
                            f"not fit in the data set ({n} images); use a smaller batch size")

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return -(-self.per_rank // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]]:
        n, device = len(self.images), self.images.device
        if self.shuffle:
            g = torch.Generator(device=device).manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g, device=device)
        else:
            order = torch.arange(n, device=device)
        total = self.per_rank * self.world_size
        if total > n:
            order = order.repeat(-(-total // n))[:total]
        step = self.batch_size * self.world_size
        for b in range(len(self)):
            # Rank r takes its share of each global batch, so a step on N ranks sees exactly the
            # images that one process would see with the global batch.
            global_batch = order[b * step:min((b + 1) * step, total)]
            share = len(global_batch) // self.world_size
            idx = global_batch[self.rank * share:(self.rank + 1) * share]
            labels = None if self.labels is None else self.labels.index_select(0, idx)
            yield self.images.index_select(0, idx), labels, idx


def build_dataset(name: str, root: Union[str, Path], split: str, size: Optional[int],
                  download: bool) -> Union[ImageSet, "ImageFolder"]:
    """The data set ``name`` (one of :data:`DATASETS`) as an ImageSet, or an ImageFolder for "folder".

    ``size`` is the square side of a folder's images; CIFAR and STL-10 keep their own
    resolution. For "folder", ``root/split`` is used when it is a folder (an ImageNet-style
    ``train/``, ``val/`` tree), else ``root`` itself; ``download`` does not apply.
    """
    if name in ("cifar10", "cifar100"):
        return load_cifar(root, name, split, download)
    if name == "stl10":
        return load_stl10(root, split, download)
    if name == "folder":
        if not size:
            raise DataError("a folder data set needs an image size (the side of the square each "
                            "image is resized and cropped to); set it, e.g. 224")
        from .folder import ImageFolder  # here, not at the top: folder.py builds on this module

        sub = Path(root).expanduser() / split if split else None
        return ImageFolder(sub if sub is not None and sub.is_dir() else root, size)
    raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
