"""Pretraining: the loop, as straight-line code, over the library's building blocks."""

import copy
import os
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Optional, Union

import torch
from torch import nn

from . import distributed as dist
from .augment import Augment, view_presets
from .backbones import resnet
from .checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint, set_rng_state
from .config import Config, ConfigError, changed_settings, config_from_dict, save_config
from .data import DataError, ImageSet, TensorBatches, build_dataset, data_home
from .folder import folder_loader, labeled_folders, load_folder_share, load_folder_tensor
from .evaluate import knn_accuracy
from .faults import NonFiniteGuard, StopRequest
from .metrics import MetricsLog, plot_metrics
from .model import BYOL
from .monitor import CollapseMonitor
from .optim import build_optimizer
from .run_folder import RunFolder
from .step import GraphedLoopStep, LoopStep, ViewsForward, compile_step, keep_freed_memory


def resolve_device(name: str) -> torch.device:
    """``auto`` picks this process's CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{dist.local_rank()}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no CUDA GPU is available; use train.device=cpu")
    return device


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """bf16 on GPUs that support it (``auto``), or as asked; ``None`` means float32."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision in ("auto", "bf16"):
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            if precision == "bf16":
                raise ConfigError("train.precision=bf16 but this GPU has no bfloat16; use fp32")
            return None
        return torch.bfloat16
    raise ConfigError(f"train.precision={precision!r}; choose auto, bf16 or fp32")


def build_model(config: Config) -> BYOL:
    """The BYOL model of a config: backbone by name, cut at its average pool, with its view recipes."""
    m = config.model
    net = resnet(m.backbone, cifar_stem=m.cifar_stem, width=m.width)
    view1, view2 = views_of(config)
    return BYOL(net, image_size=config.data.image_size, hidden_layer="avgpool",
                projection_size=m.projection_size, projection_hidden_size=m.projection_hidden_size,
                augment_fn=Augment(view1), augment_fn2=Augment(view2), moving_average_decay=config.train.tau_base,
                use_predictor=m.use_predictor, concat_views=m.concat_views,
                sync_batchnorm=False)  # under torchrun the loop converts the whole model (dist.convert_sync_batchnorm)


def views_of(config: Config):
    """The two view recipes of a config."""
    try:
        view1, view2 = view_presets(config.augment.preset, config.data.image_size)
        if config.augment.crop_min_scale is not None:
            scale = (config.augment.crop_min_scale, 1.0)
            view1, view2 = replace(view1, crop_scale=scale), replace(view2, crop_scale=scale)
        return view1, view2
    except ValueError as e:
        raise ConfigError(str(e)) from None


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
    folder: Optional[object] = None  # the ImageFolder, for its skipped files
    knn_sizes: Optional[tuple[int, int]] = None  # a folder's splits: each process holds its share of them

    def epoch(self, epoch: int) -> Iterator:
        sampler = getattr(self.batches, "sampler", None)
        for obj in (self.batches, sampler):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        return iter(self.batches)


