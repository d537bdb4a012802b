"""Files written whole or not at all, and what killed writers left."""

import errno
import os
import subprocess
import sys
import traceback
import types
from pathlib import Path

import pytest

from byol.config import Config, config_text
from byol import files
from byol.files import remove_torn_temporaries, write_files_atomically, write_text_atomically
from conftest import finished_pid


def refuse_to_remove(monkeypatch, refused, code=errno.EACCES, said="[WinError 32] being used by another process"):
    """Path.unlink refusing the files ``refused(path)`` picks, as another user's file or, on Windows, one
    another process holds open is refused."""
    unlink = Path.unlink

    def refusing(path, missing_ok=False):
        if refused(path):
            raise PermissionError(code, said, str(path))
        return unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refusing)


@pytest.mark.skipif(files.fcntl is None, reason="no file locks here")
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
        writer.stdout.close()  # (else a ResourceWarning, once collected)
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


@pytest.mark.skipif(files.fcntl is None, reason="no file locks here")
def test_a_temporary_removed_as_torn_before_its_writer_locked_it_is_made_again(tmp_path, monkeypatch):
    """From a review: a cleaner that took a new temporary's lock in the moment between its creation and
    its writer's lock removed it; written through its path, it was made anew, unlocked, for the next
    cleaner to remove. The writer now makes it again, and locks that."""
    real, cleaned = files.fcntl.flock, []

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

    monkeypatch.setattr(files, "fcntl", Flock)
    write_files_atomically({tmp_path / "r.json": write})
    assert cleaned == [tmp_path / f".r.json.tmp{os.getpid()}"]
    assert os.listdir(tmp_path) == ["r.json"] and (tmp_path / "r.json").read_text() == "{}\n"


def test_a_torn_temporary_that_cannot_be_removed_keeps_no_write_from_going_on(tmp_path, monkeypatch):
    """From a review: another user's torn temporary in a shared folder made every later write of that
    file fail, once each write removed its own file's torn temporaries first."""
    stuck = tmp_path / f".r.json.tmp{finished_pid()}"
    stuck.write_text("half")
    refuse_to_remove(monkeypatch, lambda path: path == stuck, errno.EPERM, "Operation not permitted")
    assert remove_torn_temporaries(tmp_path, "r.json") == []
    write_text_atomically(tmp_path / "r.json", "{}\n")
    assert sorted(os.listdir(tmp_path)) == sorted(["r.json", stuck.name])


def test_torch_saves_iostream_error_at_the_end_of_a_full_disk_is_a_failed_write():
    """From a review: torch.save's writer meeting a full disk in its last bytes says "basic_ios::clear:
    iostream error", which eval and embed then showed as a traceback."""
    from byol.files import write_failed
    assert write_failed(RuntimeError("basic_ios::clear: iostream error"))
    assert not write_failed(RuntimeError("a bug"))


def test_without_file_locks_the_writers_pid_tells(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "fcntl", None)
    write_text_atomically(tmp_path / "last.pt", "{}\n")  # a checkpoint's write, as torch.save's: the same temporary
    assert os.listdir(tmp_path) == ["last.pt"]
    torn = [tmp_path / f".last.pt.tmp{finished_pid()}", tmp_path / f".last.pt.tmp{os.getpid()}"]
    kept = [tmp_path / f".epoch_0001.pt.tmp{os.getppid()}", tmp_path / ".last.pt.tmp9999999999"]
    for path in (*torn, *kept):
        path.write_text("half")
    assert sorted(remove_torn_temporaries(tmp_path, "*.pt")) == sorted(torn)
    assert sorted(os.listdir(tmp_path)) == sorted(["last.pt", *(p.name for p in kept)])


def test_a_failed_checkpoint_write_names_a_file_size_limit_where_the_process_has_one(monkeypatch):
    """A user test under `prlimit --fsize`: torch.save's writer failed as on a full disk, and only that was said."""
    import resource
    from byol.files import write_failure
    torn = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 499904 vs 499792")
    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert write_failure(torn) == "torch.save's writer failed; is the disk full?"  # (not torch's C++ internals)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (500_000, resource.RLIM_INFINITY))
    assert write_failure(torn).endswith("; is the disk full, or this process's file-size limit (500,000 bytes) "
                                        "reached?")


