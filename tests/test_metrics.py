import errno
import io
import json
import math
import os
import sys
import time
import types

import matplotlib.colors
import matplotlib.figure
import pytest

import byol.metrics
from byol.metrics import NAN_LABEL, UNDONE_LABEL, ZERO_LABEL, MetricsLog, plot_metrics


@pytest.fixture
def drawn(monkeypatch):
    """The figures ``plot_metrics`` saves, by file name."""
    figures = {}
    save = matplotlib.figure.Figure.savefig

    def record(fig, path, *args, **kwargs):
        figures[path.name.removeprefix(".").rsplit(".tmp", 1)[0]] = fig  # written beside, then renamed
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    return figures


def write_metrics(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_schedules_have_a_panel_each_on_integer_steps(tmp_path, drawn):
    lrs, taus = [0.002, 0.004, 0.006], [0.996, 0.997, 0.999]
    write_metrics(tmp_path / "metrics.jsonl", [{"step": s, "train/loss": 1.0 / s, "train/lr": lr, "train/tau": tau}
                                               for s, lr, tau in zip([1, 2, 3], lrs, taus)])
    written = plot_metrics(tmp_path / "metrics.jsonl")
    assert sorted(p.name for p in written) == ["loss.png", "schedules.png"] and all(p.is_file() for p in written)
    lr_ax, tau_ax = drawn["schedules.png"].axes  # two panels, not one shared linear axis
    for ax, values in [(lr_ax, lrs), (tau_ax, taus)]:
        (line,) = ax.get_lines()
        assert list(line.get_xdata()) == [1, 2, 3] and list(line.get_ydata()) == values
        low, high = ax.get_ylim()
        assert low < min(values) and max(values) < high and high - low < 0.1  # the curve fills its panel
    assert lr_ax.get_shared_x_axes().joined(lr_ax, tau_ax)
    assert lr_ax.get_ylabel() == "learning rate" and tau_ax.get_ylabel() == "EMA tau"
    low, high = tau_ax.get_xlim()
    ticks = [t for t in tau_ax.get_xticks() if low <= t <= high]
    assert len(ticks) >= 2 and all(t == int(t) for t in ticks)  # three steps: no tick at step 1.5
    assert len(drawn["loss.png"].axes) == 1


def test_a_metric_without_finite_values_draws_no_panel(tmp_path, drawn):
    write_metrics(tmp_path / "metrics.jsonl", [{"step": 1, "train/lr": 0.1, "train/tau": float("nan")},
                                               {"step": 2, "eval/knn_top1_k200": 12.5}])
    written = plot_metrics(tmp_path / "metrics.jsonl")
    assert sorted(p.name for p in written) == ["knn.png", "schedules.png"]
    (ax,) = drawn["schedules.png"].axes
    assert ax.get_ylabel() == "learning rate"
    assert plot_metrics(tmp_path / "missing.jsonl") == []


def test_a_diverged_run_whose_knn_was_never_finite_draws_no_knn_plot(tmp_path, drawn):
    """A diverged run draws a panel of NaN alone, to mark where, on every plot but knn.png: kNN accuracies that
    were never finite have nothing to show there (a mutation audit: knn.png drawn empty survived)."""
    nan = float("nan")
    write_metrics(tmp_path / "metrics.jsonl", [{"step": 2, "train/loss": 4.0, "eval/knn_top1_k200": nan},
                                               {"step": 4, "train/loss": nan, "eval/knn_top1_k200": nan}])
    written = sorted(p.name for p in plot_metrics(tmp_path / "metrics.jsonl"))
    assert "loss.png" in written and "knn.png" not in written and not (tmp_path / "knn.png").exists(), written


def test_a_diverged_run_marks_where_its_loss_was_not_finite_on_every_plot(tmp_path, drawn):
    """A user test: a run whose loss went NaN drew loss.png as one healthy point on an axis ending at its
    last finite record, and collapse.png without its effective-rank panel (NaN at every record). A run of
    such records is one band (from a review: a line a record took 8 s to draw for 2,000 of them)."""
    nan = float("nan")
    write_metrics(tmp_path / "metrics.jsonl", [
        {"step": 2, "train/loss": 4.0, "train/lr": 0.1, "monitor/z_std_ratio": 0.8, "monitor/effective_rank_ratio": nan,
         "eval/knn_top1_k20": 10.0},
        *({"step": s, "train/loss": nan, "train/lr": 0.2, "monitor/z_std_ratio": nan,
           "monitor/effective_rank_ratio": nan} for s in range(4, 204, 2)),
        {"step": 204, "train/loss": 3.0, "train/lr": 0.2},
        {"step": 206, "train/loss": float("inf"), "train/lr": 0.2}])
    plot_metrics(tmp_path / "metrics.jsonl")
    assert len(drawn["collapse.png"].axes) == 2
    for name in ("loss.png", "schedules.png", "collapse.png", "knn.png"):
        for ax in drawn[name].axes:
            bands = [patch for patch in ax.patches if patch.get_label() == UNDONE_LABEL]
            lines = [line for line in ax.get_lines() if line.get_color() == "tab:purple"]
            assert [_x_span(patch) for patch in bands] == [(4, 202)], name
            assert [line.get_xdata()[0] for line in lines] == [206], name
            assert ax.get_xlim()[1] >= 206
    write_metrics(tmp_path / "metrics.jsonl", [{"step": 2, "train/loss": 4.0, "monitor/effective_rank_ratio": nan}])
    drawn.clear()
    plot_metrics(tmp_path / "metrics.jsonl")  # a healthy run's NaN rank alone draws no panel, no mark
    assert not [line for line in drawn["loss.png"].axes[0].get_lines() if line.get_color() == "tab:purple"]
    assert "collapse.png" not in drawn


def test_a_record_with_some_steps_undone_is_marked_though_its_loss_is_finite(tmp_path, drawn):
    """A user test (lr 1e6): the record at step 6 had one of its two steps undone (train/nonfinite_streak 1,
    non-finite weights under a finite loss), its loss (4.0, the kept step's) drawn as a healthy point with no
    mark; the purple marks are where steps were undone, whatever the loss of the others."""
    nan = float("nan")
    write_metrics(tmp_path / "metrics.jsonl", [
        {"step": 2, "train/loss": 3.9, "train/nonfinite_streak": 0, "train/lr": 0.1},
        {"step": 4, "train/loss": 4.0, "train/nonfinite_streak": 1, "train/lr": 0.1},
        {"step": 6, "train/loss": 3.8, "train/nonfinite_streak": 0, "train/lr": 0.1},
        {"step": 8, "train/loss": 3.9, "train/nonfinite_streak": 2, "train/lr": 0.1},
        {"step": 10, "train/loss": nan, "train/nonfinite_streak": 2, "train/lr": 0.1},
        {"step": 12, "train/loss": 3.7, "train/lr": 0.1}])  # an older record, without the field: healthy
    plot_metrics(tmp_path / "metrics.jsonl")
    for name in ("loss.png", "schedules.png"):
        (ax,) = drawn[name].axes
        lines = [line for line in ax.get_lines() if line.get_color() == "tab:purple"]
        assert [line.get_xdata()[0] for line in lines] == [4], name
        assert [_x_span(patch) for patch in ax.patches] == [(8, 10)], name  # no other patches on these
        assert UNDONE_LABEL in [t.get_text() for t in ax.get_legend().get_texts()]


def test_a_knn_value_lost_before_the_loss_is_a_cross_not_a_gap(tmp_path, drawn):
    """A user test (lr 1e6): the kNN at step 4 was NaN (features not finite) while the loss was still finite;
    knn.png drew nothing there, its line joining step 0 to step 8, as if no kNN had been run. A value lost
    outside the purple marks is a cross on the panel's bottom edge, and breaks its line; one inside them is
    not drawn twice."""
    nan = float("nan")
    write_metrics(tmp_path / "metrics.jsonl", [
        {"step": 0, "eval/knn_top1_k20": 11.7},
        {"step": 2, "train/loss": 3.9, "train/nonfinite_streak": 0},
        {"step": 4, "train/loss": 3.7, "train/nonfinite_streak": 0},
        {"step": 4, "eval/knn_top1_k20": nan},
        {"step": 6, "train/loss": nan, "train/nonfinite_streak": 2},
        {"step": 6, "eval/knn_top1_k20": nan}])
    plot_metrics(tmp_path / "metrics.jsonl")
    (ax,) = drawn["knn.png"].axes
    (cross,) = [line for line in ax.get_lines() if line.get_label() == NAN_LABEL]
    assert list(cross.get_xdata()) == [4] and cross.get_marker() == "x"
    assert NAN_LABEL in [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_xlim()[0] <= 0 and ax.get_xlim()[1] >= 6
    (line,) = [line for line in ax.get_lines() if line.get_label() == "knn_top1_k20"]
    assert list(line.get_xdata()) == [0, 4, 6] and math.isnan(line.get_ydata()[1])  # broken, not joined across
    (ax,) = drawn["loss.png"].axes
    assert not [line for line in ax.get_lines() if line.get_label() == NAN_LABEL]  # the band says it


def _x_span(patch) -> tuple:
    """An axvspan's (x0, x1): a Rectangle since matplotlib 3.9, a Polygon before."""
    if hasattr(patch, "get_width"):
        return patch.get_x(), patch.get_x() + patch.get_width()
    xs = [x for x, _ in patch.get_xy()]
    return min(xs), max(xs)


def test_a_long_run_s_finite_values_between_undone_records_are_drawn(tmp_path, drawn):
    """A user test: 60 records, every other one after step 20 with its steps undone (NaN loss): a series of 30
    points or more drew no markers, and a line does not join a value to NaN neighbours, so loss.png's line stopped
    at step 21, the 19 finite losses after it not drawn; a long healthy line stays without markers."""
    write_metrics(tmp_path / "metrics.jsonl", [
        {"step": s, "train/loss": math.nan if s > 20 and s % 2 == 0 else 2.0 - s / 100,
         "train/nonfinite_streak": int(s > 20 and s % 2 == 0), "train/lr": 0.1} for s in range(1, 61)])
    plot_metrics(tmp_path / "metrics.jsonl")
    (loss,) = [line for line in drawn["loss.png"].axes[0].get_lines() if line.get_label() == "loss"]
    x, every = list(loss.get_xdata()), loss.get_markevery()
    marked = [x[i] for i in every] if isinstance(every, list) else x if loss.get_marker() not in (None, "None") else []
    assert loss.get_marker() not in (None, "None", "") and marked == list(range(23, 61, 2)), marked
    (lr,) = [line for line in drawn["schedules.png"].axes[0].get_lines() if line.get_label() == "lr"]
    assert lr.get_marker() in (None, "None", ""), lr.get_marker()


def test_a_long_run_s_finite_first_and_last_records_next_to_undone_ones_are_drawn(tmp_path, drawn):
    """The ends of the rule above (a mutation audit: without the first record's or the last one's own case, the
    first was checked against the last record, and the last, finite after an undone one, failed the plot)."""
    nan = {2, 39}
    write_metrics(tmp_path / "metrics.jsonl", [
        {"step": s, "train/loss": math.nan if s in nan else 2.0 - s / 100, "train/nonfinite_streak": int(s in nan),
         "train/lr": 0.1} for s in range(1, 41)])
    plot_metrics(tmp_path / "metrics.jsonl")
    (loss,) = [line for line in drawn["loss.png"].axes[0].get_lines() if line.get_label() == "loss"]
    x, every = list(loss.get_xdata()), loss.get_markevery()
    assert isinstance(every, list) and [x[i] for i in every] == [1, 40], every


def test_knn_draws_a_line_per_k_in_order_of_k(tmp_path, drawn):
    write_metrics(tmp_path / "metrics.jsonl", [
        {"step": s, "eval/knn_top1": a200, "eval/knn_top1_k200": a200, "eval/knn_top1_k20": a20}
        for s, a20, a200 in [(0, 30.0, 31.0), (10, 40.0, 42.0)]])
    plot_metrics(tmp_path / "metrics.jsonl")
    (ax,) = drawn["knn.png"].axes
    assert [line.get_label() for line in ax.get_lines()] == ["knn_top1_k20", "knn_top1_k200"]
    # (a mutation audit: ordering as strings survived; k1000 after k200, k5 before k20)
    write_metrics(tmp_path / "metrics.jsonl", [{"step": 0, **{f"eval/knn_top1_k{k}": 1.0 for k in (1000, 20, 5, 200)}}])
    plot_metrics(tmp_path / "metrics.jsonl")
    (ax,) = drawn["knn.png"].axes
    assert [line.get_label() for line in ax.get_lines()] == [f"knn_top1_k{k}" for k in (5, 20, 200, 1000)]
    write_metrics(tmp_path / "metrics.jsonl", [
        {"step": s, "eval/knn_top1": a200, "eval/knn_top1_k200": a200, "eval/knn_top1_k20": a20}
        for s, a20, a200 in [(0, 30.0, 31.0), (10, 40.0, 42.0)]])
    plot_metrics(tmp_path / "metrics.jsonl")
    (ax,) = drawn["knn.png"].axes
    assert [list(line.get_ydata()) for line in ax.get_lines()] == [[30.0, 40.0], [31.0, 42.0]]
    assert ax.get_legend() is not None  # which line is which k


def test_collapse_plot_labels_each_ratio_and_draws_where_the_warning_fires(tmp_path, drawn):
    """z_std_ratio is the std over its healthy 1/sqrt(d), but effective_rank_ratio is the rank over
    min(B, d), its largest possible value: a panel each, rightly labelled (one axis said "fraction of
    the healthy value" for both), with the collapse monitor's thresholds as dashed lines."""
    from byol.monitor import CollapseMonitor
    monitor = CollapseMonitor()
    write_metrics(tmp_path / "metrics.jsonl", [
        {"step": s, "monitor/z_std_ratio": std, "monitor/effective_rank": rank,
         "monitor/effective_rank_ratio": rank / 32}
        for s, std, rank in [(1, 0.8, 20.0), (2, 0.5, 12.0), (3, 0.3, 6.0)]])  # B = 32 < d = 256
    plot_metrics(tmp_path / "metrics.jsonl")
    std_ax, rank_ax = drawn["collapse.png"].axes
    assert "√d" in std_ax.get_ylabel() and "min(B, d)" in rank_ax.get_ylabel()
    assert all("healthy" not in ax.get_ylabel() for ax in (std_ax, rank_ax))
    for ax, threshold in ((std_ax, monitor.std_fraction), (rank_ax, monitor.min_rank / 32)):
        (warn,) = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert list(warn.get_ydata()) == [threshold, threshold], warn.get_ydata()
        low, high = ax.get_ylim()
        assert low < threshold < high and ax.get_yscale() == "log"
        assert "warning" in warn.get_label() and warn.get_label() in [t.get_text() for t in ax.get_legend().texts]
    # the std's warning, by the monitor's own rule, is where the line is
    assert monitor.is_collapsed(0.099 / math.sqrt(256), 20.0, 256) and not monitor.is_collapsed(0.101 / 16, 20.0, 256)


def test_a_std_of_exactly_zero_is_drawn_on_the_bottom_edge_of_its_log_axis(tmp_path, drawn):
    """A user test: a folder of all-black images gave a z_std_ratio of exactly 0 at every record, which a log axis
    cannot draw: collapse.png's std panel was empty, the worst collapse looking like no data."""
    write_metrics(tmp_path / "metrics.jsonl", [
        {"step": s, "monitor/z_std_ratio": std, "monitor/effective_rank": 1.0, "monitor/effective_rank_ratio": 1 / 32}
        for s, std in [(5, 0.0), (10, 0.3), (15, 0.0)]])
    plot_metrics(tmp_path / "metrics.jsonl")
    std_ax, rank_ax = drawn["collapse.png"].axes
    (zeros,) = [line for line in std_ax.get_lines() if line.get_label() == ZERO_LABEL]
    assert list(zeros.get_xdata()) == [5, 15] and zeros.get_marker() == "v"
    assert ZERO_LABEL in [t.get_text() for t in std_ax.get_legend().get_texts()]
    assert not [line for line in rank_ax.get_lines() if line.get_label() == ZERO_LABEL]


def test_the_rank_s_dashed_line_is_at_the_latest_batch_s_bound(tmp_path, drawn):
    """A mutation audit: reading min(B, d) off the first record rather than the last survived. A run resumed
    with another batch size (here 32, then 64) has its rank's threshold over the latest min(B, d), as the
    ratio it is drawn beside; a last record without a finite rank is passed over."""
    from byol.monitor import MIN_RANK
    write_metrics(tmp_path / "metrics.jsonl", [
        {"step": 1, "monitor/effective_rank": 8.0, "monitor/effective_rank_ratio": 8.0 / 32},
        {"step": 2, "monitor/effective_rank": 8.0, "monitor/effective_rank_ratio": 8.0 / 64},
        {"step": 3, "monitor/effective_rank": math.nan, "monitor/effective_rank_ratio": math.nan}])
    plot_metrics(tmp_path / "metrics.jsonl")
    (rank_ax,) = drawn["collapse.png"].axes
    (warn,) = [line for line in rank_ax.get_lines() if line.get_linestyle() == "--"]
    assert list(warn.get_ydata()) == [MIN_RANK / 64] * 2 and "= 64)" in warn.get_label()


def test_counts_stay_whole_numbers_in_metrics_jsonl(tmp_path):
    """A mutation audit: writing every value as a float survived. ``train/nonfinite_streak`` and other counts
    are ints in metrics.jsonl (3, not 3.0), the rest floats (a tensor's value too)."""
    import torch
    log = MetricsLog(tmp_path, tensorboard=False)
    log.log(5, epoch=0.5, time_s=1.25, **{"train/nonfinite_streak": 3, "train/loss": torch.tensor(2.0)})
    line = (tmp_path / "metrics.jsonl").read_text()
    record = json.loads(line)
    assert '"train/nonfinite_streak": 3,' in line and type(record["train/loss"]) is float
    assert record == {"step": 5, "epoch": 0.5, "time_s": 1.25, "train/nonfinite_streak": 3, "train/loss": 2.0}


def test_every_plot_names_its_run_and_marks_where_the_collapse_monitor_warned(tmp_path, drawn):
    """A user test: a collapsed run's loss.png (a clean fall towards 0) and knn.png looked healthy,
    and plots of several runs side by side could not be told apart."""
    run = tmp_path / "runA"
    run.mkdir()
    write_metrics(run / "metrics.jsonl", [{"step": s, "train/loss": loss, "eval/knn_top1_k200": 20.0 + s}
                                          for s, loss in [(5, 1.0), (10, 0.1), (15, 0.01)]])
    # (a mutation audit: the monitor's other warning, of no learning signal, left unmarked survived)
    (run / "warnings.txt").write_text("step 10: representation collapse: the std of ...\nstep 12: something else\n"
                                      "step 15: no learning signal: the loss is exactly 4.0 ...\n")
    plot_metrics(run / "metrics.jsonl")
    for name in ("loss.png", "knn.png"):
        (ax,) = drawn[name].axes
        assert ax.get_title().endswith("\nrun: runA"), ax.get_title()
        marks = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
        assert [list(line.get_xdata()) for line in marks] == [[10, 10], [15, 15]]
        assert "collapse warned here" in [t.get_text() for t in ax.get_legend().texts]
    (run / "warnings.txt").unlink()  # a run that never warned: no mark
    plot_metrics(run / "metrics.jsonl")
    assert not [line for line in drawn["loss.png"].axes[0].get_lines() if line.get_linestyle() == ":"]


def test_speed_has_a_panel_for_the_throughput_and_one_for_the_wait_with_where_its_note_fires(tmp_path, drawn):
    from byol.metrics import DATA_WAIT
    write_metrics(tmp_path / "metrics.jsonl", [{"step": s, "train/images_per_s": rate, "train/data_wait": wait}
                                               for s, rate, wait in [(1, 100.0, 0.5), (2, 300.0, 0.1)]])
    plot_metrics(tmp_path / "metrics.jsonl")
    rate_ax, wait_ax = drawn["speed.png"].axes
    assert [list(line.get_ydata()) for line in rate_ax.get_lines()] == [[100.0, 300.0]]
    assert rate_ax.get_ylabel() == "images / s" and "waiting for batches" in wait_ax.get_ylabel()
    wait, note = wait_ax.get_lines()
    assert list(wait.get_ydata()) == [0.5, 0.1] and list(note.get_ydata()) == [DATA_WAIT, DATA_WAIT]
    assert note.get_linestyle() == "--" and note.get_label() == "a note at 0.3 and above"


def test_a_plot_of_one_step_has_that_step_as_its_only_tick(tmp_path, drawn):
    write_metrics(tmp_path / "metrics.jsonl", [{"step": 4, "train/loss": 1.5, "train/lr": 0.1, "train/tau": 0.99}])
    plot_metrics(tmp_path / "metrics.jsonl")
    for name in ("loss.png", "schedules.png"):
        ax = drawn[name].axes[-1]
        drawn[name].canvas.draw()
        assert list(ax.get_xticks()) == [4] and [t.get_text() for t in ax.get_xticklabels()] == ["4"], name


class _BrokenModule(types.ModuleType):
    def __getattr__(self, name):  # as a tensorboard built against another protobuf fails at its import
        raise TypeError("Descriptors cannot be created directly")


@pytest.mark.parametrize("module, reason", [(None, "ModuleNotFoundError: import of torch.utils.tensorboard halted"),
                                            (_BrokenModule("tb"), "TypeError: Descriptors cannot be created")])
def test_without_tensorboard_the_log_says_so_on_stderr_as_every_note(tmp_path, monkeypatch, capsys, module, reason):
    """stdout carries the closing table alone, which scripts read; a note goes to stderr. A tensorboard
    that is installed but broken (a packaging test: a TypeError) was a traceback before the first step."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)  # None: import fails, not installed
    log = MetricsLog(tmp_path)
    log.log(1, epoch=0.5, time_s=0.1, **{"train/loss": 3.0})
    log.close()
    out, err = capsys.readouterr()
    assert out == "" and f"note: tensorboard cannot be imported ({reason}" in err, (out, err)
    assert err.rstrip().endswith("); writing metrics.jsonl only"), err
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["train/loss"] == 3.0


@pytest.mark.skipif(sys.platform == "win32", reason="names are UTF-16 there, never surrogates")
def test_a_run_folder_whose_name_is_not_utf8_logs_and_plots_without_tensorboard(tmp_path, capsys, drawn):
    """A user test under a C locale with PYTHONUTF8=0 (ASCII names): a run folder named ``rün`` reached
    Python as surrogates, and TensorBoard's UTF-8 paths were a traceback at the start, then matplotlib's
    plot title one at the end. The bytes here are Latin-1's ``ü``, surrogates in any locale."""
    run = tmp_path / "r\udcfcn"
    run.mkdir()
    log = MetricsLog(run)
    log.log(1, epoch=0.5, time_s=0.1, **{"train/loss": 3.0})
    log.close()
    assert "note: TensorBoard cannot write under" in capsys.readouterr().err
    assert json.loads((run / "metrics.jsonl").read_text())["train/loss"] == 3.0
    assert not (run / "tensorboard").exists()
    assert plot_metrics(run / "metrics.jsonl") == [run / "loss.png"]
    assert drawn["loss.png"].axes[0].get_title().endswith("\nrun: r\ufffdn")


def test_plots_leave_the_processs_matplotlib_backend_as_it_was(tmp_path):
    """A user test: drawing the plots switched a notebook's inline backend to Agg for good, and its
    own plt.show() then showed nothing. In a process of its own, as the backend is process-wide."""
    import subprocess
    import sys
    write_metrics(tmp_path / "metrics.jsonl", [{"step": 1, "train/loss": 1.0}, {"step": 2, "train/loss": 0.5}])
    code = ("import matplotlib; matplotlib.use('svg'); from byol.metrics import plot_metrics; "
            f"assert plot_metrics({str(tmp_path / 'metrics.jsonl')!r}); print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "svg" and (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")


def test_only_a_finished_run_is_a_success_in_tensorboard(tmp_path):
    """TensorBoard keeps a tag's first content only, so the HParams status is written once, by the start
    that finishes the run: a stopped (or failed) start writes none, which the one that finishes would not
    have replaced. (Every run was a success there, from its start on, a user test found.)"""
    from conftest import session_status
    first = MetricsLog(tmp_path)
    first.settings({"train": {"epochs": 1}})
    first.close(finished=False)
    assert session_status(tmp_path) == "none"
    resumed = MetricsLog(tmp_path, resume_step=3)
    resumed.close(finished=True)
    assert session_status(tmp_path) == "STATUS_SUCCESS"
    resumed.close(finished=True)  # closed once: a second close is nothing


def test_a_plot_that_cannot_be_written_keeps_none_of_the_others_from_being_written(tmp_path):
    """A user test: a folder loss.png in the run folder kept every other plot from being drawn."""
    write_metrics(tmp_path / "metrics.jsonl", [{"step": 1, "train/loss": 1.0, "train/lr": 0.1}])
    (tmp_path / "loss.png").mkdir()
    with pytest.raises(IsADirectoryError):
        plot_metrics(tmp_path / "metrics.jsonl")
    assert (tmp_path / "schedules.png").is_file()


def test_a_resume_keeps_the_checkpoint_step_s_record_in_tensorboard_as_in_metrics_jsonl(tmp_path):
    """A mutation audit: purging TensorBoard's events from the checkpoint's step on (not from the step
    after it) survived every test: the record logged at the step a run resumed from was kept in
    metrics.jsonl and dropped from TensorBoard's plots."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    first = MetricsLog(tmp_path)
    for step in (2, 4, 5, 6):  # a run that logged steps 5 and 6 after its checkpoint at step 4, then died
        first.log(step, loss=float(step))
    first.close()
    # A resume starts a second or more after its run did. TensorBoard reads the event files in the order of
    # their names: the second each writer opened in, then a count of the writers this process opened, whose
    # "10" sorts before "9" (the test failed in another order of the suite, its 10th writer the resumed one's).
    time.sleep(1)
    resumed = MetricsLog(tmp_path, resume_step=4)
    resumed.log(6, loss=60.0)
    resumed.close()
    assert [(r["step"], r["loss"]) for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())] \
        == [(2, 2.0), (4, 4.0), (6, 60.0)]
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload().Scalars("loss")
    assert [(e.step, e.value) for e in events] == [(2, 2.0), (4, 4.0), (6, 60.0)]


def test_the_step_labels_of_a_long_run_do_not_run_into_one_another(tmp_path, drawn):
    """A user test: 1,000 ImageNet epochs (312,000 steps, a record every 20) drew collapse.png's step axis
    as one string of digits, 1200001600002000002400002800003200000: past 10,000 steps count in thousands."""
    write_metrics(tmp_path / "metrics.jsonl", [
        {"step": s, "train/loss": 1.0, "train/lr": 0.1, "train/tau": 0.99, "monitor/z_std_ratio": 0.9,
         "monitor/effective_rank_ratio": 0.5, "monitor/effective_rank": 120.0} for s in range(20, 312_001, 20)])
    plot_metrics(tmp_path / "metrics.jsonl")
    for name, figure in drawn.items():
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        low, high = figure.axes[-1].get_xlim()
        labels = [t for t in figure.axes[-1].get_xticklabels() if t.get_text() and low <= t.get_position()[0] <= high]
        spans = sorted((box.x0, box.x1) for box in (t.get_window_extent(renderer) for t in labels))
        assert len(spans) >= 3 and all(a[1] < b[0] for a, b in zip(spans, spans[1:])), (name, labels)
    shown = [t.get_text() for t in drawn["loss.png"].axes[-1].get_xticklabels() if t.get_text()]
    assert "0" in shown and all(label == "0" or label.endswith("0k") for label in shown), shown


def test_the_y_labels_of_a_collapse_over_many_decades_do_not_run_into_one_another(tmp_path, drawn):
    """A user test: a collapsing run's std fell from 0.8 to 1e-6, and collapse.png's std axis labelled 1, 0.5,
    0.2, 0.1, ... 2e-06, 1e-06 one on top of the other; a healthy run's few decades keep their 0.2s and 0.5s."""
    write_metrics(tmp_path / "metrics.jsonl", [
        {"step": s, "monitor/z_std_ratio": 0.8 * 10 ** (-6 * s / 100), "monitor/effective_rank": 20.0 - s / 10,
         "monitor/effective_rank_ratio": (20.0 - s / 10) / 64} for s in range(1, 101)])
    plot_metrics(tmp_path / "metrics.jsonl")
    figure = drawn["collapse.png"]
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    for ax in figure.axes:
        low, high = ax.get_ylim()
        ticks = ax.yaxis.get_major_ticks() + ax.yaxis.get_minor_ticks()
        labels = [t.label1 for t in ticks if t.label1.get_visible() and t.label1.get_text()
                  and low <= t.get_loc() <= high]
        spans = sorted((box.y0, box.y1) for box in (t.get_window_extent(renderer) for t in labels))
        assert len(spans) >= 3 and all(a[1] < b[0] for a, b in zip(spans, spans[1:])), [t.get_text() for t in labels]
    shown = [t.get_text() for t in figure.axes[1].get_yticklabels(minor=True)]
    assert "0.5" in shown and "0.2" in shown, shown  # the rank's one decade and a half: labelled between the 10s


def test_a_log_axis_labels_its_2s_and_5s_up_to_two_and_a_half_decades_and_one_of_no_positive_value_too():
    """The rule of the test above at its edge (a mutation audit: MINOR_LABEL_DECADES at 5 or 1.1 survived): an
    axis spans half the smallest value to twice the largest, so 0.1..1 spans 1.6 decades (labelled between its
    10s) and 0.001..1 3.6 (its 10s alone); a panel of 0s only (total collapse) has the plain axis, not an error."""
    from matplotlib.ticker import NullFormatter
    for values, labelled in (([0.1, 1.0], True), ([0.001, 1.0], False), ([0.0], True), ([], True)):
        ax = matplotlib.figure.Figure().add_subplot()
        byol.metrics._log_axis(ax, values, None)
        assert isinstance(ax.yaxis.get_minor_formatter(), NullFormatter) != labelled, values


def test_step_labels_change_unit_at_ten_thousand_and_a_million_and_a_warning_line_needs_its_step():
    """A mutation audit: ``>`` for ``>=`` at either unit's edge survived (10,000 read 10000, 1,000,000 1000k);
    and a ``warnings.txt`` line without ``": "`` after its number read as that step's."""
    from byol.metrics import _step_label, warning_step
    assert [_step_label(s) for s in (9999, 10_000, 120_000, 999_000, 1_000_000, 1_200_000)] == [
        "9999", "10k", "120k", "999k", "1M", "1.2M"]
    assert warning_step("step 12: representation collapse") == 12
    assert warning_step("step 12") == -math.inf and warning_step("note: step 12: x") == -math.inf


def test_a_plot_of_what_the_records_no_longer_hold_is_removed(tmp_path):
    """A review: a start that diverged before its first checkpoint drew knn.png; a new run in the folder without
    the kNN monitor left it there, beside its own loss.png, as if of this run."""
    write_metrics(tmp_path / "metrics.jsonl", [{"step": 0, "eval/knn_top1_k200": 12.5}, {"step": 2, "train/loss": 1.0}])
    plot_metrics(tmp_path / "metrics.jsonl")
    assert (tmp_path / "knn.png").is_file()
    write_metrics(tmp_path / "metrics.jsonl", [{"step": 2, "train/loss": 0.5}])  # the new run's records
    assert [p.name for p in plot_metrics(tmp_path / "metrics.jsonl")] == ["loss.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png", "metrics.jsonl"]
    (tmp_path / "metrics.jsonl").unlink()  # no records (none yet, or the file gone): the plots are left as they are
    assert plot_metrics(tmp_path / "metrics.jsonl") == [] and (tmp_path / "loss.png").is_file()


def test_a_full_disk_under_the_logs_names_the_file_it_was_writing(tmp_path, monkeypatch):
    """metrics.jsonl's append meets a full disk at its flush, TensorBoard's writer in its thread, whose error it
    raises again: neither names a file, and a run ended with "could not write to the disk" (a helper's review)."""
    log = MetricsLog(tmp_path)
    log.log(1, **{"train/loss": 1.0})

    class Full(io.StringIO):
        def close(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(byol.metrics, "open", lambda *args: Full(), raising=False)
    with pytest.raises(OSError) as e:
        log.log(2, **{"train/loss": 1.0})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "metrics.jsonl")
    monkeypatch.delattr(byol.metrics, "open")

    def failing(*args):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(log.writer, "add_scalar", failing)
    with pytest.raises(OSError) as e:
        log.log(3, **{"train/loss": 1.0})
    assert e.value.errno == errno.EIO and e.value.filename == str(tmp_path / "tensorboard")
    log.close()


@pytest.mark.parametrize("where", ["text", "settings", "close"])
def test_a_full_disk_under_tensorboard_s_text_settings_or_close_names_its_folder(tmp_path, monkeypatch, where):
    """TensorBoard's writer raises its thread's error again at any of its calls, not only add_scalar's (a mutation
    audit: text, settings and close were untested)."""
    log = MetricsLog(tmp_path)

    def failing(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    writer = log.writer
    target, name = {"text": (writer, "add_text"), "settings": (writer.file_writer, "add_summary"),
                    "close": (writer, "close")}[where]
    monkeypatch.setattr(target, name, failing)
    with pytest.raises(OSError) as e:
        log.text(1, "t", "x") if where == "text" else log.settings({"train": {"epochs": 1}}) if where == "settings" \
            else log.close(finished=True)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "tensorboard")
    monkeypatch.undo()
    writer.close()


def test_a_torn_line_among_the_records_drops_that_line_only(tmp_path):
    """A mutation audit: reading stopped at a torn line (the records after it lost from every plot) survived."""
    from byol.metrics import read_metrics
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "tra\n'
                                            '{"step": 3, "train/loss": 1.0}\n{"step": 4, "train/lo')
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "train/loss": 2.0}, {"step": 3, "train/loss": 1.0}]


