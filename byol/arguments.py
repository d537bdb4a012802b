"""The command line's arguments: the parser of ``byol pretrain | eval | embed | export``, and the checks
on what it leaves to the config (``--section.key=value``). Loads no torch: ``byol --help`` and a usage
error stay quick."""

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Optional


class UsageError(Exception):
    """A command line that cannot be parsed."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are a :class:`UsageError` (one line from :func:`byol.cli.main`), not usage text."""

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(sys.argv[1:] if args is None else args)  # to name an option given before the command
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        for action in self._actions:  # argparse names a missing sub-command by its dest, which --help does not show
            if isinstance(action, argparse._SubParsersAction) and \
                    message == f"the following arguments are required: {action.dest}":
                message = f"give one of {', '.join(action.choices)} (see {self.prog} --help)"
            elif isinstance(action, argparse._SubParsersAction) and \
                    message.startswith(f"argument {action.dest}: invalid choice"):
                message = _not_a_command(message, action, getattr(self, "_given", []), self.prog)
        flag = re.fullmatch(r"argument (\S+): ignored explicit argument (.*)", message)
        if flag:  # --random-init=1: argparse's words for a flag given a value
            message = f"argument {flag[1]}: takes no value, got {flag[2]}; give {flag[1]} alone"
        raise UsageError(message)


def _not_a_command(message: str, action: argparse._SubParsersAction, given: list[str], prog: str) -> str:
    """argparse's "argument protocol: invalid choice: '5'" (a name --help never shows) as what was wrong: the word
    it took for the command, or the option before it whose value that is (`byol eval --k 5 knn x.pt`)."""
    at = next((i for i, word in enumerate(given) if message.startswith(f"argument {action.dest}: invalid choice: "
                                                                       f"{word!r}")), None)
    if at is None:
        return message
    option = given[at - 1] if at else ""  # (--data.root=D or --random-init before a mistyped command: not it)
    takes = [sub._option_string_actions[option].nargs != 0 for _, sub in _commands()
             if option in sub._option_string_actions]  # (none: an option of none, whose value it may be)
    if option.startswith("-") and "=" not in option and (any(takes) or not takes):
        owners = _commands_taking(option)
        where = f" (an option of byol {' and byol '.join(owners)})" if owners else ""
        return f"option {option!r}{where} is given before the command; give it after the command (see {prog} --help)"
    help_ = f" (for help: {prog} --help)" if given[at] in ("help", "-help") else ""
    return f"{given[at]!r} is not a command of {prog}: choose {', '.join(action.choices)}{help_}"


def shows_bars_given(overrides: list[str]) -> bool:
    """Whether eval and embed draw progress bars: as ``--train.progress`` says, by default (auto) where
    stderr is a terminal (a log file would fill with their redrawings). A bad value is the config's error."""
    from .config_files import override_key, parse_value
    from .progress import shows_bars
    given = [o.partition("=")[2] for o in overrides if override_key(o) == "train.progress"]
    value = parse_value(given[-1]) if given else "auto"
    return shows_bars(value.lower() if isinstance(value, str) else value)


