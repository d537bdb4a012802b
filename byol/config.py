"""Typed configuration: dataclass defaults, YAML presets over them, ``--section.key=value`` over those.

Reading the files: ``config_files.py``; each value against its field's type: ``config_values.py``; the
rules across settings: ``config_rules.py``.
"""

import dataclasses
import os
import re
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .files import write_text_atomically
from .config_files import ConfigError, did_you_mean, nearest, no_space_after_colon, override_key, presets_folder, read_preset
from .config_values import coerce, is_empty, kind_in_words, yaml_word
from .config_rules import GIVEN_BACKBONE, validate


@dataclass
class DataConfig:
    dataset: str = "cifar10"          # cifar10 | cifar100 | stl10 | folder
    root: str = "data"                # folder holding the data set (or the images, for "folder")
    download: bool = False            # fetch CIFAR / STL-10 when files are missing (needs internet)
    train_split: str = "train"        # stl10: "unlabeled", "train+unlabeled"; folder: ROOT/<this> (must be there;
                                      # train: all of ROOT where there is no ROOT/train)
    image_size: int = 32              # side of the augmented views
    load_size: Optional[int] = None   # folder: decode to this square before device crops (default 8/7 x image_size)
    workers: int = 4                  # decoding processes for image folders (CIFAR, STL-10: none, held in memory)
    on_device: Union[bool, str] = "auto"  # keep the set as one uint8 tensor on the GPU: auto (CIFAR, STL-10: yes,
                                      # unless it takes over a quarter of its memory; folders: no, streamed),
                                      # true (a folder too: decoded once), false (host memory, batches copied over)
    limit: Optional[int] = None       # use only the first N training images (quick runs, tests; a folder's
                                      # first N files as scanned: each folder's, sorted, before its
                                      # sub-folders'; all of them, with a note, above their number)


@dataclass
class ModelConfig:
    backbone: str = "resnet18"        # resnet18 | resnet34 | resnet50 | resnet101 | resnet152 (custom: a network of
                                      # your own, given as byol.pretrain(config, net=...), which sets it;
                                      # docs/python_api.md)
    cifar_stem: bool = True           # 3x3 stride-1 first conv and no max-pool, for 32x32 images
    width: int = 64                   # channels of the first stage (64 = torchvision)
    projection_size: int = 256        # width of the projections z and predictions p (paper: 256)
    projection_hidden_size: int = 4096  # hidden layer of the projector and predictor MLPs (paper: 4096)
    use_predictor: bool = True        # false drops the predictor: an ablation that collapses (paper, table 5)
    concat_views: bool = False        # one BatchNorm batch for both views instead of one per view


@dataclass
class AugmentConfig:
    preset: str = "cifar"             # paper | cifar (the paper's, blur off, CIFAR-10's mean/std) | none (an ablation)
    crop_min_scale: Optional[float] = None  # smallest crop area fraction; None keeps the preset's (0.08)
    view1_blur_p: Optional[float] = None  # view 1's Gaussian blur probability; None keeps the preset's (paper: 1.0,
                                      # cifar: 0)
    view2_blur_p: Optional[float] = None  # view 2's (paper: 0.1, cifar: 0)
    view1_solarize_p: Optional[float] = None  # view 1's solarization probability (paper and cifar: 0)
    view2_solarize_p: Optional[float] = None  # view 2's (paper and cifar: 0.2)
    color_ops: str = "torchvision"    # the colour jitter's ops: torchvision (ColorJitter's, as byol-pytorch,
                                      # solo-learn, lightly) | reference (deepmind-research's: brightness adds a
                                      # delta, contrast per channel, saturation scales the HSV saturation); a
                                      # config saved without it: torchvision


VIEW_PROBABILITIES = ("view1_blur_p", "view2_blur_p", "view1_solarize_p", "view2_solarize_p")  # augment's, per view


@dataclass
class OptimConfig:
    name: str = "lars"                # lars | sgd | adamw
    lr: float = 0.2                   # base learning rate for 256 images; used: lr x batch_size / 256
    weight_decay: float = 1.5e-6      # paper (LARS, ImageNet); none on biases and norms
    momentum: float = 0.9             # of lars and sgd (paper: 0.9); adamw does not use it
    trust_coefficient: float = 0.001  # LARS's eta (paper: 0.001)
    lars_clip: bool = False           # cap LARS's step at plain SGD's (solo-learn's CIFAR recipe; not the paper)
    beta1: float = 0.9                # AdamW's first beta (torch's default); lars and sgd do not use it
    beta2: float = 0.999              # AdamW's second beta (torch's default)
    warmup_epochs: float = 10.0       # linear warm-up (paper: 10 epochs, of 1,000); shorter than train.epochs


