"""Faults and bad requests: each test adds a row to the table in docs/faults.md.

Regenerate that table with:
    BYOL_FAULT_TABLE=docs/faults.md python -m pytest tests/test_faults.py tests/test_data.py \
        tests/test_checkpoint.py tests/test_memory.py tests/test_run_folder.py -m "slow or not slow"
"""

import errno
import fcntl
import io
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import weakref
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from byol.precision import native_bf16
from byol.checkpoint import load_checkpoint
from byol.errors import ByolError
from byol.faults import NonFiniteGuard, StopRequest, Stopped
from byol.metrics import read_metrics
from conftest import CIFAR10, extract_jpegs, finished_pid, session_status, shown_lines, tiny_overrides
from test_cli import assert_user_error, byol, main_error

SLOW_RUN = {"train.epochs": 3, "train.checkpoint_every": 1, "train.knn_every": -1, "optim.name": "sgd"}


@pytest.fixture
def cifar():
    if not CIFAR10.is_dir():
        pytest.skip("real CIFAR-10 not found")
    return f"--data.root={CIFAR10}"


def test_nonfinite_step_is_undone_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    guard = NonFiniteGuard([model], opt, torch.device("cpu"))
    for _ in range(2):  # a good step keeps its update, bit for bit
        guard.snapshot()
        loss = model(torch.randn(16, 4)).pow(2).mean()
        opt.zero_grad(), loss.backward(), opt.step()
        stepped = {k: v.clone() for k, v in model.state_dict().items()}
        assert guard.settle(loss)
        assert all(torch.equal(v, stepped[k]) for k, v in model.state_dict().items())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    momentum = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    guard.snapshot()
    loss = model(torch.full((16, 4), float("nan"))).pow(2).mean()  # NaN through BatchNorm statistics too
    opt.zero_grad(), loss.backward(), opt.step()
    assert not guard.settle(loss)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for m, p in zip(momentum, model.parameters()):
        assert torch.equal(opt.state[p]["momentum_buffer"], m)
    assert guard.streak.item() == 1 and guard.skipped.item() == 1 and guard.reset_max() == 1


def test_finite_weights_too_large_to_square_are_kept():
    """The weight check reads each tensor's 1-norm, not its 2-norm, whose squares overflow at weights of 1e19
    (a step with lr 1e30 leaves such, finite): such a step is not undone for its weights (a review: nothing
    pinned it)."""
    model = nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = NonFiniteGuard([model], opt, torch.device("cpu"))
    guard.snapshot()
    with torch.no_grad():
        model.weight.fill_(1e20)
    assert guard.settle(torch.tensor(1.0)) and torch.all(model.weight == 1e20)


def test_a_finite_loss_whose_step_leaves_nan_weights_is_undone():
    """A NaN gradient under a finite loss: the step was kept, and with it NaN weights that every later
    step's undo went back to (and that an epoch's end saved as the last good checkpoint)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    guard = NonFiniteGuard([model], opt, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    guard.snapshot()
    loss = model(torch.randn(16, 4)).pow(2).mean()
    opt.zero_grad(), loss.backward()
    model[0].weight.grad[0, 0] = float("nan")
    opt.step()
    assert torch.isfinite(loss) and not guard.settle(loss)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert guard.streak.item() == 1 and guard.skipped.item() == 1


def test_nonfinite_losses_stop_the_run_and_keep_the_good_checkpoint(cli, tmp_path, cifar, fault_table):
    run = tmp_path / "run"
    cli("pretrain", cifar, *tiny_overrides(run, **{"train.max_steps": 8, "train.knn_every": -1,
                                                   "optim.name": "sgd"}))
    good = (run / "checkpoints" / "last.pt").read_bytes()
    proc = cli("pretrain", "--resume", cifar, *tiny_overrides(run, **{
        "train.epochs": 4, "train.knn_every": -1, "optim.name": "sgd", "optim.lr": 1e30,
        "train.max_nonfinite": 3, "train.log_every": 1, "train.max_steps": "null"}), check=False)
    assert_user_error(proc, "NaN or infinite for 3 steps in a row", "last good checkpoint")
    assert (run / "checkpoints" / "last.pt").read_bytes() == good
    fault_table("loss becomes NaN (learning rate 1e30; train.max_nonfinite=3, 10 by default)",
                "steps undone on the device; stopped after 3 in a row, exit 2, last good checkpoint kept")


def _popen(run, cifar, extra=()):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "byol", "pretrain", cifar, *tiny_overrides(run, **SLOW_RUN),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _final_weights(run):
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        same = a[key] == b[key] if isinstance(a[key], dict) else torch.equal(a[key], b[key])
        assert same, key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    if not CIFAR10.is_dir():
        pytest.skip("real CIFAR-10 not found")
    run = tmp_path_factory.mktemp("faults") / "straight"
    byol("pretrain", f"--data.root={CIFAR10}", *tiny_overrides(run, **SLOW_RUN))
    return _final_weights(run)


def _wait_for_step(run, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().count("train/loss") >= 1:
            return
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read())
        time.sleep(0.05)
    raise AssertionError("the run logged no step in time")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_the_step_saves_and_resumes_exactly(tmp_path, cifar, uninterrupted, signum, fault_table):
    run = tmp_path / "run"
    proc = _popen(run, cifar)
    _wait_for_step(run, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and "continue with --resume" in err
    stopped_at = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert 0 < stopped_at < 24
    dead = finished_pid()  # as kill -9 during a write leaves them: half files beside the whole ones
    torn = [run / "checkpoints" / f".epoch_0002.pt.tmp{dead}", run / f".config.yaml.tmp{dead}"]
    for path in torn:
        path.write_bytes(b"PK\x03\x04 half")
    writing = run / "checkpoints" / f".last.pt.tmp{dead}"
    with open(writing, "wb") as held:  # one that a writer holds locked is left alone, whatever its name
        fcntl.flock(held, fcntl.LOCK_EX)
        byol("pretrain", "--resume", cifar, *tiny_overrides(run, **SLOW_RUN))
        assert writing.exists()
    _assert_same_weights(_final_weights(run), uninterrupted)
    assert not any(path.exists() for path in torn)
    fault_table(f"{signal.Signals(signum).name} during training",
                f"step finished, checkpoint written, exit {128 + signum}; --resume gives bitwise the "
                "weights of an uninterrupted run; half-written files of a killed run are removed")


def _signal_in_knn(monkeypatch, signum: int, call: int) -> list:
    """The kNN monitor's evaluation sends ``signum`` to this process on its ``call``-th call (0: the one
    at random initialization) and would then work for 10 s more; returns the list that such a call
    appends to if it outlives its signal."""
    import byol.knn_monitor
    knn, calls, outlived = byol.knn_monitor.knn_eval, [], []

    def signalled(*args, **kwargs):
        calls.append(len(calls))
        if calls[-1] == call:
            os.kill(os.getpid(), signum)
            time.sleep(10)  # a long evaluation (a large memory bank), which the signal must cut short
            outlived.append(call)
        return knn(*args, **kwargs)
    monkeypatch.setattr(byol.knn_monitor, "knn_eval", signalled)
    return outlived


def _knn_records(run) -> list:
    return [(r["step"], r["eval/knn_top1"]) for r in read_metrics(run / "metrics.jsonl") if "eval/knn_top1" in r]


def test_a_signal_during_an_epoch_s_knn_cuts_it_short_and_the_resume_scores_it(tmp_path, cifar, monkeypatch, capsys,
                                                                               fault_table):
    """A user test: SIGINT during an epoch's kNN evaluation was acted on 15 s later, after the evaluation
    and one more training step; a scheduler's kill in that time would have cost the epoch."""
    from byol.cli import main
    settings = [cifar, *tiny_overrides(tmp_path / "b", **{"train.epochs": 2, "train.knn_every": 1,
                                                          "train.knn_limit": 64, "optim.name": "sgd"})]
    assert main(["pretrain", *settings, f"--train.out_dir={tmp_path / 'a'}"]) == 0  # uninterrupted
    outlived = _signal_in_knn(monkeypatch, signal.SIGTERM, 1)  # the kNN at epoch 1's end, step 8
    capsys.readouterr()
    assert main(["pretrain", *settings]) == 143
    err = capsys.readouterr().err
    assert "stopped by SIGTERM at step 8 (in its kNN evaluation, which the resume scores first); checkpoint " \
           "saved to" in err and err.rstrip().endswith("continue with --resume"), err
    assert outlived == [] and load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["step"] == 8
    assert [step for step, _ in _knn_records(tmp_path / "b")] == [0]
    monkeypatch.undo()
    assert main(["pretrain", "--resume", *settings]) == 0
    assert [step for step, _ in _knn_records(tmp_path / "b")] == [0, 8, 16]
    assert _knn_records(tmp_path / "b") == _knn_records(tmp_path / "a")
    fault_table("SIGTERM during an epoch's kNN evaluation",
                "the evaluation cut short at once, checkpoint written, exit 143; --resume scores it first: "
                "the kNN records of an uninterrupted run")