def _refusing_open_files(real):
    """os.replace as Windows does it: a file that a handle holds open (Python's open() does not share
    it for deletion) is neither renamed nor replaced."""
    def replace(src, dst):
        held = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                held.add(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
        if any(os.path.realpath(p) in held for p in (src, dst)):
            raise PermissionError(errno.EACCES, "[WinError 32] The process cannot access the file because it is "
                                                "being used by another process", str(src))
        return real(src, dst)
    return replace


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to see which files are open")
def test_without_file_locks_a_temporary_is_closed_before_it_is_renamed(tmp_path, monkeypatch):
    """From a test imitating Windows: the temporary was renamed while still open, which Windows refuses
    ("[WinError 32]"): every write failed, config.yaml the first, so no pretrain could start there."""
    monkeypatch.setattr(files, "fcntl", None)
    monkeypatch.setattr(os, "replace", _refusing_open_files(os.replace))
    write_text_atomically(tmp_path / "config.yaml", "a: 1\n")
    write_files_atomically({tmp_path / "last.pt": lambda tmp: Path(tmp).write_bytes(b"saved")})  # torch.save's way
    write_text_atomically(tmp_path / "config.yaml", "a: 2\n")  # over an existing file
    assert (tmp_path / "config.yaml").read_text() == "a: 2\n" and (tmp_path / "last.pt").read_bytes() == b"saved"
    assert sorted(os.listdir(tmp_path)) == ["config.yaml", "last.pt"]


def test_on_windows_a_torn_temporary_is_removed_unless_held_open_and_no_process_is_signalled(tmp_path, monkeypatch):
    """From reading the code for Windows: the writer's pid was probed with os.kill(pid, 0), which there sends
    a Ctrl-C (CTRL_C_EVENT is 0) to a console's processes, not a question; Windows itself keeps a temporary
    that its writer holds open from being removed."""
    monkeypatch.setattr(files, "fcntl", None)
    monkeypatch.setattr(files, "_WINDOWS", True, raising=False)

    def no_signals(pid, signum):
        raise AssertionError(f"os.kill({pid}, {signum}) on Windows")

    monkeypatch.setattr(os, "kill", no_signals)
    torn = tmp_path / f".last.pt.tmp{os.getppid()}"  # a live pid, not this run's writer: its file is closed
    written = tmp_path / f".epoch_0001.pt.tmp{os.getppid()}"  # held open by its writer
    for path in (torn, written):
        path.write_text("half")
    refuse_to_remove(monkeypatch, lambda path: path == written)
    assert remove_torn_temporaries(tmp_path, "*.pt") == [torn]
    assert os.listdir(tmp_path) == [written.name]


def test_on_windows_a_file_that_another_process_reads_is_replaced_once_it_lets_go(tmp_path, monkeypatch):
    """From reading the code for Windows, which replaces no file held open: `byol eval` reading last.pt at
    the moment the run replaced it ended the run ("could not write the checkpoint ... Permission denied")."""
    monkeypatch.setattr(files, "_WINDOWS", True, raising=False)
    monkeypatch.setattr(files, "time", types.SimpleNamespace(sleep=lambda s: None), raising=False)
    real, refused = os.replace, []

    def read_elsewhere(src, dst):
        if len(refused) < 3:
            refused.append(dst)
            raise PermissionError(errno.EACCES, "[WinError 5] Access is denied", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", read_elsewhere)
    write_text_atomically(tmp_path / "last.pt", "new")
    assert (tmp_path / "last.pt").read_text() == "new" and os.listdir(tmp_path) == ["last.pt"] and len(refused) == 3
    monkeypatch.setattr(files, "_WINDOWS", False)  # elsewhere a refusal is one at once (a read-only folder)
    refused.clear()
    with pytest.raises(PermissionError):
        write_text_atomically(tmp_path / "last.pt", "newer")
    assert len(refused) == 1 and (tmp_path / "last.pt").read_text() == "new"


def test_a_temporary_that_cannot_be_removed_after_a_failed_write_leaves_the_write_s_error(tmp_path, monkeypatch):
    """Windows removes no file another process holds open (a virus scanner reading the new temporary): the
    PermissionError of removing it replaced the full disk that ended the write, which the user was then not told."""
    refuse_to_remove(monkeypatch, lambda path: path.name.startswith(".last.pt.tmp"))

    def full_disk(tmp):
        Path(tmp).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as raised:
        write_files_atomically({tmp_path / "last.pt": full_disk})
    assert raised.value.errno == errno.ENOSPC and not (tmp_path / "last.pt").exists()


def test_a_link_planted_where_a_temporary_goes_is_not_written_through(tmp_path):
    """A user test: a symbolic link at a temporary's name (another user's, in a shared folder such as /tmp;
    the name is the writer's pid) had the write go into the file it pointed to, outside the folder."""
    precious, shared = tmp_path / "precious.txt", tmp_path / "shared"
    precious.write_text("mine\n")
    shared.mkdir()
    (shared / f".r.json.tmp{os.getpid()}").symlink_to(precious)
    with files.temporary_beside(shared / "r.json") as tmp:
        tmp.write_text("{}\n")
    assert precious.read_text() == "mine\n"
    assert not (shared / "r.json").is_symlink() and (shared / "r.json").read_text() == "{}\n"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_checkpoint_that_is_a_pipe_or_a_link_to_nothing_is_said_as_such(tmp_path):
    """A review: a named pipe (bash's <(cat last.pt)) and a link to a moved checkpoint were each said not to
    exist, which a user can see they do."""
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link.pt").symlink_to(tmp_path / "moved.pt")
    assert files.not_a_file_to_read(tmp_path / "pipe") == (f"checkpoint {tmp_path / 'pipe'} is not a regular file "
                                                           "(a pipe, a socket or a device); give the checkpoint's file")
    assert files.not_a_file_to_read(tmp_path / "link.pt") == (f"checkpoint {tmp_path / 'link.pt'} is a link to "
                                                              f"{tmp_path / 'moved.pt'}, which does not exist")
    assert files.not_a_file_to_read(tmp_path / "none.pt") == f"checkpoint {tmp_path / 'none.pt'} does not exist"
    (tmp_path / "moved.pt").touch()
    assert files.not_a_file_to_read(tmp_path / "link.pt") is None


def test_a_checkpoint_given_as_standard_input_is_said_to_be_unsupported(tmp_path, monkeypatch):
    """``byol eval knn -`` was said not to exist, where a user means standard input; a file named - is read."""
    monkeypatch.chdir(tmp_path)
    assert files.not_a_file_to_read("-") == ("reading a checkpoint from standard input (-) is not supported; give "
                                             "the path of its .pt file")
    (tmp_path / "-").touch()
    assert files.not_a_file_to_read("-") is None


def test_a_sync_that_fails_leaves_every_old_file_of_a_write_of_several(tmp_path, monkeypatch):
    """A review: each file was synced and renamed in turn, so a sync that failed (ENOSPC or a quota on NFS, which
    says so at the sync, not at the write) left an export's export.json new and its encoder.pt old."""
    old = {tmp_path / "encoder.pt": b"old weights", tmp_path / "export.json": b"old info"}
    for path, data in old.items():
        path.write_bytes(data)
    real, synced = os.fsync, []

    def full_at_the_second(fd):
        synced.append(fd)
        if len(synced) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", full_at_the_second)
    with pytest.raises(OSError):
        write_files_atomically({path: b"new" for path in old})
    assert {path: path.read_bytes() for path in old} == old and sorted(os.listdir(tmp_path)) == ["encoder.pt",
                                                                                                 "export.json"]


def test_a_temporary_is_on_the_disk_before_it_is_renamed_over_its_file(tmp_path, monkeypatch):
    """A mutation audit: dropping temporary_beside's sync (a checkpoint's write) survived every test. Renamed
    unsynced, a power cut can leave last.pt empty where the old one was whole."""
    real_fsync, real_replace, events = os.fsync, os.replace, []
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("sync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda src, dst: events.append("rename") or real_replace(src, dst))
    with files.temporary_beside(tmp_path / "last.pt") as tmp:
        tmp.write_bytes(b"saved")
    assert events == ["sync", "rename"] and (tmp_path / "last.pt").read_bytes() == b"saved"


def test_on_windows_a_file_held_open_for_good_is_an_error_not_a_write_said_done(tmp_path, monkeypatch):
    """A mutation audit: the tries running out without raising survived; the write then said nothing, its
    temporary removed and the old file kept, as if the checkpoint were saved."""
    monkeypatch.setattr(files, "_WINDOWS", True, raising=False)
    monkeypatch.setattr(files, "time", types.SimpleNamespace(sleep=lambda s: None), raising=False)
    refused = []

    def held_open(src, dst):
        refused.append(dst)
        raise PermissionError(errno.EACCES, "[WinError 5] Access is denied", str(dst))

    (tmp_path / "last.pt").write_text("old")
    monkeypatch.setattr(os, "replace", held_open)
    with pytest.raises(PermissionError):
        write_text_atomically(tmp_path / "last.pt", "new")
    assert len(refused) == 25 and os.listdir(tmp_path) == ["last.pt"]


def test_a_run_with_no_checkpoint_yet_is_said_as_such(tmp_path):
    """A user test: ``byol embed RUN`` on a run still in its first epoch was told to give RUN/checkpoints/last.pt,
    which was then said not to exist, and RUN/checkpoints/ (emptied) to give RUN/checkpoints/checkpoints/last.pt."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config_text(Config()))
    said = f"the run in {run} has written none (it writes checkpoints/last.pt at the end of its first epoch, or when " \
           "stopped); give it once it is there"
    assert files.not_a_file_to_read(run) == f"{run} holds no checkpoint yet: {said}"
    last = run / "checkpoints" / "last.pt"
    assert files.not_a_file_to_read(last) == f"checkpoint {last} does not exist: {said}"
    (run / "checkpoints").mkdir()
    assert files.not_a_file_to_read(run / "checkpoints") == f"{run / 'checkpoints'} holds no checkpoint yet: {said}"
    (run / "checkpoints" / "epoch_0001.pt").touch()  # (one there: the message names none it lacks)
    assert files.not_a_file_to_read(last) == f"checkpoint {last} does not exist"
    (run / "checkpoints" / "epoch_0001.pt").unlink()
    (run / "checkpoints").rmdir()
    (run / "config.yaml").write_text("train:\n  epochs: 2\n")  # a config.yaml byol did not write: no run's
    assert files.not_a_file_to_read(run) == (f"{run} is a directory; give a checkpoint file in it (e.g. {last}, or an "
                                             "exported encoder.pt)")
    (tmp_path / "checkpoints").mkdir()
    assert files.not_a_file_to_read(tmp_path / "checkpoints") == (
        f"{tmp_path / 'checkpoints'} is a directory; give a checkpoint file in it (e.g. "
        f"{tmp_path / 'checkpoints' / 'last.pt'}, or an exported encoder.pt)")


@pytest.mark.parametrize("where", ["write", "sync"])
def test_a_full_disk_under_a_write_names_the_file_it_was_writing(tmp_path, monkeypatch, where):
    """A write's or a sync's ENOSPC names no file: config.yaml's at a run's start was said as "could not write
    to the disk" (a helper's review). The old file is kept, and no temporary left."""
    (tmp_path / "config.yaml").write_text("old")

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full) if where == "sync" else monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OSError) as e:
        write_text_atomically(tmp_path / "config.yaml", "new")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "config.yaml")
    assert os.listdir(tmp_path) == ["config.yaml"] and (tmp_path / "config.yaml").read_text() == "old"
    with pytest.raises(OSError) as e, files.temporary_beside(tmp_path / "last.pt"):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert e.value.filename == str(tmp_path / "last.pt") and os.listdir(tmp_path) == ["config.yaml"]


