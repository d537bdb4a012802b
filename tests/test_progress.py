"""byol.progress: when progress bars are drawn."""

import io
import sys
import types

from byol.progress import shows_bars


def test_progress_auto_draws_no_bar_where_stderr_is_none_or_cannot_say_it_is_a_terminal(monkeypatch):
    """pretrain from Python with sys.stderr None (pythonw, a service) or a writer without isatty (some
    front-ends' streams) ended in "AttributeError: 'NoneType' object has no attribute 'isatty'" (a user
    test); such a stream is no terminal: no bar, and true still draws one."""
    closed = io.StringIO()
    closed.close()
    for stream in (None, types.SimpleNamespace(write=len, flush=lambda: None), closed):
        monkeypatch.setattr(sys, "stderr", stream)
        assert (shows_bars("auto"), shows_bars(True), shows_bars(False)) == (False, True, False)
