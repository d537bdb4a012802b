"""Pretraining: the loop, as straight-line code, over the library's building blocks (its setup before the first
step: ``run_setup.py``)."""

import math
import os
import signal
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import nn

from . import distributed as dist
from .build import end_step_of, schedule_of
from .checkpoint import rng_state_kept
from .config import Config, TrainConfig
from .cuda_graph import loop_step_class
from .faults import NonFiniteGuard, StopRequest
from .given_net import as_given, given_to, note_trained_before, put_back, trained
from .knn_monitor import knn_monitor, logged_init, redraw_plots, score_the_end, score_unless_stopped
from .decoding_processes import refuse_to_start_again
from .metrics import MetricsLog, read_metrics
from .precision import bf16_taken, checked_precision, precision_name, usual_torch_defaults
from .progress import progress_bar
from .reporting import (Clock, Report, epoch_line, log_knn, nonfinite_error, note_cuda_graph, note_finished,
                        stop_line)
from .resume import load_resumed, restore
from .run_folder import (RunFolder, last_checkpoint, note_new_start, read_warnings,
                         refuse_resume_without_checkpoint)
from .run_setup import before_first_step, build_run, checked_run_config, load_run_data, prepare_device
from .saving import Checkpoints
from .step import LoopStep, step_forward
from .train_data import TrainData, step_images


def pretrain(config: Config, resume: Union[bool, str] = False, *, net: Optional[nn.Module] = None,
             hidden_layer: Union[str, int, None] = -2) -> dict:
    """Pretrain with BYOL as ``config`` says; return the final metrics (``step``; ``loss`` once a
    train record was logged; ``knn``, ``knn_init``, ... where measured; ``time_s``, the run's seconds
    since its first step, and ``images_per_s``, this start's training throughput) and what the run ran on
    (``device``, and ``precision``: ``"bf16 autocast"`` or ``"float32"``, what ``train.precision``
    resolved to there). On rank 0 also ``warnings``: the lines
    of the run's ``warnings.txt`` (the collapse monitor's, ``step N: ...``; empty when it never warned),
    and for an image folder ``skipped_files``: how many files could not be decoded, and of them
    ``skipped_monitor_files``: the kNN monitor's, outside the training folder (ROOT/val's, say).

    On a CPU it first makes this process's C allocator keep freed memory
    (:func:`~byol.allocator.keep_freed_memory`, for the rest of the process's life) unless
    ``config.train.keep_freed_memory`` is false.

    Writes into ``config.train.out_dir``: ``config.yaml``, ``metrics.jsonl``, ``tensorboard/``,
    ``checkpoints/last.pt`` (and every ``checkpoint_every`` epochs), and PNG plots. SIGTERM or
    SIGINT finishes the current step (or cuts a kNN evaluation short: ``results["knn_cut"]``, ``"epoch"``
    or ``"end"``), writes the checkpoint, says where it stopped on stderr and returns (``results["stopped_by"]``).
    A start that fails before its first step has finished leaves the folder as it found it. The
    caller's random number generators (torch's, CUDA's, NumPy's, Python's) and cuDNN's benchmark
    flag are left as they were.

    ``resume=True`` continues the run in ``config.train.out_dir`` from its ``checkpoints/last.pt``
    with ``config`` as given (a note names what differs from the checkpoint's). To continue with the
    run's own saved settings, as ``byol pretrain --resume`` does, pass
    ``byol.resume_config(None, ["--train.out_dir=DIR", ...])``: its ``config.yaml``, the overrides over it.
    ``resume="auto"`` continues where the folder holds ``checkpoints/last.pt`` and starts a new run where not.

    ``net``: a network of your own, in float32, to pretrain instead of ``model.backbone``'s ResNet
    (``model.cifar_stem`` and ``width`` unused), its representation taken at ``hidden_layer`` as
    :class:`~byol.BYOL` takes it. Training updates ``net``'s own parameters, moved to the run's device
    (``train.device``), where they stay (also where the run then fails, on its data say); its modules' modes are
    put back as given after the run (and under torchrun its BatchNorm layers, which train as synchronized ones
    sharing their weights and statistics). The
    run records it as ``model.backbone: custom`` and, in its checkpoints, ``net``'s class and ``hidden_layer``: a
    resume, ``byol.knn``, ``linear``, ``embed`` and ``load_encoder`` of it take ``net=`` (a network of the same
    architecture); the command line cannot build it.
    """
    refuse_to_start_again("byol.pretrain")  # before anything is read or written
    auto = resume == "auto"
    config, resume = checked_run_config(config, resume)
    given = given_to(config, resume, net, hidden_layer)  # (None: a ResNet by name)
    modules = as_given(net)  # (under torchrun, synchronized BatchNorm layers take their places while it trains)
    rank, world = dist.init()
    folder = RunFolder(Path(config.train.out_dir), resume) if rank == 0 else None
    if folder is None and resume:  # refused in the words rank 0's folder says it in: said once
        refuse_resume_without_checkpoint(Path(config.train.out_dir))
    benchmark = torch.backends.cudnn.benchmark  # prepare_device's choice is for this run's steps only
    try:
        if auto and not resume and folder is not None:
            note_new_start(folder)
        if not resume:  # (a resume loads the checkpoint's weights into net)
            note_trained_before(net)
        # the caller's generators (torch's, CUDA's, NumPy's, Python's) and defaults, as they were (the generators'
        # states are kept as tensors: made on the CPU, within the usual defaults)
        with usual_torch_defaults(), rng_state_kept():
            results = _pretrain(config, resume, rank, world, folder, net, given)
        if world > 1:  # (not a process group of the caller's, for a run of one process: its ranks would wait)
            dist.barrier()  # rank 0 has written the run's last checkpoint, which a rank may read next
        return results
    except BaseException:
        if folder is not None:
            folder.undo()  # only while no step has finished
        raise
    finally:
        torch.backends.cudnn.benchmark = benchmark
        put_back(modules)
        if folder is not None:
            if folder.started:  # net's weights trained (also by a start that failed or was stopped since)
                trained(net, config.train.out_dir)  # a later new run given net says it starts from them
            folder.release()  # the next start may write the folder


