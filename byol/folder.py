"""Folders of image files: found at any depth (:mod:`byol.scan`), decoded and resized by DataLoader workers.

A file that cannot be decoded (truncated, empty, not an image, a decompression bomb) is skipped
and listed, never fatal. A root's splits (``ROOT/train``, ``ROOT/val``) are told from its classes by
:mod:`byol.folder_splits`. Batches of them: :mod:`byol.loaders`.
"""

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch.utils.data import Dataset

from .files import write_text_atomically
from .data import DataError
from .images import decode_image, reason, storage_failure
from .scan import PackedNames, scan


@dataclass(frozen=True)
class Skipped:
    """A file that could not be decoded; ``ImageFolder[i]`` returns it in place of a sample."""

    index: int
    path: str
    reason: str
    storage: Optional[str] = None  # the error's sentence where the storage failed, not the file: the loaders raise it


class ImageFolder(Dataset):
    """Image files under ``root``, at any depth, in any format Pillow opens, as square uint8 tensors.

    ``dataset[i]`` is ``(image uint8 (3, size, size), label, i)``, or a :class:`Skipped` record
    when the file cannot be decoded (truncated, empty, not an image or not a regular file, a
    decompression bomb: over twice ``PIL.Image.MAX_IMAGE_PIXELS``), or cannot be read because its storage
    failed (its ``storage`` says so: :func:`~byol.images.storage_failure`, which the loaders raise);
    :func:`~byol.decoding_processes.skip_collate` drops
    those, and the loaders of :mod:`byol.loaders` collect them in ``bad_files``, in the main process, also
    with worker processes.

    Each image is turned upright (EXIF orientation) and converted to RGB: alpha (or a PNG's
    transparent colour) is composited onto black (transparent pixels become black, whatever colour
    they hide), 16-bit gray is
    scaled from 0..65535 (Pillow's own conversion would clip it at 255), 32-bit integer and float
    gray from the smallest of 0..255 and 0..65535 (float: 0..1 and 0..255) that holds its values,
    else from 0 to its maximum, CMYK goes through
    Pillow's conversion. Its shorter side is resized to ``size`` and the center square cut
    out: this square is all that training sees, the random resized crops being taken later,
    on the device, from it.

    Args:
        root: the folder; hidden files and folders (name starting with ".") are ignored, and so
            are the folders of byol runs in it (listed in ``runs``: a run's plots are not training
            images); symbolic links are followed (those out of ``root`` named in :meth:`notes`), and a
            folder reached twice through them is read once.
        size: side of the returned square.
        labeled: ``"auto"``: if every image sits inside a first-level subfolder, that
            subfolder is its class (sorted names, as torchvision's ImageFolder), else all
            labels are -1. ``"partial"``: the images inside first-level subfolders get their
            class, the others -1 (counted in ``loose_count``). ``True`` requires class
            subfolders, ``False`` gives -1 labels.
        limit: list only the first ``limit`` image files (:func:`~byol.scan.scan`'s); its classes are then those
            they are of (:meth:`numbered_as` numbers them as the whole folder's).
    """

    def __init__(self, root: Union[str, Path], size: int, labeled: Union[str, bool] = "auto",
                 limit: Optional[int] = None):
        self.size = int(size)
        if labeled not in ("auto", "partial", True, False):
            raise ValueError(f"labeled must be 'auto', 'partial', True or False, not {labeled!r}")
        self.root = _image_root(root)
        self.where = self.root  # the folder its files are of, to name (inside(): a sub-folder of root)
        # others: files left out, by extension (".heic": 3); runs: run folders left out, relative to root
        rel_paths, self.others, self.runs, self.links_out, self.unreadable = scan(self.root, limit=limit)
        if not rel_paths:
            raise _no_image_files(self.root, self.others)
        top = [p.split(os.sep, 1)[0] if os.sep in p else None for p in rel_paths]
        in_classes = all(t is not None for t in top)
        if labeled is True and not in_classes:
            loose = rel_paths[top.index(None)]
            raise DataError(f"{os.path.join(self.root, loose)} is not inside a class subfolder of "
                            f"{self.root}; move every image into a subfolder named after its class")
        some_in_classes = any(t is not None for t in top)
        if labeled is True or (labeled == "auto" and in_classes) or (labeled == "partial" and some_in_classes):
            self.classes: Optional[list[str]] = sorted({t for t in top if t is not None})
            to_label = {c: i for i, c in enumerate(self.classes)}
            self.labels = torch.tensor([to_label.get(t, -1) for t in top], dtype=torch.int64)
        else:
            self.classes = None
            self.labels = torch.full((len(rel_paths),), -1, dtype=torch.int64)
        # A file outside the class sub-folders where some files are inside them (None: no such file):
        # why an "auto" folder is unlabeled; a "partial" one's first file labeled -1, of loose_count.
        self.loose = os.path.join(self.root, rel_paths[top.index(None)]) \
            if labeled in ("auto", "partial") and some_in_classes and not in_classes else None
        self.loose_count = top.count(None) if self.loose is not None else 0
        self._paths = PackedNames(rel_paths)
        self.bad_files: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, index: int) -> str:
        return os.path.join(self.root, os.fsdecode(self._paths[index]))

    def name(self, index: int) -> bytes:
        """The file at ``index`` relative to ``root`` (``CLASS/FILE``), as ``os.fsencode``'s bytes."""
        return self._paths[index]

    @property
    def paths(self) -> list[str]:
        return [self.path(i) for i in range(len(self))]

    def __getitem__(self, index: int) -> Union[tuple[torch.Tensor, int, int], Skipped]:
        path = self.path(index)
        try:
            image = decode_image(path, self.size)
        except Exception as e:  # any file that cannot be decoded is skipped, never fatal
            return Skipped(index, path, reason(path, e), storage_failure(path, e))
        return image, int(self.labels[index]), index

    def names_digest(self) -> str:
        """A digest of the file names in their order (:meth:`PackedNames.digest`)."""
        return self._paths.digest()

    def subset(self, indices: torch.Tensor) -> "ImageFolder":
        """The same folder (root, size, classes) restricted to the files at ``indices``."""
        sub = copy.copy(self)
        sub._paths, sub.labels, sub.bad_files = self._paths.take(indices.numpy()), self.labels[indices], {}
        return sub

    def numbered_as(self, classes: list[str]) -> tuple["ImageFolder", list[str]]:
        """The same files with labels numbered by ``classes`` (another split's class list), and
        the names of this folder's classes not in it, whose files are labeled -1."""
        # One entry per old label, and a last -1 that an unlabeled file's -1 picks. A dict, not classes.index:
        # a folder of 30,000 class folders took 11 s (quadratic), 100,000 some 2 minutes.
        number = {c: i for i, c in reversed(list(enumerate(classes)))}
        renumber = torch.tensor([number.get(c, -1) for c in self.classes or []] + [-1])
        sub = copy.copy(self)
        sub.classes, sub.labels, sub.bad_files = list(classes), renumber[self.labels], {}
        return sub, [c for c in self.classes or [] if c not in number]

    def inside(self, name: str) -> "ImageFolder":
        """The files inside the first-level sub-folder ``name`` (``dog``, ``dog/``, ``./dog``), labeled
        as in this folder; what the scan left out elsewhere is not its to say."""
        clean = os.path.normpath(name)
        if clean in (os.curdir, os.pardir) or os.sep in clean or (os.altsep and os.altsep in clean):
            raise DataError(f"{name!r} is not a folder directly inside {self.root}: give one of its own folders "
                            f"by name (a folder deeper down is part of one of them)")
        prefix = os.fsencode(clean + os.sep)
        keep = [i for i in range(len(self)) if self._paths[i].startswith(prefix)]
        if not keep and clean in self.unreadable:
            raise DataError(f"cannot read the folder {os.path.join(self.root, clean)} ({self.unreadable[clean]})")
        if not keep:
            raise DataError(f"no image files found in {os.path.join(self.root, clean)} or its subfolders")
        sub = self.subset(torch.tensor(keep))
        sub.loose, sub.loose_count, sub.runs, sub.others, sub.links_out = None, 0, [], {}, []
        sub.unreadable = {r: why for r, why in self.unreadable.items() if r.startswith(clean + os.sep)}
        sub.where = os.path.join(self.root, clean)
        return sub

    def spread(self, n: int) -> "ImageFolder":
        """``n`` files evenly spread over the folder (so every class folder has its share), or all."""
        if n >= len(self):
            return self
        return self.subset(torch.linspace(0, len(self) - 1, n).round().long())

    def notes(self) -> list[str]:
        """What the scan left out, to say: the byol run folders inside, the files of no image format;
        and the folders outside the root it read through symbolic links."""
        return [said for said in (self.unreadable_note(), self.runs_note(), self.others_note(), self.links_note())
                if said is not None]

    def unreadable_note(self) -> Optional[str]:
        """The note that names the folders under the root that could not be listed, and so were left
        out with every image in them (None: there were none)."""
        if not self.unreadable:
            return None
        ranked = sorted(self.unreadable.items())
        named = ", ".join(f"{escape_name(os.path.join(self.root, r))} ({why})" for r, why in ranked[:3]) + \
            (", ..." if len(ranked) > 3 else "")
        count = "1 folder" if len(ranked) == 1 else f"{len(ranked):,} folders"
        return (f"{count} under {self.root} could not be read and {'is' if len(ranked) == 1 else 'are'} left out, "
                f"with every image in {'it' if len(ranked) == 1 else 'them'}: {named}")

    def links_note(self) -> Optional[str]:
        """The note that names the symbolic links under the root that the scan followed out of it
        (None: there were none): a link to / would read every image on the machine."""
        if not self.links_out:
            return None
        named = ", ".join(f"{escape_name(os.path.join(self.root, link))} -> "
                          f"{escape_name(os.path.realpath(os.path.join(self.root, link)))}"
                          for link in self.links_out[:3]) + (", ..." if len(self.links_out) > 3 else "")
        count = f"{len(self.links_out):,} symbolic link" + ("s" if len(self.links_out) > 1 else "")
        return f"the images of {count} out of {self.root} are read as its own: {named}"

    def runs_note(self) -> Optional[str]:
        """The note that names the byol run folders left out of this folder (None: there were none)."""
        if not self.runs:
            return None
        named = ", ".join(escape_name(os.path.join(self.root, r)) for r in self.runs[:3]) + \
            (", ..." if len(self.runs) > 3 else "")
        if len(self.runs) == 1:
            return f"left out {named}: a byol run's folder (its plots are not data)"
        return f"left out {named}: byol runs' folders (their plots are not data)"

    def others_note(self) -> Optional[str]:
        """The note that counts the files left out as no image format's, by extension ("4 files (.heic 3,
        .txt 1) in ROOT are left out: ..."), the most common first (None: there were none)."""
        if not self.others:
            return None
        listed, total = _by_extension(self.others), sum(self.others.values())
        if total == 1:
            return (f"1 file ({listed}) in {self.root} is left out: its name does not end in the extension of an "
                    "image format Pillow opens (.jpg, .png, .webp, ...)")
        return (f"{total:,} files ({listed}) in {self.root} are left out: their names do not end in the extension "
                "of an image format Pillow opens (.jpg, .png, .webp, ...)")

    def nothing_decoded(self) -> DataError:
        """The error for a folder none of whose files could be decoded, with one file and why."""
        example = "".join(f" ({escape_name(p)}: {r})" for p, r in list(self.bad_files.items())[:1])
        return DataError(f"none of the {len(self):,} image files in {self.where} could be decoded{example}; "
                         "check the files")

    def skipped_inside(self) -> int:
        """How many files of ``bad_files`` lie under ``root`` (others are a kNN split's, say)."""
        inside = os.path.join(self.root, "")
        return sum(path.startswith(inside) for path in self.bad_files)

    def write_skipped(self, path: Union[str, Path]) -> int:
        """Write ``bad_files`` to ``path``, one ``file<TAB>reason`` a line (the name as :func:`escape_name`
        writes it); returns their number. With none, no file: an empty one that older versions wrote is removed."""
        if not self.bad_files:
            Path(path).unlink(missing_ok=True)
            return 0
        lines = "".join(f"{escape_name(p)}\t{r}\n" for p, r in sorted(self.bad_files.items()))
        write_text_atomically(path, lines, errors="surrogateescape")  # a crash never leaves half a list
        return len(self.bad_files)

    def read_skipped(self, path: Union[str, Path], moved: Optional[tuple[str, str]] = None) -> None:
        """Add the files listed in ``path`` (as :meth:`write_skipped` writes it), if it exists, to
        ``bad_files``: a resumed run keeps the list of the run before. ``moved``: (the run's data.root
        then, now): a file listed under the first is the one under the second (a user test: a run resumed
        with --data.root=NEW listed each bad file twice, at both places, and counted it twice)."""
        path = Path(path)
        old, new = _moved_prefixes(*moved) if moved else ("", "")
        if path.is_file():
            # At "\n" alone (read_text's universal newlines make "\r\n" one): a list an older byol wrote holds a
            # name's form feed or U+2028 as it is, which splitlines() would cut the line at
            for line in path.read_text(encoding="utf-8", errors="surrogateescape").split("\n"):
                file, tab, reason = line.partition("\t")
                if tab:
                    file = unescape_name(file)
                    # only to a file that is there: a root named ROOT then and ROOT/train now (the same folder,
                    # not moved) would make ROOT/train/x ROOT/train/train/x, a file that never was (a review)
                    if old != new and file.startswith(old) and os.path.lexists(new + file[len(old):]):
                        file = new + file[len(old):]
                    self.bad_files.setdefault(file, reason)


