"""The command line: ``byol pretrain | eval knn | eval linear | embed | export``."""

import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

from . import error_lines
from .arguments import UsageError, check_overrides, parser, shows_bars_given
from .streams import STOP_SIGNALS, left_ignored, losable_streams


def _print_table(title: str, rows: list[tuple[str, str]]) -> None:
    if not _is_main_process():  # under torchrun, rank 0 reports
        return
    width = max(len(k) for k, _ in rows)
    print(title)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def _encoder_rows(result: dict) -> list[tuple[str, str]]:
    """What an evaluation's numbers are of: the features' width and precision, the weights' step."""
    rows = [("features", f"{result['feature_dim']}-d, of {result['image_size']}x{result['image_size']} images, "
                         f"{result['precision']} on {result['device']}")]
    if result["random_init"]:
        rows.append(("weights", "at random initialization (--random-init), step 0"))
    elif result["step"] is not None:
        epoch = f" (epoch {result['epoch']:.2f})" if result["epoch"] is not None else ""
        rows.append(("weights", f"step {result['step']}{epoch}"))
    return rows


def run(argv: Optional[list[str]] = None) -> int:
    args, overrides = parser().parse_known_args(argv)
    check_overrides(args, overrides)
    if args.command == "export" and overrides:
        key = overrides[0].split("=")[0]
        why = ("the model comes from the checkpoint and is exported as it was trained" if key.startswith("--model.")
               else "it takes no config settings (the checkpoint's encoder and config are written as they are)")
        raise UsageError(f"byol export does not accept {key}: {why}")
    if args.command != "pretrain":
        from .config_files import override_key
        from .config_rules import refuse_data_limit
        from .errors import ByolError
        from .files import not_a_file_to_read
        refuse_data_limit([override_key(o) for o in overrides])  # a setting's error first
        said = not_a_file_to_read(args.checkpoint)  # (said before torch loads, by each process as a checkpoint's)
        if said is not None:
            raise ByolError(said)
    command = {"pretrain": _pretrain, "eval": _evaluate, "embed": _embed, "export": _export}[args.command]
    return command(args, overrides)


def _pretrain(args, overrides: list[str]) -> int:
    from .config_files import presets_folder
    from .config import load_config  # (torch-free: a bad setting is said in a moment, torch loaded after it)
    extra = ["--data.download=true"] if args.download else []
    # --config= is refused, not the default; the default by its file, not a file named cifar10 in the working directory
    preset = args.config if args.config is not None else os.path.join(str(presets_folder()), "cifar10.yaml")
    resume = args.resume  # (auto: pretrain says which way it went)
    located = None  # the settings, read once: a pipe (--config /dev/stdin) reads empty the second time
    if resume == "auto":
        from .run_folder import resumes
        located = load_config(preset, overrides + extra)
        continues = resumes(resume, located.train.out_dir)
        if not continues and args.config is not None:  # a moved run's config.yaml: refused as --resume refuses
            from .resume_settings import refuse_another_runs_config  # it (resume_config, where the run goes on), not a
            refuse_another_runs_config(preset, overrides + extra, located)  # new run started in the folder it names
    else:
        continues = resume
    if continues:
        from .resume_settings import resume_config
        config = resume_config(preset, overrides + extra, explicit=args.config is not None, located=located)
    else:
        config = located if located is not None else load_config(preset, overrides + extra)
        if args.config is not None and error_lines.launch_rank() == 0:  # an archived run's config.yaml, fed
            # back: the folder it names is said (once under torchrun)
            from .resume_settings import note_another_runs_config
            note_another_runs_config(preset, overrides + extra, config)
    if args.print_config:
        return _print_config(config, resume)
    from .train import pretrain
    try:
        results = pretrain(config, resume=resume)
    except Exception as e:
        if not (continues and error_lines.is_out_of_memory(e)):
            raise
        from .errors import ByolError
        raise ByolError(error_lines.out_of_memory_line(resumed=True)) from None
    if "stopped_by" in results:  # (pretrain said where, as to a script or a notebook)
        return 128 + int(getattr(signal, results["stopped_by"]))
    _print_table("pretraining done", _pretrain_rows(config, results))
    return 0


