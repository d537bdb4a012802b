"""Continuing a run: its last checkpoint restored into the model, optimizer and generators, and
what the settings given now change about it said up front."""

import math
import sys
from pathlib import Path
from typing import Optional

import torch

from .build import autocast_dtype, precision_name, schedule_of
from .checkpoint import CheckpointError, load_checkpoint, load_model_state, set_rng_state
from .config import Config, ConfigError, changed_settings, config_from_dict
from .model import BYOL
from .schedules import cosine_lr, tau_schedule


def restore(ckpt_path: Path, config: Config, byol: BYOL, optimizer: torch.optim.Optimizer,
             generator: torch.Generator, rank: int, world: int, steps_per_epoch: int,
             amp: Optional[torch.dtype] = None) -> tuple[int, float]:
    """Load the run's last checkpoint into the model, optimizer and generators; return its step and
    the seconds the run had run when it was written (``time_s``; 0 for a checkpoint that does not say).
    ``amp``: this run's autocast dtype, said when it differs from the checkpoint's steps'."""
    state = load_checkpoint(ckpt_path, map_location="cpu")  # RNG states must stay on the CPU
    saved_batch = state["config"].get("train", {}).get("batch_size")
    if saved_batch != config.train.batch_size:
        raise CheckpointError(f"{ckpt_path} was trained with train.batch_size={saved_batch}, and its step count, "
                              "schedules and place in the data are in steps of that many images; resume with "
                              f"--train.batch_size={saved_batch}, or start a new run for another batch size")
    saved_holdout = state["config"].get("train", {}).get("knn_holdout", 0)
    if saved_holdout != config.train.knn_holdout:
        raise CheckpointError(f"{ckpt_path}'s kNN monitor scored train.knn_holdout={saved_holdout} held-out "
                              "train images (0: the test split); another value would change its queries mid-run, "
                              f"under the same names in the logs: resume with --train.knn_holdout={saved_holdout}")
    load_model_state(byol, state["model"], str(ckpt_path))
    saved_optim = state["config"].get("optim", {}).get("name")
    if saved_optim != config.optim.name:
        raise CheckpointError(f"{ckpt_path} was trained with optim.name={saved_optim}; resume with the "
                              "same optimizer")
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"the optimizer state in {ckpt_path} does not fit this run ({e})") from None
    set_rng_state(state["rng"], generator)
    per_rank = state.get("extra", {}).get("generator_per_rank")
    if world > 1 and per_rank is not None and len(per_rank) == world:
        generator.set_state(per_rank[rank])  # rank 0 saved every rank's augmentation stream
    _, _, total = schedule_of(config, steps_per_epoch)
    if rank == 0:
        _note_changes(state, config, steps_per_epoch)
        if state["step"] < min(total, config.train.max_steps or total):  # a finished run goes on in none
            _note_precision(_precision_of(state), precision_name(amp), config)
    return state["step"], float(state.get("extra", {}).get("time_s", 0.0))


def _precision_of(state: dict) -> Optional[str]:
    """The precision a checkpoint's steps ran in: as it records it, else (an older byol's) as its config
    names it, fp32 or bf16; None for ``auto``, which resolved by machine."""
    recorded = state.get("extra", {}).get("precision")
    named = state["config"].get("train", {}).get("precision")
    if recorded or named not in ("fp32", "bf16"):
        return recorded
    return precision_name(autocast_dtype(named, torch.device("cpu")))  # fp32 and bf16 name one dtype anywhere


def _note_precision(saved: Optional[str], now: str, config: Config) -> None:
    """``train.precision=auto`` resolves by machine (bf16 where it has bf16 arithmetic): say when a
    resumed run goes on in another precision than its checkpoint's steps ran in, or in one that the
    checkpoint cannot be compared with (an older byol's, run with ``auto``)."""
    if saved is None:
        print(f"note: the checkpoint does not say which precision its steps ran in (an older byol, with "
              f"train.precision=auto); "
              f"this run goes on in {now} (train.precision={config.train.precision} here); choose with "
              "--train.precision=bf16 or --train.precision=fp32", file=sys.stderr)
    elif saved != now:
        keep = "bf16" if saved.startswith("bf16") else "fp32"
        print(f"note: the checkpoint's steps ran in {saved}, and this run goes on in {now} (train.precision="
              f"{config.train.precision} here); --train.precision={keep} keeps {saved}", file=sys.stderr)


def _note_changes(state: dict, config: Config, steps_per_epoch: int) -> None:
    """Name the settings that differ from the checkpoint's, and what they do to the schedules."""
    try:  # the saved values read as a config would be (e.g. an older file's on_device "false" is False)
        saved = config_from_dict(state["config"])
    except ConfigError:  # a key this version no longer has
        saved = None
    changed = changed_settings(saved.to_dict() if saved else state["config"], config.to_dict())
    if changed:
        print(f"note: resuming with settings that differ from the checkpoint's: {', '.join(changed)}",
              file=sys.stderr)
    saved_epoch = state.get("extra", {}).get("steps_per_epoch", steps_per_epoch)
    if saved_epoch != steps_per_epoch:
        print(f"note: the data now makes {steps_per_epoch} steps an epoch, the checkpoint's run {saved_epoch}: "
              "its epochs are counted anew from here", file=sys.stderr)
    if saved is None:
        return
    step = state["step"]
    lr0, tau0 = _schedules_at(saved, step, saved_epoch)
    lr1, tau1 = _schedules_at(config, step, steps_per_epoch)
    if not (math.isclose(lr0, lr1, rel_tol=1e-3) and math.isclose(tau0, tau1, rel_tol=1e-6)):
        print(f"note: the schedules follow the new settings from step {step} on: learning rate {lr0:.4g} -> "
              f"{lr1:.4g}, tau {tau0:.6g} -> {tau1:.6g} (a longer run's cosine schedules are stretched to its "
              "length, so they rise again)", file=sys.stderr)


def _schedules_at(config: Config, step: int, steps_per_epoch: int) -> tuple[float, float]:
    """The learning rate and tau that ``config`` gives at ``step``, as the loop computes them."""
    lr, warmup, total = schedule_of(config, steps_per_epoch)
    return cosine_lr(step, total, lr, warmup), tau_schedule(step, total, config.train.tau_base)