def test_a_signal_during_the_final_knn_cuts_it_short_and_keeps_the_last_checkpoint(tmp_path, cifar, monkeypatch,
                                                                                    capsys, fault_table):
    """A user test: SIGTERM during the kNN evaluation after the last step was acted on once it ended,
    and a second Ctrl-C in it lost the run: last.pt was written after it."""
    from byol.cli import main
    run = tmp_path / "run"
    settings = [cifar, *tiny_overrides(run, **{"train.max_steps": 4, "train.knn_every": 0, "train.knn_limit": 64})]
    outlived = _signal_in_knn(monkeypatch, signal.SIGINT, 1)
    capsys.readouterr()
    assert main(["pretrain", *settings]) == 0  # all its steps ran: the run is complete
    said = "".join(capsys.readouterr())
    ckpt = run / "checkpoints" / "last.pt"
    assert f"not scored: a signal came at the run's end; --resume scores and logs it, byol eval knn {ckpt} scores " \
        "it" in said, said
    assert outlived == [] and load_checkpoint(ckpt)["step"] == 4 and [s for s, _ in _knn_records(run)] == [0]
    monkeypatch.undo()
    assert main(["pretrain", "--resume", *settings]) == 0
    err = capsys.readouterr().err  # (a review: the resume's scoring of it was not checked)
    assert "is finished" in err and "the kNN evaluation of the run's end (step 4) was not logged" in err, err
    assert [s for s, _ in _knn_records(run)] == [0, 4]
    fault_table("SIGINT (Ctrl-C) during the kNN evaluation after the run's last step",
                "the last step's checkpoint written before it; the evaluation cut short at once; the run complete "
                "(exit 0), its closing table saying that byol eval knn scores it; --resume scores and logs it")


def test_a_signal_while_the_last_step_is_saved_skips_the_final_knn(tmp_path, cifar, monkeypatch, capsys):
    """A signal after the loop's last look at the flag (while the step was logged or saved) and before the
    kNN evaluation: found at its start, as one in the last step is, not after it."""
    import byol.knn_monitor
    import byol.saving
    from byol.cli import main
    knn, save, calls = byol.knn_monitor.knn_eval, byol.saving.save_checkpoint, []
    monkeypatch.setattr(byol.knn_monitor, "knn_eval", lambda *a, **k: calls.append("kNN") or knn(*a, **k))
    signalled = lambda *a, **k: calls.append("last.pt") or os.kill(os.getpid(), signal.SIGTERM) or save(*a, **k)
    monkeypatch.setattr(byol.saving, "save_checkpoint", signalled)
    run = tmp_path / "run"
    assert main(["pretrain", cifar, *tiny_overrides(run, **{"train.max_steps": 4, "train.knn_every": 0,
                                                            "train.knn_limit": 64})]) == 0
    assert calls == ["kNN", "last.pt"] and "not scored: a signal came at the run's end" in "".join(capsys.readouterr())
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4


def test_an_error_in_the_final_knn_keeps_the_last_checkpoint(tmp_path, cifar, monkeypatch, fault_table):
    import byol.knn_monitor
    from byol.config import load_config
    from byol.train import pretrain
    knn = byol.knn_monitor.knn_eval
    calls = []

    def out_of_memory_at_the_end(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (as a memory bank too large for the GPU)")
        return knn(*args, **kwargs)
    monkeypatch.setattr(byol.knn_monitor, "knn_eval", out_of_memory_at_the_end)
    run = tmp_path / "run"
    config = load_config("cifar10", [cifar, *tiny_overrides(run, **{"train.max_steps": 4, "train.knn_every": 0})])
    with pytest.raises(ByolError, match="the kNN monitor ran out of memory") as raised:
        pretrain(config)
    assert isinstance(raised.value.__cause__, RuntimeError)  # torch's, kept for a traceback
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4
    fault_table("an error (out of memory) in the kNN evaluation after the run's last step",
                "a ByolError saying what the monitor takes; the last step's checkpoint was written before the "
                "evaluation")


def test_a_run_killed_in_its_final_knn_scores_it_when_resumed(tmp_path, cifar, monkeypatch, fault_table):
    """A user test: a job killed (kill -9, a lost node) in the kNN evaluation after its last step, then
    requeued with --resume=auto, said only that the run was finished; its final kNN was never scored."""
    import byol.knn_monitor
    from byol.config import load_config
    from byol.train import pretrain
    knn = byol.knn_monitor.knn_eval
    calls, layouts = [], []

    def killed_at_the_end(model, *args, **kwargs):
        calls.append(1)
        conv = next(p for p in model.online.parameters() if p.dim() == 4)
        layouts.append(conv.is_contiguous(memory_format=torch.channels_last))
        if len(calls) == 2:  # the state a kill leaves: the last checkpoint written, no kNN record at its step
            raise RuntimeError("killed")
        return knn(model, *args, **kwargs)
    settings = {"train.max_steps": 4, "train.knn_every": 0}
    whole = pretrain(load_config("cifar10", [cifar, *tiny_overrides(tmp_path / "whole", **settings)]))
    monkeypatch.setattr(byol.knn_monitor, "knn_eval", killed_at_the_end)
    run = tmp_path / "run"
    config = load_config("cifar10", [cifar, *tiny_overrides(run, **settings)])
    with pytest.raises(RuntimeError, match="killed"):
        pretrain(config)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "eval/knn_top1" in r] == [0]
    plots = {p.name: p.read_bytes() for p in run.glob("*.png")}
    resumed = pretrain(config, resume="auto")
    assert resumed["knn"] == whole["knn"] and resumed["knn_init"] == whole["knn_init"]
    # scored on the encoder in the layout the steps left it in (width 8, batch 16, 32 px: channels_last on a CPU
    # too), as the run's end scores it; the plots drawn with it, and the run a success in TensorBoard's HParams
    # tab, as the uninterrupted run (a mutation audit: none of the three was checked)
    assert layouts[1:] == [True, True]
    assert (run / "knn.png").read_bytes() != plots.get("knn.png")
    assert session_status(run) == session_status(tmp_path / "whole") == "STATUS_SUCCESS"
    knn_records = [{k: v for k, v in r.items() if k != "time_s"}
                   for r in read_metrics(run / "metrics.jsonl") if "eval/knn_top1" in r]
    assert knn_records == [{k: v for k, v in r.items() if k != "time_s"}
                           for r in read_metrics(tmp_path / "whole" / "metrics.jsonl") if "eval/knn_top1" in r]
    pretrain(config, resume="auto")  # scored once: a resume after it has nothing to do
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "eval/knn_top1" in r] == [0, 4]
    fault_table("killed in the kNN evaluation after the run's last step (simulated: its checkpoint written, no kNN "
                "record), then --resume=auto", "the finished run's resume scores it, as the uninterrupted run's "
                "records; a resume after that has nothing to do")


def test_a_run_whose_log_reader_is_gone_trains_on_and_a_hangup_stops_it_as_sigterm_does(tmp_path, cifar,
                                                                                         fault_table):
    """A user test: `nohup byol pretrain ... 2>&1 | tee log` died at its next epoch line once tee ended
    (a logout), with no message and the epoch's training lost; SIGHUP (the terminal closed) killed a run
    at once, with no checkpoint."""
    run = tmp_path / "run"
    read, write = os.pipe()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "byol", "pretrain", cifar, *tiny_overrides(run, **SLOW_RUN)],
                            stdout=write, stderr=write, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))  # (a test under nohup)
    os.close(write)
    os.close(read)  # the reader gone: every line the run prints meets a closed pipe
    deadline = time.time() + 120
    # past the end of epoch 1, whose line (no bar: not a terminal) went to the closed pipe
    while time.time() < deadline and max([r["step"] for r in _records(run)] or [0]) <= 8:
        assert proc.poll() is None, proc.returncode
        time.sleep(0.05)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=120) == 128 + signal.SIGHUP
    assert 8 < load_checkpoint(run / "checkpoints" / "last.pt")["step"] < 24  # the step finished, saved
    fault_table("stdout and stderr a pipe whose reader ended (`| tee` closed at a logout), then SIGHUP",
                f"training goes on, its lines dropped; at SIGHUP (a closed terminal) step finished, checkpoint "
                f"written, exit {128 + signal.SIGHUP}, as at SIGTERM")


