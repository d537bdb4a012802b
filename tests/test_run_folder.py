"""A start of pretraining that fails before its first step leaves the run folder as it found it,
and one start at a time writes a folder."""

import errno
import fcntl
import io
import os
import re
import shutil
import socket
import tempfile

import pytest

import byol.run_folder
from byol.checkpoint import CheckpointError
from byol.metrics import PLOTS
from byol.config import CONFIG_HEADER, Config, ConfigError, save_config
from byol.run_folder import _KEPT, RunFolder, read_warnings, warnings_summary
from byol.run_lock import LOCK, hold_lock
from conftest import finished_pid


def test_a_failed_start_removes_what_it_made_and_keeps_what_was_there(tmp_path):
    folder = RunFolder(tmp_path / "runs" / "new" / "run", resume=False)
    assert folder.created == tmp_path / "runs"
    (folder.path / "config.yaml").write_text("train: {}\n")
    folder.metrics_log(resume_step=None).log(1, loss=0.5)
    (folder.path / "checkpoints").mkdir()
    folder.undo()
    assert list(tmp_path.iterdir()) == []

    run = tmp_path / "existing"  # the user's own things, and what an earlier start left before its first checkpoint
    for name in ("checkpoints", "tensorboard"):
        (run / name).mkdir(parents=True)
    earlier = CONFIG_HEADER + "train: {epochs: 3}\n"
    (run / "config.yaml").write_text(earlier)
    (run / "notes.txt").write_text("keep me\n")
    (run / "config_until_step4.yaml").write_text(earlier)  # (a mutation audit: one an earlier start kept, removed)
    folder = RunFolder(run, resume=False)
    assert folder.created is None
    (run / "config.yaml").write_text("train: {}\n")
    folder.metrics_log(resume_step=None).log(1, loss=0.5)
    folder.undo()
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "config_until_step4.yaml",
                                                     "notes.txt", "tensorboard"]
    assert (run / "config.yaml").read_text() == earlier and not any((run / "tensorboard").iterdir())


def test_a_started_run_keeps_what_it_wrote(tmp_path):
    folder = RunFolder(tmp_path / "run", resume=False)
    (folder.path / "config.yaml").write_text("train: {}\n")
    folder.started = True
    folder.undo()
    folder.release()  # as pretrain does after undo
    assert (folder.path / "config.yaml").read_text() == "train: {}\n"


def test_one_start_at_a_time_writes_a_folder(tmp_path, fault_table):
    """A start holds the folder's lock until it releases it: another start there, new (two jobs of an
    array given one folder) or resumed (a second --resume), is refused in one sentence that names the
    holder, and changes nothing; after the release, over the lock file left behind, a start goes ahead."""
    first = RunFolder(tmp_path / "run", resume=False)
    (first.path / "config.yaml").write_text(CONFIG_HEADER + "train: {}\n")
    holder = re.escape(f"(pid {os.getpid()} on {socket.gethostname()})")
    refused = rf"another byol run {holder} is writing to {re.escape(str(first.path))} now; wait for it to end"
    for resume, checkpoint in ((False, False), (True, False), (True, True), (False, True)):
        if checkpoint and resume:  # as the first start leaves it at its first epoch's end
            (first.path / "checkpoints").mkdir()
            (first.path / "checkpoints" / "last.pt").write_bytes(b"a checkpoint")
        # The live run is said first, not "no checkpoint" nor "pass --resume", which would be refused (a user test).
        listing = sorted(p.name for p in first.path.rglob("*"))
        with pytest.raises(ConfigError, match=refused):
            RunFolder(first.path, resume=resume)
        assert sorted(p.name for p in first.path.rglob("*")) == listing
        assert (first.path / "config.yaml").read_text() == CONFIG_HEADER + "train: {}\n"
    first.started = True
    first.release()
    again = RunFolder(first.path, resume=True)
    # its own line only, not after the ended run's (a mutation audit: appended, two lines named no holder a
    # refused start could tell had ended)
    assert (first.path / ".byol.lock").read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
    again.release()
    assert (first.path / ".byol.lock").is_file()  # left, unlocked, by a run that has begun
    fault_table("two starts in one output folder (a job array given one train.out_dir; a second --resume while "
                "the run goes on)", "the second is refused in one sentence naming the first's process and host, "
                "and changes nothing; once the first has ended, a start goes ahead")


