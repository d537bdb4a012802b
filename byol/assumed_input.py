"""What eval and embed take an encoder's input to be where its run does not say: a bare state_dict's (its
normalization, and a folder's image size), and a folder's fed to an encoder trained on CIFAR or STL-10."""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .augment import view_presets
from .checkpoint import export_record
from .config import Config
from .datasets import NATIVE_SIZE
from .distributed import note


def folder_at_native_size(config: Config, trained_on: str, given: list[str]) -> None:
    """An encoder trained on CIFAR or STL-10, evaluated or embedded on a folder: each image's center
    square resized to the data set's own size (32, 96), whole, as that data set is fed; a size given is
    taken, the square whole at ``data.image_size`` where no ``data.load_size`` is. (A user test: a
    folder's default for the run's 24-pixel views, the center 24 of 27, gave an image features 0.907
    cosine (median) from its CIFAR twin's, 0.984 at 32; export.json said 32.)"""
    d, side = config.data, NATIVE_SIZE[trained_on]
    if "data.image_size" not in given:
        d.image_size = side
    if "data.load_size" not in given:
        d.load_size = d.image_size
    if "data.image_size" not in given and "data.load_size" not in given:
        note(f"the encoder was trained on {trained_on}, which eval and embed feed whole at {side}x{side}: this "
             f"folder's images are fed alike, each one's center square resized to {side}x{side} "
             "(--data.image_size and --data.load_size give another size)")


@dataclass(frozen=True)
class ExportSays:
    """What the ``export.json`` beside a bare state_dict says of that file, read once for all that asks (its preset,
    the note's reason, eval's step): ``record``, export.json's, where it names the file and does not record another
    file's SHA-256, else empty; ``changed``, where it names the file but records another SHA-256: the file was
    replaced since byol export wrote it (fine-tuned, say), so nothing export.json says is this file's."""
    record: dict = field(default_factory=dict)
    changed: bool = False


def export_says(path: Path) -> ExportSays:
    """What the ``export.json`` beside the state_dict at ``path`` says of it (:class:`ExportSays`). The file is
    hashed only where export.json names it: a large one takes a while."""
    info = export_record(path.parent / "export.json") or {}
    name = info.get("state_dict")
    if not (isinstance(name, str) and Path(name).name == path.name):  # (exports before 1 December 2026 gave paths)
        return ExportSays()
    digest = info.get("state_dict_sha256")  # (an export.json before it said none)
    if digest is not None and _sha256(path) != digest:  # byol export hashes the bytes it writes to the file
        return ExportSays(changed=True)
    return ExportSays(info)