def test_a_full_disk_under_the_logs_mid_run_is_one_sentence_and_the_run_resumes(tmp_path, cifar, monkeypatch,
                                                                                 capsys, fault_table):
    """A user test filled the disk between two checkpoints: metrics.jsonl's append (or TensorBoard's
    writer, in its thread and then in the run's) ended the run in tracebacks, exit 1."""
    import threading
    import byol.metrics
    from byol import cli, error_lines
    run, settings = tmp_path / "run", tiny_overrides(tmp_path / "run", **SLOW_RUN)
    log = byol.metrics.MetricsLog.log

    class Full(io.StringIO):  # as the append's flush meets it: naming no file
        def close(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_after_epoch_1(self, step, *args, **kwargs):
        if step > 8:
            monkeypatch.setattr(byol.metrics, "open", lambda *args: Full(), raising=False)
        return log(self, step, *args, **kwargs)

    monkeypatch.setattr(byol.metrics.MetricsLog, "log", full_after_epoch_1)
    assert cli.main(["pretrain", cifar, *settings]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"byol: error: could not write {run / 'metrics.jsonl'} (No space left on device); make room, or choose a "
        "writable place, and run the command again (a pretraining run that wrote a checkpoint goes on from it with "
        "--resume)")
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 8
    monkeypatch.setattr(byol.metrics.MetricsLog, "log", log)  # room made
    monkeypatch.delattr(byol.metrics, "open")
    assert cli.main(["pretrain", "--resume", *settings]) == 0
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r] == list(range(2, 25, 2))
    # TensorBoard's writer thread meets it first: it is said once, by the run, not as the thread's traceback
    said = []
    quiet = error_lines.quiet_storage_errors_of_threads(said.append)
    for error in (OSError(errno.ENOSPC, "No space left on device"), ValueError("a bug")):
        quiet(threading.ExceptHookArgs((type(error), error, None, None)))
    assert [type(args.exc_value) for args in said] == [ValueError]
    fault_table("disk full between two checkpoints (metrics.jsonl's or TensorBoard's write)",
                "one sentence, exit 2; the last checkpoint kept, and --resume goes on from it, each step logged once")


def _records(run):
    return read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []


def test_a_run_killed_after_its_checkpoint_logs_each_step_once(tmp_path, cifar, fault_table):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = tmp_path / "run"
    settings = tiny_overrides(run, **{**SLOW_RUN, "train.knn_every": 1, "train.knn_limit": 64})
    byol("pretrain", cifar, *settings)
    whole = read_metrics(run / "metrics.jsonl")
    # As a run killed in epoch 2 leaves it: the checkpoint of epoch 1, every step logged up to the
    # kill (here all of them, to the end), and a torn line from the write the kill cut short.
    shutil.copy(run / "checkpoints" / "epoch_0001.pt", run / "checkpoints" / "last.pt")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 24, "train/lo')
    byol("pretrain", "--resume", cifar, *settings)
    again = read_metrics(run / "metrics.jsonl")
    measured = ("train/images_per_s", "train/data_wait", "time_s")  # measurements, not results of the training
    assert [{k: v for k, v in r.items() if k not in measured} for r in again] == \
        [{k: v for k, v in r.items() if k not in measured} for r in whole]  # each step once, kNN records too
    assert len({r["step"] for r in again if "eval/knn_top1" in r}) == 4  # at init and after each epoch
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [r["step"] for r in again if "train/loss" in r]
    assert [e.step for e in events.Scalars("eval/knn_top1")] == [0, 8, 16, 24]
    fault_table("killed after a checkpoint, then resumed",
                "the records logged after that checkpoint are dropped from metrics.jsonl and purged in TensorBoard, "
                "then logged again: each step once, the same values as an uninterrupted run")


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_is_exact(tmp_path, cifar, uninterrupted, fault_table):
    run = tmp_path / "run"
    rng = random.Random(0)
    kills = 0
    for attempt in range(12):
        resume = (run / "checkpoints" / "last.pt").is_file()
        proc = _popen(run, cifar, ["--resume"] if resume else [])
        if kills < 4:
            _wait_for_step(run, proc) if not resume else time.sleep(1.0)
            time.sleep(rng.uniform(0.0, 2.0))
            if proc.poll() is None:
                proc.kill()  # SIGKILL: no handler runs, the process dies wherever it is
                kills += 1
            proc.communicate()
            continue
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        break
    assert kills == 4
    _assert_same_weights(_final_weights(run), uninterrupted)
    assert not [*run.glob(".*.tmp*"), *run.glob("checkpoints/.*")]  # no torn temporaries
    fault_table("kill -9 at 4 random moments",
                "last checkpoint intact each time (temporary file + rename); --resume reaches bitwise the "
                "weights of an uninterrupted run and removes the half-written temporaries")


def test_bad_requests(cli, tmp_path, cifar, fault_table):
    proc = cli("pretrain", cifar, *tiny_overrides(tmp_path / "r1", **{"data.limit": 8}), check=False)
    assert_user_error(proc, "does not fit in the data set")
    fault_table("data set smaller than one batch", "one sentence naming both sizes, exit 2")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = cli("pretrain", cifar, *tiny_overrides(blocker / "run"), check=False)
    assert_user_error(proc, "cannot write to the output directory")
    assert "a file is in the way where a folder is needed" in proc.stderr, proc.stderr
    fault_table("output directory that cannot be created or written", "one sentence, exit 2")
    proc = cli("pretrain", cifar, "--train.batch_sise=8", check=False)
    assert_user_error(proc, "unknown config key 'train.batch_sise'")
    fault_table("config key that does not exist", "one sentence listing the valid keys, exit 2")
    proc = cli("pretrain", f"--data.root={tmp_path / 'missing'}", *tiny_overrides(tmp_path / "new" / "r2"),
               check=False)
    assert_user_error(proc, "missing")
    assert not (tmp_path / "new").exists()  # the run folder it made (and its parent) is gone again
    fault_table("data path that does not exist", "one sentence saying which files were expected where, exit 2; "
                "no empty run folder left behind")


@pytest.mark.parametrize("text, said, fault", [
    ("train: {epochs: 010}", "train.epochs: 010 reads as 8 in YAML", "a YAML number in a form only YAML 1.1 reads "
     "(epochs: 010, octal 8)"),
    ("optim: {lr: .inf}", "optim.lr must be a finite number >= 0", "an infinite learning rate"),
    ("# nothing but a comment", "holds no settings", "a YAML config with no settings"),
    ("base: cifar10-cpu", "unknown config section 'base'", "a YAML config that names a preset to inherit from"),
    ("data: {dataset: folder, train_split: trian, image_size: 8}", "data.train_split=trian, but",
     "a folder's data.train_split that is not there (a typo)")])
def test_bad_config_files_are_one_sentence_and_write_nothing(tmp_path, capsys, text, said, fault, fault_table):
    from byol import cli
    (tmp_path / "images" / "train" / "a").mkdir(parents=True)
    (tmp_path / "run.yaml").write_text(text + "\n")
    args = ["pretrain", "--config", str(tmp_path / "run.yaml"), f"--data.root={tmp_path / 'images'}",
            f"--train.out_dir={tmp_path / 'run'}"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "run").exists()
    fault_table(fault, "one sentence saying what to write, exit 2; nothing written")


