"""A folder's images in batches: a DataLoader whose workers decode the files and that skips the
ones that cannot be (:func:`folder_loader`; its decoding processes: ``decoding_processes.py``), an epoch's
order as a function of the seed and the epoch (:class:`EpochShuffle`) that a resumed run can start in the
middle of without decoding the batches before (:func:`start_pass_at`), and a folder, or a process's share of
it, decoded into memory (:func:`load_folder_tensor`, :func:`load_folder_share`).
"""

import itertools
from typing import Iterable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Sampler

from .data import DataError, ImageSet
from .decoding_processes import _SkippingLoader, skip_collate, usable_cores
from .folder import ImageFolder
from .progress import SlowNotes


class EpochShuffle(Sampler[int]):
    """A shuffled order that is a function of ``(seed, epoch)`` alone, as DistributedSampler's is.

    A DataLoader's own shuffling draws each epoch's order from one generator that moves on from
    epoch to epoch, so a run resumed in epoch 3 would replay epoch 0's order; this one does not.
    """

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class _Resumable(Sampler[int]):
    """``sampler``'s order (an :class:`EpochShuffle`'s, a DistributedSampler's), whose next pass may
    start at a later position (:func:`start_pass_at`); the passes after it are whole."""

    def __init__(self, sampler: Iterable[int]):
        self.sampler, self.start = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return itertools.islice(iter(self.sampler), start, None)


def start_pass_at(loader: DataLoader, index: int) -> bool:
    """Have the next pass of ``loader`` (a :func:`folder_loader`'s, its epoch set) yield what the
    passes of its epoch yield from their ``index``-th batch on (an epoch whose undecodable batches
    ran it out early is begun again: see :class:`_SkippingLoader`), without decoding the batches
    before it. False where it cannot (no batch of the epoch decodes): the caller skips them itself.

    A batch whose files are all in the folder's ``bad_files`` yields nothing. A run resumed at
    ``index`` took the batches before it, so it met and listed (skipped_files.txt, which a resumed
    run reads) every bad file of them; files found bad later only move the start to a batch
    between the ``index - 1``-th yielded one and the ``index``-th, which yields the same.
    """
    sampler, size, folder = loader.sampler, loader.batch_size, loader.dataset
    if not isinstance(sampler, _Resumable) or not loader.drop_last:
        return False
    order = list(sampler.sampler)
    batches = range(len(order) // size)
    bad = folder.bad_files
    if bad:
        batches = [b for b in batches if not all(folder.path(i) in bad for i in order[b * size:(b + 1) * size])]
    if not batches:
        return False
    sampler.start = batches[index % len(batches)] * size
    return True


def folder_loader(dataset: ImageFolder, batch_size: int, workers: int, shuffle: bool = True,
                  drop_last: bool = True, sampler: Optional[Iterable[int]] = None, seed: int = 0,
                  persistent: bool = True) -> DataLoader:
    """A DataLoader over an :class:`ImageFolder` yielding ``(images uint8 (B, 3, S, S), labels, indices)``.

    Undecodable files are dropped from their batch and recorded in ``dataset.bad_files``
    (per process: with a DistributedSampler each rank sees its own share). ``sampler`` (a
    DistributedSampler, or any iterable of indices such as a rank's ``range``) replaces shuffling;
    otherwise the order is :class:`EpochShuffle`'s for ``seed`` and the epoch set with
    ``loader.sampler.set_epoch``; either can start a pass later (:func:`start_pass_at`). ``persistent``
    keeps the decoding processes from one pass to the next (training's epochs); a single pass's end
    with its iterator, also when it is interrupted (a notebook keeps the traceback, and a loader's
    kept processes with it).
    """
    if sampler is None and shuffle:
        sampler = EpochShuffle(len(dataset), seed)
    if sampler is not None:
        sampler = _Resumable(sampler)
    return _SkippingLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=skip_collate,
                           pin_memory=torch.cuda.is_available(), drop_last=drop_last,
                           persistent_workers=persistent and workers > 0, generator=_own_generator(seed))


