"""Taking the encoder or its embeddings to your own task: ``byol embed`` and ``byol export``."""

import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Optional, Union

import torch

from .backbones import feature_dim
from .resnets import resnet
from .build import eval_crop, load_size, views_of
from .precision import autocast_dtype, precision_name, resolve_device, usual_torch_defaults
from .errors import path_argument
from .progress import named
from .files import remove_empty_folders, topmost_missing, write_files_atomically
from .config import Config, config_text
from .data import DataError
from .datasets import NATIVE_SIZE
from .folder import ImageFolder, class_names, escape_name, first_names, split_folder
from . import distributed as dist
from .distributed import note
from .encoders import CHECKPOINT_PATH, load_encoder, load_encoder_with_origin
from .given_net import RUN_S_CUT, Cut
from .outputs import EMBED_SIDE_NAMES, EXPORT_NAMES, OutputError, check_writable, is_an_export, writing
from .pipeline import check_counts, features, image_root, load_split, note_unused


def _folder_split(root: Union[str, Path], split: Optional[str], size: int, train_split: str) -> ImageFolder:
    """The folder to embed for ``split`` of a run trained on the folder ``root`` (:func:`_find_split`),
    with a note where files outside its class sub-folders are labeled -1, one naming the byol run
    folders inside it, left out, and one counting the files left out as no image format's (HEIC, say)."""
    folder = _find_split(root, split, size, train_split)
    for said in folder.notes():
        note(said)
    if folder.loose is not None:  # (files: some may not decode, and are said to be left out)
        n = folder.loose_count
        others = "; the others have their class" if bool((folder.labels >= 0).any()) else ""
        note(f"{n} image file{'s' * (n != 1)} of {folder.root} {'are' if n != 1 else 'is'} labeled -1, outside its "
             f"class sub-folders ({folder.loose}{', ...' if n > 1 else ''}){others}")
    elif folder.classes is None:
        note(f"the images of {folder.root} are labeled -1: it has no class sub-folders")
    return folder


