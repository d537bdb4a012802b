"""What a pretraining run says while it trains: the throughput and the run's clock, the metrics
records, the progress bar, the collapse monitor's warnings and the stop on non-finite losses, and
its notes at the start (a GPU preset on the CPU, a warm-up as long as the run, a finished run)."""

import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import torch

from .build import end_step_of, schedule_of
from .config import VIEW_PROBABILITIES, Config, OptimConfig, TrainConfig
from .config_rules import GIVEN_BACKBONE
from .config_values import yaml_word
from .errors import ByolError
from .progress import duration
from .datasets import NATIVE_SIZE
from .folder_splits import held_out_folder
from .decoding_processes import usable_cores
from .metrics import DATA_WAIT, KNN_PREFIX, MetricsLog
from .monitor import CollapseMonitor
from .run_folder import RunFolder, say
from .step import LoopStep


class NonFiniteLossError(ByolError, FloatingPointError):
    """The loss stayed NaN or infinite for too many steps in a row (a setting's fault, most often the
    learning rate's: a :class:`~byol.errors.ByolError`, as a sweep over settings catches it)."""


def nonfinite_error(streak: int, step: int, what: str, ckpt_path: Path, amp: bool) -> NonFiniteLossError:
    """The sentence for ``streak`` non-finite steps by ``step``: ``what`` it did to the run, and what to do."""
    remedy = "lower optim.lr or use train.precision=fp32" if amp else "lower optim.lr"  # fp32 only if it was not
    if ckpt_path.is_file():
        then = f"the last good checkpoint is {ckpt_path}; {remedy}, then continue with --resume"
    else:
        then = f"no checkpoint was written; {remedy} and start again"
    return NonFiniteLossError(f"the loss (or the weights a step left) was NaN or infinite for {streak} steps in a row "
                              f"(by step {step}), {what}; "
                              f"{then}")


class Clock:
    """The run's wall-clock time (:meth:`time_s`), and the training time between reports, for the
    throughput logged: what runs between steps :meth:`paused` (the kNN monitor's evaluations,
    checkpoint writes, plots) is left out of that, and out of the progress bar's rate and elapsed time.
    The part of it the loop waited for its batches (:meth:`next_batch`) is counted too."""

    def __init__(self, device: torch.device, progress, resumed_s: float = 0.0):
        self.device, self.progress, self.resumed_s = device, progress, resumed_s
        self.start = self.last = time.perf_counter()
        self.paused_s = 0.0  # of this start's
        self.waited_s = 0.0  # since the last lap

    def time_s(self) -> float:
        """Seconds since this start's first step, plus those the checkpoint it resumed from had run:
        the setup of each start (data, model, the kNN at initialization) and the steps trained again
        after a kill are not counted."""
        return round(self.resumed_s + time.perf_counter() - self.start, 3)

    def run_s(self) -> float:
        """Seconds since this start's first step, what ran :meth:`paused` included (its time so far)."""
        return time.perf_counter() - self.start

    def training_s(self) -> float:
        """Seconds of training since this start's first step: without what ran :meth:`paused`."""
        return time.perf_counter() - self.start - self.paused_s

    def next_batch(self, batches: Iterator[torch.Tensor]) -> torch.Tensor:
        """``next(batches)``, the time it took counted as waiting for data (:meth:`lap`)."""
        start = time.perf_counter()
        try:
            return next(batches)
        finally:
            self.waited_s += time.perf_counter() - start

    def lap(self) -> tuple[float, float]:
        """The training seconds since the last lap (the first: since the clock was made), and the
        seconds of them the loop waited for its batches."""
        now = time.perf_counter()
        seconds, waited, self.last, self.waited_s = now - self.last, self.waited_s, now, 0.0
        return seconds, waited

    @contextmanager
    def paused(self) -> Iterator[None]:
        if self.device.type == "cuda":  # the steps still queued on the GPU finish on the training clock
            torch.cuda.synchronize(self.device)  # (once an epoch, where this is used: no per-step sync)
        start = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - start
            self.last += spent
            self.paused_s += spent
            if self.progress is not None:  # as tqdm's unpause(), which would also drop the steps since its last print
                self.progress.start_t += spent
                self.progress.last_print_t += spent


