"""stdout and stderr that may go away while a command runs (more in test_cli.py, through the command line)."""

import errno
import io
import os
import signal
import sys

import pytest

from byol.streams import LosableStream, left_ignored, losable_streams


class Failing(io.StringIO):
    """A stream whose writes and flushes raise ``error``, as one whose reader has gone."""

    def __init__(self, error):
        super().__init__()
        self.error = error

    def write(self, text):
        raise self.error

    def flush(self):
        raise self.error


def test_only_a_reader_that_is_gone_silences_a_stream():
    """A character the stream cannot encode, or a full non-blocking pipe, is an error as before; a closed
    pipe or terminal is not (a review found the first silencing all later output)."""
    for error in (UnicodeEncodeError("ascii", "é", 0, 1, "ordinal not in range"),
                  BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")):
        stream = LosableStream(Failing(error))
        with pytest.raises(type(error)):
            stream.write("é")
        assert not stream.lost
    stream = LosableStream(Failing(BrokenPipeError(errno.EPIPE, "Broken pipe")))
    assert stream.write("lost") == 4 and stream.lost
    stream.write("and the rest goes nowhere")
    stream._stream.close()  # the /dev/null it writes to now (else a ResourceWarning, once collected)


@pytest.mark.parametrize("error", [OSError(errno.EIO, "Input/output error"),  # a terminal hung up
                                   BrokenPipeError(errno.EPIPE, "Broken pipe")])
def test_a_flush_or_a_write_to_a_reader_that_is_gone_is_dropped_not_raised(error):
    """A mutation audit: a failing flush raised (print(..., flush=True) ended the run for a progress line), and a
    hung-up terminal's EIO was raised, each surviving every test."""
    for first in ("flush", "write"):
        stream = LosableStream(Failing(error))
        getattr(stream, first)(*(["lost"] if first == "write" else []))
        assert stream.lost
        stream.write("and the rest goes nowhere")
        stream.flush()
        stream._stream.close()  # the /dev/null it writes to now


def test_a_closed_stream_is_lost_not_an_error():
    """A mutation audit: a closed stream's ValueError ("I/O operation on closed file") was raised in its writes and
    flushes, and no test failed."""
    for first in ("flush", "write"):
        closed = io.TextIOWrapper(io.BytesIO())
        closed.close()
        stream = LosableStream(closed)
        getattr(stream, first)(*(["lost"] if first == "write" else []))
        assert stream.lost
        stream._stream.close()


@pytest.mark.skipif(not hasattr(os, "pipe") or sys.platform == "win32", reason="needs a POSIX pipe")
def test_a_lost_stream_s_descriptor_goes_to_devnull():
    """A mutation audit: leaving the descriptor on the broken pipe survived; Python's own flush at exit, through
    that descriptor, would then fail again (exit 120, "Exception ignored ... BrokenPipeError")."""
    read, write = os.pipe()
    out = os.fdopen(write, "w")
    os.close(read)  # the reader is gone
    stream = LosableStream(out)
    try:
        stream.write("x" * 100)
        stream.flush()
        assert stream.lost
        assert os.fstat(write).st_rdev == os.stat(os.devnull).st_rdev  # the same descriptor, now /dev/null
    finally:
        stream._stream.close()
        out.close()


def test_a_stream_closed_before_python_started_is_lost_not_an_error():
    """A user test: ``byol eval knn ... >&-`` (Python's sys.stdout then None) printed its table into an
    AttributeError traceback, exit 1, after the evaluation's work."""
    stream = LosableStream(None)
    assert stream.write("table\n") == 6
    stream.flush()
    assert stream.lost
    stream._stream.close()


def test_the_streams_are_guarded_while_a_command_runs_and_put_back_after():
    """A mutation audit: leaving sys.stdout and sys.stderr guarded after the block survived every test."""
    saved = sys.stdout, sys.stderr
    with losable_streams():
        assert isinstance(sys.stdout, LosableStream) and isinstance(sys.stderr, LosableStream)
    assert (sys.stdout, sys.stderr) == saved


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP here")
def test_only_a_hangup_or_a_user_signal_is_left_ignored():
    """A mutation audit: dropping "SIGHUP, SIGUSR1 or SIGUSR2" survived; an ignored SIGTERM (a parent's, inherited)
    would then have been left ignored too, and a scheduler's cancel no longer stopped the run with a checkpoint."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        assert left_ignored(signal.SIGHUP) and not left_ignored(signal.SIGTERM)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        assert not left_ignored(signal.SIGHUP)
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