def _find_split(root: Union[str, Path], split: Optional[str], size: int, train_split: str) -> ImageFolder:
    """The folder to embed for ``split`` of a run trained on the folder ``root``.

    ``root`` may be ROOT of an ImageNet-style layout or ``ROOT/train`` (as :func:`labeled_folders`).
    ``train`` is ``ROOT/train``, the labeled training split that eval's bank is (the folder the run
    trained on where there is none: a run may have trained on ``ROOT/unlabeled``, its
    ``data.train_split``); ``val`` and ``test`` are ``ROOT/val`` or ``ROOT/test`` (the one named
    first); None, the held-out split, is either, and for a plain folder of images with neither
    beside it, the training folder itself (with a note). Another name is a sub-folder of ROOT.
    Every split's labels are numbered by the classes of the ``train`` split, as eval numbers them.
    """
    root = image_root(root)
    sub = split_folder(root, train_split)  # as pretraining found it
    if sub is not None:
        trained_on, base = sub, root
    elif root.name == "train":  # as labeled_folders, which eval uses
        trained_on, base = root, root.parent
    else:  # a plain folder of images: its sub-folders (a `test/` too) are classes, not splits
        trained_on, base = root, None
    train = base / "train" if base is not None and (base / "train").is_dir() else trained_on
    if split == "train":
        if base is None and (root / "train").is_dir():  # a user test took it for the class train/ alone
            note(f"{root} is a plain folder of images, so --split train embeds all of it, as the run trained on it; "
                 "--split ./train embeds its class train/ alone")
        return ImageFolder(train, size, "partial")
    if split in (None, "val", "test"):
        names = ("test", "val") if split == "test" else ("val", "test")
        for name in names if base is not None else ():
            if (base / name).is_dir():
                if split is not None and name != split:
                    note(f"{base} has no {split}/ folder; embedding {base / name}")
                return _numbered_as(ImageFolder(base / name, size, "partial"), train)
        where = f"{base} has no val/ or test/ folder" if base is not None else \
            f"{root} is a plain folder of images (no {train_split}/ in it: its sub-folders are classes, not splits)"
        if split is not None:
            its_class = f" (--split ./{split} embeds its class {split}/)" if base is None and (root / split).is_dir() \
                else ""
            raise DataError(f"there is no {split} split: {where}; use --split train{its_class}, or lay the images out "
                            f"as ROOT/{train_split} and ROOT/val")
        note(f"{where}, so " + ("all of its images are embedded, as a run on it trains on them" if base is None
                                else f"the images of {trained_on} are embedded"))
        return ImageFolder(trained_on, size, "partial")
    if base is None and (root / split).is_dir():  # one of a plain folder's classes, labeled as the run's
        return ImageFolder(root, size, "partial").inside(split)
    if base is not None and (Path(split).is_absolute() or os.pardir in Path(split).parts):  # (it read outside)
        raise DataError(f"{split!r} is not a folder inside {base}: name one of its splits or folders, or give "
                        "another folder of images as --data.root=FOLDER")
    if base is not None and (base / split).is_dir():
        return _numbered_as(ImageFolder(base / split, size, "partial"), train)
    raise DataError(f"unknown split {split!r}: {base or root} has no sub-folder {split}; choose train, val or "
                    "test (or a sub-folder of it)")


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
    limit, = check_counts(limit=limit)
    path_argument(path, "path", CHECKPOINT_PATH)
    out = path_argument(out, "out", "the file to write, NAME.npy or NAME.pt")
    if split is not None and not isinstance(split, str):  # (a user test gave the overrides second, as to knn)
        raise TypeError(f"split must be the name of a split, such as 'test', got {type(split).__name__} {split!r:.60}; "
                        "give the overrides by name: embed(path, out, overrides=[...])")
    if split == "":  # as the command line's --split "" (arguments._given): not the held-out split without a word
        raise DataError("split is empty; give a split's name, such as 'test', or None for the held-out split")
    if Path(out).suffix not in (".npy", ".pt"):
        raise DataError(f"the output {out} must end in .npy or .pt")
    rows = Path(out).with_name(Path(out).name.removesuffix("_labels.npy") + ".npy")
    if Path(out).name.endswith("_labels.npy") and rows.is_file():  # (a user test: replaced without a word)
        raise OutputError(f"{out} holds the labels of {rows.name}, an earlier byol embed's rows, which this would "
                          "replace; choose another --out")
    for target in (Path(out), *_side_names(Path(out)).values()):  # all before the work
        check_writable(target, source=path)
    net, config = load_encoder(path, overrides, net=net, hidden_layer=hidden_layer)
    note_unused(overrides, "embed", config)
    device = resolve_device(config.train.device)
    d = config.data
    if d.dataset == "folder":
        source = _folder_split(d.root, split, load_size(config), d.train_split)
    else:
        source = load_split(config, split or "test")
    if limit:
        source = source.subset(torch.arange(min(limit, len(source)))) if isinstance(source, ImageFolder) \
            else source.first(limit)
    precision = precision_name(autocast_dtype(config.train.precision, device))
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
                 side["labels"]: _bytes(lambda f: np.save(f, labels.numpy()))}
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


