"""The settings' ranges: :func:`validate`, each ``section.key`` with its rule, as ``--section.key=value``,
a YAML file and a ``Config`` set in Python are checked (their types are :mod:`byol.config`'s)."""

import math
from typing import TYPE_CHECKING, Optional

from .config_files import ConfigError, did_you_mean, nearest

if TYPE_CHECKING:
    from .config import Config

# The model.backbone of a run whose network was given from Python (byol.pretrain(config, net=...)): a run's
# saved config says it, and byol cannot build it (given as an override, it is refused).
GIVEN_BACKBONE = "custom"


def refuse_data_limit(given: list[str]) -> None:
    """``data.limit`` (``section.key``) among the settings ``given`` to byol eval or embed refused: read by
    pretraining only, it was taken there and did nothing. Torch-free: the command line says it first, before
    what it finds of the checkpoint's path."""
    if "data.limit" in given:
        raise ConfigError("--data.limit does not apply to byol eval or embed (it is how many images pretraining "
                          "trains on); use --limit N (limit=N from Python) for the first N images of each split")


def validate(config: "Config", keys: Optional[list[str]] = None) -> "Config":
    """Reject values of the right type but outside their range, with the key and the rule; only
    those of ``keys`` (``section.key``) when given."""
    from .resnets import RESNETS  # (torch and torchvision: an unknown key or a wrong type is said without them)
    from .augment import view_preset_names
    from .color import COLOR_OPS
    from .datasets import DATASETS
    views = view_preset_names()
    t, a = config.train, config.augment
    rules = [("train.epochs", t.epochs >= 1, ">= 1"),
             ("train.batch_size", t.batch_size >= 2, ">= 2 (BatchNorm needs two images)"),
             ("train.log_every", t.log_every >= 1, ">= 1"), ("train.max_nonfinite", t.max_nonfinite >= 1, ">= 1"),
             ("train.knn_every", t.knn_every >= -1, ">= -1 (-1: never)"),
             ("train.checkpoint_every", t.checkpoint_every >= 0, ">= 0 (0: only the last)"),
             ("train.keep_checkpoints", t.keep_checkpoints >= 0, ">= 0 (0: all of them)"),
             ("train.save_interval_s", t.save_interval_s >= 0, ">= 0 (0: every epoch; inf: only at kept epochs, a "
              "stop and the end)"),
             ("train.max_steps", t.max_steps is None or t.max_steps >= 1, ">= 1 or null"),
             ("data.on_device", config.data.on_device in (True, False, "auto"), "auto, true or false"),
             ("train.progress", t.progress in (True, False, "auto"), "auto, true or false"),
             ("data.workers", config.data.workers >= 0, ">= 0"), ("model.width", config.model.width >= 1, ">= 1"),
             ("optim.lr", _finite(config.optim.lr) >= 0, "a finite number >= 0"),
             ("model.backbone", config.model.backbone in (*RESNETS, GIVEN_BACKBONE),
              f"one of {', '.join(RESNETS)}{_meant_backbone(config.model.backbone, RESNETS)}"),
             ("data.dataset", config.data.dataset in DATASETS, f"one of {', '.join(DATASETS)}"),
             ("augment.preset", config.augment.preset in views, f"one of {', '.join(views)}"),
             ("optim.name", config.optim.name in ("lars", "sgd", "adamw"), "lars, sgd or adamw"),
             ("train.precision", t.precision in ("auto", "bf16", "fp32"), "auto, bf16 or fp32"),
             ("train.compile", t.compile is True or t.compile is False or t.compile == "auto", "true, false or auto"),
             ("train.device", _is_device(t.device), "auto, cpu, cuda or cuda:N" + _not_mps(t.device)),
             ("train.cuda_graph", not (t.cuda_graph and t.compile is True),
              "false with train.compile=true (the CUDA graph captures the eager step)"),
             ("data.limit", config.data.limit is None or config.data.limit >= 1, ">= 1 or null"),
             ("train.knn_limit", t.knn_limit is None or t.knn_limit >= 1, ">= 1 or null"),
             ("train.knn_holdout", t.knn_holdout >= 0, ">= 0 (0: the monitor's queries are the test split)"),
             ("train.knn_holdout", t.knn_holdout == 0 or config.data.dataset != "folder",
              "0 with data.dataset=folder (its monitor's queries are ROOT/val or ROOT/test, not the test split)"),
             ("train.seed", -2**63 <= t.seed < 2**63, "between -2**63 and 2**63 - 1"),
             ("train.knn_k", t.knn_k >= 1, ">= 1"), ("train.tau_base", 0 <= t.tau_base <= 1, "between 0 and 1"),
             ("train.out_dir", t.out_dir.strip() != "", "a directory (not empty)"),
             ("data.root", config.data.root.strip() != "", "a directory (not empty)"),
             ("data.train_split", config.data.train_split.strip() != "", "a split's name (not empty: a folder's "
              "would be all of ROOT, its val/ too)"),  # (ROOT: a key named is read as a second setting the rule is of)
             ("data.image_size", config.data.image_size >= 8, ">= 8"),
             ("data.load_size", config.data.load_size is None or config.data.load_size >= 8, ">= 8 or null"),
             ("augment.crop_min_scale", config.augment.crop_min_scale is None or 0 < config.augment.crop_min_scale
              <= 1, "above 0 and at most 1 (a fraction of the image's area), or null"),
             ("augment.view1_blur_p", _is_probability(a.view1_blur_p), "between 0 and 1, or null"),
             ("augment.view2_blur_p", _is_probability(a.view2_blur_p), "between 0 and 1, or null"),
             ("augment.view1_solarize_p", _is_probability(a.view1_solarize_p), "between 0 and 1, or null"),
             ("augment.view2_solarize_p", _is_probability(a.view2_solarize_p), "between 0 and 1, or null"),
             ("augment.color_ops", a.color_ops in COLOR_OPS, f"one of {', '.join(COLOR_OPS)} (the colour jitter's "
              "ops: torchvision's ColorJitter, or the reference code's)"),
             ("model.projection_size", config.model.projection_size >= 1, ">= 1"),  # (a new run: >= 2, in pretrain)
             ("model.projection_hidden_size", config.model.projection_hidden_size >= 1, ">= 1"),
             ("optim.weight_decay", _finite(config.optim.weight_decay) >= 0, "a finite number >= 0"),
             ("optim.momentum", 0 <= config.optim.momentum < 1, ">= 0 and < 1"),
             ("optim.trust_coefficient", _finite(config.optim.trust_coefficient) > 0, "a finite number > 0"),
             ("optim.beta1", 0 <= config.optim.beta1 < 1, ">= 0 and < 1"),
             ("optim.beta2", 0 <= config.optim.beta2 < 1, ">= 0 and < 1"),
             ("optim.warmup_epochs", _finite(config.optim.warmup_epochs) >= 0, "a finite number >= 0"),
             *_whole_number_rules(config)]
    for key, ok, rule in rules:
        if not ok and (keys is None or key in keys):
            raise ConfigError(f"{key} must be {rule}")
    return config


