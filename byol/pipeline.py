"""The user-facing steps after pretraining: load an encoder, kNN, linear probe, embed, export.

Each is a plain function of paths and a config, shared by the command line and Python users.
"""

import json
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from .backbones import resnet
from .checkpoint import CheckpointError, load_model_state, read_state, write_failed, write_failure
from .config import Config, ConfigError, apply_overrides, config_from_dict, load_config, save_config
from .data import NATIVE_SIZE, DataError, FilesNotFound, ImageSet, build_dataset
from .folder import ImageFolder, folder_loader, labeled_folders
from . import distributed as dist
from .evaluate import knn_accuracy, linear_probe
from .build import autocast_dtype, build_model, load_size, resolve_device, views_of


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


def check_writable(path: Union[str, Path]) -> None:
    """Fail before the work, not after it, where the file ``path`` cannot be written: a folder in
    its place, a file where a folder of its path goes, a file that cannot be opened for writing, or
    a place that takes no new files (probed with a temporary file in the nearest folder that
    exists; nothing is created for good). Only in the process that writes: rank 0 under torchrun
    (told by ``RANK``, as the process group may not exist yet)."""
    import errno
    import os
    import tempfile
    if os.environ.get("RANK", "0") != "0":
        return
    path = Path(path).absolute()
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


