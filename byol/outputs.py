"""Where a command writes its results: refused before the work where the file cannot be written or
would replace what a run or an export wrote, and one sentence (:class:`OutputError`) where a write fails;
an evaluation's earlier result in its default file kept beside the new one.
"""

import itertools
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

from .checkpoint import export_record, is_torchscript, peek, saved_step
from .distributed import rank
from .error_lines import launch_rank
from .errors import ByolError
from .files import write_failed, write_failure, write_text_atomically, written_for
from .run_folder import RUN_FILES


# What `byol export` writes beside its export.json, which names them (byol.exports).
EXPORT_NAMES = {"state_dict": "encoder.pt", "torchscript": "encoder_torchscript.pt", "config": "config.yaml"}
# What ``byol embed --out NAME.npy`` writes beside it, by what each holds: NAME_labels.npy, ...
EMBED_SIDE_NAMES = {"labels": "_labels.npy", "class names": "_classes.txt", "file paths": "_paths.txt"}


class OutputError(ByolError):
    """An output that cannot be written (a read-only place, a folder where a file goes, ...)."""


@contextmanager
def writing(path: Union[str, Path]):
    """Turn an ``OSError`` while writing ``path`` into an :class:`OutputError` naming the file and why."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if not write_failed(e):
            raise
        where = written_for(getattr(e, "filename", None) or path)  # not the temporary beside it
        raise OutputError(f"cannot write {where}: {write_failure(e)}; choose another --out") from None


def check_writable(path: Union[str, Path], source: Union[str, Path, None] = None,
                   replace_models: bool = False, results: bool = False) -> None:
    """Fail before the work, not after it, where the file ``path`` cannot be written: a folder in
    its place, a file where a folder of its path goes, a file that cannot be opened for writing, or
    a place that takes no new files (probed with a temporary file in the nearest folder that
    exists; nothing is created for good), or the file ``source`` that the work reads; or where it would
    replace a run's file or a checkpoint, or, unless ``replace_models`` (export, which checks its folder itself),
    a model's weights or an export's files; or, for ``results`` (eval's JSON), an embed's embeddings.
    Only in the process that writes: rank 0 under torchrun (told by ``RANK``, as the
    process group may not exist yet)."""
    import errno
    import tempfile
    if launch_rank() != 0:
        return
    path = Path(path).absolute()
    if source is not None and path.is_file() and Path(source).is_file() and path.samefile(source):
        raise OutputError(f"{path} is the checkpoint being read; choose another --out")
    if path.is_file():
        _refuse_a_runs_file(path, replace_models)
        if results and (held := _embeddings_in(path)):  # a user test lost its embeddings to `eval --out emb.npy`
            raise OutputError(f"{path} {held}, which this evaluation's JSON would replace; choose another --out")
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


def write_results(result: dict, out: Optional[str], default: Path) -> Path:
    """Write the result to ``out``, else to ``default``, where an earlier result (another run of
    the same evaluation, perhaps with other settings) is kept as NAME.1.json, NAME.2.json, ...
    (rank 0 writes it under torchrun)."""
    path = Path(out) if out else default
    if rank() == 0:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            if not out and path.is_file():
                earlier = keep_earlier(path)
                print(f"note: the earlier result in {path.name} is kept as {earlier.name}", file=sys.stderr)
            text = json.dumps(result, indent=2) + "\n"
            # --out /dev/stdout, a link, a pipe: written through, not replaced. Not the default file beside the
            # checkpoint: a link there (a run folder from elsewhere) would have it written outside (a user test).
            if out and (path.is_symlink() or (path.exists() and not path.is_file())):
                path.write_text(text)
            else:
                write_text_atomically(path, text)  # a full disk leaves the old file or the new, never an empty one
    return path


def _kept_names(path: Path) -> Iterator[Path]:
    """NAME.1.json, NAME.2.json, ...: where an earlier result of ``path`` is kept."""
    return (path.with_suffix(f".{n}.json") for n in itertools.count(1))


def keep_earlier(path: Path) -> Path:
    """Move ``path`` to the first free NAME.N.json. A hard link claims the name atomically: two
    evaluations that end together cannot both take NAME.1.json (a rename would replace it)."""
    for earlier in _kept_names(path):
        try:
            os.link(path, earlier)
        except FileExistsError:
            continue
        except OSError:  # a file system without hard links: a rename, not race-free
            if earlier.exists():
                continue
            path.rename(earlier)
            return earlier
        path.unlink()
        return earlier


def check_kept_name_writable(path: Path) -> None:
    """Before an evaluation: where ``path`` exists, keeping it takes a new file beside it."""
    if path.is_file():  # the first free name is a new file: the probe checks that its folder takes one
        check_writable(next(p for p in _kept_names(path) if not p.exists()))


def _refuse_a_runs_file(path: Path, replace_models: bool = False) -> None:
    """Refuse to replace what a pretraining run wrote: a training checkpoint, wherever it lies, or a
    run folder's own files (its config, logs and plots, beside its ``checkpoints/``); and, unless
    ``replace_models``, a model's weights or a TorchScript module (:func:`_model_in`)."""
    if path.name in RUN_FILES and (path.parent / "checkpoints").is_dir():
        raise OutputError(f"{path} is a run's {path.name}, which this would replace; choose another --out")
    if saved_step(path) is not None:  # (None at once for a file torch.save did not write: no zip to map)
        raise OutputError(f"{path} is a training checkpoint, which this would replace; choose another --out")
    if not replace_models and _written_by_export(path):  # a user test: `eval --out EXPORT/export.json`
        raise OutputError(f"{path} is an export's {path.name}, which this would replace; choose another --out")
    held = None if replace_models else _model_in(path)
    if held is not None:
        raise OutputError(f"{path} holds {held}, which this would replace; choose another --out")


def _model_in(path: Path) -> Optional[str]:
    """What ``path`` holds where torch wrote it: a TorchScript module, or a ``state_dict`` (an exported
    encoder.pt, a user's own weights) or anything else ``torch.save`` wrote; None for other files and for
    an earlier ``embed``'s ``.pt``, which a new one may replace (a user test lost an exported encoder to
    ``byol embed --out DIR/encoder.pt``). torch.save's legacy format (before torch 1.6) is not told apart."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    if is_torchscript(names):
        return "a TorchScript module"
    if not any(n.endswith("/data.pkl") for n in names):
        return None  # a zip of something else
    try:
        saved = peek(path)
    except Exception:  # a whole pickled model (not loadable as weights alone), or torn
        return "what torch.save wrote"
    if isinstance(saved, dict) and "embeddings" in saved:
        return None
    return "a model's weights (written by torch.save)" if isinstance(saved, dict) else "what torch.save wrote"


def _written_by_export(path: Path) -> bool:
    """Whether ``path`` is the export.json or config.yaml of a ``byol export`` (its export.json says so)."""
    return path.name in ("export.json", EXPORT_NAMES["config"]) and is_an_export(path.parent / "export.json")


def is_an_export(info: Path) -> bool:
    """Whether ``info`` is an export.json that byol wrote: one naming the files beside it as they are named
    now, or as exports before 1 December 2026 named them (by their paths, and config.yaml not at all)."""
    written = export_record(info)
    if written is None or written.get("config", EXPORT_NAMES["config"]) != EXPORT_NAMES["config"]:
        return False
    return "backbone" in written and all(isinstance(written.get(key), str) and Path(written[key]).name == name
                                         for key, name in EXPORT_NAMES.items() if key != "config")


def _embeddings_in(path: Path) -> Optional[str]:
    """What ``path`` holds, said, where it is a NumPy file (an embed's ``.npy``, its labels) or an earlier embed's
    ``.pt`` ("holds embeddings"), or a side file of an embed's ``NAME.npy`` beside it (its class names, its file
    paths); else None."""
    for what, suffix in EMBED_SIDE_NAMES.items():
        if path.name.endswith(suffix) and path.name != suffix:
            embeddings = path.with_name(path.name[:-len(suffix)] + ".npy")
            if embeddings.is_file() and _embeddings_in(embeddings):
                return f"holds the {what} of the embeddings in {embeddings.name}"
    try:
        with open(path, "rb") as f:
            if f.read(6) == b"\x93NUMPY":
                return "holds embeddings"
    except OSError:
        return None
    try:
        saved = peek(path)
    except Exception:  # not what torch.save wrote
        return None
    return "holds embeddings" if isinstance(saved, dict) and "embeddings" in saved else None
