"""The data a pretraining run trains on, batch by batch from any step, and the labeled splits its kNN
monitor scores: from a config, on the device for small sets, streamed for folders."""

import itertools
import os
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch

from .build import load_size
from .config import Config, ConfigError, DataConfig
from .data import DataError, ImageSet, TensorBatches, data_home
from .dataset_files import FilesNotFound
from .datasets import NATIVE_SIZE, build_dataset
from .decoding_processes import end_now
from .folder import ImageFolder
from .folder_splits import labeled_folders, split_folder
from .loaders import folder_loader, load_folder_share, load_folder_tensor, start_pass_at


# The kNN monitor on a folder decodes this many images of each labeled split into memory, shared
# out over the processes, unless train.knn_limit says otherwise (10,000 at 256x256 is 2 GB a split;
# all of ImageNet's train split would be 250 GB).
FOLDER_KNN_LIMIT = 10_000


@dataclass
class TrainData:
    """What the loop iterates over, and the labeled splits for the kNN monitor."""
    batches: Union[TensorBatches, torch.utils.data.DataLoader]
    size: int
    knn_train: Optional[ImageSet] = None
    knn_test: Optional[ImageSet] = None
    folder: Optional[ImageFolder] = None  # the ImageFolder, for its skipped files
    knn_sizes: Optional[tuple[int, int]] = None  # a folder's splits: each process holds its share of them
    knn_query: str = "test"  # what the kNN monitor's queries are: test, held-out train, or a folder's val
    # a resumed folder run's: how many of its files the checkpoint's skipped_files.txt named (None: unknown)
    skipped_at_checkpoint: Optional[int] = None
    knn_decoded: Optional[tuple[int, int]] = None  # a folder's splits: the images decoded, all processes'

    @property
    def knn_images(self) -> Optional[tuple[int, int]]:
        """The images of the kNN monitor's bank and queries (all processes', decoded); None: no monitor."""
        if self.knn_train is None:
            return None
        return self.knn_decoded or (len(self.knn_train), len(self.knn_test))

    @cached_property
    def names_digest(self) -> Optional[str]:
        """A folder's file names, digested (None for a data set of tensors), for a resume to compare and
        the checkpoints to record: once a run (0.05 s for 1.3M names)."""
        return self.folder.names_digest() if self.folder is not None else None

    def epoch(self, epoch: int) -> Iterator:
        self._set_epoch(epoch)
        return iter(self.batches)

    def start_at(self, epoch: int, index: int) -> int:
        """Have the next pass of ``epoch`` start at its ``index``-th batch where that needs no
        decoding of the batches before (a streamed folder's); return how many batches that skips
        (``index``, or 0: the caller skips them on the pass, decoding them). Only where the list of
        undecodable files read back names as many under the root as the checkpoint's did: a list
        deleted would start elsewhere (a folder since moved and resumed with its new ``data.root``: its list read back
        under the new place, :meth:`~byol.folder.ImageFolder.read_skipped`)."""
        if not index or self.folder is None or not isinstance(self.batches, torch.utils.data.DataLoader):
            return 0
        if self.skipped_at_checkpoint is None or self.folder.skipped_inside() < self.skipped_at_checkpoint:
            return 0
        self._set_epoch(epoch)
        return index if start_pass_at(self.batches, index) else 0

    def _set_epoch(self, epoch: int) -> None:
        sampler = getattr(self.batches, "sampler", None)
        for obj in (self.batches, sampler):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)

    def close(self) -> None:
        """Stop a streamed folder's decoding processes (kept from epoch to epoch) now, not when the
        loader is collected: a failed run's traceback, which a notebook keeps, holds it; busy ones too, not
        awaited (:func:`~byol.decoding_processes.end_now`: a run stopped by a signal waited 5 s and more for each)."""
        workers = getattr(self.batches, "_iterator", None)  # DataLoader's, with persistent_workers
        if workers is not None and hasattr(workers, "_shutdown_workers"):
            end_now(workers)
            self.batches._iterator = None


