"""Continuing a run: its last checkpoint restored into the model, optimizer and generators, and what the
settings given now change about it said up front (the config it continues with: ``resume_settings.py``)."""

import math
import sys
from dataclasses import fields
from pathlib import Path
from typing import Optional

import torch

from .build import end_step_of, schedule_of
from .precision import autocast_dtype, precision_name
from .checkpoint import CheckpointError, check_model_state, load_checkpoint, load_model_state, set_rng_state
from .config import Config, ConfigError, ModelConfig, changed_settings, config_from_dict
from .config_values import yaml_word
from .config_rules import GIVEN_BACKBONE
from .dropin import BYOL
from .given_net import check_resume, other_net, recorded
from .metrics import read_metrics
# byol.resume.resume_config and the --config RUN/config.yaml checks as well, as the command line, the package and
# docs/python_api.md name them there
from .resume_settings import note_another_runs_config, refuse_another_runs_config, resume_config
from .schedules import cosine_lr, tau_schedule
from .train_data import FOLDER_KNN_LIMIT

__all__ = ["resume_config", "refuse_another_runs_config", "note_another_runs_config", "NETWORK_KEYS", "load_resumed",
           "restore"]


def _knn_images(limit: Optional[int], config: Config) -> Optional[int]:
    """The images of each split the kNN monitor scores with ``train.knn_limit=limit`` (None: all)."""
    return limit or (FOLDER_KNN_LIMIT if config.data.dataset == "folder" else None)


# The model settings that make the network's parameters: all but model.concat_views, which only batches
# the views (a setting added later is refused on resume unless it is named here too).
NETWORK_KEYS = tuple(f.name for f in fields(ModelConfig) if f.name not in ("concat_views",))


def refuse_changed_settings(state: dict, config: Config, ckpt_path: Path, given: Optional[dict] = None
                            ) -> dict[int, float]:
    """Refuse settings a resume cannot change (the network, ``given`` as :func:`load_resumed` takes it; the batch
    size, the seed, the kNN monitor's queries and bank where it has scored, the optimizer), before any weights are
    loaded (a network given from Python is left as it was), also for ``byol pretrain --print-config``; return the
    steps of the run's kNN records up to the checkpoint's, with the run's time (``time_s``) each was logged at."""
    check_resume(state, given, ckpt_path)
    saved_train = state["config"].get("train", {})
    saved_batch = saved_train.get("batch_size")
    if saved_batch != config.train.batch_size:
        raise CheckpointError(f"{ckpt_path} was trained with train.batch_size={saved_batch}, and its step count, "
                              "schedules and place in the data are in steps of that many images; resume with "
                              f"--train.batch_size={saved_batch}, or start a new run for another batch size")
    saved_seed = saved_train.get("seed", config.train.seed)
    if saved_seed != config.train.seed:  # (a user test: eval --random-init then built another network)
        raise CheckpointError(f"{ckpt_path}'s run started from train.seed={saved_seed}: its initial weights, which "
                              "eval --random-init rebuilds as the baseline, and its data's order come from it; resume "
                              f"with --train.seed={saved_seed}, or start a new run for another seed")
    saved_model = state["config"].get("model", {})
    given = saved_model.get("backbone") == GIVEN_BACKBONE  # (its ResNet settings unused: not compared)
    for key in [k for k in NETWORK_KEYS if not (given and k in ("cifar_stem", "width"))]:
        # (a user test: --model.use_predictor=false was blamed on the backbone or width)
        saved = saved_model.get(key, getattr(config.model, key))
        if saved != getattr(config.model, key):
            raise CheckpointError(f"{ckpt_path} holds the network of model.{key}={yaml_word(saved)}, and a resume "
                                  f"trains that network on: resume with --model.{key}={yaml_word(saved)}, or start "
                                  "a new run for another")
    saved_holdout = saved_train.get("knn_holdout", 0)
    if saved_holdout != config.train.knn_holdout:
        raise CheckpointError(f"{ckpt_path}'s kNN monitor scored train.knn_holdout={saved_holdout} held-out "
                              "train images (0: the test split); another value would change its queries mid-run, "
                              f"under the same names in the logs: resume with --train.knn_holdout={saved_holdout}")
    saved_limit = saved_train.get("knn_limit", config.train.knn_limit)
    # The steps of the run's kNN records up to the checkpoint's (later ones are of steps trained again).
    records = read_metrics(ckpt_path.parent.parent / "metrics.jsonl")
    scored = {r.get("step"): float(r.get("time_s", 0.0)) for r in records
              if "eval/knn_top1" in r and r.get("step", math.inf) <= state["step"]}
    # Where the run has kNN records (whichever start scored them), they are of this many images, also
    # past a start with the monitor off, which would otherwise carry a new number on to a later start
    # that monitors again.
    if scored and _knn_images(saved_limit, config) != _knn_images(config.train.knn_limit, config):
        # the same: and the closing table would set its last accuracy against its first
        raise CheckpointError(f"{ckpt_path}'s kNN monitor scored train.knn_limit={yaml_word(saved_limit)} images of "
                              "each split; another number would change its bank and queries mid-run, under the "
                              "same names in the logs and against its accuracy at random init: resume with "
                              f"--train.knn_limit={yaml_word(saved_limit)}")
    saved_optim = state["config"].get("optim", {}).get("name")
    if str(saved_optim).lower() != config.optim.name:  # (an older byol saved it as written: SGD)
        raise CheckpointError(f"{ckpt_path} was trained with optim.name={saved_optim}; resume with the "
                              "same optimizer")
    return scored


