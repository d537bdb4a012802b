"""A pretraining run's checkpoints: when to write them, under which names, and the plots with them."""

import os
import re
import time
from pathlib import Path
from typing import Optional

import torch

from . import distributed as dist
from .checkpoint import copy_atomically, save_checkpoint, saved_step
from .config import Config
from .dropin import BYOL
from .faults import NonFiniteGuard
from .files import write_failure
from .metrics import PlotsUnavailable, plot_metrics
from .run_folder import say
from .train_data import TrainData


class Checkpoints:
    """``checkpoints/last.pt`` at every epoch's end, or at most once per ``save_interval_s``, and at
    the end; ``epoch_N.pt`` kept when asked; the plots and the skipped files with each write. Never
    over a good checkpoint with weights giving NaN losses."""

    def __init__(self, byol: BYOL, optimizer: torch.optim.Optimizer, generator: torch.Generator, config: Config,
                 guard: NonFiniteGuard, data: TrainData, run_dir: Path, rank: int, world: int, device: torch.device,
                 precision: str, sums: Optional[torch.Tensor] = None):
        self.byol, self.optimizer, self.generator, self.config = byol, optimizer, generator, config
        self.guard, self.folder, self.run_dir = guard, data.folder, run_dir
        self.rank, self.world, self.device = rank, world, device
        self.extra: dict = {"steps_per_epoch": len(data.batches), "images": data.size, "device": str(device),
                            "precision": precision,  # what auto resolved to (config.yaml keeps auto)
                            "threads": torch.get_num_threads(),  # a CPU's sums are bitwise only with as many
                            "files_digest": data.names_digest}
        self.sums = sums  # the metrics' sums since the last record (LoopStep.sums), saved for a resume's
        self.monitor = None  # the collapse monitor (reporting.Report's), whose state a resume goes on from
        self.last_save = time.perf_counter()
        self.written_step: Optional[int] = None  # the step of the last checkpoint written
        self.last_pt_step: Optional[int] = None  # of last.pt, set once written (before the plots)
        self.plots_failed = False  # said once

    def _write(self, name: str, step: int, progress) -> None:
        path = self.run_dir / "checkpoints" / name
        if name != "last.pt" and path.is_file():  # a kept epoch of an earlier start, counted in other epochs
            earlier = saved_step(path)  # (a resume whose data gives another number of steps an epoch)
            if earlier is not None and earlier != step:
                kept = path.with_name(f"{path.stem}_step{earlier}.pt")
                os.replace(path, kept)
                say(f"note: {path} was of step {earlier}, an earlier start's epoch of another length; it is kept as "
                    f"{kept.name}, and {path.name} is this start's epoch (step {step})", progress)
        save_checkpoint(path, self.byol, self.optimizer, step, self.config.to_dict(), self.generator,
                        extra=self.extra)

    def _due(self, keep_epoch: Optional[int], final: bool) -> bool:
        interval = self.config.train.save_interval_s
        return keep_epoch is not None or final or time.perf_counter() - self.last_save >= interval

    def may_write(self, keep_epoch: Optional[int], final: bool) -> bool:
        """Whether :meth:`save` may write (under torchrun another rank's clock may say so: always)."""
        return self.world > 1 or self._due(keep_epoch, final)

    def save(self, step: int, keep_epoch: Optional[int], final: bool, time_s: float, progress=None) -> None:
        """At an epoch's end or the run's (``final``, also a stop): write if due; ``keep_epoch``: keep
        this epoch's checkpoint too; ``time_s``: the run's time so far, saved for a resumed run's;
        ``progress``: the run's bar, which its notes are written beside."""
        self.extra["time_s"] = time_s
        due = self._due(keep_epoch, final)  # this rank's; under torchrun, any rank's below
        folder = self.folder
        if self.world > 1:  # collectives: every rank reaches this point at the same step
            due = dist.any_rank(due, self.device)  # the clocks differ; one rank due is enough
            if due:
                self.extra["generator_per_rank"] = dist.gather_generator_states(self.generator)
                if folder is not None:  # each rank met the bad files of its own share
                    folder.bad_files = dist.merge_dicts(folder.bad_files)
        # The streak is the same on every rank; the interval then runs from the last write, not from this step.
        if not due or int(self.guard.streak.item()) != 0:
            return
        if self.rank == 0:
            if self.sums is not None:  # so that the record after a stop averages all of its steps
                self.extra["metric_sums"] = self.sums.tolist()
            # the longest non-finite streak since the last record, which that record reports and stops the run on
            # (its streak is 0 here: a resume without it went on where the uninterrupted run stopped)
            self.extra["nonfinite_max_streak"] = int(self.guard.max_streak.item())
            if self.monitor is not None:
                self.extra["collapse_monitor"] = self.monitor.state()
            if folder is not None:  # so far (every rank's), kept if the run dies; before last.pt, whose resume
                folder.write_skipped(self.run_dir / "skipped_files.txt")  # counts on it (TrainData.start_at)
                self.extra["skipped_inside"] = folder.skipped_inside()
            self._write("last.pt", step, progress)
            self.last_pt_step = step
            if keep_epoch is not None:  # (a run that dies before it: see write_missing_epoch)
                self._write(f"epoch_{keep_epoch:04d}.pt", step, progress)
                self._drop_older_epochs(keep_epoch)
            self._plot(progress)
        self.written_step = step
        self.last_save = time.perf_counter()

    def _drop_older_epochs(self, epoch: int) -> None:
        """With ``train.keep_checkpoints=N``: the kept epochs before ``epoch`` (``epoch_NNNN.pt``, this
        run's names only) but the newest N - 1, removed: N stay, ``epoch``'s included."""
        keep = self.config.train.keep_checkpoints
        if keep <= 0:
            return
        earlier = sorted(int(m[1]) for path in (self.run_dir / "checkpoints").iterdir()
                         if (m := re.fullmatch(r"epoch_(\d{4,})\.pt", path.name)) and int(m[1]) < epoch)
        for old in earlier[:max(len(earlier) - (keep - 1), 0)]:
            (self.run_dir / "checkpoints" / f"epoch_{old:04d}.pt").unlink(missing_ok=True)

    def write_missing_epoch(self, step: int) -> None:
        """On a resume from last.pt at a kept epoch's end: that epoch's ``epoch_N.pt``, a copy of
        last.pt, where the run died after writing last.pt and before it (Ctrl-C twice, a kill, a
        full disk)."""
        every, steps_per_epoch = self.config.train.checkpoint_every, self.extra["steps_per_epoch"]
        epoch, rest = divmod(step, steps_per_epoch)
        if self.rank != 0 or rest or every <= 0 or epoch == 0 or epoch % every:
            return
        folder = self.run_dir / "checkpoints"
        if not (folder / f"epoch_{epoch:04d}.pt").exists():
            copy_atomically(folder / "last.pt", folder / f"epoch_{epoch:04d}.pt")

    def replot(self, progress=None) -> None:
        """The plots drawn again (rank 0), with what was logged since the last :meth:`save`."""
        if self.rank == 0:
            self._plot(progress)

    def plot_quietly(self) -> None:
        """The plots of what a failed run logged, where they can be drawn (the run's error is what is said)."""
        if self.rank == 0:
            try:
                plot_metrics(self.run_dir / "metrics.jsonl")
            except Exception:  # noqa: BLE001 - not over the error that ended the run
                pass

    def _plot(self, progress) -> None:
        """The plots, drawn again from metrics.jsonl; where they cannot be written (a full disk), a note
        once, and the run goes on: they are drawn from the records, which are all kept."""
        try:
            plot_metrics(self.run_dir / "metrics.jsonl")
        except OSError as e:
            if not self.plots_failed:
                self.plots_failed = True
                say(f"note: the plots in {self.run_dir} could not be written ({write_failure(e)}); training goes "
                    "on, and they are drawn again at each checkpoint", progress)
        except PlotsUnavailable as e:
            if not self.plots_failed:
                self.plots_failed = True
                say(f"note: {e}; no plots are drawn, and training goes on (the records are in metrics.jsonl)",
                    progress)
