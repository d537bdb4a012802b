"""Decoding one image file, in any format Pillow opens, to a square RGB uint8 tensor."""

import errno
import os
import stat
import warnings
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageOps

_NOT_PICTURES = {"BUFR", "GRIB", "HDF5", "MPEG", "WMF"}  # Pillow stubs or no pictures at all
# Formats of 16 bits at most whose gray Pillow opens as 32-bit "I": PGM always, PNG before Pillow 10.3.
# Their values are 0..65535 whatever the image's own maximum (a dark one's may be under 256).
_SIXTEEN_BIT_AS_I = {"PNG", "PPM"}


def image_extensions() -> frozenset[str]:
    """Lower-case file extensions of the formats Pillow can open, such as ``.jpg``, ``.png``, ``.webp``."""
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN and fmt not in _NOT_PICTURES)


def reason(path: str, error: Exception) -> str:
    """Why ``path`` could not be decoded, on one line."""
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return "empty file"
    if os.path.islink(path) and not os.path.exists(path):  # (a user test: "No such file" of a file ls lists)
        return f"broken symbolic link (to {os.readlink(path)}, which does not exist)"
    return " ".join(f"{type(error).__name__}: {error}".split())  # one line, no tabs


# errnos of a read that say the storage failed, not the file: a disk's read error, a network file system's
# stale handle or lost server, a device gone, the process out of open files; the names one platform lacks are left out
_STORAGE_ERRNOS = {getattr(errno, name) for name in (
    "EIO", "ESTALE", "ENOTCONN", "EHOSTDOWN", "EHOSTUNREACH", "ETIMEDOUT", "ENETDOWN", "ENETUNREACH", "ECONNRESET",
    "ECONNABORTED", "ENODEV", "ENXIO", "EREMOTEIO", "ENOMEDIUM", "ENOLINK", "EMFILE", "ENFILE") if hasattr(errno, name)}


def storage_failure(path: str, error: Exception) -> Optional[str]:
    """The sentence for ``error``, raised reading ``path``, where it says that the storage failed rather than the
    file (None where the file itself is bad, to be skipped): an errno of a failing disk or network file system, the
    file the scan listed gone with its folder (moved away or unmounted; one file removed from a folder that is still
    there, or a broken symbolic link, is the file's), or its folder no longer readable (permissions changed; one
    unreadable file in a readable folder is the file's).
    Skipped, every file of a dead storage would be listed as undecodable and the run would go on without them."""
    code = getattr(error, "errno", None) if isinstance(error, OSError) else None
    if code is None:
        return None
    folder = os.path.dirname(path)
    if not (code in _STORAGE_ERRNOS or (code == errno.ENOENT and not os.path.isdir(folder))
            or (code in (errno.EACCES, errno.EPERM) and not os.access(folder, os.R_OK | os.X_OK))):
        return None
    why = f"{os.strerror(code)}, {errno.errorcode.get(code, code)}"
    if code in (errno.EMFILE, errno.ENFILE):  # neither the file's nor the storage's: this process's, or the system's
        return (f"cannot read {path} ({why}): the process may open no more files, not the file, so this stops rather "
                "than skip the images as undecodable; raise the limit (ulimit -n) or lower data.workers, and a "
                "pretraining run goes on from its last checkpoint with --resume")
    return (f"cannot read {path} ({why}): the storage it is on failed (a disk, a network file system, the folder "
            "moved, unmounted or its permissions changed), not the file, so this stops rather than skip the images as "
            "undecodable; once they read again, a pretraining run goes on from its last checkpoint with --resume (a file "
            "that never reads again: move it out of the folder)")


def decode_image(path: str, size: int) -> torch.Tensor:
    """Decode one file to RGB uint8 (3, size, size): upright, shorter side ``size``, center square."""
    if not stat.S_ISREG(os.stat(path).st_mode):  # a named pipe would block its reader for ever
        raise OSError("not a regular file")
    with warnings.catch_warnings():
        # Up to Pillow's error, twice MAX_IMAGE_PIXELS (179 million pixels by default): its warning
        # at half that would skip a 100-megapixel camera's photos.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.draft(im.mode, (size, size))  # JPEG: decode at 1/2..1/8 scale when still >= size
            im.load()
            stored_as = im.format  # the transposed copy below has none
            try:
                im = ImageOps.exif_transpose(im)
            except Exception:  # malformed EXIF: keep the stored orientation rather than lose the image
                pass
            im = _to_rgb(im, stored_as)
            w, h = im.size
            side = min(w, h)
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
            pixels = np.array(im.resize((size, size), Image.Resampling.BILINEAR, box=box))
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def _to_rgb(im: Image.Image, stored_as: Optional[str] = None) -> Image.Image:
    """``im`` as RGB; ``stored_as`` is the file's format (``im.format``), which tells 16-bit gray opened as "I"."""
    if im.mode == "RGB" and "transparency" not in im.info:  # (a PNG's transparent colour: composited below)
        return im
    if im.mode.startswith("I;16") or (im.mode == "I" and stored_as in _SIXTEEN_BIT_AS_I):
        # 16-bit gray: scaled from 0..65535 (Pillow's conversion would clip at 255)
        gray = np.asarray(im).astype(np.int64)
        scaled = (gray * 255 + 32767) // 65535
        if isinstance(im.info.get("transparency"), int):  # a PNG's transparent gray value: black, as alpha's is
            scaled[gray == im.info["transparency"]] = 0
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")
    if im.mode in ("I", "F"):  # 32-bit integer or float gray (TIFF): the smallest usual range that holds it
        value = np.asarray(im, dtype=np.float64)
        finite = np.isfinite(value)
        top = value[finite].max(initial=0.0)
        value = np.where(finite, value, np.where(value > 0, top, 0.0))  # NaN and -inf black, +inf the top
        ranges = (1.0, 255.0) if im.mode == "F" else (255.0, 65535.0)
        scale = next((r for r in ranges if top <= r), top)  # beyond them: the image's own maximum
        return Image.fromarray(np.clip(np.round(value * (255 / scale)), 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", im.size)
        out.paste(rgba, mask=rgba.getchannel("A"))  # = RGB * alpha: composited onto black
        return out
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr
