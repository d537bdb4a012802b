"""A run's metrics: JSON lines, TensorBoard events and PNG plots, written by one process."""

import bisect
import importlib
import json
import math
import re
import sys
from pathlib import Path
from typing import Callable, NamedTuple, Optional

from .files import named_alike, naming, shown_name, temporary_beside, write_text_atomically
from .config_values import yaml_word
from .monitor import MIN_RANK, STD_FRACTION

KNN_PREFIX = "eval/knn_top1_k"  # + k: a run's kNN top-1 for each k
UNDONE_LABEL = "steps undone here (NaN or infinite loss or weights)"  # the purple marks' legend
NAN_LABEL = "NaN or infinite here"  # a value lost at a record outside those marks: a cross at the bottom
ZERO_LABEL = "0 here (below the log axis)"  # a log panel's value of 0 (a std at total collapse): at the bottom
MINOR_LABEL_DECADES = 2.5  # a log panel over more decades labels only its powers of 10 (_log_axis)
DATA_WAIT = 0.3  # the share of training time spent waiting for batches that a run's note points out


class Panel(NamedTuple):
    """One panel of a plot: its metric keys (``"x*"``: the keys starting with x), y-axis label,
    scale, and where a warning fires: ``warn(records)`` gives ``(value, label)`` of a dashed line, or None."""
    keys: list[str]
    ylabel: str
    log: bool = False
    warn: Optional[Callable[[list[dict]], Optional[tuple[float, str]]]] = None


def _std_warning(records: list[dict]) -> tuple[float, str]:
    return STD_FRACTION, f"collapse warning below {STD_FRACTION:g}"


def _rank_warning(records: list[dict]) -> Optional[tuple[float, str]]:
    """The rank's threshold as a ratio: ``MIN_RANK / min(B, d)``, ``min(B, d)`` read off the records
    (effective_rank / effective_rank_ratio), which do not log it."""
    for r in reversed(records):
        rank, ratio = r.get("monitor/effective_rank"), r.get("monitor/effective_rank_ratio")
        if rank is not None and ratio and math.isfinite(rank) and math.isfinite(ratio):
            most = round(rank / ratio)
            return MIN_RANK / most, f"collapse warning below rank {MIN_RANK:g} (of at most min(B, d) = {most})"
    return None


def _wait_note(records: list[dict]) -> tuple[float, str]:
    return DATA_WAIT, f"a note at {DATA_WAIT:g} and above"


PLOTS = {  # file name -> (title, panels one above the other)
    "loss.png": ("BYOL loss", [Panel(["train/loss"], "loss")]),
    # Two panels: the learning rate (~0.01) on tau's axis (~0.99) would be a flat line at 0.
    "schedules.png": ("learning rate and EMA tau", [Panel(["train/lr"], "learning rate"),
                                                    Panel(["train/tau"], "EMA tau")]),
    "knn.png": ("kNN top-1 on the held-out split", [Panel([KNN_PREFIX + "*"], "accuracy (%)")]),  # a line per k
    "speed.png": ("training speed (kNN, checkpoints and plots left out)", [
        Panel(["train/images_per_s"], "images / s"),
        Panel(["train/data_wait"], "share of the time spent\nwaiting for batches", warn=_wait_note)]),
    # A panel each, on log axes: the two thresholds are an order of magnitude and more apart, and a
    # collapsing run falls by orders of magnitude.
    "collapse.png": ("collapse monitor (dashed: where its warning fires)", [
        Panel(["monitor/z_std_ratio"], "std of normalized z × √d\n(1: spread over the sphere)", True, _std_warning),
        Panel(["monitor/effective_rank_ratio"], "effective rank / min(B, d)\n(1: the largest possible)", True,
              _rank_warning)]),
}

# What TensorBoard's HParams tab shows beside each run's settings: their last values.
SETTINGS_METRICS = ("eval/knn_top1", "train/loss")


def _hparam(value) -> object:
    """A setting as TensorBoard's HParams tab takes it: a number, or a word as YAML writes it (``true``,
    ``null``, ``[20, 200]``; a bool would be a number there)."""
    return value if isinstance(value, (int, float, str)) and not isinstance(value, bool) else yaml_word(value)


