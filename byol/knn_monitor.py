"""The kNN monitor of a pretraining run: the online encoder's kNN accuracy on a labeled split,
at random initialization and every ``train.knn_every`` epochs (and at a finished run's resume, the run's end's
where its last start never logged it)."""

import sys
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from . import features
from .build import eval_crop, views_of
from .config import Config
from .dropin import BYOL
from .error_lines import is_out_of_memory
from .errors import ByolError
from .evaluate import knn_accuracy
from .faults import StopRequest, Stopped
from .metrics import KNN_PREFIX, MetricsLog, PlotsUnavailable, plot_metrics, read_metrics
from .progress import LogLines, named, shows_bars
from .reporting import log_knn
from .run_folder import RunFolder
from .step import channels_last_crash, to_step_layout
from .train_data import TrainData

MONITOR_BATCH = 512  # images per forward pass of the monitor's features, whatever train.batch_size


def knn_eval(model: BYOL, data: TrainData, config: Config, device: torch.device,
             amp: Optional[torch.dtype], progress: Union[bool, LogLines] = False) -> dict[int, float]:
    """kNN top-1 of the online encoder on the held-out split (a collective under torchrun:
    features are extracted on every rank's share and gathered with their indices); ``progress``
    shows a bar for each split's features on stderr (:class:`~byol.progress.LogLines`: note lines).
    A folder's images are cut to their center ``data.image_size`` (:func:`~byol.build.eval_crop`),
    as ``byol eval`` cuts them."""
    view1, _ = views_of(config)
    kwargs = dict(batch_size=MONITOR_BATCH, mean=view1.mean, std=view1.std, amp_dtype=amp, crop=eval_crop(config))
    splits = (data.knn_train, data.knn_test)
    # the queries' bar named by their split: a folder's val, say, not "test" (the closing table's and the log's word)
    names = ("bank", "held-out") if config.train.knn_holdout else ("train", data.knn_query)
    bars = tuple(named(progress, f"kNN: {name} features") for name in names)
    if data.knn_sizes is not None:  # each process holds its share
        (train_f, train_y, _), (test_f, test_y, _) = (
            features.extract_share(model.encoder, s.images, s.labels, s.indices, n, device, progress=bar, **kwargs)
            for s, n, bar in zip(splits, data.knn_sizes, bars))
    else:
        (train_f, train_y), (test_f, test_y) = (
            (features.extract_features_sharded(model.encoder, s.images, device, progress=bar, **kwargs), s.labels)
            for s, bar in zip(splits, bars))
    ks = sorted({20, config.train.knn_k})
    if not (torch.isfinite(train_f).all() and torch.isfinite(test_f).all()):  # a diverging encoder's: NaN, not
        return {k: float("nan") for k in ks}  # an error (knn_accuracy refuses them) that would end the run
    return knn_accuracy(train_f, train_y, test_f, test_y, ks=ks, device=device)


def knn_monitor(config: Config, byol: BYOL, data: TrainData, device: torch.device, amp: Optional[torch.dtype],
                rank: int, log: Optional[MetricsLog], step: int, saved: dict, steps_per_epoch: int,
                results: dict) -> Optional[Callable[[], dict]]:
    """The kNN monitor: the online encoder's accuracies when called (None: the data has no labeled
    splits), bars on rank 0. Scored here: a new run's encoder at random initialization, and for a
    resumed run the epoch's that the stop which ended its last start skipped (``saved``: the
    checkpoint's extra). ``results`` gets what it scores, and what its accuracies are of."""
    if data.knn_train is None:
        return None
    t = config.train
    bars = shows_bars(t.progress) and rank == 0
    # a log: a line before the minutes its features can take, then how far each pass is, where bars would show it
    knn = partial(knn_eval, byol, data, config, device, amp, bars or (rank == 0 and LogLines()))
    if rank == 0 and not bars:
        knn = _announced(knn, f"kNN monitor: features of the training (bank) and {data.knn_query} (query) images")
    knn = _out_of_memory_said(knn, resumed=step > 0)
    results["knn_images"] = (*data.knn_images, data.knn_query)  # for the closing table
    # and the images the kNN at random init was scored on: a folder's may have grown or shrunk since, before a resume
    # (a user test: images and a class added); none in a checkpoint of an older byol's
    if init_images := data.knn_images if step == 0 else saved.get("knn_init_images"):
        results["knn_init_images"] = tuple(init_images)
    if step == 0:
        results["knn_init"] = log_knn(log, 0, knn(), t.knn_k, {"epoch": 0.0, "time_s": 0.0})
    elif saved.get("knn_due"):
        when = {"epoch": step / steps_per_epoch, "time_s": float(saved.get("time_s", 0.0))}
        results["knn"] = log_knn(log, step, knn(), t.knn_k, when)
    return knn