@dataclass
class TrainConfig:
    epochs: int = 100                 # the learning-rate and tau schedules span them
    batch_size: int = 512             # global batch: summed over all processes under torchrun
    max_steps: Optional[int] = None   # stop after this many steps (the schedules still span all epochs)
    tau_base: float = 0.996           # EMA rate at step 0, raised to 1 on a cosine
    seed: int = 0                     # initial weights, augmentations, NumPy's and Python's generators (+ rank)
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    precision: str = "auto"           # auto (bf16 where native: GPUs, CPUs with AVX-512-BF16 or AMX) | bf16 | fp32
    compile: Union[bool, str] = "auto"  # torch.compile the training step (eager where compiling fails):
                                      # auto = off: on an H100 it compiled in 77 s and ran 1.29x eager, slower
                                      # than train.cuda_graph (BENCHMARKS.md, "GPU"); true to ask for it
    cuda_graph: bool = False          # EXPERIMENTAL (its GPU tests passed on one H100; 1.51x eager, 2 rounds):
                                      # replay each step's augmentation, forward and backward from one
                                      # CUDA graph (byol.cuda_graph.GraphedLoopStep);
                                      # one CUDA GPU, eager (not with train.compile=true)
    keep_freed_memory: bool = True    # CPU: reuse freed memory step to step instead of handing it back to
                                      # the system (~1.2x faster at batch 512; the process keeps its peak);
                                      # eval and embed too (~1.6x faster)
    out_dir: str = "runs/byol"        # the run directory: config.yaml, checkpoints/, metrics, plots
    log_every: int = 20               # steps between metric reads (the only host syncs in the loop)
    checkpoint_every: int = 10        # epochs between kept checkpoints (the last one is always kept)
    keep_checkpoints: int = 0         # of the kept epoch_NNNN.pt, only the newest N stay (0: all of them)
    save_interval_s: float = 0.0      # write checkpoints/last.pt and the plots at an epoch's end only if this
                                      # many seconds have passed since they were last written (0: every
                                      # epoch); always at kept epochs, on a stop and at the end
    knn_every: int = 10               # epochs between kNN evals, plus start and end (0: those only; -1: never)
    knn_k: int = 200                  # the kNN monitor's k (k=20 is logged too), the closing table's
    knn_limit: Optional[int] = None   # kNN monitor on the first N images of each labeled split (quick runs);
                                      # a folder's are spread over its classes (default 10,000 for folders)
    knn_holdout: int = 0              # CIFAR/STL-10: monitor on N training images held out of the memory bank
                                      # (a fixed draw, the same for every seed), not on the test split, so
                                      # settings can be chosen without it; pretraining still sees them
    progress: Union[bool, str] = "auto"  # the progress bar on stderr: auto (where stderr is a terminal), true, or
                                      # false: a line an epoch instead (what auto does for a log file)
    max_nonfinite: int = 10           # stop when a metric read (every log_every steps) finds at least this many
    #                                   NaN/inf losses (or weights) in a row (each such step is undone)