def _note(message: str) -> None:
    if dist.rank() == 0:
        print(f"note: {message}", file=sys.stderr)


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
    model_keys = [o.removeprefix("--").split("=")[0] for o in overrides or []
                  if o.removeprefix("--").startswith("model.")]
    refuse = ConfigError(f"--{model_keys[0]} cannot be set here: the model (backbone, width, projector) comes "
                         f"from the checkpoint {path}; only settings such as --data.root or --train.device apply"
                         ) if model_keys else None
    dist.init()  # under torchrun: features are extracted on every rank's share and gathered
    path = Path(path)
    state = read_state(path)
    bare = not (isinstance(state, dict) and "model" in state and "config" in state)
    if refuse and not (bare and not (path.parent / "config.yaml").is_file()):
        raise refuse
    if not bare:  # a byol checkpoint
        config = config_from_dict(state["config"])
        if random_init:
            net = _initial_net(config)
        else:
            byol = build_model(config)
            load_model_state(byol, state["model"], str(path))
            net = _net_of(byol, config)
    else:  # an exported torchvision state_dict
        beside = path.parent / "config.yaml"
        config = load_config(str(beside)) if beside.is_file() else Config()
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} is neither a byol checkpoint nor an encoder state_dict")
        if not beside.is_file():  # nothing says which architecture: the defaults, or model.* as given
            apply_overrides(config, [o for o in overrides or [] if o.removeprefix("--").startswith("model.")])
        if random_init:
            net = _initial_net(config)
        else:
            net = resnet(config.model.backbone, cifar_stem=config.model.cifar_stem, width=config.model.width)
            what = str(path) if beside.is_file() else (
                f"{path} (no config.yaml beside it: read as model.backbone={config.model.backbone}, "
                f"model.cifar_stem={str(config.model.cifar_stem).lower()}, model.width={config.model.width}; "
                "set those that differ, e.g. --model.cifar_stem=false for a torchvision model)")
            load_model_state(net, state, what)
    apply_overrides(config, overrides or [])
    if not any(o.removeprefix("--").startswith("data.root=") for o in overrides or []):
        _find_relative_root(config, path)
    net.fc = nn.Identity()  # the representation is the pooled trunk output
    return net.eval(), config


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
        _note(f"data.root {config.data.root} is relative and not found here; using {found.resolve()}, "
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
        splits = labeled_folders(_image_root(d.root), size, limit)  # or one sentence on what is wrong with them
        if splits is None:
            raise DataError(f"evaluating on a folder needs ROOT/train and ROOT/val (or test), each with one "
                            f"sub-folder per class, the same classes in both; {d.root} is neither ROOT nor "
                            "ROOT/train of such a layout: point --data.root at it")
        return splits
    train, test = (_load_split(config, split) for split in ("train", "test"))
    if train.labels is None:
        raise DataError(f"{d.dataset} train split has no labels to evaluate with")
    return (train.first(limit), test.first(limit)) if limit else (train, test)


def _load_split(config: Config, split: str) -> ImageSet:
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


def _image_root(root: Union[str, Path]) -> Path:
    """A folder run's ``data.root``, or one sentence saying that it is not there (moved since?)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"the image folder {root} (data.root) does not exist; point --data.root=... at it")
    return root


def _folder_split(root: Union[str, Path], split: Optional[str], size: int, train_split: str) -> ImageFolder:
    """The folder to embed for ``split`` of a run trained on the folder ``root``.

    ``root`` may be ROOT of an ImageNet-style layout or ``ROOT/train`` (as :func:`labeled_folders`).
    ``train`` is the folder the run trained on; ``val`` and ``test`` are ``ROOT/val`` or
    ``ROOT/test`` (the one named first); None, the held-out split, is either, and for a plain
    folder of images with neither beside it, the training folder itself (with a note).
    Another name is a sub-folder of ROOT.
    """
    root = _image_root(root)
    if (root / train_split).is_dir():
        trained_on, base = root / train_split, root
    elif root.name == "train":  # as labeled_folders, which eval uses
        trained_on, base = root, root.parent
    else:  # a plain folder of images: its sub-folders (a `test/` too) are classes, not splits
        trained_on, base = root, None
    if split == "train":
        return ImageFolder(trained_on, size)
    if split in (None, "val", "test"):
        names = ("test", "val") if split == "test" else ("val", "test")
        for name in names if base is not None else ():
            if (base / name).is_dir():
                if split is not None and name != split:
                    _note(f"{base} has no {split}/ folder; embedding {base / name}")
                return ImageFolder(base / name, size)
        where = f"{base} has no val/ or test/ folder" if base is not None else \
            f"the run trained on all of {root}, not on a {train_split}/ folder of it"
        if split is not None:
            raise DataError(f"there is no {split} split: {where}; use --split train, or lay the images out "
                            f"as ROOT/{train_split} and ROOT/val")
        _note(f"{where}, so the images the run trained on ({trained_on}) are embedded")
        return ImageFolder(trained_on, size)
    if ((base or root) / split).is_dir():
        return ImageFolder((base or root) / split, size)
    raise DataError(f"unknown split {split!r}: {base or root} has no sub-folder {split}; choose train, val or "
                    "test (or a sub-folder of it)")


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
        _note(f"{len(source) - len(indices)} of the {len(source)} image files in {source.root} could not be decoded "
              f"and are left out{example}")
    return feats, labels, indices


def knn(path: Union[str, Path], overrides: Optional[list[str]] = None, ks: tuple[int, ...] = (20, 200),
        temperature: float = 0.1, limit: Optional[int] = None, random_init: bool = False,
        progress: bool = False) -> dict:
    """kNN top-1 (cosine, weighted votes) of a checkpoint's online encoder: ``{"knn_top1": {k: acc}}``.

    ``limit`` evaluates on N images of each split only (the first N; a folder's spread over its
    classes); ``random_init`` evaluates the encoder the run started from (see :func:`load_encoder`);
    ``progress`` shows progress bars on stderr.
    """
    config, device, splits, info = _labeled_features(path, overrides, random_init, limit, progress)
    acc = knn_accuracy(*splits, ks=ks, temperature=temperature, device=device)
    return {"dataset": config.data.dataset, "knn_top1": {str(k): v for k, v in acc.items()},
            "temperature": temperature, **info}


def linear(path: Union[str, Path], overrides: Optional[list[str]] = None, epochs: int = 100,
           limit: Optional[int] = None, random_init: bool = False, progress: bool = False) -> dict:
    """Linear probe (top-1, top-5) on frozen online-encoder features of a checkpoint (or, with
    ``random_init``, of the encoder its run started from); ``progress`` shows progress bars on stderr."""
    config, device, splits, info = _labeled_features(path, overrides, random_init, limit, progress)
    result = linear_probe(*splits, epochs=epochs, device=device, seed=config.train.seed,
                          progress=progress if dist.rank() == 0 else False)
    return {"dataset": config.data.dataset, **result, "epochs": epochs, **info}


def _labeled_features(path: Union[str, Path], overrides: Optional[list[str]], random_init: bool,
                      limit: Optional[int], progress: bool):
    """``(config, device, (train features, labels, held-out features, labels), info)`` for a
    checkpoint's online encoder; ``info``: the splits' sizes and the held-out one's name (test, or
    a folder's val)."""
    net, config = load_encoder(path, overrides, random_init)
    device = resolve_device(config.train.device)
    train, test = labeled_splits(config, limit)
    held_out = Path(test.root).name if isinstance(test, ImageFolder) else "test"
    train_f, train_y, _ = features(net, config, train, device, progress and "train features")
    test_f, test_y, _ = features(net, config, test, device, progress and f"{held_out} features")
    return config, device, (train_f, train_y, test_f, test_y), {
        "n_train": len(train_f), "n_test": len(test_f), "test_split": held_out}


def embed(path: Union[str, Path], out: Union[str, Path], split: Optional[str] = None,
          overrides: Optional[list[str]] = None, limit: Optional[int] = None, progress: bool = False) -> Path:
    """Write the embeddings of a split with their labels (or file paths) to ``.npy`` or ``.pt``.

    ``split`` None is the held-out split: ``test``, or for a folder ``ROOT/val`` or ``ROOT/test``
    (see :func:`_folder_split`). ``progress`` shows a progress bar on stderr.
    """
    if Path(out).suffix not in (".npy", ".pt"):
        raise DataError(f"the output {out} must end in .npy or .pt")
    check_writable(out)
    net, config = load_encoder(path, overrides)
    device = resolve_device(config.train.device)
    d = config.data
    if d.dataset == "folder":
        source = _folder_split(d.root, split, load_size(config), d.train_split)
    else:
        source = _load_split(config, split or "test")
    if limit:
        source = source.subset(torch.arange(min(limit, len(source)))) if isinstance(source, ImageFolder) \
            else source.first(limit)
    emb, labels, indices = features(net, config, source, device, progress and "embeddings")
    paths = [source.path(int(i)) for i in indices] if isinstance(source, ImageFolder) else None
    out = Path(out)
    if dist.rank() != 0:
        return out
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".npy":
            import numpy as np
            listed = _path_lines(paths) if paths is not None else None  # before any file: none half written
            np.save(out, emb.numpy())
            np.save(out.with_name(out.stem + "_labels.npy"), labels.numpy())
            if listed is not None:
                out.with_name(out.stem + "_paths.txt").write_bytes(listed)
        else:
            # Copies: a --limit'ed slice would otherwise save the whole tensor behind it.
            torch.save({"embeddings": emb.clone(), "labels": labels.clone(), "paths": paths}, out)
    return out


def _path_lines(paths: list[str]) -> bytes:
    """``paths`` one per line, as the file system spells them (bytes that are not UTF-8 kept as they
    are), so that line i is row i: a backslash in a name is written as two, a line break as
    backslash-n (-r)."""
    escaped = (p.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r") for p in paths)
    return b"".join(p.encode("utf-8", "surrogateescape") + b"\n" for p in escaped)


def _eval_input(config: Config, mean: tuple[float, ...], std: tuple[float, ...]) -> dict:
    """What the encoder is evaluated on (``byol eval`` and ``embed``); neither exported file normalizes."""
    d = config.data
    if d.dataset == "folder":
        size = load_size(config)
        images = "each image's shorter side resized to image_size, then its center square"
    else:
        size, images = NATIVE_SIZE[d.dataset], f"{d.dataset}'s own images, not resized"
    return {"image_size": size, "images": images, "pixels": "RGB float in [0, 1], then (x - mean) / std",
            "mean": list(mean), "std": list(std), "training_views": d.image_size}


def export(path: Union[str, Path], out_dir: Union[str, Path]) -> dict:
    """Write the online encoder as a torchvision state_dict (``encoder.pt``) and TorchScript."""
    net, config = load_encoder(path)
    full = resnet(config.model.backbone, cifar_stem=config.model.cifar_stem, width=config.model.width)
    state = {k: v for k, v in net.state_dict().items()}
    state.update({k: v for k, v in full.state_dict().items() if k.startswith("fc.")})
    out_dir = Path(out_dir)
    with warnings.catch_warnings():  # TorchScript is what was asked for; torch >= 2.10 calls it deprecated
        warnings.filterwarnings("ignore", message=".*torch.jit.script. is deprecated", category=FutureWarning)
        scripted = torch.jit.script(net.eval())
    view1, _ = views_of(config)
    info = {"state_dict": str(out_dir / "encoder.pt"), "torchscript": str(out_dir / "encoder_torchscript.pt"),
            "backbone": config.model.backbone, "cifar_stem": config.model.cifar_stem, "width": config.model.width,
            "input": _eval_input(config, view1.mean, view1.std)}
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(state, out_dir / "encoder.pt")
        scripted.save(str(out_dir / "encoder_torchscript.pt"))
        save_config(config, out_dir / "config.yaml")
        (out_dir / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