def _moved_prefixes(then: str, now: str) -> tuple[str, str]:
    """What a data root moved from ``then`` to ``now`` changed in its files' paths: the two less the folders they
    end in alike, so that ``ROOT/val``'s files (the kNN monitor's) move with a ``data.root`` of ``ROOT/train``."""
    old, new = (Path(_absolute(root)).parts for root in (then, now))  # (then: gone, so not _image_root)
    same = 0
    while same < min(len(old), len(new)) - 1 and old[-1 - same] == new[-1 - same]:
        same += 1
    return (os.path.join(*old[:len(old) - same], ""), os.path.join(*new[:len(new) - same], ""))


def class_names(root: Union[str, Path]) -> Optional[list[str]]:
    """The classes of ``ImageFolder(root, size, "partial")`` (None: it has none), from a scan that stops
    looking at a class folder's files once it has found an image among them: embed numbers a val
    split's labels by the training split's classes, without listing all of its files.

    Raises:
        DataError: as ImageFolder's, where ``root`` is no folder or has no image files."""
    root = _image_root(root)
    found, others, *_ = scan(root, one_per_class=True)
    if not found:
        raise _no_image_files(root, others)
    return sorted({p.split(os.sep, 1)[0] for p in found if os.sep in p}) or None


def _image_root(root: Union[str, Path]) -> str:
    """``root`` as an absolute path, checked to be a folder."""
    root = _absolute(root)
    if not os.path.isdir(root):
        what = "is not a folder" if os.path.exists(root) else "does not exist"  # (a file: not said not to exist)
        raise DataError(f"image folder {root} {what}; check the path")
    return root


