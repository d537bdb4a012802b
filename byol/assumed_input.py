"""What eval and embed take an encoder's input to be where its run does not say: a bare state_dict's (its
normalization, and a folder's image size), and a folder's fed to an encoder trained on CIFAR or STL-10."""

from pathlib import Path

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


def assumed_preset(path: Path) -> tuple[str, str]:
    """The ``augment.preset`` whose mean and std a bare state_dict with no config.yaml beside it is taken to have
    been trained with, and why: the one that the ``export.json`` beside it records for it (an export folder copied
    without its config.yaml); else ImageNet's, ``paper``, as every known source of one normalizes (only byol
    pretrain's cifar presets use CIFAR-10's, and their checkpoints and exports carry config.yaml); the config's
    default, ``cifar``, where that export.json records no preset's mean and std (or none: an older export's)."""
    info = export_record(path.parent / "export.json") or {}
    name, given = info.get("state_dict"), info.get("input")
    if not (isinstance(name, str) and Path(name).name == path.name):  # (exports before 1 December 2026 gave paths)
        return "paper", ("ImageNet's mean and std, as torchvision's pretrained weights, byol.BYOL's default views, "
                         "byol-pytorch and lightly normalize")
    for preset in ("paper", "cifar"):  # (none's mean and std are cifar's)
        view = view_presets(preset, 32)[0]
        if isinstance(given, dict) and all(_close(given.get(key), getattr(view, key)) for key in ("mean", "std")):
            return preset, "the mean and std export.json records"
    return Config().augment.preset, "byol pretrain's default: export.json records no preset's mean and std"


def _close(values: object, expected: tuple) -> bool:
    """Whether ``values``, read from JSON, are the numbers ``expected`` (JSON writes a float's shortest repr)."""
    return isinstance(values, list) and len(values) == len(expected) and all(
        type(v) in (int, float) and abs(v - e) <= 1e-6 for v, e in zip(values, expected))


def note_assumed_input(path: Path, config: Config, given: list[str]) -> None:
    """A bare state_dict that nothing (or export.json alone) says the training input of (a torchvision model's):
    the input size (a folder's; CIFAR and STL-10 are read at their own) and normalization assumed, unless given."""
    keys = ("data.image_size",) * (config.data.dataset == "folder") + ("augment.preset",)
    assumed = [k for k in keys if k not in given]
    if assumed:
        preset = config.augment.preset
        values = {"data.image_size": f"data.image_size={config.data.image_size} (the default)",
                  "augment.preset": f"augment.preset={preset} ({assumed_preset(path)[1]})"}
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


def settings_said(config: Config) -> str:
    """The ResNet settings of ``config``, as a note says them."""
    m = config.model
    return f"model.backbone={m.backbone}, model.cifar_stem={str(m.cifar_stem).lower()}, model.width={m.width}"