def _print_config(config, resume) -> int:
    """``byol pretrain --print-config``: the config as the run would save it in its config.yaml (checked, its
    ``data.root`` absolute), on stdout, once under torchrun; nothing trained or written. Refused where the run would
    refuse it: a network given from Python (``model.backbone: custom``), which the command line cannot build; a
    folder that does not take the run (:func:`~byol.run_folder.refuse_start`: a new run where one is, a resume
    with nothing to go on from); a setting a resumed checkpoint's run cannot change."""
    from .checkpoint import load_checkpoint
    from .config import config_text
    from .given_net import refuse_without_net
    from .resume import refuse_changed_settings
    from .run_folder import last_checkpoint, refuse_start
    from .run_setup import checked_run_config
    config, resumes = checked_run_config(config, resume)
    checkpoint = last_checkpoint(config.train.out_dir)
    refuse_without_net(config, resumes, checkpoint)
    refuse_start(Path(config.train.out_dir), resumes)
    if resumes:
        refuse_changed_settings(load_checkpoint(checkpoint, map_location="cpu"), config, checkpoint)
    text = config_text(config)
    if error_lines.launch_rank() == 0:
        print(text, end="")
    return 0


def _pretrain_rows(config, results: dict) -> list[tuple[str, str]]:
    """The closing table of a run: its steps, loss, warnings, kNN against random init, folder."""
    from .progress import duration
    from .reporting import knn_shown
    from .run_folder import warnings_summary
    rows = [("steps", str(results["step"]))]
    if "train_images" in results:  # (data.limit said where it cut the split: one above its size takes all)
        n, split = results["train_images"]
        rows.append(("training images", f"{n:,} ({split}{', data.limit' if n == config.data.limit else ''})"))
    if "loss" in results:  # not for a finished run resumed
        rows += [("final loss", f"{results['loss']:.4f}"),
                 ("device", f"{results['device']}, {results['precision']}")]
    if "time_s" in results:  # for comparing runs from their logs (a user test)
        speed = f", {results['images_per_s']:,.1f} img/s training (this start)" if "images_per_s" in results else ""
        # (a user test read it as the clock's time since the run began, where a resumed run's is its starts' sum)
        rows.append(("time", f"{duration(results['time_s'])} since the first step, its starts summed{speed}"))
    if results.get("warnings"):  # next to the loss, which a collapsed run brings near 0
        where = Path(config.train.out_dir) / "warnings.txt"
        rows.append(("warnings", f"{len(results['warnings'])} ({warnings_summary(results['warnings'])}; "
                                 f"see {where})"))
    k = config.train.knn_k
    bank, queries, split = results.get("knn_images", (0, 0, ""))  # train.knn_limit's, say, not eval's all
    on = f"{bank:,} train / {queries:,} {split} images"
    at_k = f"k={k}" + (f" > {bank:,}: all vote" if 0 < bank < k else "")  # as eval's note says
    knn, init = results.get("knn", {}), results.get("knn_init", {})
    init_on = on  # where the folder's images changed since the run's start, the init's own (a user test)
    if results.get("knn_init_images") and tuple(results["knn_init_images"]) != (bank, queries):
        init_bank, init_queries = results["knn_init_images"]
        init_on = f"{init_bank:,} train / {init_queries:,} {split} images"
    if results.get("knn_cut") == "end":  # a signal from the last step on: an earlier epoch's kNN is not the run's
        holdout = f" --holdout {config.train.knn_holdout}" if config.train.knn_holdout else ""
        knn = {}
        rows.append((f"kNN top-1 ({at_k}, {on})", f"not scored: a signal came at the run's end; --resume scores "
                                                 f"and logs it, byol eval knn {results['checkpoint']}{holdout} "
                                                 "scores it"))
    if knn:
        rows.append((f"kNN top-1 ({at_k}, {on})", knn_shown(knn[k])))
    if k in init:
        rows.append((f"kNN top-1 at random init ({init_on})", knn_shown(init[k])))
    elif set(init) & set(knn):  # a resume asked for another k: the pair at a k measured both times (20)
        both = min(set(init) & set(knn))
        rows += [(f"kNN top-1 (k={both}, {on})", knn_shown(knn[both])),
                 (f"kNN top-1 at random init (k={both}, {init_on})", knn_shown(init[both]))]
    if results.get("skipped_files"):
        m = results.get("skipped_monitor_files", 0)
        which = "all" if m == results["skipped_files"] else f"{m:,}"
        monitor = f"{which} of them the kNN monitor's, outside the training split; " if m else ""
        rows.append(("unreadable files skipped",
                     f"{results['skipped_files']:,} ({monitor}listed in skipped_files.txt)"))
    rows.append(("run directory", config.train.out_dir))
    return rows