class MetricsLog:
    """Appends ``{"step": s, "epoch": e, "time_s": t, key: value, ...}`` records to ``metrics.jsonl``
    and the values (not ``epoch`` and ``time_s``) to TensorBoard (docs/metrics.md lists them).

    Only rank 0 should create one. TensorBoard is skipped with a note if it is not installed.

    A run resumed from its checkpoint at step ``resume_step`` may have logged steps after it before
    it died (a kill, a crash, a lost node): they are trained and logged again, so the records after
    ``resume_step`` (and a torn last line) are dropped from ``metrics.jsonl``, and TensorBoard is told
    to purge its events after that step. A new run (``resume_step=None``) starts both afresh.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, resume_step: Optional[int] = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        if self.path.is_file():
            kept = [r for r in read_metrics(self.path) if resume_step is not None and r["step"] <= resume_step]
            write_text_atomically(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.writer = None
        self.events = self.run_dir / "tensorboard"
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception as e:  # noqa: BLE001 - not installed, or broken (a protobuf of another version)
                print(f"note: tensorboard cannot be imported ({type(e).__name__}: {str(e):.200}); writing "
                      "metrics.jsonl only", file=sys.stderr)
            else:
                purge = 0 if resume_step is None else resume_step + 1
                if named_alike(self.events):
                    self.writer = SummaryWriter(str(self.events), purge_step=purge)
                else:
                    print(f"note: TensorBoard cannot write under {shown_name(self.run_dir)}, whose name it cannot "
                          "encode (under a C locale, PYTHONUTF8=1 lets it); writing metrics.jsonl only",
                          file=sys.stderr)

    def log(self, step: int, epoch: Optional[float] = None, time_s: Optional[float] = None, **values: float) -> None:
        """One record: ``epoch`` and ``time_s`` go to ``metrics.jsonl`` only (TensorBoard's events have
        the step and their own wall time); counts (ints) stay ints, other values are floats."""
        place = {"epoch": epoch, "time_s": time_s}
        record = {"step": step, **{k: v for k, v in place.items() if v is not None},
                  **{k: v if isinstance(v, int) else float(v) for k, v in values.items()}}
        with naming(self.path), open(self.path, "a") as f:  # (a full disk's error names no file)
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            with naming(self.events):  # (its writer thread's error, raised again here)
                for key, value in values.items():
                    self.writer.add_scalar(key, value, step)

    def text(self, step: int, tag: str, text: str) -> None:
        """``text`` in TensorBoard's Text tab under ``tag`` at ``step`` (``metrics.jsonl`` has numbers only)."""
        if self.writer is not None:
            with naming(self.events):
                self.writer.add_text(tag, text, step)

    def settings(self, config: dict) -> None:
        """The run's settings (``{section: {key: value}}``) in TensorBoard's HParams tab, as
        ``section.key``, beside the run's kNN and loss: runs side by side, each with what it ran with."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams
        flat = {f"{section}.{key}": _hparam(value)
                for section, values in config.items() for key, value in values.items()}
        # The experiment and the session's start; its end (torch's third, which says success) at close()
        # (a user test: every run, killed, diverged or running, showed as a success in the HParams tab).
        with naming(self.events):
            for summary in hparams(flat, dict.fromkeys(SETTINGS_METRICS, 0.0))[:2]:  # the metrics' values unused
                self.writer.file_writer.add_summary(summary)

    def close(self, finished: bool = False) -> None:
        """Close the event file; ``finished``: the run trained to its end, a success in TensorBoard's HParams
        tab. Nothing else is said there (its status then unknown): TensorBoard keeps a tag's first content
        only, so a stopped or failed start's end would stand for the run after a resume that finished it."""
        if self.writer is not None:
            writer, self.writer = self.writer, None  # closed once: a failure after a close closes it again
            with naming(self.events):
                if finished:
                    writer.file_writer.add_summary(_session_end())
                writer.close()


def _session_end():
    """TensorBoard's HParams summary of a session's successful end, as torch's ``hparams`` writes one."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    content = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value("STATUS_SUCCESS")),
        version=metadata.PLUGIN_DATA_VERSION)
    data = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString())
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=SummaryMetadata(plugin_data=data))])


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (a torn last line from a crash is ignored; none
    before the run's first record, when the file is not there yet)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _natural(key: str) -> tuple:
    """Sort key that orders embedded numbers by value: knn_top1_k20 before knn_top1_k200 before k1000."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key))


class PlotsUnavailable(Exception):
    """matplotlib cannot be imported (a dependency, but an install can break): no plots are drawn."""


