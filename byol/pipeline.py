"""The user-facing steps after pretraining: an encoder's features, kNN, linear probe (``encoders`` loads
the encoder; ``embeddings`` writes embeddings, ``exports`` the exported encoder).

Each is a plain function of paths and a config, shared by the command line and Python users.
"""

import inspect
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .allocator import keep_freed_memory
from .checkpoint import CheckpointError, versions
from .config import Config, override_list
from .data import DataError, ImageSet
from .dataset_files import FilesNotFound
from .error_lines import is_out_of_memory
from .errors import ByolError
from .datasets import build_dataset
from .folder import ImageFolder, escape_name
from .folder_splits import first_names, labeled_folders
from .loaders import folder_loader
from . import distributed as dist
from .distributed import note
from .encoders import load_encoder_with_origin
from .eval_arguments import check_counts, note_unused, refuse_own_options
from .features import extract_batches_sharded, extract_features_sharded
from .given_net import RUN_S_CUT, Cut
from .evaluate import knn_accuracy, linear_probe, nonfinite_rows
from .progress import named
from .build import eval_crop, load_size, views_of
from .precision import evaluation_precision, precision_name, resolve_device, usual_torch_defaults
from .train_data import held_out


Source = Union[ImageSet, ImageFolder]


def labeled_splits(config: Config, limit: Optional[int] = None, holdout: int = 0) -> tuple[Source, Source]:
    """The (train, test) labeled splits of the config's data set, or ``limit`` images of each (the
    first ones; for a folder, spread evenly over it, so that every class is in). A folder's
    splits are not decoded here: :func:`features` streams them. ``holdout`` N (CIFAR, STL-10): the
    train split without N images and those N in place of test, drawn as ``train.knn_holdout`` draws."""
    d = config.data
    size = load_size(config)
    if holdout and d.dataset == "folder":
        raise DataError("--holdout is for CIFAR-10/100 and STL-10, which have no validation split; a folder's "
                        "held-out split is ROOT/val, which eval uses")
    if d.dataset == "folder":
        splits = labeled_folders(image_root(d.root), size, limit)  # or one sentence on what is wrong with them
        if splits is None:
            raise DataError(f"evaluating on a folder needs ROOT/train and ROOT/val (or test), each with one "
                            f"sub-folder per class, each of val's in train too; {d.root} is neither ROOT nor "
                            "ROOT/train of such a layout: point --data.root at the ROOT, the folder that holds "
                            "train/ and val/")
        for split in splits:
            for said in split.notes():
                note(said)
        return splits
    train, test = held_out(load_split(config, "train"), holdout) if holdout else (
        load_split(config, split) for split in ("train", "test"))
    if train.labels is None:
        raise DataError(f"{d.dataset} train split has no labels to evaluate with")
    return (train.first(limit), test.first(limit)) if limit else (train, test)


def load_split(config: Config, split: str) -> ImageSet:
    """A split of a CIFAR / STL-10 data set; files not found point to ``--data.root`` (and to
    ``--data.download=true``: eval's and embed's option, not pretrain's ``--download``)."""
    d = config.data
    try:
        return build_dataset(d.dataset, d.root, split, None, d.download)
    except FilesNotFound as e:
        if d.download:
            raise
        e = e.with_download("--data.download=true")
        root = Path(d.root).expanduser()  # as build_dataset reads it: "~/data" is in the home folder, and it exists
        relative = "" if root.is_absolute() else ", relative to the current directory"
        if e.explained:  # (a user test: "does not exist: check the path", then the same advice again)
            moved = "; where the data moved since the run, give --data.root=NEW" if not root.exists() else ""
            raise DataError(e.what + (f" (data.root is {d.root}{relative})" if relative else "") + moved) from None
        raise DataError(f"{e.what}; point --data.root=... at the folder that holds them (data.root is "
                        f"{d.root}{relative})") from None


