"""Evaluation of a frozen encoder: weighted kNN and linear probe, on features from
:func:`byol.features.extract_features` (importable from here too).

Every function takes plain tensors (the kNN and the probe NumPy arrays too, as ``byol embed``
writes them) and arguments, so it works without a config or a run directory:
``extract_features`` once per split, then ``knn_accuracy`` and ``linear_probe`` on the cached features.
"""

import math
import numbers
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .features import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, center_crop, extract_features
from .progress import bar_shape, shown

__all__ = ["knn_classify", "knn_accuracy", "linear_probe",  # and byol.features' and byol.progress' names:
           "extract_features", "center_crop", "bar_shape", "IMAGENET_MEAN", "IMAGENET_STD", "CIFAR10_MEAN",
           "CIFAR10_STD"]


def nonfinite_rows(features: torch.Tensor) -> int:
    """How many rows of ``features`` hold a NaN or an infinity; in chunks, as a whole-size mask of an
    ImageNet train split's features would be gigabytes."""
    return sum(int((~torch.isfinite(chunk)).any(dim=1).sum()) for chunk in features.split(1 << 14))


def _splits(train_features, train_labels, test_features, test_labels=None, scored: bool = True,
            least: int = 1) -> tuple:
    """The train and test features (N, D) and labels (N,) as tensors, from NumPy arrays (as
    ``byol embed`` writes them) or lists too, checked: finite features, at least ``least`` train rows,
    one label per row, class indices 0, 1, ..., the same width D on both sides, test labels where the
    test split is ``scored`` (else ``test_labels`` None stays None)."""
    if scored and test_labels is None:
        raise ValueError("the test labels are needed to score the test split")
    out = []
    for which, features, labels in (("train", train_features, train_labels), ("test", test_features, test_labels)):
        # detached: features computed with gradients on (enc(x)) broke the probe's backward in torch's words (a review)
        features = torch.as_tensor(features).detach()
        if features.dim() != 2:
            raise ValueError(f"the {which} features must be a matrix (N, D), got shape {tuple(features.shape)}")
        if which == "train" and len(features) < least:
            raise ValueError(f"the train split needs at least {least} row{'s' * (least > 1)}, got {len(features)}")
        if which == "test" and scored and not len(features):  # (it scored 0.0%, as if measured: a user test)
            raise ValueError("the test split is empty: there is nothing to score")
        if features.is_floating_point() and nonfinite_rows(features):
            raise ValueError(f"the {which} features hold NaN or infinite values (an encoder that diverged?)")
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.shape != features.shape[:1]:
                raise ValueError(f"the {which} labels must be one per row of its features, shape ({len(features)},), "
                                 f"got {tuple(labels.shape)}")
            if labels.numel() and (labels.min() < 0 or (labels.is_floating_point() and not (
                    torch.isfinite(labels).all() and torch.equal(labels, labels.round())))):  # inf: an index error
                raise ValueError(f"the {which} labels must be class indices 0, 1, ... (byol embed writes -1 for an "
                                 "image without a label)")
            labels = labels.long()
        out += [features, labels]
    if out[0].shape[1] != out[2].shape[1]:
        raise ValueError(f"the train and test features differ in width: {out[0].shape[1]} and {out[2].shape[1]}")
    return tuple(out)


# The similarity matrix of a chunk of queries against the bank has at most this many entries (256 MiB
# in fp32), unless chunk_size says otherwise: 1,024 rows of a 1.3-million bank took 5.3 GB.
KNN_CHUNK_ENTRIES = 2**26


def _knn_chunks(train_features: torch.Tensor, test_features: torch.Tensor, k: int, chunk_size: Optional[int],
                device: Optional[torch.device]):
    """Yield ``(start, sims, idx)``: cosine similarities (B, k) of each test row's top-k neighbours
    in the train bank, and their train indices, ``chunk_size`` test rows at a time (None: 1,024, or
    fewer where the bank is so large that their similarities would pass :data:`KNN_CHUNK_ENTRIES`)."""
    device = device or train_features.device
    bank = F.normalize(train_features.to(device, torch.float32), dim=1)  # (N_train, D)
    k = min(k, len(bank))
    chunk_size = chunk_size or max(1, min(1024, KNN_CHUNK_ENTRIES // max(len(bank), 1)))
    for start in range(0, len(test_features), chunk_size):
        q = F.normalize(test_features[start:start + chunk_size].to(device, torch.float32), dim=1)
        with torch.autocast(device.type, enabled=False):  # a caller's would pick other neighbours, in bf16
            sims, idx = (q @ bank.T).topk(k, dim=1)  # (B, N_train) -> (B, k), sorted descending
        yield start, sims, idx


def _vote(sims: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int,
          temperature: float) -> torch.Tensor:
    """Class scores (B, C): each neighbour votes for its class with weight exp(sim / T), taken over
    each row's exp(max sim / T) (``sims`` are sorted: column 0 is the largest), which would overflow
    float32 at a temperature of about 0.011 and below; the row's ratios, and its argmax, are the same."""
    scores = torch.zeros(len(sims), num_classes, device=sims.device)
    return scores.scatter_add_(1, neighbour_labels, ((sims - sims[:, :1]) / temperature).exp())


def _check_knn(ks: tuple, temperature: float, chunk_size: Optional[int]) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral)
                                   or chunk_size < 1):  # (-1 scored no chunk at all: 0.0%, as if measured)
        raise ValueError(f"chunk_size must be None or a whole number >= 1 (test rows per chunk), got {chunk_size!r}")
    if not ks or not all(isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 1 for k in ks) \
            or not 0 < temperature < math.inf:
        raise ValueError(f"every k must be a whole number >= 1 and the temperature > 0 and finite, got ks={ks}, "
                         f"temperature={temperature}")