def test_a_start_is_not_refused_for_the_moment_a_refused_start_probes_the_lock(tmp_path, monkeypatch):
    """From a review: a start refused for another reason probes the lock (a shared lock, for a moment);
    a start at that moment read the lock file's line of a run long ended (on another host) as live."""
    import fcntl
    import types
    import byol.run_lock
    run = tmp_path / "run"
    run.mkdir()
    (run / ".byol.lock").write_text("pid 4242 on some-other-node\n")
    probe = open(run / ".byol.lock")
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)  # as refuse_if_held holds it
    monkeypatch.setattr(byol.run_lock, "time", types.SimpleNamespace(sleep=lambda s: probe.close()))
    RunFolder(run, resume=False).release()  # the probe ends before its next try


@pytest.mark.parametrize("name", [".byol.lock", "metrics.jsonl"])
def test_a_run_s_file_that_is_a_symbolic_link_is_refused_not_written_through(tmp_path, name):
    """A user test: a run folder copied from elsewhere with .byol.lock a link to a file outside it; the
    start emptied that file and wrote its pid into it (and a dangling metrics.jsonl made the file it names)."""
    precious, run = tmp_path / "precious.txt", tmp_path / "run"
    precious.write_text("mine\n")
    run.mkdir()
    (run / name).symlink_to(precious if name == LOCK else tmp_path / "made")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(run / name))} is a symbolic link .* write through"):
        RunFolder(run, resume=False).metrics_log(None).log(1, loss=0.5)
    assert precious.read_text() == "mine\n" and not (tmp_path / "made").exists()


def test_a_run_folder_that_is_a_link_or_keeps_its_folders_on_another_disk_by_links_starts(tmp_path):
    """What the refusal of linked files leaves alone (a review: nothing pinned it): train.out_dir a link, and
    checkpoints/ and tensorboard/ links to a scratch disk."""
    (tmp_path / "real").mkdir()
    (tmp_path / "run").symlink_to(tmp_path / "real")
    for name in ("checkpoints", "tensorboard"):
        (tmp_path / "scratch" / name).mkdir(parents=True)
        (tmp_path / "real" / name).symlink_to(tmp_path / "scratch" / name)
    RunFolder(tmp_path / "run", resume=False).release()


def test_the_probe_that_the_folder_takes_files_goes_through_no_link(tmp_path):
    """A user test: the probe was a fixed name, .write_test, touched: a link by that name made the file it named."""
    (tmp_path / ".write_test").symlink_to(tmp_path / "made")
    RunFolder(tmp_path / ".", resume=False).release()
    assert not (tmp_path / "made").exists()


def test_a_lock_file_linked_after_the_folder_was_checked_is_not_written_through(tmp_path):
    """The lock is opened without following a link: one made after the start's checks is refused too."""
    precious = tmp_path / "precious.txt"
    precious.write_text("mine\n")
    (tmp_path / LOCK).symlink_to(precious)
    with pytest.raises(ConfigError, match="lock file, which would be written through it"):
        hold_lock(tmp_path)
    assert precious.read_text() == "mine\n"


def test_a_lock_held_on_another_host_is_a_live_run_whatever_processes_this_host_has(tmp_path):
    """A mutation audit: the lock file's pid looked up on this host, whatever host it names, survived every test: a
    run on another node, its pid no process here, was taken as ended; a start waited 20 s for its decoding
    processes, then said to end them. It is refused at once, naming the run and its host."""
    import fcntl
    run = tmp_path / "run"
    run.mkdir()
    holder = f"pid {finished_pid()} on some-other-node"
    (run / ".byol.lock").write_text(f"{holder}\n")
    with open(run / ".byol.lock") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as that node's run holds it
        with pytest.raises(ConfigError, match=rf"^another byol run \({holder}\) is writing to "):
            RunFolder(run, resume=False)