def plot_metrics(metrics_path: Path) -> list[Path]:
    """Draw the PNG plots of :data:`PLOTS` for which the run has data (those it has none for, left by an earlier
    start of a new run in the folder, are removed where it has records); return their paths. Drawn on
    figures of their own, not through pyplot: the process's backend (a notebook's) is left as it is.
    One that cannot be written (a folder in its place, a full disk) keeps none of the others from
    being written; the first such error is raised after them. :class:`PlotsUnavailable` where
    matplotlib cannot be imported."""
    try:
        for module in ("matplotlib.backends.backend_agg", "matplotlib.figure", "matplotlib.ticker"):  # the plots'
            importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - a broken package fails to import in its own ways
        raise PlotsUnavailable(f"matplotlib cannot be imported ({type(e).__name__}: {str(e):.200})") from None
    records = read_metrics(metrics_path)
    run = Path(metrics_path).parent
    collapsed = _collapse_steps(run / "warnings.txt")
    diverged = _nonfinite_spans(records)
    written, failed = [], []
    logged = sorted({k for r in records for k in r}, key=_natural)
    for name, (title, panels) in PLOTS.items():
        drawn = []
        for panel in panels:
            keys = [k for key in panel.keys for k in logged if k == key or key.endswith("*") and k.startswith(key[:-1])]
            # NaN where a value is not finite: the line breaks there rather than joining its neighbours
            series = {k: [(r["step"], r[k] if math.isfinite(r[k]) else math.nan) for r in records if k in r]
                      for k in keys}
            series = {k: points if any(math.isfinite(y) for _, y in points) else [] for k, points in series.items()}
            lost = sorted({r["step"] for r in records for k in keys if k in r and not math.isfinite(r[k])
                           and not _inside(r["step"], diverged)})
            if any(series.values()) or keys and diverged and name != "knn.png":  # also a panel of NaN alone
                drawn.append((panel, series, lost))
        if not drawn and records:  # an earlier start's (a new run's folder): not of these records (a review)
            try:
                if (run / name).is_file() or (run / name).is_symlink():  # (a folder there is not a plot)
                    (run / name).unlink()
            except OSError as e:
                failed.append(e)
        elif drawn:  # named by the run's folder: plots of several runs side by side are told apart
            figure = _figure(f"{title}\nrun: {shown_name(run.resolve().name)}", drawn, records, collapsed, diverged)
            try:
                with temporary_beside(run / name) as tmp:  # a full disk leaves the last plot, not an empty file
                    figure.savefig(tmp, format="png")
            except OSError as e:
                failed.append(e)
                continue
            written.append(run / name)
    if failed:
        raise failed[0]
    return written


def _nonfinite_spans(records: list[dict]) -> list[tuple[int, int]]:
    """The (first, last) steps of each run of consecutive records with steps undone: whose loss was NaN or
    infinite (a user test: a diverged run's loss.png showed one healthy point), or whose
    ``train/nonfinite_streak`` says some of its steps were (a user test: a record with one of its two steps
    undone, its loss the kept step's, drew as a healthy point); a run of them is one span, not a mark a record."""
    spans: list[list[int]] = []
    previous_bad = False
    for r in records:
        if "train/loss" not in r:
            continue
        bad = not math.isfinite(r["train/loss"]) or r.get("train/nonfinite_streak", 0) > 0
        if bad and previous_bad:
            spans[-1][1] = r["step"]
        elif bad:
            spans.append([r["step"], r["step"]])
        previous_bad = bad
    return [(first, last) for first, last in spans]


def _inside(step: int, spans: list[tuple[int, int]]) -> bool:
    """Whether ``step`` lies in one of ``spans`` (sorted, apart): a bisection, not a scan (a long run has many)."""
    i = bisect.bisect_right(spans, (step, math.inf)) - 1
    return i >= 0 and spans[i][0] <= step <= spans[i][1]


def warning_step(line: str) -> float:
    """The step of a ``warnings.txt`` line (``step N: ...``); -inf for a line without one (kept on every resume)."""
    head, sep, _ = line.partition(": ")
    number = head.removeprefix("step ")
    return int(number) if sep and head.startswith("step ") and number.isascii() and number.isdigit() else -math.inf


def _collapse_steps(warnings_path: Path) -> list[int]:
    """The steps at which the run's ``warnings.txt`` says the collapse monitor warned (of collapse or no signal)."""
    try:
        lines = Path(warnings_path).read_text(errors="replace").splitlines()
    except OSError:  # none: it never warned
        return []
    names = ("representation collapse", "no learning signal")
    steps = {warning_step(line) for line in lines if line.partition(": ")[2].startswith(names)}
    return sorted(int(step) for step in steps if math.isfinite(step))


