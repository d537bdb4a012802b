"""A run's folder as one start of pretraining finds it, and leaves it should that start fail."""

import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Optional, Union

import yaml

from .checkpoint import CheckpointError, saved_config
from .config import (CONFIG_HEADER, Config, ConfigError, changed_settings, config_from_dict, config_text,
                     save_config)
from .config_files import safe_yaml
from .files import (fcntl, naming, remove_empty_folders, remove_torn_temporaries, topmost_missing, write_failure,
                    write_text_atomically)
from .metrics import PLOTS, MetricsLog, warning_step
from .run_lock import LOCK, hold_lock, refuse_if_held

# The files a start rewrites, or removes, before its first step.
_KEPT = ("config.yaml", "metrics.jsonl", "warnings.txt", "skipped_files.txt")
RUN_FILES = (*_KEPT, *PLOTS, LOCK)  # a run's own files: eval, embed and export replace none of them


class RunFolder:
    """The folder of a run (``train.out_dir``), opened by the process that writes it (rank 0).

    Opening takes the folder's lock (``.byol.lock``: no other start of a run, new or resumed, on this
    machine or another that shares file locks, may write there until :meth:`release`), checks that
    the run can start there (a new run in a folder without a checkpoint, a resumed one in a folder
    with one), creates the folder and removes the half-written temporary files a killed run left.
    Until :attr:`started` is set (the first step has finished),
    :meth:`undo` puts the folder back as this start found it: a start that fails on its data, its
    checkpoint, a batch too big for memory or compiling leaves no run folder behind, and a resumed
    run's ``config.yaml``, ``metrics.jsonl``, ``warnings.txt`` and TensorBoard events as they were.
    """

    def __init__(self, path: Path, resume: bool):
        self.path = Path(path)
        self.checkpoint = last_checkpoint(self.path)
        self.created = topmost_missing(self.path)  # the topmost folder made here
        try:
            refuse_start(self.path, resume)  # before anything is made: a start refused here writes nothing
        except (ConfigError, CheckpointError):
            refuse_if_held(self.path)  # a run going on there is what to say first (a user test: a start
            raise  # told to pass --resume, which was then refused as the run was live)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.path):  # a new file of its own (a fixed name went through a link)
                pass
        except OSError as e:  # a resume in another folder would be another run: its copy is this one
            fix = ("copy the run's folder where it can be written and resume the copy with --train.out_dir=COPY"
                   if resume else "choose another train.out_dir")
            raise ConfigError(f"cannot write to the output directory {self.path} ({write_failure(e)}); {fix}") from None
        self._lock_made = not (self.path / LOCK).exists()
        self._lock = hold_lock(self.path)  # another start's folder, if refused: nothing is removed
        try:
            refuse_start(self.path, resume)  # again under the lock: a start that got in first may have written a run
            # A run killed while writing left half a file beside the whole one, as large as a checkpoint.
            remove_torn_temporaries(self.path, *_KEPT, *PLOTS, "config_until_step*.yaml")
            remove_torn_temporaries(self.checkpoint.parent, "*.pt")
            kept = (path.name for path in _configs_kept(self.path).values())
            self._before = {name: _read(self.path / name) for name in (*_KEPT, *kept)}
            self._events_before = _listing(self.path / "tensorboard")
            self._folders_before = {f for f in ("tensorboard", "checkpoints") if (self.path / f).is_dir()}
        except BaseException:
            self._leave()
            raise
        self._log: Optional[MetricsLog] = None
        self.started = False

    def release(self) -> None:
        """Let the next start in: the lock goes (its file stays, once a step has finished), also while a
        process forked since (a decoding process a failed start's traceback keeps alive) holds the file open."""
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _leave(self) -> None:
        """A start that did not begin: its lock file and the folders it made removed, the lock released."""
        if self._lock_made:
            _quietly((self.path / LOCK).unlink, missing_ok=True)
        self.release()
        if self.created is not None:
            remove_empty_folders(self.path, self.created)

    def metrics_log(self, resume_step: Optional[int]) -> MetricsLog:
        """The run's :class:`~byol.metrics.MetricsLog` (see there for ``resume_step``); ``warnings.txt``
        is trimmed the same way: a resumed run keeps the warnings of the steps up to its checkpoint (the
        later ones are trained, and warned about, again), a new run starts without. A new run starts
        without ``skipped_files.txt`` too; a resumed one keeps it (pretrain reads it back). An earlier
        start's TensorBoard events stay, said in a note: TensorBoard shows the settings and status it read
        first, theirs (a review: a finished run's success stood for a new run in its folder)."""
        if resume_step is None and any("tfevents" in name for name in self._events_before):
            say(f"note: {self.path / 'tensorboard'} holds an earlier start's events, whose settings (and status) "
                "TensorBoard's HParams tab shows for this run, as it keeps the first it reads; remove the folder's "
                "tensorboard/ before a new run there to see this one's")
        self._log = MetricsLog(self.path, resume_step=resume_step)
        if resume_step is None and self._before["skipped_files.txt"] is not None:
            (self.path / "skipped_files.txt").unlink()
        warnings_path = self.path / "warnings.txt"
        text = self._before["warnings.txt"]  # as this start found it (read by __init__)
        if text is not None:
            kept = [line for line in text.splitlines(keepends=True)
                    if resume_step is not None and warning_step(line) <= resume_step]
            if kept:
                write_text_atomically(warnings_path, "".join(kept), errors="surrogateescape")
            else:
                warnings_path.unlink()
        return self._log

    def save_config(self, config: Config, resume_step: Optional[int]) -> None:
        """``config.yaml``: this start's settings. Where a start resumes at step S with settings that
        differ from those that ran step S (but for a moved folder's ``train.out_dir``), those are kept
        as ``config_until_stepS.yaml``. Such files of steps after S (a resume from an earlier
        checkpoint, whose later steps are trained again) go, as do all of them for a new run."""
        kept = _configs_kept(self.path)
        later = {step: path for step, path in kept.items() if resume_step is None or step > resume_step}
        ran = _read(later[min(later)]) if later and resume_step is not None else self._before["config.yaml"]
        if resume_step is not None and _no_settings(ran):  # config.yaml gone or emptied: the checkpoint's
            ran = _checkpoint_config_text(self.checkpoint)
        for path in later.values():
            path.unlink()
        if resume_step is not None and ran is not None and resume_step not in kept and _differ(ran, config):
            write_text_atomically(self.path / f"config_until_step{resume_step}.yaml", ran, errors="surrogateescape")
        save_config(config, self.path / "config.yaml")

    def undo(self) -> None:
        """Put back what this start wrote before its first step (best effort: it runs while
        another error is on its way out, which it must not hide). The metrics log is closed either
        way: TensorBoard's writer thread would run on in the caller's process (a notebook's)."""
        if self._log is not None:
            _quietly(self._log.close)  # its event file, open until now
        if self.started:
            return
        events = self.path / "tensorboard"
        for name in _listing(events) - self._events_before:
            _quietly((events / name).unlink, missing_ok=True)
        for path in _configs_kept(self.path).values():  # one this start wrote: not there before
            self._before.setdefault(path.name, None)
        for name, text in self._before.items():
            if text is None:
                _quietly((self.path / name).unlink, missing_ok=True)
            elif _read(self.path / name) != text:
                _quietly(write_text_atomically, self.path / name, text, errors="surrogateescape")
        for name in {"tensorboard", "checkpoints"} - self._folders_before:
            _quietly((self.path / name).rmdir)  # when empty
        self._leave()

    def warn(self, message: str, step: int, progress=None) -> None:
        """Append ``message`` to ``warnings.txt`` as ``step N: message`` and say that line on stderr, on a
        line of its own: ``progress``, the run's tqdm bar, is cleared for it and drawn again below it."""
        line = f"step {step}: {message}"
        say(f"warning: {line}", progress)
        with naming(self.path / "warnings.txt"), open(self.path / "warnings.txt", "a") as f:
            f.write(f"{line}\n")


