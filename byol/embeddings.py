"""A data set's embeddings, with their labels, class names and file paths, written to ``.npy`` or ``.pt``:
``byol embed``. The encoder itself is written by ``exports.py``."""

import os
from pathlib import Path
from typing import Optional, Union

import torch

from .build import load_size
from .precision import evaluation_precision, precision_name, resolve_device, usual_torch_defaults
from .errors import path_argument
from .progress import named
from .files import bytes_written_by, write_files_atomically
from .data import DataError
from .folder import ImageFolder, class_names, escape_name
from .folder_splits import first_names, split_folder
from . import distributed as dist
from .distributed import note
from .encoders import CHECKPOINT_PATH, load_encoder_with_origin
from .given_net import RUN_S_CUT, Cut
from .outputs import EMBED_SIDE_NAMES, OutputError, check_writable, writing
from .eval_arguments import check_counts, note_unused, refuse_own_options
from .pipeline import features, image_root, load_split


def _folder_split(root: Union[str, Path], split: Optional[str], size: int, train_split: str,
                  limit: Optional[int] = None) -> ImageFolder:
    """The folder to embed for ``split`` of a run trained on the folder ``root`` (:func:`_find_split`),
    with a note where files outside its class sub-folders are labeled -1, one naming the byol run
    folders inside it, left out, and one counting the files left out as no image format's (HEIC, say)."""
    folder = _find_split(root, split, size, train_split, limit)
    for said in folder.notes():
        note(said)
    loose, n = folder.loose, folder.loose_count
    if loose is None and folder.classes is None and limit and class_names(folder.root) is not None:
        loose, n = folder.path(0), len(folder)  # --limit listed loose files alone: the folder has classes all the same
    if loose is not None:  # (files: some may not decode, and are said to be left out)
        others = "; the others have their class" if bool((folder.labels >= 0).any()) else ""
        note(f"{n} image file{'s' * (n != 1)} of {folder.root} {'are' if n != 1 else 'is'} labeled -1, outside its "
             f"class sub-folders ({escape_name(loose)}{', ...' if n > 1 else ''}){others}")
    elif folder.classes is None:
        note(f"the images of {folder.root} are labeled -1: it has no class sub-folders")
    return folder


def _find_split(root: Union[str, Path], split: Optional[str], size: int, train_split: str,
                limit: Optional[int] = None) -> ImageFolder:
    """The folder to embed for ``split`` of a run trained on the folder ``root``.

    ``root`` may be ROOT of an ImageNet-style layout or ``ROOT/train`` (as :func:`labeled_folders`).
    ``train`` is ``ROOT/train``, the labeled training split that eval's bank is (the folder the run
    trained on where there is none: a run may have trained on ``ROOT/unlabeled``, its
    ``data.train_split``); ``val`` and ``test`` are ``ROOT/val`` or ``ROOT/test`` (the one named
    first); None, the held-out split, is either, and for a plain folder of images with neither
    beside it, the training folder itself (with a note). Another name is a sub-folder of ROOT.
    Every split's labels are numbered by the classes of the ``train`` split, as eval numbers them.
    ``limit``: its first ``limit`` files only, the rest not listed (but for a class of a plain folder).
    """
    root = Path(os.path.abspath(image_root(root)))  # (".", inside ROOT/train: its name "train" only so)
    sub = split_folder(root, train_split)  # as pretraining found it
    if sub is not None:
        trained_on, base = sub, root
    elif root.name == "train":  # as labeled_folders, which eval uses
        trained_on, base = root, root.parent
    else:  # a plain folder of images: its sub-folders (a `test/` too) are classes, not splits
        trained_on, base = root, None
    train = base / "train" if base is not None and (base / "train").is_dir() else trained_on
    split = _named_from(base if base is not None else root, split)
    if split == "train":
        if base is None and (root / "train").is_dir():  # a user test took it for the class train/ alone
            note(f"{root} is a plain folder of images, so --split train embeds all of it, as the run trained on it; "
                 "--split ./train embeds its class train/ alone")
        whole = ImageFolder(train, size, "partial", limit)  # (limited: its own classes are those of its first files)
        return _numbered_as(whole, train) if limit else whole
    if split in (None, "val", "test"):
        names = ("test", "val") if split == "test" else ("val", "test")
        for name in names if base is not None else ():
            if (base / name).is_dir():
                if split is not None and name != split:
                    note(f"{base} has no {split}/ folder; embedding {base / name}")
                return _numbered_as(ImageFolder(base / name, size, "partial", limit), train)
        where = f"{base} has no val/ or test/ folder" if base is not None else \
            f"{root} is a plain folder of images (no {train_split}/ in it: its sub-folders are classes, not splits)"
        if split is not None:
            its_class = f" (--split ./{split} embeds its class {split}/)" if base is None and (root / split).is_dir() \
                else ""
            raise DataError(f"there is no {split} split: {where}; use --split train{its_class}, or lay the images out "
                            f"as ROOT/{train_split} and ROOT/val")
        note(f"{where}, so " + ("all of its images are embedded, as a run on it trains on them" if base is None
                                else f"the images of {trained_on} are embedded"))
        whole = ImageFolder(trained_on, size, "partial", limit)
        return _numbered_as(whole, trained_on) if limit else whole
    if base is None and (Path(split).is_absolute() or os.path.normpath(split).split(os.sep)[0] == os.pardir):
        raise DataError(f"{split!r} is not a folder inside {root}: name one of its class folders, or give another "
                        "folder of images as --data.root=FOLDER")  # (an absolute one inside is ./NAME by now)
    if base is None and (root / split).is_dir():  # one of a plain folder's classes, labeled as the run's
        return ImageFolder(root, size, "partial").inside(split)
    if base is not None and (Path(split).is_absolute() or os.pardir in Path(split).parts):  # (it read outside)
        raise DataError(f"{split!r} is not a folder inside {base}: name one of its splits or folders, or give "
                        "another folder of images as --data.root=FOLDER")
    if base is not None and (base / split).is_dir():
        return _numbered_as(ImageFolder(base / split, size, "partial", limit), train)
    choose = "train, val or test (or a sub-folder of it)" if base is not None else \
        "train (all of it, as the run trained on it) or one of its class folders"  # (a user test: told val, refused it)
    raise DataError(f"unknown split {split!r}: {base or root} has no sub-folder {split}; choose {choose}")


