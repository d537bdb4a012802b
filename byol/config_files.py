"""The YAML a config is read from: the shipped presets, a user's file, and the values given as
``--section.key=value``, with unquoted numbers kept as they were written."""

import difflib
import os
import re
import stat
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .errors import ByolError


class ConfigError(ByolError, ValueError):
    """A configuration the user wrote is invalid; the message says which key and why."""


class WrittenInt(int):
    """An unquoted YAML whole number, with the text it was written as: a text setting keeps that text
    (``out_dir: 010`` is the folder 010, not 8), and a number setting refuses YAML 1.1's octal and
    base-60 forms (:func:`surprising_number`)."""
    written: str


class WrittenFloat(float):
    """An unquoted YAML number with a point or an exponent, with the text it was written as (see
    :class:`WrittenInt`): ``root: 0.10`` is the folder 0.10, not 0.1."""
    written: str


def _as_written(kind: type, construct):
    def constructor(loader, node):
        value = kind(construct(loader, node))
        value.written = node.value
        return value
    return constructor


class _DuplicateKey(yaml.YAMLError):
    """A key given twice in one mapping of a YAML file."""


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last, silently),
    and keeping the text of unquoted numbers (:class:`WrittenInt`, :class:`WrittenFloat`)."""

    def construct_mapping(self, node, deep=False):
        lines: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # <<: a merge, whose keys may be overridden
                continue
            key, line = self.construct_object(key_node, deep=deep), key_node.start_mark.line + 1
            if not isinstance(key, typing.Hashable):  # a list: refused by the base constructor
                continue
            if key in lines:
                where = f"lines {lines[key]} and {line}" if lines[key] != line else f"line {line}"
                raise _DuplicateKey(f"gives {key} twice ({where}); keep one")
            lines[key] = line
        return super().construct_mapping(node, deep=deep)


_Loader.add_constructor("tag:yaml.org,2002:int", _as_written(WrittenInt, yaml.SafeLoader.construct_yaml_int))
_Loader.add_constructor("tag:yaml.org,2002:float", _as_written(WrittenFloat, yaml.SafeLoader.construct_yaml_float))
# No setting is a date: an unquoted 2024-01-01 (YAML 1.1's timestamp, a datetime.date) is the text written, as
# on the command line (a user test: out_dir: 2024-01-01 was refused as "must be str, got datetime.date(...)").
_Loader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_scalar)


def surprising_number(value: Any) -> bool:
    """Whether ``value`` is an unquoted YAML number written in a form only YAML 1.1 reads as one, and
    not as it looks: ``010`` (octal: 8) or ``1:30`` (base 60: 90)."""
    written = getattr(value, "written", None)
    return written is not None and (":" in written or re.fullmatch(r"[-+]?0[0-9_]+", written) is not None)


def parse_value(text: str) -> Any:
    """A ``--section.key=value`` value as YAML reads it (``true``, ``3``, ``null``), numbers kept as
    written; the text itself where it is no YAML."""
    try:
        return safe_yaml(text, _Loader)
    except yaml.YAMLError:
        return text


def override_key(item: str) -> str:
    """The ``section.key`` of a ``--section.key=value`` override (its leading ``--`` optional)."""
    return item.removeprefix("--").partition("=")[0]


class UnreadableYAML(yaml.YAMLError):
    """YAML that the reader cannot finish: a number of over 4300 digits, lists nested over ~1000 deep."""


def safe_yaml(text: str, loader: type = yaml.SafeLoader) -> Any:
    """``text`` read by a safe YAML ``loader``, where every text it cannot read raises a ``yaml.YAMLError``:
    Python's ValueError and RecursionError too (a user test: a config.yaml in a run folder from elsewhere,
    made to, ended in their tracebacks), as :class:`UnreadableYAML`."""
    try:
        return yaml.load(text, Loader=loader)
    except (ValueError, RecursionError) as e:
        raise UnreadableYAML("it nests too deep" if isinstance(e, RecursionError)
                             else str(e).split(":")[0].lower()) from None


def did_you_mean(meant: Optional[str]) -> str:
    """`` (did you mean MEANT?)``, as an error's sentence adds it; "" where nothing is meant."""
    return f" (did you mean {meant}?)" if meant else ""


