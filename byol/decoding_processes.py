"""The processes that decode a folder's images for a DataLoader: started at most one a usable core, deaf to
the signals a scheduler or terminal sends the whole job, ended at once (not after torch's 10 s waits), and
their failures (shared memory full, a process killed) said in one sentence. Batches of them: ``loaders.py``.
"""

import errno
import multiprocessing
import multiprocessing.util
import os
import shutil
import signal
import sys
import threading
import time
from typing import Iterable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from .data import DataError
from .faults import StopRequest
from .folder import Skipped
from .allocator import give_back_freed_memory


def skip_collate(items: list) -> tuple:
    """Stack decoded samples and set :class:`Skipped` ones apart.

    Returns ``(images (B, 3, S, S) or None when all were skipped, labels (B,), indices (B,),
    skipped list)``.
    """
    good = [it for it in items if not isinstance(it, Skipped)]
    skipped = [it for it in items if isinstance(it, Skipped)]
    labels = torch.tensor([g[1] for g in good], dtype=torch.int64)
    indices = torch.tensor([g[2] for g in good], dtype=torch.int64)
    if not good:
        return None, labels, indices, skipped
    images = torch.empty((len(good), *good[0][0].shape), dtype=good[0][0].dtype)
    if torch.utils.data.get_worker_info() is not None:
        # In a decoding process the batch is put in shared memory here, as torch's default_collate does, not
        # when its queue's feeder thread pickles it: a full /dev/shm there printed a traceback, dropped the
        # batch and left the run waiting for it for ever (a user test, Docker's 64 MB); here torch sends the
        # error over to be raised where the batch is awaited (:func:`_shared_memory_full`).
        for t in (images, labels, indices):
            t.share_memory_()
    torch.stack([g[0] for g in good], out=images)
    return images, labels, indices, skipped


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, as under a scheduler), the most decoding
    processes worth starting."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def refuse_to_start_again(what: str) -> None:
    """Raise where this process is one that multiprocessing's spawn or forkserver is starting (the default
    on macOS and Windows, and on Linux from Python 3.14): it runs the caller's script again, and a script
    that calls ``what`` outside ``if __name__ == "__main__":`` would start it again in each decoding
    process (a user test: each said that another run, its own, was writing the run folder)."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError(f"{what} was called again while multiprocessing started an image decoding process "
                           "(data.workers; its 'spawn' or 'forkserver' start runs the script's top level again): "
                           "put the script's calls under `if __name__ == \"__main__\":`, or set data.workers=0")


def _start_decoding_process(worker_id: int) -> None:
    """A decoding process ignores SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2: a scheduler's cancel (SIGTERM)
    or warning of its time limit (SIGUSR1, SIGUSR2), a terminal's Ctrl-C (SIGINT) and its closing (SIGHUP) go
    to every process of the job, and a decoding process that died of one failed the main process
    ("DataLoader worker ... is killed by signal") before it could finish its step and save. The main process
    stops the run and then ends its decoding processes; should it die, torch's watchdog in each ends it.
    And it hands freed memory back to the system, which the training process forked from keeps
    (:func:`~byol.allocator.give_back_freed_memory`)."""
    for s in StopRequest.SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    sys.excepthook = _quiet_handover_errors(sys.excepthook)
    give_back_freed_memory()


def _quiet_handover_errors(hook):
    """``sys.excepthook``, but silent for a connection lost in a thread of a decoding process: the thread that
    hands a batch's memory over to the main process (multiprocessing's resource sharer, which gives what it
    catches to ``sys.excepthook``) loses it where the main process ends mid-handover, as it does on an error
    that it says itself (a user's stderr got a ConnectionResetError traceback beside the error's sentence)."""
    def excepthook(kind, value, traceback) -> None:
        if not (issubclass(kind, (ConnectionError, EOFError)) and threading.current_thread() is not
                threading.main_thread()):
            hook(kind, value, traceback)
    return excepthook


class _SkippingLoader(DataLoader):
    """Yields ``(images, labels, indices)``; records skipped files in ``dataset.bad_files``; raises a
    :class:`DataError` where the storage failed rather than a file (:func:`~byol.images.storage_failure`).

    A batch keeps its good images only, so it can be shorter than ``batch_size``; a batch
    whose files were all bad is not yielded at all. It starts at most one decoding process per
    usable core: more only add switching (and torch's warning about them).
    """

    def __init__(self, dataset: Dataset, num_workers: int = 0, **kwargs):
        kwargs.setdefault("worker_init_fn", _start_decoding_process)
        super().__init__(dataset, num_workers=min(num_workers, usable_cores()), **kwargs)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        before = set(multiprocessing.active_children())
        if self.num_workers > 0:  # the folder of the socket a decoding process hands its batches over by: this
            multiprocessing.util.get_temp_dir()  # process's (one of its own stays in /tmp where end_now kills it)
        try:
            batches = super().__iter__()  # starts the decoding processes (or takes the kept ones)
        except BaseException as e:  # also a Ctrl-C while they start: torch's half-built iterator ends none of them
            _disarm(e)
            end_processes(set(multiprocessing.active_children()) - before)  # those it started before it failed
            if not isinstance(e, OSError):
                raise
            raise DataError(_not_started(self.num_workers, e)) from None
        try:
            for images, labels, indices, skipped in batches:
                for s in skipped:
                    if s.storage is not None:  # the storage failed, not the file: every file after it would too
                        raise DataError(s.storage)
                    self.dataset.bad_files[s.path] = s.reason
                if images is not None:
                    yield images, labels, indices
        except BaseException as e:  # a Ctrl-C while a batch was awaited: the traceback (a notebook keeps it) holds
            try:  # them; a kept pass's are its owner's to end (TrainData.close)
                died = _died_handing_over(batches, e)  # (before they are ended below)
            finally:  # also where torch's SIGCHLD handler raises during that wait (a process died): the others
                if not self.persistent_workers:  # were left running, and a script's exit waited on them for ever
                    end_now(batches)
            if died is not None:
                raise died from e
            if _shared_memory_full(e):
                raise DataError(_no_room_for_batches(self)) from None
            raise


def _died_handing_over(batches: Iterator, e: BaseException, wait_s: float = 2.0) -> Optional[RuntimeError]:
    """torch's own error for a decoding process that died (``DataLoader worker (pid(s) N) exited
    unexpectedly``, which the command line says in a sentence) where the batch it was handing over failed
    first: its connection reset (ConnectionError, EOFError) before torch found it gone, and torch raised that
    instead (a test's SIGKILL, as the out-of-memory killer's: a traceback, once in some runs). None for
    another error, or where no process has died within ``wait_s``."""
    if not isinstance(e, (ConnectionError, EOFError)):
        return None
    workers = list(getattr(batches, "_workers", []))
    deadline = time.monotonic() + wait_s
    while workers:
        dead = [w for w in workers if not w.is_alive()]
        if dead:
            return RuntimeError(f"DataLoader worker (pid(s) {', '.join(str(w.pid) for w in dead)}) exited "
                                "unexpectedly")
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return None


def end_now(batches: Iterator) -> None:
    """End a pass's decoding processes now (``batches``: a DataLoader's iterator, a kept one's too), busy ones
    too: torch's own shutdown waits 5 s for each to finish its batch, then sends SIGTERM, which they ignore,
    and waits 5 s more (a user test: a Ctrl-C while 256 big photos a batch were decoded was acted on 15 s
    later, with 2 processes). Their pids are taken back first: killed, they would fail this process
    ("DataLoader worker ... is killed by signal")."""
    if getattr(batches, "_worker_pids_set", False):
        torch.utils.data._utils.signal_handling._remove_worker_pids(id(batches))
        batches._worker_pids_set = False
    end_processes(getattr(batches, "_workers", []))
    getattr(batches, "_shutdown_workers", lambda: None)()


def _not_started(workers: int, e: OSError) -> str:
    """Why ``workers`` decoding processes could not be started: shared memory (/dev/shm, where they
    pass their batches: Docker gives 64 MB) or file descriptors ran out, say."""
    hint = ""
    if e.errno == errno.ENOSPC:
        try:
            free = f" ({shutil.disk_usage('/dev/shm').free / 2**20:.1f} MiB free)"
        except OSError:
            free = ""
        hint = f"; shared memory, /dev/shm{free}, is full: give it more (docker run --shm-size=8g) or"
    elif e.errno in (errno.EROFS, errno.EACCES):
        hint = "; shared memory, /dev/shm, where they pass their batches, cannot be written: make it writable or"
    elif e.errno == errno.EMFILE:
        hint = "; raise the limit on open files (ulimit -n 4096) or"
    return (f"the {workers} image decoding processes (data.workers) could not be started ({e.strerror})"
            f"{hint or ':'} lower data.workers (0: decode in this process)")


def _shared_memory_full(e: BaseException) -> bool:
    """Whether ``e`` is torch's error, raised again from a decoding process, where /dev/shm had no room
    for a batch ("unable to allocate shared memory(shm) for file </torch_...>: No space left on device")."""
    return isinstance(e, RuntimeError) and "DataLoader worker" in str(e) and \
        ("unable to allocate shared memory" in str(e) or "No space left on device" in str(e))


def _no_room_for_batches(loader: DataLoader) -> str:
    """What to do where the decoding processes of ``loader`` found shared memory full mid-pass."""
    try:
        size = f" ({shutil.disk_usage('/dev/shm').total / 2**20:,.0f} MiB)"
    except OSError:
        size = ""
    batch = loader.batch_size * 3 * loader.dataset.size ** 2 / 2**20
    held = loader.num_workers * (loader.prefetch_factor or 2)
    return (f"shared memory, /dev/shm{size}, is too small for the batches the {loader.num_workers} image decoding "
            f"processes (data.workers) hand over (up to {held} of {batch:,.1f} MiB at once): give it more (docker "
            "run --shm-size=8g), or lower data.workers (0: decode in this process), data.image_size or, in "
            "pretraining, train.batch_size; a pretraining run that wrote a checkpoint goes on from it with --resume")


def _disarm(e: BaseException) -> None:
    """The half-built iterator that torch's failed start left in ``e``'s frames, marked shut down: its
    ``__del__`` would fail over the fields it never set, with a traceback ("Exception ignored in"). Its
    processes' pids, where torch has them, are taken back first: ended, they would fail this process
    ("DataLoader worker ... is killed by signal")."""
    tb = e.__traceback__
    while tb is not None:
        built = tb.tb_frame.f_locals.get("self")
        if type(built).__name__ == "_MultiProcessingDataLoaderIter":
            if getattr(built, "_worker_pids_set", False):
                torch.utils.data._utils.signal_handling._remove_worker_pids(id(built))
                built._worker_pids_set = False
            built._shutdown = True
        tb = tb.tb_next


def end_processes(processes: Iterable[multiprocessing.Process]) -> None:
    """End ``processes`` now, decoding processes left running: they ignore SIGTERM (see
    :func:`_start_decoding_process`), so terminate() does not end them, and Python's exit,
    which joins them, would wait for ever."""
    processes = list(processes)
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join(timeout=5)