def test_a_lock_held_by_another_user_s_process_on_this_host_is_a_live_run(tmp_path, monkeypatch):
    """A mutation audit: a process of another user's (which this one may not signal: PermissionError) taken as
    ended survived every test; a start in a shared folder waited 20 s, then said to end its processes. It is
    refused at once, naming the run."""
    def not_ours(pid, signal):
        raise PermissionError(1, "Operation not permitted")

    run = tmp_path / "run"
    run.mkdir()
    holder = f"pid {finished_pid()} on {socket.gethostname()}"
    (run / ".byol.lock").write_text(f"{holder}\n")
    monkeypatch.setattr(os, "kill", not_ours)
    with open(run / ".byol.lock") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the other user's run holds it
        with pytest.raises(ConfigError, match=rf"^another byol run \({holder}\) is writing to "):
            RunFolder(run, resume=False)


def test_a_start_refused_for_another_reason_says_it_where_the_lock_s_run_has_ended(tmp_path):
    """A mutation audit: a refused start's probe of the lock taking any holder as live survived every test. A run
    of this host that has ended, whose decoding processes still hold its lock, is not said to write there: the
    reason the start was refused is."""
    import fcntl
    run = tmp_path / "run"
    run.mkdir()
    (run / ".byol.lock").write_text(f"pid {finished_pid()} on {socket.gethostname()}\n")
    with open(run / ".byol.lock") as orphan:
        fcntl.flock(orphan, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the ended run's decoding process holds it
        with pytest.raises(CheckpointError, match="cannot resume: no checkpoint at "):
            RunFolder(run, resume=True)


def test_a_start_waits_for_the_processes_a_killed_run_left_holding_its_lock(tmp_path, capsys, monkeypatch):
    """A user test: kill -9 of a run decoding a folder with workers left them holding the lock file
    (until they saw their parent gone, 5 s later), and an immediate --resume was refused, naming the
    dead run as writing there. Now a start waits for them, and says so."""
    import subprocess
    import sys
    import time
    import byol.run_lock
    run = tmp_path / "run"
    run.mkdir()
    script = (  # a run that locks the folder, forks a decoding process and dies at once
        "import fcntl, os, socket, sys\n"
        f"lock = open({str(run / '.byol.lock')!r}, 'a+')\n"
        "fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "lock.seek(0); lock.truncate(); lock.write(f'pid {os.getpid()} on {socket.gethostname()}\\n'); lock.flush()\n"
        "if os.fork() == 0:\n    os.read(int(sys.argv[1]), 1); os._exit(0)\n"
        "os._exit(0)\n")

    def killed_run() -> int:
        """The write end of a pipe whose closing ends the killed run's decoding process (not a time it sleeps: on
        a loaded machine the start came after it had ended, and found nothing to wait for)."""
        read, write = os.pipe()
        try:
            subprocess.run([sys.executable, "-c", script, str(read)], pass_fds=(read,), check=True)
        finally:
            os.close(read)
        return write

    def still_held() -> bool:
        with open(run / ".byol.lock") as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False

    outwait, waited = byol.run_lock._outwait_orphans, []

    def decoding_ends_while_waited_for(*args, **kwargs):
        waited.append(still_held())  # the start found the lock held by the decoding process
        os.close(ends)
        return outwait(*args, **kwargs)
    ends = killed_run()
    monkeypatch.setattr(byol.run_lock, "_outwait_orphans", decoding_ends_while_waited_for)
    start = time.monotonic()
    RunFolder(run, resume=False).release()
    assert waited == [True] and time.monotonic() - start < 10
    assert f"note: the run that held {run} (pid " in capsys.readouterr().err
    monkeypatch.undo()
    # Processes that do not end: one sentence that says what to do, after the wait.
    ends = killed_run()
    lock = open(run / ".byol.lock", "r")
    try:
        with pytest.raises(ConfigError, match=r"\(pid \d+\) has ended, but processes it started still hold its lock "
                                              r"file open after 0.5 s; end them \(fuser -k .*\), then start again"):
            byol.run_lock._outwait_orphans(lock, lock.read().strip(), run, seconds=0.5)
        assert lock.closed
    finally:
        os.close(ends)


def test_a_released_lock_is_free_while_a_process_forked_before_the_release_runs_on(tmp_path, monkeypatch):
    """A decoding process forked by a start shares its open lock file; a failed start's traceback (a
    notebook's) can keep such a process alive after the start released the lock. The next start
    goes ahead all the same; and a start that fails while it opens the folder lets the lock go."""
    import signal
    import time
    import byol.run_folder
    first = RunFolder(tmp_path / "run", resume=False)
    child = os.fork()
    if child == 0:  # holds the lock file open, as a DataLoader worker would
        time.sleep(30)
        os._exit(0)
    try:
        first.release()
        RunFolder(first.path, resume=False).release()  # refused, naming this process, without LOCK_UN
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)

    def torn(*args):
        raise OSError("an I/O error")

    monkeypatch.setattr(byol.run_folder, "remove_torn_temporaries", torn)
    with pytest.raises(OSError, match="an I/O error") as failed:  # its traceback kept, as a notebook keeps it
        RunFolder(first.path, resume=False)
    monkeypatch.undo()
    RunFolder(first.path, resume=False).release()  # the failed opening let the lock go
    assert failed.tb is not None