def _named_from(base: Path, split: Optional[str]) -> Optional[str]:
    """An absolute ``split`` inside ``base`` (tab completion from another directory) as the folder's path from
    ``base``, ``./val/cat``: it names a folder, never the split keyword; ``base`` or ``split`` may go through a
    symbolic link to it. Any other ``split`` as it is."""
    if split is None or not os.path.isabs(split):
        return split
    for resolve in (os.path.abspath, os.path.realpath):  # (then through links: ROOT a link, the split its target's)
        try:
            inside = Path(resolve(split)).relative_to(resolve(base))
        except ValueError:  # outside base: refused as such
            continue
        return os.path.join(os.curdir, inside) if inside.parts else split
    return split


def _numbered_as(folder: ImageFolder, train: Optional[Path]) -> ImageFolder:
    """``folder`` with its labels numbered by the classes of the training split ``train`` (ROOT/train, as
    eval's bank, or the folder the run trained on), so that label i is the same class in every split's
    embeddings (a class only here is labeled -1, with a note)."""
    if folder.classes is None or train is None:
        return folder
    try:  # as eval's bank has them: a class is a sub-folder that holds images
        classes = class_names(train)
    except DataError as e:  # moved or emptied since the run
        note(f"{folder.root}'s labels are numbered by its own class folders: the training split {train} "
             f"cannot be read for its classes ({e})")
        return folder
    if classes is None or classes == folder.classes:
        return folder
    folder, unknown = folder.numbered_as(classes)
    if unknown:
        note(f"{folder.root} has class folders that {train} has not ({first_names(unknown)}); their images are "
             "labeled -1")
    return folder


@usual_torch_defaults()
def embed(path: Union[str, Path], out: Union[str, Path], split: Optional[str] = None,
          overrides: Optional[list[str]] = None, limit: Optional[int] = None, progress: bool = False, *,
          net: Optional[torch.nn.Module] = None, hidden_layer: Cut = RUN_S_CUT) -> Path:
    """Write the embeddings of a split, with their labels, class names and file paths, to ``.npy`` or ``.pt``.

    With ``NAME.npy``: ``NAME_labels.npy``, and where known ``NAME_classes.txt`` (line i: the name
    of label i) and for a folder ``NAME_paths.txt`` (line i: the file of row i). ``NAME.pt``
    holds all of them under ``embeddings``, ``labels``, ``classes`` and ``paths`` (None: unknown), and
    the ``precision`` they were computed in (``train.precision=auto``'s bf16 is said in a note).
    A folder split's labels are numbered by the classes of its training split (ROOT/train, as eval's).

    ``split`` None is the held-out split: ``test``, or for a folder ``ROOT/val`` or ``ROOT/test``
    (see :func:`_folder_split`). ``progress`` shows a progress bar on stderr. ``net``: the network of a run
    pretrained on one given from Python (:func:`byol.encoders.load_encoder`'s ``net``, and its ``hidden_layer``).
    """
    refuse_own_options(overrides, "embed", ("limit", "split"))
    limit, = check_counts(limit=limit)
    path_argument(path, "path", CHECKPOINT_PATH)
    out = path_argument(out, "out", "the file to write, NAME.npy or NAME.pt")
    if split is not None and not isinstance(split, str):  # (a user test gave the overrides second, as to knn)
        raise TypeError(f"split must be the name of a split, such as 'test', got {type(split).__name__} {split!r:.60}; "
                        "give the overrides by name: embed(path, out, overrides=[...])")
    if split == "":  # as the command line's --split "" (arguments._given): not the held-out split without a word
        raise DataError("split is empty; give a split's name, such as 'test', or None for the held-out split")
    if Path(out).suffix not in (".npy", ".pt"):
        raise OutputError(f"the output {out} must end in .npy or .pt")
    rows = Path(out).with_name(Path(out).name.removesuffix("_labels.npy") + ".npy")
    if Path(out).name.endswith("_labels.npy") and rows.is_file():  # (a user test: replaced without a word)
        raise OutputError(f"{out} holds the labels of {rows.name}, an earlier byol embed's rows, which this would "
                          "replace; choose another --out")
    for target in (Path(out), *_side_names(Path(out)).values()):  # all before the work
        check_writable(target, source=path)
    # (a review: a NAME_classes.txt of a user's own, with no NAME.npy, was removed as an earlier output's)
    theirs = None if Path(out).exists() else next((p for _, p in side_files(Path(out))), None)
    if theirs is not None:
        raise OutputError(f"{theirs} is there without {Path(out).name}, as no earlier byol embed leaves it; this "
                          "would replace or remove it: move it, or choose another --out")
    net, config, _ = load_encoder_with_origin(path, overrides, False, net=net, hidden_layer=hidden_layer)
    note_unused(overrides, "embed", config)
    device = resolve_device(config.train.device)
    d = config.data
    if d.dataset == "folder":
        source = _folder_split(d.root, split, load_size(config), d.train_split, limit)  # (not listing all of it)
    else:
        source = load_split(config, split or "test")
    if limit:
        source = source.subset(torch.arange(min(limit, len(source)))) if isinstance(source, ImageFolder) \
            else source.first(limit)
    precision = precision_name(evaluation_precision(net, config, device))
    if config.train.precision == "auto" and precision != "float32":  # (a user test could not tell)
        note(f"the embeddings are computed in {precision} (train.precision=auto, and {device} computes bf16 "
             "natively), which differ slightly from float32's; --train.precision=fp32 for those")
    emb, labels, indices = features(net, config, source, device, named(progress, "embeddings"),
                                    f"the encoder of {path}")
    paths = [source.path(int(i)) for i in indices] if isinstance(source, ImageFolder) else None
    classes = source.classes if (labels >= 0).any() else None  # classes[label] names label's class
    out = Path(out)
    if dist.rank() == 0:
        _save_embeddings(out, emb, labels, paths, classes, precision)
    dist.barrier()  # under torchrun, no rank returns before the file is there (its caller may read it next)
    return out


