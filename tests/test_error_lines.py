"""What the command line says of an error (its end-to-end cases are in test_cli.py and test_faults.py)."""

import errno
import os
from types import SimpleNamespace

import pytest
import torch

from byol import error_lines
from byol.config import ConfigError
from byol.error_lines import (_decoding_process_died, _file_error, launch_rank, quiet_storage_errors_of_threads,
                               say, say_error)
from byol.errors import ByolError


@pytest.mark.parametrize("torch_says, said", [
    ("is killed by signal: Killed. ", "an image decoding process (data.workers; pid 7) was killed, often the system's "
     "out-of-memory killer's doing; lower data.workers (0: decode in this process) or data.load_size"),
    ("is killed by signal: Bus error. It is possible that dataloader's workers are out of shared memory. Please try "
     "to raise your shared memory limit.", "an image decoding process (data.workers; pid 7) was killed by a bus error, "
     "as where shared memory (/dev/shm, which they pass their batches through) is full: give it more (docker run "
     "--shm-size=8g) or lower data.workers (0: decode in this process)"),
    ("exited unexpectedly with exit code 1. Details are lost due to multiprocessing.", "an image decoding process "
     "(data.workers; pid 7) ended with exit code 1; with data.workers=0 the images are decoded in this process"),
    ("is killed by signal: Segmentation fault. ", "an image decoding process (data.workers; pid 7) was killed "
     "(Segmentation fault); lower data.workers (0: decode in this process) or data.load_size")])
def test_each_way_torch_says_a_decoding_process_died_is_one_sentence(torch_says, said):
    """torch's words (torch/utils/data/dataloader.py, its SIGCHLD handler) for a decoding process that died;
    a review: a bus error (/dev/shm full) or an exit code was said to be the out-of-memory killer's doing."""
    resume = "; a pretraining run that wrote a checkpoint goes on from it with --resume"
    assert _decoding_process_died(RuntimeError(f"DataLoader worker (pid 7) {torch_says}")) == said + resume
    assert _decoding_process_died(RuntimeError("DataLoader worker (pid(s) 7, 8) exited unexpectedly")) == (
        "the image decoding processes (data.workers) 7, 8 ended unexpectedly, often the system's out-of-memory "
        "killer's doing; lower data.workers (0: decode in this process) or data.load_size" + resume)
    assert _decoding_process_died(RuntimeError("DataLoader worker died")) is None


def test_a_numpy_that_torch_cannot_use_is_one_sentence(capsys):
    """torch 2.2 was built for NumPy 1, and pyproject allows both it and NumPy 2, which a fresh
    `pip install byol torch==2.2.2` takes: pretraining ended in torch's traceback, 'Numpy is not available'."""
    import numpy
    import torch
    assert say(RuntimeError("Numpy is not available")) == 2
    assert capsys.readouterr().err == (f"byol: error: torch {torch.__version__} cannot use NumPy {numpy.__version__} "
                                       "(torch before 2.3 was built for NumPy 1); pip install 'numpy<2', or torch "
                                       "2.3 or later\n")
    assert say(RuntimeError("Numpy is not available for this")) is None  # another error: a bug's traceback


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG])
def test_whatever_the_storage_refused_is_said_as_a_full_disk_is(capsys, code):
    """A quota (EDQUOT), a read-only file system, a file-size limit: the same sentence as a full disk, with
    what to do (a mutation audit: the quota's was said as a path to check, and its thread's traceback shown)."""
    assert say(OSError(code, os.strerror(code), "/runs/x/metrics.jsonl")) == 2
    assert capsys.readouterr().err == (
        f"byol: error: could not write /runs/x/metrics.jsonl ({os.strerror(code)}); make room, or choose a writable "
        "place, and run the command again (a pretraining run that wrote a checkpoint goes on from it with --resume)\n")
    said = []
    quiet_storage_errors_of_threads(said.append)(SimpleNamespace(exc_value=OSError(code, os.strerror(code))))
    assert said == []  # the writer raises it again in the main thread, where it is said


