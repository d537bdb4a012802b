"""Checkpoints: complete (everything needed to resume exactly), atomic, and loaded strictly and safely."""

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from . import __version__


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
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_state(path: Path, map_location: Any = "cpu") -> Any:
    """Read a file saved by ``torch.save`` with ``weights_only=True``: tensors and plain data, no code.

    Raises:
        CheckpointError: with one sentence saying what is wrong with the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = next((line.strip() for line in str(e).splitlines() if "Unsupported" in line), "")
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds objects other than tensors and plain data, which "
            f"could run code when unpickled ({reason.split(' was not')[0] or 'unsafe pickle'})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated and cannot be read "
                              f"({type(e).__name__}); use an earlier checkpoint") from None
    return state


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
    except RuntimeError as e:
        first = str(e).splitlines()
        raise CheckpointError(f"{source} does not match this model (different backbone, width or "
                              f"projector sizes?): {' '.join(line.strip() for line in first[:2])}") from None
