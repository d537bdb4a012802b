"""A folder's layout: the splits of an ImageNet-style ROOT (``train/``, ``val/``) told from the classes of a
plain folder of images (``bus/ car/ train/``), and the labeled pair the kNN monitor and ``byol eval`` score."""

import filecmp
import os
from pathlib import Path
from typing import Optional, Union

from .data import DataError
from .folder import ImageFolder, _absolute
from .scan import holds_a_run, unreadable_root


SPLITS = ("train", "val", "test", "unlabeled")  # sub-folders of an ImageNet-style ROOT that are not classes


def split_folder(root: Union[str, Path], name: str) -> Optional[Path]:
    """``root/name`` where it is a split of an ImageNet-style layout, not a class of a plain folder:
    there is a ``val/`` or ``test/`` beside it, or no sub-folder but splits (hidden ones and byol runs
    aside). So in a folder of vehicles, ``bus/ car/ train/``, ``train/`` is a class. None otherwise."""
    root = Path(root).expanduser()
    try:
        if not (root / name).is_dir():
            return None
    except PermissionError as e:  # (a user test: "[Errno 13] Permission denied: ROOT/train", which was not there)
        raise unreadable_root(str(root), e.strerror) from None
    if (root / "val").is_dir() or (root / "test").is_dir():
        return root / name
    with os.scandir(root) as entries:
        a_class = any(e.is_dir() and e.name not in SPLITS and e.name != name and not e.name.startswith(".")
                      and not _is_a_run(e.path) for e in entries)
    return None if a_class else root / name


def _is_a_run(folder: str) -> bool:
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    return holds_a_run(folder, names, names)


def held_out_folder(root: Path) -> Optional[Path]:
    """A folder's held-out split, which its kNN monitor and ``byol eval`` score on: ``ROOT/val``, else
    ``ROOT/test``, beside ``ROOT/train``; None without both."""
    held = root / "val" if (root / "val").is_dir() else root / "test"
    return held if (root / "train").is_dir() and held.is_dir() else None


def first_names(names: list[str], n: int = 5) -> str:
    """The first ``n`` of ``names``, joined, and ``...`` where there are more: a message's list of classes."""
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def labeled_folders(root: Union[str, Path], size: int, limit: Optional[int] = None,
                    scanned: Optional[ImageFolder] = None) -> Optional[tuple[ImageFolder, ImageFolder]]:
    """``ROOT/train`` and ``ROOT/val`` (or ``ROOT/test``): the labeled splits of a folder, not decoded.

    Each needs one sub-folder per class, every class of the held-out split in the training split too (one
    it lacks is a note: its labels are numbered by the training split's classes); ``root`` may be ROOT or
    ``ROOT/train`` itself (what a run trained on). ``limit`` takes that many images of each split,
    spread evenly over it. None when there is no ``ROOT/train`` with ``ROOT/val`` (or test) beside it.
    ``scanned``: a folder listed already (a run's training split, whole), taken for ``ROOT/train`` where
    it is that folder at ``size``, with classes, in place of a second scan (ImageNet's: 1.28 million files).

    Raises:
        DataError: the two folders are there, but are one folder (a link), an image is not in a class sub-folder,
            one has no images, or the held-out split has a class the training split lacks; the message says which.
    """
    root = Path(_absolute(root))  # (".", run from inside ROOT/train, is named "train" only as an absolute path)
    if root.name == "train" and split_folder(root, "train") is None:
        root = root.parent
    test_dir = held_out_folder(root)
    if test_dir is None:
        return None
    if os.path.samefile(test_dir, root / "train"):  # (a val/ linked to train/ scored 100% at k=1: a review)
        raise DataError(f"{test_dir} is {root / 'train'} itself (a link to it), so each of its images would be its "
                        "own nearest neighbour and the kNN would score near 100%; give it images of its own, held "
                        "out of train/")
    train = scanned if _is_the_folder(scanned, root / "train", size) else ImageFolder(root / "train", size, True)
    test = ImageFolder(test_dir, size, labeled=True)
    extra = sorted(set(test.classes) - set(train.classes))  # no training image to tell such a class by
    if extra:  # (those only train/ has are fine, and not named: a user test read them as the problem)
        count = f"{len(extra)} classes " if len(extra) > 5 else ""
        raise DataError(f"the class sub-folders of {train.root} and {test.root} differ ({count}only in {test.root}: "
                        f"{first_names(extra)}); "
                        f"every class of {test.root} needs its sub-folder of images in {train.root} too (a class "
                        "is a sub-folder that holds images)")
    if test.classes != train.classes:  # (a user test: a val/ short of a class turned the monitor off, eval refused)
        from .distributed import note
        held = set(test.classes)  # (not the list: quadratic in the classes)
        lacking = [c for c in train.classes if c not in held]
        note(f"{test.root} has no images of {len(lacking)} of the {len(train.classes)} classes of {train.root} "
             f"({first_names(lacking)}): its accuracies are over the classes it has")
        test, _ = test.numbered_as(train.classes)
    if limit:
        train, test = train.spread(limit), test.spread(limit)
    shared = shared_files(train, test)
    if shared:  # (a val/CLASS linked to train/CLASS scored 100% at k=1, without a word: a review)
        from .distributed import note
        note(f"{shared:,} of the {len(test):,} images of {test.root} {'is' if shared == 1 else 'are'} also in "
             f"{train.root} (the same file, or the same bytes, under the same class and file name): each is its "
             "own nearest neighbour, so the accuracies over them are inflated; hold them out of one of the splits")
    return train, test


def shared_files(train: ImageFolder, test: ImageFolder) -> int:
    """How many of ``test``'s files are ``train``'s too: at the same ``CLASS/FILE`` in both, one file (a link,
    a linked class folder, a hard link) or the same bytes. Only files named alike are compared (a stat each, read
    where their sizes agree): splits whose names differ cost no I/O, and a copy renamed is not found."""
    in_test = {test.name(i): i for i in range(len(test))}
    return sum(_same_bytes(train.path(i), test.path(in_test[name])) for i in range(len(train))
               if (name := train.name(i)) in in_test)


def _same_bytes(a: str, b: str) -> bool:
    try:  # filecmp reads the two only where their sizes agree
        return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)
    except OSError:  # unreadable: not said to be the same (its decoding says what is wrong)
        return False


def _is_the_folder(folder: Optional[ImageFolder], root: Path, size: int) -> bool:
    """Whether ``folder`` is what ``ImageFolder(root, size, labeled=True)`` would be (one with an image
    outside the class folders has no classes: that refuses it, saying which)."""
    return folder is not None and folder.classes is not None and folder.size == size \
        and folder.root == folder.where == os.path.abspath(root)