def image_root(root: Union[str, Path]) -> Path:
    """A folder run's ``data.root``, or one sentence saying that it is not there (moved since?)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"the image folder {root} (data.root) {what}; point --data.root=... at it")
    return root


EVAL_BATCH = 512


def features(net: nn.Module, config: Config, source: Source, device: torch.device,
             progress: Union[bool, str] = False,
             weights: str = "the encoder") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(features, labels, indices)`` of ``source`` under ``net``; under torchrun each rank embeds
    its share and every rank gets them all. Features that are not all finite are a
    :class:`~byol.checkpoint.CheckpointError` naming ``weights`` (where ``net``'s come from).

    A folder is streamed through ``data.workers`` decoding processes, so it is never all in
    memory; its undecodable files are left out (``indices`` says which files the rows are of).
    Its images are cut to their center ``data.image_size`` (:func:`~byol.build.eval_crop`).
    ``progress`` shows a bar on stderr (rank 0 only; a string names it). Memory that runs out is a
    :class:`~byol.errors.ByolError` saying what to lower (not train.batch_size, which evaluation does not use).
    """
    try:
        return _features(net, config, source, device, progress, weights)
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        cpu = " or run on the CPU (--train.device=cpu)," if device.type != "cpu" else ""
        raise ByolError(f"the features of {len(source):,} images, in batches of {EVAL_BATCH}, do not fit in the "
                        f"memory of {device.type}; lower data.image_size (a folder's),{cpu} or give fewer images "
                        "(--limit N): train.batch_size is pretraining's, not used here") from None