def _sha256(path: Path) -> Optional[str]:
    """The SHA-256 of the file at ``path``, read in chunks (an encoder.pt may be hundreds of MB); None where it
    cannot be read (gone since it was loaded: not the file export.json names)."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


_IMAGENET_S = "ImageNet's mean and std, as torchvision's pretrained weights, byol.BYOL's default views, byol-pytorch " \
    "and lightly normalize"


def assumed_preset(said: ExportSays) -> tuple[str, str]:
    """The ``augment.preset`` whose mean and std a bare state_dict with no config.yaml beside it is taken to have
    been trained with, and why: the one that the ``export.json`` beside it records for it (an export folder copied
    without its config.yaml); else ImageNet's, ``paper``, as every known source of one normalizes (only byol
    pretrain's cifar presets use CIFAR-10's, and their checkpoints and exports carry config.yaml), also where the
    file is not the one export.json records (another SHA-256); the config's default, ``cifar``, where that
    export.json records no preset's mean and std (or none: an older export's)."""
    if said.changed:
        return "paper", f"{_IMAGENET_S}; not export.json's: this file does not match the SHA-256 it records"
    if not said.record:
        return "paper", _IMAGENET_S
    given = said.record.get("input")
    for preset in ("paper", "cifar"):  # (none's mean and std are cifar's)
        view = view_presets(preset, 32)[0]
        if isinstance(given, dict) and all(_close(given.get(key), getattr(view, key)) for key in ("mean", "std")):
            return preset, "the mean and std export.json records"
    return Config().augment.preset, "byol pretrain's default: export.json records no preset's mean and std"


def exported_size(said: ExportSays, config: Config, given: list[str]) -> Optional[tuple[int, int]]:
    """The ``data.image_size`` and ``data.load_size`` that feed a folder's images to the exported encoder as the
    export.json beside it records eval and embed fed them, where neither is given: its ``load_size`` is the square
    each image is decoded at, its ``image_size`` what the encoder is fed, the center ``crop`` cut out of that square
    where one is (eval's crop is ``data.image_size`` where ``data.load_size`` is larger). None where it records no
    such pair (an export before 2 December 2026 recorded no load_size), or the data is not a folder."""
    sizes = said.record.get("input")
    if config.data.dataset != "folder" or not isinstance(sizes, dict) or \
            {"data.image_size", "data.load_size"} & set(given):
        return None
    size, load, crop = (sizes.get(key) for key in ("image_size", "load_size", "crop"))
    if type(size) is int and type(load) is int and 8 <= size <= load and crop == (size if load > size else None):
        return size, load
    return None


def folder_at_exported_size(config: Config, said: ExportSays, given: list[str]) -> None:
    """A bare state_dict evaluated or embedded on a folder: its images fed as its export.json records
    (:func:`exported_size`), not at the config's default size (CIFAR's 32), where neither size is given."""
    sizes = exported_size(said, config, given)
    if sizes is not None:
        config.data.image_size, config.data.load_size = sizes


def _close(values: object, expected: tuple) -> bool:
    """Whether ``values``, read from JSON, are the numbers ``expected`` (JSON writes a float's shortest repr)."""
    return isinstance(values, list) and len(values) == len(expected) and all(
        type(v) in (int, float) and abs(v - e) <= 1e-6 for v, e in zip(values, expected))


def note_assumed_input(path: Path, config: Config, given: list[str], said: ExportSays) -> None:
    """A bare state_dict that nothing (or export.json alone) says the training input of (a torchvision model's):
    the input size (a folder's; CIFAR and STL-10 are read at their own) and normalization assumed, unless given."""
    keys = ("data.image_size",) * (config.data.dataset == "folder") + ("augment.preset",)
    assumed = [k for k in keys if k not in given]
    if assumed:
        preset = config.augment.preset
        values = {"data.image_size": _size_said(config, exported_size(said, config, given)),
                  "augment.preset": f"augment.preset={preset} ({assumed_preset(said)[1]})"}
        exported = (path.parent / "export.json").is_file()  # an export folder copied without its config.yaml
        why = (", which byol export wrote beside export.json (it says what the encoder was trained on: copy it "
               "there too)" if exported else ", so nothing says what its encoder was trained on")
        other = ("--augment.preset=cifar for an encoder pretrained with byol's cifar presets, CIFAR-10's mean and std"
                 if preset == "paper" else "--augment.preset=paper for one normalized with ImageNet's mean and std")
        built = ("built as given, " if any(k.startswith("model.") for k in given) else "read off its keys as ") + \
            settings_said(config)  # (a review: a --model.width given was said to be what the keys say)
        note(f"{path} has no config.yaml beside it{why}: its input is taken to be "
             f"{', '.join(values[k] for k in assumed)}; give {' and '.join('--' + k for k in assumed)} if it was not"
             f"{f' ({other})' if 'augment.preset' in assumed else ''}; its network is {built}")


def _size_said(config: Config, exported: Optional[tuple[int, int]]) -> str:
    """A folder's input size assumed, as the note says it: the default's, or export.json's record."""
    if exported is None:
        return f"data.image_size={config.data.image_size} (the default)"
    size, load = exported
    if size == load:
        return f"data.image_size={size} (export.json's record: each image's center square resized to {size}x{size})"
    return (f"data.image_size={size} and data.load_size={load} (export.json's record: each image's center square "
            f"resized to {load}x{load}, its center {size}x{size} cut out)")


def settings_said(config: Config) -> str:
    """The ResNet settings of ``config``, as a note says them."""
    m = config.model
    return f"model.backbone={m.backbone}, model.cifar_stem={str(m.cifar_stem).lower()}, model.width={m.width}"
