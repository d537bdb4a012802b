"""The kNN monitor of a pretraining run: the online encoder's kNN accuracy on a labeled split,
at random initialization and every ``train.knn_every`` epochs."""

import sys
from functools import partial
from typing import Callable, Optional

import torch

from . import distributed as dist
from .build import eval_crop, views_of
from .config import Config
from .evaluate import knn_accuracy
from .faults import StopRequest, Stopped
from .metrics import MetricsLog
from .model import BYOL
from .reporting import log_knn, shows_bars
from .train_data import TrainData


def knn_eval(model: BYOL, data: TrainData, config: Config, device: torch.device,
             amp: Optional[torch.dtype], progress: bool = False) -> dict[int, float]:
    """kNN top-1 of the online encoder on the held-out split (a collective under torchrun:
    features are extracted on every rank's share and gathered with their indices); ``progress``
    shows a bar for each split's features on stderr. A folder's images are cut to their center
    ``data.image_size`` (:func:`~byol.build.eval_crop`), as ``byol eval`` cuts them."""
    view1, _ = views_of(config)
    kwargs = dict(batch_size=512, mean=view1.mean, std=view1.std, amp_dtype=amp, crop=eval_crop(config))
    splits = (data.knn_train, data.knn_test)
    names = ("bank", "held-out") if config.train.knn_holdout else ("train", "test")
    bars = tuple(f"kNN: {name} features" for name in names) if progress else (False, False)
    if data.knn_sizes is not None:  # each process holds its share
        (train_f, train_y, _), (test_f, test_y, _) = (
            dist.extract_share(model.encoder, s.images, s.labels, s.indices, n, device, progress=bar, **kwargs)
            for s, n, bar in zip(splits, data.knn_sizes, bars))
    else:
        (train_f, train_y), (test_f, test_y) = (
            (dist.extract_features_sharded(model.encoder, s.images, device, progress=bar, **kwargs), s.labels)
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
    knn = partial(knn_eval, byol, data, config, device, amp, bars)
    if rank == 0 and not bars:  # a log: a line before the minutes its features can take, where bars would show them
        knn = _announced(knn, f"kNN monitor: features of the training (bank) and {data.knn_query} (query) images")
    results["knn_images"] = (*data.knn_images, data.knn_query)  # for the closing table
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
