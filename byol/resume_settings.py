"""The config a resumed run continues with: the run's own ``config.yaml``, then the settings given (else the
settings its last checkpoint holds), and a ``--config RUN/config.yaml`` that names another run's folder.

Named ``byol.resume``'s too, where the command line and the package import them (``resume.py`` restores
the checkpoint).
"""

import os
import sys
from pathlib import Path
from typing import Optional, Union

from .checkpoint import load_checkpoint
from .config import (Config, ConfigError, another_version, apply_overrides, changed_settings, config_from_dict,
                     load_config, names_a_setting_given, override_list, starts_as_byol_config, validate)
from .config_files import override_key, read_preset


def resume_config(preset: Union[str, os.PathLike, None], overrides: Optional[list[str]] = None,
                  explicit: bool = False, located: Optional[Config] = None) -> Config:
    """The config to continue a run with: the run's saved ``config.yaml``, then ``overrides``.

    ``preset`` and ``overrides`` first resolve as :func:`load_config` does, to find the run (its
    ``train.out_dir``, kept even if the run folder was moved); a run whose ``config.yaml`` is gone
    resumes with the settings its last checkpoint holds (said in a note), and one without either
    with that resolution. An ``explicit`` preset's settings that differ from the run's
    are named in a note: they do not change it (``--section.key=value`` does). ``located``: that resolution,
    where the caller has made it (a pipe, ``--config /dev/stdin``, is read once).
    """
    located = load_config(preset, overrides) if located is None else located
    if explicit:
        refuse_another_runs_config(preset, overrides, located)
    saved = Path(located.train.out_dir).expanduser() / "config.yaml"
    if not saved.is_file():
        return _checkpoint_config(saved, located, overrides)
    sections = read_preset(str(saved))
    if not sections:  # (a user test: the error's advice, --config, only locates the run)
        return _checkpoint_config(saved, located, overrides, "is empty")
    try:
        config = load_config(str(saved), overrides)
    except ConfigError as e:
        raise _another_version(saved, e) from None
    train = sections.get("train")
    own = train.get("out_dir") if isinstance(train, dict) else None
    # Where the run is now (its folder may have moved), in the run's own spelling where that names the
    # same folder (not runs/x/ or a path relative to another folder, then saved as a changed setting).
    config.train.out_dir = str(own) if own is not None and _same_folder(str(own), located.train.out_dir) \
        else located.train.out_dir
    located.train.out_dir = config.train.out_dir  # (the note below compares the rest)
    ignored = changed_settings(config.to_dict(), located.to_dict()) if explicit else []
    if ignored:
        print(f"note: --resume continues with the run's own {saved}; these settings of {preset} differ from it "
              f"and are not used (the run's -> {preset}'s): {', '.join(ignored)}; give them as --section.key=value "
              "to change the run", file=sys.stderr)
    return config


def _another_runs_config(preset: Union[str, os.PathLike], overrides: Optional[list[str]],
                         located: Config) -> Optional[Path]:
    """``preset`` where it is RUN/config.yaml, RUN holds a run, and its train.out_dir, not given outright in
    ``overrides``, names another folder (RUN is a copy, or was moved); else None."""
    if any(override_key(item) == "train.out_dir" for item in override_list(overrides)):
        return None  # the folder is said outright
    given = Path(os.fspath(preset)).expanduser()
    if given.name != "config.yaml" or not (given.parent / "checkpoints" / "last.pt").is_file():
        return None
    return None if _same_folder(str(given.parent), located.train.out_dir) else given


