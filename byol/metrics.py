"""A run's metrics: JSON lines, TensorBoard events and PNG plots, written by one process."""

import json
import math
import re
from pathlib import Path
from typing import Optional

from .checkpoint import write_text_atomically

KNN_PREFIX = "eval/knn_top1_k"  # + k: a run's kNN top-1 for each k

PLOTS = {  # file name -> (title, panels: (metric keys, y-axis label), one above the other); "x*": keys x...
    "loss.png": ("BYOL loss", [(["train/loss"], "loss")]),
    # Two panels: the learning rate (~0.01) on tau's axis (~0.99) would be a flat line at 0.
    "schedules.png": ("learning rate and EMA tau", [(["train/lr"], "learning rate"), (["train/tau"], "EMA tau")]),
    "knn.png": ("kNN top-1 on the held-out split", [([KNN_PREFIX + "*"], "accuracy (%)")]),  # a line per k
    "collapse.png": ("collapse monitor", [(["monitor/z_std_ratio", "monitor/effective_rank_ratio"],
                                           "fraction of the healthy value")]),
}


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
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                purge = 0 if resume_step is None else resume_step + 1
                self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge)
            except ImportError:
                print("note: tensorboard is not installed; writing metrics.jsonl only")

    def log(self, step: int, epoch: Optional[float] = None, time_s: Optional[float] = None, **values: float) -> None:
        """One record: ``epoch`` and ``time_s`` go to ``metrics.jsonl`` only (TensorBoard's events have
        the step and their own wall time); counts (ints) stay ints, other values are floats."""
        place = {"epoch": epoch, "time_s": time_s}
        record = {"step": step, **{k: v for k, v in place.items() if v is not None},
                  **{k: v if isinstance(v, int) else float(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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


def plot_metrics(metrics_path: Path, out_dir: Optional[Path] = None) -> list[Path]:
    """Draw the PNG plots of :data:`PLOTS` for which the run has data; return their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    records = read_metrics(metrics_path)
    out_dir = Path(out_dir or Path(metrics_path).parent)
    written = []
    logged = sorted({k for r in records for k in r}, key=_natural)
    for name, (title, panels) in PLOTS.items():
        panels = [([k for key in keys for k in logged if k == key or key.endswith("*") and k.startswith(key[:-1])],
                   ylabel) for keys, ylabel in panels]
        panels = [({k: [(r["step"], r[k]) for r in records if k in r and math.isfinite(r[k])] for k in keys}, ylabel)
                  for keys, ylabel in panels]
        panels = [(series, ylabel) for series, ylabel in panels if any(series.values())]
        if not panels:
            continue
        fig, axes = plt.subplots(len(panels), 1, sharex=True, squeeze=False,
                                 figsize=(6, 1.5 + 2 * len(panels)), dpi=110)
        for ax, (series, ylabel) in zip(axes[:, 0], panels):
            for key, points in series.items():
                if points:
                    steps, values = zip(*points)
                    ax.plot(steps, values, marker="o" if len(points) < 30 else None, label=key.split("/")[-1])
            ax.set(ylabel=ylabel)
            ax.grid(alpha=0.3)
            if len(series) > 1:
                ax.legend()
        axes[0, 0].set_title(title)
        axes[-1, 0].set_xlabel("step")
        axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))  # a short run: no step 2.5
        fig.tight_layout()
        fig.savefig(out_dir / name)
        plt.close(fig)
        written.append(out_dir / name)
    return written