def refuse_start(path: Path, resume: bool) -> None:
    """A start of the run in ``path`` refused where its folder does not take it (:class:`RunFolder`, and ``byol
    pretrain --print-config``): a resumed run needs a checkpoint; a new one a folder without one, and without files
    it would replace that no byol run wrote."""
    linked = [path / name for name in (*_KEPT, LOCK) if (path / name).is_symlink()]
    if linked:  # (a user test: a run folder from elsewhere, its links leading out, emptied or made files there)
        raise ConfigError(f"{linked[0]} is a symbolic link (to {os.readlink(linked[0])}), which the run would "
                          "write through, into the file it points to; remove it, or choose another train.out_dir")
    for name in ("checkpoints", "tensorboard"):  # (a user test: a traceback once the first epoch had run)
        if (path / name).exists() and not (path / name).is_dir():
            raise ConfigError(f"{path / name} is a file where the run keeps its {name}/ folder; move it "
                              "away, or choose another train.out_dir")
    if resume:
        refuse_resume_without_checkpoint(path)
    kept, epochs, copy = _kept_checkpoints(path)
    if not resume and kept:
        shown = last_checkpoint(path) if last_checkpoint(path) in kept else (epochs or kept)[-1]
        raise ConfigError(f"{path} already holds a run ({shown.relative_to(path)}); pass --resume "
                          "to continue it (from checkpoints/last.pt) or choose another train.out_dir" + copy)
    if not resume:
        _check_replaceable(path)


