"""Checkpoints: complete (everything needed to resume exactly), atomic, and loaded strictly and safely."""

import json
import pickle
import random
import re
import shutil
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import nn

from . import __version__
from .config import is_sections
from .errors import ByolError
from .files import not_a_file_to_read, temporary_beside, write_failed, write_failure


class CheckpointError(ByolError, RuntimeError):
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


def versions() -> dict:
    """The versions of byol and torch, as a checkpoint and an evaluation's result record them."""
    return {"byol": __version__, "torch": str(torch.__version__)}


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    config: dict, generator: Optional[torch.Generator] = None, extra: Optional[dict] = None) -> None:
    """Write a checkpoint atomically: to a temporary file in the same folder, then ``os.replace``.

    A crash at any moment leaves either the previous file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": None,  # (no GradScaler: bf16 autocast needs none; the key stays for the file's format)
        "step": step,
        "rng": rng_state(generator),
        "config": config,
        "versions": versions(),
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


def read_state(path: Path, map_location: Any = "cpu") -> Any:
    """Read a file saved by ``torch.save`` with ``weights_only=True``: tensors and plain data, no code.

    Raises:
        CheckpointError: with one sentence saying what is wrong with the file.
    """
    path = Path(path)
    said = not_a_file_to_read(path)
    if said is not None:
        raise CheckpointError(said)
    _check_format(path)
    _check_crc(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # ('unsupported GLOBAL posix.system whose module posix is blocked', too; torch < 2.4: 'Unsupported class')
        reason = next((line.strip() for line in str(e).splitlines()
                       if re.search("unsupported (global|class)", line, re.IGNORECASE)), "")
        if not reason:  # (another UnpicklingError, as 'Unsupported operand 0': damaged bytes)
            raise _corrupt(path, type(e).__name__) from None
        reason = reason[max(reason.find("WeightsUnpickler error"), 0):]  # (torch < 2.4: its advice on that line)
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds objects other than tensors and plain data, which "
            f"could run code when unpickled ({reason.split(' was not')[0]})") from None
    except Exception as e:  # damaged bytes fail in many ways: UnicodeDecodeError, KeyError, EOFError, ...
        raise _corrupt(path, type(e).__name__) from None
    return state


def export_record(info: Path) -> Optional[dict]:
    """What the ``export.json`` at ``info`` records (``byol export``'s); None where there is none, or it is not
    JSON or not an object."""
    try:
        record = json.loads(info.read_text())
    except (OSError, ValueError):  # (UnicodeDecodeError is a ValueError)
        return None
    return record if isinstance(record, dict) else None


def _exported(path: Path) -> bool:
    """Whether ``path`` is the state_dict that the ``export.json`` beside it names: a ``byol export``'s encoder.pt,
    not any file of a folder holding one (an export into a run's checkpoints/ puts one beside last.pt: a review)."""
    name = (export_record(path.parent / "export.json") or {}).get("state_dict")
    return isinstance(name, str) and Path(name).name == path.name  # (exports before 1 December 2026 gave paths)


def _corrupt(path: Path, why: str) -> CheckpointError:
    if _exported(path):  # an export's encoder.pt: a run's epoch_NNNN.pt is not the remedy
        return CheckpointError(f"checkpoint {path} is corrupt or truncated and cannot be read ({why}); export it "
                               "again from its run's checkpoint (byol export CHECKPOINT --out DIR)")
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


def is_torchscript(names: list[str]) -> bool:
    """Whether a zip holding the files ``names`` is a TorchScript module (``torch.jit.save``'s), not
    what ``torch.save`` wrote: its code and constants are in it."""
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _check_format(path: Path) -> None:
    """Refuse, in one sentence, a file that ``torch.save`` did not write, or a TorchScript export."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return  # torch.load reports it as corrupt
        if is_torchscript(names):
            raise CheckpointError(f"{path} is a TorchScript module (as `byol export` writes "
                                  "encoder_torchscript.pt); load it with torch.jit.load, and give byol a run's "
                                  "checkpoint or the exported encoder.pt")
        if names and not any(n.endswith("data.pkl") for n in names):  # (a user test: said to be corrupt)
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (a zip archive that torch.save did not write)")
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
        return int(peek(path)["step"])
    except Exception:  # not a checkpoint of ours, or torn
        return None


def saved_config(path: Path) -> dict:
    """The settings a checkpoint holds, read as :func:`saved_step` reads its step; {} where the file is
    not a readable checkpoint."""
    try:
        config = peek(path)["config"]
    except Exception:  # not a checkpoint of ours, or torn
        return {}
    return config if isinstance(config, dict) else {}


def peek(path: Path) -> Any:
    """What ``torch.save`` wrote in ``path``, its tensors mapped, not read (raises where it is not such a file)."""
    _check_format(path)  # (torch.load of a TorchScript export warns, then loads the module)
    return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)  # (torch < 2.3: mmap takes str only)


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict:
    """Read a byol checkpoint safely (see :func:`read_state`) and check that it is one."""
    state = read_state(path, map_location)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a byol checkpoint (no 'model' entry)")
    wrong = _malformed_entry(state)
    if wrong:  # (a user test: a checkpoint edited or made elsewhere ended a resume in a traceback)
        raise CheckpointError(f"{path} is not a complete byol checkpoint ({wrong}); resume from one a byol run wrote")
    return state


def _malformed_entry(state: dict) -> Optional[str]:
    """What is missing or of the wrong kind among the entries a resume reads; None where nothing is."""
    kinds = {"model": dict, "optimizer": dict, "step": int, "rng": dict, "config": dict}
    for key, kind in kinds.items():
        if key not in state:
            return f"no {key!r} entry"
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            return f"its {key!r} entry is of type {type(state[key]).__name__}, not {kind.__name__}"
    if not is_sections(state["config"]):
        return "its 'config' entry is not a mapping of sections"
    return None


def _differences(own: dict, state_dict: dict) -> list[str]:
    """What keeps ``state_dict`` from loading into a model whose own is ``own`` (its keys missing there, keys it
    does not have, tensors of another shape, values that are not tensors), each said with examples: [] where none."""
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state_dict and torch.is_tensor(state_dict[k]) and state_dict[k].shape != v.shape]
    # (torch refuses these after it has copied every other tensor: a review found a model half loaded)
    others = [f"{k} {type(state_dict[k]).__name__}" for k, v in own.items()
              if k in state_dict and torch.is_tensor(v) and not torch.is_tensor(state_dict[k])]
    return [f"{len(found)} {what} (e.g. {', '.join(found[:2])})" for found, what in (
        (missing, "of the model's keys missing there"), (unexpected, "keys the model does not have"),
        (shapes, "of another shape"), (others, "not tensors")) if found]


_GUESS = "different backbone, width, projector sizes or predictor?"


def check_model_state(model: nn.Module, state_dict: dict, source: str = "checkpoint", guess: str = _GUESS) -> None:
    """:func:`load_model_state`'s refusal of a state whose keys or shapes are not ``model``'s, loading nothing."""
    parts = _differences(unwrap(model).state_dict(), state_dict)
    if parts:
        raise CheckpointError(f"{source} does not match this model ({guess}): {'; '.join(parts)}")


def load_model_state(model: nn.Module, state_dict: dict, source: str = "checkpoint", guess: str = _GUESS) -> None:
    """``load_state_dict(strict=True)`` that turns a mismatch into a :class:`CheckpointError`, with ``guess``
    (what may differ) and the keys that do. A state that does not load leaves the model as it was (a network
    given from Python is the user's; load_state_dict copies what fits before it refuses the rest)."""
    own = unwrap(model).state_dict()
    parts = _differences(own, state_dict)
    # torch may yet take a state these find differences in (an old BatchNorm's missing num_batches_tracked): a
    # copy to put back is taken only then, and not on the way of every state that loads
    kept = ({k: v.to("cpu", copy=True) if torch.is_tensor(v) else v for k, v in own.items()}  # (not the GPU's)
            if parts else None)
    try:
        unwrap(model).load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        if kept is not None:
            unwrap(model).load_state_dict(kept)
        said = " ".join(str(e).split())[:300]  # (a module's own refusal: a learner's _extra_state)
        raise CheckpointError(f"{source} does not match this model ({guess}): "
                              f"{'; '.join(parts) or f'the state does not load ({said})'}") from None
