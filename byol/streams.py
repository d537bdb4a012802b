"""stdout and stderr that may go away while a command runs: what it says is not worth its work.

A pipe's reader ends (``| head -1``; ``| tee log`` closed by a logout's SIGHUP), a descriptor is
closed (``2>&-``), a terminal hangs up: Python then raises ``BrokenPipeError`` or ``OSError`` at
the next ``print``, which would end hours of training (before its checkpoint) for a progress line.
From the first write that fails, a guarded stream writes nowhere, and the command goes on.
"""

import contextlib
import errno
import os
import signal
import sys
from typing import Iterator, Optional, TextIO


# What says the reader has gone: a pipe's reader ended, a hung-up terminal, a closed descriptor.
_GONE = {errno.EPIPE, errno.EIO, errno.EBADF, errno.ECONNRESET, errno.ENXIO}


class LosableStream:
    """``stream``, whose writes and flushes that fail (the reader gone) send it and its file
    descriptor to ``os.devnull`` from then on: what was said already stays said, the rest is dropped,
    and Python's own flush at exit finds nothing to complain of. Everything else is ``stream``'s."""

    def __init__(self, stream: Optional[TextIO]):
        self._stream = stream
        self.lost = False
        if stream is None:  # a descriptor closed before Python started (``>&-``, ``2>&-``): Python's is None
            self.lost, self._stream = True, open(os.devnull, "w")  # (a user test: a traceback at the first print)

    def write(self, text: str) -> int:
        try:
            try:
                return self._stream.write(text)
            except UnicodeEncodeError as e:  # a path outside the code page of a redirected stdout (Windows):
                encoding = getattr(self._stream, "encoding", None) or e.encoding  # escaped, as stderr does
                self._stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
                return len(text)
        except (OSError, ValueError) as e:
            self._lose_on(e)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError) as e:
            self._lose_on(e)

    def _lose_on(self, e: Exception) -> None:
        """Lose the stream where ``e`` says its reader is gone; else (a character the stream cannot
        encode even escaped, a full non-blocking pipe) ``e`` is raised, as by the stream itself."""
        gone = e.errno in _GONE if isinstance(e, OSError) else getattr(self._stream, "closed", False)
        if not gone or isinstance(e, BlockingIOError):
            raise e
        self._lose()

    def _lose(self) -> None:
        self.lost = True
        with contextlib.suppress(OSError, ValueError):  # a closed stream, or one with no descriptor
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, self._stream.fileno())  # also what the stream still buffers goes there at exit
            finally:
                os.close(null)
        self._stream = open(os.devnull, "w")

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


# What stops a run (faults.StopRequest: the step finished, a checkpoint written) and, but for SIGINT (Python's
# KeyboardInterrupt), ends a command with a line (cli): one list, here, where the command line reads it torch-free.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2")
                     if hasattr(signal, name))


def left_ignored(signum: int) -> bool:
    """Whether ``signum`` is SIGHUP, SIGUSR1 or SIGUSR2 and ignored, as under nohup or after a job script's
    ``trap '' USR1``: left so, a command goes on when its terminal closes or the signal comes (elsewhere
    each stops a run as SIGTERM does)."""
    chosen = tuple(getattr(signal, name, None) for name in ("SIGHUP", "SIGUSR1", "SIGUSR2"))
    return signum in chosen and signal.getsignal(signum) is signal.SIG_IGN


@contextlib.contextmanager
def losable_streams() -> Iterator[None]:
    """``sys.stdout`` and ``sys.stderr`` as :class:`LosableStream` while the block runs (a command)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = LosableStream(sys.stdout), LosableStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
