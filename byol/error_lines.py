"""What the command line says of an error: one sentence on stderr and exit code 2 for bad input, a
full disk, a batch too big for memory, a decoding process the system killed or a NumPy that torch
cannot use; None (its traceback) for a bug of byol's. Torch-free until an error is said: ``byol --help``
and usage errors never load it (but under torchrun, where the processes tell each other their errors through
torchrun's store: :mod:`byol.peers`)."""

import errno
import os
import re
import sys
from typing import Optional, Union


def launch_rank() -> int:
    """This process's rank under torchrun, from its RANK variable (set before any process group is
    up, as when the config is read, or a folder scanned); 0 without torchrun. Here, not in distributed.py:
    without importing torch, a usage error is said at once (outside torchrun). A RANK without a WORLD_SIZE
    of 2 or more is not torchrun's (a cluster's job script exports it for its own launcher): one process, rank 0
    (a user test: its errors were said by no process, and its outputs went unchecked). Nor is a WORLD_SIZE that is
    no whole number of 2 or more ('abc', '0'): distributed.init refuses it, and this process says so."""
    try:
        return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) >= 2 else 0
    except ValueError:
        return 0


def say_error(e: Union[BaseException, str], everywhere: bool) -> None:
    """The error's one sentence, once under torchrun: by the first process to say it (the processes tell
    each other through torchrun's store, :mod:`byol.peers`), so that an error every process meets alike
    (a wrong data.root) is said once, and one that a process meets alone (data, a checkpoint) by that
    process, named by rank where ``everywhere`` says it may be one process's own. Without the store, rank
    0 says it, and where ``everywhere`` the others say theirs too; a usage or config error is every
    process's alike."""
    from .peers import failed
    rank = launch_rank()
    first = failed(str(e), rank)
    if first is None:
        first = rank == 0 or everywhere
    if first:
        where = f" (rank {rank})" if rank != 0 and everywhere else ""
        print(f"byol: error{where}: {e}", file=sys.stderr)


# What to lower where a resumed run runs out of memory: its checkpoint fixes train.batch_size and the model (a
# resume with another batch size is refused), so "lower train.batch_size" led to a second refusal (a user test).
RESUMED_LOWER = ("lower data.image_size (a resumed run keeps its checkpoint's train.batch_size and model), or start "
                 "a new run with a smaller train.batch_size")


def out_of_memory_line(resumed: bool = False) -> str:
    """The sentence for memory run out in pretraining; ``resumed``: a resumed run's (what a resume can lower)."""
    lower = RESUMED_LOWER if resumed else ("lower train.batch_size (to half, say), or data.image_size or the model's "
                                           "size (model.width, model.projection_hidden_size)")
    return f"the batch does not fit in memory; {lower}"


def _out_of_memory() -> int:
    say_error(out_of_memory_line(), everywhere=True)
    return 2


def _decoding_process_died(e: BaseException) -> Optional[str]:
    """The sentence for torch's error where a decoding process (data.workers) died; None for another (a
    user test: the out-of-memory killer's SIGKILL to one was a traceback). torch's SIGCHLD handler raises
    it in the main process wherever that then is: in the step, say, not only where batches are drawn."""
    died = re.search(r"DataLoader worker \(pid(?:\(s\))? ([\d, ]+)\) (?:is killed by signal: ([^.]*)|exited "
                     r"unexpectedly(?: with exit code (-?\d+))?)", str(e)) if isinstance(e, RuntimeError) else None
    if died is None:
        return None
    pids, signal_name, code = died.groups()
    pids = pids.strip(", ")
    who, was = ((f"the image decoding processes (data.workers) {pids}", "were") if "," in pids else
                (f"an image decoding process (data.workers; pid {pids})", "was"))
    lower = "lower data.workers (0: decode in this process) or data.load_size"
    if signal_name == "Bus error":  # torch: "out of shared memory"
        what = (f"{who} {was} killed by a bus error, as where shared memory (/dev/shm, which they pass their batches "
                "through) is full: give it more (docker run --shm-size=8g) or lower data.workers (0: decode in this "
                "process)")
    elif code is not None:
        what = f"{who} ended with exit code {code}; with data.workers=0 the images are decoded in this process"
    elif signal_name not in (None, "Killed"):
        what = f"{who} {was} killed ({signal_name}); {lower}"
    else:  # SIGKILL; or found gone, its signal not known
        how = f"{was} killed" if signal_name else "ended unexpectedly"
        what = f"{who} {how}, often the system's out-of-memory killer's doing; {lower}"
    return f"{what}; a pretraining run that wrote a checkpoint goes on from it with --resume"


# A write the storage refused wherever it came (a full disk mid-run, under metrics.jsonl or TensorBoard's
# events; a quota; a file-size limit; a folder made read-only; a disk or network file system failing under
# a write, EIO, which names no file either): said in one sentence, not a traceback.
_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO}


def quiet_storage_errors_of_threads(hook):
    """``threading.excepthook``, but for a storage error in a thread (TensorBoard's writer, at a full
    disk): its writer raises it again in the main thread, where it is said in one sentence."""
    def quiet(args) -> None:
        if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in _STORAGE_ERRORS):
            hook(args)
    return quiet


