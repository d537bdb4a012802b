"""A setting's value against its field's type: converted where it is written otherwise (an int for a float,
text from the command line or a YAML file), refused with a clear message where it is not of the type, and
said back as YAML and the command line write it."""

import math
import numbers
import os
import types
import typing
from typing import Any, Union

from .config_files import ConfigError, parse_value, surprising_number


_NULLS = ("null", "none", "~")  # the command line's words for null, as YAML's


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field's type, converting int -> float and strings from the command line."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = typing.get_args(annotation)
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in _NULLS)):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if isinstance(value, str) and annotation is not str:
        value = parse_value(value)
    if annotation in (int, float) and surprising_number(value):
        raise ConfigError(f"{key}: {value.written} reads as {value} in YAML (a leading 0 makes it octal, a colon "
                          "base 60); write the number without them")
    if annotation is float and isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if annotation in (int, float) and isinstance(value, numbers.Real) and not isinstance(value, bool):
        if annotation is float or isinstance(value, numbers.Integral):  # NumPy's numbers too, as Python's
            return annotation(value)
    if annotation is bool and isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
        return value.lower() in ("true", "yes")
    if annotation is str and isinstance(value, (int, float, os.PathLike)) and not isinstance(value, bool):
        if isinstance(value, os.PathLike):  # a pathlib.Path from Python
            return os.fspath(value)
        return getattr(value, "written", str(value))  # as YAML's text has it: out_dir: 010 is the folder 010
    if annotation is int and isinstance(value, (str, float)) and not isinstance(value, bool) and _whole(value):
        # (a user test: max_steps: 1e5 was "must be int, got '1e5'": YAML 1.1 reads 1e5 as text)
        raise ConfigError(f"{key} must be a whole number, got {getattr(value, 'written', value)}: write it as "
                          f"{int(float(value))}")
    if annotation is str and isinstance(value, bool):  # a YAML file's unquoted yes, no, on, off: a folder's name?
        raise ConfigError(f"{key} must be text, got {yaml_word(value)} (in a YAML file an unquoted yes, no, on or off "
                          "reads as true or false: quote it, 'yes')")
    if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {annotation.__name__}, got {_shown(value)}")
    return value


def _whole(value: Any) -> bool:
    """Whether ``value`` (``"1e5"``, ``1.0``) is a whole number written otherwise than as one (not ``"12"``, text
    given from Python: "must be int" says that)."""
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return False
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return False
    return math.isfinite(number) and number == int(number) and abs(number) < 2**63


def _shown(value: Any) -> str:
    """``repr(value)``, cut short: a YAML file's aliases nest a few lines into billions of items (a user test:
    the whole repr of such a value, for its error, ran until killed)."""
    import reprlib
    short = reprlib.Repr()
    short.maxstring = short.maxother = 100
    short.maxlevel, short.maxlist, short.maxdict = 2, 4, 4
    return short.repr(value)


def is_empty(value: Any, annotation: Any) -> bool:
    """``epochs:`` in a YAML file (None where null is not allowed) or ``--train.epochs=`` (a blank
    string, or a word for null, where the type is not a string): a value left out, not one of the wrong type."""
    args = typing.get_args(annotation) or (annotation,)
    if value is None:
        return type(None) not in args
    if not isinstance(value, str) or str in args:
        return False
    # (a review: --optim.lr=null said "must be float, got None", where lr: null in a file said it is empty)
    return not value.strip() or (value.strip().lower() in _NULLS and type(None) not in args)


def kind_in_words(annotation: Any) -> str:
    """What a value of the field's type is, in words: ``a whole number or null``."""
    args = typing.get_args(annotation) or (annotation,)
    kinds = [a for a in args if a is not type(None)]
    kind = {int: "a whole number", float: "a number", bool: "true or false"}.get(kinds[0], "a value") \
        if len(kinds) == 1 else "a value"
    return kind + (" or null" if len(kinds) < len(args) else "")


def yaml_word(value: Any) -> str:
    """``value`` as it is written in YAML and on the command line."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