def _announced(knn: Callable[[], dict], line: str) -> Callable[[], dict]:
    def announced() -> dict:
        print(line, file=sys.stderr, flush=True)
        return knn()
    return announced


def monitor_out_of_memory_line(resumed: bool) -> str:
    """The sentence for memory run out in the kNN monitor (a review: the training step's, "lower
    train.batch_size", was said, which the monitor's batches of ``MONITOR_BATCH`` do not follow). ``resumed``: a
    resumed run's, whose train.knn_limit its checkpoint fixes where it logged kNN accuracies (a resume refuses
    another); the monitor turned off, it goes on (``byol eval knn`` scores any checkpoint afterwards)."""
    what = (f"the kNN monitor ran out of memory (it embeds its images {MONITOR_BATCH} at a time, whatever "
            "train.batch_size); ")
    off = "byol eval knn scores the run's checkpoints afterwards"
    if resumed:
        return f"{what}resume with --train.knn_every=-1 to turn it off ({off})"
    return (f"{what}turn it off with --train.knn_every=-1 ({off}) or give it fewer images with --train.knn_limit "
            f"(under {MONITOR_BATCH}, in smaller batches too); a run that wrote a checkpoint goes on from it with "
            "--resume --train.knn_every=-1")


def _out_of_memory_said(knn: Callable[[], dict], resumed: bool) -> Callable[[], dict]:
    def said() -> dict:
        try:
            return knn()
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            raise ByolError(monitor_out_of_memory_line(resumed)) from e
    return said


def score_unless_stopped(knn: Callable[[], dict], stop: StopRequest, world: int) -> Optional[dict]:
    """``knn()``, or None where a signal has come (in one process; under torchrun it runs to its end:
    its collectives would need every rank to stop at the same point). A signal that came before it
    (while the step was logged or saved; in the run's last step) skips it, one while it runs cuts it
    short."""
    if world > 1:
        return knn()
    if stop.requested:
        return None
    try:
        with stop.interrupting():
            return knn()
    except Stopped:
        return None


def score_the_end(config: Config, byol: BYOL, data: TrainData, device: torch.device, amp: Optional[torch.dtype],
                   folder: Optional[RunFolder], rank: int, world: int, step: int, saved: dict, steps_per_epoch: int,
                   results: dict) -> None:
    """The kNN evaluation of a finished run's end, which its last start never logged (killed during it: kill -9,
    the out-of-memory killer, a lost node; or a signal cut it short), scored and logged as the run's end logs it,
    with its plots and TensorBoard's success (a user test: a requeued job said only that the run was finished,
    and its final kNN was never scored). On the encoder in the layout the run's steps left it in (channels_last
    where they ran in it), so that the accuracies are an uninterrupted run's."""
    t = config.train
    to_step_layout(byol, channels_last_crash(byol, t.batch_size // world, device, config.data.image_size) is None)
    log = folder.metrics_log(resume_step=step) if folder is not None else None
    if rank == 0:
        print(f"note: the kNN evaluation of the run's end (step {step}) was not logged; it is scored now",
              file=sys.stderr)
    try:
        knn_monitor(config, byol, data, device, amp, rank, log, step, saved, steps_per_epoch, results)
    finally:
        data.close()
    if log is not None:
        log.close(finished=True)
        redraw_plots(Path(t.out_dir))
        # Only now does the record logged stay: a signal before (during the plots, say) undoes the start, and the
        # next resume scores it again, where TensorBoard's success would else be lost for good (a review).
        folder.started = True
        results.update(logged_init(Path(t.out_dir)))


def redraw_plots(run_dir: Path) -> None:
    """The plots of a finished run drawn again, from the records its resume changed; a note where they cannot be."""
    try:
        plot_metrics(run_dir / "metrics.jsonl")
    except (OSError, PlotsUnavailable) as e:  # the record is in metrics.jsonl all the same
        print(f"note: the plots in {run_dir} could not be drawn again ({e})", file=sys.stderr)


def logged_init(run_dir: Path) -> dict:
    """``{"knn_init": ...}``, the kNN accuracies at random initialization a resumed run's first start
    logged (for the closing table); empty where it logged none."""
    start = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["step"] == 0]
    init = {int(k.removeprefix(KNN_PREFIX)): v for r in start for k, v in r.items() if k.startswith(KNN_PREFIX)}
    return {"knn_init": init} if init else {}
