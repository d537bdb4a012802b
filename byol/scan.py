"""Finding a folder's image files (:func:`scan`), and the packed list of their names that an
:class:`~byol.folder.ImageFolder` keeps (:class:`PackedNames`)."""

import hashlib
import os
import sys
from collections import Counter
from typing import Optional

import numpy as np

from .config import starts_as_byol_config
from .data import DataError
from .images import image_extensions
from .progress import SlowNotes


class PackedNames:
    """File names, one after another in one NumPy byte buffer, each found by its start and end.

    Worker processes read them without touching Python reference counts, which would copy the
    pages of a list of a million strings into each process; and each takes its own length (a
    fixed-width NumPy bytes array takes the longest for every name: a folder of 1.3 million files
    and one name of 3,834 bytes took 4.75 GB). :meth:`take` shares the buffer.
    """

    def __init__(self, names: list[str]):
        encoded = [os.fsencode(name) for name in names]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        ends = np.cumsum(lengths)
        offset = np.int32 if len(ends) == 0 or ends[-1] < 2**31 else np.int64  # 8 bytes a name, not 16
        self._ends, self._starts = ends.astype(offset), (ends - lengths).astype(offset)
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index: int) -> bytes:
        """The name at ``index``, as bytes (``os.fsencode``'s)."""
        return self._buffer[self._starts[index]:self._ends[index]].tobytes()

    def take(self, indices: np.ndarray) -> "PackedNames":
        """The names at ``indices``, in their order, sharing this buffer (copied only to be pickled)."""
        sub = object.__new__(PackedNames)  # not copy.copy, which would take __getstate__'s copy
        sub._buffer, sub._starts, sub._ends = self._buffer, self._starts[indices], self._ends[indices]
        return sub

    def digest(self) -> str:
        """A digest of the names in their order (the same names, in the same order: the same digest),
        with which a resumed run tells a folder whose files changed but not their count."""
        lengths = (self._ends - self._starts).astype(np.int64)
        digest = hashlib.blake2b(lengths.tobytes(), digest_size=16)
        for names in self._joined():
            digest.update(memoryview(names))
        return digest.hexdigest()

    def _joined(self):
        """The names' bytes one after another, in pieces: a slice of the buffer where they lie so (a
        scan's, a first N), else gathered :data:`_GATHERED` names at a time (a subset's)."""
        if len(self) and bool((self._starts[1:] == self._ends[:-1]).all()):
            yield self._buffer[self._starts[0]:self._ends[-1]]
            return
        for i in range(0, len(self), _GATHERED):
            starts, ends = self._starts[i:i + _GATHERED].astype(np.int64), self._ends[i:i + _GATHERED]
            some = ends - starts
            first = np.repeat(starts - (np.cumsum(some) - some), some)
            yield self._buffer[np.arange(int(some.sum())) + first]

    def __getstate__(self) -> dict:
        """Pickled (to worker processes that are spawned, not forked), a subset takes its own names
        only, not the whole folder's buffer (ImageNet's train split: some 40 MB, in each worker)."""
        state = dict(self.__dict__)
        lengths = (self._ends - self._starts).astype(np.int64)
        if self._buffer.nbytes > 2 * int(lengths.sum()) + 4096:
            ends = np.cumsum(lengths).astype(self._ends.dtype)
            state["_buffer"] = np.concatenate([np.empty(0, np.uint8), *self._joined()])
            state["_starts"], state["_ends"] = ends - lengths.astype(ends.dtype), ends
        return state

    @property
    def nbytes(self) -> int:
        return self._buffer.nbytes + self._starts.nbytes + self._ends.nbytes


# Names gathered at a time by PackedNames.digest (its index arrays: 8 bytes for each byte of the names).
_GATHERED = 65536