def test_a_full_disk_s_error_that_names_a_file_descriptor_says_the_disk_not_a_traceback(capsys):
    """An OSError's filename may be a file descriptor's number (os.truncate(fd), os.stat(fd)): not a path to name
    (a mutation audit: os.fsdecode(5) raised a TypeError in the error's own sentence, untested)."""
    assert say(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), 5)) == 2
    assert capsys.readouterr().err.startswith(f"byol: error: could not write to the disk ({os.strerror(errno.ENOSPC)})")
    assert say(OSError(errno.EIO, os.strerror(errno.EIO), 5)) == 2
    assert capsys.readouterr().err.startswith(f"byol: error: an input/output error ({os.strerror(errno.EIO)}) named "
                                              "no file: ")


def test_a_thread_s_other_errors_keep_their_traceback():
    said = []
    hook = quiet_storage_errors_of_threads(said.append)
    errors = [OSError(errno.EACCES, "Permission denied"), OSError(errno.ENOENT, "No such file"), ValueError("a bug")]
    for e in errors:
        hook(SimpleNamespace(exc_value=e))
    assert [args.exc_value for args in said] == errors


@pytest.mark.parametrize("torch_says", [
    "CUDA error: out of memory",
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate "
    "68719476736 bytes. Error code 12 (Cannot allocate memory)"])
def test_an_allocation_torch_reports_as_a_plain_runtime_error_is_a_batch_too_big(capsys, torch_says):
    """torch reports some allocation failures as a plain RuntimeError, not its OutOfMemoryError (a mutation
    audit: the "out of memory" one fell through to a traceback, untested)."""
    assert say(RuntimeError(torch_says)) == 2
    assert capsys.readouterr().err.startswith("byol: error: the batch does not fit in memory; lower train.batch_size")
    assert say(RuntimeError("a bug of byol's")) is None


@pytest.mark.parametrize("rank", ["", "worker-3"])
def test_a_rank_variable_that_is_no_number_is_rank_0_not_a_traceback(monkeypatch, capsys, rank):
    """RANK set by something other than torchrun (a mutation audit: its ValueError's branch was untested): the
    error is still said, as by rank 0."""
    monkeypatch.setenv("RANK", rank)
    assert say(ConfigError("train.epochs must be >= 1")) == 2
    assert capsys.readouterr().err == "byol: error: train.epochs must be >= 1\n"


@pytest.mark.parametrize("world", [None, "1"])
def test_a_rank_variable_outside_torchrun_is_one_process_that_says_its_errors(monkeypatch, capsys, world):
    """A Slurm job script that exports RANK=$SLURM_PROCID for its own launcher, then runs byol as one process (a
    user test: a bad setting was exit code 2 and not a word, as if another rank would say it)."""
    monkeypatch.setenv("RANK", "1")
    if world is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world)
    say_error(ConfigError("unknown config key 'train.bogus'"), everywhere=False)
    assert say(ConfigError("train.epochs must be >= 1")) == 2
    assert capsys.readouterr().err == ("byol: error: unknown config key 'train.bogus'\n"
                                       "byol: error: train.epochs must be >= 1\n")


@pytest.mark.parametrize("world", ["", "0", "abc"])
def test_a_rank_variable_beside_a_world_size_that_is_no_count_is_one_process_that_says_it(monkeypatch, capsys, world):
    """A RANK=1 beside a WORLD_SIZE torchrun never sets (empty, 0, not a number): distributed.init refuses it as
    one process would, and this process says so (a mutation audit: 'abc' and '0' were taken for torchrun's, rank 1,
    so its ConfigError was exit code 2 and not a word). Beside WORLD_SIZE=2 it is torchrun's rank 1, which leaves
    such an error to rank 0."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", world)
    assert launch_rank() == 0
    assert say(ConfigError(f"the environment variable WORLD_SIZE is {world!r}")) == 2
    assert capsys.readouterr().err == f"byol: error: the environment variable WORLD_SIZE is {world!r}\n"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launch_rank() == 1


def test_python_s_memory_error_is_a_batch_too_big(capsys):
    """Python's MemoryError (NumPy's allocations raise it, not torch's RuntimeError; a mutation audit: untested)."""
    assert say(MemoryError()) == 2
    assert capsys.readouterr().err.startswith("byol: error: the batch does not fit in memory; lower train.batch_size")