def _pretrain(config: Config, resume: bool, rank: int, world: int, folder: Optional[RunFolder],
              net: Optional[nn.Module], given: Optional[dict]) -> dict:
    t = config.train
    device, amp = prepare_device(t)
    step_class = loop_step_class(t.cuda_graph, device, world)
    run_dir = Path(t.out_dir)
    ckpt_path = last_checkpoint(run_dir)
    # The model before the data (which draws from no generator build_run seeds), so that a network that cannot be
    # trained (net= cut at a layer it lacks, or that does not run on the views), or a resume the checkpoint refuses
    # (another network, hidden_layer, batch size), is refused before the data set is read (a scan of a large folder
    # first, a review found, when this read the data first so as to leave net where it was if the data failed).
    byol, optimizer, generator = build_run(config, device, rank, world, net, given)
    amp = checked_precision(byol, config, device, amp)
    loaded = load_resumed(ckpt_path, config, byol, optimizer, given) if resume else None
    if resume:  # net holds the checkpoint's weights from here: where the data then fails, where the run had
        trained(net, t.out_dir)  # finished and trains no step
    data = load_run_data(config, device, rank, world, resume)
    steps_per_epoch = len(data.batches)
    step, saved = restore(loaded, ckpt_path, config, generator, rank, world, steps_per_epoch, amp,
                          data.size, data.names_digest, bf16_taken(byol, config, device)) if resume else (0, {})
    resumed_s = float(saved.get("time_s", 0.0))
    data.skipped_at_checkpoint = saved.get("skipped_inside")  # (older checkpoints: None, decoded to skip)
    lr, warmup_steps, total_steps = schedule_of(config, steps_per_epoch)
    end_step = end_step_of(config, total_steps)
    # the training images, counted and where (a user test: a folder of 100,000 said its count nowhere)
    split = data.folder.where if data.folder is not None else f"{config.data.dataset}'s {config.data.train_split} split"
    ran_on = {"device": str(device), "precision": precision_name(amp), "train_images": (data.size, split)}
    if step >= end_step:  # a finished run resumed: nothing to train, nothing rewritten but a kNN left unscored
        results = {"step": step, "checkpoint": os.path.abspath(ckpt_path), **ran_on}
        if rank == 0:
            note_finished(t, run_dir, step, end_step < total_steps)
        if saved.get("knn_due") and data.knn_train is not None:
            score_the_end(config, byol, data, device, amp, folder, rank, world, step, saved, steps_per_epoch, results)
        elif folder is not None and logged_after(run_dir, step):
            folder.metrics_log(resume_step=step).close()
            redraw_plots(run_dir)
        if rank == 0:
            results["warnings"] = read_warnings(run_dir)
        return results
    moved_from = loaded[0]["config"].get("data", {}).get("root") if resume else None  # where it read its files
    before_first_step(config, byol, data, device, amp, folder, step if resume else None, world, moved_from)
    forward, augment = step_forward(byol, t.compile, device, world, rank, t.batch_size // world,
                                    config.data.image_size)
    log = folder.metrics_log(resume_step=step if resume else None) if folder is not None else None
    if log is not None and not resume:  # (TensorBoard shows a run's first settings: a resume's would not show)
        log.settings(config.to_dict())
    results: dict = dict(ran_on)
    knn = knn_monitor(config, byol, data, device, amp, rank, log, step, saved, steps_per_epoch, results)
    loop_step = step_class(forward, byol, optimizer, generator, amp, augment, lr, warmup_steps, total_steps, t.tau_base)
    guard = loop_step.guard
    if saved.get("metric_sums"):  # a resumed run's steps since its last record, which its next one averages too
        loop_step.sums.copy_(torch.tensor(saved["metric_sums"]))
    guard.max_streak.fill_(int(saved.get("nonfinite_max_streak", 0)))  # as the record after the checkpoint reads it
    if t.cuda_graph and rank == 0:
        note_cuda_graph(loop_step.eager_steps)
    checkpoints = Checkpoints(byol, optimizer, generator, config, guard, data, run_dir, rank, world, device,
                               results["precision"], loop_step.sums)
    if given is not None:
        checkpoints.extra["net"] = given
    # kept for the closing tables of the resumes to come, also by a start without the monitor (a review)
    if init_images := results.get("knn_init_images") or saved.get("knn_init_images"):
        checkpoints.extra["knn_init_images"] = list(init_images)
    if resume:  # setup, before the clock and the bar (copying a checkpoint is no training)
        checkpoints.write_missing_epoch(step)
    progress = progress_bar(t, rank, step, end_step, t.batch_size)
    clock = Clock(device, progress, resumed_s)
    report = Report(loop_step, log, folder, progress, clock, t.batch_size, t.max_nonfinite, ckpt_path, step,
                     steps_per_epoch, epochs=math.ceil(end_step / steps_per_epoch))
    checkpoints.monitor = report.monitor
    if saved.get("collapse_monitor"):  # (a checkpoint of a byol before this has none: the monitor starts afresh)
        report.monitor.load_state(saved["collapse_monitor"])
    first_step = step
    step = _train_steps(config, data, loop_step, report, checkpoints, knn, folder, results, step, end_step, device,
                        rank, world)
    results["time_s"] = clock.time_s()  # the run's, its earlier starts' included; the throughput this start's
    trained_s = clock.training_s()
    if step > first_step and trained_s > 0:
        results["images_per_s"] = (step - first_step) * t.batch_size / trained_s
    return _finish(results, step, data, guard, log, run_dir, rank)