def test_resume_continues_with_the_runs_own_config_and_a_failed_resume_keeps_it(cli, tmp_path, cifar, fault_table):
    run = tmp_path / "run"
    cli("pretrain", cifar, *tiny_overrides(run, **{"train.max_steps": 2, "train.knn_every": -1, "optim.name": "sgd"}))
    saved = (run / "config.yaml").read_bytes()
    proc = cli("pretrain", "--resume", f"--train.out_dir={run}", f"--data.root={tmp_path / 'moved'}", check=False)
    assert_user_error(proc, "cifar10 train files not found")
    assert (run / "config.yaml").read_bytes() == saved  # not rewritten by a resume that failed
    # Nor another seed (a user test: eval --random-init of the resumed run's checkpoint then built another
    # network than the one the run started from, and its kNN at random init was not the run's).
    proc = cli("pretrain", "--resume", f"--train.out_dir={run}", "--train.seed=7", "--train.max_steps=4", check=False)
    assert_user_error(proc, f"{run / 'checkpoints' / 'last.pt'}'s run started from train.seed=0: its initial weights, "
                            "which eval --random-init rebuilds as the baseline, and its data's order come from it; "
                            "resume with --train.seed=0, or start a new run for another seed")
    assert (run / "config.yaml").read_bytes() == saved and load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2
    proc = cli("pretrain", "--resume", f"--train.out_dir={run}", "--model.use_predictor=false", check=False)
    assert_user_error(proc, f"{run / 'checkpoints' / 'last.pt'} holds the network of model.use_predictor=true, and a "
                            "resume trains that network on: resume with --model.use_predictor=true, or start a new run "
                            "for another")  # (a user test: a traceback's terms, blaming the backbone or width)
    assert (run / "config.yaml").read_bytes() == saved
    # The run's own settings (width 8, batch 16, 128 images, SGD), not the cifar10 preset's: the
    # preset's width 64 would not even load.
    proc = cli("pretrain", "--resume", f"--train.out_dir={run}", "--train.max_steps=4")
    assert (f"note: resuming {run} from step 2 (0.25 of 1 epoch done; train.max_steps ends it at step 4, in epoch 1), "
            "with settings that differ from the checkpoint's: train.max_steps 2 -> 4") in proc.stderr, proc.stderr
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == 4 and state["config"]["model"]["width"] == 8 and state["config"]["optim"]["name"] == "sgd"
    # A finished run: nothing to do, said in a note, exit 0, and the settings given are not kept.
    saved = (run / "config.yaml").read_bytes()
    proc = cli("pretrain", "--resume", f"--train.out_dir={run}", "--optim.lr=0.5", "--data.limit=256")
    assert f"note: the run in {run} is finished: step 4, and train.max_steps=4 ends it" in proc.stderr
    # and that alone: no notes of what the settings given would change (a user test)
    assert [line for line in proc.stderr.splitlines() if line.startswith("note: ")] == [
        f"note: the run in {run} is finished: step 4, and train.max_steps=4 ends it; to train on, resume with a "
        "larger value"], proc.stderr
    assert (run / "config.yaml").read_bytes() == saved and "final loss" not in proc.stdout
    # A run folder moved elsewhere resumes there, not into the folder its config.yaml names.
    moved = tmp_path / "elsewhere"
    shutil.copytree(run, moved)
    cli("pretrain", "--resume", f"--train.out_dir={moved}", "--train.max_steps=5")
    assert load_checkpoint(moved / "checkpoints" / "last.pt")["step"] == 5
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4
    # --config with --resume only locates the run; what it would change is named, not used.
    proc = cli("pretrain", "--resume", "--config", "cifar10-cpu", f"--train.out_dir={moved}",
               "--train.max_steps=6")
    assert "these settings of cifar10-cpu differ from it and are not used" in proc.stderr, proc.stderr
    assert load_checkpoint(moved / "checkpoints" / "last.pt")["config"]["model"]["width"] == 8
    # An emptied config.yaml is taken as a missing one: the checkpoint's settings (a user test: the error
    # there was said to advise --config, which only locates the run).
    (moved / "config.yaml").write_text("")
    proc = cli("pretrain", "--resume", f"--train.out_dir={moved}", "--train.max_steps=7")
    assert (f"note: {moved / 'config.yaml'} is empty; the run goes on with the settings saved in "
            f"{moved / 'checkpoints' / 'last.pt'}") in proc.stderr, proc.stderr
    state = load_checkpoint(moved / "checkpoints" / "last.pt")
    assert state["step"] == 7 and state["config"]["model"]["width"] == 8
    fault_table("--resume with only the run folder; with the data moved; of a finished run; of a moved run folder",
                "continues with the run's own config.yaml (a note says the step it goes on from and lists settings "
                "changed with it) in the folder "
                "given; a failed resume leaves config.yaml as it was; a finished run is a note, exit 0")


def test_float32_is_suggested_for_nan_losses_only_to_a_run_in_bf16(tmp_path):
    from byol.reporting import nonfinite_error
    for amp in (True, False):
        message = str(nonfinite_error(3, 4, "so the run stopped", tmp_path / "last.pt", amp))
        assert ("lower optim.lr or use train.precision=fp32 and start again" in message) is amp, message
        assert message.endswith("lower optim.lr and start again") is not amp, message


def test_a_nan_stop_says_whether_the_run_stopped_early_or_ended_unsaved(tmp_path):
    """Reached at the run's last step (or at a stop by a signal), the NaN limit does not stop the run:
    its end is not saved (it said "so the run stopped" at the last step too)."""
    from types import SimpleNamespace
    from byol.precision import precision_name
    from byol.reporting import Clock, NonFiniteLossError, Report
    from byol.train import _finish
    record = {"train/loss": float("nan"), "monitor/z_std": 0.0, "monitor/effective_rank": 1.0,
              "train/nonfinite_streak": 3}
    loop_step = SimpleNamespace(read=lambda z1: dict(record), amp=None)
    for last, what in ((False, "(by step 4), so the run stopped; "),
                       (True, "(by step 4), up to the run's end, which was not saved; ")):
        clock = Clock(torch.device("cpu"), None)
        report = Report(loop_step, None, None, None, clock, 16, 3, tmp_path / "last.pt", 0, 4, epochs=1)
        with pytest.raises(NonFiniteLossError, match=re.escape(f"3 steps in a row {what}no checkpoint was written")):
            report(4, torch.zeros(16, 8), last=last)
    data = SimpleNamespace(folder=None, knn_train=None)
    guard = SimpleNamespace(streak=torch.tensor(2))
    closed = []
    log = SimpleNamespace(close=lambda finished: closed.append(finished))
    for results, what in (({}, "the run's end"), ({"stopped_by": "SIGTERM"}, "its stop by SIGTERM")):
        message = f"2 steps in a row (by step 4), up to {what}, which was not saved; no checkpoint was written"
        with pytest.raises(NonFiniteLossError, match=re.escape(message)):
            _finish({"precision": precision_name(None), **results}, 4, data, guard, log, tmp_path, rank=0)
    assert closed == [False, False]  # not a success in TensorBoard's HParams tab


def test_a_run_that_ends_on_nan_losses_fails_and_says_what_was_saved(tmp_path, cifar, fault_table):
    # Fewer NaN steps than train.max_nonfinite, up to the run's end: that end is not saved, so
    # the run must not report success (it did, with exit 0 and no checkpoint at all).
    nan = {"train.knn_every": -1, "optim.name": "adamw", "optim.lr": 1e30, "train.max_steps": 4}
    proc = byol("pretrain", cifar, *tiny_overrides(tmp_path / "run", **nan), check=False)
    assert_user_error(proc, "NaN or infinite for 3 steps in a row (by step 4), up to the run's end, which was not "
                      "saved; no checkpoint was written")
    # float32 is suggested only to a run that was not in it
    assert ("train.precision=fp32" in proc.stderr) is native_bf16(torch.device("cpu")), proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert session_status(tmp_path / "run") == "none"  # TensorBoard's HParams tab: unknown (it said success)
    fault_table("loss NaN up to the run's end (fewer steps than train.max_nonfinite)",
                "exit 2, one sentence: the end was not saved, and which checkpoint is the last good one (or none)")


def test_a_folder_with_no_decodable_image_is_one_sentence(tmp_path, fault_table):
    for i in range(5):
        (tmp_path / "images" / f"{i}.jpg").parent.mkdir(exist_ok=True)
        (tmp_path / "images" / f"{i}.jpg").write_text("not an image")
    proc = byol("pretrain", "--data.dataset=folder", f"--data.root={tmp_path / 'images'}", "--data.workers=0",
                *tiny_overrides(tmp_path / "run", **{"train.batch_size": 2, "train.knn_every": -1}), check=False)
    assert_user_error(proc, f"none of the 5 image files in {tmp_path / 'images'} could be decoded")
    assert not (tmp_path / "run").exists()  # found at the first step: the start leaves nothing behind
    proc = byol("pretrain", "--data.dataset=folder", f"--data.root={tmp_path / 'images'}", "--data.workers=0",
                *tiny_overrides(tmp_path / "run", **{"train.batch_size": 2, "train.knn_every": -1,
                                                     "train.progress": True}), check=False)
    assert proc.returncode == 2 and "pretrain:" in proc.stderr, proc.stderr  # the bar was drawn
    # The bar is closed first: the error starts a line of its own instead of landing on the bar's.
    assert any(line.startswith("byol: error: none of the 5") for line in proc.stderr.split("\n")), proc.stderr
    fault_table("image folder in which no file can be decoded", "one sentence with one file and why, exit 2; "
                "no run folder left")


def test_out_of_memory_batch_is_one_sentence(monkeypatch, capsys, tmp_path, cifar, fault_table):
    import byol.step
    from byol import cli

    def oom(*args, **kwargs):
        # (torch.cuda's name: torch.OutOfMemoryError, the same class, came in torch 2.5)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")

    monkeypatch.setattr(byol.step, "train_step", oom)
    code = cli.main(["pretrain", cifar, *tiny_overrides(tmp_path / "runs" / "run", **{"train.knn_every": -1})])
    err = capsys.readouterr().err
    # The notes a start prints (here: tiny_overrides' one epoch is all warm-up) are not part of the error.
    assert code == 2 and [line for line in err.strip().splitlines() if not line.startswith("note: ")] == [
        "byol: error: the batch does not fit in memory; lower train.batch_size (to half, say), or data.image_size "
        "or the model's size (model.width, model.projection_hidden_size)"]
    assert not (tmp_path / "runs").exists()  # the folders this start made are gone with it
    # A resume that fails at its first step leaves the run as it was: config.yaml (which it rewrote
    # with the new setting), metrics.jsonl (which it cut back to the checkpoint) and TensorBoard's
    # events (a purge marker in a new file).
    run = tmp_path / "run"
    monkeypatch.undo()
    assert cli.main(["pretrain", cifar, *tiny_overrides(run, **{"train.max_steps": 4, "train.log_every": 1,
                                                               "train.knn_every": -1})]) == 0
    shutil.copy(run / "checkpoints" / "last.pt", run / "kept.pt")
    assert cli.main(["pretrain", "--resume", cifar, *tiny_overrides(run, **{"train.max_steps": 6, "train.log_every": 1,
                                                                           "train.knn_every": -1})]) == 0
    shutil.copy(run / "kept.pt", run / "checkpoints" / "last.pt")  # as if killed after step 4's checkpoint
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    monkeypatch.setattr(byol.step, "train_step", oom)
    capsys.readouterr()
    assert cli.main(["pretrain", "--resume", cifar, *tiny_overrides(run, **{"train.max_steps": 8})]) == 2
    # not "lower train.batch_size", which a resume refuses (its checkpoint's steps are in that many images)
    assert capsys.readouterr().err.endswith(
        "byol: error: the batch does not fit in memory; lower data.image_size (a resumed run keeps its checkpoint's "
        "train.batch_size and model), or start a new run with a smaller train.batch_size\n")
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    fault_table("batch too big for device memory (OutOfMemoryError, simulated)", "one sentence, exit 2; a new "
                "run's folder is removed, a resumed run's files are left as they were")