def _positive_int(text: str, least: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= {least}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
    return value


def _neighbours(text: str) -> int:
    """One of --k's values; a checkpoint given after them is taken for one, and the message says so."""
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError as e:
        if not (os.sep in text or text.endswith((".pt", ".pth")) or os.path.exists(text)):  # no checkpoint: as it is
            raise
        raise argparse.ArgumentTypeError(f"{e}: --k takes every value after it, so give the checkpoint "
                                         f"before --k (byol eval knn CHECKPOINT --k 20 200)") from None


def _count(text: str) -> int:
    """A whole number >= 0 (0: off)."""
    return _positive_int(text, least=0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _auto(text: str) -> str:
    if text != "auto":
        folder = "; the run's folder is --train.out_dir=..." if os.sep in text or os.path.isdir(text) else ""
        raise argparse.ArgumentTypeError(f"takes no value, or auto (continue if there is a checkpoint), got "
                                         f"{text!r}{folder}")
    return text


def _path(text: str) -> str:
    """A path, ``~`` expanded: the shell leaves it in ``--out=~/x`` (after ``=``), as in a preset name."""
    return os.path.expanduser(text)


def _given(text: str) -> str:
    """``text``, refused where empty (a shell variable not set): a checkpoint or --out of "" was read as ".", the
    folder the command ran in (export wrote its files there, eval ignored its --out), and --split "" as embed's
    default split."""
    if not text:
        raise argparse.ArgumentTypeError("is empty; give a value (a shell variable that is not set?)")
    return text


def _given_path(text: str) -> str:
    return _path(_given(text))


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="byol", description="BYOL self-supervised pretraining and evaluation. "
                "pretrain takes any config key as --section.key=value (e.g. --train.epochs=10); eval and embed "
                "take the data's and the device's over the checkpoint's (see their --help); export takes none.")
    from . import __version__
    p.add_argument("-V", "--version", action="version", version=f"byol {__version__}")
    from .config_files import presets_folder
    sub = p.add_subparsers(dest="command", required=True)
    pre = sub.add_parser(
        "pretrain", help="pretrain an encoder with BYOL", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Pretrain an encoder with BYOL. Every config key can be set as\n--section.key=value; every key, "
        f"with its default and meaning, is in\n  {Path(__file__).parent / 'config.py'}\n(--print-config prints them "
        f"all, resolved); the presets, every key they set\ncommented, are\n  {presets_folder()}/*.yaml",
        epilog="examples:\n"
        "  # a narrow ResNet-18, minutes on a CPU\n"
        "  byol pretrain --config cifar10-cpu --data.root=DATA\n"
        "  # ResNet-18, batch 512: for a GPU\n"
        "  byol pretrain --config cifar10 --data.root=DATA\n"
        "  # 200 epochs, into runs/c10\n"
        "  byol pretrain --config cifar10 --data.root=DATA --train.epochs=200 \\\n"
        "      --train.out_dir=runs/c10\n"
        "  # continue, longer\n"
        "  byol pretrain --resume --train.out_dir=runs/c10 --train.epochs=400\n"
        "  # a job's: start or continue\n"
        "  byol pretrain --config cifar10 --data.root=DATA --train.out_dir=runs/c10 \\\n"
        "      --resume=auto\n"
        "  # every setting, to edit\n"
        "  byol pretrain --config cifar10 --train.epochs=200 --print-config > c10.yaml")
    pre.add_argument("--config", action=_Once, type=_path, help="a preset name (cifar10-cpu, cifar10, stl10, "
                     "imagenet) or a YAML file (default: cifar10, the GPU preset); with --resume it only locates the run")
    pre.add_argument("--resume", nargs="?", const=True, default=False, type=_auto, metavar="auto",
                     help="continue the run in train.out_dir from its last checkpoint, with its saved config.yaml "
                     "changed by the --section.key=value settings given here; --resume=auto: continue where there "
                     "is a checkpoint, start a new run where there is none (one command for a job and its requeues)")
    pre.add_argument("--download", action="store_true", help="download CIFAR / STL-10 if missing (needs internet)")
    pre.add_argument("--print-config", action="store_true", help="print the config the run would take, resolved (the "
                     "preset or, with --resume, the run's config.yaml, under the settings given), as YAML that "
                     "--config reads, and exit: nothing is trained or written")
    _add_eval(sub)
    _add_embed_and_export(sub)
    return p


def _add_eval(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="evaluate a checkpoint or exported encoder",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Score the online encoder's frozen features on labelled data: a weighted\n"
                        "kNN or a linear probe over the train split, scoring the test split (--holdout N:\n"
                        "N held-out train images). The results go to a table and, as JSON, beside the\n"
                        "checkpoint or to --out.",
                        epilog="examples:\n"
                        "  byol eval knn runs/c10/checkpoints/last.pt\n"
                        "  # the same encoder untrained: the baseline to beat\n"
                        "  byol eval knn runs/c10/checkpoints/last.pt --random-init\n"
                        "  byol eval linear runs/c10/checkpoints/last.pt --epochs 100\n"
                        "  # the data moved since the run\n"
                        "  byol eval knn runs/c10/checkpoints/last.pt --data.root=DATA")
    ev_sub = ev.add_subparsers(dest="protocol", required=True)
    for name, text, more in (
            ("knn", "weighted kNN on frozen features", ": the test split's features vote among their k most "
             "similar (cosine) in the train split's, weighted exp(similarity / temperature); top-1 for each k."),
            ("linear", "linear probe on frozen features", ": a linear layer trained on the train split's "
             "features, computed once without augmentation (SGD, cosine schedule); top-1 and top-5 on the test "
             "split.")):
        e = ev_sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + more, epilog=SETTINGS_READ_HELP)
        e.add_argument("checkpoint", type=_given_path,
                       help="a checkpoint (.pt from a run), an exported encoder.pt, or a ResNet state_dict")
        e.add_argument("--out", type=_given_path,
                       help="write the results as JSON here (default: beside the checkpoint)")
        e.add_argument("--limit", type=_positive_int, help="use only N images of each split (the first N; "
                       "for a folder, spread over its classes; default: all)")
        e.add_argument("--random-init", action="store_true", help="evaluate the encoder the run started "
                       "from (same architecture and seed, untrained): the baseline to beat")
        e.add_argument("--holdout", type=_count, default=0, metavar="N",
                       help="CIFAR / STL-10: score on N training images held out of the train split (the draw "
                       "of train.knn_holdout), not on the test split: for choosing settings (0: off, the default)")
        if name == "knn":
            e.add_argument("--k", type=_neighbours, nargs="+", default=[20, 200],
                           help="numbers of neighbours (default: 20 200)")
            e.add_argument("--temperature", type=_positive_float, default=0.1,
                           help="of the neighbours' similarity weights (default: 0.1)")
        else:
            e.add_argument("--epochs", type=_positive_int, default=100,
                           help="of the linear probe's training (default: 100)")


