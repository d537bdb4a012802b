"""Files written whole or not at all: a temporary beside the file, synced, then renamed over it; what
killed writers left removed; what a failed write says, in a few words."""

import errno
import fnmatch
import glob
import io
import os
import re
import time
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import IO, Callable, Iterator, Optional, Union

try:
    import fcntl  # file locks, to tell a temporary being written from one a killed writer left
except ImportError:  # Windows
    fcntl = None
_WINDOWS = os.name == "nt"  # where a file held open cannot be renamed or removed, and os.kill(pid, 0) is a Ctrl-C


def write_text_atomically(path: Union[str, Path], text: str, errors: str = "strict") -> None:
    """Write ``text`` (UTF-8) beside ``path``, then rename it over ``path``: a crash leaves the old
    file or the new one, never half of one."""
    write_files_atomically({Path(path): text.encode("utf-8", errors=errors)})


def write_files_atomically(files: dict[Path, Union[bytes, Callable[[Path], None]]]) -> None:
    """Write each of ``files`` beside its path, and only once all are written (and synced) rename
    them over their paths: a failure on any (a full disk) leaves every old file as it was. A file's
    content is its bytes, or a function that writes it into the path it is given (the temporary).
    What killed writers of these files left beside them is removed first."""
    by_folder: dict[Path, list[str]] = {}
    for path in map(Path, files):
        by_folder.setdefault(path.parent, []).append(glob.escape(path.name))
    for folder, names in by_folder.items():
        remove_torn_temporaries(folder, *names)
    with ExitStack() as stack:
        written = []
        for path, data in files.items():
            with naming(path):
                tmp, held = stack.enter_context(_temporary(Path(path)))
                if callable(data):
                    data(tmp)
                else:
                    tmp.write_bytes(data)
            written.append((tmp, held, Path(path)))
        for _, held, path in written:  # every one synced before any is renamed: a sync can fail too (ENOSPC or a
            with naming(path):  # quota on NFS, which says so at the sync), and an export was left half old, half new
                _sync(held)
        for tmp, _, path in written:
            _replace(tmp, path)  # under the locks: no cleaner can remove one before it is renamed


def bytes_written_by(write) -> bytes:
    """What ``write(file)`` (a torch.save or np.save into ``file``) writes."""
    buffer = io.BytesIO()
    write(buffer)
    return buffer.getvalue()


@contextmanager
def temporary_beside(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write, synced to disk and renamed over ``path`` at the end
    of the ``with`` (removed instead on an error).

    It is hidden and named after its writer (``.last.pt.tmp<pid>``), and locked while it is
    written, so that :func:`remove_torn_temporaries` can tell one that a killed process left.
    """
    with naming(path), _temporary(path) as (tmp, held):
        yield tmp  # written through its path (torch.save's own writer), the same file as `held`
        _sync(held)
        _replace(tmp, path)  # under the lock: no cleaner can remove it before it is renamed


@contextmanager
def naming(path: Union[str, Path]) -> Iterator[None]:
    """An ``OSError`` that names no file, raised again naming ``path``: a write's or a sync's on a full disk
    (``[Errno 28] No space left on device``, no path) was said as "could not write to the disk", not which file."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:  # the error itself, named: its class and its traceback
            e.filename = str(path)  # kept (a bug's EBADF, whose traceback is shown, says where it came from)
        raise


@contextmanager
def _temporary(path: Path) -> Iterator[tuple[Path, IO[bytes]]]:
    """:func:`temporary_beside`'s temporary and its open, locked file, neither synced nor renamed; removed
    at the end of the ``with`` where it was not renamed."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with _locked_new(tmp) as held:
            yield tmp, held
    finally:
        with suppress(OSError):  # (Windows: a virus scanner holding it) not said in place of the error that ended
            tmp.unlink(missing_ok=True)  # the write; the next start's remove_torn_temporaries removes it


def _sync(held: IO[bytes]) -> None:
    """A temporary's bytes on the disk, its file closed where there is no lock to keep (Windows renames no
    file held open)."""
    held.flush()
    os.fsync(held.fileno())
    if fcntl is None:
        held.close()


def _replace(tmp: Path, path: Path, tries: int = 25) -> None:
    """``os.replace(tmp, path)``; on Windows tried again for some 5 s while another process has ``path``
    open (``byol eval`` reading last.pt as the run writes it, an antivirus scan): Windows replaces no file
    held open, and the run would end for it."""
    for left in range(tries - 1, -1, -1):
        try:
            os.replace(tmp, path)
            return
        except PermissionError:
            if not _WINDOWS or not left:
                raise
            time.sleep(0.2)


@contextmanager
def _locked_new(tmp: Path) -> Iterator:
    """``tmp`` created empty and open for writing, under its lock where the file system has locks. A
    cleaner that took the lock between the file's creation and ours removed it as torn: made again."""
    for _ in range(5):
        with _created(tmp) as held:
            if fcntl is not None:
                try:
                    fcntl.flock(held, fcntl.LOCK_EX)
                except OSError:  # a file system without locks: the writer's pid tells instead
                    pass
            try:
                ours = os.path.samestat(os.fstat(held.fileno()), os.stat(tmp))
            except FileNotFoundError:
                ours = False
            if ours:
                yield held
                return
    raise OSError(errno.EBUSY, "removed as a torn temporary again and again while it was written", str(tmp))