def test_several_collapse_warnings_have_one_legend_entry_and_the_region_below_a_threshold_is_shaded(tmp_path,
                                                                                                     drawn):
    """A mutation audit: a legend entry per warning's line (a long collapse: a legend of dozens of the same words),
    and the shading above the threshold rather than below it, survived."""
    from byol.metrics import STD_FRACTION
    write_metrics(tmp_path / "metrics.jsonl", [
        {"step": s, "train/loss": 1.0, "monitor/z_std_ratio": std, "monitor/effective_rank": 8.0,
         "monitor/effective_rank_ratio": 0.25} for s, std in [(1, 0.8), (2, 0.05), (3, 0.02)]])
    (tmp_path / "warnings.txt").write_text("step 2: representation collapse: ...\nstep 3: representation collapse: "
                                           "...\n")
    plot_metrics(tmp_path / "metrics.jsonl")
    (loss_ax,) = drawn["loss.png"].axes
    assert [t.get_text() for t in loss_ax.get_legend().texts].count("collapse warned here") == 1
    std_ax = drawn["collapse.png"].axes[0]
    (shade,) = [p for p in std_ax.patches if p.get_facecolor()[:3] == matplotlib.colors.to_rgb("tab:red")]
    low, high = std_ax.get_ylim()
    corners = shade.get_transform().transform(shade.get_path().vertices)
    _, ys = std_ax.transData.inverted().transform(corners).T
    assert min(ys) == pytest.approx(low) and max(ys) == pytest.approx(STD_FRACTION) and STD_FRACTION < high