def _bytes(write) -> bytes:
    """What ``write(file)`` (a torch.save or np.save into ``file``) writes."""
    buffer = io.BytesIO()
    write(buffer)
    return buffer.getvalue()


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
    backslash-n (-r), a tab as backslash-t (:func:`~byol.folder.escape_name`)."""
    return b"".join(escape_name(p).encode("utf-8", "surrogateescape") + b"\n" for p in paths)


def _decoding(size: int) -> str:
    """How :func:`~byol.images.decode_image` makes a file's pixels at ``size``, for someone who
    reproduces it without byol."""
    return (f"each file opened with Pillow; a JPEG decoded by Pillow's draft(mode, ({size}, {size})) at the smallest "
            f"scale still at least {size}; turned upright by its EXIF orientation (ImageOps.exif_transpose; a "
            "malformed EXIF: as stored); made RGB: 16-bit gray (Pillow's I;16 modes, and I read from a PNG or PGM) as "
            "round(v / 257), its transparent value if any not applied, 32-bit integer gray (I) divided by 1 where its "
            "largest value is at most 255, else by 257 where at most 65535, else by largest / 255, float gray (F) "
            "multiplied by 255 where its largest value is at most 1, else as it is where at most 255, else by 255 / "
            "largest (then rounded, half to even, and clipped to 0..255; NaN and -inf black, +inf the largest finite "
            "value), transparent pixels (an alpha channel, a transparent colour or palette entry: Pillow's "
            "convert('RGBA')) composited onto black (each channel times alpha / 255, rounded), any other mode by "
            "Pillow's convert('RGB'); then the center square of side s = min(w, h), the box ((w - s) / 2, "
            f"(h - s) / 2, (w + s) / 2, (h + s) / 2) at fractional offsets, resized to {size} x {size} by "
            f"Image.resize(({size}, {size}), Image.Resampling.BILINEAR, box=box)")


def _eval_input(config: Config, mean: tuple[float, ...], std: tuple[float, ...]) -> dict:
    """What the encoder is evaluated on (``byol eval`` and ``embed``); neither exported file normalizes."""
    d = config.data
    if d.dataset == "folder":
        size, crop = load_size(config), eval_crop(config)
        images = _decoding(size)
        if crop:
            images += (f"; then its center {crop} x {crop} cut out at offset round(({size} - {crop}) / 2) on each "
                       "axis, rounded half to even, as torchvision's CenterCrop does (the paper's test protocol: "
                       "256, then the center 224)")
        sizes = {"image_size": crop or size, "load_size": size, "crop": crop}
    else:
        side = NATIVE_SIZE[d.dataset]
        sizes = {"image_size": side, "load_size": side, "crop": None}
        images = f"{d.dataset}'s own images, not resized; other images (a folder's) alike: {_decoding(side)}"
    precision = {"fp32": "float32", "bf16": "bf16 autocast"}.get(
        config.train.precision, "bf16 autocast where the device computes bf16 natively (CUDA GPUs, CPUs with "
        "AVX-512-BF16 or AMX), else float32 (train.precision=auto)")
    return {**sizes, "images": images, "pixels": "RGB float in [0, 1] (uint8 / 255), then (x - mean) / std",
            "mean": list(mean), "std": list(std), "training_views": d.image_size, "precision": precision}


def _architecture(config: Config) -> str:
    """How to build the network ``encoder.pt`` loads into, without byol."""
    m = config.model
    stem = (f" with the CIFAR stem: conv1 = Conv2d(3, {m.width}, kernel_size=3, stride=1, padding=1, bias=False), "
            "maxpool = Identity()") if m.cifar_stem else ""
    if m.width == 64:
        return f"torchvision.models.{m.backbone}(){stem}"
    return (f"torchvision.models.{m.backbone}'s ResNet with stages of {m.width}, {2 * m.width}, {4 * m.width} and "
            f"{8 * m.width} channels instead of 64, 128, 256 and 512 (torchvision builds none: "
            f"byol.resnet({m.backbone!r}, cifar_stem={m.cifar_stem}, width={m.width}), or encoder_torchscript.pt)"
            + (f",{stem}" if stem else ""))


_EXPORT_FILES = (*EXPORT_NAMES.values(), "export.json")  # export.json names the other three


def _check_export_folder(out_dir: Path, source: Union[str, Path]) -> None:
    """Refuse, before the work, a folder whose files an export would replace unless an earlier export
    wrote them (its export.json beside them says so): a run directory's config.yaml, or a user's own."""
    own = f"export into a folder of its own, such as {out_dir / 'export'}"
    if (out_dir / "checkpoints").is_dir():  # its config.yaml is what --resume reads
        raise OutputError(f"{out_dir} is a run directory (it holds checkpoints/); {own}")
    for name in _EXPORT_FILES:
        check_writable(out_dir / name, source=source, replace_models=True)  # an earlier export's: checked below
    held = [name for name in _EXPORT_FILES if (out_dir / name).exists()]
    if held and not is_an_export(out_dir / "export.json"):
        raise OutputError(f"{out_dir} holds {held[0]}, which this would replace, and no byol export wrote it "
                          f"(no export.json of one is beside it); {own}")


def _script(net: torch.nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script(net)``, first dropping any entry of TorchScript's table of builtin functions that
    bears the id() of an attribute, of ``net`` or of any of its submodules, that is not callable."""
    # The table is keyed by id() and keeps the ids of functions torch has since freed (torch.library frees
    # an op's function when it defines another overload of it, or removes a library's ops). An attribute
    # given such a function's memory (a Conv2d's _reversed_padding_repeated_twice, say) was taken for that
    # builtin: 'builtin cannot be used as a value', at random (CI). Every builtin is callable, so an entry
    # bearing the id of a live object that is not callable is a stale one. (Globals and closure values that
    # scripted code reads are looked up the same way; the exported ResNet reads none.)
    table = getattr(torch.jit._builtins, "_get_builtin_table", dict)()  # (private: a torch without it drops none)
    for module in net.modules():
        for value in vars(module).values():
            if not callable(value):
                table.pop(id(value), None)
    with warnings.catch_warnings():  # TorchScript is what was asked for; torch >= 2.10 calls it deprecated
        warnings.filterwarnings("ignore", message=".*torch.jit.script. is deprecated", category=FutureWarning)
        return torch.jit.script(net)