def _evaluate(args, overrides: list[str]) -> int:
    from . import outputs, pipeline
    from .progress import LogLines
    suffix = ("_random_init" if args.random_init else "") + ("_holdout" if args.holdout else "")
    default = Path(args.checkpoint).with_name(f"{Path(args.checkpoint).stem}_{args.protocol}{suffix}.json") \
        if Path(args.checkpoint).name else None  # "." or "/": refused by the evaluation, in one sentence
    if args.out or default:  # before the evaluation, which can take long
        outputs.check_writable(args.out or default, source=args.checkpoint, results=True)
        if not args.out:
            outputs.check_kept_name_writable(default)
    bars = shows_bars_given(overrides) or LogLines()  # (a log: lines, not a bar's redrawings)
    if args.protocol == "knn":
        result = pipeline.knn(args.checkpoint, overrides, ks=tuple(args.k), temperature=args.temperature,
                              limit=args.limit, random_init=args.random_init, progress=bars, holdout=args.holdout)
        # k past the bank labelled as pretrain's table labels it, and the vote's temperature beside the numbers,
        # which are another measurement at solo-learn's 0.07 (a user test: only a note on stderr, and the JSON, said)
        n = result["n_train"]
        rows = [(f"kNN top-1 (k={k}" + (f" > {n:,}: all vote" if k > n else "") + ")", f"{v:.2f}%")
                for k, v in result["knn_top1"].items()]
        rows.append(("kNN vote", f"cosine similarity, each neighbour's vote exp(sim / T), T={args.temperature:g}"))
    else:
        result = pipeline.linear(args.checkpoint, overrides, epochs=args.epochs, limit=args.limit,
                                 random_init=args.random_init, progress=bars, holdout=args.holdout)
        classes = f"{result['classes']} class{'es' * (result['classes'] != 1)}"
        top5 = f"{result['top5']:.2f}%" + (f" (of {classes}: always 100)" if result["classes"] <= 5 else "")
        rows = [("linear top-1", f"{result['top1']:.2f}%"), ("linear top-5", top5),
                ("probe", f"{result['epochs']} epoch{'s' * (result['epochs'] != 1)}, seed {result['seed']}")]
    rows += _encoder_rows(result)
    title = f"{result['dataset']}: {result['n_train']:,} train / {result['n_test']:,} {result['test_split']} images"
    try:
        path = outputs.write_results(result, args.out, default)
    except outputs.OutputError:
        _print_table(title, rows + _notes_rows(result, written=False))  # the finished evaluation's numbers are not lost
        raise
    _print_table(title, rows + _notes_rows(result, written=True) + [("results", str(path))])
    return 0


def _notes_rows(result: dict, written: bool) -> list[tuple[str, str]]:
    """A row saying that the result carries notes, which qualify its numbers (docs/metrics.md): said on stderr
    before the table, where a long log scrolls them out of sight, and the table said nothing of them (a review)."""
    notes = result.get("notes")
    if not notes:
        return []
    return [("notes", f"{len(notes)}, said above" + (' and kept in the results\' "notes"' if written else ""))]


def _embed(args, overrides: list[str]) -> int:
    from . import embeddings
    from .progress import LogLines
    path = embeddings.embed(args.checkpoint, args.out, split=args.split, overrides=overrides,
                            limit=args.limit, progress=shows_bars_given(overrides) or LogLines())
    if _is_main_process():  # under torchrun, once
        side = [f"{what} in {file}" for what, file in embeddings.side_files(path)]
        print(f"embeddings written to {path}" + (f" ({'; '.join(side)})" if side else ""))
    return 0


def _export(args, overrides: list[str]) -> int:
    from . import exports
    from .distributed import barrier
    info = exports.export(args.checkpoint, args.out)
    barrier()  # every process runs the command: under torchrun none returns before rank 0 has written the files
    out = Path(info["state_dict"]).parent
    _print_table("exported", [("state_dict", info["state_dict"]), ("TorchScript", info["torchscript"]),
                              ("how to feed it", str(out / "export.json")), ("run's config", str(out / "config.yaml"))])
    return 0


def _is_main_process() -> bool:
    from .distributed import rank
    return rank() == 0


