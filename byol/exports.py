"""Taking the encoder to your own task: ``byol export`` writes its weights as a torchvision state_dict and
TorchScript, with what to feed it. A data set's embeddings (``byol embed``) are written by ``embeddings.py``."""

import hashlib
import json
import warnings
from pathlib import Path
from typing import Union

import torch

from .backbones import feature_dim
from .resnets import resnet
from .build import eval_crop, load_size, views_of
from .precision import usual_torch_defaults
from .errors import path_argument
from .files import bytes_written_by, remove_empty_folders, topmost_missing, write_files_atomically
from .config import Config, config_text
from .datasets import NATIVE_SIZE
from . import distributed as dist
# byol.exports' embed as well, as tests name it there
from .embeddings import embed
from .encoders import CHECKPOINT_PATH, load_encoder_with_origin
from .outputs import EXPORT_NAMES, OutputError, check_writable, is_an_export, writing

__all__ = ["embed", "export"]


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
        "AVX-512-BF16 or AMX), else float32 (train.precision=auto); float32 on a CPU where auto trains the network in "
        "float32 at data.image_size (a strided convolution over one pixel there)")
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
    encoder_bytes = bytes_written_by(lambda f: torch.save(state, f))
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