def test_out_of_memory_in_the_knn_monitor_names_what_the_monitor_takes(monkeypatch, capsys, tmp_path, cifar,
                                                                       fault_table):
    """A review: memory run out in the kNN monitor's features (batches of 512, whatever train.batch_size) was said
    as a training step's, "lower train.batch_size", which changes nothing there; a resume's named data.image_size."""
    import byol.features
    from byol.knn_monitor import MONITOR_BATCH
    extract = byol.features.extract_features_sharded
    calls = []

    def out_of_memory_at(n: int):
        def extract_or_fail(encoder, *args, **kwargs):  # the monitor's forward, not a training step's
            calls.append(1)
            if len(calls) == n:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
            return extract(encoder, *args, **kwargs)
        return extract_or_fail

    def overrides(**extra):
        return [cifar, *tiny_overrides(run, **{"train.max_steps": 4, "train.knn_every": 0, **extra})]

    run = tmp_path / "run"
    monkeypatch.setattr(byol.features, "extract_features_sharded", out_of_memory_at(1))  # at random init
    _, said = main_error(capsys, "pretrain", *overrides(), after_progress=True)
    assert said.startswith("byol: error: the kNN monitor ran out of memory") and "--train.knn_every=-1" in said, said
    assert f"{MONITOR_BATCH} at a time" in said and "lower train.batch_size" not in said
    assert not run.exists()  # nothing was written yet: the start's folder is gone with it
    calls.clear()
    monkeypatch.setattr(byol.features, "extract_features_sharded", out_of_memory_at(3))  # after the last step
    assert main_error(capsys, "pretrain", *overrides(), after_progress=True)[1] == said
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4  # written before the evaluation
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    calls.clear()
    monkeypatch.setattr(byol.features, "extract_features_sharded", out_of_memory_at(1))  # the resume scores it
    _, said = main_error(capsys, "pretrain", "--resume", *overrides(**{"train.max_steps": 6}), after_progress=True)
    assert said.startswith("byol: error: the kNN monitor ran out of memory") and "data.image_size" not in said, said
    assert "resume with --train.knn_every=-1" in said and "train.knn_limit" not in said  # (fixed by its checkpoint)
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    from byol.cli import main
    assert main(["pretrain", "--resume", *overrides(**{"train.max_steps": 6, "train.knn_every": -1})]) == 0  # as said
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 6
    fault_table("the kNN monitor's features too big for memory (OutOfMemoryError, simulated): at random init, "
                "after the last step, in a resume", "one sentence, exit 2, naming train.knn_every=-1 (and, but for a "
                "resume, train.knn_limit), not train.batch_size; the checkpoint written before it is kept, and a "
                "resume with the monitor off goes on")