# The bytes of a CPU generator's state (MT19937) and of a CUDA one's (Philox: seed and offset).
_GENERATOR_STATE_SIZES = (torch.Generator().get_state().numel(), 16)


def _restore_generators(state: dict, generator: torch.Generator, rank: int, world: int, ckpt_path: Path) -> None:
    """The random number generators as the checkpoint saved them: this process's augmentation
    ``generator`` its own rank's where the run had as many processes (a note where it had not)."""
    try:
        saved = state["rng"]["generator"] if "generator" in state["rng"] else None
        # A CPU generator's state (MT19937) does not load into a CUDA one (Philox) nor back: a run that drew its
        # views on another kind of device goes on from this one's own stream (a review: such a resume was refused
        # as a checkpoint byol did not write).
        # Another kind's is a state of that kind's size; any other size is refused below, by set_state.
        size = None if saved is None else torch.as_tensor(saved).numel()
        same_kind = size in (None, generator.get_state().numel()) or size not in _GENERATOR_STATE_SIZES
        set_rng_state(state["rng"], generator if same_kind else None)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # (a review: rng={} ended in a KeyError traceback)
        raise CheckpointError(f"{ckpt_path}'s random number generator states do not load ({type(e).__name__}: {e}); "
                              "resume from a checkpoint a byol run wrote") from None
    if not same_kind and rank == 0:
        print(f"note: {ckpt_path}'s augmentations drew on another kind of device than this run's "
              f"({generator.device.type}), whose generator cannot take their state: its views are drawn from "
              "this device's own stream, not those the run would have had", file=sys.stderr)
    extra = state.get("extra", {})
    per_rank = extra.get("generator_per_rank")
    if world > 1 and same_kind:
        if per_rank is not None and rank < len(per_rank):
            generator.set_state(per_rank[rank])  # rank 0 saved every rank's augmentation stream
        elif rank > 0:  # a rank the run had not: rank 0's stream would repeat rank 0's draws (a review: a 1-process
            # run resumed under torchrun drew the same views for every rank's i-th image), so one of its own
            seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
            generator.manual_seed(seed + rank)
    saved_world = len(per_rank) if per_rank is not None else 1
    # A byol before 2026-12-02 (no steps_per_epoch saved), and one before 2026-11-22's per-rank streams under
    # torchrun too, saved no generator_per_rank for a run of several processes: its count is not known.
    if per_rank is None and "steps_per_epoch" not in extra and world > 1 and rank == 0:
        print(f"note: {ckpt_path} was written by an older byol, which does not record how many processes ran it; "
              f"this one has {world}: it goes on from the same weights and optimizer state, but its augmentation "
              "draws (and, where the run had another number of processes, its batches' shares) are not those the "
              "run would have had", file=sys.stderr)
    elif saved_world != world and rank == 0:
        print(f"note: {ckpt_path} was written by a run of {saved_world} process{'es' if saved_world > 1 else ''}, "
              f"this one has {world}: it goes on from the same weights and optimizer state, but its batches' "
              "shares and augmentation draws are not those the run would have had", file=sys.stderr)


