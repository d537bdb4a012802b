"""The run's own words and figures from byol/reporting.py that the end-to-end runs leave loose: the kNN record
and accuracy as shown, the notes, when a line is due, and the progress bar's clock (a mutation audit)."""

import math
import types

import pytest
import torch

import byol.reporting
from byol.config import Config
from byol.reporting import (Clock, Report, epoch_line, knn_shown, log_knn, note_finished, note_unused_optim,
                            note_warmup, stop_line)


def test_a_knn_record_has_its_place_each_k_and_the_top1_at_the_run_s_k():
    """eval/knn_top1 is the accuracy at the run's k (200), not another logged one (20), and the record has its
    epoch and time (a mutation audit: either swapped or dropped survived)."""
    logged = []
    log = types.SimpleNamespace(log=lambda step, **fields: logged.append((step, fields)))
    acc = {20: 41.5, 200: 38.25}
    assert log_knn(log, 8, acc, 200, {"epoch": 2.0, "time_s": 3.5}) is acc
    assert logged == [(8, {"epoch": 2.0, "time_s": 3.5, "eval/knn_top1_k20": 41.5, "eval/knn_top1_k200": 38.25,
                           "eval/knn_top1": 38.25})]


def test_a_knn_accuracy_shows_two_decimals_and_nan_in_words():
    """The closing table's and lines' figure: 71.30%, not 71.3% (a mutation audit: one decimal survived)."""
    assert knn_shown(71.3) == "71.30%"
    assert "not scored" in knn_shown(math.nan) and "%" not in knn_shown(math.nan)


def test_optim_settings_the_optimizer_does_not_read_are_noted_only_where_given(capsys):
    """AdamW reads no momentum: a momentum given is noted, the default one is not (a mutation audit: every unread
    setting noted, given or not, survived)."""
    config = Config()
    config.optim.name = "adamw"
    note_unused_optim(config)
    assert capsys.readouterr().err == ""
    config.optim.momentum = 0.5
    note_unused_optim(config)
    assert capsys.readouterr().err == "note: optim.name=adamw does not use optim.momentum=0.5; it is ignored\n"


@pytest.mark.parametrize("by_max_steps, limit", [(True, "train.max_steps=7"), (False, "train.epochs=3")])
def test_a_finished_run_s_note_names_the_setting_that_ended_it(tmp_path, capsys, by_max_steps, limit):
    config = Config()
    config.train.max_steps, config.train.epochs = 7, 3
    note_finished(config.train, tmp_path, 7, by_max_steps)
    assert f"is finished: step 7, and {limit} ends it" in capsys.readouterr().err


