"""What a long wait says while it runs: a tqdm bar on stderr, or, for a log, note lines every so often.

The bars of pretraining (:func:`progress_bar`), feature extraction and the linear probe
(:func:`shown`; both :func:`tqdm_bar`), the note lines that stand in for them
(:class:`LogLines`), and those of a scan or a decode that takes long (:class:`SlowNotes`),
all timed by :data:`SCAN_NOTES`.
"""

import contextlib
import functools
import os
import sys
import time
from typing import Optional, Union

from .error_lines import launch_rank

# A long wait says what it has done after this many seconds, then every so many seconds (SlowNotes).
SCAN_NOTES = (5.0, 30.0)


class _NoteClock:
    """When a note line is due: :data:`SCAN_NOTES` seconds after the start, then every so many seconds."""

    def __init__(self):
        self.start, self.next, self.said = time.monotonic(), SCAN_NOTES[0], False

    def seconds(self) -> float:
        return time.monotonic() - self.start

    def due(self) -> Optional[float]:
        """The seconds since the start where a line is due now (the next then counted from here), else None."""
        seconds = self.seconds()
        if seconds < self.next:
            return None
        self.next, self.said = seconds + SCAN_NOTES[1], True
        return seconds


class SlowNotes:
    """Where a wait takes long (a scan of a million files, or of a network file system, which lists
    slowly; decoding a kNN monitor's 20,000 images), what it has done so far, on stderr: after
    :data:`SCAN_NOTES` seconds, then every so often, and at its end. Rank 0's alone under torchrun
    (``RANK``: the process group may not be up yet).

    ``so_far`` and ``done`` are :meth:`str.format` templates of ``count``, ``seconds`` and ``fields``."""

    def __init__(self, so_far: str, done: str, **fields):
        self.so_far, self.done_line, self.fields = so_far, done, fields
        self.clock, self.quiet = _NoteClock(), launch_rank() != 0

    def now(self, count: int) -> None:
        seconds = None if self.quiet else self.clock.due()
        if seconds is not None:
            self._say(self.so_far, count, seconds)

    def done(self, count: int) -> None:
        if self.clock.said:
            self._say(self.done_line, count, self.clock.seconds())

    def _say(self, template: str, count: int, seconds: float) -> None:
        print("note: " + template.format(count=count, seconds=seconds, **self.fields), file=sys.stderr, flush=True)


class LogLines(str):
    """``progress=LogLines()``: no bar, but what one would show as a note line every so often (after 5 s, then
    every 30 s, and at the end: :class:`SlowNotes`' times), for a log, which a bar's redrawings
    would fill (the command line's eval and embed where stderr is no terminal: a user test's eval of 50,000
    images said nothing for 72 s). True, whatever it names."""

    def __bool__(self) -> bool:
        return True


def named(progress: Union[bool, str], name: str) -> Union[bool, str]:
    """``progress`` with its bar named ``name``: False (no bar) stays so, and :class:`LogLines` stays lines."""
    if isinstance(progress, LogLines):
        return LogLines(name)
    return progress and name