def load_resumed(ckpt_path: Path, config: Config, byol: BYOL, optimizer: torch.optim.Optimizer,
                 given: Optional[dict] = None) -> tuple[dict, dict[int, float]]:
    """The run's last checkpoint, checked against the settings and network of its resume (``given``: what the
    run records of a network given from Python, None for a ResNet by name) and loaded into the model and
    optimizer, before the data is read: a resume refused (another network, ``hidden_layer`` or batch size) is
    refused at once. Returns it less the weights and optimizer state it loaded (kept, they would be a copy in
    host memory for the whole run), with the steps of its run's kNN records (for :func:`restore`)."""
    state = load_checkpoint(ckpt_path, map_location="cpu")  # RNG states must stay on the CPU
    scored = refuse_changed_settings(state, config, ckpt_path, given)
    # The parameter groups' sizes, as torch's load_state_dict checks them (a layer of net frozen, say)
    saved_groups = state["optimizer"].get("param_groups", [])
    guess = other_net(recorded(state), given and given["class"])
    if len(saved_groups) != len(optimizer.param_groups) or any(
            len(s.get("params", ())) != len(g["params"]) for s, g in zip(saved_groups, optimizer.param_groups)):
        # (a network of another depth has other groups too: its weights' keys say so, not a layer frozen)
        check_model_state(byol, state["model"], str(ckpt_path), **guess)
        saved_sizes = [len(s.get("params", ())) for s in saved_groups]
        sizes = [len(g["params"]) for g in optimizer.param_groups]
        why = "a parameter frozen or unfrozen?"
        params = [p for g in optimizer.param_groups for p in g["params"]]
        by_shape = [sum(p.ndim > 1 for p in params), sum(p.ndim <= 1 for p in params)]
        if len(sizes) == 2 and saved_sizes == by_shape:  # (the sizes alone also fit a weight frozen and a bias
            # unfrozen, which was said to be an older byol's checkpoint: a review)
            # the same parameters, split otherwise: byol.optim.param_groups by shape alone, before 2026-12-06
            why = (f"the same parameters, {saved_sizes[0] - sizes[0]} of which this byol excludes from weight decay "
                   "and LARS, the parameters of normalization layers and biases of more than one dimension that a "
                   "byol before 2026-12-06 decayed and adapted; resume it with that byol, or start it anew")
        raise CheckpointError(f"the optimizer state in {ckpt_path} does not fit this run (its parameter groups hold "
                              f"{saved_sizes} parameters, this run's {sizes}: {why})")
    load_model_state(byol, state["model"], str(ckpt_path), **guess)
    # load_state_dict takes each group's settings from the checkpoint too: this run's (momentum, weight
    # decay, LARS's trust coefficient and clip, ...) are put back, as the resume note says they change.
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"the optimizer state in {ckpt_path} does not fit this run ({e})") from None
    for group, setting in zip(optimizer.param_groups, settings):
        group.update(setting)
    return {k: v for k, v in state.items() if k not in ("model", "optimizer")}, scored


def restore(loaded: tuple[dict, dict[int, float]], ckpt_path: Path, config: Config, generator: torch.Generator,
            rank: int, world: int, steps_per_epoch: int, amp: Optional[torch.dtype] = None,
            images: Optional[int] = None, files: Optional[str] = None, bf16: bool = True) -> tuple[int, dict]:
    """The rest of a resume once the data is read, from the checkpoint that :func:`load_resumed` loaded (``loaded``,
    what it returned): the generators restored; returns its step and what the run saved beside them
    (``extra``: ``time_s``, the seconds the run had run; ``metric_sums``, the metrics' sums since the last
    record; ``knn_due``, a kNN evaluation a stop skipped; ...). ``amp``: this run's autocast dtype, said when it
    differs from the checkpoint's steps'; ``images``: the training images now, and ``files`` a digest of a
    folder's names, said when they differ from the checkpoint's run's; ``bf16``: whether train.precision=bf16 runs
    here (:func:`~byol.precision.bf16_taken`), which the note on precision offers only then."""
    state, scored = loaded
    _restore_generators(state, generator, rank, world, ckpt_path)
    _, _, total = schedule_of(config, steps_per_epoch)
    if rank == 0:
        # A finished run says so itself, and trains nothing: the settings given change nothing.
        if state["step"] < end_step_of(config, total):
            _note_changes(state, config, steps_per_epoch, images, files)
            _note_precision(_precision_of(state), precision_name(amp), config, bf16)
            _note_threads(state.get("extra", {}), generator.device)
        else:
            _note_ended_by_data(state, config, steps_per_epoch)
    extra = dict(state.get("extra", {}))
    if state["step"] in scored:  # scored after the checkpoint was written: the run's end's, or one a stop skipped,
        extra["knn_due"] = False  # scored by a start that died before its next checkpoint; its time goes on from it
        extra["time_s"] = max(float(extra.get("time_s", 0.0)), scored[state["step"]])
    return state["step"], extra