class Report:
    """Every ``log_every`` steps: the loop step's metrics read (the host sync), the throughput, the
    metrics log, the collapse monitor's warnings, the non-finite streak's limit and the progress bar."""

    def __init__(self, loop_step: LoopStep, log: Optional[MetricsLog], folder: Optional[RunFolder], progress,
                 clock: Clock, batch_size: int, max_nonfinite: int, ckpt_path: Path, step: int, steps_per_epoch: int,
                 epochs: int):
        self.loop_step, self.log, self.folder, self.progress, self.clock = loop_step, log, folder, progress, clock
        self.batch_size, self.max_nonfinite, self.ckpt_path = batch_size, max_nonfinite, ckpt_path
        self.monitor = CollapseMonitor()
        self.last_step, self.steps_per_epoch, self.epochs = step, steps_per_epoch, epochs
        self.laps, self.said_data_wait = 0, False
        self.trained_s = self.waited_s = 0.0  # this start's, after its first lap (the loaders' start-up)
        self.line_at = time.perf_counter()  # when a run without a bar last printed where it stands

    def when(self, step: int) -> dict:
        """A record's place in the run: ``epoch`` (1.0 at the end of the first) and ``time_s`` (now)."""
        return {"epoch": step / self.steps_per_epoch, "time_s": self.clock.time_s()}

    def __call__(self, step: int, z1: torch.Tensor, last: bool = False) -> float:
        """Report at ``step`` (``z1``: the last batch's online projections; ``last``: the run's last
        step); returns the mean loss."""
        record = self.loop_step.read(z1)
        # Training throughput: the interval leaves out the kNN evaluations, checkpoints and plots in it.
        seconds, waited = self.clock.lap()
        record["train/images_per_s"] = (step - self.last_step) * self.batch_size / seconds
        record["train/data_wait"] = waited / seconds
        if self.laps:
            self.trained_s, self.waited_s = self.trained_s + seconds, self.waited_s + waited
        self.last_step, self.laps = step, self.laps + 1
        if self.log is not None:
            self.log.log(step, **self.when(step), **record)
        warning = self.monitor.check(record["monitor/z_std"], record["monitor/effective_rank"], z1.shape[1], step,
                                     record["train/loss"])
        if warning and self.folder is not None:
            self.folder.warn(warning, step, self.progress)
        if warning and self.log is not None:  # beside the curves it is about (a user test)
            self.log.text(step, "warnings", warning)
        if record["train/nonfinite_streak"] >= self.max_nonfinite:
            what = "up to the run's end, which was not saved" if last else "so the run stopped"
            raise nonfinite_error(record["train/nonfinite_streak"], step, what, self.ckpt_path,
                             self.loop_step.amp is not None)
        if self.progress is not None:
            epoch = (step - 1) // self.steps_per_epoch + 1  # the one this step was in, counted from 1 as epoch_0001.pt
            self.progress.set_postfix(loss=f"{record['train/loss']:.4f}", epoch=f"{epoch}/{self.epochs}")
        return record["train/loss"]

    def line_due(self, epoch_end: bool = False) -> bool:
        """Whether a run without a bar (a log file) says where it stands now: at an epoch's end, and within
        an epoch once :data:`LINE_EVERY_S` have passed since its last line (a user test: an ImageNet epoch,
        an hour on one GPU and days on a CPU, left the log silent that long)."""
        now = time.perf_counter()
        if epoch_end or now - self.line_at >= LINE_EVERY_S:
            self.line_at = now
            return True
        return False

    def note_data_wait(self, config: Config, host_kept: bool) -> None:
        """Once a start: where the loop has waited for its batches :data:`DATA_WAIT` or more of its
        training time since its first report (a GPU left idle that long), a note of what would feed
        it faster (``host_kept``: the training set is held in host memory, not on the device). Without
        a second report, nothing."""
        if self.said_data_wait or not self.trained_s or self.waited_s / self.trained_s < DATA_WAIT:
            return
        self.said_data_wait = True
        d, cores, faster = config.data, usable_cores(), ""
        if d.dataset == "folder" and d.on_device is not True:
            faster = (f"more decoding processes (data.workers={d.workers}, of {cores} CPU cores here)"
                      if d.workers < cores else f"decoding on more CPU cores (all {cores} here are in use)")
            faster += ", a smaller data.load_size, or data.on_device=true for a folder that fits in the device's memory"
        elif host_kept and self.clock.device.type != "cpu":  # on a CPU it is in memory already
            faster = "data.on_device=true (the training set held in the device's memory, where it fits)"
        line = (f"note: training waited for its images {self.waited_s / self.trained_s:.0%} of the time "
                f"(train/data_wait in metrics.jsonl)" + (f"; {faster} would feed it faster" if faster else ""))
        say(line, self.progress)