def _add_embed_and_export(sub: argparse._SubParsersAction) -> None:
    em = sub.add_parser("embed", help="write embeddings of a split with labels or file paths",
                        description="Write the online encoder's features of one split's images (default: the "
                        "held-out split), with their labels, class names and, for a folder, file paths, as .npy "
                        "or .pt.", epilog=SETTINGS_READ_HELP)
    em.add_argument("checkpoint", type=_given_path,
                    help="a checkpoint (.pt from a run), an exported encoder.pt, or a ResNet state_dict")
    em.add_argument("--out", type=_given_path, required=True, help="output file, .npy or .pt")
    em.add_argument("--split", type=_given, help="default: the held-out split (test; for a folder ROOT/val or "
                    "ROOT/test) | train | test | val (a folder) | unlabeled (STL-10) | a sub-folder of ROOT")
    em.add_argument("--limit", type=_positive_int, help="embed only the first N images (default: all)")
    ex = sub.add_parser("export", help="write the online encoder as a torchvision state_dict and TorchScript",
                        description="Write the online encoder into the folder --out: encoder.pt (a torchvision "
                        "state_dict), encoder_torchscript.pt, export.json (what to feed it and what comes out) and "
                        "the run's config.yaml. Takes no settings.")
    ex.add_argument("checkpoint", type=_given_path,
                    help="a checkpoint of a byol run (.pt), such as RUN/checkpoints/last.pt")
    ex.add_argument("--out", type=_given_path, required=True, help="output folder")


SETTINGS_READ_HELP = (
    "Also takes --section.key=value settings over the checkpoint's: --data.root=DIR (where the data is now), "
    "--data.dataset, --data.download, and for a folder --data.image_size, --data.load_size, --data.workers "
    "(embed: --data.train_split); --train.device, "
    "--train.precision=fp32, --train.progress (the bars: auto, true, false), --train.keep_freed_memory=false "
    "(a CPU process hands freed memory back); --train.seed (eval linear: the "
    "probe's shuffling); --augment.preset and --model.* for a bare state_dict only. Pretraining's others are noted "
    "as ignored.")