def load_data(config: Config, device: torch.device, rank: int, world: int) -> TrainData:
    """The training split (on the device for small sets, streamed for folders) and kNN splits."""
    t = config.train
    if t.batch_size % world:
        raise ConfigError(f"train.batch_size={t.batch_size} must be divisible by the {world} processes")
    batches, n, folder, scanned = _training_split(config, device, rank, world)
    knn_train = knn_test = knn_sizes = decoded = None
    query = "test"
    if t.knn_every >= 0:
        knn_train, knn_test, knn_sizes, query, decoded = _knn_splits(config, device, rank, world, folder, scanned)
    return TrainData(batches, n, knn_train, knn_test, folder, knn_sizes, query, knn_decoded=decoded)


def _check_train_split(config: Config) -> None:
    """A folder's ``data.train_split`` other than the default names a sub-folder that is there: a
    misspelt one would train on the whole folder, its val/ too (a user test)."""
    d = config.data
    root = Path(d.root).expanduser()
    if d.dataset != "folder" or d.train_split == DataConfig.train_split or not root.is_dir():
        return  # (a missing root is the data set's own error)
    if not (root / d.train_split).is_dir():
        with os.scandir(root) as entries:
            subs = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        there = f"its sub-folders are {', '.join(subs[:8])}{', ...' if len(subs) > 8 else ''}" if subs else \
            "it has no sub-folders"
        default = root / DataConfig.train_split  # (a user test: ROOT/train as the root, named ROOT/train/train)
        on = f"on {default}" if default.is_dir() else f"on all of {root}, which has no {DataConfig.train_split} folder"
        raise DataError(f"data.train_split={d.train_split}, but {root} has no folder {d.train_split} ({there}); "
                        f"leave data.train_split at {DataConfig.train_split} to train {on}")


def _note_limit_above(d: DataConfig, n: int, rank: int) -> None:
    """``data.limit`` above the training split's size takes all of it: said (a run's image count alone said so)."""
    if d.limit > n and rank == 0:
        print(f"note: data.limit={d.limit:,} is above the {n:,} images of the training split: all of them are used",
              file=sys.stderr)