def _precision_of(state: dict) -> Optional[str]:
    """The precision a checkpoint's steps ran in: as it records it, else (an older byol's) as its config
    names it, fp32 or bf16; None for ``auto``, which resolved by machine."""
    recorded = state.get("extra", {}).get("precision")
    named = state["config"].get("train", {}).get("precision")
    if recorded or named not in ("fp32", "bf16"):
        return recorded
    return precision_name(autocast_dtype(named, torch.device("cpu")))  # fp32 and bf16 name one dtype anywhere


def _note_precision(saved: Optional[str], now: str, config: Config, bf16: bool = True) -> None:
    """``train.precision=auto`` resolves by machine (bf16 where it has bf16 arithmetic): say when a
    resumed run goes on in another precision than its checkpoint's steps ran in, or in one that the
    checkpoint cannot be compared with (an older byol's, run with ``auto``); bf16 offered only where it runs
    (``bf16``: an older byol trained in bf16 on a CPU what this one refuses it for, an upgrading user's test)."""
    if saved is None:
        choose = "--train.precision=bf16 or --train.precision=fp32" if bf16 else \
            "--train.precision=fp32 (bf16 is refused here)"
        print(f"note: the checkpoint does not say which precision its steps ran in (an older byol, with "
              f"train.precision=auto: before 2026-12-01 that was float32 on a CPU, bf16 on a GPU with bf16); "
              f"this run goes on in {now} (train.precision={config.train.precision} here); choose with "
              f"{choose}", file=sys.stderr)
    elif saved != now:
        keep = "bf16" if saved.startswith("bf16") else "fp32"
        how = f"--train.precision={keep} keeps {saved}" if keep == "fp32" or bf16 else \
            f"{saved} cannot be kept: train.precision=bf16 is refused here"
        print(f"note: the checkpoint's steps ran in {saved}, and this run goes on in {now} (train.precision="
              f"{config.train.precision} here); {how}", file=sys.stderr)


def _note_threads(extra: dict, device: torch.device) -> None:
    """On a CPU the number of threads orders each step's sums: say when a resumed run goes on with another
    number than its checkpoint's steps ran with on a CPU (the same run to rounding, no longer bit for bit);
    a checkpoint of a GPU's steps is not kept bit for bit by any number of threads."""
    saved, now = extra.get("threads"), torch.get_num_threads()
    if device.type == "cpu" and extra.get("device") == "cpu" and saved is not None and saved != now:
        print(f"note: the checkpoint's steps ran on {saved} thread{'s' * (saved != 1)} and this run goes on with "
              f"{now}: the same run to rounding, not bit for bit; OMP_NUM_THREADS={saved} keeps {saved}",
              file=sys.stderr)