def _created(tmp: Path):
    """``tmp`` made anew and opened for writing, never through what is already at its path: a symbolic link
    there (another user's, in a shared folder such as /tmp, named after this process) would have the
    write go into the file it points to. The name is this process's (its pid): what is there is a
    leftover of an ended process of the same pid, or planted; it is removed first."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(tmp, flags, 0o666)
    except FileExistsError:
        # Gone since (another process's cleaner), fine; one that cannot be removed (another user's, in a
        # sticky folder) is said as this write's error.
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, flags, 0o666)
    return os.fdopen(fd, "wb")


def named_alike(path: Union[str, Path]) -> bool:
    """Whether ``path``'s name as UTF-8 is its name on disk. TensorBoard encodes a path as UTF-8 to open its events
    file but makes the folder with the file system's encoding: under a C locale with ``PYTHONUTF8=0`` (ASCII) a
    run folder named ``rün`` reaches Python as surrogates, which UTF-8 refuses (a user test: a traceback at the
    start); under a Latin-1 locale, its events would go to a folder of another name."""
    try:
        return str(path).encode("utf-8") == os.fsencode(path)
    except UnicodeEncodeError:
        return False


def shown_name(name: Union[str, Path]) -> str:
    """``name`` (a path) as its bytes read as UTF-8: what a terminal shows, not the surrogates of bytes outside the
    locale's encoding, which matplotlib's text and a strict stderr refuse."""
    return os.fsencode(name).decode("utf-8", "replace")


def not_a_file_to_read(path: Union[str, Path]) -> Optional[str]:
    """Why ``path``, given as a checkpoint, is no file to read (a folder, a pipe or device, a link to nothing, or
    nothing there), in one sentence; None where it is a file. Without torch: the command line says a mistyped path
    before torch loads (3 s)."""
    path = Path(path)
    if path.is_dir():  # a run's folder, its checkpoints/ or an export's folder: the file it holds
        held = [p for p in (path / "checkpoints" / "last.pt", path / "last.pt", path / "encoder.pt") if p.is_file()]
        if held:
            return f"{path} is a directory; give a checkpoint file in it, such as {held[0]}"
        run = _run_without_checkpoint(path)
        if run is not None:
            return f"{path} holds no checkpoint yet: {_NO_CHECKPOINT.format(run=run)}"
        last = path / "last.pt" if path.name == "checkpoints" else path / "checkpoints" / "last.pt"
        return f"{path} is a directory; give a checkpoint file in it (e.g. {last}, or an exported encoder.pt)"
    if path.is_file():
        return None
    if path.exists():  # (<(cat last.pt), /dev/stdin from a pipe: a checkpoint is read by seeking in it)
        return f"checkpoint {path} is not a regular file (a pipe, a socket or a device); give the checkpoint's file"
    if path.is_symlink():
        return f"checkpoint {path} is a link to {os.readlink(path)}, which does not exist"
    if str(path) == "-":  # (a shell's standard input, which a checkpoint read by seeking in it cannot be)
        return "reading a checkpoint from standard input (-) is not supported; give the path of its .pt file"
    run = _run_without_checkpoint(path.parent) if path.parent.name == "checkpoints" else None
    if run is not None:
        return f"checkpoint {path} does not exist: {_NO_CHECKPOINT.format(run=run)}"
    return f"checkpoint {path} does not exist"


_NO_CHECKPOINT = ("the run in {run} has written none (it writes checkpoints/last.pt at the end of its first epoch, "
                  "or when stopped); give it once it is there")


def _run_without_checkpoint(path: Path) -> Optional[Path]:
    """The run folder that ``path`` is, or is the ``checkpoints/`` folder of, where that run has written no
    checkpoint yet (a run still in its first epoch, or one stopped before it); None otherwise."""
    from .config import starts_as_byol_config  # (config imports this module)
    run = path.parent if path.name == "checkpoints" else path
    if not starts_as_byol_config(run / "config.yaml"):  # a run, as scan.holds_a_run tells one
        return None
    return None if any((run / "checkpoints").glob("*.pt")) else run


def topmost_missing(path: Path) -> Optional[Path]:
    """The topmost of ``path`` and its parents that does not exist (None when ``path`` does): the
    first folder that creating ``path`` makes, for :func:`remove_empty_folders` to undo it."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    return missing[-1] if missing else None