def _save_embeddings(out: Path, emb: torch.Tensor, labels: torch.Tensor, paths: Optional[list[str]],
                     classes: Optional[list[str]], precision: str) -> None:
    """:func:`embed`'s files (as it says); an earlier ``NAME.npy``'s side files that this one has
    not are removed, so that every file called NAME belongs to this output."""
    # The embeddings are written straight into their file, not into memory first (as large as they).
    if out.suffix == ".pt":
        saved = {"embeddings": _compact(emb), "labels": _compact(labels), "paths": paths, "classes": classes,
                 "precision": precision}
        files = {out: lambda tmp: torch.save(saved, tmp)}
    else:
        import numpy as np
        side = _side_names(out)
        files = {out: lambda tmp: _write_with(tmp, lambda f: np.save(f, emb.numpy())),
                 side["labels"]: bytes_written_by(lambda f: np.save(f, labels.numpy()))}
        files.update({side[what]: _path_lines(lines)
                      for what, lines in (("file paths", paths), ("class names", classes)) if lines is not None})
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        write_files_atomically(files)  # all or none: a full disk leaves an earlier output's files whole
        for _, earlier in side_files(out):
            if earlier not in files:  # an earlier output's, which this one has not
                earlier.unlink()


def _compact(t: torch.Tensor) -> torch.Tensor:
    """``t``, copied where it is a part of a larger tensor (torch.save would save the whole of it)."""
    whole = t.storage_offset() == 0 and t.is_contiguous() and t.untyped_storage().nbytes() == t.nbytes
    return t if whole else t.clone()


def _write_with(path: Path, write) -> None:
    """``write(file)`` (an np.save) into the file ``path`` (np.save given a path adds ``.npy`` to it)."""
    with open(path, "wb") as f:
        write(f)


def side_files(out: Path) -> list[tuple[str, Path]]:
    """What :func:`embed` wrote beside ``out``: ``(what, path)``, e.g. ``("labels", NAME_labels.npy)``
    (only ``.npy`` has side files; an earlier output's that this one has not were removed)."""
    return [(what, path) for what, path in _side_names(out).items() if path.is_file()]


def _side_names(out: Path) -> dict[str, Path]:
    """The files :func:`embed` may write beside ``NAME.npy`` (none beside ``.pt``), by what they hold."""
    if out.suffix != ".npy":
        return {}
    return {what: out.with_name(out.stem + name) for what, name in EMBED_SIDE_NAMES.items()}


def _path_lines(paths: list[str]) -> bytes:
    """``paths`` one per line, as the file system spells them (bytes that are not UTF-8 kept as they
    are), so that line i is row i: a backslash in a name is written as two, a line break as
    backslash-n (-r), a tab as backslash-t, the other breaks of ``str.splitlines`` as ``\\x0c``, ``\\u2028``
    (:func:`~byol.folder.escape_name`)."""
    return b"".join(escape_name(p).encode("utf-8", "surrogateescape") + b"\n" for p in paths)