def _own_generator(seed: int) -> torch.Generator:
    """The generator a DataLoader draws its processes' base seed from at each pass, which is the
    caller's global one otherwise (a notebook's later draws would move with each pass over a folder).
    Decoding draws nothing random, so any seed does."""
    return torch.Generator().manual_seed(seed)


def load_folder_share(dataset: ImageFolder, rank: int = 0, world: int = 1, workers: int = 0,
                      why: str = "") -> ImageSet:
    """This process's share of ``dataset`` (the files at ``rank``, ``rank + world``, ...), decoded
    into memory, bad files left out (and added to ``dataset.bad_files``); ``indices`` are positions
    in ``dataset``. One process: all of it, as :func:`load_folder_tensor` (``why``: its notes'). Under
    torchrun a share may be empty (all its files bad)."""
    positions = torch.arange(rank, len(dataset), world)
    empty = ImageSet(torch.empty(0, 3, dataset.size, dataset.size, dtype=torch.uint8),
                     torch.empty(0, dtype=torch.int64), dataset.classes, torch.empty(0, dtype=torch.int64))
    if len(positions) == 0:  # fewer files than processes
        return empty
    share_files = dataset.subset(positions)
    try:
        share = load_folder_tensor(share_files, workers, why=why)
    except DataError:
        if world == 1:
            raise
        return empty
    finally:
        dataset.bad_files.update(share_files.bad_files)
    share.indices = positions[share.indices]
    return share


def _decoding_batch(size: int, workers: int) -> int:
    """Images in a batch of :func:`load_folder_tensor`'s decoding processes: 64, or fewer where the batches they
    hold in shared memory at once (two each) would take over 32 MiB (a user test: the kNN monitor's 256 images
    of 256 x 256, 48 MiB a batch, filled Docker's 64 MB /dev/shm). Its notes count at each batch (a user test:
    batches of 256 big photos, 0.06-0.7 s each, said nothing for 26 s); 10,000 CIFAR JPEGs took 1.5 s in 2
    processes in batches of 64, 1.3 s in 256s and 1.8 s in 32s (2 cores)."""
    workers = min(workers, usable_cores())
    if workers == 0:  # decoded in this process: no shared memory
        return 64
    return max(1, min(64, 32 * 2**20 // (2 * workers * 3 * size * size)))


def load_folder_tensor(dataset: ImageFolder, workers: int = 0, why: str = "") -> ImageSet:
    """Decode a whole (small) :class:`ImageFolder` into one uint8 tensor, bad files left out; where that
    takes long, notes say how far it is (``why``: what for, said in them).

    ``indices`` in the result maps each row back to ``dataset.path(index)``.
    """
    n_all, s = len(dataset), dataset.size
    # (a user test at ImageNet scale: the kNN monitor's 20,000 images took some 2 minutes on 2 cores, unsaid)
    said = SlowNotes("decoding {total:,} images of {where}{why}: {count:,} done, {seconds:.0f} s",
                     "decoded {count:,} images of {where}{why} in {seconds:.0f} s",
                     total=n_all, where=dataset.where, why=f" {why}" if why else "")
    images = torch.empty((n_all, 3, s, s), dtype=torch.uint8)
    labels = torch.empty(n_all, dtype=torch.int64)
    indices = torch.empty(n_all, dtype=torch.int64)
    n = 0
    for x, y, i in _SkippingLoader(dataset, batch_size=_decoding_batch(s, workers), shuffle=False, num_workers=workers,
                                   collate_fn=skip_collate, generator=_own_generator(0)):
        images[n:n + len(i)], labels[n:n + len(i)], indices[n:n + len(i)] = x, y, i
        n += len(i)
        said.now(n)
    said.done(n)
    if n == 0:
        raise dataset.nothing_decoded()
    return ImageSet(images[:n], labels[:n], dataset.classes, indices[:n])