def test_nonfinite_step_is_undone_for_every_dtype():
    # The restore works on the tensors' bits (integer views of their width): check each width, with
    # values whose bit patterns are negative integers (negative floats), NaN and infinities; compared
    # bit for bit (NaN too).
    values = torch.tensor([-2.5, 0.0, 1.0, float("nan"), float("-inf"), -0.0])
    model = nn.Module()
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.complex128):
        model.register_parameter("p_" + str(dtype).split(".")[1], nn.Parameter(values.to(dtype)))
    model.register_buffer("count", torch.tensor(7, dtype=torch.int64))
    model.register_buffer("flags", torch.tensor([True, False]))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = NonFiniteGuard([model], opt, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for bad in (True, False):
        guard.snapshot()
        with torch.no_grad():
            for t in model.state_dict().values():
                t.copy_(torch.ones_like(t) * 3 if t.dtype != torch.bool else ~t)
        stepped = {k: v.clone() for k, v in model.state_dict().items()}
        ok = guard.settle(torch.tensor(float("nan") if bad else 1.0))
        assert bool(ok) is not bad
        expected = before if bad else stepped
        for k, v in model.state_dict().items():
            assert torch.equal(v.reshape(-1).view(torch.uint8), expected[k].reshape(-1).view(torch.uint8)), (k, bad)


def test_a_parameter_replaced_or_given_new_memory_between_steps_is_guarded():
    """The guard reads its modules' tree once and recognizes a step's tensors by identity and address:
    a parameter replaced by another, or given new memory, after earlier snapshots is still put back."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    guard = NonFiniteGuard([model], opt, torch.device("cpu"))
    for _ in range(2):
        guard.snapshot()
        loss = model(torch.randn(8, 4)).sum()
        opt.zero_grad(), loss.backward(), opt.step()
        assert guard.settle(loss)
    changes = (lambda: setattr(model[0].weight, "data", model[0].weight.data.clone()),  # new memory
               lambda: setattr(model[1], "bias", nn.Parameter(torch.tensor([5.0]))))  # another Parameter
    for change in changes:
        change()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        guard.snapshot()
        with torch.no_grad():
            for v in model.state_dict().values():
                v.fill_(7.0)
        assert not guard.settle(torch.tensor(float("nan")))
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), k


class _Buffered(nn.Module):
    def __init__(self, buffer: torch.Tensor):
        super().__init__()
        self.register_buffer("b", buffer)


@pytest.mark.parametrize("change", ["t_", "square t_", "resize_", "empty", "dtype"])
def test_a_buffer_given_another_layout_in_the_same_memory_is_put_back(change):
    """A tensor transposed or resized in place, or its memory viewed as another dtype of its width, keeps its
    id and address (and every tensor of no elements has address 0): the guard's buffers are made again for
    it, not put back transposed, converted or refused. (A mutation audit: leaving the strides out of what tells
    a layout survived, the transposed tensor being 2 x 3: a square one keeps its shape, only its strides change.)"""
    square = torch.arange(9.0).reshape(3, 3)
    model = _Buffered(torch.empty(0) if change == "empty" else square if change == "square t_" else
                      torch.arange(6.0).reshape(2, 3))
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    guard = NonFiniteGuard([model], opt, torch.device("cpu"))
    guard.snapshot()
    assert guard.settle(torch.tensor(1.0))
    if change == "empty":
        model.b.data = torch.empty(0, 5, dtype=torch.float64)
    elif change == "dtype":
        model.b.data = model.b.data.view(torch.int32)
    else:
        getattr(model.b, change.split()[-1])(*(() if change.endswith("t_") else (3, 2)))
    before = model.b.clone()
    guard.snapshot()
    model.b.fill_(9.0)
    assert not guard.settle(torch.tensor(float("nan")))
    assert model.b.shape == before.shape and torch.equal(model.b, before)


class _NewStateEachStep(torch.optim.Optimizer):
    """SGD with momentum whose state is made again at each step (the old tensor freed first), as some
    optimizers written functionally do."""

    def __init__(self, params):
        super().__init__(params, {"lr": 0.1})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                old = self.state[p].pop("buf", None)
                kept = None if old is None else old.clone()
                del old
                buf = torch.zeros_like(p)
                buf.add_(p.grad if kept is None else kept * 0.9 + p.grad)
                self.state[p]["buf"] = buf
                p.add_(buf, alpha=-group["lr"])


def test_optimizer_state_made_again_by_an_undone_step_is_zeroed():
    """State a step made is zeroed where the step is undone, also where the new tensor has the id of one the
    snapshot saw (CPython gives a freed object's id to the next): the snapshot's tensors stay alive to the
    settle, so no new one has an id the guard knows."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = _NewStateEachStep(model.parameters())
    guard = NonFiniteGuard([model], opt, torch.device("cpu"))
    for step in range(4):
        guard.snapshot()
        loss = model(torch.randn(4, 3)).sum() * (float("nan") if step == 2 else 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert bool(guard.settle(loss)) == (step != 2)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(state["buf"]).all() for state in opt.state.values())


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _settle_ops(layers: int) -> int:
    model = nn.Sequential(*[m for _ in range(layers) for m in (nn.Linear(4, 4), nn.BatchNorm1d(4))])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    guard = NonFiniteGuard([model], opt, torch.device("cpu"))
    for _ in range(2):  # the second step has momentum to guard as well
        guard.snapshot()
        loss = model(torch.randn(8, 4)).sum()
        opt.zero_grad(), loss.backward(), opt.step()
        with _CountOps() as ops:
            guard.settle(loss)
    return ops.count


def test_settle_dispatches_a_fixed_number_of_ops_whatever_the_model_size():
    # On a GPU every op is a kernel launch: a few foreach ops for 10 or 400 tensors, not one each.
    assert _settle_ops(2) == _settle_ops(40) < 30


def test_optimizer_state_created_by_a_nonfinite_first_step_is_cleared():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    guard = NonFiniteGuard([model], opt, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    guard.snapshot()
    loss = model(torch.full((2, 4), float("inf"))).sum() * 0.0  # NaN: inf * 0
    opt.zero_grad(), loss.backward(), opt.step()
    assert not guard.settle(loss)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(torch.equal(opt.state[p]["momentum_buffer"], torch.zeros_like(p)) for p in model.parameters())


def test_plots_that_cannot_be_written_are_a_note_and_the_run_goes_on(monkeypatch, capsys, tmp_path, cifar, fault_table):
    """A full disk when the plots are drawn (after the checkpoint was written): a note once, the run
    finishes (a user test saw a 58-line traceback, exit 1, and the final kNN lost)."""
    import errno
    import byol.saving
    from byol import cli

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(byol.saving, "plot_metrics", full)
    run = tmp_path / "run"
    settings = {"train.epochs": 2, "train.knn_every": -1, "train.progress": True}
    assert cli.main(["pretrain", cifar, *tiny_overrides(run, **settings)]) == 0
    notes = [line for line in shown_lines(capsys.readouterr().err) if "plots" in line]  # on a line of their own
    assert notes == [f"note: the plots in {run} could not be written (No space left on device); training goes on, "
                     "and they are drawn again at each checkpoint"]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 16  # both epochs' checkpoints written
    fault_table("disk full when the plots are drawn (simulated)", "a note, once; the run finishes, its checkpoints "
                "written, exit 0")


@pytest.fixture
def hangups_not_ignored():
    """SIGHUP at its default for the test, as in a terminal: a test run under nohup inherits it ignored,
    which byol then leaves alone."""
    before = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGHUP, before)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_before_the_first_step_is_a_line_and_undoes_the_start(monkeypatch, capsys, tmp_path, cifar, signum,
                                                                      fault_table, hangups_not_ignored):
    """A scheduler's SIGTERM while a start loads its data (a user test: exit -15, nothing said, a
    folder left behind): one line, exit 143, the folder made by the start removed, as Ctrl-C does.
    SIGHUP (the terminal closed) likewise, exit 129 (a user test: it killed the process at once)."""
    import byol.run_setup
    from byol import cli
    load, before = byol.run_setup.load_data, signal.getsignal(signum)

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signum)
        return load(*args, **kwargs)

    monkeypatch.setattr(byol.run_setup, "load_data", signalled)
    code = cli.main(["pretrain", cifar, *tiny_overrides(tmp_path / "runs" / "run")])
    name = signal.Signals(signum).name
    assert code == 128 + signum and capsys.readouterr().err.strip().splitlines()[-1] == f"byol: terminated ({name})"
    assert not (tmp_path / "runs").exists() and signal.getsignal(signum) is before
    fault_table(f"{name} before the first step (while the data loads)", f"one line, exit {128 + signum}; the folder "
                "the start made is removed")


@pytest.fixture
def survived(request):
    """The signal given as ``request.param`` caught by a handler of the test's, which records it: where byol
    leaves it alone, it would otherwise end the test process (Python's default, as for SIGUSR1)."""
    caught: list = []
    before = signal.signal(request.param, lambda signum, frame: caught.append(signum))
    yield request.param, caught
    signal.signal(request.param, before)


@pytest.mark.parametrize("survived", [signal.SIGUSR1, signal.SIGUSR2], indirect=True)
def test_a_schedulers_warning_of_its_time_limit_stops_a_run_as_sigterm_does(monkeypatch, capsys, tmp_path, cifar,
                                                                            survived, fault_table):
    """A user test (a Slurm job with --signal=USR1@60, the time limit's warning): SIGUSR1 ended the run at
    once, as Python's default does, with nothing said and the steps since the last checkpoint lost, the
    first epoch's all of them. It now finishes the step, saves and exits 138 (SIGUSR2: 140), as SIGTERM
    does with 143; before the first step it is a line and the start is undone."""
    import byol.step
    import byol.run_setup
    from byol import cli
    signum, caught = survived
    name = signal.Signals(signum).name
    train_step, calls = byol.step.train_step, []

    def signalled(*args, **kwargs):  # in the third step
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signum)
        return train_step(*args, **kwargs)

    monkeypatch.setattr(byol.step, "train_step", signalled)
    run = tmp_path / "run"
    settings = ["pretrain", cifar, *tiny_overrides(run, **{"train.knn_every": -1})]
    assert cli.main(settings) == 128 + signum and caught == []
    ckpt = run / "checkpoints" / "last.pt"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (f"stopped by {name} at step 3; checkpoint saved to "
                                                                 f"{ckpt}; continue with --resume")
    assert load_checkpoint(ckpt)["step"] == 3
    load = byol.run_setup.load_data
    monkeypatch.setattr(byol.run_setup, "load_data", lambda *a, **k: os.kill(os.getpid(), signum) or load(*a, **k))
    assert cli.main(["pretrain", cifar, *tiny_overrides(tmp_path / "runs" / "new")]) == 128 + signum
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"byol: terminated ({name})" and caught == []
    assert not (tmp_path / "runs").exists()
    os.kill(os.getpid(), signum)  # the handler the run found, put back
    assert caught == [signum]
    fault_table(f"{name} during training, and before the first step (a scheduler's warning of the time limit: "
                "Slurm's --signal)", f"as SIGTERM: step finished, checkpoint written, exit {128 + signum}; before the "
                "first step one line, and the folder the start made is removed")


def test_a_signal_while_an_epoch_s_checkpoint_is_written_stops_with_that_checkpoint(monkeypatch, capsys, tmp_path,
                                                                                     cifar):
    """A user test (a cluster job): a SIGTERM while the epoch's checkpoint was being written trained one step
    more and wrote a second checkpoint before it stopped, time taken from the grace a scheduler gives
    before its kill (seconds for a large model on slow storage). The checkpoint just written is the stop's."""
    import byol.saving
    from byol import cli
    save, written = byol.saving.save_checkpoint, []

    def signalled(path, byol_, optimizer, step, *args, **kwargs):
        written.append((path.name, step))
        if len(written) == 1:  # the first epoch's end (8 steps an epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return save(path, byol_, optimizer, step, *args, **kwargs)

    monkeypatch.setattr(byol.saving, "save_checkpoint", signalled)
    run = tmp_path / "run"
    assert cli.main(["pretrain", cifar, *tiny_overrides(run, **{"train.epochs": 2, "train.knn_every": -1})]) == 143
    assert written == [("last.pt", 8)]
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        f"stopped by SIGTERM at step 8; checkpoint saved to {run / 'checkpoints' / 'last.pt'}; continue with --resume")
    assert err.count("stopped by SIGTERM") == 1  # said by pretrain (to a script, a notebook), not again by the CLI


def test_a_second_ctrl_c_says_what_it_costs(capsys, monkeypatch):
    """A user test (a notebook): a second Ctrl-C stopped at once, as documented, but nothing said that the
    steps since the last checkpoint were lost."""
    from byol import cli
    from byol.faults import SECOND_INTERRUPT, StopRequest
    with pytest.raises(KeyboardInterrupt, match="^a Ctrl-C while the run was stopping ends it at once, without the "):
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.requested
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(cli, "run", lambda argv: stop._handle(signal.SIGINT, None))
    assert cli.main(["pretrain"]) == 130
    assert capsys.readouterr().err == f"byol: interrupted: {SECOND_INTERRUPT}\n"


def test_a_second_ctrl_c_after_the_stop_s_checkpoint_says_nothing_is_lost(monkeypatch, capsys, tmp_path, cifar):
    """A user test (docs/runs.md): a second Ctrl-C while the stop's plots were drawn, its last.pt already written,
    said 'without the checkpoint it was to write: the steps since the run's last checkpoint ... are lost'."""
    import byol.saving
    from byol import cli
    monkeypatch.setattr(byol.saving.Checkpoints, "_plot", lambda self, progress: os.kill(os.getpid(), signal.SIGINT))
    steps = []

    def save(self, step, *args, **kwargs):  # the first epoch's end (8 steps): the first Ctrl-C, then the write
        steps.append(step)
        if len(steps) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real_save(self, step, *args, **kwargs)

    real_save = byol.saving.Checkpoints.save
    monkeypatch.setattr(byol.saving.Checkpoints, "save", save)
    run = tmp_path / "run"
    assert cli.main(["pretrain", cifar, *tiny_overrides(run, **{"train.epochs": 2, "train.knn_every": -1})]) == 130
    assert steps == [8]
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "byol: interrupted: a Ctrl-C while the run was stopping ends it at once, after the checkpoint of step 8 "
        "was written: --resume goes on from it")