def test_a_start_removes_the_torn_temporaries_of_every_file_a_run_writes_and_no_others(tmp_path):
    """``kill -9`` in the middle of any write of a run (its checkpoints, config, logs, plots) leaves
    a temporary beside the file; the next start removes it. A temporary of the user's is kept."""
    run, dead = tmp_path / "run", finished_pid()
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    names = [*_KEPT, *PLOTS, "config_until_step3.yaml"]
    torn = [run / f".{name}.tmp{dead}" for name in names] + [run / "checkpoints" / f".epoch_0002.pt.tmp{dead}"]
    kept = [run / f".notes.txt.tmp{dead}", run / f".config_until_step3.yaml.bak.tmp{dead}"]
    for path in (*torn, *kept):
        path.write_bytes(b"half")
    RunFolder(run, resume=True).release()
    assert [path for path in torn if path.exists()] == []
    assert all(path.exists() for path in kept)


def test_a_run_starts_only_where_it_can(tmp_path):
    with pytest.raises(CheckpointError, match="cannot resume: no checkpoint at"):
        RunFolder(tmp_path / "run", resume=True)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "epoch_0001.pt").write_bytes(b"")  # a kept epoch, no last.pt
    (tmp_path / "run" / "checkpoints" / "epoch_0001_step4.pt").write_bytes(b"")  # an earlier start's, kept apart
    copy = "; to resume from checkpoints/epoch_0001.pt, copy it to checkpoints/last.pt first"
    with pytest.raises(ConfigError, match=r"already holds a run \(checkpoints/epoch_0001.pt\); pass --resume"
                                          rf".*another train.out_dir{re.escape(copy)}$"):
        RunFolder(tmp_path / "run", resume=False)
    with pytest.raises(CheckpointError, match=rf"cannot resume: no checkpoint at .*last.pt{re.escape(copy)}$"):
        RunFolder(tmp_path / "run", resume=True)  # each message pointed at the other (a user test)
    # The newest epoch by its number, not another .pt that sorts after it (a user test: w4_baseline.pt), nor a
    # folder named last.pt
    for name in ("epoch_0010.pt", "epoch_0009.pt", "w4_baseline.pt", "last.pt/"):
        path = tmp_path / "run" / "checkpoints" / name.rstrip("/")
        path.mkdir() if name.endswith("/") else path.write_bytes(b"")
    copy = "; to resume from checkpoints/epoch_0010.pt, copy it to checkpoints/last.pt first"
    with pytest.raises(CheckpointError, match=rf"cannot resume: no checkpoint at .*last.pt{re.escape(copy)}$"):
        RunFolder(tmp_path / "run", resume=True)
    (tmp_path / "run" / "checkpoints" / "last.pt").rmdir()
    (tmp_path / "run" / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"already holds a run \(checkpoints/last.pt\); pass --resume"
                                          r".*another train.out_dir$"):  # no copy hint: last.pt is there
        RunFolder(tmp_path / "run", resume=False)