# Seconds within an epoch after which a run without a bar prints where it stands again (Report.line_due).
LINE_EVERY_S = 300.0


def epoch_line(step: int, end_step: int, report: "Report", first_step: int, batch_size: int,
               loss: Optional[float], knn: Optional[float] = None) -> str:
    """Where a run without a progress bar (``train.progress=false``, a log file) stands at an epoch's
    end, or within a long one (:meth:`Report.line_due`): the epoch, the step, the last loss read (with its
    step, where that is an earlier one: read every ``train.log_every`` steps), the kNN top-1 scored at this
    step (None: none), this start's training throughput and the time left: at this start's pace so far, its
    kNN evaluations, checkpoints and plots included (an audit: left out, a run with the monitor every epoch ended
    3x later than its line said)."""
    epoch, epochs = math.ceil(step / report.steps_per_epoch), report.epochs
    elapsed = report.clock.training_s()
    rate = (step - first_step) / elapsed if elapsed > 0 else 0.0
    pace = report.clock.run_s() / (step - first_step) if step > first_step else 0.0  # seconds a step, all told
    left = f", about {duration((end_step - step) * pace)} left" if rate and pace and step < end_step else ""
    at = f" (step {report.last_step})" if report.last_step != step else ""
    scored = f", kNN {knn_shown(knn)}" if knn is not None else ""
    shown = (f", loss {loss:.4f}{at}" if loss is not None else "") + scored
    return (f"epoch {epoch}/{epochs} (step {step}/{end_step}){shown}, {rate * batch_size:,.1f} img/s{left}")


def knn_shown(accuracy: float) -> str:
    """A kNN top-1 as a run's lines and closing table show it: ``71.30%``; NaN (the monitor's word for features that
    are not finite, which :func:`~byol.evaluate.knn_accuracy` refuses) in words, not as ``nan%``, an accuracy."""
    if math.isfinite(accuracy):
        return f"{accuracy:.2f}%"
    return "not scored: the encoder's features are NaN or infinite (a diverged run?)"


def log_knn(log: Optional[MetricsLog], step: int, acc: dict[int, float], k: int, when: dict) -> dict[int, float]:
    """A kNN record (``acc``: top-1 by k; ``when``: :meth:`Report.when`'s fields); returns ``acc``."""
    if log is not None:
        log.log(step, **when, **{f"{KNN_PREFIX}{kk}": v for kk, v in acc.items()}, **{"eval/knn_top1": acc[k]})
    return acc


def stop_line(results: dict) -> str:
    """What a run stopped by a signal says: where, its checkpoint, the files it skipped so far."""
    n = results.get("skipped_files", 0)
    skipped = f"; {n:,} unreadable file{'s' * (n != 1)} skipped so far (listed in skipped_files.txt)" if n else ""
    during = " (in its kNN evaluation, which the resume scores first)" if results.get("knn_cut") else ""
    return (f"stopped by {results['stopped_by']} at step {results['step']}{during}; checkpoint saved to "
            f"{results['checkpoint']}{skipped}; continue with --resume")