class _Once(argparse.Action):
    """``--config``, given once: ``--config a.yaml --config b.yaml`` took b alone, where a merge may
    have been meant."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not None:
            raise UsageError(f"{option_string} is given twice ({getattr(namespace, self.dest)} and {values}), and "
                             "configs are not merged: give one, and what changes it as --section.key=value")
        setattr(namespace, self.dest, values)


def check_overrides(args: argparse.Namespace, overrides: list[str]) -> None:
    """Each ``--section.key=value`` well formed (one given twice: the last wins, as a script that adds
    to common settings expects); ``--download`` not contradicted."""
    bad = next((i for i, o in enumerate(overrides) if not (o.startswith("--") and "=" in o
                                                           and "." in o.split("=")[0])), None)
    if bad is not None:
        command = " ".join(filter(None, (args.command, getattr(args, "protocol", None))))
        raise UsageError(_unrecognized(overrides[bad], overrides[bad + 1:], command))
    given = [o.split("=", 1)[0] for o in overrides]
    if getattr(args, "download", False) and "--data.download" in given:
        raise UsageError("--download and --data.download are both given; keep one")


# Dashes that a web page or a word processor puts where "--" was typed: en, em, minus, hyphens, bar.
_DASHES = "\u2013\u2014\u2212\u2010\u2011\u2012\u2015"


def _unrecognized(word: str, after: list[str], command: str) -> str:
    """What is wrong with ``word``, which no option of ``byol command`` took (``after``: the words after it),
    and how to fix it."""
    name = word.split("=")[0]
    if word[:1] in _DASHES:  # (an en dash or an em dash looks like "--" in a page's font)
        return (f"{word!r} starts with {word[0]!r}, not '--' (a dash pasted from a web page?): type "
                f"--{word.lstrip(_DASHES + '-')}")
    if not word.strip():
        return f"a blank argument {word!r} is given (a backslash before a space at a line's end?); remove it"
    if word.startswith("--") and "." in name:  # (its value, next, is unrecognized too)
        value = after[0] if after and not after[0].startswith("-") else "VALUE"
        return f"{word} is given without '=': a config key takes its value after '=', as {word}={value}"
    if word.startswith("-"):
        long = "--" + name.lstrip("-")  # -k for --k
        hint = _where_it_belongs(name, command) if word.startswith("--") else \
            f" (did you mean {long}?)" if long in dict(_commands())[command]._option_string_actions else ""
        return (f"unrecognized option {word!r}{hint}; see byol {command} --help"
                + ("" if "--" in hint else "; config keys are set as --section.key=value"))
    if command != "pretrain":  # a second checkpoint, or a value whose option is missing
        return f"unrecognized argument {word!r}: byol {command} takes one checkpoint (see byol {command} --help)"
    from .config_files import presets_folder
    if word.endswith((".yaml", ".yml")) or (presets_folder() / f"{word}.yaml").is_file():
        return f"unrecognized argument {word!r}: a preset or a YAML file is given as --config {word}"
    return f"unrecognized argument {word!r}; config keys are set as --section.key=value"


def _where_it_belongs(option: str, command: str) -> str:
    """Where a misplaced ``option`` belongs: another command's (``, an option of byol eval linear``)
    or a config key's (`` (did you mean --train.epochs=...?)``: pretraining takes no others, so
    there the key comes first); "" for neither."""
    from .config import meant_key

    name = option[2:].replace("-", "_")
    key = meant_key(name)
    key = f" (did you mean --{key}=...?)" if key is not None and key.rpartition(".")[2] == name else ""
    owners = _commands_taking(option)
    elsewhere = f", an option of byol {' and byol '.join(owners)}" if owners else ""
    return (key or elsewhere) if command == "pretrain" else (elsewhere or key)


def _commands_taking(option: str) -> list[str]:
    """The commands (``"eval linear"``) whose parser takes ``option``: to say where a misplaced one belongs."""
    return [command for command, sub in _commands() if option in sub._option_string_actions]


def _commands(root: Optional[argparse.ArgumentParser] = None, prefix: str = ""):
    """Each command's name (``"eval linear"``) and parser, nested ones too."""
    for action in (root or parser())._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                command = f"{prefix} {name}".strip()
                yield command, sub
                yield from _commands(sub, command)
