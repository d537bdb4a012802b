"""A pretraining run's setup, before its loop: the config checked for a run, the device made ready, the
model, optimizer and generator seeded and built, the data loaded, and what is saved and said before the
first step. Called by ``train.py``, whose loop runs on what these return.
"""

import os
import random
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from . import distributed as dist
from .allocator import keep_freed_memory
from .build import build_model, check_evaluated_size
from .config import Config, ConfigError, TrainConfig, checked
from .config_files import read_preset
from .data import DataError
from .dropin import BYOL
from .memory import check_step_fits
from .optim import build_optimizer
from .precision import autocast_dtype, resolve_device
from .reporting import (note_cpu, note_no_augmentation, note_stl10_views, note_train_split, note_unused_optim,
                        note_warmup)
from .run_folder import RunFolder, resumes
from .train_data import TrainData, load_data


def checked_run_config(config: Config, resume: Union[bool, str]) -> tuple[Config, bool]:
    """``config`` checked (:func:`~byol.config.checked`: a notebook may have set fields since), as a copy
    whose ``data.root`` is absolute (the saved config finds the data from any directory) and whose
    ``train.out_dir`` starts at the home folder where it says ``~`` (a shell leaves ``--x=~/runs`` so).
    A new run's projections are at least 2 wide (the loss compares directions, and one number has only
    its sign; the collapse monitor's std misread it as healthy); a run of 1 from before is read, and resumed.
    Also whether the start resumes (``resume="auto"``: where the folder holds a checkpoint)."""
    config = checked(config)
    resume = resumes(resume, config.train.out_dir)
    if config.model.projection_size < 2 and not resume:
        raise ConfigError(f"model.projection_size must be >= 2 for a new run (the loss compares the projections' "
                          f"directions, and one number has only its sign), got {config.model.projection_size}")
    config.data.root = os.path.abspath(os.path.expanduser(config.data.root))
    config.train.out_dir = os.path.expanduser(config.train.out_dir)
    return config, resume


def prepare_device(t: TrainConfig) -> tuple[torch.device, Optional[torch.dtype]]:
    """The training device and autocast dtype, with the process set up for fast steps on it."""
    device = resolve_device(t.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution kernels once
    elif t.keep_freed_memory:
        keep_freed_memory()  # no page faults for each step's activations (glibc; elsewhere a no-op)
    return device, autocast_dtype(t.precision, device)


def build_run(config: Config, device: torch.device, rank: int, world: int, net: Optional[nn.Module],
              given: Optional[dict]):
    """The model (of ``net``, cut at ``given["hidden_layer"]``, where given), its optimizer and this process's
    augmentation generator, seeded by ``train.seed``."""
    t, o = config.train, config.optim
    # Seeded here, so the initial weights depend on the seed alone, not on what loading drew:
    # `byol eval --random-init` rebuilds them. NumPy's and Python's too, which byol does not draw from but
    # code given to it may: a run resumed goes on with them as the uninterrupted run would (restored by
    # the checkpoint), where a new process's own seeds made them differ. The caller's are put back after.
    torch.manual_seed(t.seed + rank)
    np.random.seed((t.seed + rank) % 2**32)  # NumPy's takes 0 to 2**32 - 1
    random.seed(t.seed + rank)
    # net's layers after hidden_layer too, which the model holds no reference to where it traced the cut
    byol = (build_model(config, net.to(device), given["hidden_layer"]) if given else build_model(config)).to(device)
    if given and t.knn_every >= 0:  # the kNN monitor feeds net the images evaluation takes (with it off, nothing
        check_evaluated_size(config, byol.online.encoder)  # does: a review found such a run, which trained, refused)
    if world > 1:
        byol = dist.convert_sync_batchnorm(byol, device)
    optimizer = build_optimizer(o.name, nn.ModuleList([byol.online, byol.predictor]), lr=o.lr,
                                weight_decay=o.weight_decay, momentum=o.momentum,
                                trust_coefficient=o.trust_coefficient, lars_clip=o.lars_clip, betas=(o.beta1, o.beta2))
    generator = torch.Generator(device=device).manual_seed(t.seed + rank)
    return byol, optimizer, generator


def load_run_data(config: Config, device: torch.device, rank: int, world: int, resume: bool) -> TrainData:
    """:func:`~byol.train_data.load_data`; where a resumed run's own data is gone, the error says how to
    resume it from where the data moved (not where a new ``--data.root`` was given)."""
    try:
        return load_data(config, device, rank, world)
    except DataError as e:
        root, saved = Path(config.data.root).expanduser(), _saved_root(config)
        if not resume or "--data.root" in str(e) or root.is_dir() or (saved is not None and root != saved):
            raise
        said = str(e).removesuffix("; check the path")
        raise DataError(f"{said}; where the data moved since the run, resume with --data.root=NEW") from None


def _saved_root(config: Config) -> Optional[Path]:
    """The data.root of the run's saved config.yaml (None where it has none)."""
    try:
        root = read_preset(Path(config.train.out_dir).expanduser() / "config.yaml").get("data", {}).get("root")
    except (ConfigError, OSError, AttributeError):
        return None
    # made absolute as the run's own is (checked_run_config): a relative one, written by hand or by an earlier
    # byol, is the same root here, not one given anew
    return Path(os.path.abspath(os.path.expanduser(str(root)))) if root is not None else None


def before_first_step(config: Config, byol: BYOL, data: TrainData, device: torch.device,
                      amp: Optional[torch.dtype], folder: Optional[RunFolder], resume_step: Optional[int],
                      world: int, moved_from: Optional[str] = None) -> None:
    """A CPU step checked against the free memory, the config saved (in ``folder``: rank 0's; the
    settings a resumed run's earlier steps ran with kept where they differ), the notes, and for a
    resumed run the files it skipped before it stopped (on every rank; ``moved_from``: the checkpoint's
    ``data.root``, whose files are listed under the folder's new place where it moved)."""
    t, run_dir = config.train, Path(config.train.out_dir)
    if device.type == "cpu" and world == 1 and t.compile is not True:  # a GPU says out of memory by itself
        check_step_fits(byol, t.batch_size, config.data.image_size, amp, resumed=resume_step is not None)
    if folder is not None:
        folder.save_config(config, resume_step)
        note_cpu(config, device)
        note_warmup(config, len(data.batches))
        note_unused_optim(config)
        note_no_augmentation(config)  # (a resume may have changed the preset to none)
        note_stl10_views(config)
        if resume_step is None:
            note_train_split(config)
    if resume_step is not None and data.folder is not None:  # every rank's: its resumed epoch starts after
        data.folder.read_skipped(run_dir / "skipped_files.txt",  # the batches it skips (TrainData.start_at)
                                 moved=(moved_from, config.data.root) if moved_from else None)
