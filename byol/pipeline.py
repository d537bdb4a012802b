"""The user-facing steps after pretraining: load an encoder, its features, kNN, linear probe
(``exports`` writes embeddings and the exported encoder).

Each is a plain function of paths and a config, shared by the command line and Python users.
"""

import inspect
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from .backbones import RESNETS, resnet, resnet_settings
from .checkpoint import CheckpointError, load_model_state, read_state, write_failed, write_failure
from .config import Config, ConfigError, apply_overrides, config_from_dict, load_config, validate
from .data import DataError, ImageSet
from .datasets import FilesNotFound, build_dataset
from .folder import ImageFolder, folder_loader, labeled_folders
from . import distributed as dist
from .evaluate import knn_accuracy, linear_probe
from .build import autocast_dtype, build_model, load_size, precision_name, resolve_device, views_of


class OutputError(Exception):
    """An output that cannot be written (a read-only place, a folder where a file goes, ...)."""


@contextmanager
def writing(path: Union[str, Path]):
    """Turn an ``OSError`` while writing ``path`` into an :class:`OutputError` naming the file and why."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if not write_failed(e):
            raise
        where = getattr(e, "filename", None) or path
        raise OutputError(f"cannot write {where}: {write_failure(e)}; choose another --out") from None


def check_writable(path: Union[str, Path], source: Union[str, Path, None] = None) -> None:
    """Fail before the work, not after it, where the file ``path`` cannot be written: a folder in
    its place, a file where a folder of its path goes, a file that cannot be opened for writing, or
    a place that takes no new files (probed with a temporary file in the nearest folder that
    exists; nothing is created for good), or the file ``source`` that the work reads. Only in the
    process that writes: rank 0 under torchrun (told by ``RANK``, as the process group may not exist yet)."""
    import errno
    import os
    import tempfile
    if os.environ.get("RANK", "0") != "0":
        return
    path = Path(path).absolute()
    if source is not None and path.is_file() and Path(source).is_file() and path.samefile(source):
        raise OutputError(f"{path} is the checkpoint being read; choose another --out")
    with writing(path):
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        if path.exists():  # a file (or /dev/null): opened to append, nothing written, nothing changed
            with open(path, "ab"):
                return
        place = path.parent
        while not place.exists():
            place = place.parent
        if not place.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(place))
        try:
            with tempfile.TemporaryFile(dir=place):
                pass
        except OSError as e:  # named as the file asked for, not as the probe's random name
            raise OSError(e.errno, e.strerror, str(path)) from None


def note(message: str) -> None:
    if dist.rank() == 0:
        print(f"note: {message}", file=sys.stderr)


# What byol eval and embed read of a config besides the model (the checkpoint's): the data, where and in what
# precision the features are computed, the view recipe's normalization (augment.preset's mean and std: given
# for a bare state_dict only, a checkpoint's is its own), and
# for the linear probe its shuffling seed; a folder split to embed is found by data.train_split.
_READ_AFTER_PRETRAINING = ("data.dataset", "data.root", "data.download", "data.image_size", "data.load_size",
                           "data.workers", "augment.preset", "train.device", "train.precision")
SETTINGS_READ = {"eval knn": _READ_AFTER_PRETRAINING, "eval linear": _READ_AFTER_PRETRAINING + ("train.seed",),
                 "embed": _READ_AFTER_PRETRAINING + ("data.train_split",)}


def unused_settings(overrides: list[str], command: str) -> list[str]:
    """The config keys set in ``overrides`` (``--section.key=value``) that ``byol COMMAND`` (a key of
    :data:`SETTINGS_READ`) does not read: pretraining's. Not ``model.*`` (refused, or for a bare
    state_dict read), ``data.limit`` (refused) nor keys that are no config key (refused too)."""
    known = Config().to_dict()
    keys = dict.fromkeys(o.removeprefix("--").split("=")[0] for o in overrides)
    return [key for key in keys if key.partition(".")[2] in known.get(key.partition(".")[0], {})
            and not key.startswith("model.") and key != "data.limit" and key not in SETTINGS_READ[command]]


def load_encoder(path: Union[str, Path], overrides: Optional[list[str]] = None,
                 random_init: bool = False) -> tuple[nn.Module, Config]:
    """The online encoder (a torchvision ResNet trunk, classifier removed) from a checkpoint or an export.

    A checkpoint carries its config; an exported ``encoder.pt`` takes it from the
    ``config.yaml`` beside it. ``overrides`` (``section.key=value``) apply on top, e.g. a new
    ``data.root``. ``random_init`` gives the encoder the run started from instead of the trained
    one: the same architecture initialized from the run's ``train.seed`` as ``byol pretrain``
    does (the baseline that pretraining must beat; a ``train.seed`` override does not change it,
    and an exported encoder without a ``config.yaml`` beside it uses the default seed). The
    caller's random number generator is left as it was. ``model.*`` overrides are refused: the
    model is the checkpoint's (but for a bare state_dict with no ``config.yaml`` beside it, whose
    architecture they describe: e.g. a torchvision model's, ``model.cifar_stem=false``). A relative
    ``data.root`` (older runs stored it as typed) that is not found from here is looked up from
    the directory the run was started in, when the checkpoint's place in its run directory tells which.
    """
    net, config, _ = load_encoder_with_origin(path, overrides, random_init)
    return net, config


def load_encoder_with_origin(path: Union[str, Path], overrides: Optional[list[str]],
                             random_init: bool) -> tuple[nn.Module, Config, dict]:
    """:func:`load_encoder`, and where its weights come from, for a result to say: the checkpoint
    (an absolute path), its training ``step`` and ``epoch`` (an exported encoder's from the
    ``export.json`` beside it; None where nothing says: a state_dict from elsewhere, an export
    written before export.json recorded them; 0 with ``random_init``)."""
    given = [o.removeprefix("--").split("=")[0] for o in overrides or []]
    if "data.limit" in given:  # read by pretraining only: here it was taken, and did nothing
        raise ConfigError("--data.limit does not apply to byol eval or embed (it is how many images pretraining "
                          "trains on); use --limit N (limit=N from Python) for the first N images of each split")
    refuse = _run_setting_given(given, path)
    dist.init()  # under torchrun: features are extracted on every rank's share and gathered
    path = Path(path)
    state = read_state(path)
    bare = not (isinstance(state, dict) and "model" in state and "config" in state)
    if refuse and not (bare and not (path.parent / "config.yaml").is_file()):
        raise refuse
    validate(apply_overrides(Config(), overrides or []), given)  # the settings given, not the checkpoint's own
    origin = {"checkpoint": str(path.absolute()), "step": None, "epoch": None}
    if not bare:  # a byol checkpoint
        config = config_from_dict(state["config"])
        origin.update(_trained(state))
        if random_init:
            net = _initial_net(config)
        else:
            byol = build_model(config)
            load_model_state(byol, state["model"], str(path))
            net = _net_of(byol, config)
    else:  # an exported torchvision state_dict
        net, config = _state_dict_encoder(path, state, overrides or [], random_init)
        origin.update(_exported(path))
    apply_overrides(config, overrides or [])
    if not any(o.removeprefix("--").startswith("data.root=") for o in overrides or []):
        _find_relative_root(config, path)
    net.fc = nn.Identity()  # the representation is the pooled trunk output
    if random_init:
        origin.update(step=0, epoch=0.0)
    return net.eval(), config, origin


def _run_setting_given(given: list[str], path: Union[str, Path]) -> Optional[ConfigError]:
    """The error for a setting among ``given`` that the checkpoint decides: its model, and the preset
    whose mean and std normalized every image it trained on (a bare state_dict takes them)."""
    for key in given:
        if key.startswith("model.") or key == "augment.preset":
            what = ("the model (backbone, width, projector)" if key.startswith("model.") else
                    "the encoder's input normalization (its preset's mean and std)")
            return ConfigError(f"--{key} cannot be set here: {what} comes from the checkpoint {path}; only "
                               "settings such as --data.root or --train.device apply")
    return None


def _trained(state: dict) -> dict:
    """A checkpoint's training ``step`` and ``epoch`` (step / its steps an epoch, where it says)."""
    step = state.get("step")
    per_epoch = state.get("extra", {}).get("steps_per_epoch")
    return {"step": step, "epoch": step / per_epoch if isinstance(step, int) and per_epoch else None}