@dataclass
class Config:
    """Every setting of a run, by section: ``config.train.epochs`` is ``--train.epochs``. Build one with
    :func:`load_config`; one changed in Python is checked again when a function is given it."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def _set(config: Config, key: str, value: Any) -> None:
    section_name, _, name = key.partition(".")
    sections = {f.name: f for f in dataclasses.fields(config)}
    if section_name not in sections or not name:
        raise ConfigError(f"unknown config key {key!r}{_did_you_mean(key)}; keys look like section.key with "
                          f"section one of {', '.join(sections)}")
    section = getattr(config, section_name)
    hints = typing.get_type_hints(type(section))
    if name not in hints:
        raise _unknown_key(key, section)
    if is_empty(value, hints[name]):
        default = next(f.default for f in dataclasses.fields(section) if f.name == name)
        raise ConfigError(f"{key} is empty; give {kind_in_words(hints[name])} (the default is "
                          f"{yaml_word(default)})")
    value = coerce(value, hints[name], key)
    setattr(section, name, value.lower() if key == "optim.name" else value)  # as build_optimizer always read it


def _unknown_key(key: str, section: Any) -> ConfigError:
    return ConfigError(f"unknown config key {key!r}{_did_you_mean(key)}; {key.partition('.')[0]} has "
                       f"{', '.join(f.name for f in dataclasses.fields(section))}")


def _did_you_mean(key: str) -> str:
    return did_you_mean(meant_key(key))


def meant_key(key: str) -> Optional[str]:
    """The setting a mistyped ``key`` most likely meant: the same name in another section
    (``train.lr``: optim.lr; ``epochs``: train.epochs), else the closest spelling (``optim.lrr``,
    ``trian.lr``); None if nothing is close."""
    config = Config()
    keys = [f"{s.name}.{f.name}" for s in dataclasses.fields(config)
            for f in dataclasses.fields(getattr(config, s.name))]
    name = str(key).rpartition(".")[2]
    moved = [k for k in keys if k.rpartition(".")[2] == name]
    return moved[0] if len(moved) == 1 else nearest(key, keys)


def _closest(word: Any, choices: list[str]) -> str:
    return did_you_mean(nearest(word, choices))


def load_config(preset: Union[str, os.PathLike, None] = None, overrides: Optional[list[str]] = None) -> Config:
    """Resolve a config: defaults, then the preset (a name from ``configs/`` or a YAML path), then overrides.

    Args:
        preset: e.g. ``"cifar10"`` or ``"my_run.yaml"``; ``None`` keeps the defaults.
        overrides: strings ``"section.key=value"`` (a leading ``--`` is allowed).
    """
    config = Config()
    from_file: set[str] = set()
    if preset is not None:
        sections = read_preset(preset)
        if all(values in (None, {}) for values in sections.values()):  # (also train: {}, or keys all commented out)
            raise ConfigError(f"config {os.fspath(preset)} holds no settings; give a preset or a file that sets some")
        try:  # (a user test: "train.epochs must be >= 1" for a hand-edited config.yaml named no file)
            for section, values in sections.items():
                _check_section(config, section, values)
                for name, value in values.items():
                    _set(config, f"{section}.{name}", value)
                    from_file.add(f"{section}.{name}")
        except ConfigError as e:
            raise ConfigError(f"config {os.fspath(preset)}: {e}") from None
    given = override_list(overrides)
    apply_overrides(config, given)
    try:
        return validate(config)
    except ConfigError as e:  # the file's, unless the command line gave a setting the rule names (two, some)
        if str(e).partition(" ")[0] in from_file and not names_a_setting_given(e, given):
            raise ConfigError(f"config {os.fspath(preset)}: {e}") from None
        raise


def names_a_setting_given(error: ConfigError, overrides: list[str]) -> bool:
    """Whether a range rule's ``error`` names a setting that ``overrides`` (``--section.key=value``) give."""
    named = set(re.findall(r"\b[a-z_]+\.[a-z0-9_]+\b", str(error)))  # (optim.beta1, augment.view1_blur_p too)
    return bool(named & {override_key(item) for item in overrides})


def _check_section(config: Config, section: Any, values: Any) -> None:
    """A YAML file's top-level ``section``: one of the config's, holding a mapping of keys."""
    names = [f.name for f in dataclasses.fields(config)]
    if section not in names:
        head, dot, _ = str(section).partition(".")
        spelled = _closest(section, names)  # trian: train
        meant = None if spelled or dot else meant_key(section)  # a key at the top (epochs: 3): train.epochs
        guess = spelled or did_you_mean(meant)
        hint = (f"; write {section} as {head}: with the key under it" if dot and head in names else
                f"; write it under {meant.partition('.')[0]}:" if meant else "" if spelled else
                "; a file's settings go over the defaults, not over a preset (start from a copy of "
                f"{presets_folder() / 'NAME.yaml'})")
        raise ConfigError(f"unknown config section {section!r}{guess}; the sections are {', '.join(names)}{hint}")
    if values is None or values == {}:  # (a user test: a copied preset's section with its keys commented out)
        raise ConfigError(f"config section {section!r} is empty (its keys commented out?); give its keys under it, "
                          "or remove it")
    if not isinstance(values, dict):
        line = no_space_after_colon(values) if isinstance(values, str) else None  # train:\n  epochs:3, the text
        raise ConfigError(f"config section {section!r} must be a mapping of keys" +
                          (f"; {line!r} needs a space after its colon to be a key" if line else ""))


def changed_settings(before: dict, after: dict) -> list[str]:
    """``section.key old -> new`` for each setting that differs (a data root compared as an absolute path)."""
    changed = []
    for section, values in after.items():
        for key, new in values.items():
            old = before.get(section, {}).get(key, new)
            if f"{section}.{key}" == "data.root":
                old, new = os.path.abspath(old), os.path.abspath(new)
            if old != new:
                changed.append(f"{section}.{key} {yaml_word(old)} -> {yaml_word(new)}")
    return changed