class _Terminated(BaseException):
    """SIGTERM (a scheduler's cancel or preemption), SIGHUP (the terminal closed), or SIGUSR1 or SIGUSR2 (a
    scheduler's warning of the time limit: Slurm's ``--signal``) outside the training loop, whose own
    handler finishes the step and saves: a BaseException, as KeyboardInterrupt, so that what a start wrote
    is undone on its way out (:class:`~byol.run_folder.RunFolder`)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# What ends a command with a line and 128 + its number; SIGINT is Python's KeyboardInterrupt.
_ENDING_SIGNALS = tuple(s for s in STOP_SIGNALS if s != signal.SIGINT)


def _terminated_handler(main_pid: int):
    def handle(signum, frame):
        if os.getpid() != main_pid:  # another process forked with this handler (torch's decoding processes
            signal.signal(signum, signal.SIG_DFL)  # install their own): it ends as it would have
            os.kill(os.getpid(), signum)
            return
        for s in _ENDING_SIGNALS:  # a second one must not cut short the undoing
            signal.signal(s, signal.SIG_IGN)
        raise _Terminated(signum)
    return handle


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point: user mistakes become one sentence on stderr and exit code 2, never a traceback;
    SIGINT, SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 a line and exit codes 130, 143, 129, 138 and 140 (on
    Linux: 128 + the signal's number). What is printed may go nowhere (a closed pipe or terminal:
    :mod:`byol.streams`), which does not stop the command."""
    previous = {}
    for s in _ENDING_SIGNALS:
        if left_ignored(s):
            continue
        try:
            previous[s] = signal.signal(s, _terminated_handler(os.getpid()))
        except ValueError:  # not the main thread: signals are left alone
            break
    hook = threading.excepthook
    threading.excepthook = error_lines.quiet_storage_errors_of_threads(hook)
    try:
        with losable_streams():
            return _main(argv)
    finally:
        threading.excepthook = hook
        if "byol.distributed" in sys.modules:  # else no process group was started
            sys.modules["byol.distributed"].shutdown()
        for s, handler in previous.items():  # None: a handler set from C, which Python cannot put back
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def _main(argv: Optional[list[str]]) -> int:
    try:
        return run(argv)
    except UsageError as e:
        error_lines.say_error(e, everywhere=False)
        return 2
    # Under torchrun the signal reaches every process (torchrun passes it on; a terminal's Ctrl-C, a scheduler's
    # cancel), and a process that torchrun stops after another failed was not stopped by the user: rank 0 says it.
    except KeyboardInterrupt as e:  # (a second Ctrl-C's says what it cost)
        if error_lines.launch_rank() == 0:
            print(f"byol: interrupted{': ' if str(e) else ''}{e}", file=sys.stderr)
        return 130
    except _Terminated as e:  # (torchrun's, where another process failed: said so)
        said = _peer_failed()
        # torchrun's SIGTERM to the processes left, come while a collective's failure for one killed was handled
        lost = _lost_peer_within(e) if said is None else None  # (its plots drawn): not the user's stop
        if lost is not None:
            return _say_peer_lost(lost)
        if error_lines.launch_rank() == 0:
            print(said or f"byol: terminated ({signal.Signals(e.signum).name})", file=sys.stderr)
        return 128 + e.signum
    except Exception as e:
        code = error_lines.say(e)
        if code is not None:
            return code
        # a collective this process waited in, failed as another process ended (gloo: "Connection closed by peer")
        said = _peer_failed() if isinstance(e, RuntimeError) else None
        if said is None and _peer_lost(e):  # one that ended without a word: killed, its node lost (or it exited early)
            return _say_peer_lost(e)
        if said is None:  # a bug of byol's: its traceback (the other processes told first)
            from .peers import failed
            failed(f"{type(e).__name__}: {e}", error_lines.launch_rank())
            raise
        if error_lines.launch_rank() == 0:
            print(said, file=sys.stderr)
        return 1


# What gloo says where the process at the other end of a collective is gone (a user test: a node killed mid-run
# left the others a traceback of the all_reduce they waited in, its process having told no one of its end)
_PEER_LOST = re.compile(r"Connection (?:reset|closed) by peer")


def _say_peer_lost(e: BaseException) -> int:
    """Say, once on each node (a node's log may be all one reads), that the collective failed as ``e`` because
    another process ended without a word; the exit code."""
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"byol: stopped: another process of this torchrun run ended while this one waited for it "
              f"({_PEER_LOST.search(str(e))[0]}: killed, its node lost, or it exited early, which its own "
              "log says); the last checkpoint is kept: start the run again with --resume", file=sys.stderr)
    return 1


def _peer_lost(e: BaseException) -> bool:
    """Whether ``e`` is a collective's failure, under torchrun, because another process is gone."""
    world = os.environ.get("WORLD_SIZE", "1")
    return world.isdigit() and int(world) >= 2 and isinstance(e, RuntimeError) and bool(_PEER_LOST.search(str(e)))


def _lost_peer_within(e: BaseException) -> Optional[BaseException]:
    """The failure of a collective for a process gone, that ``e`` came while it was handled (torchrun stops the
    processes left where one died: its SIGTERM came during the failure's handling), else None."""
    seen = {id(e)}
    cause = e.__context__
    while cause is not None and id(cause) not in seen:
        if _peer_lost(cause):
            return cause
        seen.add(id(cause))
        cause = cause.__context__
    return None


def _peer_failed() -> Optional[str]:
    """Under torchrun, where another process of the run failed first: the line that says so, else None."""
    from .peers import failed_before, stopped_line
    first = failed_before(error_lines.launch_rank())
    return None if first is None else stopped_line(first)


if __name__ == "__main__":
    sys.exit(main())