def _exported(path: Path) -> dict:
    """The ``step`` and ``epoch`` that ``byol export`` recorded in the ``export.json`` beside the
    ``encoder.pt`` at ``path`` (none where it names another file, or says neither)."""
    try:
        info = json.loads((path.parent / "export.json").read_text())
    except (OSError, ValueError):  # none beside it, or not JSON: not byol's
        return {}
    if not isinstance(info, dict) or info.get("state_dict") != path.name:
        return {}
    step, epoch = info.get("step"), info.get("epoch")
    return {"step": step if type(step) is int else None,
            "epoch": epoch if type(epoch) in (int, float) else None}


def _state_dict_encoder(path: Path, state: object, overrides: list[str],
                        random_init: bool) -> tuple[nn.Module, Config]:
    """The encoder of a bare ResNet state_dict (``byol export``'s ``encoder.pt``, a torchvision
    model's) and its config: the ``config.yaml`` beside it, else the architecture that its keys and
    shapes say, with ``model.*`` overrides over it."""
    state = _unwrapped(state)
    if not (isinstance(state, dict) and torch.is_tensor(state.get("conv1.weight"))):
        raise CheckpointError(f"{path} holds neither a byol checkpoint nor an encoder state_dict ({_contents(state)})")
    beside = path.parent / "config.yaml"
    if beside.is_file():
        config, what = load_config(str(beside)), str(path)
    else:
        config, found = Config(), resnet_settings(state)
        for key, value in (found or {}).items():
            setattr(config.model, key, value)
        said = _settings(config)
        apply_overrides(config, [o for o in overrides if o.removeprefix("--").startswith("model.")])
        used = _settings(config)
        if found is None:
            how = f"its keys and shapes are not those of a ResNet byol builds ({', '.join(RESNETS)}): read as {used}"
        else:
            how = f"its keys say {said}" + (f", read as {used} as given" if used != said else "")
        what = f"{path} (no config.yaml beside it; {how})"
    if random_init:
        return _initial_net(config), config
    net = resnet(config.model.backbone, cifar_stem=config.model.cifar_stem, width=config.model.width)
    # The classifier is not the encoder (eval drops it): one of another width, or none (fc = Identity), loads too.
    trunk = {k: v for k, v in state.items() if not k.startswith("fc.")}
    load_model_state(net, {**trunk, **{k: v for k, v in net.state_dict().items() if k.startswith("fc.")}}, what)
    return net, config