def _kept_checkpoints(path: Path) -> tuple[list[Path], list[Path], str]:
    """The ``.pt`` files in ``path``'s ``checkpoints/``, its ``epoch_N.pt`` of them by N, and where it has no
    ``last.pt``, how to resume from the newest of those ("" where it has none)."""
    folder = last_checkpoint(path).parent
    kept = sorted(p for p in folder.glob("*.pt") if p.is_file()) if folder.is_dir() else []
    # kept epochs of a run whose last.pt is gone: resumed from once the newest is copied to last.pt
    # (not an earlier start's epoch kept apart as epoch_N_stepS.pt, of a step before its epoch_N.pt,
    # nor another .pt put there)
    epochs = sorted((p for p in kept if re.fullmatch(r"epoch_[0-9]+\.pt", p.name, re.ASCII)),
                    key=lambda p: int(p.stem.removeprefix("epoch_")))
    copy = (f"; to resume from {epochs[-1].relative_to(path)}, copy it to checkpoints/last.pt first"
            if epochs and not last_checkpoint(path).is_file() else "")
    return kept, epochs, copy


def refuse_resume_without_checkpoint(path: Path) -> None:
    """A resume of the run in ``path`` needs its ``checkpoints/last.pt``: a CheckpointError saying so where it
    has none. (Every torchrun process checks it, rank 0 in :class:`RunFolder`: the others said only that
    the file did not exist, a second sentence after rank 0's, a user test.)"""
    if not last_checkpoint(path).is_file():
        copy = _kept_checkpoints(path)[2]
        raise CheckpointError(f"cannot resume: no checkpoint at {last_checkpoint(path)}" +
                              (copy or "; start without --resume"))


def last_checkpoint(folder) -> Path:
    """Where a run folder keeps the checkpoint that ``--resume`` goes on from."""
    return Path(folder) / "checkpoints" / "last.pt"


def resumes(resume: Union[bool, str], out_dir: str) -> bool:
    """Whether a start continues the run in ``out_dir``: ``resume``, or for ``"auto"`` (a job script's one command
    for its first start and its requeues) whether the folder holds a checkpoint to continue from."""
    if resume == "auto":  # (the resume says where it goes on from; a new start, :func:`note_new_start`)
        return last_checkpoint(Path(out_dir).expanduser()).is_file()
    if not isinstance(resume, bool):
        raise ValueError(f"resume must be True, False or \"auto\", got {resume!r}")
    return resume


def note_new_start(folder: "RunFolder") -> None:
    """For ``--resume=auto`` that starts a new run, which way it went, for a job's log (a user test: it said
    neither): once the folder has taken the start (a review: said before a refusal, of a folder that keeps
    epochs without last.pt, say, it contradicted it), on rank 0, which alone has the folder."""
    print(f"note: --resume=auto: no {folder.checkpoint}, so a new run starts there", file=sys.stderr)


def _configs_kept(folder: Path) -> dict[int, Path]:
    """The ``config_until_stepS.yaml`` files in ``folder``, by S."""
    kept = {}
    for path in folder.glob("config_until_step*.yaml"):
        match = re.fullmatch(r"config_until_step(\d+)\.yaml", path.name)
        if match:
            kept[int(match.group(1))] = path
    return kept


def _no_settings(text: Optional[str]) -> bool:
    """Whether a config.yaml's ``text`` holds no settings (none, empty, comments alone), as a resume reads
    it (:func:`~byol.resume_settings.resume_config` then takes the checkpoint's)."""
    try:
        return not safe_yaml(text or "")
    except yaml.YAMLError:
        return False


def _checkpoint_config_text(path: Path) -> Optional[str]:
    """The settings the checkpoint ``path`` holds, as ``config.yaml`` would hold them; None where they
    do not load."""
    try:
        return config_text(config_from_dict(saved_config(path)))
    except (ConfigError, AttributeError, TypeError, KeyError):
        return None


def _differ(saved: str, config: Config) -> bool:
    """Whether a saved config.yaml's settings, read as a run reads them, differ from ``config``'s, but
    for ``train.out_dir`` (a moved run's folder)."""
    try:
        before = config_from_dict(safe_yaml(saved)).to_dict()
    except (yaml.YAMLError, ConfigError, AttributeError, TypeError):
        return True
    return any(not c.startswith("train.out_dir ") for c in changed_settings(before, config.to_dict()))