def scan(root: str, one_per_class: bool = False, limit: Optional[int] = None) -> tuple[
        list[str], dict[str, int], list[str], list[str], dict[str, str]]:
    """The image files under ``root`` (relative paths), how many other files each extension has, the
    folders left out as byol runs' and the symbolic links read that lead out of ``root`` (relative paths),
    and the folders that could not be read, with why (relative paths; a user test lost a whole class
    folder that its permissions kept from being listed, without a word).

    ``one_per_class``: the first image file found in each first-level sub-folder (a class) only, what
    the classes are: every folder is walked as by a full scan (a folder linked twice is read where the
    full scan reads it), but the files of a class with one found are not looked at, nor counted.

    ``limit``: stop at the ``limit``-th image file, the first ``limit`` of a full scan's (``embed --limit
    1000`` of ImageNet's train split listed all 1.28 million files, minutes on a network file system); what
    is said of the rest (other files, runs, links, unreadable folders) is then of the folders read so far."""
    extensions = image_extensions()
    real_root = os.path.realpath(root)
    found, others, runs, outside = [], Counter(), [], []
    walked = set()  # (device, inode) of each folder read: a symbolic link back up, or to a folder read already
    unreadable: list[OSError] = []  # the folders os.walk could not list (it goes on without them)
    classes_found = set()  # with one_per_class
    said = SlowNotes("scanning {root} for {what}: {count:,} found so far, {seconds:.0f} s",
                     "found {count:,} {what} in {root} in {seconds:.0f} s",
                     root=root, what="class folders" if one_per_class else "image files")
    try:
        for folder, subfolders, files in os.walk(root, followlinks=True, onerror=unreadable.append):
            if limit is not None and len(found) >= limit:
                break
            said.now(len(classes_found) if one_per_class else len(found))
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in walked:
                subfolders[:] = []
                continue
            if info.st_ino:  # 0: a file system without inode numbers, which cannot tell
                walked.add((info.st_dev, info.st_ino))
            rel = os.path.relpath(folder, root)
            if rel != "." and holds_a_run(folder, files, subfolders):
                runs.append(rel)
                subfolders[:] = []
                continue
            targets = {d: _link_target(os.path.join(folder, d), real_root) for d in subfolders if not d.startswith(".")}
            subfolders[:] = [d for d in sorted(targets) if not _read_in_its_place(targets[d])]
            outside += [os.path.join(rel, d) for d in subfolders if targets[d] is not None and _out_of(targets[d])]
            top = rel.split(os.sep, 1)[0] if one_per_class and rel != "." else None
            prefix = "" if rel == "." else rel + os.sep  # once a folder: 1.28M os.path.join took 2 of the 4 s
            for f in sorted(f for f in files if not f.startswith(".")) if top not in classes_found else ():
                dot = f.rfind(".")  # os.path.splitext's extension, for a name that is not hidden
                ext = f[dot:].lower() if dot > 0 else ""
                if ext in extensions:
                    found.append(prefix + f)
                    if limit is not None and len(found) >= limit:
                        break
                    if top is not None:
                        classes_found.add(top)
                        break
                else:
                    others[ext or "no extension"] += 1
    except RecursionError:  # Python before 3.12 walks a folder's sub-folders by recursion
        raise DataError(f"the folders under {root} nest too deep to read (over about {sys.getrecursionlimit()} "
                        "levels); move the images into shallower folders") from None
    said.done(len(classes_found) if one_per_class else len(found))
    failed = {os.path.relpath(e.filename, root): e.strerror or type(e).__name__ for e in unreadable if e.filename
              and os.path.relpath(e.filename, root) != "lost+found"}  # a mounted file system's own, root's: no note
    if "." in failed:
        raise unreadable_root(root, failed["."])
    return found, dict(others), sorted(runs), [os.path.normpath(link) for link in outside], failed


def unreadable_root(root: str, why: str) -> DataError:
    """The error for a data root that cannot be listed (its permissions), with ``why``."""
    return DataError(f"cannot read the folder {root} ({why}); make it readable, or point data.root elsewhere")


def holds_a_run(folder: str, files: list[str], subfolders: list[str]) -> bool:
    """Whether ``folder`` is a byol run's (a ``train.out_dir``), by the signs a new run looks for there
    (run_folder.py): a ``config.yaml`` that byol wrote, or checkpoints (``checkpoints/*.pt``). Its own
    outputs are then never read as images, and a resumed run lists the same files as its first start."""
    try:
        checkpoints = os.path.join(folder, "checkpoints")
        if "checkpoints" in subfolders and any(f.endswith(".pt") for f in os.listdir(checkpoints)):
            return True
    except OSError:  # unreadable: not known to be a run's, so its images are read (and their errors said)
        return False
    return "config.yaml" in files and starts_as_byol_config(os.path.join(folder, "config.yaml"))


def _link_target(path: str, real_root: str) -> Optional[str]:
    """Where the symbolic link ``path`` leads, relative to the root; None where ``path`` is no link."""
    return os.path.relpath(os.path.realpath(path), real_root) if os.path.islink(path) else None


def _out_of(target: str) -> bool:
    """Whether ``target`` (relative to the root) lies outside it."""
    return target == os.pardir or target.startswith(os.pardir + os.sep)


def _read_in_its_place(target: Optional[str]) -> bool:
    """Whether a link to ``target`` leads to a folder the scan reads in its own place under the root
    (its images then keep their own class: ``a/link_to_b`` read first would file ``b``'s under ``a``)."""
    return target is not None and (target == "." or not (
        _out_of(target) or any(part.startswith(".") for part in target.split(os.sep))))
