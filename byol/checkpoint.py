"""Checkpoints: complete (everything needed to resume exactly), atomic, and loaded strictly and safely."""

import errno
import fnmatch
import glob
import os
import pickle
import random
import re
import shutil
import zipfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np
import torch
from torch import nn

from . import __version__

try:
    import fcntl  # file locks, to tell a temporary being written from one a killed writer left
except ImportError:  # Windows
    fcntl = None


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, unsafe or does not match the model."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and ``torch.compile`` wrappers (so no ``module.`` / ``_orig_mod.`` keys)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            return model


def rng_state(generator: Optional[torch.Generator] = None) -> dict:
    """Every random number generator's state that a training step reads."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        # Plain tensors and numbers, never pickled objects: the file loads with weights_only=True.
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: Optional[torch.Generator] = None) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"].tolist()), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


@contextmanager
def rng_state_kept() -> Iterator[None]:
    """Put every generator :func:`rng_state` saves back as it was on exit (a run seeds them, and a
    resumed run sets them to its checkpoint's: its caller's draws after it are not the run's)."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    config: dict, generator: Optional[torch.Generator] = None,
                    scaler: Optional[Any] = None, extra: Optional[dict] = None) -> None:
    """Write a checkpoint atomically: to a temporary file in the same folder, then ``os.replace``.

    A crash at any moment leaves either the previous file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "step": step,
        "rng": rng_state(generator),
        "config": config,
        "versions": {"byol": __version__, "torch": str(torch.__version__)},
        "extra": extra or {},
    }
    try:
        with temporary_beside(path) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as e:
        if not write_failed(e):
            raise
        try:
            free = f"; {shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free on that disk"
        except OSError:
            free = ""
        kept = "; the previous one is kept" if path.is_file() else ""
        raise CheckpointError(f"could not write the checkpoint {path} ({write_failure(e)}{free}){kept}") from None


def copy_atomically(source: Path, path: Path) -> None:
    """``source``'s bytes at ``path``, written as a checkpoint is (a temporary file, then renamed)."""
    try:
        with temporary_beside(path) as tmp:
            shutil.copyfile(source, tmp)
    except OSError as e:
        if not write_failed(e):
            raise
        raise CheckpointError(f"could not write the checkpoint {path} ({write_failure(e)})") from None


def write_text_atomically(path: Path, text: str, errors: str = "strict") -> None:
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
        for path, data in files.items():
            tmp = stack.enter_context(temporary_beside(Path(path)))
            if callable(data):
                data(tmp)
            else:
                tmp.write_bytes(data)


@contextmanager
def temporary_beside(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write, synced to disk and renamed over ``path`` at the end
    of the ``with`` (removed instead on an error).

    It is hidden and named after its writer (``.last.pt.tmp<pid>``), and locked while it is
    written, so that :func:`remove_torn_temporaries` can tell one that a killed process left.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with _locked_new(tmp) as held:
            yield tmp  # written through its path (torch.save's own writer), the same file as `held`
            held.flush()
            os.fsync(held.fileno())
            os.replace(tmp, path)  # under the lock: no cleaner can remove it before it is renamed
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _locked_new(tmp: Path) -> Iterator:
    """``tmp`` created empty and open for writing, under its lock where the file system has locks. A
    cleaner that took the lock between the file's creation and ours removed it as torn: made again."""
    for _ in range(5):
        with open(tmp, "wb") as held:
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
    is not running on this machine or is this process (which is not writing one now).
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
    if pid == os.getpid():
        return _removed(tmp)
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
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
    return f"{str(e).splitlines()[0][:120]}; is the disk full{_file_size_limit()}?"


def _file_size_limit() -> str:
    """``ulimit -f``'s limit where there is one (torch.save's writer says neither it nor a full disk)."""
    try:
        import resource
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):
        return ""
    return "" if limit == resource.RLIM_INFINITY else f", or this process's file-size limit ({limit:,} bytes) reached"


