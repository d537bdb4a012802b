"""byol: Bootstrap Your Own Latent, fast and faithful self-supervised pretraining of image encoders.

The public names below are imported on first use (PEP 562), so ``byol --help``, a command line's
usage errors and pretrain's unknown settings, presets and values of the wrong type answer without
loading torch and torchvision (seconds); a value out of range, or a checkpoint's path, is checked
with them loaded.
"""

import importlib
import importlib.util
from typing import TYPE_CHECKING

__version__ = "0.1.0"  # the one place: pyproject.toml reads it (dynamic), as do checkpoints and --version

_EXPORTS = {  # public name -> the module that defines it
    "BYOL": "dropin", "BYOLModel": "model", "MLP": "model", "LARS": "optim", "build_optimizer": "optim",
    "param_groups": "optim", "byol_loss": "loss", "regression_loss": "loss", "build_target": "ema",
    "update_target": "ema",
    "cosine_lr": "schedules", "tau_schedule": "schedules", "resnet": "resnets", "cut_at": "backbones",
    "Config": "config", "load_config": "config", "resume_config": "resume_settings", "pretrain": "train",
    "knn": "pipeline", "linear": "pipeline",
    "embed": "embeddings", "export": "exports", "load_encoder": "encoders", "keep_freed_memory": "allocator",
    "ByolError": "errors", "ConfigError": "config_files", "DataError": "data", "CheckpointError": "checkpoint",
    "OutputError": "outputs",
}
__all__ = [
    "BYOL", "BYOLModel", "MLP", "LARS", "byol_loss", "regression_loss", "build_target", "update_target",
    "cosine_lr", "tau_schedule", "build_optimizer", "param_groups", "resnet", "cut_at",
    "Config", "load_config", "resume_config", "pretrain", "knn", "linear", "embed", "export", "load_encoder", "keep_freed_memory",
    "ByolError", "ConfigError", "DataError", "CheckpointError", "OutputError",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        # A module of the package, such as byol.schedules after a bare `import byol` (importing it
        # makes it a plain attribute); not __main__, which would run the command line.
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f".{name}", __name__)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs, which do not run __getattr__
    from .backbones import cut_at
    from .resnets import resnet
    from .checkpoint import CheckpointError
    from .config_files import ConfigError
    from .data import DataError
    from .errors import ByolError
    from .outputs import OutputError
    from .config import Config, load_config
    from .ema import build_target, update_target
    from .embeddings import embed
    from .exports import export
    from .loss import byol_loss, regression_loss
    from .dropin import BYOL
    from .model import BYOLModel, MLP
    from .optim import LARS, build_optimizer, param_groups
    from .encoders import load_encoder
    from .pipeline import knn, linear
    from .resume_settings import resume_config
    from .schedules import cosine_lr, tau_schedule
    from .allocator import keep_freed_memory
    from .train import pretrain