def _absolute(root: Union[str, Path]) -> str:
    """``root`` with ``~`` expanded, as an absolute path."""
    return os.path.abspath(os.path.expanduser(root))


def _no_image_files(root: str, others: dict[str, int]) -> DataError:
    """The error for a folder with no image files; ``others``: its other files, by extension (a user test: a
    folder of .txt files was said to hold nothing)."""
    n = sum(others.values())
    held = f"; it holds {n:,} other file{'s' * (n != 1)} ({_by_extension(others)})" if others else ""
    return DataError(f"no image files found in {root} or its subfolders (looked for .jpg, .jpeg, .png, .webp, "
                     f".bmp, .tif and the other formats Pillow opens){held}")


def _by_extension(others: dict[str, int]) -> str:
    """Files counted by extension, the most common first: ".txt 800, .json 2" (six at most, then "...")."""
    ranked = sorted(others.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{ext} {n:,}" for ext, n in ranked[:6]) + (", ..." if len(ranked) > 6 else "")


def escape_name(name: str) -> str:
    """A file name on one line of a list: a backslash written as two, a line break as backslash-n
    (-r), a tab as backslash-t, and the other characters Python's ``str.splitlines`` breaks lines at
    (form feed, U+2028, ...) as ``\\x0c``, ``\\u2028``, so that line i stays row i however the list is read
    (a review: ``read_text().splitlines()`` of a name with a form feed put every later file a row off).
    :func:`unescape_name` reverses it."""
    return name.translate(_ESCAPES)


def unescape_name(text: str) -> str:
    return re.sub(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|.)", _unescaped, text)


def _unescaped(m: re.Match) -> str:
    code = m.group(1)
    return chr(int(code[1:], 16)) if len(code) > 1 else _UNESCAPES.get(code, m.group(0))


_LINE_BREAKS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # str.splitlines' others, beyond \n and \r
_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t",
                          **{c: f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in _LINE_BREAKS}})
_UNESCAPES = {"\\": "\\", "n": "\n", "r": "\r", "t": "\t"}
