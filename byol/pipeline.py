"""The user-facing steps after pretraining: load an encoder, kNN, linear probe, embed, export.

Each is a plain function of paths and a config, shared by the command line and Python users.
"""

import json
import warnings
from pathlib import Path
from typing import Optional, Union

import torch
import yaml
from torch import nn

from .backbones import resnet
from .checkpoint import CheckpointError, load_model_state, read_state
from .config import Config, apply_overrides, config_from_dict, load_config
from .data import DataError, ImageSet, build_dataset
from .folder import ImageFolder, folder_loader, labeled_folders
from . import distributed as dist
from .evaluate import knn_accuracy, linear_probe
from .train import autocast_dtype, build_model, resolve_device, views_of


def load_encoder(path: Union[str, Path], overrides: Optional[list[str]] = None,
                 random_init: bool = False) -> tuple[nn.Module, Config]:
    """The online encoder (a torchvision ResNet trunk, classifier removed) from a checkpoint or an export.

    A checkpoint carries its config; an exported ``encoder.pt`` takes it from the
    ``config.yaml`` beside it. ``overrides`` (``section.key=value``) apply on top, e.g. a new
    ``data.root``. ``random_init`` gives the encoder the run started from instead of the trained
    one: the same architecture initialized from the run's ``train.seed`` as ``byol pretrain``
    does (the baseline that pretraining must beat; a ``train.seed`` override does not change it,
    and an exported encoder without a ``config.yaml`` beside it uses the default seed). The
    caller's random number generator is left as it was.
    """
    dist.init()  # under torchrun: features are extracted on every rank's share and gathered
    path = Path(path)
    state = read_state(path)
    if isinstance(state, dict) and "model" in state and "config" in state:  # a byol checkpoint
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
        if random_init:
            net = _initial_net(config)
        else:
            net = resnet(config.model.backbone, cifar_stem=config.model.cifar_stem, width=config.model.width)
            load_model_state(net, state, str(path))
    apply_overrides(config, overrides or [])
    net.fc = nn.Identity()  # the representation is the pooled trunk output
    return net.eval(), config


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
    size = d.load_size or d.image_size
    if d.dataset == "folder":
        splits = labeled_folders(d.root, size, limit)
        if splits is None:
            raise DataError(f"evaluating on a folder needs ROOT/train and ROOT/val (or test), each with one "
                            f"sub-folder per class, the same classes in both; {d.root} is neither ROOT nor "
                            "ROOT/train of such a layout: point --data.root at it")
        return splits
    train = build_dataset(d.dataset, d.root, "train", size, d.download)
    test = build_dataset(d.dataset, d.root, "test", size, d.download)
    if train.labels is None:
        raise DataError(f"{d.dataset} train split has no labels to evaluate with")
    return (train.first(limit), test.first(limit)) if limit else (train, test)


EVAL_BATCH = 512