def test_the_newest_kept_epoch_is_told_by_its_number_not_its_spelling(tmp_path):
    """A mutation audit: kept epochs sorted as names survived every test (epoch_0009.pt < epoch_0010.pt either
    way); epoch_10000.pt, past four digits, is newer than epoch_9999.pt, and an epoch_10.pt than an epoch_9.pt."""
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    for name in ("epoch_9999.pt", "epoch_10000.pt", "epoch_9.pt"):
        (tmp_path / "run" / "checkpoints" / name).write_bytes(b"")
    copy = "; to resume from checkpoints/epoch_10000.pt, copy it to checkpoints/last.pt first"
    with pytest.raises(CheckpointError, match=rf"cannot resume: no checkpoint at .*last.pt{re.escape(copy)}$"):
        RunFolder(tmp_path / "run", resume=True)
    with pytest.raises(ConfigError, match=r"already holds a run \(checkpoints/epoch_10000.pt\)"):
        RunFolder(tmp_path / "run", resume=False)


@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.parametrize("name", ["checkpoints", "tensorboard"])
def test_a_file_where_a_runs_folder_goes_is_refused_before_the_run(tmp_path, name, resume, fault_table):
    """A user test: a file named checkpoints in train.out_dir was a traceback once the first epoch had trained
    (its checkpoint could not be written, and the epoch was lost); tensorboard, a traceback at the start."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    if name == "checkpoints":
        shutil.rmtree(run / "checkpoints")
    (run / name).write_text("x\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(run / name))} is a file where the run keeps its {name}/ "
                                          "folder; move it away, or choose another train.out_dir$"):
        RunFolder(run, resume=resume)
    assert (run / name).read_text() == "x\n"
    fault_table(f"a file named {name} in train.out_dir ({'--resume' if resume else 'a new run'})",
                "one sentence before anything is trained or written; the file kept")


@pytest.mark.parametrize("text", ["train:\n  epochs: " + "9" * 5000 + "\n", "train: " + "[" * 100_000 + "]" * 100_000])
def test_a_config_yaml_the_yaml_reader_cannot_finish_is_not_byol_s(tmp_path, text):
    """A review: a run folder's own config.yaml, from elsewhere, with a 5,000-digit number or lists nested
    100,000 deep, ended a start in a ValueError or RecursionError traceback (a --config file was one sentence)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match="config.yaml was not written by byol"):
        RunFolder(run, resume=False)


@pytest.mark.parametrize("name", ["config.yaml", "metrics.jsonl", "warnings.txt"])
def test_a_new_run_replaces_only_what_an_earlier_start_of_a_run_wrote(tmp_path, name, fault_table):
    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_text("train: {epochs: 3}  # by hand\n")  # the --config file, say, or another tool's log
    with pytest.raises(ConfigError, match=f"{name} (was not written by byol|has no config.yaml of byol's beside it)"
                                          f".*, and a new run writes its own {name} there; move it"):
        RunFolder(run, resume=False)
    assert sorted(p.name for p in run.iterdir()) == [name]
    if name != "config.yaml":  # beside an earlier start's config, it is that start's
        (run / "config.yaml").write_text(CONFIG_HEADER + "train: {epochs: 3}\n")
        RunFolder(run, resume=False).release()
    fault_table(f"a new run in a folder with no checkpoint and a {name} byol did not write"
                + (" (the --config file itself, say)" if name == "config.yaml" else ""),
                "one sentence, nothing written, the file kept" + ("" if name == "config.yaml" else
                "; beside a config.yaml of byol's (a start that left no checkpoint) the run starts"))


def test_a_run_folder_of_an_older_byol_is_taken_as_its_and_an_export_folder_is_refused(tmp_path):
    import yaml
    from byol.config import Config
    older = Config().to_dict()
    del older["optim"]["lars_clip"]  # a setting added since
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(older))  # before config.yaml had its first line
    (run / "metrics.jsonl").write_text('{"step": 20, "train/loss": 3.1}\n')
    RunFolder(run, resume=False).release()
    exported = tmp_path / "export"
    exported.mkdir()
    (exported / "config.yaml").write_text(CONFIG_HEADER + "train: {epochs: 3}\n")
    (exported / "export.json").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"holds an exported encoder \(export.json\), whose config.yaml a new run"):
        RunFolder(exported, resume=False)