def remove_empty_folders(path: Path, top: Path) -> None:
    """Remove ``path`` and its parents up to ``top`` while they are empty."""
    for folder in (path, *path.parents):
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == top:
            return


_TORN = re.compile(r"\.(?P<name>.+)\.tmp(?P<pid>[0-9]{1,10})", re.ASCII)


def remove_torn_temporaries(folder: Path, *names: str) -> list[Path]:
    """Remove the temporary files of ``names`` (file names or glob patterns) in ``folder`` that a
    killed writer left (``kill -9``, a lost node, a power cut in the middle of a write); return them.

    A temporary whose writer still holds its lock (on this machine or, where the file system shares
    locks, another) is kept. Where locks are not available, one is torn when the process named in it
    is not running on this machine or is this process (which is not writing one now); on Windows, one
    that no process holds open (Windows removes no file held open).
    """
    removed = []
    for tmp in sorted(Path(folder).glob(".*.tmp*")):
        match = _TORN.fullmatch(tmp.name)
        if match and any(fnmatch.fnmatchcase(match["name"], name) for name in names) and \
                _remove_if_torn(tmp, int(match["pid"])):
            removed.append(tmp)
    return removed


def written_for(path: Union[str, Path]) -> str:
    """The file that ``path`` is written for, where it is a temporary beside it (``.last.pt.tmp123``:
    ``last.pt``, in the same folder); else ``path`` itself."""
    match = _TORN.fullmatch(Path(path).name)
    return str(Path(path).with_name(match["name"])) if match else str(path)


def _remove_if_torn(tmp: Path, pid: int) -> bool:
    """Remove ``tmp`` where it is torn; whether it was. Under its lock, which a writer takes before it
    writes, so that a writer that opened it a moment before finds it gone (:func:`temporary_beside`).
    One that cannot be removed (another user's, in a shared folder) is left: it keeps no write from
    going on."""
    if fcntl is not None:
        try:
            with open(tmp, "r+b") as f:  # for writing: NFS emulates flock with write locks
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return _removed(tmp)  # nobody held it; our lock goes with the file's closing
        except BlockingIOError:
            return False  # its writer is at work
        except OSError:
            pass  # no locks on this file system (or the file went): ask whether its writer runs
    if pid == os.getpid() or _WINDOWS:  # Windows removes no file its writer holds open (until it renames it)
        return _removed(tmp)
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists (not on Windows: CTRL_C_EVENT is 0)
    except ProcessLookupError:
        return _removed(tmp)
    except (OSError, OverflowError):
        return False  # another user's process, or no such pid here: not ours to judge
    return False


def _removed(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def write_failed(e: BaseException) -> bool:
    """Whether ``e`` is a failed write: an ``OSError``, or ``torch.save``'s zip writer reporting one
    (a full disk is a RuntimeError "[enforce fail at inline_container.cc:...]" there, or, where it meets
    it in its last bytes, "basic_ios::clear: iostream error")."""
    return isinstance(e, OSError) or (isinstance(e, RuntimeError) and any(
        said in str(e) for said in ("inline_container", "iostream error")))


def write_failure(e: BaseException) -> str:
    """Why a write failed, in a few words (see :func:`write_failed`)."""
    if isinstance(e, FileExistsError) or (isinstance(e, OSError) and e.errno == errno.ENOTDIR):
        return "a file is in the way where a folder is needed"
    if isinstance(e, IsADirectoryError):
        return "a folder is in the way where a file is needed"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    # torch.save's own words are its C++ internals ("[enforce fail at inline_container.cc:672] ...")
    what = "torch.save's writer failed" if isinstance(e, RuntimeError) else (str(e).splitlines() or [repr(e)])[0][:120]
    return f"{what}; is the disk full{_file_size_limit()}?"


def _file_size_limit() -> str:
    """``ulimit -f``'s limit where there is one (torch.save's writer says neither it nor a full disk)."""
    try:
        import resource
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):
        return ""
    return "" if limit == resource.RLIM_INFINITY else f", or this process's file-size limit ({limit:,} bytes) reached"