def knn_classify(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 k: int = 200, temperature: float = 0.1, num_classes: Optional[int] = None,
                 chunk_size: Optional[int] = None, device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """Weighted k-nearest-neighbour class scores: the weighted vote of InstDisc (Wu et al. 2018).

    Both sides are L2-normalized; each test row takes its ``k`` most cosine-similar train rows,
    and each of them votes for its label with weight ``exp(sim / temperature)``. The defaults, k 200
    and temperature 0.1, are lightly's ``knn_predict`` (after MoCo's CIFAR-10 demo);
    :func:`knn_accuracy` reports k 20 beside it. InstDisc used k 200 and 0.07, DINO k 20 and 0.07, and
    solo-learn's ``WeightedKNNClassifier`` defaults to k 20 and 0.07: their numbers are not ours.

    Args:
        train_features: (N_train, D) feature bank.
        train_labels: (N_train,) integer labels.
        test_features: (N_test, D) queries.
        k: neighbours per query (capped at N_train).
        temperature: sharpness of the vote weights; 0.1 as lightly's kNN (InstDisc, DINO, solo-learn: 0.07).
        num_classes: C; default ``train_labels.max() + 1``.
        chunk_size: test rows per similarity matrix, so memory is O(chunk_size * N_train); by default
            1,024, fewer where the matrix would pass 2**26 entries (256 MiB: a bank over 65,536 rows).
        device: where to compute; default the device of ``train_features``.

    Returns:
        Scores (N_test, C) float32 on ``device``; ``argmax(1)`` is the prediction. Each row is scaled so
        that its nearest neighbour weighs 1 (its weights taken over exp(its largest sim / temperature)),
        so that a small temperature does not overflow; the ratios within a row are the vote's.
    """
    _check_knn((k,), temperature, chunk_size)
    train_features, train_labels, test_features, _ = _splits(train_features, train_labels, test_features,
                                                             scored=False)
    device = torch.device(device) if device is not None else None
    if num_classes is not None and num_classes <= int(train_labels.max()):
        raise ValueError(f"num_classes={num_classes}, but the train labels go up to {int(train_labels.max())}")
    num_classes = num_classes or int(train_labels.max()) + 1
    labels = train_labels.to(device or train_features.device).long()
    out = []
    for _, sims, idx in _knn_chunks(train_features, test_features, k, chunk_size, device):
        out.append(_vote(sims, labels[idx], num_classes, temperature))
    return torch.cat(out) if out else torch.empty(0, num_classes)


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, ks: Sequence[int] = (20, 200), temperature: float = 0.1,
                 chunk_size: Optional[int] = None, device: Union[str, torch.device, None] = None) -> dict[int, float]:
    """Top-1 accuracy in percent of the weighted kNN classifier (``knn_classify``), for each k.

    The top ``max(ks)`` neighbours are found once per chunk of test rows and reused for every
    smaller k. Returns ``{k: accuracy}``.
    """
    if isinstance(ks, (numbers.Number, str, bytes)):  # ks=20 failed: "'int' object is not iterable"
        raise ValueError(f"ks must be a list or tuple of whole numbers >= 1, such as (20, 200), got {ks!r}")
    ks = tuple(int(k) if isinstance(k, numbers.Integral) and not isinstance(k, bool) else k for k in ks)  # True: no k
    _check_knn(ks, temperature, chunk_size)
    ks = tuple(dict.fromkeys(ks))  # a k given twice is scored once (its hits were counted twice, past 100%)
    train_features, train_labels, test_features, test_labels = _splits(train_features, train_labels, test_features,
                                                                       test_labels)
    device = torch.device(device) if device is not None else None
    labels = train_labels.to(device or train_features.device).long()
    num_classes = int(torch.cat([train_labels, test_labels.to(train_labels.device)]).max()) + 1
    correct = {k: 0 for k in ks}
    for start, sims, idx in _knn_chunks(train_features, test_features, max(ks), chunk_size, device):
        target = test_labels[start:start + len(sims)].to(sims.device).long()
        for k in ks:  # topk is sorted, so the first k columns are the k nearest
            scores = _vote(sims[:, :k], labels[idx[:, :k]], num_classes, temperature)
            correct[k] += int((scores.argmax(1) == target).sum())
    n = max(len(test_features), 1)
    return {k: 100.0 * c / n for k, c in correct.items()}