@usual_torch_defaults()
def export(path: Union[str, Path], out_dir: Union[str, Path]) -> dict:
    """Write the online encoder as a torchvision state_dict (``encoder.pt``) and TorchScript, with
    ``export.json`` (what to feed it; the files by their names in ``out_dir``; the checkpoint's
    training ``step`` and ``epoch``, which ``byol eval`` of ``encoder.pt`` reports) and the run's config.
    Returns export.json's contents, the three files it names as paths under ``out_dir``. An earlier export's
    files there are replaced; a run directory, or a folder holding such a file that no export wrote, is refused.
    Under torchrun rank 0 writes them, and no process waits for another: call it on rank 0 alone or on every
    rank (where another rank reads the files next, it waits for rank 0 first: ``torch.distributed.barrier()``)."""
    if isinstance(out_dir, str) and not out_dir:  # Path("") is ".", the folder the process runs in (as --out "")
        raise OutputError("out_dir is empty; give the folder to export into")
    path_argument(path, "path", CHECKPOINT_PATH)
    out_dir = path_argument(out_dir, "out_dir", "the folder to export into")
    _check_export_folder(out_dir, path)
    net, config, origin = load_encoder_with_origin(path, None, random_init=False, for_export=True)
    with torch.random.fork_rng(devices=[]):  # the same encoder.pt, byte for byte, of the same checkpoint
        torch.manual_seed(0)  # (its classifier is a fresh one, untrained: only its shape matters)
        full = resnet(config.model.backbone, cifar_stem=config.model.cifar_stem, width=config.model.width)
    state = dict(net.state_dict())
    state.update({k: v for k, v in full.state_dict().items() if k.startswith("fc.")})
    scripted = _script(net.eval())
    view1, _ = views_of(config)
    # export.json names the files beside it, so that the folder can be moved or copied whole.
    inputs = _eval_input(config, view1.mean, view1.std)
    info = {**EXPORT_NAMES, "backbone": config.model.backbone, "cifar_stem": config.model.cifar_stem,
            "width": config.model.width, "architecture": _architecture(config), "step": origin["step"],
            "epoch": origin["epoch"], "input": inputs,
            "output": {"features": feature_dim(net, inputs["image_size"]),
                       "layer": "the flattened global average pool (avgpool); fc is not part of the encoder "
                                "(encoder_torchscript.pt ends without it; in encoder.pt it is a fresh, untrained one)"}}
    encoder_bytes = _bytes(lambda f: torch.save(state, f))
    info["state_dict_sha256"] = hashlib.sha256(encoder_bytes).hexdigest()  # eval's step is this file's only
    files = {out_dir / info["state_dict"]: encoder_bytes,
             out_dir / info["torchscript"]: scripted.save_to_buffer(),
             out_dir / info["config"]: config_text(config).encode(),
             out_dir / "export.json": (json.dumps(info, indent=2) + "\n").encode()}
    made = topmost_missing(out_dir.absolute())
    try:
        with writing(out_dir):
            if dist.rank() == 0:  # under torchrun, once (every process wrote every file)
                out_dir.mkdir(parents=True, exist_ok=True)
                write_files_atomically(files)  # in memory first: torch's own writer aborts the process on a full disk
    except BaseException:  # the folders made for it go too (a user test: an empty one was left on a full disk)
        if made is not None:
            remove_empty_folders(out_dir.absolute(), made)
        raise
    return {**info, **{key: str(out_dir / info[key]) for key in EXPORT_NAMES}}  # config too (it was "config.yaml")