def note_cpu(config: Config, device: torch.device) -> None:
    """The GPU presets (the default one included) where torch finds no GPU: hours an epoch, said up front."""
    # (not for a network given from Python, which model.width does not make: the note advised --model.width=8 to a
    # ViT's run, a user test)
    if (device.type == "cpu" and config.train.device == "auto" and config.model.width >= 64
            and config.model.backbone != GIVEN_BACKBONE):
        print("note: torch finds no GPU here, so this full-width encoder trains on the CPU, slowly (the progress "
              "bar's ETA, or without one the lines' time left, says how slowly); a narrow one (--model.width=8, as "
              "in --config cifar10-cpu) suits a CPU", file=sys.stderr)


def note_train_split(config: Config) -> None:
    """STL-10 pretrained on its 5,000 labeled images alone (the default ``data.train_split``, which
    suits CIFAR), where the field (and ``--config stl10``) takes train+unlabeled, 105,000 images; and
    CIFAR or STL-10 pretrained on its test split, the images that ``byol eval`` scores on (and the kNN
    monitor, but with ``train.knn_holdout``); a folder's too, pretrained on its held-out split."""
    d = config.data
    if d.dataset == "folder":
        held = held_out_folder(Path(d.root).expanduser())
        if held is not None and d.train_split == held.name:  # (a user test: not said, as for CIFAR)
            print(f"note: this run pretrains on {held}, the held-out split the kNN monitor and byol eval score on, "
                  "so their accuracies will not measure images the encoder has not seen (the default "
                  "--data.train_split is train)", file=sys.stderr)
    elif d.dataset == "stl10" and d.train_split == "train":
        print("note: this run pretrains on STL-10's labeled train split alone; STL-10 is usually pretrained on "
              "train+unlabeled (in the full set 5,000 + 100,000 images), as --config stl10 does "
              "(--data.train_split=train+unlabeled)", file=sys.stderr)
    elif d.train_split == "test":
        who = "byol eval scores" if config.train.knn_holdout else "the kNN monitor and byol eval score"
        # STL-10's own choice, not the field's default: train alone gets the note above (a user test was sent to it)
        instead = ("--data.train_split=train+unlabeled or unlabeled, as --config stl10 takes the first"
                   if d.dataset == "stl10" else "the default --data.train_split is train")
        print(f"note: this run pretrains on {d.dataset}'s test split, the images that {who} on, so their "
              f"accuracies will not measure images the encoder has not seen ({instead})", file=sys.stderr)


def note_stl10_views(config: Config) -> None:
    """STL-10 trained on views of another size than its 96x96 images, which the kNN monitor, ``byol eval`` and
    ``embed`` take whole (a user test: ``--data.dataset=stl10`` with the default cifar10 preset trained on
    32x32 views with the CIFAR stem, and said nothing of it)."""
    d = config.data
    if d.dataset == "stl10" and d.image_size != NATIVE_SIZE["stl10"]:
        print(f"note: the views are {d.image_size}x{d.image_size} (data.image_size) while the kNN monitor, byol "
              "eval and embed take STL-10's images whole, at 96x96; --config stl10 has STL-10's settings (96x96 "
              "views, the ImageNet stem, ImageNet's mean and std)", file=sys.stderr)