def _train_steps(config: Config, data: TrainData, loop_step: LoopStep, report: Report, checkpoints: Checkpoints,
                 knn: Optional[Callable[[], dict]], folder: Optional[RunFolder], results: dict, step: int,
                 end_step: int, device: torch.device, rank: int, world: int) -> int:
    """Train from ``step`` to ``end_step`` or a stop (SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2:
    ``results["stopped_by"]``), each epoch's end (:func:`_epoch_end`) after its last step; return the step
    reached. The bar and the data's loaders are closed on the way out, and an error after a step has
    finished draws the plots of what was logged first."""
    t, clock, progress, steps_per_epoch = config.train, report.clock, report.progress, report.steps_per_epoch
    first_step = step
    stream = step_images(data, step, steps_per_epoch, t.batch_size // world)
    host_kept = data.folder is None and data.batches.images.device != device  # data.on_device's resolution
    try:
        # a second Ctrl-C loses nothing where last.pt holds every finished step (the lambda reads `step` as it is)
        with StopRequest(saved=lambda: step if checkpoints.last_pt_step == step else None) as stop:
            while step < end_step:
                # Streamed folders (pinned) or a host-kept set: copied outside the wait for the batch,
                # which a copy from pageable memory would stretch by the device's work queued before it.
                _, z1 = loop_step(step, clock.next_batch(stream).to(device, non_blocking=True))
                step += 1
                if folder is not None:
                    folder.started = True  # from here on, what this start wrote stays
                if progress is not None:
                    progress.update(t.batch_size)
                stopping = stop.requested if world == 1 else False
                if step % t.log_every == 0 or step == end_step:
                    results["loss"] = report(step, z1, last=step == end_step)
                    stopping = dist.any_rank(stop.requested, device) if world > 1 else stopping
                # Checked every step, not only at the metric reads: on a CPU, train.log_every steps of a full-width
                # encoder can take an hour, which left a log silent that long (the line shows the last loss read).
                if progress is None and rank == 0 and not stopping and step % steps_per_epoch and step < end_step \
                        and report.line_due():  # within a long epoch, in a log
                    print(epoch_line(step, end_step, report, first_step, t.batch_size, results.get("loss")),
                          file=sys.stderr)
                cut = False
                if step % steps_per_epoch == 0 or step == end_step or stopping:
                    cut = _epoch_end(step, end_step, stopping, t, knn, report, checkpoints, results, stop)
                    # a signal while the epoch's checkpoint was written: that checkpoint is the stop's (not a
                    # step more and a second write, in the grace a scheduler gives before its kill)
                    stopping = stopping or cut or (world == 1 and stop.requested and checkpoints.written_step == step)
                    if rank == 0:
                        report.note_data_wait(config, host_kept)
                    if progress is None and rank == 0 and not stopping and step < end_step \
                            and report.line_due(epoch_end=True):  # no bar: a line an epoch, for a log (the last
                        # one's is the closing table)
                        scored = results["knn"][t.knn_k] if results.get("knn_step") == step else None
                        print(epoch_line(step, end_step, report, first_step, t.batch_size, results.get("loss"), scored),
                              file=sys.stderr)
                if stopping:
                    if step < end_step:  # a signal from the last step on: the run is complete all the same
                        results["stopped_by"] = signal.Signals(stop.signum or signal.SIGTERM).name
                    if cut:  # the kNN evaluation of the run's end (byol eval's), or of an epoch's (the resume's)
                        results["knn_cut"] = "end" if step == end_step else "epoch"
                    break
    except BaseException:  # the plots of what it logged (a diverged run, say, before its first checkpoint)
        if folder is not None and folder.started:  # (else the start's files are undone)
            checkpoints.plot_quietly()
        raise
    finally:  # before any error is printed: it must not land on the bar's line
        if progress is not None:
            progress.close()
        data.close()
    return step


def _epoch_end(step: int, end_step: int, stopping: bool, t: TrainConfig, knn: Optional[Callable[[], dict]],
               report: Report, checkpoints: Checkpoints, results: dict, stop: StopRequest) -> bool:
    """At an epoch's end, the run's end or a stop (``stopping``): the kNN evaluation ``knn`` (None:
    no kNN monitor) when due (every ``train.knn_every`` epochs and at the run's end; not after a
    signal, in one process: one at an epoch's end leaves it to the resume, one from the last step on
    to the resume too (:func:`~byol.knn_monitor.score_the_end`) or ``byol eval knn``, and one while it runs cuts
    it short), its accuracies in ``results["knn"]``,
    and the checkpoint (:meth:`Checkpoints.save`; ``epoch_N.pt`` kept every ``train.checkpoint_every``
    epochs; at a stop or the run's end, before the kNN); training's clock (``report.clock``) paused
    while either may run. Returns whether a signal left a due kNN evaluation unscored."""
    steps_per_epoch, clock = report.steps_per_epoch, report.clock
    epoch_done = step % steps_per_epoch == 0
    done_epochs = step // steps_per_epoch
    every = knn is not None and t.knn_every > 0 and epoch_done and done_epochs % t.knn_every == 0
    knn_due = knn is not None and step == end_step or every and not stopping
    keep = done_epochs if epoch_done and t.checkpoint_every > 0 and done_epochs % t.checkpoint_every == 0 else None
    final, cut = stopping or step == end_step, False

    def save(due_knn: bool, final: bool) -> None:  # due_knn: a kNN evaluation left to the resume (knn_monitor)
        checkpoints.extra["knn_due"] = due_knn
        checkpoints.save(step, keep, final=final, time_s=clock.time_s(), progress=report.progress)

    with clock.paused() if knn_due or checkpoints.may_write(keep, final) else nullcontext():
        if final:  # the checkpoint first, which a second signal, the scheduler's kill or a failing kNN must not cost
            save(every or knn_due, final=True)  # (a resume finds a kNN record logged at its step: not due)
        if knn_due:
            scored = score_unless_stopped(knn, stop, checkpoints.world)
            cut = scored is None
            if not cut:
                results["knn"] = log_knn(report.log, step, scored, t.knn_k, report.when(step))
                results["knn_step"] = step
                if final:
                    checkpoints.replot(report.progress)  # the plots with this kNN's point
        if not final:
            save(cut, final=cut)
    return cut


def _finish(results: dict, step: int, data: TrainData, guard: NonFiniteGuard, log: Optional[MetricsLog],
            run_dir: Path, rank: int) -> dict:
    """After the loop: the log closed, the skipped files (every rank's) written."""
    if data.folder is not None:  # streamed, each rank met only the bad files in its own share
        data.folder.bad_files = dist.merge_dicts(data.folder.bad_files)
    streak = int(guard.streak.item())
    if rank == 0:
        log.close(finished=not streak and "stopped_by" not in results)
        if data.folder is not None:
            results["skipped_files"] = data.folder.write_skipped(run_dir / "skipped_files.txt")
            results["skipped_monitor_files"] = results["skipped_files"] - data.folder.skipped_inside()  # val's
        results["warnings"] = read_warnings(run_dir)  # the whole run's: a resumed run keeps its earlier ones
        if "knn_init" not in results and data.knn_train is not None:  # a resumed run: its start's, as logged
            results.update(logged_init(run_dir))
    ckpt_path = last_checkpoint(run_dir)
    if streak:  # the run ended (or was stopped) on undone steps, so that end was not saved
        end = f"its stop by {results['stopped_by']}" if "stopped_by" in results else "the run's end"
        raise nonfinite_error(streak, step, f"up to {end}, which was not saved", ckpt_path,
                         results["precision"] != precision_name(None))
    results["step"] = step
    results["checkpoint"] = os.path.abspath(ckpt_path)  # (a notebook may change its working directory next)
    if "stopped_by" in results and rank == 0:  # (a notebook's Ctrl-C ended the cell without a word: a user test)
        print(stop_line(results), file=sys.stderr)
    return results


def logged_after(run_dir: Path, step: int) -> bool:
    """Whether ``metrics.jsonl`` holds records after ``step``: a start killed after its checkpoint logged steps
    that a resume which finds the run finished (a smaller ``train.epochs`` or ``max_steps``, fewer files) never
    trains again, so they must go, as a resume that trains drops them, and the plots drawn again (a user test: the
    finished run's log and plots kept steps its checkpoint never reached)."""
    path = run_dir / "metrics.jsonl"
    return path.is_file() and any(r["step"] > step for r in read_metrics(path))
