"""byol.progress: when progress bars are drawn."""

import io
import os
import sys
import types

from byol.progress import shows_bars, tqdm_bar


def test_progress_auto_draws_no_bar_where_stderr_is_none_or_cannot_say_it_is_a_terminal(monkeypatch):
    """pretrain from Python with sys.stderr None (pythonw, a service) or a writer without isatty (some
    front-ends' streams) ended in "AttributeError: 'NoneType' object has no attribute 'isatty'" (a user
    test); such a stream is no terminal: no bar, and true still draws one."""
    closed = io.StringIO()
    closed.close()
    for stream in (None, types.SimpleNamespace(write=len, flush=lambda: None), closed):
        monkeypatch.setattr(sys, "stderr", stream)
        assert (shows_bars("auto"), shows_bars(True), shows_bars(False)) == (False, True, False)


class _Terminal(io.StringIO):
    """stderr as a terminal: what is drawn on it kept."""

    def isatty(self):
        return True

    def fileno(self):
        return 2


def test_a_bar_on_a_narrow_terminal_keeps_its_rate_and_time_left(monkeypatch):
    """A user test at 30 columns: tqdm cut "kNN: train features: 100%|#| 64/64 [" at the edge, with no
    images/s and no time left, and "kNN: train features: 100%|#| 3" of 32/32 read as 3 images."""
    monkeypatch.setattr(os, "get_terminal_size", lambda fd: os.terminal_size((30, 24)))
    monkeypatch.setattr(sys, "stderr", _Terminal())
    with tqdm_bar(total=96, unit="img", desc="kNN: train features", mininterval=0) as bar:
        bar.update(32)
    drawn = [line for line in sys.stderr.getvalue().split("\r") if line.strip()]
    assert all(len(line) <= 30 for line in drawn), drawn
    assert drawn[-1].startswith(" 33% ") and "img/s 00:00 le" in drawn[-1], drawn  # (the time left: tqdm's clock)
    monkeypatch.setattr(os, "get_terminal_size", lambda fd: os.terminal_size((120, 24)))
    with tqdm_bar(total=96, unit="img", desc="wide", mininterval=0) as bar:  # a wide terminal: tqdm's own bar
        bar.update(32)
    assert "wide:  33%|" in sys.stderr.getvalue()


def test_a_bar_under_another_on_a_dumb_terminal_moves_no_cursor(monkeypatch):
    """TERM=dumb (Emacs' shell): the kNN bar opened under pretraining's moved the cursor up with escape
    sequences such a terminal shows as text (``^[[A``, a user test)."""
    monkeypatch.setattr(os, "get_terminal_size", lambda fd: os.terminal_size((100, 24)))
    monkeypatch.setattr(sys, "stderr", _Terminal())
    monkeypatch.setenv("TERM", "dumb")
    with tqdm_bar(total=4, desc="pretrain", mininterval=0) as outer:
        outer.update(1)
        with tqdm_bar(total=2, desc="kNN", leave=False, mininterval=0) as inner:
            inner.update(2)
        outer.update(3)
    assert "\x1b[" not in sys.stderr.getvalue()