def load_data(config: Config, device: torch.device, rank: int, world: int) -> TrainData:
    """The training split (on the device for small sets, streamed for folders) and kNN splits."""
    d, t = config.data, config.train
    if t.batch_size % world:
        raise ConfigError(f"train.batch_size={t.batch_size} must be divisible by the {world} processes")
    per_rank = t.batch_size // world
    size = d.load_size or (d.image_size if d.dataset != "folder" else round(d.image_size * 8 / 7))
    source = build_dataset(d.dataset, d.root, d.train_split, size, d.download)
    folder = None
    if not isinstance(source, ImageSet):
        if d.limit:  # before decoding anything
            source = source.subset(torch.arange(min(d.limit, len(source))))
        folder = source
        if d.on_device is True:  # small folders: decode once, then train from device memory
            source = load_folder_tensor(source, d.workers)
    if isinstance(source, ImageSet):
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
        n = len(source)
    else:
        sampler = None
        if world > 1:
            sampler = torch.utils.data.DistributedSampler(source, world, rank, shuffle=True, seed=t.seed,
                                                          drop_last=True)
        batches = folder_loader(source, per_rank, d.workers, sampler=sampler, seed=t.seed)
        n = len(source)
        if len(batches) == 0:
            raise DataError(f"a batch of {t.batch_size} images does not fit in the {n} images of {d.root}; "
                            + ("use a smaller train.batch_size" if n >= 2 else "training needs two at least"))
    knn_train = knn_test = knn_sizes = None
    if t.knn_every >= 0 and d.dataset in ("cifar10", "cifar100", "stl10"):
        knn_train = build_dataset(d.dataset, d.root, "train", size, False)
        knn_test = build_dataset(d.dataset, d.root, "test", size, False)
        if t.knn_limit:
            knn_train, knn_test = knn_train.first(t.knn_limit), knn_test.first(t.knn_limit)
    elif t.knn_every >= 0 and d.dataset == "folder":  # ROOT/train with ROOT/val beside it: monitor on both
        try:
            splits = labeled_folders(d.root, size, t.knn_limit or FOLDER_KNN_LIMIT)
        except DataError as e:
            splits = None
            if rank == 0:
                print(f"note: no kNN monitor: {e}", file=sys.stderr)
        else:
            if splits is None and rank == 0:
                print(f"note: no kNN monitor: {d.root} is not ROOT/train of a folder with ROOT/val (or test) "
                      "beside it", file=sys.stderr)
        if splits is not None:
            knn_train, knn_test = (load_folder_share(s, rank, world, d.workers) for s in splits)
            knn_sizes = len(splits[0]), len(splits[1])
            decoded = torch.tensor([len(knn_train), len(knn_test)], device=device)
            if world > 1:  # every rank learns now, not at the first evaluation, that a split has nothing
                import torch.distributed as td
                td.all_reduce(decoded)
            if not decoded.all():
                raise DataError(f"none of the image files of a kNN monitor split beside {d.root} (train, val or "
                                "test) could be decoded; check the files, or turn the monitor off with "
                                "train.knn_every=-1")
    return TrainData(batches, n, knn_train, knn_test, folder, knn_sizes)


def knn_eval(model: BYOL, data: TrainData, config: Config, device: torch.device,
             amp: Optional[torch.dtype]) -> dict[int, float]:
    """kNN top-1 of the online encoder on the held-out split (a collective under torchrun:
    features are extracted on every rank's share and gathered with their indices)."""
    view1, _ = views_of(config)
    kwargs = dict(batch_size=512, mean=view1.mean, std=view1.std, amp_dtype=amp)
    splits = (data.knn_train, data.knn_test)
    if data.knn_sizes is not None:  # each process holds its share
        (train_f, train_y, _), (test_f, test_y, _) = (
            dist.extract_share(model.encoder, s.images, s.labels, s.indices, n, device, **kwargs)
            for s, n in zip(splits, data.knn_sizes))
    else:
        (train_f, train_y), (test_f, test_y) = (
            (dist.extract_features_sharded(model.encoder, s.images, device, **kwargs), s.labels) for s in splits)
    ks = sorted({20, config.train.knn_k})
    return knn_accuracy(train_f, train_y, test_f, test_y, ks=ks, device=device)


def _build(config: Config, device: torch.device, rank: int, world: int):
    """The model, its optimizer and this process's augmentation generator, seeded by ``train.seed``."""
    t, o = config.train, config.optim
    # Seeded here, so the initial weights depend on the seed alone, not on what loading drew:
    # `byol eval --random-init` rebuilds them.
    torch.manual_seed(t.seed + rank)
    byol = build_model(config).to(device)
    if world > 1:
        byol = dist.convert_sync_batchnorm(byol, device)
    optimizer = build_optimizer(o.name, nn.ModuleList([byol.online, byol.predictor]), lr=o.lr,
                                weight_decay=o.weight_decay, momentum=o.momentum,
                                trust_coefficient=o.trust_coefficient)
    generator = torch.Generator(device=device).manual_seed(t.seed + rank)
    return byol, optimizer, generator