def _unwrapped(state: object) -> object:
    """A state_dict saved from a DDP- or torch.compile-wrapped model without its key prefixes."""
    for prefix in ("module.", "_orig_mod."):
        while isinstance(state, dict) and state and all(isinstance(k, str) and k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _settings(config: Config) -> str:
    m = config.model
    return f"model.backbone={m.backbone}, model.cifar_stem={str(m.cifar_stem).lower()}, model.width={m.width}"


def _contents(state: object) -> str:
    """What a file that is no checkpoint holds, in a few words."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}"
    keys = ", ".join(str(k) for k in list(state)[:3]) + (", ..." if len(state) > 3 else "")
    return f"its keys: {keys}" if state else "it holds an empty dict"


def _find_relative_root(config: Config, checkpoint: Path) -> None:
    """A relative ``data.root`` missing from here, for a checkpoint at ``BASE/out_dir/checkpoints/``
    of a run with a relative ``train.out_dir``: ``BASE/data.root``, where ``byol pretrain`` ran."""
    root, out_dir = Path(config.data.root).expanduser(), Path(config.train.out_dir)
    if root.is_absolute() or root.exists() or out_dir.is_absolute() or ".." in out_dir.parts:
        return
    run_dir = checkpoint.resolve().parent.parent
    n = len(out_dir.parts)
    if n == 0 or run_dir.parts[-n:] != out_dir.parts:
        return
    found = Path(*run_dir.parts[:-n]) / root
    if found.exists():
        note(f"data.root {config.data.root} is relative and not found here; using {found.resolve()}, "
             f"from the directory the run was started in")
        config.data.root = str(found.resolve())


def _initial_net(config: Config) -> nn.Module:
    """The encoder a run with ``config`` starts from: ``pretrain`` seeds rank 0 with ``train.seed``
    just before building the model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        return _net_of(build_model(config), config)


def _net_of(byol, config: Config) -> nn.Module:
    """A full torchvision ResNet holding the online encoder of ``byol`` (its classifier freshly initialized)."""
    m = config.model
    net = resnet(m.backbone, cifar_stem=m.cifar_stem, width=m.width)
    trunk = byol.encoder.body.state_dict() if hasattr(byol.encoder, "body") else byol.encoder.state_dict()
    missing, unexpected = net.load_state_dict(trunk, strict=False)
    if unexpected or any(not k.startswith("fc.") for k in missing):
        raise CheckpointError(f"the encoder does not match {m.backbone}: {missing or unexpected}")
    return net


Source = Union[ImageSet, ImageFolder]


def labeled_splits(config: Config, limit: Optional[int] = None) -> tuple[Source, Source]:
    """The (train, test) labeled splits of the config's data set, or ``limit`` images of each (the
    first ones; for a folder, spread evenly over it, so that every class is in). A folder's
    splits are not decoded here: :func:`features` streams them."""
    d = config.data
    size = load_size(config)
    if d.dataset == "folder":
        splits = labeled_folders(image_root(d.root), size, limit)  # or one sentence on what is wrong with them
        if splits is None:
            raise DataError(f"evaluating on a folder needs ROOT/train and ROOT/val (or test), each with one "
                            f"sub-folder per class, the same classes in both; {d.root} is neither ROOT nor "
                            "ROOT/train of such a layout: point --data.root at it")
        return splits
    train, test = (load_split(config, split) for split in ("train", "test"))
    if train.labels is None:
        raise DataError(f"{d.dataset} train split has no labels to evaluate with")
    return (train.first(limit), test.first(limit)) if limit else (train, test)


def load_split(config: Config, split: str) -> ImageSet:
    """A split of a CIFAR / STL-10 data set; files not found point to ``--data.root``."""
    d = config.data
    try:
        return build_dataset(d.dataset, d.root, split, None, d.download)
    except FilesNotFound as e:
        if d.download:
            raise
        relative = "" if Path(d.root).is_absolute() else ", relative to the current directory"
        raise DataError(f"{e.what}; point --data.root=... at the folder that holds them (data.root is "
                        f"{d.root}{relative})") from None


def image_root(root: Union[str, Path]) -> Path:
    """A folder run's ``data.root``, or one sentence saying that it is not there (moved since?)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"the image folder {root} (data.root) does not exist; point --data.root=... at it")
    return root


EVAL_BATCH = 512


def features(net: nn.Module, config: Config, source: Source, device: torch.device,
             progress: Union[bool, str] = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(features, labels, indices)`` of ``source`` under ``net``; under torchrun each rank embeds
    its share and every rank gets them all.

    A folder is streamed through ``data.workers`` decoding processes, so it is never all in
    memory; its undecodable files are left out (``indices`` says which files the rows are of).
    ``progress`` shows a bar on stderr (rank 0 only; a string names it).
    """
    view1, _ = views_of(config)
    kwargs = dict(batch_size=EVAL_BATCH, mean=view1.mean, std=view1.std,
                  amp_dtype=autocast_dtype(config.train.precision, device),
                  progress=progress if dist.rank() == 0 else False)
    if isinstance(source, ImageSet):
        labels = source.labels if source.labels is not None else torch.full((len(source),), -1)
        return dist.extract_features_sharded(net, source.images, device, **kwargs), labels, torch.arange(len(source))
    kwargs.pop("batch_size")

    def loader_for(share: range):
        return folder_loader(source, EVAL_BATCH, config.data.workers, shuffle=False, drop_last=False, sampler=share)

    feats, labels, indices = dist.extract_batches_sharded(net, loader_for, len(source), device, **kwargs)
    if len(indices) == 0:
        raise source.nothing_decoded()
    if len(indices) < len(source):  # under torchrun, rank 0 knows the reasons of its own share only
        example = "".join(f" (e.g. {p}: {r})" for p, r in list(source.bad_files.items())[:1])
        note(f"{len(source) - len(indices)} of the {len(source)} image files in {source.root} could not be decoded "
             f"and are left out{example}")
    return feats, labels, indices


def knn(path: Union[str, Path], overrides: Optional[list[str]] = None, ks: tuple[int, ...] = (20, 200),
        temperature: float = 0.1, limit: Optional[int] = None, random_init: bool = False,
        progress: bool = False) -> dict:
    """kNN top-1 (cosine, weighted votes) of a checkpoint's online encoder: ``{"knn_top1": {k: acc}}``.

    ``limit`` evaluates on N images of each split only (the first N; a folder's spread over its
    classes); ``random_init`` evaluates the encoder the run started from (see :func:`load_encoder`);
    ``progress`` shows progress bars on stderr. The result also says what it is of (the checkpoint,
    its step, the features' width and precision: docs/metrics.md lists its fields).
    """
    config, device, splits, info = _labeled_features(path, overrides, random_init, limit, progress)
    acc = knn_accuracy(*splits, ks=ks, temperature=temperature, device=device)
    return {"dataset": config.data.dataset, "knn_top1": {str(k): v for k, v in acc.items()},
            "temperature": temperature, "features": "computed once, no augmentation, L2-normalized", **info}


# The linear probe's settings, so that its results record them: ``evaluate.linear_probe``'s defaults,
# read from its signature (set there only), and how it trains and uses the features.
LINEAR_PROBE = {**{name: inspect.signature(linear_probe).parameters[name].default
                   for name in ("batch_size", "lr", "weight_decay")},
                "optimizer": "SGD, Nesterov momentum 0.9, cosine learning rate to 0, zero-initialized head",
                "features": "computed once, no augmentation, standardized (the train split's per-dimension "
                            "mean and std)"}


def linear(path: Union[str, Path], overrides: Optional[list[str]] = None, epochs: int = 100,
           limit: Optional[int] = None, random_init: bool = False, progress: bool = False) -> dict:
    """Linear probe (top-1, top-5) on frozen online-encoder features of a checkpoint (or, with
    ``random_init``, of the encoder its run started from), with its settings (:data:`LINEAR_PROBE`,
    ``epochs``, the ``seed``: ``train.seed``); ``progress`` shows progress bars on stderr."""
    config, device, splits, info = _labeled_features(path, overrides, random_init, limit, progress)
    settings = {"epochs": epochs, "batch_size": LINEAR_PROBE["batch_size"], "lr": LINEAR_PROBE["lr"],
                "weight_decay": LINEAR_PROBE["weight_decay"], "seed": config.train.seed}
    result = linear_probe(*splits, **settings, device=device, progress=progress if dist.rank() == 0 else False)
    return {"dataset": config.data.dataset, **result, **settings, "optimizer": LINEAR_PROBE["optimizer"],
            "features": LINEAR_PROBE["features"], **info}


def _labeled_features(path: Union[str, Path], overrides: Optional[list[str]], random_init: bool,
                      limit: Optional[int], progress: bool):
    """``(config, device, (train features, labels, held-out features, labels), info)`` for a
    checkpoint's online encoder; ``info``: the splits' sizes and the held-out one's name (test, or
    a folder's val), where the weights come from (:func:`load_encoder_with_origin`) and how the
    features were computed (their width, the device and precision: what ``train.precision``
    resolves to there)."""
    net, config, origin = load_encoder_with_origin(path, overrides, random_init)
    device = resolve_device(config.train.device)
    train, test = labeled_splits(config, limit)
    held_out = Path(test.root).name if isinstance(test, ImageFolder) else "test"
    train_f, train_y, _ = features(net, config, train, device, progress and "train features")
    test_f, test_y, _ = features(net, config, test, device, progress and f"{held_out} features")
    return config, device, (train_f, train_y, test_f, test_y), {
        "n_train": len(train_f), "n_test": len(test_f), "test_split": held_out, **origin,
        "random_init": random_init, "feature_dim": train_f.shape[1], "device": str(device),
        "precision": precision_name(autocast_dtype(config.train.precision, device))}