class _NoteLines:
    """The bar of :class:`LogLines`: tqdm's ``update`` and ``close``, said in note lines."""

    def __init__(self, name: str, total: Optional[int], unit: str):
        self.name, self.total, self.unit = name, total, unit
        self.count, self.clock, self.cut_short = 0, _NoteClock(), False

    def update(self, n: int = 1) -> None:
        self.count += n
        seconds = self.clock.due()
        if seconds is not None and not (self.total and self.count >= self.total):  # the last batch: close() says it
            rate = self.count / max(seconds, 1e-6)
            left = f", about {duration((self.total - self.count) / rate)} left" if self.total and rate > 0 else ""
            of = f" of {self.total:,}" if self.total else ""
            self._say(f"{self.count:,}{of} {self._units()}, {seconds:.0f} s, "
                      f"{rate:,.{1 if rate < 100 else 0}f} {self.unit}/s{left}")

    def close(self) -> None:
        if not self.clock.said:
            return
        spent = f"{self.clock.seconds():.0f} s"
        if self.cut_short:  # by an error or a signal: not "N images in X s", as if they were all
            of = f" of {self.total:,}" if self.total else ""
            self._say(f"stopped after {self.count:,}{of} {self._units()}, {spent}")
        else:
            self._say(f"{self.count:,} {self._units()} in {spent}")

    def _units(self) -> str:
        return {"img": "images"}.get(self.unit, self.unit + "s")

    def _say(self, what: str) -> None:
        print(f"note: {self.name}: {what}", file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """``seconds`` as h:mm:ss."""
    minutes, s = divmod(round(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h}:{m:02d}:{s:02d}"


@contextlib.contextmanager
def shown(progress: Union[bool, str], total: Optional[int], unit: str, default: str):
    """A tqdm bar on stderr while the block runs when ``progress`` is true (a string names it), note lines for
    :class:`LogLines`, else None; closed at the block's end, the lines saying where a block that raised stopped."""
    bar = None
    if progress:
        name = (str(progress) or default) if isinstance(progress, str) else default  # (LogLines() is true, named "")
        bar = _NoteLines(name, total, unit) if isinstance(progress, LogLines) else tqdm_bar(
            total=total, unit=unit, desc=name, leave=False)
    if bar is None:  # none asked for, or tqdm cannot be imported (said once by tqdm_bar): no bar
        yield None
        return
    try:
        yield bar
    except BaseException:
        if isinstance(bar, _NoteLines):
            bar.cut_short = True
        raise
    finally:
        bar.close()


def tqdm_bar(**kwargs):
    """A tqdm bar on stderr (``kwargs``: tqdm's), sized by :func:`bar_shape`; None, with a note the first
    time, where tqdm cannot be imported (a broken install: a bar is not worth a traceback)."""
    try:
        from tqdm import tqdm
    except Exception as e:  # noqa: BLE001 - a broken package fails to import in its own ways
        _no_bars(f"{type(e).__name__}: {e}")
        return None
    if not _on_terminal() or os.environ.get("TERM") == "dumb":  # a notebook, a log, Emacs' shell: a bar opened
        kwargs.setdefault("position", 0)  # under another (a kNN evaluation's under pretraining's) takes its line,
        # as tqdm's cursor moves to the next would be shown as text
    columns = _columns()
    if columns is not None and columns < NARROW_COLUMNS:  # tqdm's bar cut at the edge: no rate, no time left
        kwargs.setdefault("bar_format", NARROW_BAR if kwargs.get("total") else NARROW_COUNT)
    return tqdm(file=sys.stderr, **bar_shape(), **kwargs)


# Below this many columns a bar is its numbers first, its name after them (a user test at 30 columns: tqdm cut
# "kNN: train features: 100%|#| 64/64 [" at the edge, and "pretrain: 33%|#| 32/96 [00:04": no rate, no time left).
NARROW_COLUMNS = 60
NARROW_BAR = "{percentage:3.0f}% {rate_fmt} {remaining} left {desc}{postfix}"
NARROW_COUNT = "{n_fmt} {rate_fmt} {desc}{postfix}"


def _columns() -> Optional[int]:
    """The width of the terminal stderr is, where it says one."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns or None
    except (OSError, ValueError, AttributeError):
        return None


def _on_terminal() -> bool:
    """Whether stderr is a terminal, where tqdm stacks bars opened together (moving the cursor up and down,
    which a notebook's output and a log cannot do)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # none, or closed
        return False


@functools.cache
def _no_bars(reason: str) -> None:
    print(f"note: tqdm cannot be imported ({reason:.200}); no progress bars are drawn", file=sys.stderr)


def bar_shape() -> dict:
    """tqdm's size arguments for a bar on stderr: the terminal's width, followed as it changes; but a
    terminal that says it has no rows or columns (a pseudo-terminal whose size was never set:
    ``script``, ``ssh -tt``, some CI runners) would have tqdm hide every bar, so there a fixed size."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):  # not a terminal (no bar is drawn there by default)
        return {"dynamic_ncols": True}
    if size.lines > 0 and size.columns > 0:
        return {"dynamic_ncols": True}
    return {"ncols": size.columns or 80, "nrows": 24}


def shows_bars(progress) -> bool:
    """Whether ``train.progress`` draws bars: true, or auto where stderr is a terminal (a log file gets
    a line an epoch instead: a bar would fill it with its redrawings; no bar where stderr is None, as under
    pythonw, or a writer without ``isatty``)."""
    return progress is True or (progress == "auto" and _on_terminal())


def progress_bar(t, rank: int, step: int, end_step: int, batch_size: int):
    """The pretraining bar (``t``: the train config), on rank 0; None without one (also where the
    environment disables tqdm, TQDM_DISABLE=1: such a bar has no clock for :meth:`~byol.reporting.Clock.paused` to move;
    and where tqdm cannot be imported). Without one, a line an epoch."""
    if not shows_bars(t.progress) or rank != 0:
        return None
    total = end_step * batch_size  # counts as 1.28M where they are long; 32/192, not 32.0/192, where not
    bar = tqdm_bar(total=total, initial=step * batch_size, unit="img", unit_scale=total >= 100_000, desc="pretrain")
    return None if bar is None or bar.disable else bar
