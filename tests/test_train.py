import contextlib
import json
import math
import os
import re
import shutil
import signal
import types
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import byol.build
import byol.checkpoint
import byol.cuda_graph
import byol.faults
import byol.features
import byol.knn_monitor
import byol.precision
import byol.reporting
import byol.resume
import byol.run_setup
import byol.saving
import byol.step
import byol.train
from byol import BYOL, resnet
from byol.augment import Augment, cifar_views
from byol.checkpoint import load_checkpoint
from byol.config import Config, ConfigError, load_config, yaml_word
from byol.data import ImageSet
from byol.evaluate import knn_accuracy
from byol.features import extract_features
from byol.knn_monitor import knn_eval
from byol.reporting import Clock, NonFiniteLossError, Report, epoch_line
from byol.resume import changed_settings, resume_config
from byol.metrics import read_metrics
from byol.optim import build_optimizer
from byol.schedules import cosine_lr
from byol.train import pretrain
from byol.train_data import TrainData
from conftest import session_status, shown_lines, tiny_overrides


def test_twenty_steps_on_real_cifar_lower_the_loss(cifar10_root):
    raw = np.fromfile(cifar10_root / "cifar-10-batches-bin" / "data_batch_1.bin", np.uint8, count=32 * 3073)
    images = torch.from_numpy(raw.reshape(-1, 3073)[:, 1:].reshape(-1, 3, 32, 32).copy())
    torch.manual_seed(0)
    view1, view2 = cifar_views(32)
    model = BYOL(resnet("resnet18", cifar_stem=True, width=8), image_size=32, hidden_layer="avgpool",
                 projection_size=32, projection_hidden_size=128, augment_fn=Augment(view1),
                 augment_fn2=Augment(view2), moving_average_decay=0.99)
    opt = build_optimizer("lars", torch.nn.ModuleList([model.online, model.predictor]), lr=0.5,
                          weight_decay=1e-5)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(20):
        loss, _ = model.forward_views(model.augment_fn(images, g), model.augment_fn2(images, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_moving_average()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < first - 0.3, losses


def record_writes(monkeypatch) -> list:
    """What ``pretrain`` writes, in order: ``(file name, step)`` for each checkpoint and
    ``("plots", step)`` each time it draws the plots."""
    writes = []
    save, plot = byol.saving.save_checkpoint, byol.saving.plot_metrics
    monkeypatch.setattr(byol.saving, "save_checkpoint",
                        lambda path, *a, **k: writes.append((Path(path).name, a[2])) or save(path, *a, **k))
    monkeypatch.setattr(byol.saving, "plot_metrics", lambda path: writes.append(("plots", writes[-1][1])) or plot(path))
    return writes


EVERY_EPOCH = [("last.pt", 4), ("plots", 4), ("last.pt", 8), ("epoch_0002.pt", 8), ("plots", 8), ("last.pt", 12),
               ("plots", 12)]


@pytest.mark.parametrize("interval, clock_step, max_steps, expected", [
    (0, 0, None, EVERY_EPOCH),
    (3600, 0, None, [("last.pt", 8), ("epoch_0002.pt", 8), ("plots", 8), ("last.pt", 12), ("plots", 12)]),
    (3600, 10_000, None, EVERY_EPOCH),  # the interval passed by every epoch's end
    (3600, 0, 6, [("last.pt", 6), ("plots", 6)]),  # the end, mid-epoch
])
def test_last_checkpoint_every_epoch_or_at_most_once_per_interval(tmp_path, cifar10_root, monkeypatch, interval,
                                                                   clock_step, max_steps, expected):
    """3 epochs of 4 steps, a kept checkpoint every 2: with an interval, last.pt and the plots are
    written only at the kept epoch, at the end and once the interval has passed, not at every
    epoch's end."""
    if clock_step:  # a clock on which every reading is clock_step seconds after the one before
        ticks = iter(range(0, 10**9, clock_step))
        monkeypatch.setattr(byol.saving, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    writes = record_writes(monkeypatch)
    config = load_config("cifar10", tiny_overrides(tmp_path / "run", **{
        "data.limit": 64, "train.epochs": 3, "train.checkpoint_every": 2, "train.knn_every": -1,
        "train.save_interval_s": interval, "train.max_steps": max_steps or "null"}) + [f"--data.root={cifar10_root}"])
    pretrain(config)
    assert writes == expected


def test_a_checkpoint_skipped_for_a_nan_loss_does_not_restart_the_interval(tmp_path, cifar10_root, monkeypatch):
    """4 epochs of 8 steps on a clock of 1 s a step, an interval of 12 s: at step 16 a write is due
    but the step's loss is NaN, so nothing is written; the interval still runs from the start, so
    step 24 writes (restarting it at step 16 would have skipped that write too)."""
    steps = a_second_a_step(monkeypatch)
    train_step = byol.step.train_step

    def nan_at_16(*args, **kwargs):
        loss, z1 = train_step(*args, **kwargs)
        return (loss * float("nan"), z1) if steps[0] == 16 else (loss, z1)

    monkeypatch.setattr(byol.step, "train_step", nan_at_16)
    assert writes_every_12_s(tmp_path, cifar10_root, monkeypatch) == [("last.pt", 24), ("plots", 24),
                                                                      ("last.pt", 32), ("plots", 32)]


def a_second_a_step(monkeypatch) -> list:
    """The checkpoint interval's clock as one second a step; [steps taken so far]."""
    steps = [0]
    call = byol.train.LoopStep.__call__

    def counted(self, step, images):
        steps[0] += 1
        return call(self, step, images)

    monkeypatch.setattr(byol.train.LoopStep, "__call__", counted)
    monkeypatch.setattr(byol.saving, "time", types.SimpleNamespace(perf_counter=lambda: float(steps[0])))
    return steps


def writes_every_12_s(tmp_path, cifar10_root, monkeypatch) -> list:
    """What 4 epochs of 8 steps with train.save_interval_s=12 (and no other checkpoints) wrote, at which steps."""
    writes = record_writes(monkeypatch)
    pretrain(load_config("cifar10", tiny_overrides(tmp_path / "run", **{
        "data.limit": 128, "train.epochs": 4, "train.checkpoint_every": 0, "train.knn_every": -1,
        "train.save_interval_s": 12}) + [f"--data.root={cifar10_root}"]))
    return writes


class FakeClock:
    """A clock that moves only when a test moves it (``now``), for byol.train and tqdm."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def taking(self, seconds: float, fn):
        """``fn``, taking ``seconds`` on this clock."""
        def timed(*args, **kwargs):
            self.now += seconds
            return fn(*args, **kwargs)
        return timed


def on_a_fake_clock(monkeypatch) -> list:
    """``pretrain`` on a :class:`FakeClock` where a step takes 1 s, a kNN evaluation 100 s, a
    checkpoint write 10 s and the plots 1000 s; returns the list its progress bars will be in (each
    with ``rates``: the rate it showed at each report)."""
    import tqdm.std
    clock = FakeClock()
    for module in (byol.saving, byol.reporting):  # the checkpoints' interval, the run's clock
        monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=clock))
    monkeypatch.setattr(tqdm.std, "time", clock)
    monkeypatch.setattr(byol.train.LoopStep, "__call__", clock.taking(1, byol.train.LoopStep.__call__))
    for module, name, seconds in ((byol.knn_monitor, "knn_eval", 100), (byol.saving, "save_checkpoint", 10),
                                  (byol.saving, "plot_metrics", 1000)):
        monkeypatch.setattr(module, name, clock.taking(seconds, getattr(module, name)))
    bars, make_bar = [], byol.train.progress_bar

    def progress(*args):
        bar = make_bar(*args)
        bar.rates, set_postfix = [], bar.set_postfix
        bar.set_postfix = lambda **kw: bar.rates.append(bar.format_dict["rate"]) or set_postfix(**kw)
        bars.append(bar)
        return bar

    monkeypatch.setattr(byol.train, "progress_bar", progress)
    return bars


def two_epochs_of_four_steps(run: Path, cifar10_root: Path, *settings: str) -> Config:
    """Steps of 16 images, logged each, a kNN evaluation (of 64 images) at each epoch's end."""
    return load_config("cifar10", tiny_overrides(run, **{
        "data.limit": 64, "train.epochs": 2, "train.log_every": 1, "train.knn_every": 1, "train.knn_limit": 64,
        "train.progress": True}) + [f"--data.root={cifar10_root}", *settings])


def test_images_per_s_and_the_progress_bar_count_training_time_only(tmp_path, cifar10_root, monkeypatch):
    """Each step 1 s, and 1110 s of kNN, checkpoint and plots at each epoch's end: every step logs
    16 images/s (the step after an epoch's end logged 16 / 1111 s), and the bar's rate and elapsed
    time leave that work out too."""
    bars = on_a_fake_clock(monkeypatch)
    pretrain(two_epochs_of_four_steps(tmp_path / "run", cifar10_root))
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["train/images_per_s"] for r in records if "train/loss" in r] == [16.0] * 8
    (bar,) = bars
    assert bar.rates == pytest.approx([16.0] * 8) and bar.format_dict["elapsed"] == 8.0


def test_a_knn_monitor_on_features_that_are_not_finite_logs_nan_and_the_run_goes_on(tmp_path, cifar10_root,
                                                                                     monkeypatch, capsys):
    """knn_accuracy refuses NaN features (one sentence, for a user's own call); the monitor of a run
    whose encoder gives them logs NaN accuracies instead of ending the run, and its epoch line says so in
    words (it said "kNN nan%", as if an accuracy: a review)."""
    extract = byol.features.extract_features_sharded
    monkeypatch.setattr(byol.features, "extract_features_sharded", lambda *a, **k: extract(*a, **k) * math.nan)
    pretrain(two_epochs_of_four_steps(tmp_path / "run", cifar10_root, "--train.progress=false"))
    knn = [r["eval/knn_top1"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "eval/knn_top1" in r]
    assert len(knn) == 3 and all(math.isnan(v) for v in knn)
    err = capsys.readouterr().err
    assert "nan%" not in err
    assert re.search(r"epoch 1/2 \(step 4/8\), loss [\d.]+, kNN not scored: the encoder's features are NaN or "
                     r"infinite \(a diverged run\?\), ", err), err


def test_progress_auto_draws_the_bar_on_a_terminal_and_a_line_an_epoch_into_a_log_file(monkeypatch, tmp_path,
                                                                                        cifar10_root):
    """A cluster job's log got the bar's redrawings and no line an epoch (a user test); train.progress
    is now auto by default: the bar where stderr is a terminal only."""
    import sys
    from byol.progress import shows_bars
    assert Config().train.progress == "auto"
    with monkeypatch.context() as patched:
        for terminal in (True, False):
            patched.setattr(sys, "stderr", types.SimpleNamespace(isatty=lambda: terminal))
            assert (shows_bars("auto"), shows_bars(True), shows_bars(False)) == (terminal, True, False)
    # A run whose stderr is a file (pytest's capture here): lines, no bar
    run = tmp_path / "run"
    with open(tmp_path / "stderr.log", "w") as log:
        monkeypatch.setattr(sys, "stderr", log)
        pretrain(load_config("cifar10", tiny_overrides(run, **{"train.progress": "auto", "train.epochs": 2,
                                                               "train.knn_every": -1}) + [f"--data.root={cifar10_root}"]))
    written = (tmp_path / "stderr.log").read_text()
    assert "epoch 1/2 (step 8/16)" in written and "\r" not in written and "img/s]" not in written, written


@pytest.mark.parametrize("data", ["cifar10", "folder"])
def test_the_time_waiting_for_batches_is_logged_and_a_long_wait_said_once(tmp_path, cifar10_root, monkeypatch,
                                                                          capsys, data):
    """Each step 1 s on the fake clock: batches that take 3 s to come make every train record say
    data_wait 0.75 and one note say so, with, for a folder, what would feed it faster; batches that
    come at once, 0.0 and no note."""
    from conftest import extract_jpegs
    on_a_fake_clock(monkeypatch)
    monkeypatch.setattr(byol.reporting, "usable_cores", lambda: 2)  # as CI's machine, whatever this one has
    clock, step_images = byol.reporting.time.perf_counter, byol.train.step_images

    def slow(*args):
        for images in step_images(*args):
            clock.now += 3
            yield images

    folder = ["--data.dataset=folder", f"--data.root={extract_jpegs(tmp_path / 'jpegs', per_class=7)}",
              "--data.workers=1"] if data == "folder" else []
    for wait, run in ((3, "slow"), (0, "fast")):
        monkeypatch.setattr(byol.train, "step_images", slow if wait else step_images)
        pretrain(two_epochs_of_four_steps(tmp_path / run, cifar10_root, *folder))
        waits = [r["train/data_wait"] for r in read_metrics(tmp_path / run / "metrics.jsonl") if "train/loss" in r]
        assert waits == [wait / (wait + 1)] * 8
        notes = [line for line in capsys.readouterr().err.splitlines() if "waited for its images" in line]
        assert notes == ([] if not wait else [
            "note: training waited for its images 75% of the time (train/data_wait in metrics.jsonl)" + (
                "; more decoding processes (data.workers=1, of 2 CPU cores here), a smaller data.load_size, or "
                "data.on_device=true for a folder that fits in the device's memory would feed it faster"
                if data == "folder" else "")])


def test_without_the_bar_a_line_an_epoch_says_where_the_run_stands(tmp_path, cifar10_root, monkeypatch, capsys):
    """train.progress=false (a log file): each epoch's end prints its epoch, step, last loss, the kNN
    top-1 scored there (a user test: only the closing table said one), this start's training
    throughput (kNN, checkpoints and plots left out) and the time left, at the pace so far with them (an audit:
    1114 fake seconds into the start, 4 steps and a kNN, checkpoint and plots done, it said 4 s left). A line before
    each kNN evaluation says
    what the minutes its features can take are spent on (a user test: the log said nothing through them)."""
    on_a_fake_clock(monkeypatch)
    monkeypatch.setattr(byol.train, "progress_bar", lambda *args: None)
    pretrain(two_epochs_of_four_steps(tmp_path / "run", cifar10_root, "--train.progress=false"))
    err = capsys.readouterr().err.splitlines()
    knn_line = "kNN monitor: features of the training (bank) and test (query) images"
    assert [line[:6] for line in err if line == knn_line or line.startswith("epoch ")] == ["kNN mo", "kNN mo",
                                                                                          "epoch ", "kNN mo"], err
    lines = [line for line in err if line.startswith("epoch ")]
    losses = [r["train/loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["step"] in (4, 8)
              and "train/loss" in r]
    knn = [r["eval/knn_top1"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["step"] == 4
           and "eval/knn_top1" in r]
    assert lines == [f"epoch 1/2 (step 4/8), loss {losses[0]:.4f}, kNN {knn[0]:.2f}%, 16.0 img/s, about 0:18:34 left"]
    pretrain(two_epochs_of_four_steps(tmp_path / "run3", cifar10_root, "--train.progress=false", "--train.log_every=3"))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]
    loss = [r["train/loss"] for r in read_metrics(tmp_path / "run3" / "metrics.jsonl") if "train/loss" in r][0]
    assert lines[0].startswith(f"epoch 1/2 (step 4/8), loss {loss:.4f} (step 3), kNN ")  # (a user test: unsaid)
    # the last epoch's is the closing table's (and an error's, when the run ends on one: one sentence)


def test_without_the_bar_the_knn_monitor_says_how_far_its_features_are_in_lines(tmp_path, cifar10_root, monkeypatch,
                                                                                capsys):
    """train.progress=false (a log): each kNN evaluation's passes say how far they are in note lines, as eval's do
    (after 5 s, then every 30 s; here at once), where a bar would show it (a large folder's bank: minutes unsaid)."""
    import byol.progress
    monkeypatch.setattr(byol.progress, "SCAN_NOTES", (0.0, 0.0))
    pretrain(two_epochs_of_four_steps(tmp_path / "run", cifar10_root, "--train.progress=false", "--train.epochs=1"))
    err = capsys.readouterr().err
    for pass_ in (r"train features: 64 images in \d+ s", r"test features: 64 images in \d+ s"):
        assert len(re.findall(f"^note: kNN: {pass_}$", err, re.M)) == 2, (pass_, err)  # at step 0 and the end
    assert "64 of 64 images" not in err, err  # a pass in one batch: its end's line only (not the same twice)
    assert "\r" not in err


def test_records_say_their_epoch_and_the_run_s_time_which_a_resumed_run_goes_on_from(tmp_path, cifar10_root,
                                                                                      monkeypatch):
    """Every record (kNN ones too) says its epoch (1.0: the first one's end) and the run's seconds
    (each step 1 s, a kNN evaluation 100 s, a checkpoint write 10 s, the plots 1000 s); a resumed run
    goes on from the time its checkpoint was written at (it started from 0 again, or had no time), or
    from its kNN record's at that step, logged after it (the run's end writes its checkpoint first)."""
    on_a_fake_clock(monkeypatch)
    pretrain(two_epochs_of_four_steps(tmp_path / "run", cifar10_root, "--train.max_steps=6"))
    pretrain(two_epochs_of_four_steps(tmp_path / "run", cifar10_root), resume=True)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [(r["step"], r["epoch"], r["time_s"], "eval/knn_top1" in r) for r in records] == [
        (0, 0.0, 0.0, True), (1, 0.25, 1.0, False), (2, 0.5, 2.0, False), (3, 0.75, 3.0, False), (4, 1.0, 4.0, False),
        (4, 1.0, 104.0, True), (5, 1.25, 1115.0, False), (6, 1.5, 1116.0, False),
        # the first start's end: its checkpoint and plots (1010 s), its kNN; the resume goes on from 2226 s, not 1116
        (6, 1.5, 2226.0, True), (7, 1.75, 2227.0, False), (8, 2.0, 2228.0, False), (8, 2.0, 3338.0, True)]
    counts = [(r["train/skipped_steps"], r["train/nonfinite_streak"]) for r in records if "train/loss" in r]
    assert all(type(n) is int for pair in counts for n in pair), counts  # counts, not 0.0


def test_a_run_trains_without_its_bar_where_the_environment_disables_tqdm(tmp_path, cifar10_root):
    """TQDM_DISABLE=1 gives a bar with no clock: the run paused it at the first epoch's end and crashed.
    (tqdm reads the variable when it is imported: a process of its own.)"""
    import subprocess
    import sys
    run = tmp_path / "run"
    args = tiny_overrides(run, **{"data.limit": 64, "train.epochs": 2, "train.knn_every": 0, "train.progress": True})
    proc = subprocess.run([sys.executable, "-m", "byol", "pretrain", "--config", "cifar10",
                           f"--data.root={cifar10_root}", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 8


def test_the_progress_bar_shows_the_epoch_counted_from_1_of_the_run_s_epochs(tmp_path, monkeypatch):
    """As the checkpoints count them (epoch_0001.pt): the bar said epoch=0 through the first epoch."""
    ticks = iter(range(10**6))
    monkeypatch.setattr(byol.reporting, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    record = {"train/loss": 1.0, "monitor/z_std": 0.3, "monitor/effective_rank": 8.0, "train/nonfinite_streak": 0}
    shown = []
    bar = types.SimpleNamespace(set_postfix=lambda **kw: shown.append(kw["epoch"]))
    loop_step = types.SimpleNamespace(read=lambda z1: dict(record), amp=None)
    report = Report(loop_step, None, None, bar, Clock(torch.device("cpu"), bar), 16, 3, tmp_path / "last.pt", 0,
                     steps_per_epoch=4, epochs=2)
    for step in range(1, 9):
        report(step, torch.zeros(16, 8))
    assert shown == ["1/2"] * 4 + ["2/2"] * 4


def test_the_collapse_warning_compares_the_std_with_one_over_sqrt_of_the_projection_width(tmp_path):
    """A mutation audit: the batch size passed as the width survived every test (test_collapse's batch of 64
    is as wide as its projections). A normalized std of 0.01 is collapse for projections 16 wide (healthy
    about 1/sqrt(16) = 0.25) and not for 256 wide ones (0.0625), whatever the batch."""

    def warnings_of(batch, width):
        record = {"train/loss": 1.0, "monitor/z_std": 0.01, "monitor/effective_rank": 8.0,
                  "train/nonfinite_streak": 0}
        texts = []
        log = types.SimpleNamespace(log=lambda *a, **k: None, text=lambda step, name, text: texts.append(name))
        loop_step = types.SimpleNamespace(read=lambda z1: dict(record), amp=None)
        report = Report(loop_step, log, None, None, Clock(torch.device("cpu"), None), batch, 3, tmp_path / "last.pt",
                        0, steps_per_epoch=4, epochs=1)
        report(1, torch.zeros(batch, width))
        return texts

    assert warnings_of(batch=256, width=16) == ["warnings"]
    assert warnings_of(batch=16, width=256) == []


@pytest.mark.parametrize("folder", [False, True])
def test_the_knn_monitor_scores_the_online_encoder(folder):
    """A mutation audit: scoring the target's encoder survived every test. The online encoder is the one that
    is evaluated and exported (the paper's: "we only keep the encoder f_theta"); here a target zeroed out, whose
    features are all 0, would score no better than a guess, while the online one tells the 4 colours apart."""
    from byol.data import ImageSet
    from byol.knn_monitor import knn_eval
    from byol.train_data import TrainData
    torch.manual_seed(0)
    model = BYOL(resnet("resnet18", cifar_stem=True, width=8), image_size=32, hidden_layer="avgpool",
                 projection_size=16, projection_hidden_size=32, augment_fn=lambda x: x)
    with torch.no_grad():
        for p in model.target.parameters():
            p.zero_()
    g = torch.Generator().manual_seed(0)

    colours = torch.tensor([[220, 30, 30], [30, 220, 30], [30, 30, 220], [220, 220, 30]])

    def split(n):  # class c: images of colour c, with noise
        labels = torch.arange(n) % 4
        noise = torch.randint(-20, 21, (n, 3, 32, 32), generator=g)
        return ImageSet((colours[labels].view(n, 3, 1, 1) + noise).clamp(0, 255).to(torch.uint8), labels)

    train, test = split(40), split(20)
    data = TrainData(None, 0, knn_train=train, knn_test=test, knn_sizes=(40, 20) if folder else None)
    config = Config()
    config.train.knn_k = 5
    assert knn_eval(model, data, config, torch.device("cpu"), None) == {5: 100.0, 20: 100.0}


@pytest.mark.parametrize("preset", ["cifar", "paper"])
def test_the_knn_monitor_normalizes_the_images_with_the_run_s_own_mean_and_std(monkeypatch, preset):
    """A mutation audit: the monitor's features of images normalized with mean and std swapped survived every
    test, and so did features computed in float32 where the run's precision is bfloat16. Its features are
    extract_features' of the images normalized as the run's views were, in the run's precision."""
    from byol.data import ImageSet
    from byol.features import extract_features
    from byol.knn_monitor import knn_eval
    from byol.train_data import TrainData
    seen = []

    def recording(net, images, device, **kwargs):
        seen.append((kwargs["mean"], kwargs["std"], kwargs["crop"], kwargs["amp_dtype"]))
        return extract_features(net, images, **kwargs)

    monkeypatch.setattr(byol.knn_monitor.features, "extract_features_sharded", recording)
    labels = torch.arange(8) % 2
    split = ImageSet(torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator()), labels)
    config = load_config("cifar10", [f"--augment.preset={preset}", "--train.knn_k=3"])
    view1, view2 = byol.build.views_of(config)
    assert view1.mean != view1.std and (view1.mean, view1.std) == (view2.mean, view2.std)
    knn_eval(types.SimpleNamespace(encoder=torch.nn.Flatten()), TrainData(None, 0, knn_train=split, knn_test=split),
             config, torch.device("cpu"), torch.bfloat16)
    assert seen == [(view1.mean, view1.std, None, torch.bfloat16)] * 2


@pytest.mark.parametrize("shares", [False, True])
def test_the_knn_monitor_cuts_a_folder_s_images_as_byol_eval_does(shares):
    """A mutation audit: the monitor's features of a folder's whole decoded squares, not their centers
    (data.image_size) that byol eval scores, survived every test. Here the queries' centers are their class's
    colour and their borders (larger) the other class's: cut as byol eval cuts them, each query is its class's
    (100%); whole, each would be the other class's (0%). ``shares``: each process holding its share of the folder."""
    config = Config()
    config.data.dataset, config.data.image_size, config.data.load_size = "folder", 8, 12  # a center of 8 of 12
    red, green = torch.tensor([255, 0, 0]), torch.tensor([0, 255, 0])

    def images(centers, borders):
        x = torch.stack(borders).view(-1, 3, 1, 1).repeat(1, 1, 12, 12)
        x[:, :, 2:10, 2:10] = torch.stack(centers).view(-1, 3, 1, 1)
        return x.to(torch.uint8)

    labels = torch.tensor([0, 1])
    bank = ImageSet(images([red, green], [red, green]), labels)
    queries = ImageSet(images([red, green], [green, red]), labels)
    encoder = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())  # each image's mean colour
    model = types.SimpleNamespace(encoder=encoder)
    data = TrainData(None, 0, knn_train=bank, knn_test=queries, knn_sizes=(2, 2) if shares else None)
    view1, _ = byol.build.views_of(config)
    crop = byol.build.eval_crop(config)
    eval_features = partial(extract_features, encoder, mean=view1.mean, std=view1.std, crop=crop)
    by_eval = knn_accuracy(eval_features(bank.images), labels, eval_features(queries.images), labels, ks=(20, 200))
    assert knn_eval(model, data, config, torch.device("cpu"), None) == by_eval == {20: 100.0, 200: 100.0}


def test_the_knn_monitor_s_bars_name_a_folder_s_query_split(monkeypatch):
    """An audit: a folder's kNN monitor drew its val queries' bar as "kNN: test features", while its closing table
    and log line said val. Each bar is named by the split it extracts."""
    from byol.data import ImageSet
    from byol.features import extract_features
    from byol.knn_monitor import knn_eval
    from byol.train_data import TrainData
    names = []

    def recording(net, images, device, **kwargs):
        names.append(kwargs["progress"])
        return extract_features(net, images, **{**kwargs, "progress": False})

    monkeypatch.setattr(byol.knn_monitor.features, "extract_features_sharded", recording)
    split = ImageSet(torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator()),
                     torch.arange(8) % 2)
    knn_eval(types.SimpleNamespace(encoder=torch.nn.Flatten()),
             TrainData(None, 0, knn_train=split, knn_test=split, knn_query="val"),
             load_config("cifar10", ["--train.knn_k=3"]), torch.device("cpu"), None, progress=True)
    assert names == ["kNN: train features", "kNN: val features"]


@pytest.mark.parametrize("split", [0, 1])
def test_the_knn_monitor_scores_nan_where_either_split_s_features_are_not_finite(monkeypatch, split):
    """A mutation audit: NaN only where both splits' features were not finite survived every test. Where only
    the bank's (0) or the queries' (1) are, knn_accuracy refuses them, and that error would end the run."""
    from byol.data import ImageSet
    from byol.knn_monitor import knn_eval
    from byol.train_data import TrainData
    torch.manual_seed(0)
    model = BYOL(resnet("resnet18", cifar_stem=True, width=8), image_size=32, hidden_layer="avgpool",
                 projection_size=16, projection_hidden_size=32, augment_fn=lambda x: x)
    extract, calls = byol.knn_monitor.features.extract_features_sharded, []

    def one_split_nan(*args, **kwargs):
        calls.append(None)
        features = extract(*args, **kwargs)
        return features * math.nan if len(calls) - 1 == split else features

    monkeypatch.setattr(byol.knn_monitor.features, "extract_features_sharded", one_split_nan)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labeled = ImageSet(images, torch.arange(8) % 2)
    data = TrainData(None, 0, knn_train=labeled, knn_test=labeled)
    accuracy = knn_eval(model, data, Config(), torch.device("cpu"), None)
    assert len(calls) == 2 and list(accuracy) == [20, 200] and all(math.isnan(v) for v in accuracy.values())


def test_a_streamed_batch_that_lost_bad_files_is_filled_up_to_the_full_batch(tmp_path, monkeypatch):
    """Every step gets the same batch shape, also when undecodable files left a batch short (a
    compiled step would otherwise compile again for each new size)."""
    from conftest import extract_jpegs
    root = extract_jpegs(tmp_path / "images", per_class=3)  # 30 files
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (root / "cat" / name).write_bytes(b"not a jpeg")
    sizes = []
    call = byol.train.LoopStep.__call__
    monkeypatch.setattr(byol.train.LoopStep, "__call__",
                        lambda self, step, images: sizes.append(len(images)) or call(self, step, images))
    config = load_config("cifar10", tiny_overrides(tmp_path / "run", **{
        "data.limit": "null", "train.batch_size": 11, "train.knn_every": -1, "data.workers": 0}) + [
        "--data.dataset=folder", f"--data.root={root}", "--data.image_size=32", "--data.on_device=false"])
    results = pretrain(config)
    assert results["skipped_files"] == 3
    assert sizes == [11, 11, 11]  # 33 files in 3 batches of 11, one bad file in each (10 decoded)


@pytest.mark.parametrize("stop, listed", [(17, True), ("restart", True), (17, False)])
def test_a_resume_takes_the_batches_of_a_folder_epoch_begun_again_as_the_uninterrupted_run_did(tmp_path, stop, listed):
    """A user test: where whole batches of a streamed folder are undecodable, an epoch runs out early
    and is begun again. A resume in such an epoch skipped its batches on the run-out iterator and took
    the restart's first batch where the run had taken a later one: other weights. The same at the
    restart itself (stopped after the last batch that decodes, before the undecodable ones after it,
    which the run had not met), and where skipped_files.txt is gone (the batches before are decoded)."""
    from conftest import extract_jpegs
    from byol.folder import ImageFolder
    from byol.loaders import EpochShuffle
    root = extract_jpegs(tmp_path / "images", per_class=2)  # 20 files, and 60 that cannot be decoded
    for n in range(60):
        (root / "cat" / f"junk{n:02d}.jpg").write_bytes(b"not a jpeg")
    folder, seed = ImageFolder(root, size=32), 0
    while True:  # a seed whose first epoch ends in an undecodable batch
        order = list(EpochShuffle(len(folder), seed))
        batches = [[folder.path(i) for i in order[b:b + 4]] for b in range(0, len(order), 4)]
        decodes = [not all("junk" in path for path in batch) for batch in batches]
        if not decodes[-1]:
            break
        seed += 1
    stop = sum(decodes) if stop == "restart" else stop  # 20 steps an epoch, of which 15 or so batches come

    def config(run, steps):
        return load_config("cifar10", tiny_overrides(tmp_path / run, **{
            "data.limit": "null", "train.batch_size": 4, "train.knn_every": -1, "data.workers": 0,
            "train.epochs": 2, "optim.name": "sgd", "train.max_steps": steps, "train.seed": seed}) + [
            "--data.dataset=folder", f"--data.root={root}", "--data.image_size=32", "--data.on_device=false"])
    taken = []
    call = byol.train.LoopStep.__call__

    def record(self, step, images):
        taken.append((step, images.sum().item()))
        return call(self, step, images)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(byol.train.LoopStep, "__call__", record)
        pretrain(config("a", 24))  # begun again within the first epoch
        straight, taken[:] = dict(taken), []
        pretrain(config("b", stop))  # 17: stopped at the restart's third batch
        if not listed:
            (tmp_path / "b" / "skipped_files.txt").unlink()
        pretrain(config("b", 24), resume=True)
    assert dict(taken) == straight  # each step the same images
    a, b = _weights(tmp_path / "a/checkpoints/last.pt"), _weights(tmp_path / "b/checkpoints/last.pt")
    assert all(a[key] == b[key] if isinstance(a[key], dict) else torch.equal(a[key], b[key]) for key in a)


def test_a_resume_in_the_middle_of_a_folder_epoch_decodes_only_the_batches_it_trains_on(tmp_path, monkeypatch):
    """A user test at ImageNet scale: a run resumed at step 8,000 of an epoch decoded the 8,000
    batches before it, only to skip them (99 s before its first step; a new run's took 8 s). It
    starts at its batch in the epoch's order instead, and trains on what the uninterrupted run did."""
    from conftest import extract_jpegs
    from byol.folder import ImageFolder
    root = extract_jpegs(tmp_path / "images", per_class=4)  # 40 files, and one that cannot be decoded
    (root / "cat" / "bad.jpg").write_bytes(b"not a jpeg")

    def config(run, steps):
        return load_config("cifar10", tiny_overrides(tmp_path / run, **{
            "data.limit": "null", "train.batch_size": 4, "train.knn_every": -1, "data.workers": 0,
            "train.epochs": 1, "optim.name": "sgd", "train.max_steps": steps}) + [
            "--data.dataset=folder", f"--data.root={root}", "--data.image_size=32", "--data.on_device=false"])
    taken, decoded = [], []
    call, decode = byol.train.LoopStep.__call__, ImageFolder.__getitem__
    monkeypatch.setattr(byol.train.LoopStep, "__call__",
                        lambda self, step, x: taken.append((step, x.sum().item())) or call(self, step, x))
    monkeypatch.setattr(ImageFolder, "__getitem__", lambda self, index: decoded.append(index) or decode(self, index))
    pretrain(config("a", 10))  # an epoch: 10 batches of 4
    straight, taken[:] = dict(taken), []
    pretrain(config("b", 6))
    taken.clear(), decoded.clear()
    pretrain(config("b", 10), resume=True)
    assert len(decoded) == 4 * 4  # the 4 batches of steps 6 to 9, not the 6 before them too
    assert dict(taken) == {step: straight[step] for step in range(6, 10)}


def test_a_failed_run_on_a_folder_stops_its_decoding_processes(tmp_path):
    """They are kept from epoch to epoch; a failed run's traceback, which a notebook keeps
    (sys.last_traceback), held the loader, so they lived on after the error."""
    import multiprocessing
    from conftest import extract_jpegs
    root = extract_jpegs(tmp_path / "images", per_class=3)  # 30 files
    config = load_config("cifar10", tiny_overrides(tmp_path / "run", **{
        "data.limit": "null", "train.batch_size": 8, "train.knn_every": -1, "data.workers": 2, "optim.name": "sgd",
        "optim.lr": 1e30, "train.max_nonfinite": 1, "train.log_every": 1, "train.precision": "fp32"}) + [
        "--data.dataset=folder", f"--data.root={root}", "--data.image_size=32", "--data.on_device=false"])
    before = set(multiprocessing.active_children())  # another test's, if any: not this one's to judge
    with pytest.raises(NonFiniteLossError) as failed:
        pretrain(config)
    assert failed.traceback  # held, as a notebook holds it
    assert set(multiprocessing.active_children()) <= before


def test_a_run_that_fails_before_its_first_checkpoint_still_gets_its_plots(tmp_path, cifar10_root):
    """A user test: a diverged run left metrics.jsonl and TensorBoard but no plots, which are drawn
    with each checkpoint: when one most wants to look."""
    run = tmp_path / "run"
    config = load_config("cifar10", tiny_overrides(run, **{
        "train.knn_every": -1, "optim.name": "sgd", "optim.lr": 1e30, "train.max_nonfinite": 1, "train.log_every": 1,
        "train.precision": "fp32"}) + [f"--data.root={cifar10_root}"])
    with pytest.raises(NonFiniteLossError):
        pretrain(config)
    assert not (run / "checkpoints" / "last.pt").exists()
    assert (run / "loss.png").is_file() and (run / "collapse.png").is_file()


def test_files_the_knn_monitor_could_not_decode_are_listed_with_the_skipped_ones(tmp_path, capsys):
    """A bad file of ROOT/val, which only the kNN monitor reads, is in skipped_files.txt too, counted apart
    (a user test: the closing table's count was said of the training images); val's left-out files are said."""
    from conftest import extract_jpegs
    train = extract_jpegs(tmp_path / "set" / "train", per_class=2)
    val = extract_jpegs(tmp_path / "set" / "val", per_class=1)
    (train / "cat" / "bad.jpg").write_bytes(b"not a jpeg")
    (val / "dog" / "bad.jpg").write_bytes(b"")
    (val / "dog" / "phone.heic").write_bytes(b"")
    config = load_config("cifar10", tiny_overrides(tmp_path / "run", **{
        "data.limit": "null", "train.batch_size": 7, "train.knn_every": 0, "train.knn_k": 3,
        "data.workers": 0}) + ["--data.dataset=folder", f"--data.root={train}", "--data.image_size=32"])
    results = pretrain(config)
    assert results["skipped_files"] == 2 and results["skipped_monitor_files"] == 1
    assert f"note: 1 file (.heic 1) in {val} is left out" in capsys.readouterr().err
    assert results["knn_images"] == (20, 10, "val")  # the images decoded: not 21 and 11 files (a user test)
    assert results["train_images"] == (21, str(train))  # the files the run trains on, the one skipped too
    listed = sorted(line.split("\t") for line in (tmp_path / "run" / "skipped_files.txt").read_text().splitlines())
    assert listed == [[str(train / "cat" / "bad.jpg"), "UnidentifiedImageError: cannot identify image file "
                       f"'{train / 'cat' / 'bad.jpg'}'"], [str(val / "dog" / "bad.jpg"), "empty file"]]


def _weights(path):
    return load_checkpoint(path)["model"]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, cifar10_root):
    import random
    common = [f"--data.root={cifar10_root}", "--train.knn_every=-1", "--optim.name=sgd"]
    straight = load_config("cifar10", tiny_overrides(tmp_path / "a", **{"train.max_steps": 6}) + common)
    np.random.seed(1), random.seed(1)  # as unlike as two new processes' (a user test: their checkpoints' differed)
    pretrain(straight)
    first = load_config("cifar10", tiny_overrides(tmp_path / "b", **{"train.max_steps": 3}) + common)
    np.random.seed(2), random.seed(2)
    pretrain(first)
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["step"] == 3
    rest = load_config("cifar10", tiny_overrides(tmp_path / "b", **{"train.max_steps": 6}) + common)
    pretrain(rest, resume=True)
    a, b = _weights(tmp_path / "a/checkpoints/last.pt"), _weights(tmp_path / "b/checkpoints/last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key] if isinstance(a[key], dict) else torch.equal(a[key], b[key]), key
    rng_a, rng_b = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt")["rng"] for run in "ab")
    for name in ("numpy", "python"):  # every generator, NumPy's and Python's too, as the uninterrupted run's
        assert all(torch.equal(v, rng_b[name][k]) if isinstance(v, torch.Tensor) else v == rng_b[name][k]
                   for k, v in rng_a[name].items()), name
    # The resumed run logged steps 4..6 after the first run's 1..3, with no step twice.
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 6


def test_what_a_run_reports_and_when_it_checkpoints_leave_its_training_as_it_was(tmp_path, cifar10_root):
    """A user test (reproducibility, docs/runs.md): the kNN monitor, the records, the bar and the checkpoints'
    schedule draw nothing from the training's generators, so two runs that differ in them alone end with
    bitwise the same weights, optimizer state and generators, and log the same losses."""
    common = [f"--data.root={cifar10_root}", "--optim.name=sgd", "--train.epochs=2"]
    pretrain(load_config("cifar10", tiny_overrides(tmp_path / "a", **{"train.knn_every": -1}) + common))
    pretrain(load_config("cifar10", tiny_overrides(tmp_path / "b", **{
        "train.knn_every": 1, "train.knn_limit": 64, "train.knn_k": 5, "train.log_every": 1, "train.progress": True,
        "train.checkpoint_every": 1, "train.keep_freed_memory": False}) + common))
    a, b = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt") for run in "ab")
    assert a["extra"]["threads"] == b["extra"]["threads"] == torch.get_num_threads()  # what bitwise asks for

    def same(x, y):
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(same(u, v) for u, v in zip(x, y))
        return torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
    for entry in ("model", "optimizer", "rng", "step"):
        assert same(a[entry], b[entry]), entry
    losses = [{r["step"]: r["train/loss"] for r in read_metrics(tmp_path / run / "metrics.jsonl") if "train/loss" in r}
              for run in "ab"]
    assert len(losses[1]) == 2 * len(losses[0])  # each of a's records averages b's two steps (log_every 2 and 1)
    assert losses[0] == {step: pytest.approx((losses[1][step - 1] + losses[1][step]) / 2, rel=1e-6)
                         for step in losses[0]}


def test_a_resume_on_another_number_of_threads_says_it_is_not_bit_for_bit(tmp_path, cifar10_root, capsys):
    """A user test (reproducibility): on a CPU the threads order each step's sums, and a resume on another
    number of them went on without a word, where one in another precision says so."""
    settings = tiny_overrides(tmp_path / "run", **{"train.knn_every": -1}) + [f"--data.root={cifar10_root}"]
    pretrain(load_config("cifar10", settings + ["--train.max_steps=2"]))
    pretrain(load_config("cifar10", settings + ["--train.max_steps=4"]), resume=True)
    assert "thread" not in capsys.readouterr().err
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        pretrain(load_config("cifar10", settings + ["--train.max_steps=6"]), resume=True)
    finally:
        torch.set_num_threads(threads)
    assert (f"note: the checkpoint's steps ran on {threads} thread{'s' * (threads != 1)} and this run goes on with "
            f"{threads + 1}: the same run to rounding, not bit for bit; OMP_NUM_THREADS={threads} keeps {threads}"
            ) in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["extra"]["threads"] == threads + 1
    # A checkpoint of a GPU's steps (a review: said that OMP_NUM_THREADS=16 kept it bit for bit on this CPU)
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    state["extra"].update(device="cuda:0", threads=threads + 15)
    torch.save(state, path)
    pretrain(load_config("cifar10", settings + ["--train.max_steps=7"]), resume=True)
    assert "thread" not in capsys.readouterr().err


def stop_after_step(n: int) -> type:
    """A StopRequest as if SIGTERM came at the loop's ``n``-th ask: step ``n`` of a start where no epoch ends
    before it (the loop asks once a step, and once more at an epoch's end; a test checks the step it stopped at)."""
    class StopAfterStep(byol.faults.StopRequest):
        checks = 0

        @property
        def requested(self):
            StopAfterStep.checks += 1
            return StopAfterStep.checks == n
    return StopAfterStep


def test_the_record_after_a_stop_and_resume_averages_the_steps_the_uninterrupted_run_s_does(tmp_path, cifar10_root,
                                                                                          monkeypatch):
    """A user test: a stop between two records lost the sums of its steps since the last one, so the
    first record after the resume averaged the resumed steps alone (train/loss 1.984 for 1.813)."""
    common = [f"--data.root={cifar10_root}", "--train.knn_every=-1", "--optim.name=sgd", "--train.log_every=2"]
    pretrain(load_config("cifar10", tiny_overrides(tmp_path / "a", **{"train.max_steps": 6}) + common))
    monkeypatch.setattr(byol.train, "StopRequest", stop_after_step(3))
    stopped = load_config("cifar10", tiny_overrides(tmp_path / "b", **{"train.max_steps": 6}) + common)
    assert pretrain(stopped)["step"] == 3
    monkeypatch.undo()
    pretrain(stopped, resume=True)
    records = [[{k: v for k, v in r.items() if k in ("step", "train/loss", "monitor/z_std")}
                for r in read_metrics(tmp_path / run / "metrics.jsonl") if "train/loss" in r] for run in "ab"]
    assert [r["step"] for r in records[1]] == [2, 4, 6] and records[0] == records[1]


def test_a_stop_after_non_finite_steps_resumes_to_the_record_that_stops_the_run(tmp_path, cifar10_root, monkeypatch):
    """An audit of exact resumes: steps 5 and 6 undone (NaN losses), a stop after the good step 7 lost the
    streak that the record at step 8 reports, so the resumed run said train/nonfinite_streak 0 there and trained
    on to its end, where the uninterrupted run stopped at step 8 with train.max_nonfinite=2."""
    schedules, finish = byol.step.LoopStep._schedules, byol.step.LoopStep._finish

    def nan_at_steps_4_and_5(self, step):  # (counted from 0: the run's steps 5 and 6)
        self.nan = step in (4, 5)
        schedules(self, step)
    monkeypatch.setattr(byol.step.LoopStep, "_schedules", nan_at_steps_4_and_5)
    monkeypatch.setattr(byol.step.LoopStep, "_finish", lambda self, loss, z1: finish(
        self, loss * math.nan if self.nan else loss, z1))
    config = load_config("cifar10", tiny_overrides(tmp_path / "run", **{
        "train.knn_every": -1, "train.log_every": 4, "train.max_nonfinite": 2}) + [f"--data.root={cifar10_root}"])
    monkeypatch.setattr(byol.train, "StopRequest", stop_after_step(7))
    assert pretrain(config)["step"] == 7
    monkeypatch.setattr(byol.train, "StopRequest", byol.faults.StopRequest)
    with pytest.raises(NonFiniteLossError, match=r"for 2 steps in a row \(by step 8\)"):
        pretrain(config, resume=True)
    assert [r["train/nonfinite_streak"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [0, 2]


def test_a_run_stopped_from_python_says_where_it_stopped(tmp_path, cifar10_root, monkeypatch, capsys):
    """A user test in a notebook: a Ctrl-C (here a SIGTERM) during pretrain saved and returned, as documented, but
    said nothing, where the command line says where it stopped: the cell ended with the stopped bar alone."""
    monkeypatch.setattr(byol.train, "StopRequest", stop_after_step(3))
    config = load_config("cifar10", tiny_overrides(tmp_path, **{"train.max_steps": 6}) + [
        f"--data.root={cifar10_root}", "--train.knn_every=-1"])
    assert pretrain(config)["stopped_by"] == "SIGTERM"
    checkpoint = tmp_path / "checkpoints" / "last.pt"
    said = f"stopped by SIGTERM at step 3; checkpoint saved to {checkpoint}; continue with --resume"
    assert capsys.readouterr().err.strip().splitlines()[-1] == said


def test_a_knn_evaluation_a_stop_skipped_is_scored_when_the_run_resumes(tmp_path, cifar10_root, monkeypatch):
    """A user test: a stop at an epoch's end skips that epoch's kNN (it could take long), and the
    resume never scored it: the log had no record of that epoch."""
    settings = tiny_overrides(tmp_path / "b", **{"train.epochs": 2, "train.knn_every": 1, "train.knn_limit": 64}) + [
        f"--data.root={cifar10_root}", "--optim.name=sgd"]
    pretrain(load_config("cifar10", settings + [f"--train.out_dir={tmp_path / 'a'}"]))
    monkeypatch.setattr(byol.train, "StopRequest", stop_after_step(8))
    assert pretrain(load_config("cifar10", settings))["stopped_by"] == "SIGTERM"
    monkeypatch.undo()
    assert [r["step"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if "eval/knn_top1" in r] == [0]
    call = byol.train.LoopStep.__call__

    def crash_at_step_10(self, step, images):  # after the pending kNN, before another checkpoint
        if step == 9:
            raise RuntimeError("a crash")
        return call(self, step, images)
    monkeypatch.setattr(byol.train.LoopStep, "__call__", crash_at_step_10)
    with pytest.raises(RuntimeError, match="a crash"):
        pretrain(load_config("cifar10", settings), resume=True)
    monkeypatch.undo()
    pretrain(load_config("cifar10", settings), resume=True)  # scored already: not again (a review)
    knn = [[(r["step"], r["eval/knn_top1"]) for r in read_metrics(tmp_path / run / "metrics.jsonl")
            if "eval/knn_top1" in r] for run in "ab"]
    assert [step for step, _ in knn[1]] == [0, 8, 16] and knn[0] == knn[1]


def _draws() -> tuple:
    """A draw from each global generator a caller may have seeded: torch's, NumPy's and Python's."""
    import random
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def _seed_all(seed: int) -> None:
    import random
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def test_pretrain_and_its_resume_leave_the_caller_s_random_number_generators_as_they_were(tmp_path, cifar10_root):
    """A run seeds torch's generator with train.seed, and a resumed one sets every generator to its
    checkpoint's: a notebook's draws after it go on from its own seeds, not from the run's."""
    overrides = [f"--data.root={cifar10_root}", "--train.knn_every=-1"]
    _seed_all(1234)
    expected = _draws()
    _seed_all(1234)
    pretrain(load_config("cifar10", tiny_overrides(tmp_path, **{"train.max_steps": 1}) + overrides))
    assert _draws() == expected
    _seed_all(1234)
    pretrain(load_config("cifar10", tiny_overrides(tmp_path, **{"train.max_steps": 2}) + overrides), resume=True)
    assert _draws() == expected


@pytest.mark.parametrize("section, key, value, error", [
    ("train", "batch_size", 1, "^train.batch_size must be >= 2"),  # was BatchNorm's "Expected more than 1 value"
    ("train", "epochs", 0, "^train.epochs must be >= 1"),  # was a run "finished" at step 0
    ("train", "device", "gpu", "^train.device must be auto, cpu, cuda or cuda:N"),
    ("optim", "lr", "fast", "^optim.lr must be float, got 'fast'"),  # was "'<' not supported between ..."
])
def test_a_setting_changed_on_a_loaded_config_is_checked_as_load_config_checks_it(tmp_path, section, key, value,
                                                                                  error):
    """A notebook sets fields on the Config that load_config returned: pretrain checks them too, before
    anything is written."""
    config = load_config("cifar10", tiny_overrides(tmp_path / "run", **{"train.max_steps": 1}))
    setattr(getattr(config, section), key, value)
    with pytest.raises(ConfigError, match=error):
        pretrain(config)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("section, key, error", [
    ("train", "max_step", r"^unknown config key 'train.max_step' \(did you mean train.max_steps\?\); train has "),
    (None, "trian", r"^unknown config section 'trian' \(did you mean train\?\); the sections are data, model, augment, "
                    r"optim, train$"),
])
def test_a_mistyped_setting_on_a_loaded_config_is_an_error_not_ignored(tmp_path, section, key, error):
    """cfg.train.max_step = 3 (for max_steps) was ignored: the run went on for all its epochs."""
    config = load_config("cifar10", tiny_overrides(tmp_path / "run"))
    setattr(getattr(config, section) if section else config, key, 3)
    with pytest.raises(ConfigError, match=error):
        pretrain(config)
    assert not (tmp_path / "run").exists()


def test_pretrain_takes_paths_for_its_folders_and_refuses_what_is_not_a_config(tmp_path, cifar10_root):
    """A pathlib.Path out_dir failed writing config.yaml ("cannot represent an object"), and so did
    NumPy's numbers; a dict was "'dict' object has no attribute 'data'"."""
    config = load_config("cifar10", tiny_overrides(tmp_path, **{"train.knn_every": -1}))
    config.train.out_dir, config.data.root = tmp_path / "run", cifar10_root
    config.train.max_steps, config.optim.lr = np.int64(1), np.float32(0.25)
    assert pretrain(config)["step"] == 1
    saved = load_config(str(tmp_path / "run" / "config.yaml"))
    assert (saved.train.out_dir, saved.train.max_steps, saved.optim.lr) == (str(tmp_path / "run"), 1, 0.25)
    with pytest.raises(TypeError, match=r"^config must be a byol.Config, such as byol.load_config\('cifar10'\) "
                                        "gives, not dict"):
        pretrain(config.to_dict())


def test_a_run_that_fails_after_its_first_step_closes_its_tensorboard_writer(tmp_path, cifar10_root):
    """Its writer thread ran on after the error, one more for each failed run in a notebook's process
    (and the events of its last steps waited for the writer's next flush)."""
    import threading
    overrides = tiny_overrides(tmp_path / "run", **{"train.max_steps": 8, "train.knn_every": -1, "optim.name": "sgd",
                                                    "optim.lr": 1e30, "train.max_nonfinite": 1, "train.log_every": 1,
                                                    "train.precision": "fp32"})
    threads = threading.active_count()
    with pytest.raises(NonFiniteLossError, match="NaN or infinite"):
        pretrain(load_config("cifar10", overrides + [f"--data.root={cifar10_root}"]))
    assert threading.active_count() == threads
    assert (tmp_path / "run" / "metrics.jsonl").is_file()  # the steps it took stay logged


def test_pretrain_returns_its_checkpoint_s_path_from_any_directory(tmp_path, cifar10_root, monkeypatch):
    """A relative train.out_dir returned results["checkpoint"] relative to the working directory of the call:
    a notebook that changed directory since could not evaluate it (byol.knn: 'does not exist')."""
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    config = load_config("cifar10", tiny_overrides("run", **{"train.max_steps": 1, "train.knn_every": -1})
                         + [f"--data.root={cifar10_root}"])
    trained = pretrain(config)
    finished = pretrain(byol.resume.resume_config(None, ["--train.out_dir=run"]), resume=True)  # trains nothing
    monkeypatch.chdir(tmp_path)
    for results in (trained, finished):
        assert Path(results["checkpoint"]).is_absolute() and Path(results["checkpoint"]).is_file()
        assert Path(results["checkpoint"]).samefile(tmp_path / "here" / "run" / "checkpoints" / "last.pt")
    assert config.train.out_dir == "run"  # the caller's config untouched
    assert trained["train_images"] == finished["train_images"] == (128, "cifar10's train split")  # (data.limit's)


def test_the_saved_config_finds_the_data_from_any_directory(tmp_path, cifar10_root, monkeypatch):
    monkeypatch.chdir(cifar10_root.parent)  # data.root given relative to here
    config = load_config("cifar10", tiny_overrides(tmp_path / "run", **{"train.max_steps": 1, "train.knn_every": -1})
                         + [f"--data.root={cifar10_root.name}"])
    pretrain(config)
    saved = load_config(str(tmp_path / "run" / "config.yaml"))
    # Absolute (compared resolved: the working directory is reported without symbolic links).
    assert Path(saved.data.root).is_absolute() and Path(saved.data.root).resolve() == cifar10_root.resolve()
    assert config.data.root == cifar10_root.name  # the caller's config untouched
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["config"]["data"]["root"] == saved.data.root


@pytest.mark.parametrize("max_steps, stopped", [(1, False), (2, True)])
def test_a_signal_in_the_last_step_is_a_complete_run(tmp_path, cifar10_root, monkeypatch, max_steps, stopped):
    # SIGTERM arriving during step 1: with 1 step the run is complete (no "continue with --resume",
    # whose resume would only find a finished run); with 2 it stopped early.
    class SignalledAtOnce(byol.faults.StopRequest):
        def __enter__(self):
            self.signum = signal.SIGTERM
            return self

    monkeypatch.setattr(byol.train, "StopRequest", SignalledAtOnce)
    results = pretrain(load_config("cifar10", tiny_overrides(tmp_path / "run", **{
        "train.max_steps": max_steps, "train.knn_every": -1}) + [f"--data.root={cifar10_root}"]))
    assert results["step"] == 1 and ("stopped_by" in results) == stopped
    # TensorBoard's HParams tab: a finished run's end is a success, a stopped one's unknown (a user test: every
    # run showed as a success there, from its start on, killed or diverged too), until a resume finishes it
    assert session_status(tmp_path / "run") == ("none" if stopped else "STATUS_SUCCESS")
    if stopped:
        monkeypatch.undo()
        pretrain(load_config("cifar10", tiny_overrides(tmp_path / "run", **{
            "train.max_steps": max_steps, "train.knn_every": -1}) + [f"--data.root={cifar10_root}"]), resume=True)
        assert session_status(tmp_path / "run") == "STATUS_SUCCESS"


def test_changed_settings_on_resume():
    saved = Config().to_dict()
    assert changed_settings(saved, Config().to_dict()) == []
    now = Config()
    now.train.epochs, now.data.root = 300, os.path.abspath(saved["data"]["root"])  # the same root, made absolute
    assert changed_settings(saved, now.to_dict()) == ["train.epochs 100 -> 300"]


def test_run_directory_contents(tmp_path, cifar10_root):
    config = load_config("cifar10", tiny_overrides(tmp_path / "run", **{"train.max_steps": 4}) +
                         [f"--data.root={cifar10_root}", "--train.knn_every=1"])
    results = pretrain(config)
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "loss.png", "schedules.png",
                 "knn.png", "collapse.png", "speed.png"):
        assert (run / name).is_file(), name
    waits = [r["train/data_wait"] for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r]
    assert waits and all(0 <= w < 1 for w in waits)  # a share of the time, measured
    assert load_config(str(run / "config.yaml")) == config  # the resolved config, as given
    # and in TensorBoard's HParams tab, every setting as section.key, beside the metrics it lists
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    hparams = EventAccumulator(str(run / "tensorboard")).Reload().PluginTagToContent("hparams")
    experiment = HParamsPluginData.FromString(hparams["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["eval/knn_top1", "train/loss"]
    shown = HParamsPluginData.FromString(hparams["_hparams_/session_start_info"]).session_start_info.hparams
    flat = {f"{section}.{key}": value for section, values in config.to_dict().items() for key, value in values.items()}
    assert set(shown) == set(flat)
    assert shown["train.batch_size"].number_value == config.train.batch_size == 16
    assert shown["train.out_dir"].string_value == str(run)
    assert shown["data.download"].string_value == "false"  # a word, as in config.yaml (a bool would be 0)
    assert shown["train.compile"].string_value == yaml_word(config.train.compile)
    # config.yaml keeps train.device and train.precision at auto; the checkpoint records what they resolved to
    extra = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["extra"]
    assert (extra.get("device"), extra.get("precision")) == (results["device"], results["precision"])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train_records] == [2, 4]
    assert {"train/lr", "train/tau", "monitor/z_std", "monitor/effective_rank"} <= train_records[-1].keys()
    assert any("eval/knn_top1" in r for r in records)
    assert set(results["knn"]) == {20, 200} and set(results["knn_init"]) == {20, 200}
    # The learning rate follows the schedule from the scaled base, lr x batch / 256: a record's is its last step's
    from byol.build import schedule_of
    base, warmup, total = schedule_of(config, round(train_records[-1]["step"] / train_records[-1]["epoch"]))
    assert base == config.optim.lr * 16 / 256
    lrs = [r["train/lr"] for r in records if "train/lr" in r]
    assert lrs == [pytest.approx(cosine_lr(r["step"] - 1, total, base, warmup)) for r in train_records]


def fake_cifar10(root: Path, per_file: int = 64) -> Path:
    """CIFAR-10's binary layout with ``per_file`` random records per file (for machines without the data)."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        records = rng.integers(0, 256, (per_file, 3073), dtype=np.uint8)
        records[:, 0] %= 10  # the label byte
        records.tofile(folder / name)
    return root


@pytest.mark.gpu
def test_pretrain_on_cuda_compiled_in_bf16_checkpoints_and_resumes(tmp_path):
    """The real loop on a GPU as the cifar10 preset runs it there with train.compile=true (compiled,
    bf16 autocast, data and augmentation on the device), with the kNN monitor, a checkpoint, and a
    resume. GPU kernels are not bitwise deterministic, so this checks that it runs and stays finite,
    not equality."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    root = fake_cifar10(tmp_path / "data")
    cuda = {"train.device": "cuda", "train.compile": True, "train.knn_every": 0, "train.knn_limit": 64}
    first = pretrain(load_config("cifar10", tiny_overrides(tmp_path / "run", **cuda, **{"train.max_steps": 3})
                                 + [f"--data.root={root}"]))
    assert first["step"] == 3 and math.isfinite(first["loss"]) and 0 <= first["knn"][200] <= 100
    rest = pretrain(load_config("cifar10", tiny_overrides(tmp_path / "run", **cuda, **{"train.max_steps": 6})
                                + [f"--data.root={root}"]), resume=True)
    assert rest["step"] == 6 and math.isfinite(rest["loss"])
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == 6
    assert all(torch.isfinite(v).all() for v in state["model"].values() if torch.is_tensor(v) and v.is_floating_point())


def test_cuda_graph_on_a_cpu_is_one_sentence_and_leaves_nothing(tmp_path):
    root = fake_cifar10(tmp_path / "data")
    config = load_config("cifar10", tiny_overrides(tmp_path / "run", **{"train.cuda_graph": True})
                         + [f"--data.root={root}"])
    with pytest.raises(ConfigError, match="train.cuda_graph=true needs a CUDA GPU .* this run is on cpu"):
        pretrain(config)
    assert not (tmp_path / "run").exists()


def test_cuda_graph_runs_in_one_process_only():
    with pytest.raises(ConfigError, match="train.cuda_graph=true runs in one process, not 2"):
        byol.cuda_graph.loop_step_class(True, torch.device("cuda"), 2)
    assert byol.cuda_graph.loop_step_class(True, torch.device("cuda"), 1) is byol.cuda_graph.GraphedLoopStep
    assert byol.cuda_graph.loop_step_class(False, torch.device("cpu"), 4) is byol.step.LoopStep


@pytest.mark.gpu
def test_pretrain_with_cuda_graph_trains_as_the_eager_loop_and_resumes(tmp_path, capsys, monkeypatch, full_fp32):
    """train.cuda_graph=true (experimental): the same losses, step by step, as the eager loop (float32
    and TF32 off, so that both run the same arithmetic), with a kNN evaluation and a checkpoint between
    replays (at the end of epoch 1, step 8) and a resume, which warms up and captures again."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    counts = {"capture": 0, "replay": 0}
    capture, replay = byol.cuda_graph.GraphedLoopStep._capture, torch.cuda.CUDAGraph.replay

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(byol.cuda_graph.GraphedLoopStep, "_capture", counted("capture", capture))
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", counted("replay", replay))
    root = fake_cifar10(tmp_path / "data")  # 128 images: 8 steps an epoch
    losses = {}
    for graphed in (False, True):
        run = tmp_path / f"run-{graphed}"
        settings = {"train.device": "cuda", "train.precision": "fp32", "train.cuda_graph": graphed,
                    "train.epochs": 2, "train.log_every": 1, "train.knn_every": 1, "train.knn_limit": 64}
        first = pretrain(load_config("cifar10", tiny_overrides(run, **settings, **{"train.max_steps": 10})
                                     + [f"--data.root={root}"]))
        rest = pretrain(load_config("cifar10", tiny_overrides(run, **settings, **{"train.max_steps": 16})
                                    + [f"--data.root={root}"]), resume=True)
        assert (first["step"], rest["step"]) == (10, 16)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses[graphed] = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
    # Steps 1-3 eager, 4 captured and replayed, 5-10 replayed; after the resume 11-13 eager, 14-16 replayed.
    assert counts == {"capture": 2, "replay": 10}
    assert [s for s, _ in losses[True]] == list(range(1, 17))
    assert "train.cuda_graph=true is experimental" in capsys.readouterr().err
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
def test_pretrain_on_cuda_from_a_training_set_kept_in_host_memory(tmp_path, capsys):
    """data.on_device=false: the set stays in host memory and each batch is copied to the GPU."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    root = fake_cifar10(tmp_path / "data")
    overrides = {"train.device": "cuda", "train.compile": False, "train.knn_every": -1, "train.max_steps": 2,
                 "data.on_device": False}
    results = pretrain(load_config("cifar10", tiny_overrides(tmp_path / "run", **overrides) + [f"--data.root={root}"]))
    assert results["step"] == 2 and math.isfinite(results["loss"])
    assert "stays in host memory and each batch is copied to cuda" in capsys.readouterr().err


def test_the_end_s_knn_bars_under_the_pretrain_bar_move_no_cursor_where_stderr_is_no_terminal(
        tmp_path, cifar10_root, capsys):
    """A notebook (or a log) with train.progress=true: the end's kNN bars open while the pretrain bar is, where tqdm
    stacks them below it with cursor moves (ESC[A), which a notebook's output drops: a user test saw the kNN bars
    left as stale lines and the pretrain bar twice. Where stderr is no terminal they take the bar's line."""
    config = load_config("cifar10", tiny_overrides(tmp_path / "run", **{
        "train.max_steps": 2, "train.progress": True}) + [f"--data.root={cifar10_root}"])
    pretrain(config)
    err = capsys.readouterr().err
    while_training = err.rsplit("pretrain:", 1)[0].split("epoch=", 1)[-1]  # from the bar's first epoch to its last draw
    assert "kNN: train features" in while_training  # the end's kNN bars open while the pretrain bar is
    assert "\x1b[" not in err, repr(err[-600:])
    shown = [line for line in shown_lines(err) if line.strip()]  # what a notebook shows of it (no cursor moves)
    assert not any("kNN:" in line for line in shown) and sum("pretrain:" in line for line in shown) == 1, shown


def test_knn_features_show_progress_bars_when_training_does(tmp_path, cifar10_root, capsys):
    """The kNN of the encoder at initialization extracts features before the training bar appears
    (on a CPU with a full ResNet-18, minutes): it shows its own bars; with progress off, none."""
    for progress in (True, False):
        config = load_config("cifar10", tiny_overrides(tmp_path / f"run{progress}", **{
            "train.max_steps": 2, "train.progress": progress}) + [f"--data.root={cifar10_root}"])
        pretrain(config)
        err = capsys.readouterr().err
        for bar in ("kNN: train features", "kNN: test features", "pretrain:"):
            assert (bar in err) is progress, (bar, err)


@pytest.mark.parametrize("settings, device, noted", [
    ({}, "cpu", True), ({"model.width": 8}, "cpu", False), ({"train.device": "cpu"}, "cpu", False),
    ({}, "cuda", False)])
def test_a_full_width_encoder_that_auto_puts_on_the_cpu_gets_a_note(capsys, settings, device, noted):
    config = load_config("cifar10", [f"--{k}={v}" for k, v in settings.items()])
    byol.reporting.note_cpu(config, torch.device(device))
    assert ("--model.width=8" in capsys.readouterr().err) is noted


def test_a_network_given_from_python_gets_no_note_to_narrow_model_width(capsys):
    """A user test: a ViT's run on the CPU was advised --model.width=8, which a network given from Python
    (model.backbone: custom) does not use."""
    config = load_config("cifar10")
    config.model.backbone = "custom"
    byol.reporting.note_cpu(config, torch.device("cpu"))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("preset, settings, noted", [
    ("imagenet", {"train.epochs": 5}, "note: optim.warmup_epochs=10 is not shorter than train.epochs=5, so the "
     "learning rate only warms up, to 0.5 of its peak, and never decays; set --optim.warmup_epochs below train.epochs"),
    ("stl10", {"train.epochs": 10}, "reaching its peak only at the last step, and never decays"),
    ("stl10", {"train.epochs": 10}, "note: optim.warmup_epochs=10 is not shorter than train.epochs=10, so the "
     "learning rate only warms up"),  # as long as the schedule: said of the epochs (a mutation audit)
    ("stl10", {"train.epochs": 11}, None),
    ("cifar10", {"train.max_steps": 970}, "optim.warmup_epochs=10 (970 steps) is not shorter than train.max_steps=970"),
    ("cifar10", {"train.max_steps": 50}, "to 0.052 of its peak, and never decays; set --optim.warmup_epochs below "
     "the 0.515 epochs of train.max_steps"),
    ("cifar10", {"train.max_steps": 97}, "below the 1 epoch of train.max_steps"),  # (a user test: "1 epochs")
    ("cifar10", {"train.max_steps": 971}, None),
    ("stl10", {"train.epochs": 5, "train.max_steps": 100}, "optim.warmup_epochs=10 is not shorter than train.epochs=5, "
     "so the learning rate only warms up, to 0.1 of its peak"),  # the epochs are the cause, not train.max_steps
    ("cifar10-cpu", {}, None),  # its 0.1-epoch warm-up
    ("cifar10", {"train.epochs": 1, "optim.warmup_epochs": 0}, None)])
def test_a_warm_up_as_long_as_the_run_gets_a_note(capsys, preset, settings, noted):
    """Compared in steps (here 97 an epoch): the warm-up's against the run's, train.max_steps included."""
    byol.reporting.note_warmup(load_config(preset, [f"--{k}={v}" for k, v in settings.items()]), 97)
    err = capsys.readouterr().err
    assert (noted in err) if noted else err == "", err


def test_pretrain_notes_at_its_start_a_warm_up_that_covers_the_whole_run(tmp_path, cifar10_root, capsys):
    """A YAML config that leaves the default 10-epoch warm-up with one epoch: the run goes on (it is legal),
    the note says so once, and the logged learning rate indeed only climbs."""
    from byol.cli import main
    yaml = tmp_path / "short.yaml"
    yaml.write_text("train:\n  epochs: 1\n")
    run = tmp_path / "run"
    assert main(["pretrain", "--config", str(yaml), f"--data.root={cifar10_root}",
                 *tiny_overrides(run, **{"train.knn_every": -1, "train.log_every": 1})]) == 0
    err = capsys.readouterr().err
    assert err.count("note: optim.warmup_epochs=10 is not shorter than train.epochs=1, so the learning rate only "
                     "warms up, to 0.1 of its peak") == 1, err  # 8 steps of 80
    lrs = [r["train/lr"] for r in read_metrics(run / "metrics.jsonl") if "train/lr" in r]
    assert len(lrs) == 8 and lrs == sorted(lrs) and lrs[-1] < 0.5 * load_config("cifar10").optim.lr * 16 / 256


def test_a_finished_run_resumed_on_the_cpu_gets_no_cpu_note(tmp_path, cifar10_root, capsys):
    """It trains nothing: only the finished-run note (not the note of where a resume goes on from: a mutation audit)."""
    if torch.cuda.is_available():
        pytest.skip("train.device=auto finds a GPU here")
    settings = tiny_overrides(tmp_path / "run", **{"train.max_steps": 1, "train.knn_every": -1, "model.width": 64,
                                                   "train.device": "auto"}) + [f"--data.root={cifar10_root}"]
    pretrain(load_config("cifar10", settings))
    assert "--model.width=8" in capsys.readouterr().err  # it trained on the CPU
    results = pretrain(load_config("cifar10", settings), resume=True)
    err = capsys.readouterr().err
    assert "is finished" in err and "--model.width=8" not in err and "note: resuming" not in err, err
    assert results["device"] == "cpu" and results["precision"] in ("bf16 autocast", "float32")  # as pretrain says


def test_pretrain_leaves_cudnn_s_benchmark_flag_as_it_was(tmp_path, cifar10_root, monkeypatch):
    """On a GPU a run turns cuDNN's benchmark on for its fixed shapes; the caller's flag is put back after
    it (the CUDA branch of prepare_device stood in for here)."""
    import byol.train as train
    prepare = train.prepare_device

    def on_a_gpu(t):
        torch.backends.cudnn.benchmark = True
        return prepare(t)
    monkeypatch.setattr(train, "prepare_device", on_a_gpu)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    pretrain(load_config("cifar10", tiny_overrides(tmp_path, **{"train.max_steps": 1, "train.knn_every": -1})
                         + [f"--data.root={cifar10_root}"]))
    assert torch.backends.cudnn.benchmark is False


def test_resume_refuses_another_batch_size_and_names_what_other_settings_do_to_the_schedules(
        tmp_path, cifar10_root, capsys):
    """A checkpoint's step count, schedules and place in the data are in steps of its batch: a resume
    with another batch size would train the wrong number of epochs, so it is refused. A longer run
    stretches the cosine schedules (the learning rate rises again), and fewer images make shorter
    epochs: both are said."""
    from byol.checkpoint import CheckpointError
    settings = tiny_overrides(tmp_path / "run", **{"train.knn_every": -1, "train.epochs": 1, "optim.lr": 0.2,
                                                   "optim.warmup_epochs": 0, "train.precision": "fp32"}) + [
        f"--data.root={cifar10_root}"]
    pretrain(load_config("cifar10", settings))  # 128 images, batch 16: 8 steps an epoch
    capsys.readouterr()
    with pytest.raises(CheckpointError, match="train.batch_size=16.*resume with --train.batch_size=16"):
        pretrain(load_config("cifar10", settings + ["--train.batch_size=32"]), resume=True)
    with pytest.raises(CheckpointError, match="train.knn_holdout=0 held-out train images .* the same names in the "
                                              "logs: resume with --train.knn_holdout=0"):  # the kNN records' queries
        pretrain(load_config("cifar10", settings + ["--train.knn_holdout=100"]), resume=True)
    pretrain(load_config("cifar10", settings + ["--train.epochs=2", "--train.max_steps=9"]), resume=True)
    err = capsys.readouterr().err
    assert "train.epochs 1 -> 2" in err and "note: the schedules follow the new settings from step 8 on" in err, err
    assert f"learning rate 0 -> {0.2 * 16 / 256 / 2:.4g}" in err, err  # the cosine's end, then its middle
    assert "(a longer run's cosine schedules are stretched to its length, so the learning rate rises again and tau " \
        "falls back)" in err, err
    assert f"note: resuming {tmp_path / 'run'} from step 8 (1 of 2 epochs done; train.max_steps ends it at step 9, " \
        "in epoch 2), with settings that differ" in err, err
    assert "steps an epoch" not in err and "steps ran in" not in err
    pretrain(load_config("cifar10", settings + ["--train.epochs=3", "--data.limit=64", "--train.precision=bf16"]),
             resume=True)  # 12 steps: three more
    err = capsys.readouterr().err
    assert "the data now makes 4 steps an epoch, the checkpoint's run 8" in err, err
    # auto resolves by machine, so a change of precision is said in what it resolved to
    assert "the checkpoint's steps ran in float32, and this run goes on in bf16 autocast (train.precision=bf16 " \
        "here); --train.precision=fp32 keeps float32" in err, err
    assert "the schedules follow the new settings from step 9 on" in err, err  # shorter epochs: further on
    # 3 epochs of 4 steps are shorter than the checkpoint's 2 of 8: the cosines are compressed, not stretched.
    assert "(a shorter run's cosine schedules are compressed to its length, so the learning rate drops and tau " \
        "rises)" in err and "stretched" not in err, err


def test_a_resume_may_change_how_the_views_are_batched_but_not_the_network(tmp_path):
    """A mutation audit: refusing a new model.concat_views on resume survived every test. It only batches the two
    views together (docs/runs.md: a resume can change it); the network's settings, model.width say, it cannot."""
    from byol.checkpoint import CheckpointError
    settings = tiny_overrides(tmp_path / "run")
    state = {"config": load_config("cifar10", settings).to_dict(), "step": 8}
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    assert byol.resume.refuse_changed_settings(state, load_config("cifar10", settings + [
        "--model.concat_views=true"]), ckpt) == {}
    with pytest.raises(CheckpointError, match="holds the network of model.width=8, .* resume with --model.width=8"):
        byol.resume.refuse_changed_settings(state, load_config("cifar10", settings + ["--model.width=16"]), ckpt)


def test_a_kept_epoch_of_an_earlier_start_with_longer_epochs_is_kept_apart_not_replaced(tmp_path, cifar10_root,
                                                                                       capsys):
    """Two epochs of 4 steps kept (epoch_0002.pt: step 8), then a resume on twice the images (8 steps an
    epoch): its epoch 2 ends at step 16, and the earlier epoch_0002.pt is kept as epoch_0002_step8.pt
    with a note, where a user test saw it replaced without a word."""
    settings = tiny_overrides(tmp_path / "run", **{"train.knn_every": -1, "train.checkpoint_every": 1,
                                                   "data.limit": 64}) + [f"--data.root={cifar10_root}"]
    pretrain(load_config("cifar10", settings + ["--train.epochs=2"]))
    pretrain(load_config("cifar10", settings + ["--train.epochs=2", "--data.limit=128"]), resume=True)
    checkpoints = tmp_path / "run" / "checkpoints"
    steps = {p.name: load_checkpoint(p)["step"] for p in checkpoints.glob("epoch_*.pt")}
    assert steps == {"epoch_0001.pt": 4, "epoch_0002.pt": 16, "epoch_0002_step8.pt": 8}, steps
    assert (f"note: {checkpoints / 'epoch_0002.pt'} was of step 8, an earlier start's epoch of another length; it is "
            "kept as epoch_0002_step8.pt, and epoch_0002.pt is this start's epoch (step 16)") in capsys.readouterr().err


def test_a_resume_keeps_the_images_the_knn_monitor_scores(tmp_path, cifar10_root):
    """A user test resumed a run monitored on 500 images with train.knn_limit=200: the closing table set
    11.0% against 12.6% at random init, a loss where eval measured a gain. Another knn_limit is refused
    where the monitor ran before, also past a start with it off (a second user test went round the
    refusal that way); where it never ran, there is nothing to compare."""
    from byol.checkpoint import CheckpointError
    settings = tiny_overrides(tmp_path / "run", **{"train.knn_every": 0, "train.max_steps": 2}) + [
        f"--data.root={cifar10_root}"]
    pretrain(load_config("cifar10", settings))
    with pytest.raises(CheckpointError, match="train.knn_limit=200 images of each split; another number .* against "
                                              "its accuracy at random init: resume with --train.knn_limit=200"):
        pretrain(load_config("cifar10", settings + ["--train.knn_limit=100", "--train.max_steps=3"]), resume=True)
    pretrain(load_config("cifar10", settings + ["--train.max_steps=3", "--train.knn_every=-1"]), resume=True)
    for monitor in ("0", "-1"):  # the records of the first start are of 200 images
        with pytest.raises(CheckpointError, match="resume with --train.knn_limit=200"):
            pretrain(load_config("cifar10", settings + ["--train.knn_limit=100", "--train.max_steps=4",
                                                        f"--train.knn_every={monitor}"]), resume=True)
    from conftest import extract_jpegs  # a folder with no val/ beside it: a monitor asked for, but none ran
    no_val = tiny_overrides(tmp_path / "no_val", **{"train.knn_every": 0, "train.max_steps": 1, "data.limit": "null"})
    no_val += [f"--data.root={extract_jpegs(tmp_path / 'photos', per_class=2)}", "--data.dataset=folder"]
    pretrain(load_config("cifar10-cpu", no_val))
    pretrain(load_config("cifar10-cpu", no_val + ["--train.knn_limit=8", "--train.max_steps=2"]), resume=True)
    unmonitored = tiny_overrides(tmp_path / "quiet", **{"train.knn_every": -1, "train.max_steps": 2}) + [
        f"--data.root={cifar10_root}"]
    pretrain(load_config("cifar10", unmonitored))
    pretrain(load_config("cifar10", unmonitored + ["--train.knn_limit=100", "--train.knn_every=0",
                                                   "--train.max_steps=3"]), resume=True)


@pytest.mark.parametrize("optim, changes", [
    ("lars", {"optim.trust_coefficient": (0.001, 0.02), "optim.lars_clip": (False, True),
              "optim.weight_decay": (1.5e-6, 1e-4)}),
    ("sgd", {"optim.weight_decay": (5e-4, 0.01), "optim.momentum": (0.9, 0.5)}),
    ("adamw", {"optim.beta1": (0.9, 0.8), "optim.beta2": (0.999, 0.95)}),
])
def test_a_resume_trains_with_the_optimizer_settings_it_gives(tmp_path, cifar10_root, optim, changes, monkeypatch):
    """The optimizer's state comes from the checkpoint, its settings from this start: torch's
    load_state_dict would put the checkpoint's back (the note said they changed; the steps did not)."""
    group_key = {"optim.trust_coefficient": "trust_coefficient", "optim.lars_clip": "clip",
                 "optim.weight_decay": "weight_decay", "optim.momentum": "momentum"}
    read = {"optim.beta1": lambda group: group["betas"][0], "optim.beta2": lambda group: group["betas"][1]}
    settings = tiny_overrides(tmp_path / "run", **{"train.knn_every": -1, "train.max_steps": 2, "optim.name": optim,
                                                   **{k: yaml_word(old) for k, (old, _) in changes.items()}}) + [
        f"--data.root={cifar10_root}"]
    pretrain(load_config("cifar10", settings))
    seen, step = [], byol.step.LoopStep.__call__

    def call(self, *args):  # the groups each step of the resumed start trains with
        seen.append([dict(g) for g in self.optimizer.param_groups])
        return step(self, *args)

    monkeypatch.setattr(byol.step.LoopStep, "__call__", call)
    pretrain(load_config("cifar10", settings + ["--train.max_steps=3"] + [
        f"--{k}={yaml_word(new)}" for k, (_, new) in changes.items()]), resume=True)
    assert len(seen) == 1, seen
    regular, excluded = seen[0]
    for key, (_, new) in changes.items():
        assert (read[key](regular) if key in read else regular[group_key[key]]) == new, (key, regular)
    assert excluded["weight_decay"] == 0.0 and regular["lr"] == excluded["lr"] > 0  # the schedule's, as before


def test_resuming_a_shorter_run_says_its_schedules_are_compressed_and_the_learning_rate_drops(
        tmp_path, cifar10_root, capsys):
    """`--resume --train.epochs=2` on a 4-epoch run at step 10 (8 steps an epoch): the cosines now end
    at step 16, not 32, so at step 10 the learning rate is lower and tau higher than the run's own."""
    settings = tiny_overrides(tmp_path / "run", **{"train.knn_every": -1, "train.epochs": 4, "optim.lr": 0.2,
                                                   "optim.warmup_epochs": 0, "train.max_steps": 10}) + [
        f"--data.root={cifar10_root}"]
    pretrain(load_config("cifar10", settings))
    capsys.readouterr()
    pretrain(load_config("cifar10", settings + ["--train.epochs=2", "--train.max_steps=12"]), resume=True)
    err = capsys.readouterr().err
    lr0, lr1 = (cosine_lr(10, total, 0.2 * 16 / 256) for total in (32, 16))
    assert f"note: resuming {tmp_path / 'run'} from step 10 (1.25 of 2 epochs done; train.max_steps ends it at " \
        "step 12, in epoch 2), with settings that differ from the checkpoint's: train.epochs 4 -> 2, " \
        "train.max_steps 10 -> 12" in err, err
    assert f"note: the schedules follow the new settings from step 10 on: learning rate {lr0:.4g} -> {lr1:.4g}" in err
    assert "(a shorter run's cosine schedules are compressed to its length, so the learning rate drops and tau " \
        "rises)" in err and "stretched" not in err and err.count("note: resuming") == 1, err


@pytest.mark.parametrize("totals, lr, tau, said", [
    ((8, 8), (0.1, 0.2), (0.99, 0.99), ""),  # a new optim.lr: the same length, nothing stretched
    ((32, 16), (0.01, 0.001), (0.99, 0.995), " (a shorter run's cosine schedules are compressed to its length, so "
     "the learning rate drops and tau rises)"),
    ((16, 32), (0.05, 0.05), (0.995, 0.99), " (a longer run's cosine schedules are stretched to its length, so tau "
     "falls back)"),  # within the warm-up: the learning rate as it was
    ((16, 32), (0.05, 0.01), (0.995, 0.99), " (a longer run's cosine schedules are stretched to its length, so tau "
     "falls back)")],  # a lower optim.lr with it: the learning rate does not rise
    ids=["same length", "shorter", "longer, in the warm-up", "longer, with a lower lr"])
def test_what_a_new_length_does_to_the_schedules_is_said_as_their_values_show_it(totals, lr, tau, said):
    assert byol.resume._length_change(*totals, lr, tau) == said


@pytest.mark.parametrize("how", ["command line", "python"])
def test_a_plain_resume_says_where_it_goes_on_from_once(tmp_path, cifar10_root, capsys, monkeypatch, how):
    """`byol pretrain --resume --train.out_dir=DIR` with no other setting, or from Python
    byol.pretrain(byol.resume_config(None, ["--train.out_dir=DIR"]), resume=True), the same: one line
    names the run, its step and epoch; a finished run's note says its step instead."""
    import byol as api
    from byol.cli import main

    class SignalledAtOnce(byol.faults.StopRequest):  # SIGTERM during step 1: stopped after it
        def __enter__(self):
            self.signum = signal.SIGTERM
            return self

    run = tmp_path / "run"
    monkeypatch.setattr(byol.train, "StopRequest", SignalledAtOnce)
    pretrain(load_config("cifar10", tiny_overrides(run, **{"train.max_steps": 3, "train.knn_every": -1,
                                                          "optim.warmup_epochs": 0.1}) + [f"--data.root={cifar10_root}"]))
    monkeypatch.undo()
    capsys.readouterr()
    if how == "python":  # the run's own config.yaml (data.root, widths, ...), as the command line resumes
        assert api.pretrain(api.resume_config(None, [f"--train.out_dir={run}"]), resume=True)["step"] == 3
    else:
        assert main(["pretrain", "--resume", f"--train.out_dir={run}"]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert notes == [f"note: resuming {run} from step 1 (0.125 of 1 epoch done; train.max_steps ends it at step 3, "
                     "in epoch 1)"], err
    assert main(["pretrain", "--resume", f"--train.out_dir={run}"]) == 0
    err = capsys.readouterr().err
    assert "is finished: step 3" in err and "note: resuming" not in err, err


def test_a_stop_in_the_last_step_completes_the_run_and_leaves_its_final_knn_to_eval(tmp_path, cifar10_root,
                                                                                   monkeypatch):
    """SIGTERM in the last step: the run is complete (a resume would find it finished), its checkpoint
    written, and the final kNN, which could take minutes, is not run but said to be unscored (a user
    test found the closing table showing an earlier epoch's kNN as the run's)."""
    class SignalledAtOnce(byol.faults.StopRequest):  # SIGTERM during step 1 of 1
        def __enter__(self):
            self.signum = signal.SIGTERM
            return self

    monkeypatch.setattr(byol.train, "StopRequest", SignalledAtOnce)
    done = []
    knn, save = byol.knn_monitor.knn_eval, byol.saving.save_checkpoint
    monkeypatch.setattr(byol.knn_monitor, "knn_eval", lambda *a, **k: done.append("kNN") or knn(*a, **k))
    monkeypatch.setattr(byol.saving, "save_checkpoint", lambda *a, **k: done.append("last.pt") or save(*a, **k))
    run = tmp_path / "run"
    results = pretrain(load_config("cifar10", tiny_overrides(run, **{"train.max_steps": 1, "train.knn_every": 0,
                                                                     "train.knn_limit": 64}) +
                                   [f"--data.root={cifar10_root}"]))
    assert "stopped_by" not in results and results["step"] == 1 and results["knn_cut"] == "end"
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "eval/knn_top1" in r] == [0]
    assert done == ["kNN", "last.pt"]  # at random init, then the checkpoint


def test_the_final_knn_is_scored_after_the_last_checkpoint_and_a_longer_resume_does_not_score_it_again(
        tmp_path, cifar10_root, monkeypatch):
    """The run's last checkpoint is written before its final kNN (which says it is due: the record
    logged after it tells a resume that it is not), and the plots are drawn again with its point."""
    run = tmp_path / "run"
    settings = tiny_overrides(run, **{"train.knn_every": 0, "train.knn_limit": 64}) + [f"--data.root={cifar10_root}"]
    plot, plotted = byol.saving.plot_metrics, []

    def plot_and_note(path, *args, **kwargs):  # the kNN steps each drawing of the plots had
        plotted.append([r["step"] for r in read_metrics(path) if "eval/knn_top1" in r])
        return plot(path, *args, **kwargs)
    monkeypatch.setattr(byol.saving, "plot_metrics", plot_and_note)
    pretrain(load_config("cifar10", settings + ["--train.max_steps=4"]))
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "eval/knn_top1" in r] == [0, 4]
    assert plotted[-1] == [0, 4]
    monkeypatch.undo()
    pretrain(load_config("cifar10", settings + ["--train.max_steps=6"]), resume=True)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "eval/knn_top1" in r] == [0, 4, 6]


def test_a_run_that_dies_while_it_writes_a_kept_epoch_writes_it_when_resumed(tmp_path, cifar10_root, monkeypatch):
    """A user test: Ctrl-C twice (or a kill, a full disk) after last.pt and before epoch_0001.pt were
    written left a run that resumed after that epoch's end, so epoch_0001.pt was never written."""
    settings = tiny_overrides(tmp_path / "run", **{"train.knn_every": -1, "train.epochs": 2,
                                                   "train.checkpoint_every": 1}) + [f"--data.root={cifar10_root}"]
    pretrain(load_config("cifar10", settings + ["--train.max_steps=4"]))
    write = byol.saving.save_checkpoint

    def interrupted(path, *args, **kwargs):
        if Path(path).name == "epoch_0001.pt":
            raise KeyboardInterrupt
        return write(path, *args, **kwargs)
    monkeypatch.setattr(byol.saving, "save_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain(load_config("cifar10", settings + ["--train.max_steps=16"]), resume=True)
    monkeypatch.undo()
    last = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()  # of step 8
    events, copy, clock = [], byol.saving.copy_atomically, byol.train.Clock
    monkeypatch.setattr(byol.saving, "copy_atomically", lambda *a: (events.append("copy"), copy(*a))[1])
    monkeypatch.setattr(byol.train, "Clock", lambda *a: (events.append("clock"), clock(*a))[1])
    pretrain(load_config("cifar10", settings + ["--train.max_steps=16"]), resume=True)
    kept = {p.name: load_checkpoint(p)["step"] for p in (tmp_path / "run" / "checkpoints").glob("epoch_*.pt")}
    assert kept == {"epoch_0001.pt": 8, "epoch_0002.pt": 16}
    assert events[:2] == ["copy", "clock"]  # (a code read) the copy is setup: its seconds were timed as training
    # the run's own: a copy of its last.pt (its settings, device, generators), not the resumed start's
    assert (tmp_path / "run" / "checkpoints" / "epoch_0001.pt").read_bytes() == last


def test_a_run_whose_config_yaml_is_gone_and_checkpoint_settings_do_not_load_says_so(tmp_path, cifar10_root,
                                                                                    capsys):
    """config.yaml gone and the checkpoint's settings refused (a key this byol does not know): a note says why
    the run goes on with the settings given, over the preset's, rather than a traceback."""
    run = tmp_path / "run"
    pretrain(load_config("cifar10", tiny_overrides(run, **{"train.max_steps": 2, "train.knn_every": -1}) +
                         [f"--data.root={cifar10_root}"]))
    (run / "config.yaml").unlink()
    ckpt = run / "checkpoints" / "last.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    state["config"]["train"]["bogus"] = 1
    torch.save(state, ckpt)
    capsys.readouterr()
    config = resume_config(None, [f"--train.out_dir={run}", "--model.width=8"])
    err = capsys.readouterr().err
    assert f"note: {run / 'config.yaml'} is missing, and the settings saved in {ckpt} do not load (" in err
    assert "train.bogus" in err and "the run goes on with those given, over the preset's" in err
    assert (config.model.width, config.train.batch_size) == (8, load_config("cifar10").train.batch_size)


def test_a_run_whose_config_yaml_is_gone_resumes_with_its_checkpoint_s_settings(tmp_path, cifar10_root, capsys):
    """A user test: with config.yaml deleted, --resume took the cifar10 preset's settings, and the
    checkpoint refused them one resume at a time (data.root, then the batch size, then knn_limit)."""
    from byol.resume import resume_config
    run = tmp_path / "run"
    pretrain(load_config("cifar10", tiny_overrides(run, **{"train.max_steps": 2, "train.knn_every": -1}) +
                         [f"--data.root={cifar10_root}"]))
    (run / "config.yaml").unlink()
    capsys.readouterr()
    config = resume_config(None, [f"--train.out_dir={run}", "--train.max_steps=3"])
    assert f"note: {run / 'config.yaml'} is missing; the run goes on with the settings saved in " \
        f"{run / 'checkpoints' / 'last.pt'}" in capsys.readouterr().err
    assert (config.model.width, config.train.batch_size, config.train.max_steps) == (8, 16, 3)
    assert pretrain(config, resume=True)["step"] == 3 and (run / "config.yaml").is_file()
    # The settings that ran the steps up to the checkpoint are kept, as where config.yaml is there (a user
    # test: the changed train.max_steps left no config_until_step2.yaml, those settings only in a checkpoint)
    kept = yaml.safe_load((run / "config_until_step2.yaml").read_text())
    assert kept["train"]["max_steps"] == 2 and kept["model"]["width"] == 8
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 3
    # and where it holds byol's first line alone (from a review: that one was kept as config_until_stepS.yaml)
    from byol.config import CONFIG_HEADER
    (run / "config.yaml").write_text(CONFIG_HEADER)
    assert pretrain(resume_config(None, [f"--train.out_dir={run}", "--train.max_steps=4"]), resume=True)["step"] == 4
    assert yaml.safe_load((run / "config_until_step3.yaml").read_text())["train"]["max_steps"] == 3


def test_a_run_whose_config_yaml_is_gone_and_last_pt_torn_is_said_to_have_a_torn_checkpoint(tmp_path, cifar10_root,
                                                                                               cli):
    """A code read: with config.yaml gone, a last.pt that does not load left the preset's settings to the resume,
    which said the preset's data missing (cifar10 train files not found ... in ./data), not the checkpoint."""
    run = tmp_path / "run"
    pretrain(load_config("cifar10", tiny_overrides(run, **{"train.max_steps": 2, "train.knn_every": -1}) +
                         [f"--data.root={cifar10_root}"]))
    (run / "config.yaml").unlink()
    last = run / "checkpoints" / "last.pt"
    torn = last.read_bytes()[:last.stat().st_size // 2]
    last.write_bytes(torn)
    proc = cli("pretrain", "--resume", f"--train.out_dir={run}", "--train.max_steps=3", check=False)
    assert proc.returncode == 2 and "not found" not in proc.stderr
    assert proc.stderr.startswith(f"byol: error: checkpoint {last} is corrupt or truncated and cannot be read")
    assert last.read_bytes() == torn and not (run / "config.yaml").exists()


def test_a_resume_of_a_checkpoint_whose_settings_hold_a_key_this_byol_has_not_goes_on(tmp_path, cifar10_root,
                                                                                        capsys):
    """An older byol's checkpoint holds a setting since removed (taken out of config.yaml by hand): the resume
    goes on and names the settings changed (coverage: that path was never run)."""
    from byol.resume import resume_config
    run = tmp_path / "run"
    pretrain(load_config("cifar10", tiny_overrides(run, **{"train.max_steps": 2, "train.knn_every": -1}) +
                         [f"--data.root={cifar10_root}"]))
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    state["config"]["train"]["removed_setting"] = 1
    torch.save(state, run / "checkpoints" / "last.pt")
    capsys.readouterr()
    assert pretrain(resume_config(None, [f"--train.out_dir={run}", "--train.max_steps=3", "--optim.lr=0.5"]),
                    resume=True)["step"] == 3
    assert "with settings that differ from the checkpoint's: optim.lr 1.0 -> 0.5, train.max_steps 2 -> 3" in \
        capsys.readouterr().err
    assert yaml.safe_load((run / "config_until_step2.yaml").read_text())["optim"]["lr"] == 1.0


def test_a_resume_with_another_optimizer_is_refused_in_one_sentence(tmp_path, cifar10_root, cli):
    """Coverage: the refusal was never run."""
    run = tmp_path / "run"
    pretrain(load_config("cifar10", tiny_overrides(run, **{"train.max_steps": 2, "train.knn_every": -1}) +
                         [f"--data.root={cifar10_root}"]))
    before = (run / "checkpoints" / "last.pt").read_bytes()
    proc = cli("pretrain", "--resume", f"--train.out_dir={run}", "--optim.name=adamw", check=False)
    assert proc.returncode == 2
    assert proc.stderr == (f"byol: error: {run / 'checkpoints' / 'last.pt'} was trained with optim.name=lars; resume "
                           "with the same optimizer\n")
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_a_resume_with_another_number_of_processes_says_it_does_not_go_on_as_the_run_would(
        tmp_path, cifar10_root, capsys):
    """A checkpoint of a 2-process run (it saved both ranks' augmentation streams) resumed in one
    process: the same weights, but not the batches' shares and draws of the run, said in a note."""
    settings = tiny_overrides(tmp_path / "run", **{"train.knn_every": -1}) + [f"--data.root={cifar10_root}"]
    pretrain(load_config("cifar10", settings + ["--train.max_steps=2"]))
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=False)
    generator = torch.Generator().manual_seed(0)
    state["extra"]["generator_per_rank"] = [generator.get_state(), generator.get_state()]
    torch.save(state, last)
    capsys.readouterr()
    pretrain(load_config("cifar10", settings + ["--train.max_steps=3"]), resume=True)
    assert f"note: {last} was written by a run of 2 processes, this one has 1: it goes on from the same weights " \
        "and optimizer state, but its batches' shares and augmentation draws are not those the run would have " \
        "had" in capsys.readouterr().err


def test_bf16_is_not_used_on_a_cpu_where_torch_gets_the_network_s_gradients_wrong(tmp_path, capsys, monkeypatch,
                                                                                   cifar10_root):
    """torch 2.14.1's bf16 CPU convolution gives weight gradients off by orders of magnitude, at times NaN, for a
    strided convolution over a 1x1 map (benchmarks/results/cpu-amd-2026-12-06/): a ResNet with the ImageNet stem at
    16 px has one. A bad-input fuzz found half its runs stopped on NaN, and a review that the others trained on
    wrong gradients: auto trains in float32 there, and bf16 asked for is refused."""
    settings = tiny_overrides(tmp_path / "run", **{"model.cifar_stem": "false", "train.max_steps": 2,
                                                   "train.knn_every": -1, "data.limit": 32})
    settings += [f"--data.root={cifar10_root}"]
    with pytest.raises(ConfigError, match=r"^train.precision=bf16: torch's bf16 convolutions on the CPU give wrong "
                                          r"weight gradients .* which body.layer4.0.conv1 is at data.image_size=16; use "
                                          r"train.precision=fp32, a larger data.image_size or, for a ResNet, "
                                          r"model.cifar_stem=true$"):
        pretrain(load_config("cifar10", settings + ["--data.image_size=16", "--train.precision=bf16"]))
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(byol.precision, "native_bf16", lambda device: True)  # auto: bf16 on this CPU, whatever it has
    assert pretrain(load_config("cifar10", settings + ["--data.image_size=16"]))["precision"] == "float32"
    assert "note: train.precision=auto trains in float32 here, not bf16: torch's bf16 convolutions on the CPU give " \
        "wrong weight gradients" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "run")
    assert pretrain(load_config("cifar10", settings + ["--data.image_size=32"]))["precision"] == "bf16 autocast"
    assert "trains in float32 here" not in capsys.readouterr().err


def test_resuming_a_checkpoint_that_does_not_say_its_precision_says_which_the_run_goes_on_in(
        tmp_path, cifar10_root, capsys):
    """Checkpoints before they recorded their precision: the resume went on in what train.precision
    resolves to now (auto: bf16 on a CPU with bf16 arithmetic) without a word. Where the run's config
    named fp32 or bf16, that is what its steps ran in; only auto is unknown. A finished run gets no note."""
    settings = tiny_overrides(tmp_path / "run", **{"train.max_steps": 2, "train.knn_every": -1}) + [
        f"--data.root={cifar10_root}"]
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    for given, said in (("auto", "the checkpoint does not say which precision its steps ran in (an older byol, with "
                                 "train.precision=auto: before 2026-12-01 that was float32 on a CPU, bf16 on a GPU "
                                 "with bf16)"),  # (an upgrading user's test: which choice keeps its arithmetic)
                        ("bf16", "the checkpoint's steps ran in bf16 autocast")):
        shutil.rmtree(tmp_path / "run", ignore_errors=True)
        pretrain(load_config("cifar10", settings + [f"--train.precision={given}"]))
        state = torch.load(last, weights_only=True)
        del state["extra"]["precision"]  # as an older byol wrote it
        torch.save(state, last)
        capsys.readouterr()
        pretrain(load_config("cifar10", settings + ["--train.max_steps=2"]), resume=True)  # finished
        err = capsys.readouterr().err
        assert "is finished" in err and "ran in" not in err and "does not say" not in err, err
        pretrain(load_config("cifar10", settings + ["--train.max_steps=3", "--train.precision=fp32"]), resume=True)
        err = capsys.readouterr().err
        assert f"note: {said}" in err and "this run goes on in float32 (train.precision=fp32 here)" in err, err


@pytest.mark.parametrize("recorded, said", [
    ("bf16 autocast", "the checkpoint's steps ran in bf16 autocast, and this run goes on in float32 (train.precision="
                      "auto here); bf16 autocast cannot be kept: train.precision=bf16 is refused here"),
    (None, "this run goes on in float32 (train.precision=auto here); choose with --train.precision=fp32 (bf16 is "
           "refused here)")])
def test_a_resume_does_not_offer_bf16_where_it_is_refused(tmp_path, cifar10_root, capsys, monkeypatch, recorded, said):
    """An upgrading user's test: a byol of 2026-12-01 to 12-06 trained in bf16 on a CPU with bf16 (auto) a ResNet with
    the ImageNet stem at 16 px, whose bf16 gradients torch gets wrong; this one resumes it in float32, and its note
    said '--train.precision=bf16 keeps bf16 autocast', which it then refuses. An older checkpoint (no record) too."""
    settings = tiny_overrides(tmp_path / "run", **{"model.cifar_stem": "false", "train.max_steps": 2,
                                                   "train.knn_every": -1, "data.limit": 32, "data.image_size": 16})
    settings += [f"--data.root={cifar10_root}"]
    monkeypatch.setattr(byol.precision, "native_bf16", lambda device: True)  # auto: bf16 on this CPU, whatever it has
    pretrain(load_config("cifar10", settings))
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    state["extra"]["precision"] = recorded  # as the older byol wrote it
    if recorded is None:
        del state["extra"]["precision"]
    torch.save(state, last)
    capsys.readouterr()
    pretrain(load_config("cifar10", settings + ["--train.max_steps=3", "--train.epochs=2"]), resume=True)
    err = capsys.readouterr().err
    assert said in err and "--train.precision=bf16" not in err, err


def test_a_resumed_run_reports_the_knn_at_initialization_it_logged(tmp_path, cifar10_root):
    settings = tiny_overrides(tmp_path / "run", **{"train.max_steps": 2, "train.knn_limit": 64}) + [
        f"--data.root={cifar10_root}"]
    first = pretrain(load_config("cifar10", settings))
    resumed = pretrain(load_config("cifar10", settings + ["--train.max_steps=4"]), resume=True)
    assert resumed["step"] == 4 and resumed["knn_init"] == first["knn_init"] and set(first["knn_init"]) == {20, 200}


def test_pretrain_and_eval_run_whatever_grad_mode_and_default_dtype_the_caller_set(tmp_path, cifar10_root):
    """A user test: pretrain inside torch.no_grad() failed deep in autograd ("element 0 of tensors does
    not require grad"), and after torch.set_default_dtype(torch.float64) pretrain and knn failed on
    mixed dtypes. They run in float32 with gradients on, and put the caller's settings back."""
    import byol
    config = load_config("cifar10", tiny_overrides(tmp_path / "run", **{"data.limit": 32, "train.max_steps": 2,
                                                                         "train.knn_every": -1})
                         + [f"--data.root={cifar10_root}"])
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            assert pretrain(config)["step"] == 2
            assert not torch.is_grad_enabled()
        assert torch.get_default_dtype() == torch.float64
        ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
        with torch.inference_mode():
            result = byol.knn(ckpt, ks=(5,), limit=20)
        assert result["knn_top1"][5] >= 0 and torch.get_default_dtype() == torch.float64
        with torch.no_grad():  # each of the Python steps (linear failed on mixed dtypes: mat1 and mat2)
            assert 0 <= byol.linear(ckpt, epochs=1, limit=20)["top1"] <= 100
            byol.embed(ckpt, tmp_path / "e.npy", limit=8)
            byol.export(ckpt, tmp_path / "export")
            net, _ = byol.load_encoder(tmp_path / "export" / "encoder.pt")
        assert next(net.parameters()).dtype == torch.float32 and torch.get_default_dtype() == torch.float64
        exported = torch.load(tmp_path / "export" / "encoder.pt", weights_only=True)
        assert {v.dtype for v in exported.values() if v.is_floating_point()} == {torch.float32}  # fc too
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.skipif(not hasattr(torch, "get_default_device"), reason="torch.set_default_device: torch >= 2.3")
def test_pretrain_and_eval_run_on_the_cpu_whatever_default_device_the_caller_set(tmp_path, cifar10_root):
    """A notebook review: after torch.set_default_device (a GPU notebook's "cuda"; "meta" here, on any machine)
    pretrain failed, and its caller's random generators were not put back: their states, kept as tensors, were
    made on that device. Tensors made without a device are the CPU's inside; the caller's device is put back."""
    import byol
    config = load_config("cifar10", tiny_overrides(tmp_path / "run", **{"data.limit": 32, "train.max_steps": 2,
                                                                         "train.knn_every": -1})
                         + [f"--data.root={cifar10_root}"])
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    torch.set_default_device("meta")
    try:
        assert pretrain(config)["step"] == 2
        assert torch.get_default_device().type == "meta"
        torch.set_default_device(None)
        assert torch.equal(torch.rand(3), expected)  # the caller's generator, as it was
        with torch.device("meta"):  # a device context of the caller's
            assert byol.knn(tmp_path / "run" / "checkpoints" / "last.pt", ks=(5,), limit=20)["knn_top1"][5] >= 0
            assert torch.empty(1).device.type == "meta"
    finally:
        torch.set_default_device(None)


def test_a_new_run_with_projections_one_wide_is_refused_before_anything_is_written(tmp_path):
    """A user test: model.projection_size=1 trained (its loss compares signs), and the collapse monitor called a
    std of 1.014 healthy. An earlier run's config.yaml of 1 still loads (its exports, evaluations, resume)."""
    from byol.config import ConfigError
    config = load_config("cifar10", tiny_overrides(tmp_path / "run") + ["--model.projection_size=1"])
    with pytest.raises(ConfigError, match=r"^model.projection_size must be >= 2 for a new run \(the loss"):
        pretrain(config)
    assert not (tmp_path / "run").exists()


# torch.is_autocast_enabled("cpu") and torch.set_autocast_enabled("cpu", on) came in torch 2.4; the CPU's own before
PER_DEVICE_AUTOCAST_CALLS = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4)


def _cpu_autocast_on() -> bool:
    return torch.is_autocast_enabled("cpu") if PER_DEVICE_AUTOCAST_CALLS else torch.is_autocast_cpu_enabled()


def _turn_cpu_autocast(on: bool) -> None:
    if PER_DEVICE_AUTOCAST_CALLS:
        torch.set_autocast_enabled("cpu", on)
    else:
        torch.set_autocast_cpu_enabled(on)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_pretrain_and_eval_ignore_the_caller_s_autocast(tmp_path, cifar10_root, precision):
    """A user test (a notebook): under the caller's torch.autocast, kNN failed ("scatter(): Expected self.dtype
    to be equal to src.dtype"), the linear probe's top-1 and pretraining's loss changed, while the results
    said float32. The caller's autocast is off inside, as its default dtype and grad mode are overridden, and
    its cache too (an outer autocast kept the step's bf16 copies of the weights: stale after the first step)."""
    import byol
    from byol.evaluate import knn_accuracy, knn_classify
    runs = []
    for name, autocast in (("plain", None), ("off", False), ("on", True)):  # (None: no context at all)
        config = load_config("cifar10", tiny_overrides(tmp_path / name, **{
            "data.limit": 32, "train.max_steps": 3, "train.knn_every": -1, "train.precision": precision})
            + [f"--data.root={cifar10_root}"])
        context = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast) if autocast is not None else \
            contextlib.nullcontext()
        with context:
            result = pretrain(config)
            ckpt = tmp_path / name / "checkpoints" / "last.pt"
            runs.append((result["loss"], byol.knn(ckpt, ks=(5,), limit=20)["knn_top1"],
                         byol.linear(ckpt, epochs=1, limit=20)["top1"],
                         byol.load_encoder(ckpt)[0].state_dict()))
            assert _cpu_autocast_on() is bool(autocast)  # the caller's, put back
    (loss, knn, top1, weights) = runs[0]
    for loss_a, knn_a, top1_a, weights_a in runs[1:]:
        assert (loss, knn, top1) == (loss_a, knn_a, top1_a)
        assert all(torch.equal(weights[k], weights_a[k]) for k in weights)
    from byol.precision import usual_torch_defaults
    _turn_cpu_autocast(True)  # on without a context (a review: 'nothing entered' was taken for off)
    try:
        with usual_torch_defaults():
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
        assert _cpu_autocast_on()
    finally:
        _turn_cpu_autocast(False)
    bank, labels, queries = torch.randn(1000, 64), torch.arange(1000) % 10, torch.randn(1000, 64)
    expected = knn_classify(bank, labels, queries, k=20), knn_accuracy(bank, labels, queries, labels, ks=(20,))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a building block alone: the same neighbours (not bf16's)
        scores, accuracy = knn_classify(bank, labels, queries, k=20), knn_accuracy(bank, labels, queries, labels,
                                                                                  ks=(20,))
    assert torch.equal(scores, expected[0]) and accuracy == expected[1]


def test_a_resume_with_other_settings_keeps_those_its_earlier_steps_ran_with(tmp_path, cifar10_root, monkeypatch):
    """config.yaml holds the settings of the run's last start; a user test found that after a resume
    with another learning rate nothing in the folder said what the first steps ran with. Those are
    kept as config_until_stepS.yaml: only where they differ, never replaced, and removed with a start
    that fails before its first step."""
    from byol.resume import resume_config
    run = tmp_path / "run"
    settings = tiny_overrides(run, **{"data.limit": 32, "train.epochs": 4, "train.knn_every": -1}) + [
        f"--data.root={cifar10_root}"]

    def resume(*overrides):
        return pretrain(resume_config(None, [f"--train.out_dir={run}", *overrides]), resume=True)

    pretrain(load_config("cifar10", settings + ["--train.max_steps=2"]))
    first = (run / "config.yaml").read_text()
    shutil.copy(run / "checkpoints" / "last.pt", tmp_path / "step2.pt")
    resume("--train.max_steps=4")
    assert (run / "config_until_step2.yaml").read_text() == first
    assert "max_steps: 4" in (run / "config.yaml").read_text()
    second = (run / "config.yaml").read_text()
    shutil.copy(run / "checkpoints" / "last.pt", tmp_path / "step4.pt")
    with monkeypatch.context() as patched:  # a start that fails before its first step: undone
        patched.setattr(byol.train, "step_forward", lambda *a, **k: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            resume("--train.max_steps=6")
    assert not (run / "config_until_step4.yaml").exists() and (run / "config.yaml").read_text() == second
    # Steps 3 and 4 lost (last.pt of step 2 again): what ran up to step 2 stays, not replaced by what ran since
    shutil.copy(tmp_path / "step2.pt", run / "checkpoints" / "last.pt")
    assert resume("--train.max_steps=6")["step"] == 6
    assert (run / "config_until_step2.yaml").read_text() == first
    # From step 4 with the settings config.yaml has: nothing kept
    third = (run / "config.yaml").read_text()
    shutil.copy(tmp_path / "step4.pt", run / "checkpoints" / "last.pt")
    assert resume()["step"] == 6
    assert sorted(p.name for p in run.glob("config*.yaml")) == ["config.yaml", "config_until_step2.yaml"]
    # From step 4 with another lr, then back to step 2 (the newest epoch checkpoint copied to last.pt,
    # as the docs advise where last.pt is lost): the file of step 4, whose steps are trained again, goes
    shutil.copy(tmp_path / "step4.pt", run / "checkpoints" / "last.pt")
    resume("--optim.lr=0.1")
    assert (run / "config_until_step4.yaml").read_text() == third
    shutil.copy(tmp_path / "step2.pt", run / "checkpoints" / "last.pt")
    resume()
    assert sorted(p.name for p in run.glob("config*.yaml")) == ["config.yaml", "config_until_step2.yaml"]
    assert (run / "config_until_step2.yaml").read_text() == first
    # A new run in the folder (its checkpoints removed): none of them, once its first step is done
    shutil.rmtree(run / "checkpoints")
    with monkeypatch.context() as patched:
        patched.setattr(byol.train, "step_forward", lambda *a, **k: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            pretrain(load_config("cifar10", settings + ["--train.max_steps=2"]))
    assert (run / "config_until_step2.yaml").read_text() == first  # put back with the failed start
    pretrain(load_config("cifar10", settings + ["--train.max_steps=2"]))
    assert sorted(p.name for p in run.glob("config*.yaml")) == ["config.yaml"]


def test_a_run_an_older_byol_saved_with_optim_name_sgd_in_capitals_resumes(tmp_path, cifar10_root):
    """An older byol took optim.name SGD and saved it so, in config.yaml and the checkpoint: such a run
    resumes (a review: comparing names as written had made it unusable)."""
    from byol.resume import resume_config
    run = tmp_path / "run"
    pretrain(load_config("cifar10", tiny_overrides(run, **{"data.limit": 32, "train.max_steps": 2, "train.epochs": 2,
                                                           "train.knn_every": -1, "optim.name": "sgd"})
                         + [f"--data.root={cifar10_root}"]))
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("name: sgd", "name: SGD"))
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    state["config"]["optim"]["name"] = "SGD"
    torch.save(state, run / "checkpoints" / "last.pt")
    assert pretrain(resume_config(None, [f"--train.out_dir={run}", "--train.max_steps=4"]), resume=True)["step"] == 4


def test_keep_checkpoints_keeps_the_newest_kept_epochs_only(tmp_path, cifar10_root):
    """A user test's 1,000-epoch run kept 1,001 files (the imagenet preset keeps 100 of ResNet-50's)."""
    run = tmp_path / "run"
    config = load_config("cifar10-cpu", tiny_overrides(run, **{"train.epochs": 4, "train.checkpoint_every": 1,
                                                                "train.keep_checkpoints": 2, "train.knn_every": -1})
                         + [f"--data.root={cifar10_root}"])
    pretrain(config)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_0003.pt", "epoch_0004.pt", "last.pt"]
    other = run / "checkpoints" / "epoch_0001_step5.pt"  # an earlier start's epoch of another length, say
    other.write_bytes(b"not one of the kept epochs")
    pretrain(byol.resume.resume_config(None, [f"--train.out_dir={run}", "--train.epochs=5"]), resume=True)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch_0001_step5.pt", "epoch_0004.pt", "epoch_0005.pt", "last.pt"]
    with pytest.raises(ConfigError, match="train.keep_checkpoints"):
        load_config("cifar10-cpu", ["--train.keep_checkpoints=-1"])


def test_a_resume_from_a_kept_epoch_copied_to_last_pt_writes_its_later_epochs_over_their_own(tmp_path, cifar10_root,
                                                                                                capsys):
    """A mutation audit: setting aside every kept epoch found in place, of the same step too, survived. Resumed
    as the run folder's note says (a kept epoch copied to last.pt), the run writes its later epochs again at
    their own steps: those are replaced, not kept beside as epoch_N_stepS.pt with a note about another length."""
    run = tmp_path / "run"
    config = load_config("cifar10-cpu", tiny_overrides(run, **{"train.epochs": 3, "train.checkpoint_every": 1,
                                                                "train.knn_every": -1})
                         + [f"--data.root={cifar10_root}"])
    pretrain(config)
    checkpoints = run / "checkpoints"
    shutil.copyfile(checkpoints / "epoch_0001.pt", checkpoints / "last.pt")
    capsys.readouterr()
    pretrain(byol.resume.resume_config(None, [f"--train.out_dir={run}"]), resume=True)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt",
                                                              "last.pt"]
    assert "another length" not in capsys.readouterr().err


def test_a_resume_writes_a_missing_kept_epoch_only_from_a_last_pt_of_that_epoch_s_end(tmp_path):
    """A mutation audit: writing the missing epoch_N.pt from a last.pt of any step of the epoch after N
    (a stop mid-epoch) survived every test; it would have kept a checkpoint of a later step as epoch N's."""
    config = load_config(None, ["--train.checkpoint_every=2", f"--train.out_dir={tmp_path}"])
    data = types.SimpleNamespace(batches=range(4), size=64, folder=None, names_digest=None)  # 4 steps an epoch
    saving = byol.saving.Checkpoints(None, None, None, config, None, data, tmp_path, 0, 1, torch.device("cpu"), "fp32")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"step")
    for step in (0, 4, 9, 11, 12):  # epoch 0, epoch 1 (not kept), in epoch 2 (after 2's end), end of epoch 3
        saving.write_missing_epoch(step)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.pt"]
    saving.write_missing_epoch(8)  # the end of epoch 2, a kept one
    assert (tmp_path / "checkpoints" / "epoch_0002.pt").read_bytes() == b"step"


def test_without_the_bar_a_long_epoch_says_where_the_run_stands_within_it(tmp_path, cifar10_root, monkeypatch,
                                                                           capsys):
    """A user test at ImageNet scale: an epoch takes an hour on one GPU (days on a CPU), and a log file got
    its first line at its end. Within an epoch, a metrics read LINE_EVERY_S after the last line prints one
    (each step takes 1 s here, and a line is due every 2)."""
    on_a_fake_clock(monkeypatch)
    monkeypatch.setattr(byol.train, "progress_bar", lambda *args: None)
    monkeypatch.setattr(byol.reporting, "LINE_EVERY_S", 2.0, raising=False)
    pretrain(two_epochs_of_four_steps(tmp_path / "run", cifar10_root, "--train.progress=false"))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]
    losses = {r["step"]: r["train/loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r}
    steps = [int(line.split("(step ")[1].split("/")[0]) for line in lines]
    assert steps == [2, 4, 6], lines  # the epoch's end (4) starts the count again; 8 is the closing table's
    assert lines[0] == f"epoch 1/2 (step 2/8), loss {losses[2]:.4f}, 16.0 img/s, about 0:00:06 left"
    assert lines[2] == f"epoch 2/2 (step 6/8), loss {losses[6]:.4f}, 16.0 img/s, about 0:06:12 left"


def test_without_the_bar_a_line_within_an_epoch_does_not_wait_for_a_metrics_read(tmp_path, cifar10_root,
                                                                                 monkeypatch, capsys):
    """A notebook's or a log's run on a CPU: train.log_every steps of a full-width encoder take longer than
    LINE_EVERY_S (20 steps of 30 s and more at batch 64), and the line within the epoch waited for the next read,
    10 minutes and more apart. Here reads come at epochs' ends only (log_every=4), a line is due every 2 s of 1 s
    steps: it comes at steps 2 and 6 all the same, with the last loss read (none yet at step 2)."""
    on_a_fake_clock(monkeypatch)
    monkeypatch.setattr(byol.train, "progress_bar", lambda *args: None)
    monkeypatch.setattr(byol.reporting, "LINE_EVERY_S", 2.0, raising=False)
    pretrain(two_epochs_of_four_steps(tmp_path / "run", cifar10_root, "--train.progress=false",
                                      "--train.log_every=4"))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]
    losses = {r["step"]: r["train/loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r}
    assert [int(line.split("(step ")[1].split("/")[0]) for line in lines] == [2, 4, 6], lines
    assert lines[0].startswith("epoch 1/2 (step 2/8), 16.0 img/s"), lines
    assert lines[2].startswith(f"epoch 2/2 (step 6/8), loss {losses[4]:.4f} (step 4), 16.0 img/s"), lines


def test_without_the_bar_a_run_cut_within_an_epoch_ends_on_its_closing_table_alone(tmp_path, cifar10_root,
                                                                                    monkeypatch, capsys):
    """train.max_steps=6 stops 2 steps into the second epoch of 4: a line is due then, but the run's last step is
    the closing table's, as at an epoch's end (a mutation audit: the check that a step is not the last survived,
    every test's run ending at an epoch's end)."""
    on_a_fake_clock(monkeypatch)
    monkeypatch.setattr(byol.train, "progress_bar", lambda *args: None)
    monkeypatch.setattr(byol.reporting, "LINE_EVERY_S", 2.0, raising=False)
    pretrain(two_epochs_of_four_steps(tmp_path / "run", cifar10_root, "--train.progress=false",
                                      "--train.max_steps=6", "--train.knn_every=-1"))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]
    assert [int(line.split("(step ")[1].split("/")[0]) for line in lines] == [2, 4], lines


def test_the_interval_between_checkpoints_runs_from_the_last_write(tmp_path, cifar10_root, monkeypatch):
    """4 epochs of 8 steps on a clock of 1 s a step, an interval of 12 s: step 16 writes (16 s since the
    start), step 24 does not (8 s since that write), the end does (a mutation audit: an interval measured from
    the start, which wrote at every epoch's end after the first write, survived every test)."""
    a_second_a_step(monkeypatch)
    assert writes_every_12_s(tmp_path, cifar10_root, monkeypatch) == [("last.pt", 16), ("plots", 16),
                                                                      ("last.pt", 32), ("plots", 32)]


def test_a_slow_first_batch_is_the_start_up_not_a_slow_feed(tmp_path, cifar10_root, monkeypatch, capsys):
    """The first batch waits for the loaders to start (decoding processes, a folder's first files): 30 s of it,
    then batches at once, is no note that training waited for its images (a mutation audit: counting the
    first report's wait survived)."""
    on_a_fake_clock(monkeypatch)
    clock, step_images = byol.reporting.time.perf_counter, byol.train.step_images

    def slow_start(*args):
        for i, images in enumerate(step_images(*args)):
            clock.now += 30 if i == 0 else 0
            yield images

    monkeypatch.setattr(byol.train, "step_images", slow_start)
    pretrain(two_epochs_of_four_steps(tmp_path / "run", cifar10_root))
    waits = [r["train/data_wait"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r]
    assert waits == [30 / 31] + [0.0] * 7  # logged as it was
    assert "waited for its images" not in capsys.readouterr().err


def test_a_duration_is_hours_minutes_and_seconds():
    """The closing table's time and the epoch line's time left (a mutation audit: no test reached an hour)."""
    from byol.progress import duration
    assert [duration(s) for s in (0, 59.6, 61, 3599, 3600, 3725, 90061)] == [
        "0:00:00", "0:01:00", "0:01:01", "0:59:59", "1:00:00", "1:02:05", "25:01:01"]


def test_a_folder_run_that_dies_after_a_checkpoint_keeps_the_list_of_its_skipped_files(tmp_path, monkeypatch):
    """skipped_files.txt is written with each checkpoint, not only at the run's end: a run killed after one keeps
    the list, which its resume reads back (a mutation audit: only the end's write was tested)."""
    from conftest import extract_jpegs
    root = extract_jpegs(tmp_path / "images", per_class=2)  # 20 files
    (root / "cat" / "bad.jpg").write_bytes(b"not a jpeg")
    run = tmp_path / "run"
    config = load_config("cifar10", tiny_overrides(run, **{
        "data.limit": "null", "train.batch_size": 4, "train.epochs": 2, "train.knn_every": -1, "data.workers": 0}) + [
        "--data.dataset=folder", f"--data.root={root}", "--data.image_size=32"])
    call = byol.train.LoopStep.__call__

    def dies_in_the_second_epoch(self, step, images):
        if step > 6:  # 5 steps an epoch
            raise RuntimeError("killed")
        return call(self, step, images)

    monkeypatch.setattr(byol.train.LoopStep, "__call__", dies_in_the_second_epoch)
    with pytest.raises(RuntimeError, match="killed"):
        pretrain(config)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 5
    assert (run / "skipped_files.txt").read_text().startswith(f"{root / 'cat' / 'bad.jpg'}\t")


def _folder_config(run, data, epochs: int):
    """A folder run of batches of 4 at 32 px without the kNN monitor, for a resume in another spelling of its root."""
    return load_config("cifar10", tiny_overrides(run, **{
        "data.limit": "null", "train.batch_size": 4, "train.epochs": epochs, "train.knn_every": -1,
        "data.workers": 0}) + ["--data.dataset=folder", f"--data.root={data}", "--data.image_size=32"])


def test_a_run_resumed_where_its_folder_moved_lists_each_skipped_file_once_at_its_new_place(tmp_path):
    """A user test: a run resumed with --data.root=NEW, its folder moved there, kept the list of its skipped files
    under the old paths and added the same files under the new ones, and its closing table counted each twice."""
    from conftest import extract_jpegs
    root = extract_jpegs(tmp_path / "images", per_class=2)  # 20 files, 5 whole batches of 4: every one read
    next((root / "cat").iterdir()).unlink()
    (root / "cat" / "bad.jpg").write_bytes(b"not a jpeg")
    run = tmp_path / "run"
    config = partial(_folder_config, run)
    assert pretrain(config(root, 1))["skipped_files"] == 1
    moved = root.rename(tmp_path / "moved")
    results = pretrain(config(moved, 2), resume=True)
    listed = [line.split("\t")[0] for line in (run / "skipped_files.txt").read_text().splitlines()]
    assert listed == [str(moved / "cat" / "bad.jpg")], listed
    assert results["skipped_files"] == 1


@pytest.mark.parametrize("first, then", [("train", "root"), ("root", "train")])
def test_a_run_resumed_with_its_folder_named_by_root_or_root_train_keeps_its_skipped_files_where_they_are(
        tmp_path, first, then):
    """A review: the same folder, not moved, given as ROOT/train by the run and ROOT by its resume (or the reverse):
    the list of skipped files took ROOT/train/cat/bad.jpg for ROOT/cat/bad.jpg (or ROOT/train/train/...), a file
    that never was, and listed the real one beside it: two files counted for one."""
    from conftest import extract_jpegs
    root = tmp_path / "imagenet"
    train = extract_jpegs(root / "train", per_class=2)
    extract_jpegs(root / "val", per_class=1)
    next((train / "cat").iterdir()).unlink()
    (train / "cat" / "bad.jpg").write_bytes(b"not a jpeg")
    run = tmp_path / "run"
    config = partial(_folder_config, run)
    given = {"train": train, "root": root}
    assert pretrain(config(given[first], 1))["skipped_files"] == 1
    results = pretrain(config(given[then], 2), resume=True)
    listed = [line.split("\t")[0] for line in (run / "skipped_files.txt").read_text().splitlines()]
    assert listed == [str(train / "cat" / "bad.jpg")], listed
    assert results["skipped_files"] == 1


def test_a_script_run_again_by_a_spawned_decoding_process_is_told_to_guard_its_calls(tmp_path, monkeypatch):
    """A user test under 'spawn' (macOS's and Windows's default), a script calling byol.pretrain outside
    `if __name__ == "__main__":`: each decoding process ran the script, and pretrain, again, and said that
    another byol run (its parent) was writing the folder; under 'forkserver', that the folder could not be
    written. Refused at once instead, nothing read or written."""
    import multiprocessing
    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)  # as spawn sets it
    out = tmp_path / "run"
    config = load_config("cifar10-cpu", tiny_overrides(out, **{"data.root": tmp_path / "no-data"}))
    with pytest.raises(RuntimeError, match='byol.pretrain was called again .* `if __name__ == "__main__":`'):
        pretrain(config)
    assert not out.exists()


def test_a_resumed_run_keeps_no_copy_of_the_checkpoint_s_weights(tmp_path, cifar10_root, monkeypatch):
    """The checkpoint is loaded into model and optimizer before the data is read (a refused resume is refused
    first), and the rest of the resume after it: what waits for the data holds no tensor of the model's or the
    optimizer's, which would stay in host memory, a copy of the weights, for the whole run."""
    import gc
    import weakref

    config = lambda steps: load_config("cifar10", tiny_overrides(tmp_path / "run", **{
        "train.max_steps": steps, "train.knn_every": -1}) + [f"--data.root={cifar10_root}"])
    pretrain(config(2))
    loaded, alive = [], []
    read = byol.resume.load_checkpoint

    def load_checkpoint_seen(*args, **kwargs):
        state = read(*args, **kwargs)
        loaded.extend(weakref.ref(t) for t in state["model"].values() if torch.is_tensor(t))
        return state

    train_steps = byol.train._train_steps

    def train_steps_seen(*args, **kwargs):
        gc.collect()
        alive.append(sum(ref() is not None for ref in loaded))
        return train_steps(*args, **kwargs)

    monkeypatch.setattr(byol.resume, "load_checkpoint", load_checkpoint_seen)
    monkeypatch.setattr(byol.train, "_train_steps", train_steps_seen)
    assert pretrain(config(4), resume=True)["step"] == 4
    assert loaded and alive == [0]


def test_a_run_s_initial_weights_and_each_process_s_augmentation_generator_are_seeded_by_train_seed_and_rank():
    """A mutation audit: the initial weights seeded by the rank alone, and every process's augmentation
    generator by train.seed alone (the same draws on every rank under torchrun), each survived every test. The
    initial weights are those ``byol eval --random-init`` rebuilds from train.seed."""
    from byol.encoders import _initial_net
    config = load_config("cifar10", tiny_overrides("unused", **{"train.seed": 3}))
    with byol.checkpoint.rng_state_kept():
        built = [byol.run_setup.build_run(config, torch.device("cpu"), rank, 1, None, None) for rank in (0, 1)]
    assert [generator.initial_seed() for _, _, generator in built] == [3, 4]
    rebuilt = _initial_net(config).state_dict()
    assert all(torch.equal(v, rebuilt[k]) for k, v in built[0][0].encoder.body.state_dict().items())


@pytest.mark.parametrize("optim", ["lars", "adamw"])
def test_a_run_s_optimizer_trains_the_online_network_and_the_predictor_and_not_the_target(optim):
    """A mutation audit: build_run's optimizer given the online network alone survived every test: the predictor
    then kept its initial weights (BYOL's asymmetry, the paper's table 5); the target is moved by EMA only."""
    config = load_config("cifar10", tiny_overrides("unused", **{"optim.name": optim}))
    byol_model, optimizer, _ = byol.run_setup.build_run(config, torch.device("cpu"), 0, 1, None, None)
    optimized = [id(p) for group in optimizer.param_groups for p in group["params"]]
    trained = [id(p) for p in (*byol_model.online.parameters(), *byol_model.predictor.parameters())]
    assert len(optimized) == len(set(optimized)) and set(optimized) == set(trained)
    assert not set(optimized) & {id(p) for p in byol_model.target.parameters()}


def test_a_resumed_run_s_line_reckons_its_throughput_from_the_step_it_resumed_at():
    """A mutation audit: the rate counted from step 0 rather than from this start's first step survived (the line
    tests start at 0). Resumed at step 4, at step 6 after 2 s of training: 1 step/s, 16 img/s; 3 s in all with a
    pause (a kNN evaluation, a checkpoint): 2 steps left at 1.5 s each."""
    report = types.SimpleNamespace(steps_per_epoch=4, epochs=2, last_step=6,
                                   clock=types.SimpleNamespace(training_s=lambda: 2.0, run_s=lambda: 3.0))
    line = epoch_line(6, 8, report, first_step=4, batch_size=16, loss=1.5)
    assert line == "epoch 2/2 (step 6/8), loss 1.5000, 16.0 img/s, about 0:00:03 left"
    # at an epoch's last step, that epoch (a mutation audit: the next one, step // steps_per_epoch + 1, survived)
    assert epoch_line(8, 8, report, first_step=4, batch_size=16, loss=1.5).startswith("epoch 2/2 (step 8/8), loss "
                                                                                     "1.5000 (step 6), 32.0 img/s")


def test_a_resumed_run_s_time_goes_on_from_the_checkpoint_s():
    """time_s in metrics.jsonl counts on from the seconds the checkpoint had run (a mutation audit: counted from 0
    again, the curves against time restarted at each resume, and no test failed)."""
    assert 100.0 <= Clock(torch.device("cpu"), None, resumed_s=100.0).time_s() < 110.0


def test_the_training_time_leaves_out_what_ran_paused_and_the_run_s_time_does_not(monkeypatch):
    """The epoch line's img/s is reckoned on training time (a mutation audit: a pause for a kNN evaluation or a
    checkpoint counted in it survived). 10 s since the start, 3 of them paused."""
    now = [0.0]
    monkeypatch.setattr(byol.reporting, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    clock = Clock(torch.device("cpu"), None)
    now[0] = 1.0
    with clock.paused():
        now[0] = 4.0
    now[0] = 10.0
    assert (clock.training_s(), clock.run_s()) == (7.0, 10.0)


def test_each_report_logs_one_record_with_its_place_and_throughput(tmp_path):
    """One record a report (a mutation audit: each written twice into metrics.jsonl survived every test), with
    its epoch, time and the images a second of its interval: 2 steps of 16 images in 4 s."""
    record = {"train/loss": 1.0, "monitor/z_std": 0.3, "monitor/effective_rank": 8.0, "train/nonfinite_streak": 0}
    clock = types.SimpleNamespace(lap=lambda: (4.0, 1.0), time_s=lambda: 9.5, device=torch.device("cpu"))
    logged = []
    log = types.SimpleNamespace(log=lambda step, **fields: logged.append((step, fields)), text=None)
    loop_step = types.SimpleNamespace(read=lambda z1: dict(record), amp=None)
    report = Report(loop_step, log, None, None, clock, 16, 3, tmp_path / "last.pt", 0, steps_per_epoch=4, epochs=1)
    report(2, torch.zeros(16, 8))
    report(4, torch.zeros(16, 8))
    assert [step for step, _ in logged] == [2, 4]
    assert {k: logged[0][1][k] for k in ("epoch", "time_s", "train/images_per_s", "train/data_wait")} == {
        "epoch": 0.5, "time_s": 9.5, "train/images_per_s": 8.0, "train/data_wait": 0.25}
    assert logged[1][1]["train/images_per_s"] == 8.0  # steps 3 and 4's, not counted from the start (an audit)


def test_the_data_wait_note_leaves_out_the_first_interval_s_start_up(tmp_path, capsys):
    """A mutation audit: counting the first report's interval (the loaders' start-up, 9 s of 10 waited here) in the
    share of time waited survived. Two intervals after it without a wait: no note."""
    from byol.config import Config
    record = {"train/loss": 1.0, "monitor/z_std": 0.3, "monitor/effective_rank": 8.0, "train/nonfinite_streak": 0}
    laps = iter([(10.0, 9.0), (10.0, 0.0), (10.0, 0.0)])
    clock = types.SimpleNamespace(lap=lambda: next(laps), device=torch.device("cpu"))
    loop_step = types.SimpleNamespace(read=lambda z1: dict(record), amp=None)
    report = Report(loop_step, None, None, None, clock, 16, 3, tmp_path / "last.pt", 0, steps_per_epoch=4, epochs=1)
    for step in (1, 2, 3):
        report(step, torch.zeros(16, 8))
    report.note_data_wait(Config(), host_kept=False)
    assert (report.trained_s, report.waited_s) == (20.0, 0.0) and capsys.readouterr().err == ""


def test_the_knn_monitor_s_bank_is_the_training_split_and_its_queries_the_held_out_one(monkeypatch):
    """A mutation audit: the two splits' features swapped survived (the tests' splits were alike). A bank of three
    (two of class 0, one of class 1) and one query of class 1 near it score 100%; swapped, the three as queries
    of a bank of one would score 33.3%."""
    from byol.config import Config
    from byol.data import ImageSet
    from byol.knn_monitor import knn_eval
    from byol.train_data import TrainData
    monkeypatch.setattr(byol.knn_monitor.features, "extract_features_sharded",
                        lambda net, images, device, **kwargs: images.flatten(1).float())
    pixels = lambda rows: torch.tensor(rows, dtype=torch.uint8).view(-1, 2, 1, 1)  # noqa: E731
    bank = ImageSet(pixels([[9, 0], [9, 1], [0, 9]]), torch.tensor([0, 0, 1]))
    held_out = ImageSet(pixels([[1, 9]]), torch.tensor([1]))
    accuracy = knn_eval(types.SimpleNamespace(encoder=torch.nn.Flatten()),
                        TrainData(None, 0, knn_train=bank, knn_test=held_out), Config(), torch.device("cpu"), None)
    assert accuracy == {20: 100.0, 200: 100.0}


def test_a_collapsed_run_resumed_is_not_warned_of_again(tmp_path, cifar10_root):
    """A review: the collapse monitor's state was not in the checkpoint, so a collapsed run stopped and resumed
    (a requeue) warned of collapse again at its first record, a line in warnings.txt that the uninterrupted run,
    bitwise the same, had not."""
    def config(name, *extra):
        return load_config("cifar10-cpu", tiny_overrides(tmp_path / name, **{
            "data.root": cifar10_root, "train.epochs": 3, "train.knn_every": -1, "model.use_predictor": False,
            "optim.lr": 5}) + list(extra))

    whole = pretrain(config("whole"))
    assert len(whole["warnings"]) == 1, whole["warnings"]  # collapsed in its first epoch (of 8 steps)
    pretrain(config("resumed", "--train.max_steps=12"))
    resumed = pretrain(config("resumed", "--train.max_steps=null"), resume=True)
    assert resumed["warnings"] == whole["warnings"]
    assert [r["train/loss"] for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl") if "train/loss" in r] == \
        [r["train/loss"] for r in read_metrics(tmp_path / "whole" / "metrics.jsonl") if "train/loss" in r]


def test_a_resume_that_finds_the_run_finished_drops_what_a_killed_start_logged_after_its_checkpoint(tmp_path,
                                                                                                    cifar10_root):
    """A user test: a start killed after its checkpoint at step 4 had logged steps 5 and 6; resumed with
    ``--train.max_steps=4`` (to end the run there) it was finished, and its log kept steps 5 and 6, which its
    checkpoint never reached (a resume that trains drops them). Now dropped, in TensorBoard too."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = tmp_path / "run"
    settings = tiny_overrides(run, **{"train.knn_every": 0, "train.log_every": 1}) + [f"--data.root={cifar10_root}"]
    pretrain(load_config("cifar10", settings + ["--train.max_steps=4"]))
    shutil.copy(run / "checkpoints" / "last.pt", tmp_path / "step4.pt")
    pretrain(load_config("cifar10", settings + ["--train.max_steps=6"]), resume=True)
    shutil.copy(tmp_path / "step4.pt", run / "checkpoints" / "last.pt")  # as a kill after step 6's record leaves it
    pretrain(load_config("cifar10", settings + ["--train.max_steps=4"]), resume=True)
    assert max(r["step"] for r in read_metrics(run / "metrics.jsonl")) == 4
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    # the plots drawn again (after the checkpoint put back), without steps 5 and 6
    assert (run / "loss.png").stat().st_mtime_ns > (run / "checkpoints" / "last.pt").stat().st_mtime_ns