def test_the_first_byols_config_is_taken_as_its_and_one_lacking_its_settings_is_not(tmp_path):
    """The first byol's config.yaml (22 November) lacks the 7 settings added since: a count of the missing
    ones (at most 5) took it for one written by hand once the 6th and 7th were added."""
    import yaml
    first = Config().to_dict()
    for key in ("train.max_nonfinite", "train.keep_freed_memory", "train.save_interval_s", "train.cuda_graph",
                "optim.lars_clip", "train.knn_holdout", "train.keep_checkpoints"):  # added since
        section, name = key.split(".")
        del first[section][name]
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(first, sort_keys=False))  # no first line then
    (run / "metrics.jsonl").write_text('{"step": 20, "train/loss": 3.1}\n')  # a start that left no checkpoint
    RunFolder(run, resume=False).release()
    del first["data"]["root"]  # a setting byol has always written: a copy edited by hand
    (run / "config.yaml").write_text(yaml.safe_dump(first, sort_keys=False))
    with pytest.raises(ConfigError, match="config.yaml was not written by byol"):
        RunFolder(run, resume=False)


def test_warnings_of_the_steps_trained_again_are_dropped_on_resume(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    before = "step 5: collapse\nstep 10: collapse again\nstep 15: after the checkpoint\nan older run's line\n"
    (run / "warnings.txt").write_text(before)
    folder = RunFolder(run, resume=True)
    folder.metrics_log(resume_step=10)
    # Steps 11-15 are trained again, and warned about again if they collapse again.
    assert (run / "warnings.txt").read_text() == "step 5: collapse\nstep 10: collapse again\nan older run's line\n"
    folder.undo()  # a start that fails before its first step puts the file back
    assert (run / "warnings.txt").read_text() == before

    folder = RunFolder(run, resume=True)
    folder.metrics_log(resume_step=10)
    folder.started = True
    folder.warn("collapse", 12)
    assert (run / "warnings.txt").read_text().splitlines()[-1] == "step 12: collapse"
    assert read_warnings(run) == ["step 5: collapse", "step 10: collapse again", "an older run's line",
                                  "step 12: collapse"]
    folder.undo()  # a started run's: its TensorBoard writer's thread ends, nothing is put back
    folder.release()


def test_the_summary_of_warnings_names_each_kind_once_with_its_steps(tmp_path):
    assert warnings_summary(["step 10: representation collapse: the std ..."]) == "representation collapse at step 10"
    lines = ["step 10: representation collapse at step 10: the std ...",  # an older byol's line
             "step 60: representation collapse: the std ...", "step 70: loss spike: ...",
             "step 80: representation collapse: ...", "step 90: representation collapse: ...", "a line of its own"]
    assert warnings_summary(lines) == ("representation collapse at steps 10, 60, 80, ...; loss spike at step 70; "
                                       "a line of its own")
    assert read_warnings(tmp_path) == []  # a run that never warned


def test_a_new_run_starts_without_the_warnings_of_one_that_left_no_checkpoint(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "warnings.txt").write_text("step 3: collapse\n")
    (tmp_path / "run" / "config.yaml").write_text(CONFIG_HEADER + "train: {epochs: 3}\n")
    folder = RunFolder(tmp_path / "run", resume=False)
    folder.metrics_log(resume_step=None)
    assert not (tmp_path / "run" / "warnings.txt").exists()
    folder.undo()  # closes the metrics log (its TensorBoard writer's thread ran on) and releases the folder


def test_a_new_run_starts_without_the_skipped_files_of_one_that_left_no_checkpoint(tmp_path):
    """skipped_files.txt as warnings.txt: a new run drops an earlier start's list (put back if it fails
    before its first step), a resumed run keeps it."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "skipped_files.txt").write_text("/x/bad.jpg\tempty file\n")
    (run / "config.yaml").write_text(CONFIG_HEADER + "train: {epochs: 3}\n")  # the earlier start's
    folder = RunFolder(run, resume=False)
    folder.metrics_log(resume_step=None)
    assert not (run / "skipped_files.txt").exists()
    folder.undo()
    assert (run / "skipped_files.txt").read_text() == "/x/bad.jpg\tempty file\n"
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    folder = RunFolder(run, resume=True)
    folder.metrics_log(resume_step=4)
    assert (run / "skipped_files.txt").read_text() == "/x/bad.jpg\tempty file\n"
    folder.undo()


def test_a_saved_config_is_compared_as_a_run_reads_it_not_as_text():
    """An older byol's config.yaml wrote on_device as the text 'false', which a run reads as false:
    a resume with it unchanged is no change, and keeps no config_until_stepS.yaml (a review)."""
    import yaml
    from byol.run_folder import _differ
    config = Config()
    config.data.on_device = False
    saved = config.to_dict()
    saved["data"]["on_device"] = "false"
    assert not _differ(yaml.safe_dump(saved), config)
    config.optim.lr = 0.1
    assert _differ(yaml.safe_dump(saved), config)


def test_a_folder_where_the_lock_file_or_config_goes_is_said_as_a_folder(tmp_path, fault_table):
    """A user test: a folder .byol.lock let the run go on without a lock (two runs could share the folder), and a
    folder config.yaml was said to be a file 'not written by byol (its first line is not byol's)'."""
    (tmp_path / "a" / ".byol.lock").mkdir(parents=True)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(tmp_path / 'a' / '.byol.lock'))} is a folder where the "
                                          "run keeps its lock file; remove it, or choose another train.out_dir$"):
        RunFolder(tmp_path / "a", resume=False)
    (tmp_path / "b" / "config.yaml").mkdir(parents=True)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(tmp_path / 'b' / 'config.yaml'))} is a folder, and a "
                                          "new run writes its own config.yaml there"):
        RunFolder(tmp_path / "b", resume=False)
    fault_table("a folder named .byol.lock or config.yaml in train.out_dir",
                "one sentence saying it is a folder; nothing written (a run went on without its lock before)")