def features(net: nn.Module, config: Config, source: Source,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(features, labels, indices)`` of ``source`` under ``net``; under torchrun each rank embeds
    its share and every rank gets them all.

    A folder is streamed through ``data.workers`` decoding processes, so it is never all in
    memory; its undecodable files are left out (``indices`` says which files the rows are of).
    """
    view1, _ = views_of(config)
    kwargs = dict(batch_size=EVAL_BATCH, mean=view1.mean, std=view1.std,
                  amp_dtype=autocast_dtype(config.train.precision, device))
    if isinstance(source, ImageSet):
        labels = source.labels if source.labels is not None else torch.full((len(source),), -1)
        return dist.extract_features_sharded(net, source.images, device, **kwargs), labels, torch.arange(len(source))
    kwargs.pop("batch_size")

    def loader_for(share: range):
        return folder_loader(source, EVAL_BATCH, config.data.workers, shuffle=False, drop_last=False, sampler=share)

    feats, labels, indices = dist.extract_batches_sharded(net, loader_for, len(source), device, **kwargs)
    if len(indices) == 0:
        raise source.nothing_decoded()
    return feats, labels, indices


def knn(path: Union[str, Path], overrides: Optional[list[str]] = None, ks: tuple[int, ...] = (20, 200),
        temperature: float = 0.1, limit: Optional[int] = None, random_init: bool = False) -> dict:
    """kNN top-1 (cosine, weighted votes) of a checkpoint's online encoder: ``{"knn_top1": {k: acc}}``.

    ``limit`` evaluates on N images of each split only (the first N; a folder's spread over its
    classes); ``random_init``
    evaluates the encoder the run started from (see :func:`load_encoder`).
    """
    net, config = load_encoder(path, overrides, random_init)
    device = resolve_device(config.train.device)
    train, test = labeled_splits(config, limit)
    (train_f, train_y, _), (test_f, test_y, _) = (features(net, config, s, device) for s in (train, test))
    acc = knn_accuracy(train_f, train_y, test_f, test_y, ks=ks, temperature=temperature, device=device)
    return {"dataset": config.data.dataset, "knn_top1": {str(k): v for k, v in acc.items()},
            "temperature": temperature, "n_train": len(train_f), "n_test": len(test_f)}


def linear(path: Union[str, Path], overrides: Optional[list[str]] = None, epochs: int = 100,
           limit: Optional[int] = None, random_init: bool = False) -> dict:
    """Linear probe (top-1, top-5) on frozen online-encoder features of a checkpoint (or, with
    ``random_init``, of the encoder its run started from)."""
    net, config = load_encoder(path, overrides, random_init)
    device = resolve_device(config.train.device)
    train, test = labeled_splits(config, limit)
    (train_f, train_y, _), (test_f, test_y, _) = (features(net, config, s, device) for s in (train, test))
    result = linear_probe(train_f, train_y, test_f, test_y, epochs=epochs, device=device, seed=config.train.seed)
    return {"dataset": config.data.dataset, **result, "n_train": len(train_f), "n_test": len(test_f)}


def embed(path: Union[str, Path], out: Union[str, Path], split: str = "test",
          overrides: Optional[list[str]] = None, limit: Optional[int] = None) -> Path:
    """Write the embeddings of a split with their labels (or file paths) to ``.npy`` or ``.pt``."""
    if Path(out).suffix not in (".npy", ".pt"):
        raise DataError(f"the output {out} must end in .npy or .pt")
    net, config = load_encoder(path, overrides)
    device = resolve_device(config.train.device)
    d = config.data
    source = build_dataset(d.dataset, d.root, split, d.load_size or d.image_size, d.download)
    if limit:
        source = source.subset(torch.arange(min(limit, len(source)))) if isinstance(source, ImageFolder) \
            else source.first(limit)
    emb, labels, indices = features(net, config, source, device)
    paths = [source.path(int(i)) for i in indices] if isinstance(source, ImageFolder) else None
    out = Path(out)
    if dist.rank() != 0:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        import numpy as np
        np.save(out, emb.numpy())
        np.save(out.with_name(out.stem + "_labels.npy"), labels.numpy())
        if paths is not None:
            out.with_name(out.stem + "_paths.txt").write_text("\n".join(paths) + "\n")
    elif out.suffix == ".pt":
        torch.save({"embeddings": emb, "labels": labels, "paths": paths}, out)
    else:
        raise DataError(f"the output {out} must end in .npy or .pt")
    return out


def export(path: Union[str, Path], out_dir: Union[str, Path]) -> dict:
    """Write the online encoder as a torchvision state_dict (``encoder.pt``) and TorchScript."""
    net, config = load_encoder(path)
    full = resnet(config.model.backbone, cifar_stem=config.model.cifar_stem, width=config.model.width)
    state = {k: v for k, v in net.state_dict().items()}
    state.update({k: v for k, v in full.state_dict().items() if k.startswith("fc.")})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(state, out_dir / "encoder.pt")
    with warnings.catch_warnings():  # TorchScript is what was asked for; torch >= 2.10 calls it deprecated
        warnings.filterwarnings("ignore", message=".*torch.jit.script. is deprecated", category=FutureWarning)
        scripted = torch.jit.script(net.eval())
    scripted.save(str(out_dir / "encoder_torchscript.pt"))
    (out_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    info = {"state_dict": str(out_dir / "encoder.pt"), "torchscript": str(out_dir / "encoder_torchscript.pt"),
            "backbone": config.model.backbone, "cifar_stem": config.model.cifar_stem}
    (out_dir / "export.json").write_text(json.dumps(info, indent=2))
    return info