def read_state(path: Path, map_location: Any = "cpu") -> Any:
    """Read a file saved by ``torch.save`` with ``weights_only=True``: tensors and plain data, no code.

    Raises:
        CheckpointError: with one sentence saying what is wrong with the file.
    """
    path = Path(path)
    if path.is_dir():  # a run's folder, its checkpoints/ or an export's folder: the file it holds
        held = [p for p in (path / "checkpoints" / "last.pt", path / "last.pt", path / "encoder.pt") if p.is_file()]
        if held:
            raise CheckpointError(f"{path} is a directory; give a checkpoint file in it, such as {held[0]}")
        raise CheckpointError(f"{path} is a directory; give a checkpoint file in it (e.g. "
                              f"{path / 'checkpoints' / 'last.pt'}, or an exported encoder.pt)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    _check_format(path)
    _check_crc(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = next((line.strip() for line in str(e).splitlines()  # ('unsupported GLOBAL posix.system whose
                       if "unsupported global" in line.lower()), "")  # module posix is blocked', too)
        if not reason:  # (another UnpicklingError, as 'Unsupported operand 0': damaged bytes)
            raise _corrupt(path, type(e).__name__) from None
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds objects other than tensors and plain data, which "
            f"could run code when unpickled ({reason.split(' was not')[0]})") from None
    except Exception as e:  # damaged bytes fail in many ways: UnicodeDecodeError, KeyError, EOFError, ...
        raise _corrupt(path, type(e).__name__) from None
    return state


def _corrupt(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} is corrupt or truncated and cannot be read ({why}); use an earlier one (a run keeps "
        "checkpoints/epoch_NNNN.pt when train.checkpoint_every > 0; to resume from one, copy it over "
        "checkpoints/last.pt)")


def _check_crc(path: Path) -> None:
    """Refuse a checkpoint whose bytes no longer match the CRC-32 that torch.save wrote with each of its
    records: torch.load does not check them, and loaded a flipped byte in a tensor silently."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            for record in z.infolist():
                if record.CRC:  # (0: written without one, as torch.save with compute_crc32 off)
                    with z.open(record) as f:
                        while f.read(1 << 24):  # the check is made at the record's end
                            pass
    except (zipfile.BadZipFile, EOFError) as e:
        why = "its bytes do not match their CRC-32" if "CRC" in str(e) else type(e).__name__
        raise _corrupt(path, why) from None
    except (OSError, NotImplementedError, RuntimeError):  # left to torch.load
        return


def _check_format(path: Path) -> None:
    """Refuse, in one sentence, a file that ``torch.save`` did not write, or a TorchScript export."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return  # torch.load reports it as corrupt
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            raise CheckpointError(f"{path} is a TorchScript module (as `byol export` writes "
                                  "encoder_torchscript.pt); load it with torch.jit.load, and give byol a run's "
                                  "checkpoint or the exported encoder.pt")
        return
    with open(path, "rb") as f:
        head = f.read(2)
    # A zip cut short (no central directory at its end) is left to torch.load: corrupt or truncated.
    if head and not head.startswith((b"PK", b"\x80")):  # torch.save's legacy format: a pickle, protocol >= 2
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (not a file written by torch.save)")


def saved_step(path: Path) -> Optional[int]:
    """The step a checkpoint was written at, read without loading its tensors (mmap); None where the
    file is not a readable checkpoint."""
    try:
        _check_format(path)  # (torch.load of a TorchScript export warns, then loads the module)
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:  # not a checkpoint of ours, or torn
        return None


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict:
    """Read a byol checkpoint safely (see :func:`read_state`) and check that it is one."""
    state = read_state(path, map_location)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a byol checkpoint (no 'model' entry)")
    return state


def load_model_state(model: nn.Module, state_dict: dict, source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` that turns a mismatch into a :class:`CheckpointError`."""
    try:
        unwrap(model).load_state_dict(state_dict, strict=True)
    except RuntimeError:
        own = unwrap(model).state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                  if k in state_dict and torch.is_tensor(state_dict[k]) and state_dict[k].shape != v.shape]
        parts = [f"{len(found)} {what} (e.g. {', '.join(found[:2])})" for found, what in (
            (missing, "keys missing"), (unexpected, "keys it does not have"), (shapes, "of another shape"))
            if found]
        raise CheckpointError(f"{source} does not match this model (different backbone, width or "
                              f"projector sizes?): {'; '.join(parts) or 'the state does not load'}") from None