def checked(config: Config) -> Config:
    """A copy of ``config`` checked as :func:`load_config` checks one, for a ``Config`` whose fields
    were set in Python since (a notebook's): each value's type and range, and no attribute that is
    not a setting (``config.train.max_step = 3`` for ``max_steps`` would do nothing)."""
    if not isinstance(config, Config):
        raise TypeError(f"config must be a byol.Config, such as byol.load_config('cifar10') gives, not "
                        f"{type(config).__name__}")
    sections = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(set(vars(config)) - set(sections))
    if unknown:
        raise ConfigError(f"unknown config section {unknown[0]!r}{_closest(unknown[0], sections)}; the sections are "
                          f"{', '.join(sections)}")
    defaults = Config()
    for name in sections:
        section = getattr(config, name)
        kind = type(getattr(defaults, name))
        if not isinstance(section, kind):  # (a user test: config.train = {...} was "vars() argument must have ...")
            raise TypeError(f"config.{name} must be a byol.config.{kind.__name__}, not {type(section).__name__}: set "
                            f"its keys one by one (config.{name}.KEY = ...)")
        unknown = sorted(set(vars(section)) - {f.name for f in dataclasses.fields(section)})
        if unknown:
            raise _unknown_key(f"{name}.{unknown[0]}", section)
    return validate(config_from_dict(config.to_dict()))


def override_list(overrides: Optional[list[str]]) -> list[str]:
    """``overrides`` as a list (None: none); one string is refused (taken character by character, it
    failed on its first: "override '-' must look like --section.key=value"), as is an item not a string."""
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of strings, such as [{overrides!r}], not one string")
    items = list(overrides or [])
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"overrides must be strings such as '--train.epochs=5', but one is "
                              f"{type(item).__name__} {item!r:.60}")
    return items


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Set ``section.key=value`` strings (a leading ``--`` is allowed) on ``config``, in place. A key given
    twice takes the last value, the earlier one unread (a script's common settings may hold one it replaces)."""
    items = override_list(overrides)
    last = {override_key(item): i for i, item in enumerate(items)}
    for i, item in enumerate(items):
        key, eq, value = item.removeprefix("--").partition("=")
        if not eq:
            raise ConfigError(f"override {item!r} must look like --section.key=value")
        if last[key] != i:
            continue
        if key == "model.backbone" and value.strip("'\" ") == GIVEN_BACKBONE:  # (a run's saved config may say it)
            raise ConfigError(f"--model.backbone={GIVEN_BACKBONE} stands for a network given from Python, "
                              "byol.pretrain(config, net=...), which a setting cannot build; choose a ResNet by name")
        _set(config, key, value)
    return config


def is_sections(data: Any) -> bool:
    """Whether ``data`` has :meth:`Config.to_dict`'s shape: a mapping of sections, each a mapping of keys."""
    return isinstance(data, dict) and all(isinstance(v, dict) for v in data.values())


def config_from_dict(data: dict) -> Config:
    """Rebuild a :class:`Config` from :meth:`Config.to_dict` output (e.g. from a checkpoint)."""
    config = Config()
    if not is_sections(data):
        raise ConfigError("the settings are not a mapping of sections, each a mapping of keys")
    for section, values in data.items():
        for name, value in values.items():
            _set(config, f"{section}.{name}", value)
    return config


# The first line of every config.yaml byol writes: a new run replaces only a config of its own kind.
CONFIG_HEADER = "# written by byol: the resolved config, every setting included\n"


def starts_as_byol_config(path: Union[str, os.PathLike]) -> bool:
    """Whether the file ``path`` starts as a config.yaml byol writes (``# written by byol``); False where it
    cannot be read."""
    header = CONFIG_HEADER.split(":")[0].encode()
    try:
        with open(path, "rb") as f:
            return f.read(len(header)) == header
    except OSError:
        return False


def another_version(saved, reason: str, written: str, use: str = "") -> str:
    """The sentence for settings byol saved (a checkpoint's, a run's ``config.yaml``) that do not load in this
    version (``reason``: the error's own words), said alike wherever they are read: ``written`` says who wrote
    them, ``use`` what the byol that did is for."""
    return (f"the settings saved in {saved} do not load in this version of byol ({reason}); {written} by another "
            f"version (or edited): use the byol that wrote it{use}")


def config_text(config: Config) -> str:
    """The resolved config as YAML, under :data:`CONFIG_HEADER`."""
    # allow_unicode: a path such as runs/ünï as written, not "runs/\xFCn\xEF" (a user test); one with bytes
    # that are not UTF-8 (surrogates) is escaped all the same. PyYAML then writes U+0085 (NEL) as a line
    # break, read back as a space: escaped where the text does not read back.
    data = config.to_dict()
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if yaml.safe_load(text) != data:
        text = yaml.safe_dump(data, sort_keys=False)
    return CONFIG_HEADER + text


def save_config(config: Config, path: Path) -> None:
    """Write the resolved config as YAML, atomically (``--resume`` reads it back)."""
    write_text_atomically(path, config_text(config))