def _whole_number_rules(config: "Config") -> list:
    """Every whole-number setting below 2**63: torch takes sizes as 64-bit numbers, and a larger one (a user
    test: ``--model.width=99999999999999999999``, or ``image_size`` so) ended in torch's "Overflow when unpacking
    long" traceback as the network was built."""
    return [(f"{section}.{key}", -2**63 <= value < 2**63, "below 2**63 (a 64-bit whole number)")
            for section, values in config.to_dict().items() for key, value in values.items()
            if isinstance(value, int) and not isinstance(value, bool)]


def _meant_backbone(name: str, resnets: tuple) -> str:
    """`` (did you mean resnet18?)`` for a mistyped or mis-cased backbone with a ResNet's depth (``resnet81``,
    ``ResNet-18``); "" otherwise, not another depth for one torchvision lacks (``resnet200``). (A user test:
    ``ResNet18`` was told the list alone.)"""
    def depth(word: str) -> list:
        return sorted(c for c in word if c.isdigit())
    same_depth = [r for r in resnets if depth(r) == depth(str(name))]
    return did_you_mean(nearest(str(name).lower().replace("-", "").replace("_", ""), same_depth))


def _finite(value: float) -> float:
    """``value``, or NaN (which no range check passes) for an infinite one: lr=inf passed >= 0 and
    trained to NaN. (Refused here, not as the file is read: a saved run's inf elsewhere stays readable.)"""
    return value if math.isfinite(value) else math.nan


def _is_probability(value: Optional[float]) -> bool:
    return value is None or 0 <= value <= 1


def _not_mps(name: str) -> str:
    """Why Apple's GPU is not among the devices, for a Mac user who asks for it."""
    return " (Apple's GPU, mps, is not supported: on a Mac, auto runs on the CPU)" if name.startswith("mps") else ""


def _is_device(name: str) -> bool:
    if name == "auto":
        return True
    import torch
    try:
        return torch.device(name).type in ("cpu", "cuda")  # the devices the loop is built and tested for
    except RuntimeError:
        return False