def nearest(word: Any, choices: list[str]) -> Optional[str]:
    """The one of ``choices`` that ``word`` most likely misspells; None if none is close."""
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.8)
    return close[0] if close else None


def no_space_after_colon(text: str) -> Optional[str]:
    """The first line of ``text`` that writes a key with no space after its colon (``epochs:3``, which YAML
    reads as the text "epochs:3", not as a key and its value); None where none does."""
    return next((line.strip() for line in text.splitlines() if re.match(r"\s*[A-Za-z_]\w*:[^\s:/\\]", line)), None)


def presets_folder():
    """The folder of the shipped presets: ``byol/configs`` where byol is installed, ``configs/`` beside
    the package in a source checkout (this checkout's, also where another one is installed editable,
    whose ``byol.configs`` maps to its own); ``byol.configs`` as importlib finds it otherwise."""
    here = Path(__file__).resolve().parent
    for folder in (here / "configs", here.parent / "configs"):
        if (folder / "__init__.py").is_file():
            return folder
    return resources.files("byol.configs")


def preset_names() -> list[str]:
    """Names of the YAML presets shipped with the package."""
    return sorted(p.name[:-5] for p in presets_folder().iterdir() if p.name.endswith(".yaml"))


def read_preset(name_or_path: Union[str, os.PathLike]) -> dict:
    """The sections of a preset (its name) or of a YAML file (its path); {} for an empty file."""
    name_or_path = os.fspath(name_or_path)
    if not name_or_path.strip():
        raise ConfigError("the config is empty; give a preset name (" + ", ".join(preset_names()) + ") or a YAML "
                          "file")
    path = Path(name_or_path)
    if path.is_dir() and (path.suffix in (".yaml", ".yml") or os.sep in name_or_path):
        raise ConfigError(f"config {name_or_path} is a folder, not a YAML file")
    # A path (not a preset's name) when it looks like one: "./cifar10-cpu" is a missing file, not the preset.
    looks_like_a_path = path.suffix in (".yaml", ".yml") or "/" in name_or_path or os.sep in name_or_path
    if not looks_like_a_path and path.is_file() and name_or_path in preset_names():
        # (a user test: a file named cifar10-cpu in the working directory silently replaced the preset)
        raise ConfigError(f"config {name_or_path} names both the preset and the file {name_or_path} in "
                          f"{os.getcwd()}; give ./{name_or_path} for the file, or "
                          f"{Path(str(presets_folder())) / (name_or_path + '.yaml')} for the preset")
    if looks_like_a_path or path.is_file():  # (a folder named like a preset is not a config)
        if not _readable_file(path):
            preset = path.stem if path.stem in preset_names() and path.parent == Path(".") else None
            raise ConfigError(f"config file {name_or_path} does not exist" +
                              (f"; the preset is named {preset}, without .yaml: --config {preset}" if preset else ""))
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"config {name_or_path} is not a YAML text file (not UTF-8)") from None
    else:
        preset = presets_folder() / f"{name_or_path}.yaml"
        if not preset.is_file():
            folder = f" ({name_or_path} here is a folder)" if path.is_dir() else ""
            folder += did_you_mean(nearest(name_or_path.lower(), preset_names()))
            raise ConfigError(f"unknown preset {name_or_path!r}{folder}; choose one of {', '.join(preset_names())} "
                              "or give a path to a YAML file")
        text = preset.read_text()
    try:
        data = safe_yaml(text, _Loader)
    except _DuplicateKey as e:
        raise ConfigError(f"config {name_or_path} {e}") from None
    except UnreadableYAML as e:
        raise ConfigError(f"config {name_or_path} cannot be read ({e})") from None
    except yaml.YAMLError as e:  # one line: where, and the parser's problem
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        line = no_space_after_colon(text)  # (a user test: "line 4: could not find expected ':'" of a 3-line file)
        hint = (f" ({line!r} needs a space after its colon)" if line else
                " (YAML indents with spaces, not tabs)" if "'\\t'" in problem else "")
        raise ConfigError(f"config {name_or_path} is not valid YAML{where}: {problem}{hint}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {name_or_path} must be a mapping of sections")
    return data


def _readable_file(path: Path) -> bool:
    """A file, or what reads as one: a pipe such as ``--config /dev/stdin`` or ``<(...)``; not a folder."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)