def _note_changes(state: dict, config: Config, steps_per_epoch: int, images: Optional[int] = None,
                  files: Optional[str] = None) -> None:
    """Say where the run goes on from, name the settings that differ from the checkpoint's, and say
    what they do to the schedules."""
    try:  # the saved values read as a config would be (e.g. an older file's on_device "false" is False)
        saved = config_from_dict(state["config"])
    except ConfigError:  # a key this version no longer has
        saved = None
    changed = changed_settings(saved.to_dict() if saved else state["config"], config.to_dict())
    step = state["step"]
    _, _, total = schedule_of(config, steps_per_epoch)
    end = end_step_of(config, total)
    # Epochs done, as the epoch lines count them from 1 (epoch 2/4 follows 1.2 of 4 done).
    ends = "" if end == total else \
        f"; train.max_steps ends it at step {end}, in epoch {math.ceil(end / steps_per_epoch)}"
    epochs = config.train.epochs
    said = [f"{config.train.out_dir} from step {step} ({step / steps_per_epoch:.4g} of {epochs} "
            f"epoch{'s' if epochs != 1 else ''} done{ends})"]
    if changed:
        said.append(f"with settings that differ from the checkpoint's: {', '.join(changed)}")
    print(f"note: resuming {', '.join(said)}", file=sys.stderr)  # one line: where from, and with what
    saved_epoch = state.get("extra", {}).get("steps_per_epoch", steps_per_epoch)
    if saved_epoch != steps_per_epoch:
        print(f"note: the data now makes {steps_per_epoch} steps an epoch, the checkpoint's run {saved_epoch}: "
              "its epochs are counted anew from here", file=sys.stderr)
    else:  # where no setting says why (files added to a folder, say), the count of images does, or their names
        extra = state.get("extra", {})
        moved = ("data.root ", "data.dataset ", "data.limit ", "data.train_split ")  # settings that say why
        other = None
        if images is not None and extra.get("images") not in (None, images):
            other = f"{images:,} images, the checkpoint's run {extra['images']:,}"
        elif files is not None and extra.get("files_digest") not in (None, files):  # (older checkpoints: None)
            other = f"other files than the checkpoint's run (as many, {images:,}, with other names)"
        if other and not any(c.startswith(moved) for c in changed):
            print(f"note: the data now holds {other}: the batches from here are not those the run would have had",
                  file=sys.stderr)
    if saved is None:
        return
    lr0, tau0 = _schedules_at(saved, step, saved_epoch)
    lr1, tau1 = _schedules_at(config, step, steps_per_epoch)
    if not (math.isclose(lr0, lr1, rel_tol=1e-3) and math.isclose(tau0, tau1, rel_tol=1e-6)):
        length = _length_change(schedule_of(saved, saved_epoch)[2], schedule_of(config, steps_per_epoch)[2],
                                (lr0, lr1), (tau0, tau1))
        print(f"note: the schedules follow the new settings from step {step} on: learning rate {lr0:.4g} -> "
              f"{lr1:.4g}, tau {tau0:.6g} -> {tau1:.6g}{length}", file=sys.stderr)


def _note_ended_by_data(state: dict, config: Config, steps_per_epoch: int) -> None:
    """Where a run resumed is finished only because its data now makes fewer steps an epoch (files
    taken out of a folder), say so: the note that it is finished names the setting, not the data."""
    saved_epoch = state.get("extra", {}).get("steps_per_epoch", steps_per_epoch)
    if saved_epoch != steps_per_epoch and state["step"] < end_step_of(config, schedule_of(config, saved_epoch)[2]):
        end = end_step_of(config, schedule_of(config, steps_per_epoch)[2])
        where = "before" if end < state["step"] else "at"
        print(f"note: the data now makes {steps_per_epoch} steps an epoch, the checkpoint's run {saved_epoch}: its "
              f"{config.train.epochs} epochs now end at step {end}, {where} the checkpoint's step {state['step']}",
              file=sys.stderr)


def _length_change(total0: int, total1: int, lr: tuple[float, float], tau: tuple[float, float]) -> str:
    """What a new run length (in steps) does to the cosine schedules, as the values (before, after) at
    the step show it: stretched for a longer run (the learning rate rises again, tau falls back),
    compressed for a shorter one (the learning rate drops, tau rises); '' for the same length."""
    if total1 == total0:
        return ""
    longer = total1 > total0
    how, lr_said, tau_said = (("a longer run's cosine schedules are stretched", "the learning rate rises again",
                               "tau falls back") if longer else
                              ("a shorter run's cosine schedules are compressed", "the learning rate drops", "tau rises"))
    # Said only where the values show it (not within the warm-up, say, nor against a new optim.lr's pull).
    moves = [said for said, (before, after), tol, up in ((lr_said, lr, 1e-3, longer), (tau_said, tau, 1e-6, not longer))
             if not math.isclose(before, after, rel_tol=tol) and (after > before) == up]
    return f" ({how} to its length{', so ' + ' and '.join(moves) if moves else ''})"


def _schedules_at(config: Config, step: int, steps_per_epoch: int) -> tuple[float, float]:
    """The learning rate and tau that ``config`` gives at ``step``, as the loop computes them."""
    lr, warmup, total = schedule_of(config, steps_per_epoch)
    return cosine_lr(step, total, lr, warmup), tau_schedule(step, total, config.train.tau_base)