def _storage_error(e: OSError) -> int:
    from .files import written_for
    named = isinstance(e.filename, (str, bytes, os.PathLike))  # (not a file descriptor's number)
    file = written_for(os.fsdecode(e.filename)) if named else None
    if e.errno == errno.EIO and file is None:  # not only a disk's: a hung-up terminal's too (a run's print after
        # its ssh session closed)
        said = f"an input/output error ({e.strerror}) named no file: a disk or network file system failing, or " \
            "the terminal gone (an ssh session closed: run under nohup or tmux); check which"
    elif e.errno == errno.EIO:  # (a read's as well as a write's: a data file's on a failing network file system)
        said = f"the disk failed under {file} ({e.strerror}); check that disk (or its network file system)"
    else:
        said = f"could not write {file or 'to the disk'} ({e.strerror}); make room, or choose a writable place,"
    say_error(f"{said} and run the command again "
              "(a pretraining run that wrote a checkpoint goes on from it with --resume)", everywhere=True)
    return 2


# What the system says of a path is said as one sentence, but for these, which would be a bug of byol's
# (a descriptor used after its close, a rename across file systems) and keep their traceback.
_BUG_ERRORS = {errno.EBADF, errno.EXDEV, errno.EFAULT}


def _file_error(e: OSError) -> Optional[str]:
    """An error the system gave for a path, in one sentence: the file a temporary is written for, rather
    than the temporary (``.metrics.jsonl.tmp123``), and why; None for another error, or one without a path."""
    from .files import write_failure, written_for
    if e.errno in _BUG_ERRORS or not isinstance(e.filename, (str, bytes, os.PathLike)):
        return None  # (a file descriptor's number, say)
    path, other = written_for(os.fsdecode(e.filename)), e.filename2
    onto = f" (onto {os.fsdecode(other)})" if isinstance(other, (str, bytes, os.PathLike)) and \
        os.fsdecode(other) != path else ""
    advice = "choose a shorter path" if e.errno == errno.ENAMETOOLONG else \
        "check the path and its permissions, or choose another"
    return f"{path}{onto}: {write_failure(e)}; {advice}"


def _user_errors() -> tuple[type, ...]:
    # Imported only once an error is raised: `byol --help` and usage errors never load torch.
    from .errors import ByolError
    return ByolError, FileNotFoundError, PermissionError, FloatingPointError


def is_out_of_memory(e: BaseException) -> bool:
    torch = sys.modules.get("torch")  # an error from torch's work: torch is loaded
    # torch.cuda's name for it is torch's oldest (torch.OutOfMemoryError, the same class, came in 2.5)
    if isinstance(e, MemoryError) or (torch is not None and isinstance(e, torch.cuda.OutOfMemoryError)):
        return True
    # the CPU allocator reports exhaustion as a plain RuntimeError
    return isinstance(e, RuntimeError) and ("can't allocate memory" in str(e) or "out of memory" in str(e))


def _no_new_thread(e: BaseException) -> Optional[str]:
    """The sentence for Python's error where the system starts no more threads (a user test: a resume under
    ``ulimit -v``, whose threads' stacks no longer fit in the address space, was TensorBoard's traceback), or
    refuses memory naming no file (ENOMEM: a decoding process's fork, say); None for another."""
    resume = "; a pretraining run that wrote a checkpoint goes on from it with --resume"
    if isinstance(e, RuntimeError) and str(e).startswith("can't start new thread"):
        return ("the system would start no more threads for byol: a limit on this process's address space (ulimit "
                "-v, a scheduler's h_vmem) or on its threads (ulimit -u) is reached; raise it, or lower data.workers"
                + resume)
    if isinstance(e, OSError) and e.errno == errno.ENOMEM and e.filename is None:
        return ("the system refused byol memory (Cannot allocate memory), as where a limit on this process's address "
                "space (ulimit -v, a scheduler's h_vmem) is reached or the machine's memory is full; raise the limit, "
                "or lower data.workers (0: decode in this process), train.batch_size or data.image_size" + resume)
    return None


def _numpy_unusable(e: BaseException) -> Optional[str]:
    """The sentence for torch's error where the NumPy installed is not one it can use: torch before 2.3 was
    built for NumPy 1, and a fresh ``pip install byol torch==2.2.2`` takes the newest NumPy; None for another."""
    if not (isinstance(e, RuntimeError) and str(e) == "Numpy is not available"):
        return None
    torch, numpy = sys.modules.get("torch"), sys.modules.get("numpy")
    which = f"torch {torch.__version__} cannot use NumPy {numpy.__version__}" if torch and numpy else \
        "torch cannot use the NumPy installed"
    return f"{which} (torch before 2.3 was built for NumPy 1); pip install 'numpy<2', or torch 2.3 or later"


def say(e: Exception) -> Optional[int]:
    """Say ``e`` in one sentence on stderr and return the command's exit code (2), or None for an error
    that is a bug of byol's, whose traceback is then shown."""
    if isinstance(e, OSError) and e.errno in _STORAGE_ERRORS:
        return _storage_error(e)
    said = _file_error(e) if isinstance(e, OSError) else None
    if said is not None:  # a path the system refused: too long, a file in the way, ... (a user test)
        say_error(said, everywhere=True)
        return 2
    if isinstance(e, _user_errors()):
        from .config import ConfigError
        say_error(e, everywhere=not isinstance(e, ConfigError))
        return 2
    if is_out_of_memory(e):
        return _out_of_memory()
    said = _decoding_process_died(e) or _numpy_unusable(e) or _no_new_thread(e)
    if said is None:
        return None
    say_error(said, everywhere=True)
    return 2
