"""Images in memory and their batches: what the readers give and what training draws from.

Every source gives RGB uint8 images, (N, 3, H, W) or (3, H, W), and int64 labels, -1 for an
unlabeled image. Nothing is augmented here: augmentation runs batched on the device
(``augment.py``), so the host only reads and decodes.

* CIFAR-10/100 and STL-10 (``datasets.py``) load into one :class:`ImageSet`; a small set is moved to
  the device once and batched there by :class:`TensorBatches` (:func:`data_home` says where it lives).
* A folder of image files is a :class:`~byol.folder.ImageFolder` (``folder.py``), decoded by
  DataLoader workers; a file that cannot be decoded is skipped and listed, never fatal.
"""

from dataclasses import dataclass
from typing import Iterator, Optional, Union

import torch

from .errors import ByolError


class DataError(ByolError):
    """A data set that cannot be found or read; the message says what is wrong and how to fix it."""


@dataclass
class ImageSet:
    """Images held in memory.

    Attributes:
        images: uint8 (N, 3, H, W), RGB.
        labels: int64 (N,), -1 for an unlabeled image; or None.
        classes: ``classes[label]`` is the class name; None when unknown or unlabeled.
        indices: int64 (N,), where each image comes from in its source (for an
            :class:`ImageFolder`, the index of its path, bad files being left out);
            None means ``0 .. N-1``.
    """

    images: torch.Tensor
    labels: Optional[torch.Tensor]
    classes: Optional[list[str]] = None
    indices: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: Union[str, torch.device]) -> "ImageSet":
        """The same set with its tensors on ``device`` (for :class:`TensorBatches`)."""
        def move(t):
            return None if t is None else t.to(device)

        return ImageSet(move(self.images), move(self.labels), self.classes, move(self.indices))

    def first(self, n: int) -> "ImageSet":
        """The first ``n`` images (all of them when there are fewer)."""
        def head(t):
            return None if t is None else t[:n]

        return ImageSet(self.images[:n], head(self.labels), self.classes, head(self.indices))

    def take(self, index: torch.Tensor) -> "ImageSet":
        """The images at ``index`` (int64), in its order; ``indices`` still say where each comes from."""
        where = torch.arange(len(self)) if self.indices is None else self.indices
        return ImageSet(self.images[index], None if self.labels is None else self.labels[index], self.classes,
                        where[index])


def data_home(setting: Union[bool, str], nbytes: int, device: torch.device,
              capacity: Optional[int] = None) -> torch.device:
    """Where a data set held as one uint8 tensor of ``nbytes`` lives while training on ``device``.

    ``setting`` is ``data.on_device``: ``True`` puts it on ``device`` (batches drawn there by
    index, nothing copied per step); ``False`` keeps it in host memory (each batch copied over);
    ``"auto"`` puts it on the device unless it would take more than a quarter of the device's
    memory (``capacity``, in bytes; by default the CUDA device's total, unknown elsewhere).
    """
    cpu = torch.device("cpu")
    if device.type == "cpu" or setting is False:
        return cpu
    if setting is True:
        return device
    if capacity is None and device.type == "cuda":
        capacity = torch.cuda.get_device_properties(device).total_memory
    return device if capacity is None or nbytes <= capacity // 4 else cpu


class TensorBatches:
    """Batches of an in-memory set already on the device: no DataLoader, no host sync.

    Each epoch draws one permutation on the images' device, from ``seed + epoch``, the same on
    every rank, and cuts it into global batches of ``batch_size * world_size``; rank ``r`` takes
    the ``r``-th share of each, so ranks get disjoint images in equal numbers and a step on N
    ranks sees the same images as one process with the global batch. With ``drop_last`` the ``n % world_size`` rest and the last incomplete
    batch are dropped; without it, the permutation is padded by wrapping around (as
    DistributedSampler does) and the last batch may be short. Call :meth:`set_epoch` before
    each epoch, or every epoch repeats the same order.

    Args:
        images: uint8 (N, 3, H, W); labels: (N,) on the same device, or None.
        batch_size: per process; the global batch is ``batch_size * world_size``.
        generator: the seed, an int or a ``torch.Generator`` (its ``initial_seed()``); it must
            be the same on every rank (not seed + rank), or the ranks' slices overlap.

    Yields ``(images (B, 3, H, W), labels (B,) or None, indices (B,))``.
    """

    def __init__(self, images: torch.Tensor, labels: Optional[torch.Tensor], batch_size: int,
                 shuffle: bool = True, drop_last: bool = True,
                 generator: Union[torch.Generator, int, None] = None, rank: int = 0, world_size: int = 1):
        if labels is not None and (labels.device != images.device or len(labels) != len(images)):
            raise ValueError("labels must have one entry per image, on the images' device")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        is_generator = isinstance(generator, torch.Generator)
        self.seed = generator.initial_seed() if is_generator else int(generator or 0)
        n = len(images)
        self.per_rank = n // world_size if drop_last else -(-n // world_size)
        if len(self) == 0:
            raise DataError(f"a batch of {batch_size} images per process x {world_size} processes does "
                            f"not fit in the data set ({n} images); use a smaller batch size")

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return -(-self.per_rank // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]]:
        n, device = len(self.images), self.images.device
        if self.shuffle:
            g = torch.Generator(device=device).manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g, device=device)
        else:
            order = torch.arange(n, device=device)
        total = self.per_rank * self.world_size
        if total > n:
            order = order.repeat(-(-total // n))[:total]
        step = self.batch_size * self.world_size
        for b in range(len(self)):
            # Rank r takes its share of each global batch, so a step on N ranks sees exactly the
            # images that one process would see with the global batch.
            global_batch = order[b * step:min((b + 1) * step, total)]
            share = len(global_batch) // self.world_size
            idx = global_batch[self.rank * share:(self.rank + 1) * share]
            labels = None if self.labels is None else self.labels.index_select(0, idx)
            yield self.images.index_select(0, idx), labels, idx