def note_no_augmentation(config: Config) -> None:
    """``augment.preset=none``: both views the same image, from which BYOL has nothing to learn (a user
    test trained on it without a word); an ablation, so said (at every start), not refused."""
    a = config.augment
    if a.preset != "none":
        return
    scale = a.crop_min_scale
    cropped = scale is not None and scale < 1  # (crops of all of the image: the same whole image)
    given = [f"augment.{name}={getattr(a, name):g}" for name in VIEW_PROBABILITIES if getattr(a, name)]
    if not cropped and not given:
        views = "gives both views the same whole image, from which BYOL has nothing to learn"
    else:
        blurred, solarized = (any(getattr(a, f"view{i}_{op}_p") for i in (1, 2)) for op in ("blur", "solarize"))
        ops = " and ".join(op for op, on in (("blur", blurred), ("solarization", solarized)) if on)
        # (A user test: it said "the blur and solarization given" for either alone, and "no flip or colour
        # change" where there was no blur either.)
        settings, ways = (given, [f"the {ops} given"]) if given else ([], [])
        if cropped:
            settings.insert(0, f"augment.crop_min_scale={scale:g}")
            ways.insert(0, f"their square crops, of {scale:g} to all of the image")
        missing = "no flip or colour change" if blurred else "no flip, colour change or blur"
        views = f"with {', '.join(settings)} gives views that differ only by {' and '.join(ways)} ({missing})"
    print(f"note: augment.preset=none {views}: an ablation; BYOL's recipes are --augment.preset=paper or cifar",
          file=sys.stderr)


def note_unused_optim(config: Config) -> None:
    """The ``optim`` settings that ``optim.name``'s optimizer does not read, where they are not the
    defaults (a user test: ``--optim.name=adamw`` over the cifar10 preset kept its LARS settings, and
    a ``--optim.momentum`` given with it, without a word)."""
    o, defaults = config.optim, OptimConfig()
    unused = [key for key, used_by in (("momentum", ("lars", "sgd")), ("trust_coefficient", ("lars",)),
                                       ("lars_clip", ("lars",)), ("beta1", ("adamw",)), ("beta2", ("adamw",)))
              if o.name not in used_by and getattr(o, key) != getattr(defaults, key)]
    if unused:
        settings = ", ".join(f"optim.{key}={yaml_word(getattr(o, key))}" for key in unused)
        print(f"note: optim.name={o.name} does not use {settings}; {'it is' if len(unused) == 1 else 'they are'} "
              "ignored", file=sys.stderr)


def note_warmup(config: Config, steps_per_epoch: int) -> None:
    """A warm-up as long as the run (its epochs, or ``train.max_steps``): legal, but the learning rate
    then only climbs (to its peak at the last step at best) and never decays, which is almost surely
    not what was meant."""
    t, warmup_epochs = config.train, config.optim.warmup_epochs
    _, warmup, total = schedule_of(config, steps_per_epoch)
    end = end_step_of(config, total)
    if warmup < end:
        return
    if warmup >= total:  # the schedule itself, whatever part of it train.max_steps runs
        run, below = f"{warmup_epochs:g} is not shorter than train.epochs={t.epochs}", "below train.epochs"
    else:  # train.max_steps ends the run within it
        run = f"{warmup_epochs:g} ({warmup} steps) is not shorter than train.max_steps={t.max_steps}"
        epochs = f"{end / steps_per_epoch:.3g}"
        below = f"below the {epochs} epoch{'s' * (epochs != '1')} of train.max_steps"
    # The last step's learning rate as a share of the peak (schedules.cosine_lr warms up by step + 1 of warmup).
    reached = "reaching its peak only at the last step" if end == warmup else f"to {end / warmup:.2g} of its peak"
    print(f"note: optim.warmup_epochs={run}, so the learning rate only warms up, {reached}, and never decays; "
          f"set --optim.warmup_epochs {below} (the paper warms up 10 epochs of 300 or 1000)", file=sys.stderr)


def note_finished(t: TrainConfig, run_dir: Path, step: int, by_max_steps: bool) -> None:
    limit = f"train.max_steps={t.max_steps}" if by_max_steps else f"train.epochs={t.epochs}"
    print(f"note: the run in {run_dir} is finished: step {step}, and {limit} ends it; to train on, resume "
          "with a larger value", file=sys.stderr)


def note_cuda_graph(eager_steps: int) -> None:
    print("note: train.cuda_graph=true is experimental (its tests have passed on one GPU so far): after "
          f"{eager_steps} eager steps, each step's augmentation, forward and backward are replayed "
          "from one CUDA graph", file=sys.stderr)