def _features(net: nn.Module, config: Config, source: Source, device: torch.device, progress: Union[bool, str],
              weights: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if device.type == "cpu" and config.train.keep_freed_memory:  # as pretrain: each batch reuses the last's
        keep_freed_memory()  # memory, not faulted in again (1.6x faster; docs/python_api.md)
    view1, _ = views_of(config)
    kwargs = dict(batch_size=EVAL_BATCH, mean=view1.mean, std=view1.std, crop=eval_crop(config),
                  amp_dtype=evaluation_precision(net, config, device),
                  progress=progress if dist.rank() == 0 else False)
    if isinstance(source, ImageSet):
        labels = source.labels if source.labels is not None else torch.full((len(source),), -1)
        feats = extract_features_sharded(net, source.images, device, **kwargs)
        return _finite(feats, weights), labels, torch.arange(len(source))
    kwargs.pop("batch_size")

    def loader_for(share: range):
        return folder_loader(source, EVAL_BATCH, config.data.workers, shuffle=False, drop_last=False, sampler=share,
                             persistent=False)  # one pass

    feats, labels, indices = extract_batches_sharded(net, loader_for, len(source), device, **kwargs)
    if len(indices) == 0:
        raise source.nothing_decoded()
    if len(indices) < len(source):  # under torchrun, rank 0 knows the reasons of its own share only
        example = "".join(f" (e.g. {escape_name(p)}: {r})" for p, r in list(source.bad_files.items())[:1])
        bad = len(source) - len(indices)
        note(f"{bad:,} of the {len(source):,} image files in {source.where} could not be decoded and "
             f"{'is' if bad == 1 else 'are'} left out{example}")
    return _finite(feats, weights), labels, indices


def _finite(feats: torch.Tensor, weights: str) -> torch.Tensor:
    """``feats``, if all finite: else the encoder overflows on these images (its weights, checked finite
    when loaded, are too large: a run on its way to diverging), which no evaluation or embedding of it
    should hide."""
    bad = nonfinite_rows(feats)
    if bad:
        raise CheckpointError(f"{weights} gives NaN or infinite features for {bad:,} of the {len(feats):,} images "
                              "(its activations overflow, as in a run about to diverge); evaluate or embed an "
                              "earlier checkpoint")
    return feats


@usual_torch_defaults()
def knn(path: Union[str, Path], overrides: Optional[list[str]] = None, ks: Sequence[int] = (20, 200),
        temperature: float = 0.1, limit: Optional[int] = None, random_init: bool = False,
        progress: bool = False, holdout: int = 0, *, net: Optional[nn.Module] = None,
        hidden_layer: Cut = RUN_S_CUT) -> dict:
    """kNN top-1 (cosine, weighted votes) of a checkpoint's online encoder: ``{"knn_top1": {k: acc}}``
    (``k`` an int; the JSON that ``byol eval knn`` writes has it as a string).

    ``limit`` evaluates on N images of each split only (the first N; a folder's spread over its
    classes); ``random_init`` evaluates the encoder the run started from (see :func:`byol.encoders.load_encoder`);
    ``progress`` shows progress bars on stderr; ``holdout`` N scores N training images held out of
    the bank instead of the test split (CIFAR, STL-10: for tuning). The result also says what it is of (the checkpoint,
    its step, the features' width and precision: docs/metrics.md lists its fields). ``net``: the network of a run
    pretrained on one given from Python (:func:`byol.encoders.load_encoder`'s ``net``, and its ``hidden_layer``).
    """
    refuse_own_options(overrides, "knn", ("ks", "temperature", "limit", "random_init", "holdout"))
    ks, temperature, limit, holdout = check_counts(ks=ks, temperature=temperature, limit=limit, holdout=holdout)
    with dist.noted() as notes:
        config, device, splits, info, missing = _labeled_features(path, overrides, random_init, limit, progress,
                                                                  "eval knn", holdout, net, hidden_layer)
        if missing:
            note(missing)
        over = [str(k) for k in dict.fromkeys(ks) if k > info["n_train"]]
        if over:  # (from Python too: a sweep's k=200 of 50 images votes with 50)
            one = len(over) == 1
            note(f"k={', '.join(over)} {'is' if one else 'are'} more than the {info['n_train']} training images, "
                 f"so {'it votes' if one else 'each votes'} with all of them")
    acc = knn_accuracy(*splits, ks=ks, temperature=temperature, device=device)
    return {"dataset": config.data.dataset, "knn_top1": dict(acc),
            "temperature": temperature, "features": "computed once, no augmentation, L2-normalized", **info,
            "notes": notes}


# The linear probe's settings, so that its results record them: ``evaluate.linear_probe``'s defaults,
# read from its signature (set there only), and how it trains and uses the features.
LINEAR_PROBE = {**{name: inspect.signature(linear_probe).parameters[name].default
                   for name in ("batch_size", "lr", "weight_decay")},
                "optimizer": "SGD, Nesterov momentum 0.9, cosine learning rate to 0, zero-initialized head",
                "features": "computed once, no augmentation, standardized (the train split's per-dimension "
                            "mean and std)"}


@usual_torch_defaults()
def linear(path: Union[str, Path], overrides: Optional[list[str]] = None, epochs: int = 100,
           limit: Optional[int] = None, random_init: bool = False, progress: bool = False,
           holdout: int = 0, *, net: Optional[nn.Module] = None, hidden_layer: Cut = RUN_S_CUT) -> dict:
    """Linear probe (top-1, top-5) on frozen online-encoder features of a checkpoint (or, with
    ``random_init``, of the encoder its run started from), with its settings (:data:`LINEAR_PROBE`,
    ``epochs``, the ``seed``: ``train.seed``); ``progress`` shows progress bars on stderr; ``holdout``
    as for :func:`knn`: trained on the rest of the train split, scored on those held out; ``net`` and
    ``hidden_layer`` as for :func:`knn`."""
    refuse_own_options(overrides, "linear", ("epochs", "limit", "random_init", "holdout"))
    epochs, limit, holdout = check_counts(epochs=epochs, limit=limit, holdout=holdout)
    with dist.noted() as notes:
        config, device, splits, info, missing = _labeled_features(path, overrides, random_init, limit, progress,
                                                                  "eval linear", holdout, net, hidden_layer)
        if info["n_train"] < 2:  # linear_probe's own ValueError is for Python callers of it, not a data error
            raise DataError(f"the linear probe needs at least 2 train images (it standardizes the features by "
                            f"their spread), got {info['n_train']}; raise --limit, or lower --holdout")
        if missing:  # (after the error: an error is one sentence)
            note(missing)
    settings = {"epochs": epochs, "batch_size": LINEAR_PROBE["batch_size"], "lr": LINEAR_PROBE["lr"],
                "weight_decay": LINEAR_PROBE["weight_decay"], "seed": config.train.seed}
    result = linear_probe(*splits, **settings, device=device, progress=progress if dist.rank() == 0 else False)
    return {"dataset": config.data.dataset, **result, **settings, "optimizer": LINEAR_PROBE["optimizer"],
            "features": LINEAR_PROBE["features"], **info, "notes": notes}


def _input_size(source: Source, crop: Optional[int]) -> int:
    """The side of the square images the encoder is given: the center crop, else a folder's decode
    size, else the data set's own."""
    return crop or (source.size if isinstance(source, ImageFolder) else int(source.images.shape[-1]))


def _labeled_features(path: Union[str, Path], overrides: Optional[list[str]], random_init: bool,
                      limit: Optional[int], progress: bool, command: str, holdout: int = 0,
                      own_net: Optional[nn.Module] = None, hidden_layer: Cut = RUN_S_CUT):
    """``(config, device, (train features, labels, held-out features, labels), info, missing)`` for a
    checkpoint's online encoder; ``missing``: the note of :func:`_classes_missing`, or None; ``info``:
    the splits' sizes and the held-out one's name (test, or a folder's val), the data root they were
    read from, where the weights come from (:func:`load_encoder_with_origin`) and how the features
    were computed (their width, the input's size, the device and precision: what ``train.precision``
    resolves to there); the settings given that ``command`` does not read are noted."""
    net, config, origin = load_encoder_with_origin(path, overrides, random_init, net=own_net,
                                                   hidden_layer=hidden_layer)
    cut = origin.pop("hidden_layer", None)  # a network given from Python's: where its run took the representation
    note_unused(overrides, command, config)
    device = resolve_device(config.train.device)
    train, test = labeled_splits(config, limit, holdout)
    held = Path(test.root).name if isinstance(test, ImageFolder) else "held-out train" if holdout else "test"
    weights = f"the {'random-init ' if random_init else ''}encoder of {path}"
    train_f, train_y, _ = features(net, config, train, device, named(progress, "train features"), weights)
    test_f, test_y, _ = features(net, config, test, device, named(progress, f"{held} features"), weights)
    info = {"n_train": len(train_f), "n_test": len(test_f), "test_split": held,
            "data_root": os.path.abspath(os.path.expanduser(config.data.root)), **origin,
            "random_init": random_init, "feature_dim": train_f.shape[1],
            "image_size": _input_size(test, eval_crop(config)),
            **_input_of(config, own_net, cut),
            "device": str(device),
            "precision": precision_name(evaluation_precision(net, config, device)), "versions": versions(),
            # what was asked besides the checkpoint, so that the number can be computed again (a review: n_train
            # alone does not tell --limit from the whole split, nor which config settings were given)
            "limit": limit, "holdout": holdout, "overrides": override_list(overrides)}
    missing = _classes_missing(train, train_y, test_y, held, limit, holdout)
    if len(train_y) > 1 and bool((train_y == train_y[0]).all()):  # (a one-class folder scored 100%, without a word)
        note(f"the train images are all of one class, so every {held} image is classified as it: top-1 is "
             f"the share of the {held} images of that class, whatever the encoder")
    return config, device, (train_f, train_y, test_f, test_y), info, missing


def _input_of(config: Config, own_net: Optional[nn.Module], cut: Cut = None) -> dict:
    """What an evaluation's result records of the encoder and what it was fed (a bare state_dict's are
    assumed, and two results given other ones told apart by their numbers alone: a user test): the network
    (a ResNet's settings, or the class of the network given and ``cut``, its run's ``hidden_layer``) and the
    normalization's mean and std."""
    m = config.model
    net = {"backbone": m.backbone, **({"class": type(own_net).__name__, "hidden_layer": cut} if own_net is not None
                                      else {"cifar_stem": m.cifar_stem, "width": m.width})}
    view1, _ = views_of(config)
    return {"model": net, "mean": list(view1.mean), "std": list(view1.std)}


def _classes_missing(train: Source, train_y: torch.Tensor, test_y: torch.Tensor, held: str,
                     limit: Optional[int] = None, holdout: int = 0) -> Optional[str]:
    """The note naming the classes of the held-out split's images that no train image has (None: there are
    none): none of theirs can be classified right (a class folder whose files all failed to decode, say,
    caps the accuracy silently); the cause it names is one that ``limit`` and ``holdout`` (given or not) allow."""
    missing = sorted(set(test_y.tolist()) - set(train_y.tolist()) - {-1})
    if not missing:
        return None
    classes = getattr(train, "classes", None)
    names = [classes[i] if classes else str(i) for i in missing]
    n = int(torch.isin(test_y, torch.tensor(missing)).sum())
    one = len(missing) == 1
    # the causes the user's own options allow (a user test: --limit named where none was given)
    causes = ["its files could not be decoded"] if isinstance(train, ImageFolder) else []
    given = " or ".join(option for option, value in (("--limit", limit), ("--holdout", holdout)) if value)
    causes += [f"{given} left them out"] if given else []
    why = f" ({', or '.join(causes)})" if causes else ""
    return (f"{'class' if one else 'classes'} {first_names(names)} "
            f"{'has' if one else 'have'} no image among the train features{why}, so none of the {n:,} {held} "
            f"image{'s' * (n != 1)} of {'it' if one else 'them'} can be classified right")