def _training_split(config: Config, device: torch.device, rank: int, world: int):
    """This process's batches of the training split, its size, the folder it streams from (or None), and
    the split as read, before ``data.limit``: a folder as scanned (which the kNN monitor's bank is spread
    over), CIFAR's or STL-10's images (which its bank is, where they are the train split)."""
    d, t = config.data, config.train
    per_rank = t.batch_size // world
    _check_train_split(config)
    source = build_dataset(d.dataset, d.root, d.train_split, load_size(config), d.download)
    if d.limit:
        _note_limit_above(d, len(source), rank)
    if d.load_size and d.dataset in NATIVE_SIZE and rank == 0:
        side = NATIVE_SIZE[d.dataset]
        print(f"note: data.load_size={d.load_size} is not used: {d.dataset} is read at its own {side}x{side} "
              f"(data.image_size={d.image_size} is the size of its views)", file=sys.stderr)
    if d.workers != DataConfig.workers and d.dataset in NATIVE_SIZE and rank == 0:
        print(f"note: data.workers={d.workers} is not used: {d.dataset} is held in memory and batched by index, "
              "with no decoding processes", file=sys.stderr)
    folder = scanned = None
    if not isinstance(source, ImageSet):
        for said in source.notes() if rank == 0 else []:
            print(f"note: {said}", file=sys.stderr)
        sub = Path(d.root).expanduser() / d.train_split
        if sub.is_dir() and split_folder(d.root, d.train_split) is None and rank == 0:  # one class of many
            print(f"note: {sub} is read as a class of {d.root}, as its other sub-folders are, not as its "
                  f"{d.train_split}/ split: a split has val/ or test/ beside it", file=sys.stderr)
        if d.load_size and d.load_size < d.image_size and rank == 0:
            print(f"note: data.load_size={d.load_size} is below data.image_size={d.image_size}: each image is decoded "
                  f"to {d.load_size}x{d.load_size} and its crops are scaled up to {d.image_size}x{d.image_size}",
                  file=sys.stderr)
        scanned = source
        if d.limit:  # before decoding anything
            source = source.subset(torch.arange(min(d.limit, len(source))))
        folder = source
        if d.on_device is True:  # small folders: decode once, then train from device memory
            source = load_folder_tensor(source, d.workers, why="to train from memory (data.on_device=true)")
    if isinstance(source, ImageSet):
        scanned = source if scanned is None else scanned
        if d.limit:
            source = source.first(d.limit)
        home = data_home(d.on_device, source.images.nbytes, device)
        if home != device and rank == 0:
            print(f"note: the training set ({source.images.nbytes / 2**30:.1f} GiB) stays in host memory and "
                  f"each batch is copied to {device}" + (" (data.on_device=auto: it would take more than a "
                  "quarter of the device's memory; data.on_device=true puts it there)"
                  if d.on_device == "auto" else ""), file=sys.stderr)
        labels = source.labels.to(home) if source.labels is not None else None
        batches = TensorBatches(source.images.to(home), labels, per_rank, generator=t.seed,
                                rank=rank, world_size=world)
        return batches, len(source), folder, scanned
    sampler = None
    if world > 1:
        sampler = torch.utils.data.DistributedSampler(source, world, rank, shuffle=True, seed=t.seed,
                                                      drop_last=True)
    batches = folder_loader(source, per_rank, d.workers, sampler=sampler, seed=t.seed)
    n = len(source)
    if len(batches) == 0:
        raise DataError(f"a batch of {t.batch_size} images does not fit in the {n} image{'s' * (n != 1)} of "
                        f"{d.root}; " + ("use a smaller train.batch_size" if n >= 2 else
                                         "training needs at least two, for a batch of two"))
    return batches, n, folder, scanned


def held_out(train: ImageSet, n: int) -> tuple[ImageSet, ImageSet]:
    """``train`` as (memory bank, queries) for ``train.knn_holdout``: ``n`` images drawn once with a fixed
    seed (the same for every run and ``train.seed``), each part in the split's order. The draw is NumPy's
    legacy ``RandomState``, whose stream NumPy keeps fixed across versions (torch's is not promised)."""
    if n >= len(train):
        raise DataError(f"holding out {n:,} images leaves no memory bank: the train split has {len(train):,}; "
                        "hold out fewer (train.knn_holdout, or eval's --holdout)")
    order = torch.from_numpy(np.random.RandomState(0).permutation(len(train)))
    return train.take(order[n:].sort().values), train.take(order[:n].sort().values)


def _note_scans(splits: tuple, folder: ImageFolder) -> None:
    """Say what the scans of the kNN monitor's splits left out (HEIC files, run folders, links out of
    them), for each split but the training folder, whose notes were said with it."""
    for split in splits:
        if split.root != folder.root:
            for said in split.notes():
                print(f"note: {said}", file=sys.stderr)