def _fit_linear(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, y: torch.Tensor, num_classes: int,
                epochs: int, batch_size: int, lr: float, weight_decay: float, seed: int,
                progress: Union[bool, str] = False) -> tuple[nn.Linear, float]:
    """SGD (Nesterov momentum 0.9, cosine lr) on cross-entropy of the rows of ``x`` standardized with
    ``mean`` and ``std``, a batch at a time (a standardized copy of ImageNet's train split would be 2.6 GB
    more, 5.2 GB while made); returns the head and the last epoch's mean loss."""
    head = torch.nn.utils.skip_init(nn.Linear, x.shape[1], num_classes, device=x.device)  # draws nothing: the
    nn.init.zeros_(head.weight)  # caller's generator is left as it was; a convex problem: zero init is fine
    nn.init.zeros_(head.bias)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * math.ceil(len(x) / batch_size))
    gen = torch.Generator().manual_seed(seed)  # CPU generator: the same order on every device
    total = torch.zeros((), device=x.device)
    with shown(progress, epochs, "epoch", "linear probe") as bar:
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=gen).to(x.device)
            total.zero_()
            for i in range(0, len(x), batch_size):
                idx = perm[i:i + batch_size]
                loss = F.cross_entropy(head((x[idx] - mean) / std), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.detach() * len(idx)  # no host sync per step
            if bar is not None:
                bar.update()
    return head, float(total) / len(x)


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, epochs: int = 100, batch_size: int = 256, lr: float = 0.1,
                 weight_decay: float = 5e-4, device: Union[str, torch.device, None] = None,
                 seed: int = 0, progress: Union[bool, str] = False) -> dict[str, float]:
    """Train a linear classifier on frozen, precomputed features; report test accuracy.

    Features are standardized with the train split's per-dimension mean and std (a BatchNorm
    without affine, as in MAE's linear probe; a dimension constant there is centred only), then a
    zero-initialized linear layer is trained with cross-entropy and SGD (momentum 0.9, Nesterov) under a
    cosine learning-rate schedule.

    Deviation from the paper (BYOL, Appendix C): its linear evaluation trains the classifier on
    random crops and flips, passing each through the frozen encoder; here features are computed
    once, without augmentation, as is common for fast evaluation of self-supervised encoders.
    How far, and which way, numbers then land from the paper's protocol's is not measured.

    Args:
        train_features, train_labels: (N, D) features and (N,) integer labels to fit on.
        test_features, test_labels: the split to report on.
        epochs, batch_size, lr, weight_decay: SGD settings (the defaults suit standardized
            features of any width).
        device: where to train; default the device of ``train_features``.
        seed: seeds the shuffling; the result is deterministic for a seed on a given device.
        progress: show a progress bar of the epochs on stderr; a string names it.

    Returns:
        ``{"top1", "top5", "classes", "train_loss"}``: test accuracies in percent (top-5 is top-min(5, C)),
        the number of classes C, and the mean cross-entropy of the last epoch. A head that diverged to
        non-finite values (an ``lr`` far too large, or not finite) is a ``ValueError``, not a score; one with a huge
        but finite loss is scored (its ``train_loss`` says so).
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    # Two rows at least: the features are standardized with the train split's std.
    train_features, train_labels, test_features, test_labels = _splits(train_features, train_labels, test_features,
                                                                       test_labels, least=2)
    device = torch.device(device) if device is not None else train_features.device
    x_train = train_features.to(device, torch.float32)
    mean, std = x_train.mean(0), x_train.std(0)
    # A feature the same in every train row tells no class apart: scaled by 1, as scikit-learn's StandardScaler
    # does, not by 1/1e-6, which made a test row where it differs score as the head's weight for it (learned on
    # the mean's rounding) said, whatever its other features: such rows were at chance (a review). Any other is
    # divided by its std alone: an absolute epsilon added to it (1e-6) flattened features whose spread is that
    # small (an encoder's output scaled by 1e-8 was probed at chance, 10.9% on CIFAR-10 for 35.4%: an audit).
    std = torch.where((x_train.amin(0) == x_train.amax(0)) | (std == 0), torch.ones_like(std), std)
    num_classes = int(torch.cat([train_labels, test_labels.to(train_labels.device)]).max()) + 1
    head, train_loss = _fit_linear(x_train, mean, std, train_labels.to(device).long(), num_classes,
                                   epochs, batch_size, lr, weight_decay, seed, progress)
    with torch.no_grad():
        logits = head((test_features.to(device, torch.float32) - mean) / std)
        top = logits.topk(min(5, num_classes), dim=1).indices  # (N_test, 5)
        hit = top == test_labels.to(device).long().view(-1, 1)
    if not (math.isfinite(train_loss) and torch.isfinite(logits).all()):  # (NaN logits scored as if measured)
        raise ValueError(f"the linear probe diverged (its last epoch's loss is {train_loss:.4g}) at lr={lr}: "
                         "give a smaller finite lr (the default 0.1 suits standardized features)")
    n = max(len(test_features), 1)
    return {"top1": 100.0 * float(hit[:, 0].sum()) / n, "top5": 100.0 * float(hit.any(1).sum()) / n,
            "classes": num_classes, "train_loss": train_loss}