def test_a_new_run_beside_an_earlier_starts_events_says_what_tensorboard_shows(tmp_path, capsys):
    """From a review: TensorBoard keeps the first settings and status it reads, so an earlier start's events
    (a finished run whose checkpoints were deleted, a start killed before its first checkpoint) stand for a
    new run in the folder: its settings, and a success it never had. They are a note's to say, not byol's to
    remove (another tool's, maybe)."""
    from byol.metrics import MetricsLog
    run = tmp_path / "run"
    earlier = MetricsLog(run)
    earlier.settings({"train": {"epochs": 1}})
    earlier.close(finished=True)
    before = {p.name: p.read_bytes() for p in (run / "tensorboard").iterdir()}
    folder = RunFolder(run, resume=False)
    folder.metrics_log(resume_step=None).close()
    folder.undo()
    assert capsys.readouterr().err == (f"note: {run / 'tensorboard'} holds an earlier start's events, whose settings "
                                       "(and status) TensorBoard's HParams tab shows for this run, as it keeps the "
                                       "first it reads; remove the folder's tensorboard/ before a new run there to see "
                                       "this one's\n")
    assert {p.name: p.read_bytes() for p in (run / "tensorboard").iterdir()} == before
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    folder = RunFolder(run, resume=True)  # a resume's events are its own run's: no note
    folder.metrics_log(resume_step=3).close()
    folder.release()
    assert capsys.readouterr().err == ""


def test_a_failed_start_keeps_the_lock_file_an_earlier_start_left(tmp_path):
    """The folder as the start found it: the lock file an earlier start left (released) stays; a mutation audit
    found its removal by a failed start untested."""
    run = tmp_path / "run"
    RunFolder(run, resume=False).undo()
    assert not run.exists()  # made by this start: gone with the rest
    run.mkdir()
    (run / ".byol.lock").write_text("pid 1 on elsewhere\n")  # an earlier start's, released
    RunFolder(run, resume=False).undo()
    assert sorted(p.name for p in run.iterdir()) == [".byol.lock"]


