"""Features of a frozen encoder: ``extract_features`` over a tensor of images or a loader's batches.

What :mod:`byol.evaluate` scores (kNN, linear probe) and ``byol embed`` writes. Batches are embedded as
they come, their rows written into one tensor, so a loader over a large folder never holds it all in
memory, nor its embeddings more than once. Under torchrun, ``extract_features_sharded``, ``extract_share``
and ``extract_batches_sharded`` split the images across ranks and gather the features back in order.
``keep_modes`` puts back the train/eval mode of each of a network's modules after it ran (here, and in
:mod:`byol.backbones`, which runs networks to cut and measure them).
"""

import contextlib
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .augment import CIFAR_MEAN as CIFAR10_MEAN, CIFAR_STD as CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD  # the views'
from .distributed import gather_rows, rank, world_size
from .inputs import check_pixel_range
from .progress import shown

__all__ = ["extract_features", "center_crop", "IMAGENET_MEAN", "IMAGENET_STD", "CIFAR10_MEAN", "CIFAR10_STD"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.inference_mode()
def _embed(encoder: nn.Module, images: torch.Tensor, device: torch.device, mean: torch.Tensor,
           std: torch.Tensor, size: Union[int, tuple[int, int], None],
           amp_dtype: Optional[torch.dtype], crop: Optional[int] = None) -> torch.Tensor:
    """One batch of images (uint8, or float in [0, 1]) -> (B, D) float32 features on the CPU."""
    if not isinstance(images, torch.Tensor):  # (a loader's batch of PIL images, say)
        raise TypeError(f"images must be tensors (N, C, H, W), uint8 or float in [0, 1], got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != mean.shape[1]:
        raise ValueError(f"images must be a batch (N, C, H, W) with C = {mean.shape[1]}, the channels of mean and "
                         f"std, got shape {tuple(images.shape)}")
    # int64 pixels or floats in 0..255 gave features of nonsense, without a word (a user test)
    check_pixel_range(images, advice="extract_features scales and normalizes the images itself (mean, std): give "
                      "them before Normalize, uint8 or in [0, 1]", stacklevel=6)
    x = images.to(device, non_blocking=True)
    if crop is not None:
        x = center_crop(x, crop)
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    if size is not None:
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    x = (x - mean) / std
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        out = encoder(x)
    # CPU output keeps dataset-sized feature banks (ImageNet: 1.28M x 2048) out of GPU memory.
    return out.flatten(1).float().cpu()


def center_crop(images: torch.Tensor, side: int) -> torch.Tensor:
    """The center ``side`` x ``side`` of a batch (B, C, H, W), as torchvision's ``CenterCrop`` cuts
    it (the offset rounded as there); a side no longer than ``side`` is kept whole, not padded."""
    top, left = (max(0, int(round((n - side) / 2.0))) for n in images.shape[-2:])
    return images[..., top:top + side, left:left + side]


@contextlib.contextmanager
def keep_modes(module: nn.Module) -> Iterator[None]:
    """Restore the train/eval mode of each of ``module``'s modules on exit: they may differ (a
    network given with some BatchNorm layers frozen), and ``module.train(mode)`` sets them all."""
    modes = [(m, m.training) for m in module.modules()]  # parents before their children
    try:
        yield
    finally:
        for m, training in modes:  # train(), not the flag: torchvision's traced modules swap graphs on it
            m.train(training)


def extract_features(encoder: nn.Module, images: Union[torch.Tensor, Batches], batch_size: int = 512,
                     device: Union[str, torch.device, None] = None,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     size: Union[int, tuple[int, int], None] = None, amp_dtype: Optional[torch.dtype] = None,
                     with_indices: bool = False, progress: Union[bool, str] = False,
                     crop: Optional[int] = None) -> Union[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Representations of ``images`` under ``encoder`` in eval mode, without gradients.

    Args:
        encoder: maps a normalized (B, 3, H, W) float batch to (B, ...) features.
        images: a uint8 tensor (N, 3, H, W), processed ``batch_size`` at a time; or an iterable
            (e.g. a DataLoader) of ``(images, labels, indices)`` batches.
        batch_size: images per forward pass when ``images`` is a tensor.
        device: where the encoder runs; default: the device of its parameters.
        mean, std: per-channel normalization of images scaled to [0, 1]; must match pretraining.
        size: resize to this size first (bilinear, antialiased), when the stored images differ
            from the resolution the encoder was pretrained at.
        crop: cut the center ``crop`` x ``crop`` of each image first (before ``size``), as the
            usual test protocol does (resize to 256, center 224: Grill et al. 2020, appendix C).
        amp_dtype: autocast dtype (``torch.bfloat16``) or None for float32.
        with_indices: for batches, also return the sorted indices (which rows of the dataset
            the features are of, when a loader left some out or saw a shard only).
        progress: show a progress bar (images/s, time left) on stderr; a string names it. A
            loader's total is the length of its sampler, when it has one.

    Returns:
        For a tensor: features (N, D) float32 on the CPU, in input order. For batches:
        ``(features, labels)`` sorted by the batch indices, so shuffled or sharded loaders give
        the dataset order; ``(features, labels, indices)`` with ``with_indices``. Batches are
        embedded as they come, so a loader over a large folder never holds it all in memory.

    The encoder is moved to ``device`` if given; its train/eval mode is restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if hasattr(images, "__array__") and not isinstance(images, torch.Tensor):  # a NumPy array
        images = torch.as_tensor(images)
    device = torch.device(device) if device is not None else _device_of(encoder)
    encoder.to(device)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    is_tensor = isinstance(images, torch.Tensor)
    total = len(images) if is_tensor else _items_of(images)
    embed = partial(_embed, encoder, device=device, mean=mean_t, std=std_t, size=size, amp_dtype=amp_dtype, crop=crop)
    # Each module's own mode put back, not the encoder's flag alone: encoder.train(True) would unfreeze a BatchNorm
    # layer held in eval mode in a network given in training mode, which the kNN monitor then trained (a review)
    with keep_modes(encoder), shown(progress, total, "img", "features") as bar:
        encoder.eval()
        if is_tensor:
            return _tensor_features(embed, images, batch_size, bar)
        out = _batch_features(embed, images, total, bar)
    return out if with_indices else out[:2]


def _items_of(loader) -> Optional[int]:
    """How many items a loader's batches hold: its sampler's length where it batches that sampler (not
    where a batch_sampler of its own picks the items: its ``sampler`` is then the whole data set's)."""
    sampler, batches = getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)
    if not hasattr(sampler, "__len__") or (batches is not None and getattr(batches, "sampler", None) is not sampler):
        return None
    return len(sampler)


def _described(batch) -> str:
    """A batch's kind in a few words: a tuple of 2, a Tensor (B, 3, 32, 32), ..."""
    if isinstance(batch, (tuple, list)):
        return f"a {type(batch).__name__} of {len(batch)}"
    return f"a {type(batch).__name__}" + (f" {tuple(batch.shape)}" if isinstance(batch, torch.Tensor) else "")


def _tensor_features(embed: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int,
                     bar) -> torch.Tensor:
    """``embed`` over ``images`` ``batch_size`` at a time: (N, D), in input order, each batch's rows
    written into the one (N, D) tensor (no list of them to concatenate: twice the memory at the end)."""
    out = torch.empty(0, 0)
    for i in range(0, len(images), batch_size):
        rows = embed(images[i:i + batch_size])
        if i == 0:
            out = rows.new_empty((len(images), *rows.shape[1:]))
        out[i:i + len(rows)] = rows
        if bar is not None:
            bar.update(len(rows))  # a shape: no host sync beyond _embed's own copy
    return out


def _batch_features(embed: Callable[[torch.Tensor], torch.Tensor], batches: Batches, total: Optional[int],
                    bar) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``embed`` over ``(images, labels, indices)`` batches: features, labels and indices sorted by
    the indices. With ``total``, the number of items the batches hold at most, the rows are written
    into one tensor of ``total`` rows as they come, and put in order only where they came out of it:
    a folder's embeddings take their own size once, not three times (a list, its concatenation and
    its reordering)."""
    feats, labels, indices = _Rows(total), _Rows(total), _Rows(total)
    for batch in batches:
        if not isinstance(batch, (tuple, list)) or len(batch) != 3:  # (images, labels) pairs, say (a user test)
            raise ValueError("batches must be (images, labels, indices) triples, the indices saying which item of the "
                             f"data set each row is, got {_described(batch)}; for a tensor of images, pass it alone")
        x, y, idx = batch
        y, idx = torch.as_tensor(y).cpu(), torch.as_tensor(idx).cpu()
        rows = embed(x)  # (checks that x is a batch of images)
        if y.shape[:1] != (len(x),) or idx.shape[:1] != (len(x),):  # rows would pair with another image's label
            raise ValueError(f"a batch has {len(x)} images but labels of shape {tuple(y.shape)} and indices of "
                             f"shape {tuple(idx.shape)}: each image needs its label and its index (both of shape "
                             f"({len(x)},))")
        feats.add(rows)
        labels.add(y)
        indices.add(idx)
        if bar is not None:
            bar.update(len(x))
    if not indices.count:  # e.g. a shard whose files were all undecodable
        nothing = torch.empty(0, dtype=torch.int64)
        return torch.empty(0, 0), nothing, nothing
    feats_t, labels_t, indices_t = feats.all(), labels.all(), indices.all()
    if bool((indices_t[1:] >= indices_t[:-1]).all()):  # in order already, as a sequential loader gives them
        return feats_t, labels_t, indices_t
    order = indices_t.argsort()
    return feats_t[order], labels_t[order], indices_t[order]


class _Rows:
    """Rows (B, ...) added batch by batch: written into one tensor of ``total`` rows where the total is
    known (:meth:`all` is a view of its first rows: a loader may leave items out), else listed and
    concatenated at the end. Nothing of a batch is kept past its copy: small tensors kept batch by batch
    (labels, indices) lie scattered through the heap and keep glibc from handing back the memory freed
    around them."""

    def __init__(self, total: Optional[int]):
        self.total, self.count = total, 0
        self.out: Optional[torch.Tensor] = None
        self.listed: list[torch.Tensor] = []

    def add(self, rows: torch.Tensor) -> None:
        if self.out is None and self.total is not None and not self.listed:
            self.out = rows.new_empty((self.total, *rows.shape[1:]))
        if self.out is not None and self.count + len(rows) <= len(self.out) and rows.dtype == self.out.dtype:
            self.out[self.count:self.count + len(rows)] = rows
        else:  # no total, more rows than it said, or another dtype (cat promotes): listed from here on
            if self.out is not None:
                self.listed, self.out = [self.out[:self.count]], None
            self.listed.append(rows)
        self.count += len(rows)

    def all(self) -> torch.Tensor:
        return self.out[:self.count] if self.out is not None else torch.cat(self.listed)


def extract_features_sharded(encoder: nn.Module, images: torch.Tensor, device: torch.device,
                             **kwargs) -> torch.Tensor:
    """:func:`extract_features` with the images split across ranks and the
    features gathered back in order (every rank gets all of them); one process: no split."""
    import torch.distributed as td
    if not (td.is_available() and td.is_initialized()) or td.get_world_size() == 1:
        return extract_features(encoder, images, device=device, **kwargs)
    indices = torch.arange(td.get_rank(), len(images), td.get_world_size())
    features = extract_features(encoder, images[indices.to(images.device)], device=device, **kwargs)
    return gather_rows(features, indices, len(images), device)


def extract_batches_sharded(encoder: nn.Module, loader_for: Callable[[range], Iterable], n: int,
                            device: torch.device, **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`extract_features` over a data set of ``n`` items that is read in
    batches of ``(images, labels, indices)``: each rank reads its share (``loader_for(range)``),
    streamed, and every rank gets ``(features, labels, indices)`` of all the items the loaders
    yielded (a loader may leave some out, such as undecodable files), in data set order."""
    share = range(rank(), n, world_size())
    features, labels, indices = extract_features(encoder, loader_for(share), device=device, with_indices=True,
                                                 **kwargs)
    return _gather_present(features, labels, indices, n, device)


def extract_share(encoder: nn.Module, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, n: int,
                  device: torch.device, **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`extract_features` of the images this rank holds, the rows ``indices``
    of a data set of ``n`` (e.g. its share of a folder, decoded by this rank alone); every rank
    gets ``(features, labels, indices)`` of all ranks' rows, in data set order."""
    features = extract_features(encoder, images, device=device, **kwargs)
    return _gather_present(features, labels, indices, n, device)


def _gather_present(features: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, n: int,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every rank's rows, put in data set order, leaving out the indices no rank had."""
    if world_size() == 1:
        return features, labels, indices
    import torch.distributed as td
    dim = torch.tensor([features.shape[1]], device=device)  # a rank that had nothing has (0, 0)
    td.all_reduce(dim, op=td.ReduceOp.MAX)
    features = features.reshape(len(features), int(dim))
    present = gather_rows(torch.ones(len(indices), dtype=torch.uint8), indices, n, device)
    keep = present.nonzero().flatten()
    return (gather_rows(features, indices, n, device)[keep], gather_rows(labels, indices, n, device)[keep], keep)