def test_a_second_ctrl_c_while_the_stop_s_checkpoint_is_written_says_steps_are_lost(monkeypatch, capsys, tmp_path,
                                                                                  cifar):
    """A review: last.pt of an earlier step (the first epoch's, 8) holds not the steps since (9 and 10), so a
    second Ctrl-C while the stop's own last.pt (step 10) is written says they are lost, not 'step 8 ... goes on'."""
    import byol.saving
    import byol.step
    from byol import cli
    from byol.faults import SECOND_INTERRUPT
    real_call, real_write = byol.step.LoopStep.__call__, byol.saving.Checkpoints._write

    def call(self, step, images):  # the first Ctrl-C in step 10's step
        if step == 9:
            os.kill(os.getpid(), signal.SIGINT)
        return real_call(self, step, images)

    def write(self, name, step, progress):  # the second, as the stop's checkpoint is written
        if step == 10:
            os.kill(os.getpid(), signal.SIGINT)
        return real_write(self, name, step, progress)

    monkeypatch.setattr(byol.step.LoopStep, "__call__", call)
    monkeypatch.setattr(byol.saving.Checkpoints, "_write", write)
    run = tmp_path / "run"
    assert cli.main(["pretrain", cifar, *tiny_overrides(run, **{"train.epochs": 2, "train.knn_every": -1})]) == 130
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 8
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"byol: interrupted: {SECOND_INTERRUPT}"


@pytest.mark.parametrize("first", [signal.SIGUSR1, signal.SIGTERM])
def test_a_sigterm_while_the_run_stops_is_not_a_second_ctrl_c(first):
    """A mutation audit: a second signal of any kind raising the second Ctrl-C's KeyboardInterrupt survived every
    test. Only a second Ctrl-C stops at once (docs/runs.md): Slurm's SIGTERM at the time limit after its SIGUSR1
    warning (--signal=USR1@120), or a kill sent twice, must not cost the checkpoint the stop is writing."""
    from byol.faults import StopRequest
    try:
        with StopRequest() as stop:
            os.kill(os.getpid(), first)
            os.kill(os.getpid(), signal.SIGTERM)
    except KeyboardInterrupt as e:  # caught: pytest would take it for a Ctrl-C of its own and end the session
        pytest.fail(f"a SIGTERM after {signal.Signals(first).name} raised KeyboardInterrupt({e})")
    assert stop.requested


def test_a_stop_request_gives_back_the_signal_handlers_it_replaced():
    """A mutation audit: StopRequest leaving its handlers in place survived every test (the command line puts
    SIGTERM's and SIGHUP's back itself). After byol.pretrain in a notebook, a Ctrl-C then set a flag that no
    loop reads, and the next one raised the second Ctrl-C's KeyboardInterrupt."""
    from byol.faults import StopRequest
    before = {s: signal.getsignal(s) for s in StopRequest.SIGNALS}
    with StopRequest():
        assert signal.getsignal(signal.SIGINT) != before[signal.SIGINT]
    assert {s: signal.getsignal(s) for s in StopRequest.SIGNALS} == before


def test_only_the_first_signal_within_interrupting_raises_stopped():
    """A mutation audit: interrupting() left raising once its block ended, and a second signal raising Stopped
    again while the first was handled, survived the fast tests. Either lets a SIGTERM raise Stopped outside the
    kNN evaluation (in a training step, past every handler of it): the run dies without its checkpoint. The
    second signal, and any after the block, only set the flag, as between steps."""
    with StopRequest() as stop:
        try:
            with stop.interrupting():
                with pytest.raises(Stopped):
                    os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)  # (as while the first one unwinds the evaluation)
            assert stop.requested
            stop.signum = None
            with stop.interrupting():
                pass
            os.kill(os.getpid(), signal.SIGTERM)  # in a training step: flagged, for the loop to stop after it
        except Stopped:
            pytest.fail("a signal raised Stopped outside the first one within interrupting()")
        assert stop.requested


@pytest.mark.parametrize("stopping", [False, True])
def test_a_signal_that_comes_while_a_weakref_callback_runs_is_not_dropped(stopping):
    """A user test: a second Ctrl-C while the run stopped came in a weakref callback (a WeakKeyDictionary's), whose
    exception Python prints as "Exception ignored" with a traceback and drops: the run went on as if none had come.
    So would a signal during the kNN evaluation. Delivered again once the callback has returned, it raises there."""
    class Referent:
        pass

    def callback(_):
        os.kill(os.getpid(), signal.SIGINT)  # its handler runs here, within the callback

    with StopRequest() as stop:
        if stopping:  # the first signal came: this Ctrl-C is the second
            stop.signum = signal.SIGTERM
        referent = Referent()
        ref = weakref.ref(referent, callback)
        with pytest.raises(KeyboardInterrupt if stopping else Stopped):
            with nullcontext() if stopping else stop.interrupting():
                del referent
                deadline = time.time() + 5
                while time.time() < deadline:
                    time.sleep(0.01)
        assert ref() is None and stop.signum == (signal.SIGTERM if stopping else signal.SIGINT)


@pytest.mark.parametrize("stopping", [False, True])
def test_a_signal_dropped_in_a_weakref_callback_just_before_the_stop_request_exits_is_its_own(stopping):
    """A signal delivered again (as above) that the StopRequest exits before: its handler's, at the exit, not the
    previous handler's a moment later (a SIGTERM that came during the kNN evaluation would end the process after
    the run had finished; here the previous handler records it)."""
    class Referent:
        pass

    def callback(_):
        os.kill(os.getpid(), signal.SIGINT if stopping else signal.SIGTERM)  # its handler runs within the callback

    got = []
    previous = {s: signal.signal(s, lambda s, _: got.append(s)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(KeyboardInterrupt) if stopping else nullcontext():
            with StopRequest() as stop:
                if stopping:  # the first signal came: this Ctrl-C is the second
                    stop.signum = signal.SIGTERM
                referent = Referent()
                ref = weakref.ref(referent, callback)
                with nullcontext() if stopping else stop.interrupting():
                    del referent  # and the StopRequest exits at once
        time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert ref() is None and got == [] and stop.signum == signal.SIGTERM


def test_an_exception_of_another_that_python_cannot_raise_is_the_previous_hook_s_and_it_is_back_after(
        monkeypatch):
    """A mutation audit: a __del__'s own error, after a signal's Stopped was raised, could be taken for the handler's
    (the signal sent again, the error dropped), and the hook was left in place after the stop's block; neither was
    seen by a test. Python's hook, or a user's, gets every other error and is the hook again after the block."""
    class Noisy:
        def __del__(self):
            raise RuntimeError("a __del__'s own error")

    seen = []
    hook = seen.append
    monkeypatch.setattr(sys, "unraisablehook", hook)
    with StopRequest() as stop:
        with stop.interrupting():
            with pytest.raises(Stopped):
                os.kill(os.getpid(), signal.SIGTERM)
        Noisy()
        time.sleep(0.1)  # (a signal sent again would come here)
    assert [str(u.exc_value) for u in seen] == ["a __del__'s own error"]
    assert sys.unraisablehook is hook


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2])
def test_under_nohup_a_hangup_neither_stops_a_run_nor_ends_its_start(monkeypatch, tmp_path, cifar, signum):
    """SIGHUP stops a run as SIGTERM does, but not where it is ignored: nohup's users close the terminal. So
    do SIGUSR1 and SIGUSR2, but not where a job script ignores them (trap '' USR1; a review)."""
    import byol.run_setup
    from byol import cli
    from byol.faults import StopRequest
    load = byol.run_setup.load_data

    def hung_up(*args, **kwargs):
        os.kill(os.getpid(), signum)
        return load(*args, **kwargs)

    before = signal.signal(signum, signal.SIG_IGN)
    try:
        with StopRequest() as stop:
            os.kill(os.getpid(), signum)
            assert not stop.requested and signal.getsignal(signum) is signal.SIG_IGN
        monkeypatch.setattr(byol.run_setup, "load_data", hung_up)
        assert cli.main(["pretrain", cifar, *tiny_overrides(tmp_path / "run", **{"train.max_steps": 2})]) == 0
        assert signal.getsignal(signum) is signal.SIG_IGN
    finally:
        signal.signal(signum, before)