def test_a_resume_of_a_moved_run_keeps_no_settings_it_did_not_change(tmp_path):
    """A run's folder moved (its config.yaml names the old train.out_dir): resumed with nothing else changed,
    no config_until_stepS.yaml is kept; with a setting changed, one is (a mutation audit)."""
    run = tmp_path / "moved"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")  # the start checks only that there is one
    config = Config()
    config.train.out_dir = str(tmp_path / "before")
    save_config(config, run / "config.yaml")
    config.train.out_dir = str(run)
    folder = RunFolder(run, resume=True)
    folder.save_config(config, resume_step=4)
    assert not (run / "config_until_step4.yaml").exists()
    config.optim.lr = 0.5
    folder.save_config(config, resume_step=4)
    assert (run / "config_until_step4.yaml").is_file()
    folder.release()


def _resumed_at(run, step, **optim):
    """A start resumed at ``step`` whose settings are the defaults but ``optim``'s, past its first step."""
    config = Config()
    config.train.out_dir = str(run)
    for key, value in optim.items():
        setattr(config.optim, key, value)
    folder = RunFolder(run, resume=True)
    folder.save_config(config, resume_step=step)
    folder.started = True
    folder.release()


def test_settings_kept_for_a_step_stay_those_that_ran_it_through_later_resumes_from_it(tmp_path):
    """config_until_stepS.yaml holds the settings that ran the steps up to S: a second resume from S with
    yet other settings neither removes it nor puts the previous start's settings in it; a resume from an
    earlier step keeps, for that step, the settings of the first later file (those that ran it), not
    the last's (a mutation audit)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")  # the start checks only that there is one
    config = Config()
    config.train.out_dir = str(run)
    save_config(config, run / "config.yaml")
    first = (run / "config.yaml").read_text()
    _resumed_at(run, 4, lr=0.5)
    assert (run / "config_until_step4.yaml").read_text() == first
    _resumed_at(run, 4, lr=0.25)  # step 4's last.pt again (the start at 4 died before its next checkpoint)
    assert (run / "config_until_step4.yaml").read_text() == first
    then = (run / "config.yaml").read_text()
    _resumed_at(run, 6, lr=0.125)
    assert (run / "config_until_step6.yaml").read_text() == then
    _resumed_at(run, 2, lr=0.0625)  # an earlier checkpoint: steps 3 to 6 are trained again
    assert sorted(p.name for p in run.glob("config_until_step*.yaml")) == ["config_until_step2.yaml"]
    assert (run / "config_until_step2.yaml").read_text() == first


def test_a_resume_in_a_read_only_run_folder_says_to_resume_a_copy(tmp_path, monkeypatch):
    """Another train.out_dir is no answer to a resume that cannot write its run's folder (an archive mounted
    read-only): it would be another run; a copy of the folder, resumed there, is."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"a checkpoint")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(ConfigError, match=r"Read-only file system\); copy the run's folder where it can be written "
                                          r"and resume the copy with --train\.out_dir=COPY$"):
        RunFolder(run, resume=True)
    with pytest.raises(ConfigError, match=r"Read-only file system\); choose another train\.out_dir$"):
        RunFolder(tmp_path / "new", resume=False)


def test_a_full_disk_under_warnings_txt_names_it(tmp_path, monkeypatch, capsys):
    """The append's flush meets a full disk naming no file: the error names warnings.txt, as the run says it
    (a mutation audit: untested)."""
    folder = RunFolder(tmp_path / "run", resume=False)
    folder.started = True

    class Full(io.StringIO):
        def close(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(byol.run_folder, "open", lambda *args: Full(), raising=False)
    with pytest.raises(OSError) as e:
        folder.warn("collapse", 12)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(folder.path / "warnings.txt")
    assert "warning: step 12: collapse" in capsys.readouterr().err
    monkeypatch.delattr(byol.run_folder, "open")
    folder.undo()
    folder.release()
