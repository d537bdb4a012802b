"""Where a named data set's files are: CIFAR's and STL-10's layouts, looked for in ``data.root`` or as it,
fetched where asked, and, where they are not there, what is there instead (:class:`FilesNotFound`).

Read by ``datasets.py``.
"""

import itertools
import os
import re
import shlex
from pathlib import Path
from typing import Optional

from .data import DataError
from .files import remove_empty_folders, topmost_missing
from .images import image_extensions


CIFAR_BINARY = {  # layout folder, files per split, class-name file
    "cifar10": ("cifar-10-batches-bin", {"train": [f"data_batch_{i}.bin" for i in range(1, 6)],
                                         "test": ["test_batch.bin"]}, "batches.meta.txt"),
    "cifar100": ("cifar-100-binary", {"train": ["train.bin"], "test": ["test.bin"]}, "fine_label_names.txt"),
}
CIFAR_PICKLE = {  # layout folder, files per split, meta file, label key, class-names key
    "cifar10": ("cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)],
                                        "test": ["test_batch"]}, "batches.meta", "labels", "label_names"),
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"]}, "meta",
                 "fine_labels", "fine_label_names"),
}
STL_DIR = "stl10_binary"


class FilesNotFound(DataError):
    """A data set's files are not where ``data.root`` says: ``what`` names them and the folder, and
    the message adds how to fix it (a caller with other advice uses ``what``). ``download``: the option
    that downloads them, as the command that read them spells it."""

    def __init__(self, what: str, root: Optional[Path] = None, name: Optional[str] = None,
                 download: str = "--download"):
        self.args_given = (what, root, name)
        said = None if root is None else _what_is_there(root, name, download)
        if said is not None:  # why they are not there, and what to do instead
            what += f"; {said}"
            super().__init__(what)
        else:
            super().__init__(f"{what}; put the files there, or pass {download} when online")
        self.what = what
        self.explained = said is not None

    def with_download(self, download: str) -> "FilesNotFound":
        """The same error, its advice naming ``download`` (``byol eval``'s ``--data.download=true``)."""
        return FilesNotFound(*self.args_given, download=download)


def _what_is_there(root: Path, name: Optional[str], download: str) -> Optional[str]:
    """What in ``root`` explains why data set ``name``'s files are not found there (a user test: each was
    said only as the files expected): no such folder; a file (the archive itself, say); another data set's
    files (not its own: their files are said), the advice to ``--download`` kept where ``root`` holds them,
    not is them; its archive, not unpacked; a folder of one's own images. None for none."""
    if not root.exists():
        return f"{root} does not exist: check the path, or pass {download} when online to fetch the files there"
    if root.is_file():  # the archive itself, or one of the files (a user test: told to put the files in it)
        where = shlex.quote(str(root.parent))
        if ARCHIVE.fullmatch(root.name.lower()):
            return (f"it is an archive, not a folder: unpack it (tar -xf {shlex.quote(root.name)}, in "
                    f"{root.parent}) and set --data.root={where}")
        return "it is a file, not a folder: set --data.root to the folder that holds the data set's files"
    layouts = {folder: other for table in (CIFAR_BINARY, CIFAR_PICKLE) for other, (folder, *_) in table.items()}
    layouts[STL_DIR] = "stl10"
    named = Path(os.path.abspath(root)).name  # (".", run from inside the layout's folder, is named so only absolute)
    present = [(folder, other) for folder, other in layouts.items() if named == folder or (root / folder).is_dir()]
    if present and all(other != name for _, other in present):  # (its own there, a file missing: nothing to add)
        folder, other = present[0]
        if named == folder:
            return f"it holds {folder}, {other}'s files: for them, set --data.dataset={other}"
        return (f"it holds {folder}, {other}'s files (for them, set --data.dataset={other}); for {name}'s, put "
                f"them there, or pass {download} when online")  # a folder of data sets, this one not yet among them
    nested = _one_level_down(root, [folder for folder, other in layouts.items() if other == name])
    if nested is not None:  # (a review: ROOT/stl10_binary/stl10_binary, unpacked into a folder of its name)
        return (f"{nested.name} is one level further down, in {nested.parent}: set "
                f"--data.root={shlex.quote(str(nested.parent))}")
    try:  # (the name first: no stat of each entry of a large folder)
        archives = sorted(p.name for p in root.iterdir() if (m := ARCHIVE.fullmatch(p.name.lower()))
                          and m[1].replace("-", "") == name and p.is_file())
    except OSError:
        archives = []
    if archives:  # (tar -xf: a .tar saved unzipped too, where -xzf fails)
        return (f"it holds {', '.join(archives)}, not unpacked: unpack it there (tar -xf {shlex.quote(archives[0])}, "
                f"in {root}), and run the command again")
    if holds_images(root):  # a folder of one's own images, read as CIFAR or STL-10
        return "it holds image files: for a folder of your own images, set --data.dataset=folder"
    return None


def _one_level_down(root: Path, folders: list[str], limit: int = 100) -> Optional[Path]:
    """One of ``folders`` (a data set's layouts) inside a sub-folder of ``root``, among its first ``limit`` entries
    (``data/cifar10/cifar-10-batches-bin`` given ``data``, or an archive unpacked into a folder of its name); None
    where none is."""
    try:
        with os.scandir(root) as entries:
            for entry in itertools.islice(entries, limit):
                found = next((Path(entry.path) / f for f in folders if (Path(entry.path) / f).is_dir()), None)
                if found is not None:
                    return found
    except OSError:  # not readable: nothing to say
        pass
    return None


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


# the official archives' names (and a copy's: cifar-10-python (1).tar.gz), as found beside where they unpack
ARCHIVE = re.compile(r"(cifar-10|cifar-100|stl10)[-_](python|binary)\b.*\.(tar\.gz|tgz|tar)")


def find_layout(root: Path, folder: str, files: list[str]) -> Optional[Path]:
    """``root/folder`` or ``root`` itself, whichever holds all ``files``."""
    for candidate in (root / folder, root):
        if all((candidate / f).is_file() for f in files):
            return candidate
    return None


def lacking_files(root: Path, folder: str, files: list[str]) -> str:
    """The ``files`` missing where some of them are there (in ``root/folder``, or ``root`` itself), as
    " (FOLDER lacks X, Y)"; "" where none is (the files expected say it). A user test: a missing
    unlabeled_X.bin was said only as the three files expected, the two that were there among them."""
    for candidate in (root / folder, root):
        missing = [f for f in files if not (candidate / f).is_file()]
        if len(missing) < len(files):
            return f" ({candidate} lacks {', '.join(missing)})"
    return ""


def describe(folder: str, files: list[str]) -> str:
    return f"{folder}/{files[0]}" if len(files) == 1 else f"{folder}/{{{', '.join(files)}}}"


def download_archive(url: str, root: Path, md5: str) -> None:
    """Fetch and unpack ``url`` into the folder ``root``; nothing where ``root`` is a file (the archive itself, say:
    the caller's error for files not found says what it is, not that a download into it failed)."""
    from torchvision.datasets.utils import download_and_extract_archive

    if root.is_file():
        return
    made = topmost_missing(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(url, download_root=str(root), md5=md5)
    except Exception as e:  # offline, HTTP error, checksum, full disk: all fixable by the user
        if made is not None:  # the folders made for it, when the download left nothing in them
            remove_empty_folders(root, made)
        raise DataError(f"could not download {url} into {root} ({e}); download and unpack it there "
                        f"on a machine that is online, or put the files there yourself") from e