def _figure(title: str, drawn: list[tuple[Panel, dict, list[int]]], records: list[dict], collapsed: list[int],
            diverged: list[tuple[int, int]]):
    """The panels one above the other on one step axis; each panel's series, its warning line, a line
    at each step where the collapse monitor warned (where the loss and kNN mean little: a user test
    found a collapsed run's loss.png and knn.png looking healthy), and a mark where steps were undone, their
    loss or weights NaN or infinite (a line at one record, a band over several in a row), and a cross on a
    panel's bottom edge where one of its values alone was (a diverging run's kNN before its loss)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator
    fig = Figure(figsize=(6, 1.5 + 2 * len(drawn)), dpi=110)
    FigureCanvasAgg(fig)  # drawn by Agg whatever pyplot's backend
    axes = fig.subplots(len(drawn), 1, sharex=True, squeeze=False)
    steps = set()
    for ax, (panel, series, lost) in zip(axes[:, 0], drawn):
        values = []
        for key, points in series.items():
            if points:
                x, y = zip(*points)
                steps.update(x)
                values += [v for v in y if math.isfinite(v)]
                line, = ax.plot(x, y, label=key.split("/")[-1], **_markers(points))
                zeros = [step for step, v in points if v <= 0] if panel.log else []
                if zeros:  # a log axis has no 0: a collapse's std of exactly 0 drew nothing (a user test: all black
                    # images left collapse.png's std panel empty), so a triangle on the bottom edge, as NaN's cross
                    ax.plot(zeros, [0] * len(zeros), linestyle="", marker="v", color=line.get_color(), clip_on=False,
                            transform=ax.get_xaxis_transform(), label=ZERO_LABEL)
        lost = lost if values else []  # a panel of NaN alone is empty (and would have no log scale)
        if lost:  # a value NaN or infinite outside the purple marks (a diverging run's kNN, the rank): a cross
            # on the panel's bottom edge, not a gap that reads as a record never written (a user test)
            ax.plot(lost, [0] * len(lost), linestyle="", marker="x", color="tab:gray", clip_on=False,
                    transform=ax.get_xaxis_transform(), label=NAN_LABEL)
            steps.update(lost)
        warn = panel.warn(records) if panel.warn else None
        if warn is not None:
            ax.axhline(warn[0], color="tab:red", linestyle="--", linewidth=1, label=warn[1])
            values.append(warn[0])
        for i, step in enumerate(collapsed):
            ax.axvline(step, color="tab:red", linestyle=":", linewidth=1.5,
                       label="collapse warned here" if i == 0 else None)
        for i, (first, last) in enumerate(diverged):
            label = UNDONE_LABEL if i == 0 else None
            if first == last:
                ax.axvline(first, color="tab:purple", linestyle="--", linewidth=1.5, label=label)
            else:
                ax.axvspan(first, last, facecolor="tab:purple", alpha=0.2, edgecolor="tab:purple", linestyle="--",
                           label=label)
            steps.update((first, last))
        if panel.log:
            _log_axis(ax, values, warn)
        ax.set(ylabel=panel.ylabel)
        ax.grid(alpha=0.3)
        if len(series) > 1 or warn is not None or collapsed or diverged or lost:
            ax.legend(fontsize="small")
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel("step")
    if len(steps) == 1:  # one step: that step as the only tick, not 3.8 ... 4.2 around it
        axes[-1, 0].set_xticks(list(steps))
    else:
        axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))  # a short run: no step 2.5
    axes[-1, 0].xaxis.set_major_formatter(FuncFormatter(_step_label))
    fig.tight_layout()
    return fig


def _markers(points: list[tuple[int, float]]) -> dict:
    """A marker at every point of a short series; of a long one, at each finite value between two that are not
    (or an end), which a line alone does not draw: a user test's run, every other record's steps undone, showed
    its loss stopping where the undone records began, its 19 finite records after them not drawn."""
    if len(points) < 30:
        return {"marker": "o"}
    finite = [math.isfinite(y) for _, y in points]
    alone = [i for i, ok in enumerate(finite)
             if ok and (i == 0 or not finite[i - 1]) and (i == len(finite) - 1 or not finite[i + 1])]
    return {"marker": "o", "markersize": 3, "markevery": alone} if alone else {}


def _step_label(step: float, _position=None) -> str:
    """A step as a tick label, in thousands (120k) or millions (1.2M) from 10,000 on: a user test's 1,000
    ImageNet epochs (312,000 steps) ran the six-digit labels into one another on collapse.png."""
    if abs(step) >= 1e6:
        return f"{step / 1e6:g}M"
    return f"{step / 1e3:g}k" if abs(step) >= 1e4 else f"{step:g}"


def _log_axis(ax, values: list[float], warn: Optional[tuple[float, str]]) -> None:
    """A log y axis from half the smallest value (or threshold) to twice the largest, in plain
    numbers (0.2, 0.5, 1; the 2s and 5s only over a few decades), the region below the threshold shaded."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    ax.set_yscale("log", nonpositive="clip")  # values of 0: _figure's triangles on the bottom edge
    positive = [v for v in values if v > 0]
    low = high = 1.0
    if positive:
        low, high = min(positive) / 2, max(positive) * 2
        ax.set_ylim(low, high)
        if warn is not None:
            ax.axhspan(low, warn[0], color="tab:red", alpha=0.07, linewidth=0)
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_locator(LogLocator(subs=(2, 5)))
    # Three labels a decade fit a panel over a few decades only: a user test's collapsing run, its std
    # falling to 1e-6, drew collapse.png's std axis as one unreadable stack of labels.
    few = high / low <= 10 ** MINOR_LABEL_DECADES
    ax.yaxis.set_minor_formatter(plain if few else NullFormatter())