def refuse_another_runs_config(preset: Union[str, os.PathLike], overrides: Optional[list[str]],
                               located: Config) -> None:
    """``--resume --config RUN/config.yaml`` (no ``--train.out_dir``) where RUN holds a run but its config names
    another folder (RUN is a copy, or was moved): refused, as it would resume the folder named (a user test: the
    original run, not the copy given, was trained on)."""
    if given := _another_runs_config(preset, overrides, located):
        named = located.train.out_dir
        that = (f", or --train.out_dir={named} for that one" if (Path(named).expanduser() / "checkpoints" /
                "last.pt").is_file() else "")  # (a moved run's: no run there to offer, a review)
        raise ConfigError(f"{given} is the config of the run in {given.parent}, but it names train.out_dir={named}, "
                          "another folder from here (a copied or moved run, or a relative path?), which --resume "
                          f"would continue (--resume=auto: start a new run in); give --train.out_dir={given.parent} "
                          f"to resume this one{that}")


def note_another_runs_config(preset: Union[str, os.PathLike], overrides: Optional[list[str]],
                            located: Config) -> None:
    """A new run from ``--config RUN/config.yaml`` (no ``--train.out_dir``) where RUN holds a run but its config
    names another folder: said, as the run starts in the folder named (a user test: an archived run's config.yaml,
    fed back to repeat it, started a new run in the folder the run had been moved from, without a word); not where
    that folder holds a run, which refuses a new one."""
    named = Path(located.train.out_dir).expanduser()
    if (given := _another_runs_config(preset, overrides, located)) and not (named / "checkpoints" / "last.pt").exists():
        print(f"note: {given} is the config of the run in {given.parent}, but it names train.out_dir="
              f"{located.train.out_dir} (a copied or moved run?), where this new run starts; --train.out_dir "
              "starts it elsewhere", file=sys.stderr)


def _checkpoint_config(saved: Path, located: Config, overrides: Optional[list[str]],
                       state: str = "is missing") -> Config:
    """For a run folder whose ``config.yaml`` is gone (or empty): the settings its last checkpoint holds, then
    ``overrides``, said in a note (else the preset's would each be refused by the checkpoint, one
    resume at a time); ``located`` where there is no checkpoint either (a CheckpointError where it does not load)."""
    ckpt = saved.parent / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        return located
    # A checkpoint that does not load (torn, say) is said now: with the preset's settings the run would look for
    # their data first, and say that missing in its place (a code read: "cifar10 train files not found").
    try:
        config = apply_overrides(config_from_dict(load_checkpoint(ckpt, map_location="cpu")["config"]),
                                 override_list(overrides))
    except (KeyError, AttributeError):
        return located  # the resume says what is wrong with the checkpoint
    except ConfigError as e:  # (an older byol's key, say): the preset's, said
        return _unloadable(saved, state, ckpt, e, located)
    try:
        validate(config)
    except ConfigError as e:
        if names_a_setting_given(e, override_list(overrides)):  # a setting given, against the run's: its error
            raise  # (a review: said as the checkpoint's, and the run went on with the preset's, refused for them)
        return _unloadable(saved, state, ckpt, e, located)
    config.train.out_dir = located.train.out_dir
    print(f"note: {saved} {state}; the run goes on with the settings saved in {ckpt}", file=sys.stderr)
    return config


def _unloadable(saved: Path, state: str, ckpt: Path, error: ConfigError, located: Config) -> Config:
    """``located`` (the settings given, over the preset's), with a note saying why the checkpoint's are not taken."""
    print(f"note: {saved} {state}, and the settings saved in {ckpt} do not load ({error}); the run goes on "
          "with those given, over the preset's", file=sys.stderr)
    return located


def _another_version(saved: Path, error: ConfigError) -> ConfigError:
    """``error`` of the run's own ``config.yaml``, said as the settings of another byol where byol wrote the file
    and it names a key or section this one lacks (a newer byol's run, or one it resumed: a bare "unknown config
    key" read as a typo, with no word of what to do)."""
    prefix = f"config {saved}: "
    said = str(error)
    if not (said.startswith(prefix) and said[len(prefix):].startswith("unknown config")
            and starts_as_byol_config(saved)):
        return error
    return ConfigError(another_version(saved, said[len(prefix):], "the run was written or last resumed",
                                       " to resume it"))


def _same_folder(a: str, b: str) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return False