def test_a_second_sigterm_while_a_start_is_undone_does_not_cut_the_undoing_short(monkeypatch, capsys, tmp_path, cifar):
    """A scheduler that repeats its SIGTERM (or sends it to the process and then its group) while
    the first one's undoing runs: that one is ignored, and the start is undone all the same."""
    import byol.run_folder
    import byol.run_setup
    from byol import cli
    load, undo = byol.run_setup.load_data, byol.run_folder.RunFolder.undo

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return load(*args, **kwargs)

    def signalled_again(self):
        os.kill(os.getpid(), signal.SIGTERM)
        undo(self)

    monkeypatch.setattr(byol.run_setup, "load_data", signalled)
    monkeypatch.setattr(byol.run_folder.RunFolder, "undo", signalled_again)
    code = cli.main(["pretrain", cifar, *tiny_overrides(tmp_path / "runs" / "run")])
    assert code == 143 and capsys.readouterr().err.strip().splitlines()[-1] == "byol: terminated (SIGTERM)"
    assert not (tmp_path / "runs").exists()


def _folder_run(tmp_path, **popen) -> tuple:
    """(run folder, process) of a long folder run with two decoding processes, once it has logged a step."""
    from conftest import extract_jpegs
    root = extract_jpegs(tmp_path / "jpegs", per_class=20)
    run = tmp_path / "run"
    # TMPDIR: a decoding process killed (SIGKILL) leaves its multiprocessing pymp-* folder behind
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "byol", "pretrain", "--data.dataset=folder", f"--data.root={root}",
                             "--data.image_size=32", *tiny_overrides(run, **{**SLOW_RUN, "train.epochs": 50,
                                                                            "data.workers": 2})],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **popen)
    _wait_for_step(run, proc)
    return run, proc


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_sigterm_to_the_whole_job_stops_a_folder_run_as_one_to_its_main_process(tmp_path, signum, fault_table):
    """A scheduler's cancel (SIGTERM) reaches every process of the job, the decoding processes too: one
    that died of it made the run fail with a traceback ("DataLoader worker ... is killed by signal:
    Terminated", a user test) before it could save. They leave it to the main process, which finishes
    its step, saves and exits. (Ctrl-C's SIGINT to the group was handled before: torch's decoding
    processes take it quietly.) So does Slurm's warning of the time limit (--signal=USR1@60), which
    reaches every process of the job step too."""
    run, proc = _folder_run(tmp_path, start_new_session=True)  # a process group of its own: the job
    os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum and "Traceback" not in err and "continue with --resume" in err, err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] > 0
    fault_table(f"{signal.Signals(signum).name} to every process of a folder run (its decoding processes too)",
                f"as to the main process alone: step finished, checkpoint written, exit {128 + signum}")


def test_a_decoding_process_killed_by_the_system_is_one_sentence(tmp_path, fault_table):
    """A user test: the out-of-memory killer's SIGKILL to a decoding process (one decoding a huge PNG) ended
    pretrain and embed with torch's traceback, raised by its SIGCHLD handler wherever the main process was."""
    _, proc = _folder_run(tmp_path)
    workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()  # the decoding processes
    assert workers, "no decoding process found"
    os.kill(int(workers[0]), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.strip().splitlines() if not line.startswith("note: ")]
    assert proc.returncode == 2 and "Traceback" not in err, err
    # (torch says "is killed by signal: Killed" from its SIGCHLD handler, "exited unexpectedly" where it
    # finds the process gone while it waits for a batch: whichever comes first)
    how = "(was killed|ended unexpectedly)"
    assert re.fullmatch(f"byol: error: an image decoding process \\(data.workers; pid {workers[0]}\\) {how}, often "
                        "the system's out-of-memory killer's doing; lower data.workers \\(0: decode in this process\\) "
                        "or data.load_size; a pretraining run that wrote a checkpoint goes on from it with --resume",
                        lines[-1]), err
    fault_table("a decoding process of a folder run killed (SIGKILL, as the out-of-memory killer sends)",
                "one sentence (which process, what to lower, --resume), exit 2")


def test_an_encoder_with_nan_in_it_is_one_sentence_in_eval_embed_and_export_and_writes_nothing(capsys, tmp_path,
                                                                                               cifar10_root, fault_table):
    """A user test: eval of a state_dict with one NaN BatchNorm variance was a traceback (the building
    block's ValueError), embed wrote all-NaN embeddings, said they were written and exited 0, and (a
    review) export wrote the broken encoder. Finite weights whose activations overflow: the features."""
    from byol.backbones import resnet
    state = resnet("resnet18", cifar_stem=True, width=8).state_dict()
    state["layer4.1.bn2.running_var"][0] = float("nan")
    (tmp_path / "nan").mkdir()
    (tmp_path / "huge").mkdir()
    nan, huge = tmp_path / "nan" / "encoder.pt", tmp_path / "huge" / "encoder.pt"
    torch.save(state, nan)
    state["layer4.1.bn2.running_var"][0] = 1.0
    state["conv1.weight"] *= 1e38  # finite, but its activations overflow to inf, and inf - inf is NaN
    torch.save(state, huge)
    usage = ["--limit=8", "--model.width=8", "--train.device=cpu", "--train.precision=fp32",
             f"--data.root={cifar10_root}"]
    for command in (["eval", "knn"], ["eval", "linear", "--epochs=1"], ["embed", "--out", tmp_path / "e.npy"]):
        _, line = main_error(capsys, *command, nan, *usage, after_progress=True)  # after the no-config.yaml note
        assert line == f"byol: error: the encoder of {nan} holds NaN or infinite values in 1 of its tensors (e.g. " \
            "layer4.1.bn2.running_var), as after a run that diverged; evaluate, embed or export an earlier " \
            "checkpoint", line
        _, line = main_error(capsys, *command, huge, *usage, after_progress=True)
        assert line == f"byol: error: the encoder of {huge} gives NaN or infinite features for 8 of the 8 images " \
            "(its activations overflow, as in a run about to diverge); evaluate or embed an earlier checkpoint", line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge", "nan"]
    run = tmp_path / "run"  # export takes a run's checkpoint
    byol("pretrain", "--config", "cifar10-cpu", f"--data.root={cifar10_root}",
         *tiny_overrides(run, **{"train.max_steps": 1, "train.knn_every": -1}))
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    ckpt["model"]["online.encoder.body.bn1.running_var"][0] = float("inf")
    torch.save(ckpt, run / "checkpoints" / "last.pt")
    _, line = main_error(capsys, "export", run / "checkpoints" / "last.pt", "--out", tmp_path / "export")
    assert "holds NaN or infinite values in 1 of its tensors (e.g. bn1.running_var)" in line, line
    assert not (tmp_path / "export").exists()
    fault_table("an encoder with a NaN BatchNorm variance; one whose weights are finite but whose activations "
                "overflow (x 1e38)", "byol eval knn / linear, embed and export: one sentence naming a bad tensor or "
                "how many images gave non-finite features, exit 2, nothing written")


def test_a_storage_that_fails_mid_run_stops_it_in_one_sentence_and_the_run_resumes(tmp_path, monkeypatch, capsys,
                                                                                   fault_table):
    """A user's question: the data's disk failing mid-run had every later image skipped as undecodable, then
    the run stopped saying that none of the folder's files could be decoded (all of which an epoch before had
    been); a storage back after a while left a run that trained on without its images and listed them as bad."""
    import byol.folder
    from byol.cli import main
    root = extract_jpegs(tmp_path / "photos", per_class=2)  # 20 images: 5 steps of 4 an epoch
    real, reads, broken = byol.folder.decode_image, [], [True]

    def failing_after_an_epoch(path, size):
        reads.append(path)
        if len(reads) > 26 and broken:  # in epoch 2
            raise OSError(errno.EIO, os.strerror(errno.EIO), path)
        return real(path, size)

    monkeypatch.setattr(byol.folder, "decode_image", failing_after_an_epoch)
    run = tmp_path / "run"
    settings = ["--data.dataset=folder", f"--data.root={root}", "--data.workers=0",
                *tiny_overrides(run, **{"train.batch_size": 4, "train.knn_every": -1, "train.epochs": 3,
                                        "data.limit": "null"})]
    _, said = main_error(capsys, "pretrain", *settings, after_progress=True)  # (after epoch 1's line)
    assert re.fullmatch(rf"byol: error: cannot read {re.escape(str(root))}/\w+/\w+\.jpg \(Input/output error, EIO\): "
                        r"the storage it is on failed .* with --resume \(a file that never reads again: move it out of the folder\)",
                        said), said
    assert (run / "checkpoints" / "last.pt").is_file() and not (run / "skipped_files.txt").exists()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 5  # epoch 1's, kept
    broken.clear()  # the storage back
    assert main(["pretrain", "--resume", *settings]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 15 and not (run / "skipped_files.txt").exists()
    fault_table("image folder: its storage fails mid-run (every read OSError EIO; also ESTALE, ENOTCONN, the folder "
                "moved away: ENOENT, its permissions changed: EACCES)",
                "one sentence naming the file and the errno, exit 2; no file listed as undecodable; the last "
                "checkpoint kept, and --resume goes on from it once the storage is back")