def test_a_warnings_line_whose_step_is_not_an_ascii_number_marks_no_step(tmp_path, drawn):
    """A hand-edited or foreign warnings.txt (``step ²: ...``, which str.isdigit takes and int() refuses) is passed
    over, not a crash of the plots (a mutation audit: the isascii guard dropped survived)."""
    write_metrics(tmp_path / "metrics.jsonl", [{"step": s, "train/loss": 1.0 / s} for s in (1, 2)])
    (tmp_path / "warnings.txt").write_text("step \u00b2: representation collapse: ...\n"
                                           "step 2: representation collapse: ...\n")
    plot_metrics(tmp_path / "metrics.jsonl")
    (ax,) = drawn["loss.png"].axes
    assert [list(line.get_xdata()) for line in ax.get_lines() if line.get_linestyle() == ":"] == [[2, 2]]


def test_a_short_series_has_a_marker_at_every_record_and_a_long_one_a_line(tmp_path, drawn):
    """Under 30 records each is a marker, as a short run's few records are read one by one; 30 or more a bare line
    (a mutation audit: the bound at 3 survived, which left runs of 3 to 29 records without a marker)."""
    for n, marker in ((29, "o"), (30, "None")):
        write_metrics(tmp_path / "metrics.jsonl", [{"step": s, "train/loss": 1.0 / s} for s in range(1, n + 1)])
        plot_metrics(tmp_path / "metrics.jsonl")
        (line,) = [line for line in drawn["loss.png"].axes[0].get_lines() if line.get_label() == "loss"]
        assert line.get_marker() == marker, n


