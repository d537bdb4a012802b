"""What byol raises for what it is given: a setting (:class:`~byol.config_files.ConfigError`), data
(:class:`~byol.data.DataError`), a checkpoint (:class:`~byol.checkpoint.CheckpointError`) or an output
(:class:`~byol.outputs.OutputError`), each with one sentence saying what is wrong and what to do.

They share :class:`ByolError`, so that a loop over runs or checkpoints can tell bad input from a bug
with one ``except byol.ByolError`` (the command line prints the sentence and exits with 2). Misuse of
a building block (a wrong type, a value out of range) is Python's own ``TypeError`` or ``ValueError``.
Its warnings name the user's line that led to them (:func:`outside_stacklevel`).
"""

import os
import sys
from pathlib import Path


class ByolError(Exception):
    """Bad input to byol's commands and their functions; its message says what is wrong and how to fix it."""


def path_argument(value, name: str, what: str) -> Path:
    """``value`` as a Path, where it is a ``str`` or ``os.PathLike``; else a ``TypeError`` saying what the
    argument ``name`` is (pathlib's own said only "expected str, bytes or os.PathLike object, not NoneType")."""
    if isinstance(value, (str, os.PathLike)):
        return Path(value)
    raise TypeError(f"{name} must be {what}, as a str or pathlib.Path, got {type(value).__name__} {value!r:.60}")


def outside_stacklevel() -> int:
    """The ``stacklevel`` at which a ``warnings.warn`` in the function calling this names the first line outside byol
    and torch, the user's: a fixed one named torch's ``torch.no_grad`` wrapper (a user test) or byol's own
    ``build.py`` (``byol.pretrain(config, net=...)`` reaches a warning of ``BYOL(net)`` through more of byol's
    calls); 1, that function's own line, where no line is outside them."""
    torch = sys.modules.get("torch")
    inside = tuple(os.path.join(os.path.dirname(path), "") for path in (__file__, getattr(torch, "__file__", None))
                   if path)
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 1
