import errno
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from byol import checkpoint
from byol.checkpoint import (CheckpointError, load_checkpoint, load_model_state, remove_torn_temporaries,
                             save_checkpoint, unwrap, write_files_atomically, write_text_atomically)
from conftest import finished_pid


def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def test_save_is_complete_and_atomic(tmp_path):
    model, opt = make()
    model(torch.randn(8, 3)).sum().backward()
    opt.step()
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(path, model, opt, step=7, config={"train": {"seed": 1}}, generator=torch.Generator())
    assert os.listdir(path.parent) == ["last.pt"]  # no temporary file left behind
    state = load_checkpoint(path)
    assert state["step"] == 7 and state["config"] == {"train": {"seed": 1}}
    assert {"model", "optimizer", "scaler", "rng", "versions"} <= state.keys()
    assert state["optimizer"]["state"]  # momentum buffers are saved
    other, _ = make()
    load_model_state(other, state["model"])
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.skipif(checkpoint.fcntl is None, reason="no file locks here")
def test_torn_temporaries_are_removed_and_those_being_written_kept(tmp_path):
    write_text_atomically(tmp_path / "config.yaml", "a: 1\n")
    assert os.listdir(tmp_path) == ["config.yaml"]
    dead = finished_pid()
    writing = tmp_path / f".epoch_0003.pt.tmp{dead}"  # named after a dead process, yet locked by a live one
    writing.write_text("half")
    writer = subprocess.Popen([sys.executable, "-c", f"import fcntl, sys, time\nf = open({str(writing)!r}, 'r+b')\n"
                               "fcntl.flock(f, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "locked\n"
        torn = [tmp_path / f".last.pt.tmp{dead}", tmp_path / f".config.yaml.tmp{os.getpid()}",  # a container's
                tmp_path / f".epoch_0002.pt.tmp{os.getppid()}"]  # pid again; a pid now another process's
        kept = [writing, tmp_path / ".notes.tmp1", tmp_path / ".last.pt.tmpnotapid", tmp_path / ".last.pt.tmp\u00b2"]
        for path in (*torn, *kept[1:]):
            path.write_text("half")
        assert sorted(remove_torn_temporaries(tmp_path, "*.pt", "config.yaml")) == sorted(torn)
        assert sorted(os.listdir(tmp_path)) == sorted(["config.yaml", *(p.name for p in kept)])
    finally:
        writer.kill()
        writer.wait()
    assert remove_torn_temporaries(tmp_path, "*.pt") == [writing]  # its writer is gone
    assert remove_torn_temporaries(tmp_path / "missing", "*.pt") == []


def test_a_later_write_of_a_file_removes_what_a_killed_writer_of_it_left(tmp_path):
    """A user test: a kill -9 in the middle of byol eval's JSON left .NAME.json.tmpPID, and a later eval
    did not remove it (a new run removes its own files' only). Any file written whole does now."""
    dead = finished_pid()
    torn = [tmp_path / f".r[1].json.tmp{dead}", tmp_path / f".e.npy.tmp{dead}"]
    kept = [tmp_path / f".r1.json.tmp{dead}", tmp_path / f".other.json.tmp{dead}"]  # another file's
    for path in (*torn, *kept):
        path.write_text("half")
    write_text_atomically(tmp_path / "r[1].json", "{}\n")  # a name that is a glob pattern, read as a name
    (tmp_path / "sub").mkdir()
    write_files_atomically({tmp_path / "e.npy": lambda tmp: tmp.write_bytes(b"x"), tmp_path / "sub" / "f": b"y"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["r[1].json", "e.npy", "sub", *(p.name for p in kept)])


@pytest.mark.skipif(checkpoint.fcntl is None, reason="no file locks here")
def test_a_temporary_removed_as_torn_before_its_writer_locked_it_is_made_again(tmp_path, monkeypatch):
    """From a review: a cleaner that took a new temporary's lock in the moment between its creation and
    its writer's lock removed it; written through its path, it was made anew, unlocked, for the next
    cleaner to remove. The writer now makes it again, and locks that."""
    real, cleaned = checkpoint.fcntl.flock, []

    class Flock:  # fcntl, with another start's cleaner at work just before the writer's lock
        LOCK_EX, LOCK_NB = real.__self__.LOCK_EX, real.__self__.LOCK_NB

        @staticmethod
        def flock(f, how):
            if how == Flock.LOCK_EX and not cleaned:
                cleaned.extend(remove_torn_temporaries(tmp_path, "r.json"))
            return real(f, how)

    def write(tmp):  # through its path, as torch.save; and a cleaner at work again, which must keep it
        tmp.write_text("{}\n")
        assert remove_torn_temporaries(tmp_path, "r.json") == []  # before: the file the path made anew, unlocked

    monkeypatch.setattr(checkpoint, "fcntl", Flock)
    write_files_atomically({tmp_path / "r.json": write})
    assert cleaned == [tmp_path / f".r.json.tmp{os.getpid()}"]
    assert os.listdir(tmp_path) == ["r.json"] and (tmp_path / "r.json").read_text() == "{}\n"


def test_a_torn_temporary_that_cannot_be_removed_keeps_no_write_from_going_on(tmp_path, monkeypatch):
    """From a review: another user's torn temporary in a shared folder made every later write of that
    file fail, once each write removed its own file's torn temporaries first."""
    stuck = tmp_path / f".r.json.tmp{finished_pid()}"
    stuck.write_text("half")
    unlink = Path.unlink

    def not_ours(path, missing_ok=False):
        if path == stuck:
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
        return unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", not_ours)
    assert remove_torn_temporaries(tmp_path, "r.json") == []
    write_text_atomically(tmp_path / "r.json", "{}\n")
    assert sorted(os.listdir(tmp_path)) == sorted(["r.json", stuck.name])


def test_torch_saves_iostream_error_at_the_end_of_a_full_disk_is_a_failed_write():
    """From a review: torch.save's writer meeting a full disk in its last bytes says "basic_ios::clear:
    iostream error", which eval and embed then showed as a traceback."""
    from byol.checkpoint import write_failed
    assert write_failed(RuntimeError("basic_ios::clear: iostream error"))
    assert not write_failed(RuntimeError("a bug"))


def test_without_file_locks_the_writers_pid_tells(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "fcntl", None)
    save_checkpoint(tmp_path / "last.pt", *make(), step=1, config={})
    assert os.listdir(tmp_path) == ["last.pt"]
    torn = [tmp_path / f".last.pt.tmp{finished_pid()}", tmp_path / f".last.pt.tmp{os.getpid()}"]
    kept = [tmp_path / f".epoch_0001.pt.tmp{os.getppid()}", tmp_path / ".last.pt.tmp9999999999"]
    for path in (*torn, *kept):
        path.write_text("half")
    assert sorted(remove_torn_temporaries(tmp_path, "*.pt")) == sorted(torn)
    assert sorted(os.listdir(tmp_path)) == sorted(["last.pt", *(p.name for p in kept)])


def test_unwrap_removes_compile_wrapper_prefixes():
    model, _ = make()
    compiled = torch.compile(model)
    assert unwrap(compiled) is model
    assert not any(k.startswith("_orig_mod") for k in unwrap(compiled).state_dict())


def test_mismatch_is_a_clear_error(tmp_path):
    model, opt = make()
    save_checkpoint(tmp_path / "a.pt", model, opt, 0, {})
    wrong = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 5), nn.Linear(5, 5))
    with pytest.raises(CheckpointError) as e:
        load_model_state(wrong, load_checkpoint(tmp_path / "a.pt")["model"])
    # Counted, with two examples each, not every key spelled out.
    assert str(e.value) == ("checkpoint does not match this model (different backbone, width or projector sizes?): "
                            "4 keys missing (e.g. 2.weight, 2.bias); 3 keys it does not have (e.g. 1.running_mean, "
                            "1.running_var); 4 of another shape (e.g. 0.weight (4, 3) vs (5, 3), 0.bias (4,) vs (5,))")


def test_a_folder_given_as_the_checkpoint_names_the_checkpoint_in_it(tmp_path):
    """Given a run's checkpoints/ folder, the message suggested checkpoints/checkpoints/last.pt."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "encoder.pt").write_bytes(b"")
    last = run / "checkpoints" / "last.pt"
    export = tmp_path / "export"
    for folder, named in ((run, last), (run / "checkpoints", last), (export, export / "encoder.pt")):
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(folder)
        assert str(e.value) == f"{folder} is a directory; give a checkpoint file in it, such as {named}"
    with pytest.raises(CheckpointError, match=r"is a directory; give a checkpoint file in it \(e.g. .*last.pt, or an "
                                              r"exported encoder.pt\)$"):
        load_checkpoint(tmp_path / "export" / "..")  # none in it


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path, fault_table):
    with pytest.raises(CheckpointError, match=f"{tmp_path} is a directory; give a checkpoint file in it"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.pt").write_text("train:\n  epochs: 2\n")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "config.pt")
    torch.jit.script(nn.Linear(3, 4)).save(str(tmp_path / "encoder_torchscript.pt"))
    with pytest.raises(CheckpointError, match="is a TorchScript module .* load it with torch.jit.load"):
        load_checkpoint(tmp_path / "encoder_torchscript.pt")
    fault_table("a folder, a text file or a TorchScript export given as the checkpoint",
                "CheckpointError: one sentence saying what it is and what to give instead")


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"),
                                     RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")])
def test_a_checkpoint_that_cannot_be_written_is_one_sentence_and_keeps_the_previous(tmp_path, monkeypatch, failure,
                                                                                   fault_table):
    model, opt = make()
    path = tmp_path / "last.pt"
    save_checkpoint(path, model, opt, 1, {})
    before = path.read_bytes()

    def full_disk(state, f):  # what torch.save meets on a full disk: a partial file, then an error
        Path(f).write_bytes(b"PK partial")
        raise failure

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"could not write the checkpoint .*last\.pt \(.*MiB free on that "
                                              r"disk\); the previous one is kept"):
        save_checkpoint(path, model, opt, 2, {})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["last.pt"]  # no partial file left
    fault_table(f"checkpoint write fails ({type(failure).__name__}: {failure}, simulated)",
                "CheckpointError: one sentence with the free space; the previous checkpoint kept, no partial file")


def test_an_error_that_is_not_a_failed_write_is_not_called_one(tmp_path, monkeypatch):
    model, opt = make()

    def broken(state, f):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="illegal memory access") as e:
        save_checkpoint(tmp_path / "last.pt", model, opt, 1, {})
    assert type(e.value) is RuntimeError  # itself, not a CheckpointError (a RuntimeError too) about writing


def test_truncated_and_garbage_files_are_clear_errors(tmp_path, fault_table):
    model, opt = make()
    save_checkpoint(tmp_path / "a.pt", model, opt, 0, {})
    data = (tmp_path / "a.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a byol checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    fault_table("checkpoint truncated to half its size, or empty", "CheckpointError: one sentence, nothing loaded")
    fault_table("file that is not a byol checkpoint", "CheckpointError: one sentence, nothing loaded")


def _damaged(path: Path, out: Path, find: bytes) -> Path:
    """A copy of ``path`` with the first byte of ``find`` in it flipped to one that is no UTF-8's first byte."""
    data = bytearray(path.read_bytes())
    data[data.index(find)] ^= 0xF0
    out.write_bytes(bytes(data))
    return out


def test_a_damaged_byte_is_a_corrupt_checkpoint_not_a_traceback_nor_a_silent_load(tmp_path, fault_table):
    """A user test flipped single bytes of a checkpoint: in its pickle, a UnicodeDecodeError traceback or 'holds objects
    other than tensors' (an 'Unsupported operand'); in a tensor, a silent load of the wrong weights."""
    model, opt = make()
    with torch.no_grad():
        model[0].weight.fill_(1234.5)
    save_checkpoint(tmp_path / "a.pt", model, opt, 0, {})
    marker = torch.tensor(1234.5).numpy().tobytes() * 4
    crc = "corrupt or truncated and cannot be read (its bytes do not match their CRC-32)"
    for find in (marker, b"weight"):  # a tensor's bytes, a string in the pickle
        with pytest.raises(CheckpointError, match=re.escape(crc)):
            load_checkpoint(_damaged(tmp_path / "a.pt", tmp_path / "bad.pt", find))
    # Without CRC-32s (torch.save with them off), the pickle's failures are still named as corruption.
    torch.serialization.set_crc32_options(False)
    try:
        save_checkpoint(tmp_path / "plain.pt", model, opt, 0, {})
    finally:
        torch.serialization.set_crc32_options(True)
    load_checkpoint(tmp_path / "plain.pt")  # (its records' CRC-32s are 0: not checked)
    undecodable = "corrupt or truncated and cannot be read (UnicodeDecodeError)"
    with pytest.raises(CheckpointError, match=re.escape(undecodable)):
        load_checkpoint(_damaged(tmp_path / "plain.pt", tmp_path / "bad.pt", b"weight"))
    data = bytearray((tmp_path / "plain.pt").read_bytes())
    at = data.index(b"data.pkl") + 200  # past the record's name and header: inside the pickle's opcodes
    data[at:at + 50] = bytes(50)
    (tmp_path / "zeros.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt or truncated and cannot be read"):
        load_checkpoint(tmp_path / "zeros.pt")
    fault_table("checkpoint with one byte flipped (in a tensor, or in its pickle), or 50 bytes of its pickle zeroed",
                "CheckpointError: one sentence saying it is corrupt (a CRC-32 mismatch, where torch.save stored them), "
                "nothing loaded")


class _WritesAFile:
    """Unpickling this calls ``open(path, "w")``: what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


class _RunsACommand:
    """Unpickling this calls ``os.system``: torch names such a global in lower case ('unsupported GLOBAL')."""

    def __reduce__(self):
        return (os.system, ("true",))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path, fault_table):
    marker = tmp_path / "pwned.txt"
    model, opt = make()
    state = {"model": model.state_dict(), "payload": _WritesAFile(marker)}
    torch.save(state, tmp_path / "evil.pt")
    assert not marker.exists()
    # Sanity: the payload is real; an unsafe load would create the file.
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump(_WritesAFile(tmp_path / "proof.txt"), f)
    with open(tmp_path / "plain.pkl", "rb") as f:
        pickle.load(f).close()
    assert (tmp_path / "proof.txt").exists()
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    torch.save({"model": model.state_dict(), "payload": _RunsACommand()}, tmp_path / "system.pt")
    with pytest.raises(CheckpointError, match="refused: it holds objects other than tensors"):  # not 'corrupt'
        load_checkpoint(tmp_path / "system.pt")
    fault_table("checkpoint carrying a pickled payload that writes a file when unpickled",
                "refused by weights_only=True with one sentence; the file is never written")


def test_a_failed_checkpoint_write_names_a_file_size_limit_where_the_process_has_one(monkeypatch):
    """A user test under `prlimit --fsize`: torch.save's writer failed as on a full disk, and only that was said."""
    import resource
    from byol.checkpoint import write_failure
    torn = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 499904 vs 499792")
    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert write_failure(torn).endswith("; is the disk full?")
    monkeypatch.setattr(resource, "getrlimit", lambda which: (500_000, resource.RLIM_INFINITY))
    assert write_failure(torn).endswith("; is the disk full, or this process's file-size limit (500,000 bytes) "
                                        "reached?")