def _restore(ckpt_path: Path, config: Config, byol: BYOL, optimizer: torch.optim.Optimizer,
             generator: torch.Generator, rank: int, world: int) -> int:
    """Load the run's last checkpoint into the model, optimizer and generators; return its step."""
    state = load_checkpoint(ckpt_path, map_location="cpu")  # RNG states must stay on the CPU
    load_model_state(byol, state["model"], str(ckpt_path))
    saved_optim = state["config"].get("optim", {}).get("name")
    if saved_optim != config.optim.name:
        raise CheckpointError(f"{ckpt_path} was trained with optim.name={saved_optim}; resume with the "
                              "same optimizer")
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"the optimizer state in {ckpt_path} does not fit this run ({e})") from None
    set_rng_state(state["rng"], generator)
    per_rank = state.get("extra", {}).get("generator_per_rank")
    if world > 1 and per_rank is not None and len(per_rank) == world:
        generator.set_state(per_rank[rank])  # rank 0 saved every rank's augmentation stream
    try:  # the saved values read as a config would be (e.g. an older file's on_device "false" is False)
        saved = config_from_dict(state["config"]).to_dict()
    except ConfigError:  # a key this version no longer has
        saved = state["config"]
    changed = changed_settings(saved, config.to_dict())
    if changed and rank == 0:
        print(f"note: resuming with settings that differ from the checkpoint's: {', '.join(changed)}",
              file=sys.stderr)
    return state["step"]


def _with_absolute_root(config: Config) -> Config:
    config = copy.deepcopy(config)
    config.data.root = os.path.abspath(os.path.expanduser(config.data.root))
    return config


class NonFiniteLossError(FloatingPointError):
    """The loss stayed NaN or infinite for too many steps in a row."""


def pretrain(config: Config, resume: bool = False) -> dict:
    """Pretrain with BYOL as ``config`` says; return the final metrics.

    On a CPU it first makes this process's C allocator keep freed memory
    (:func:`~byol.step.keep_freed_memory`, for the rest of the process's life) unless
    ``config.train.keep_freed_memory`` is false.

    Writes into ``config.train.out_dir``: ``config.yaml``, ``metrics.jsonl``, ``tensorboard/``,
    ``checkpoints/last.pt`` (and every ``checkpoint_every`` epochs), and PNG plots. SIGTERM or
    SIGINT finishes the current step, writes the checkpoint and returns (``results["stopped_by"]``).
    A start that fails before its first step has finished leaves the folder as it found it.
    """
    config = _with_absolute_root(config)  # so the saved config finds the data from any directory
    rank, world = dist.init()
    folder = RunFolder(Path(config.train.out_dir), resume) if rank == 0 else None
    try:
        return _pretrain(config, resume, rank, world, folder)
    except BaseException:
        if folder is not None:
            folder.undo()  # only while no step has finished
        raise


def _loop_step_class(cuda_graph: bool, device: torch.device, world: int) -> type:
    """LoopStep, or with ``train.cuda_graph`` the experimental GraphedLoopStep where it can run."""
    if not cuda_graph:
        return LoopStep
    if device.type != "cuda":
        raise ConfigError(f"train.cuda_graph=true needs a CUDA GPU (it replays the step from a CUDA graph), and this "
                          f"run is on {device}; use train.cuda_graph=false")
    if world > 1:
        raise ConfigError(f"train.cuda_graph=true runs in one process, not {world} (the graph holds no "
                          "collectives); use train.cuda_graph=false")
    return GraphedLoopStep