def test_a_log_axis_of_exactly_two_and_a_half_decades_labels_its_2s_and_5s():
    """"Up to" is inclusive: half the smallest value to twice the largest spanning 10 ** MINOR_LABEL_DECADES exactly is
    labelled between its 10s (a mutation audit: ``<`` for ``<=`` survived, the edge untested)."""
    from matplotlib.ticker import NullFormatter
    from byol.metrics import MINOR_LABEL_DECADES
    ax = matplotlib.figure.Figure().add_subplot()
    byol.metrics._log_axis(ax, [1.0, 10 ** MINOR_LABEL_DECADES / 4], None)
    low, high = ax.get_ylim()
    assert high / low == 10 ** MINOR_LABEL_DECADES
    assert not isinstance(ax.yaxis.get_minor_formatter(), NullFormatter)


def test_an_infinite_value_breaks_its_line_as_nan_does_on_a_log_axis_too(tmp_path, drawn):
    """Every value not finite is drawn as NaN, a gap: -inf as itself on a log axis, whose clipping takes it to a
    tiny value, drew a line down to the panel's bottom edge (a mutation audit: the values kept as read survived)."""
    write_metrics(tmp_path / "metrics.jsonl", [
        {"step": s, "monitor/z_std_ratio": std, "monitor/effective_rank": 8.0, "monitor/effective_rank_ratio": 0.25}
        for s, std in [(1, 0.8), (2, -math.inf), (3, 0.5), (4, math.inf)]])
    plot_metrics(tmp_path / "metrics.jsonl")
    std_ax = drawn["collapse.png"].axes[0]
    (line,) = [line for line in std_ax.get_lines() if line.get_label() == "z_std_ratio"]
    assert list(line.get_xdata()) == [1, 2, 3, 4]
    ys = list(line.get_ydata())
    assert ys[0::2] == [0.8, 0.5] and all(math.isnan(y) for y in ys[1::2]), ys