def _knn_splits(config: Config, device: torch.device, rank: int, world: int, folder: Optional[ImageFolder],
                scanned: Union[ImageFolder, ImageSet, None] = None):
    """The kNN monitor's (train, test) splits, for a folder their full sizes in files (each process holds
    its share), what the queries are (test, held-out train, val), and for a folder how many images of
    each split were decoded (all processes'); Nones where the data set has no labeled splits. A folder's
    files that cannot be decoded go with the training ``folder``'s, into the run's skipped_files.txt.
    ``scanned``: the training folder, whole, which is not scanned again for the bank where it is ROOT/train; or
    CIFAR's or STL-10's training images, whole, which are not read again for the bank where they are its train split."""
    d, t = config.data, config.train
    size = load_size(config)
    if d.dataset in ("cifar10", "cifar100", "stl10"):
        try:  # the training images where they are the train split: read once, held once (150 MB for CIFAR)
            trained_on = isinstance(scanned, ImageSet) and d.train_split == "train"
            knn_train = scanned if trained_on else build_dataset(d.dataset, d.root, "train", size, False)
            if t.knn_holdout:
                knn_train, knn_test = held_out(knn_train, t.knn_holdout)
            else:
                knn_test = build_dataset(d.dataset, d.root, "test", size, False)
        except FilesNotFound as e:  # (pretraining on STL-10's unlabeled split alone, say: a user test)
            raise DataError(f"{e.what}; the kNN monitor scores the labeled train and test splits: put them there, "
                            "or turn the monitor off with --train.knn_every=-1") from None
        if t.knn_limit:
            knn_train, knn_test = knn_train.first(t.knn_limit), knn_test.first(t.knn_limit)
        return knn_train, knn_test, None, "held-out train" if t.knn_holdout else "test", None
    try:  # ROOT/train with ROOT/val beside it: monitor on both
        splits = labeled_folders(d.root, size, t.knn_limit or FOLDER_KNN_LIMIT, scanned)
    except DataError as e:
        if rank == 0:
            print(f"note: no kNN monitor: {e}", file=sys.stderr)
        return None, None, None, "test", None
    if splits is None:
        if rank == 0:
            print(f"note: no kNN monitor: {d.root} is not ROOT/train of a folder with ROOT/val (or test) "
                  "beside it", file=sys.stderr)
        return None, None, None, "test", None
    if rank == 0:
        _note_scans(splits, folder)
    knn_train, knn_test = (load_folder_share(s, rank, world, d.workers, why="for the kNN monitor") for s in splits)
    for s in splits:
        folder.bad_files.update(s.bad_files)
    decoded = torch.tensor([len(knn_train), len(knn_test)], device=device)
    if world > 1:  # every rank learns now, not at the first evaluation, that a split has nothing
        import torch.distributed as td
        td.all_reduce(decoded)
    if not decoded.all():
        raise DataError(f"none of the image files of a kNN monitor split beside {d.root} (train, val or "
                        "test) could be decoded; check the files, or turn the monitor off with "
                        "train.knn_every=-1")
    return (knn_train, knn_test, (len(splits[0]), len(splits[1])), Path(splits[1].root).name,
            tuple(int(n) for n in decoded.tolist()))


def step_images(data: TrainData, step: int, steps_per_epoch: int, batch: int) -> Iterator[torch.Tensor]:
    """The batches of global steps ``step``, ``step + 1``, ...: each ``batch`` images, where the data
    is (the device, or host memory for a set kept there and a streamed folder)."""
    epoch, index = divmod(step, steps_per_epoch)
    while True:
        # resuming mid-epoch: the order is a function of the epoch, so the skipped batches are those
        # the run took, the epoch's restarts included; a streamed folder's in its order, not decoded
        skipped = data.start_at(epoch, index)
        batches = epoch_batches(data, epoch, started_later=skipped > 0)
        for images, _, _ in itertools.islice(batches, index - skipped, steps_per_epoch - skipped):
            if len(images) < batch:  # a streamed batch that lost undecodable files: filled up with
                # repeats of its own images, so that every step has one shape (a compiled step would
                # compile again for each new batch size)
                images = images[torch.arange(batch) % len(images)]
            yield images
        epoch, index = epoch + 1, 0


def epoch_batches(data: TrainData, epoch: int, started_later: bool = False) -> Iterator[tuple]:
    """The batches of ``epoch``, begun again each time they run out: a folder epoch comes up short
    where whole batches of its files could not be decoded. ``started_later``: the first pass starts
    after the epoch's first batch (:meth:`TrainData.start_at`), and may hold none that decodes."""
    while True:
        batches = data.epoch(epoch)
        first = next(batches, None)
        if first is None and not started_later:  # not one file of this process's share could be decoded
            raise data.folder.nothing_decoded()
        started_later = False
        if first is not None:
            yield first
            yield from batches
