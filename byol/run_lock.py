"""A run folder's lock: one start of a run at a time writes a folder, on this machine or another that
shares file locks. ``.byol.lock`` names the process that holds it, for a start refused meanwhile."""

import errno
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import IO, Optional

from .config import ConfigError
from .files import fcntl

LOCK = ".byol.lock"  # held by the start writing the folder; names its process


def hold_lock(folder: Path) -> Optional[IO[str]]:
    """The open lock file of ``folder``, locked; None where the file system has no locks (the run goes
    on without one). Raises ConfigError, naming the holder, while another process holds it."""
    if fcntl is None:
        return None
    try:
        lock = _open_lock(folder / LOCK)
    except IsADirectoryError:  # (a user test: the run went on without a lock, and two could share the folder)
        raise ConfigError(f"{folder / LOCK} is a folder where the run keeps its lock file; remove it, or choose "
                          "another train.out_dir") from None
    except OSError as e:
        if e.errno == errno.ELOOP:  # (a user test: a run folder from elsewhere emptied the file it linked to)
            raise ConfigError(f"{folder / LOCK} is a symbolic link where the run keeps its lock file, which "
                              "would be written through it; remove it, or choose another train.out_dir") from None
        return None  # another user's lock file in a shared folder: the run goes on without a lock
    try:
        _lock_soon(lock)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip()
        if not _outwait_orphans(lock, holder, folder):
            lock.close()
            raise ConfigError(_held(holder, folder)) from None
    except OSError:  # no locks on this file system
        lock.close()
        return None
    try:  # who holds it, for a start refused while it does; unbuffered: nothing left to fail at close
        os.ftruncate(lock.fileno(), 0)
        os.write(lock.fileno(), f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    except OSError:  # a full disk: the lock holds all the same, and the start's first write says why
        pass
    return lock


def _open_lock(path: Path) -> IO[str]:
    """``path`` opened to read and append, created where missing, never through a symbolic link (a run
    folder copied from elsewhere, or another user's link in a shared one: truncating it emptied the
    file it pointed to, outside the run folder)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o666)
    try:
        return os.fdopen(fd, "a+")
    except BaseException:
        os.close(fd)
        raise


def _lock_soon(lock: IO[str], tries: int = 10) -> None:
    """``lock`` locked, tried a few times 10 ms apart: a start refused for another reason holds it for a
    moment (:func:`refuse_if_held`), and a start at that moment is not to be refused for it."""
    for left in range(tries - 1, -1, -1):
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if not left:
                raise
            time.sleep(0.01)


def refuse_if_held(folder: Path) -> None:
    """Refuse as :func:`hold_lock` does where a live run holds ``folder``'s lock; a probe that
    writes nothing (a start refused for another reason says this first)."""
    if fcntl is None or not (folder / LOCK).is_file():
        return
    try:
        with open(folder / LOCK) as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = lock.read().strip()
                if _ended_pid(holder) is None:
                    raise ConfigError(_held(holder, folder)) from None
    except OSError:  # unreadable, or no locks on this file system: the other refusal stands
        return


def _held(holder: str, folder: Path) -> str:
    return (f"another byol run{f' ({holder})' if holder else ''} is writing to {folder} now; wait for it to end, "
            "or choose another train.out_dir")


def _ended_pid(holder: str) -> Optional[int]:
    """The pid of the process a lock file names ("pid N on HOST") where it has ended; None where it may
    still run (one of another host's, or a line of a form not ours, is taken to)."""
    match = re.fullmatch(r"pid (\d+) on (.+)", holder)
    if match is None or match[2] != socket.gethostname() or _alive(int(match[1])):
        return None
    return int(match[1])


def _outwait_orphans(lock: IO[str], holder: str, folder: Path, seconds: float = 20.0) -> bool:
    """Whether the lock, held though its run (``holder``: "pid N on HOST") has ended, came free
    within ``seconds`` (False: its run goes on; a ConfigError where it did not come free). A run
    killed (kill -9, out of memory) leaves the processes it forked, its image decoding, holding the
    lock file open until they see their parent gone (every 5 s for PyTorch's loader workers): a
    resume at once was refused."""
    pid = _ended_pid(holder)
    if pid is None:
        return False
    print(f"note: the run that held {folder} (pid {pid}) has ended; waiting for the processes it started "
          "to let go of its lock", file=sys.stderr)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            continue
    lock.close()
    raise ConfigError(f"the run that held {folder} (pid {pid}) has ended, but processes it started still hold "
                      f"its lock file open after {seconds:g} s; end them (fuser -k {folder / LOCK}), then start "
                      "again")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True
