"""What ``byol eval``, ``byol embed`` and their Python functions take besides a checkpoint: the config settings
each reads (:data:`SETTINGS_READ`; those given that it does not read are noted), and the counts and options a
Python caller passes, checked as the command line checks its own."""

import math
import numbers
from typing import Iterable, Optional, Sequence

from .config import Config, ConfigError
from .config_files import override_key
from .distributed import note


# What byol eval and embed read of a config besides the model (the checkpoint's): the data, where and in what
# precision the features are computed, the view recipe's normalization (augment.preset's mean and std: given
# for a bare state_dict only, a checkpoint's is its own), and
# for the linear probe its shuffling seed; a folder split to embed is found by data.train_split; the command
# line's progress bars by train.progress (the functions' own by their progress argument); on a CPU, whether the
# process keeps freed memory by train.keep_freed_memory.
_READ_AFTER_PRETRAINING = ("data.dataset", "data.root", "data.download", "data.image_size", "data.load_size",
                           "data.workers", "augment.preset", "train.device", "train.precision", "train.progress",
                           "train.keep_freed_memory")
SETTINGS_READ = {"eval knn": _READ_AFTER_PRETRAINING, "eval linear": _READ_AFTER_PRETRAINING + ("train.seed",),
                 "embed": _READ_AFTER_PRETRAINING + ("data.train_split",)}


# What only a folder is read with: CIFAR and STL-10 are evaluated at their own size, decoded in this process.
_FOLDER_ONLY = ("data.image_size", "data.load_size", "data.workers", "data.train_split")


def unused_settings(overrides: list[str], command: str, dataset: str = "folder") -> list[str]:
    """The config keys set in ``overrides`` (``--section.key=value``) that ``byol COMMAND`` (a key of
    :data:`SETTINGS_READ`) does not read on ``dataset``: pretraining's. Not ``model.*`` (refused, or
    for a bare state_dict read), ``data.limit`` (refused) nor keys that are no config key (refused too)."""
    known = Config().to_dict()
    keys = dict.fromkeys(override_key(o) for o in overrides)
    return [key for key in keys if key.partition(".")[2] in known.get(key.partition(".")[0], {})
            and not key.startswith("model.") and key != "data.limit" and (
                key not in SETTINGS_READ[command] or (dataset != "folder" and key in _FOLDER_ONLY))]


def note_unused(overrides: Optional[list[str]], command: str, config: Config) -> None:
    """Name the settings given that ``byol COMMAND`` does not read (once its checks have passed)."""
    unused = unused_settings(overrides or [], command, config.data.dataset)
    if unused:
        # (a user test: --train.knn_k=5 given to eval knn, which was said to be ignored, and nothing more)
        instead = "; the number of neighbours here is --k" if command == "eval knn" and "train.knn_k" in unused else ""
        note(f"byol {command} does not use {', '.join(unused)} (pretraining settings); "
             f"{'it is' if len(unused) == 1 else 'they are'} ignored{instead}")


def check_counts(**counts) -> tuple:
    """The Python callers' counts, checked as the command line checks its options: ``limit`` a whole
    number >= 1 or None, ``holdout`` >= 0, ``epochs`` and each of ``ks`` >= 1, ``temperature`` a finite
    number > 0.
    Returns them in the order given, as Python's ints and floats (NumPy's are taken: ``(y == 3).sum()``
    is one), ``ks`` as a tuple."""
    least = {"limit": 1, "holdout": 0, "epochs": 1, "ks": 1}
    checked = []
    for name, value in counts.items():
        if name == "temperature":
            # finite, as the command line's --temperature (inf was taken here, and written to JSON as Infinity)
            if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < value < math.inf):
                raise ConfigError(f"temperature must be a finite number > 0, got {value!r}")
            checked.append(float(value))
            continue
        if name == "ks" and (isinstance(value, (str, bytes)) or not isinstance(value, Iterable)):
            # ks=20 failed: "'int' object is not iterable"
            raise ConfigError(f"ks must be a list or tuple of whole numbers >= 1, such as (20, 200), got {value!r}")
        values = list(value) if name == "ks" else [value]  # once: an iterator is read once
        if name == "ks" and not values:  # ks=(): a ValueError from knn_accuracy, once the features were extracted
            raise ConfigError(f"ks must hold at least one whole number >= 1, such as (20, 200), got {value!r}")
        for v in values:
            if v is None and name == "limit":
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < least[name]:
                raise ConfigError(f"{name} must be a whole number >= {least[name]}"
                                  f"{' or None' if name == 'limit' else ''}, got {value!r}")
        checked.append(tuple(int(k) for k in values) if name == "ks" else None if value is None else int(value))
    return tuple(checked)


# The command line's own options of byol eval and embed, as the keyword arguments of byol.knn, linear and embed
# (OPTION: (argument, how its value is written)).
_OWN_OPTIONS = {"limit": ("limit", "{}"), "k": ("ks", "({},)"), "temperature": ("temperature", "{}"),
                "holdout": ("holdout", "{}"), "random-init": ("random_init", "True"), "epochs": ("epochs", "{}"),
                "split": ("split", "{!r}")}


def refuse_own_options(overrides, function: str, arguments: Sequence[str]) -> None:
    """An option of the command line (``--limit=5``) given to ``byol.FUNCTION`` among its config overrides, one
    string or in the list, said as the keyword argument to pass instead (``arguments``: those ``function`` takes).
    It was refused as one string (pass ['--limit=5']), then as the unknown key 'limit' (did you mean data.limit?),
    then data.limit pointed back to limit=N: a loop (a review)."""
    items = [overrides] if isinstance(overrides, str) else overrides if isinstance(overrides, (list, tuple)) else []
    for item in items:
        option, eq, value = item.removeprefix("--").partition("=") if isinstance(item, str) else ("", "", "")
        name, write = _OWN_OPTIONS.get(option.replace("_", "-"), (None, ""))
        if name in arguments:
            if option == "k":  # the command line's --k takes several ('--k=5 10'): ks=(5, 10), not ks=(5 10,)
                value = ", ".join(value.replace(",", " ").split())
                write = "({})" if "," in value else write
            given = write.format(value if eq and value else "N")
            if name == "random_init":  # a flag on the command line; given a value here, the value said as a bool
                given = str(not (eq and value.strip().lower() in ("false", "0", "no", "off")))
            raise ConfigError(f"{item!r} is an option of the command line, not a config setting: pass "
                              f"{name}={given} to byol.{function} itself, not in its overrides")