def _pretrain(config: Config, resume: bool, rank: int, world: int, folder: Optional[RunFolder]) -> dict:
    t, o = config.train, config.optim
    device = resolve_device(t.device)
    amp = autocast_dtype(t.precision, device)
    step_class = _loop_step_class(t.cuda_graph, device, world)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution kernels once
    elif t.keep_freed_memory:
        keep_freed_memory()  # no page faults for each step's activations (glibc; elsewhere a no-op)
    run_dir = Path(t.out_dir)
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    data = load_data(config, device, rank, world)
    byol, optimizer, generator = _build(config, device, rank, world)
    step = _restore(ckpt_path, config, byol, optimizer, generator, rank, world) if resume else 0
    steps_per_epoch = len(data.batches)
    total_steps = t.epochs * steps_per_epoch
    warmup_steps = round(o.warmup_epochs * steps_per_epoch)
    lr = o.lr * t.batch_size / 256
    end_step = min(total_steps, t.max_steps) if t.max_steps else total_steps
    if step >= end_step:  # a finished run resumed: nothing to train, nothing rewritten
        if rank == 0:
            limit = f"train.max_steps={t.max_steps}" if end_step < total_steps else f"train.epochs={t.epochs}"
            print(f"note: the run in {run_dir} is finished: step {step}, and {limit} ends it; to train on, resume "
                  "with a larger value", file=sys.stderr)
        return {"step": step, "checkpoint": str(ckpt_path)}
    if rank == 0:
        save_config(config, run_dir / "config.yaml")
    skipped_path = run_dir / "skipped_files.txt"
    if resume and rank == 0 and data.folder is not None:
        data.folder.read_skipped(skipped_path)  # the files the run skipped before it stopped
    batch_per_rank = t.batch_size // world
    forward = dist.wrap_ddp(ViewsForward(byol), device) if world > 1 else ViewsForward(byol)
    augment = None  # byol's own view recipes
    # auto is eager for now: the compiled step is not yet verified on a GPU (BENCHMARKS.md, "GPU": on the
    # first one lent, its first steps did not end within 4 minutes and its CUDA loss test failed).
    # Once it is, auto should compile on a single GPU (on a CPU it does not pay), and not with train.cuda_graph.
    if t.compile is True:
        forward, augment = compile_step(forward, byol)  # loss and both augmentations; eager where that fails
        if rank == 0:
            print("compiling the training step (torch.compile): the first steps can take several minutes",
                  file=sys.stderr)
    extra: dict = {}
    save = lambda path: save_checkpoint(path, byol, optimizer, step, config.to_dict(), generator,  # noqa: E731
                                        extra=extra)
    log = folder.metrics_log(resume_step=step if resume else None) if folder is not None else None
    results: dict = {}
    if data.knn_train is not None and step == 0:
        results["knn_init"] = _log_knn(log, 0, knn_eval(byol, data, config, device, amp), t.knn_k)
    progress = _progress(t, rank, step, end_step, t.batch_size)
    guard = NonFiniteGuard([byol.online, byol.predictor], optimizer, device)
    loop_step = step_class(forward, byol, optimizer, generator, amp, augment, guard, lr, warmup_steps, total_steps,
                           t.tau_base)
    if t.cuda_graph and rank == 0:
        print("note: train.cuda_graph=true is experimental (not yet verified on a GPU): after "
              f"{loop_step.eager_steps} eager steps, each step's augmentation, forward and backward are replayed "
              "from one CUDA graph", file=sys.stderr)
    monitor = CollapseMonitor()
    last_time, last_step = time.perf_counter(), step
    last_save = last_time
    batches = None
    with StopRequest() as stop:
        while step < end_step:
            epoch, index = divmod(step, steps_per_epoch)
            if batches is None or index == 0:
                batches = data.epoch(epoch)
                for _ in range(index):  # resuming mid-epoch: the order is a function of the epoch
                    next(batches)
            try:
                images, _, _ = next(batches)
            except StopIteration:  # a folder epoch came up short (whole batches of undecodable files)
                batches = data.epoch(epoch)
                images, _, _ = next(batches, (None, None, None))
                if images is None:  # not one file of this process's share could be decoded
                    raise data.folder.nothing_decoded()
            if len(images) < batch_per_rank:  # a streamed batch that lost undecodable files: filled up
                # with repeats of its own images, so that every step has one shape (a compiled step
                # would compile again for each new batch size)
                images = images[torch.arange(batch_per_rank) % len(images)]
            images = images.to(device, non_blocking=True)  # streamed folders (pinned) or a host-kept set
            loss, z1 = loop_step(step, images)
            step += 1
            if folder is not None:
                folder.started = True  # from here on, what this start wrote stays
            if progress is not None:
                progress.update(t.batch_size)
            stopping = stop.requested if world == 1 else False
            if step % t.log_every == 0 or step == end_step:
                record = loop_step.read(z1)  # the host sync, once every log_every steps
                now = time.perf_counter()
                record["train/images_per_s"] = (step - last_step) * t.batch_size / (now - last_time)
                last_time, last_step = now, step
                if log is not None:
                    log.log(step, **record)
                warning = monitor.check(record["monitor/z_std"], record["monitor/effective_rank"], z1.shape[1],
                                        step)
                if warning and folder is not None:
                    folder.warn(warning, step)
                if record["train/nonfinite_streak"] >= t.max_nonfinite:
                    raise _nonfinite(record["train/nonfinite_streak"], step, "so the run stopped", ckpt_path)
                if progress is not None:
                    progress.set_postfix(loss=f"{record['train/loss']:.4f}", epoch=epoch)
                results["loss"] = record["train/loss"]
                stopping = dist.any_rank(stop.requested, device) if world > 1 else stopping
            epoch_done = step % steps_per_epoch == 0
            if epoch_done or step == end_step or stopping:
                done_epochs = step // steps_per_epoch
                if data.knn_train is not None and not stopping and (
                        step == end_step or (t.knn_every > 0 and epoch_done and done_epochs % t.knn_every == 0)):
                    results["knn"] = _log_knn(log, step, knn_eval(byol, data, config, device, amp), t.knn_k)
                keep = epoch_done and t.checkpoint_every > 0 and done_epochs % t.checkpoint_every == 0
                due = (keep or stopping or step == end_step
                       or time.perf_counter() - last_save >= t.save_interval_s)
                if world > 1:  # collectives: every rank reaches this point at the same step
                    due = dist.any_rank(due, device)  # the clocks differ; one rank due is enough
                    if due:
                        extra["generator_per_rank"] = dist.gather_generator_states(generator)
                        if data.folder is not None:  # each rank met the bad files of its own share
                            data.folder.bad_files = dist.merge_dicts(data.folder.bad_files)
                # Never overwrite a good checkpoint with weights giving NaN losses (the streak is the
                # same on every rank); the interval then runs from the last write, not from this step.
                if due and int(guard.streak.item()) == 0:
                    if rank == 0:
                        save(ckpt_path)
                        if data.folder is not None:  # so far (every rank's), kept if the run dies
                            data.folder.write_skipped(skipped_path)
                        if keep:
                            save(run_dir / "checkpoints" / f"epoch_{done_epochs:04d}.pt")
                        plot_metrics(run_dir / "metrics.jsonl")
                    last_save = time.perf_counter()
            if stopping:
                if step < end_step:  # a signal in the last step: the run is complete all the same
                    results["stopped_by"] = signal.Signals(stop.signum or signal.SIGTERM).name
                break
    if progress is not None:
        progress.close()
    if data.folder is not None:  # streamed, each rank met only the bad files in its own share
        data.folder.bad_files = dist.merge_dicts(data.folder.bad_files)
    if rank == 0:
        log.close()
        if data.folder is not None:
            results["skipped_files"] = data.folder.write_skipped(skipped_path)
    streak = int(guard.streak.item())
    if streak:  # the run ended (or was stopped) on undone steps, so that end was not saved
        raise _nonfinite(streak, step, "up to the run's end, which was not saved", ckpt_path)
    results["step"] = step
    results["checkpoint"] = str(ckpt_path)
    return results


def _nonfinite(streak: int, step: int, what: str, ckpt_path: Path) -> NonFiniteLossError:
    if ckpt_path.is_file():
        then = (f"the last good checkpoint is {ckpt_path}; lower optim.lr or use train.precision=fp32, then continue "
                "with --resume")
    else:
        then = "no checkpoint was written; lower optim.lr or use train.precision=fp32 and start again"
    return NonFiniteLossError(f"the loss was NaN or infinite for {streak} steps in a row (by step {step}), {what}; "
                              f"{then}")


def _log_knn(log: Optional[MetricsLog], step: int, acc: dict[int, float], k: int) -> dict[int, float]:
    if log is not None:
        log.log(step, **{f"eval/knn_top1_k{kk}": v for kk, v in acc.items()}, **{"eval/knn_top1": acc[k]})
    return acc


def _progress(t, rank: int, step: int, end_step: int, batch_size: int):
    if not t.progress or rank != 0:
        return None
    from tqdm import tqdm
    return tqdm(total=end_step * batch_size, initial=step * batch_size, unit="img", unit_scale=True,
                desc="pretrain", dynamic_ncols=True, file=sys.stderr)