def test_an_input_output_error_is_one_sentence_naming_the_file_not_a_traceback(capsys):
    """EIO (a failing disk, a network file system gone under a write) names no file where a write or a sync
    met it, and was a traceback, exit 1, in the run and in TensorBoard's writer thread (a helper's review). A read
    may meet it too (a data file's): not said as a write."""
    assert say(OSError(errno.EIO, os.strerror(errno.EIO), "/runs/x/.last.pt.tmp123")) == 2
    assert capsys.readouterr().err == (
        f"byol: error: the disk failed under /runs/x/last.pt ({os.strerror(errno.EIO)}); check that disk (or its "
        "network file system) and run the command again (a pretraining run that wrote a checkpoint goes on from it "
        "with --resume)\n")
    assert say(OSError(errno.EIO, os.strerror(errno.EIO))) == 2
    assert capsys.readouterr().err.startswith("byol: error: an input/output error (")
    said = []
    quiet_storage_errors_of_threads(said.append)(SimpleNamespace(exc_value=OSError(errno.EIO, "Input/output error")))
    assert said == []


def test_an_input_output_error_that_names_no_file_is_not_said_as_the_disk_s_alone(capsys):
    """EIO is also a terminal's that hung up (print or tqdm to the pty of an ssh session closed under a run, its
    stderr sent to a file): "the disk failed under a file; check that disk" was false there (a review)."""
    assert say(OSError(errno.EIO, os.strerror(errno.EIO))) == 2
    said = capsys.readouterr().err
    assert "the disk failed" not in said and "or the terminal gone (an ssh session closed" in said


def test_a_thread_or_memory_the_system_refuses_is_one_sentence(capsys):
    """A user test: a resume under ``ulimit -v 4000000`` ended in TensorBoard's traceback, "can't start new
    thread" (the stacks of new threads no longer fit in the address space); a fork refused for memory (ENOMEM, no
    file) was a traceback too. Each is one sentence, exit 2; another RuntimeError stays a bug's traceback."""
    assert say(RuntimeError("can't start new thread")) == 2
    assert capsys.readouterr().err == (
        "byol: error: the system would start no more threads for byol: a limit on this process's address space "
        "(ulimit -v, a scheduler's h_vmem) or on its threads (ulimit -u) is reached; raise it, or lower "
        "data.workers; a pretraining run that wrote a checkpoint goes on from it with --resume\n")
    assert say(OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))) == 2
    assert capsys.readouterr().err == (
        "byol: error: the system refused byol memory (Cannot allocate memory), as where a limit on this process's "
        "address space (ulimit -v, a scheduler's h_vmem) is reached or the machine's memory is full; raise the limit, "
        "or lower data.workers (0: decode in this process), train.batch_size or data.image_size; a pretraining run "
        "that wrote a checkpoint goes on from it with --resume\n")
    assert say(OSError(errno.ENOMEM, os.strerror(errno.ENOMEM), "/data/x.jpg")) == 2  # a file's: said with it
    assert "/data/x.jpg" in capsys.readouterr().err
    assert say(RuntimeError("can't start new process")) is None
    assert say(OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))) is None


def test_errors_said_by_kind_not_by_their_words(capsys):
    """A mutation audit, each untested: torch's OutOfMemoryError is a batch too big whatever its words, a plain
    FloatingPointError (NumPy's, under errstate) is a user's error, EFAULT under a path a bug's traceback, and
    the out-of-memory sentence names every size the user can lower."""
    assert say(torch.cuda.OutOfMemoryError("Tried to allocate 2.00 GiB")) == 2
    assert capsys.readouterr().err == (
        "byol: error: the batch does not fit in memory; lower train.batch_size (to half, say), or data.image_size or "
        "the model's size (model.width, model.projection_hidden_size)\n")
    assert say(FloatingPointError("overflow encountered in multiply")) == 2
    assert capsys.readouterr().err == "byol: error: overflow encountered in multiply\n"
    assert _file_error(OSError(errno.EFAULT, os.strerror(errno.EFAULT), "/runs/x/last.pt")) is None


def test_under_torchrun_without_its_store_a_config_error_is_rank_0_s_and_another_is_each_rank_s(monkeypatch, capsys):
    """A mutation audit: a config error, every process's alike, is said by rank 0 alone; an error a process may meet
    alone (data, a checkpoint) is said by it too, with its rank (untested where torchrun's store is not there)."""
    monkeypatch.setattr(error_lines, "launch_rank", lambda: 1)
    assert say(ConfigError("unknown config key 'train.bogus'")) == 2
    assert capsys.readouterr().err == ""
    assert say(ByolError("/data/x.jpg is not an image")) == 2
    assert capsys.readouterr().err == "byol: error (rank 1): /data/x.jpg is not an image\n"