def test_a_line_is_due_at_an_epoch_s_end_and_within_one_every_five_minutes(tmp_path, monkeypatch):
    """A mutation audit: the interval in minutes rather than seconds (5 hours of silence) survived."""
    now = [0.0]
    monkeypatch.setattr(byol.reporting, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    report = Report(None, None, None, None, None, 16, 3, tmp_path / "last.pt", 0, steps_per_epoch=4, epochs=1)
    now[0] = 299.0
    assert not report.line_due() and report.line_due(epoch_end=True)  # at 299 s: the epoch's end only
    now[0] = 598.0
    assert not report.line_due()  # 299 s since the epoch's line
    now[0] = 599.0
    assert report.line_due() and not report.line_due()


def test_a_pause_moves_the_progress_bar_s_clock_on_as_the_training_clock(monkeypatch):
    """The bar's rate and elapsed time leave out a pause (a kNN evaluation) as the logged throughput does (a mutation
    audit: the bar left as it was survived)."""
    now = [0.0]
    monkeypatch.setattr(byol.reporting, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    bar = types.SimpleNamespace(start_t=0.0, last_print_t=1.0)
    clock = Clock(torch.device("cpu"), bar)
    now[0] = 2.0
    with clock.paused():
        now[0] = 5.0
    assert (bar.start_t, bar.last_print_t, clock.last) == (3.0, 4.0, 3.0)


def test_the_data_wait_note_gives_the_share_of_training_time_waited_and_the_cores_left(tmp_path, capsys,
                                                                                        monkeypatch):
    """After the start-up's interval, 10 s waited of 20: 50%; a folder read by 2 processes of 4 cores: more processes
    (a mutation audit: the seconds waited shown as a share, and the cores' comparison flipped, survived)."""
    monkeypatch.setattr(byol.reporting, "usable_cores", lambda: 4)
    record = {"train/loss": 1.0, "monitor/z_std": 0.3, "monitor/effective_rank": 8.0, "train/nonfinite_streak": 0}
    laps = iter([(10.0, 9.0), (10.0, 5.0), (10.0, 5.0)])
    clock = types.SimpleNamespace(lap=lambda: next(laps), device=torch.device("cpu"))
    loop_step = types.SimpleNamespace(read=lambda z1: dict(record), amp=None)
    report = Report(loop_step, None, None, None, clock, 16, 3, tmp_path / "last.pt", 0, steps_per_epoch=4, epochs=1)
    for step in (1, 2, 3):
        report(step, torch.zeros(16, 8))
    config = Config()
    config.data.dataset, config.data.workers = "folder", 2
    report.note_data_wait(config, host_kept=False)
    report.note_data_wait(config, host_kept=False)  # once a start
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("note: training waited for its images 50% of the time ")
    assert "more decoding processes (data.workers=2, of 4 CPU cores here)" in err


def test_a_lap_is_the_time_since_the_last_one_and_its_wait_for_batches(monkeypatch):
    """Each record's img/s is over its own interval (a mutation audit: every lap counted from the clock's start,
    a throughput falling with the run's length, survived the unit tests)."""
    now = [0.0]
    monkeypatch.setattr(byol.reporting, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    clock = Clock(torch.device("cpu"), None)
    now[0] = 2.0
    assert clock.lap() == (2.0, 0.0)

    def slow_batches():
        now[0] += 1.0
        yield torch.zeros(1)
    clock.next_batch(slow_batches())
    now[0] = 7.0
    assert clock.lap() == (5.0, 1.0)


def test_a_run_stopped_in_its_knn_evaluation_says_the_resume_scores_it_first():
    """A mutation audit: the words dropped survived every test but an end-to-end signal test (test_faults.py, a
    minute long), which the audit's selections leave out; a stop outside the evaluation says nothing of it."""
    results = {"stopped_by": "SIGINT", "step": 8, "checkpoint": "run/checkpoints/last.pt"}
    assert stop_line({**results, "knn_cut": True}) == (
        "stopped by SIGINT at step 8 (in its kNN evaluation, which the resume scores first); checkpoint saved to "
        "run/checkpoints/last.pt; continue with --resume")
    assert "kNN" not in stop_line({**results, "knn_cut": False})


def test_a_warm_up_one_step_longer_than_the_run_ends_below_its_peak(capsys):
    """The last step's learning rate is end / warm-up of the peak (cosine_lr warms up by step + 1), so a run one step
    short of its warm-up's end does not reach the peak (a mutation audit: "reaching its peak" said of it survived;
    the preset tests end exactly at the warm-up or well before it)."""
    config = Config()
    config.optim.warmup_epochs, config.train.epochs, config.train.max_steps = 2, 3, 3  # 4 warm-up steps, of 6
    note_warmup(config, 2)
    err = capsys.readouterr().err
    assert "to 0.75 of its peak" in err and "reaching its peak" not in err, err
    config.train.max_steps = 4
    note_warmup(config, 2)
    assert "reaching its peak only at the last step" in capsys.readouterr().err


def test_a_line_at_the_run_s_last_step_gives_no_time_left():
    """Nothing is left at the end: no "about 0:00:00 left" (a mutation audit: ``step <= end_step`` survived, the line
    tests at the last step reading only its start)."""
    report = types.SimpleNamespace(steps_per_epoch=4, epochs=2, last_step=8,
                                   clock=types.SimpleNamespace(training_s=lambda: 2.0, run_s=lambda: 3.0))
    assert epoch_line(8, 8, report, first_step=4, batch_size=16, loss=1.5) == (
        "epoch 2/2 (step 8/8), loss 1.5000, 32.0 img/s")
    assert epoch_line(7, 8, report, first_step=4, batch_size=16, loss=None).endswith(", about 0:00:01 left")