def test_naming_keeps_an_error_that_names_a_file_or_has_no_errno_as_it_is(tmp_path):
    """files.naming names the file only in an OSError with an errno and no file (a full disk's); one with no errno
    (PIL's "cannot identify image file", "cannot write mode RGBA as JPEG") keeps its class and its message, and one
    that names a file keeps that file (a mutation audit: both were untested)."""
    class Unidentified(OSError):
        pass

    with pytest.raises(Unidentified, match="^cannot write mode RGBA as JPEG$") as e, files.naming(tmp_path / "a.jpg"):
        raise Unidentified("cannot write mode RGBA as JPEG")
    assert e.value.filename is None
    with pytest.raises(FileNotFoundError) as e, files.naming(tmp_path / "a.jpg"):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(tmp_path / "b"))
    assert e.value.filename == str(tmp_path / "b")
    with pytest.raises(OSError) as e, files.naming(tmp_path / "a.jpg"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert (e.value.errno, e.value.strerror, e.value.filename) == (
        errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "a.jpg"))


def test_naming_keeps_the_error_itself_its_class_and_where_it_came_from(tmp_path):
    """A bug's EBADF (a descriptor used after its close) names no file and keeps its traceback (error_lines'
    _BUG_ERRORS): naming it must not cut that traceback off at files.naming, nor make an OSError of a subclass
    the errno does not give back (a review: it raised a new OSError from None)."""
    class Unreachable(OSError):
        pass

    def sync_of_a_closed_file():
        fd = os.open(os.devnull, os.O_RDONLY)
        os.close(fd)
        os.fsync(fd)

    with pytest.raises(OSError) as e, files.naming(tmp_path / "last.pt"):
        sync_of_a_closed_file()
    assert (e.value.errno, e.value.filename) == (errno.EBADF, str(tmp_path / "last.pt"))
    assert "in sync_of_a_closed_file" in "".join(traceback.format_exception(e.value))
    with pytest.raises(Unreachable) as e, files.naming(tmp_path / "last.pt"):
        raise Unreachable(errno.EIO, os.strerror(errno.EIO))
    assert e.value.filename == str(tmp_path / "last.pt")