def say(line: str, progress=None) -> None:
    """``line`` on stderr, on a line of its own: ``progress``, a run's tqdm bar, is cleared for it and
    drawn again below it."""
    if progress is not None:
        progress.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr)


def _check_replaceable(path: Path) -> None:
    """Refuse to start a new run over files that no earlier start of a run wrote: a new run replaces
    the ``config.yaml``, ``metrics.jsonl`` and ``warnings.txt`` of a run that stopped before its first
    checkpoint, but not a config written by hand (the ``--config`` file itself, say) or another tool's log."""
    if (path / "export.json").is_file():  # byol export's folder: its config.yaml says what encoder.pt is
        raise ConfigError(f"{path} holds an exported encoder (export.json), whose config.yaml a new run would "
                          "replace; choose another train.out_dir")
    config = _read(path / "config.yaml")
    if config is not None and _written_by_byol(config):
        return  # an earlier start's files
    found = [name for name in _KEPT if (path / name).exists()]
    if not found:
        return
    why = ("is a folder" if (path / found[0]).is_dir() else  # (a user test: "its first line is not byol's")
           "was not written by byol (its first line is not byol's)" if found[0] == "config.yaml" else
           "has no config.yaml of byol's beside it")
    raise ConfigError(f"{path / found[0]} {why}, and a new run writes its own {found[0]} there; "
                      "move it, or choose another train.out_dir")


def _written_by_byol(text: str) -> bool:
    """Whether a ``config.yaml`` is one byol wrote: it starts as byol's do, or (written before they
    did) it is a whole config: every section, only known settings, and every setting of the first
    byol's (:data:`_FIRST_SETTINGS`), where one written by hand gives a few."""
    if text.startswith(CONFIG_HEADER.split(":")[0]):
        return True
    try:
        data = safe_yaml(text)
    except yaml.YAMLError:
        return False
    full = Config().to_dict()
    if not (isinstance(data, dict) and data.keys() == full.keys() and all(
            isinstance(data[k], dict) and data[k].keys() <= full[k].keys() for k in full)):
        return False
    return all(set(names.split()) <= data[section].keys() for section, names in _FIRST_SETTINGS.items())


# The settings of the first byol's config.yaml. An older byol's lacks those added after it (such as
# optim.lars_clip), and more are added all the time: a count of the missing ones (at most 5, as it was)
# came to refuse the runs of 22 November's byol as not byol's once the 6th and 7th were added.
_FIRST_SETTINGS = {
    "data": "dataset root download train_split image_size load_size workers on_device limit",
    "model": "backbone cifar_stem width projection_size projection_hidden_size use_predictor concat_views",
    "augment": "preset crop_min_scale",
    "optim": "name lr weight_decay momentum trust_coefficient warmup_epochs",
    "train": "epochs batch_size max_steps tau_base seed device precision compile out_dir log_every checkpoint_every "
             "knn_every knn_k knn_limit progress",
}


def read_warnings(path: Path) -> list[str]:
    """The lines of the run's ``warnings.txt`` in the folder ``path`` (none without one): every warning
    of the run, those of a resumed run's earlier starts too."""
    text = _read(Path(path) / "warnings.txt")
    return text.splitlines() if text is not None else []


def warnings_summary(lines: list[str]) -> str:
    """What the ``warnings.txt`` ``lines`` warn of, in short: ``representation collapse at step 10``, or
    ``... at steps 10, 60`` (of an older byol's lines too, which said ``at step N`` twice)."""
    steps: dict[str, list[str]] = {}
    for line in lines:
        step = warning_step(line)
        message = line.partition(": ")[2] if step > -math.inf else line
        what = message.split(":")[0].partition(" at step ")[0]  # the warning's name: "representation collapse"
        steps.setdefault(what, [])
        if step > -math.inf:
            steps[what].append(str(step))
    parts = []
    for what, at in steps.items():
        shown = ", ".join(at[:3]) + (", ..." if len(at) > 3 else "")
        parts.append(what + (f" at step{'s' if len(at) > 1 else ''} {shown}" if at else ""))
    return "; ".join(parts)


def _quietly(action, *args, **kwargs) -> None:
    try:
        action(*args, **kwargs)
    except OSError:  # a full disk, say: the rest is still undone, and the error that failed the start told
        pass


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:  # not there (or unreadable: then it is left as it is)
        return None


def _listing(folder: Path) -> set[str]:
    return set(os.listdir(folder)) if folder.is_dir() else set()
