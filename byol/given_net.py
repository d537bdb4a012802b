"""A network given from Python to pretraining (``byol.pretrain(config, net=...)``) instead of a ResNet built
by name: how its run records it (``model.backbone: custom`` in the config; the network's class and
``hidden_layer`` in each checkpoint's ``extra["net"]``), and the checks that a resume, an evaluation or an
embedding of the run is given a network, and the one the run trained (the command line cannot build it)."""

import numbers
import weakref
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from .build import build_model
from .checkpoint import CheckpointError, load_checkpoint, load_model_state
from .config import Config, ConfigError
from .config_rules import GIVEN_BACKBONE as GIVEN
from .distributed import note
from .run_folder import last_checkpoint

Cut = Union[str, int, None]  # a hidden_layer, as byol.BYOL takes it


class _RunSCut:
    """The default ``hidden_layer`` of byol.knn, linear, embed and load_encoder: the one the run recorded."""

    def __repr__(self) -> str:
        return "<the run's hidden_layer>"


RUN_S_CUT = _RunSCut()


# The networks that byol.pretrain trained in this process, and the run folder each trained in last.
_TRAINED: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()
# The networks byol loaded a checkpoint's weights into (eval, embed, load_encoder), and from which file: none is a
# network at random initialization any more, whatever is done to it since (a review).
_LOADED: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()


def net_record(net: Optional[nn.Module], hidden_layer: Cut) -> Optional[dict]:
    """What a run's checkpoints record of a network given to it (None: a ResNet by name): its class's
    name, for messages, and the ``hidden_layer`` its representation is taken at, to cut it again: a child's index
    as that child's name, -1 as None (the same cuts, which a resume given the other spelling refused: a review)."""
    if net is None:
        return None
    check_net(net, "pretrain")
    return {"class": type(net).__name__, "hidden_layer": _spelled(net, hidden_layer)}


def _spelled(net: nn.Module, hidden_layer: Cut) -> Cut:
    """``hidden_layer`` as :func:`net_record` records it: a child's index as that child's name, -1 as None."""
    if hidden_layer is not None and (isinstance(hidden_layer, bool)
                                     or not isinstance(hidden_layer, (str, numbers.Integral))):
        raise TypeError(f"hidden_layer must be a module's name or a child's index (as byol.BYOL takes), not "
                        f"{type(hidden_layer).__name__} {hidden_layer!r:.60}")  # (saved in checkpoints: plain only)
    if isinstance(hidden_layer, numbers.Integral):
        hidden_layer = int(hidden_layer)  # (NumPy's, as a plain int: checkpoints load with weights_only)
        children = [name for name, _ in net.named_children()]
        if hidden_layer == -1:
            hidden_layer = None
        elif -len(children) <= hidden_layer < len(children):  # (out of range: cut_at says so)
            hidden_layer = children[hidden_layer]
    return hidden_layer


def _shown(cut: Cut) -> Cut:
    """A recorded ``hidden_layer`` as a user gives it: the network's own output (recorded as None) as -1, as
    byol.BYOL's docs spell it (a user test: a run given hidden_layer=-1 was told to resume with hidden_layer=None)."""
    return -1 if cut is None else cut


def check_net(net: object, use: str) -> None:
    """``net``, given from Python to ``use`` (pretrain; evaluate or embed), is one byol runs: an ``nn.Module`` in
    float32, its weights holding values."""
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be an nn.Module (the network to {use}), not {type(net).__name__}")
    other = sorted({str(p.dtype) for p in net.parameters() if p.is_floating_point() and p.dtype != torch.float32})
    if other:  # (the views are float32: a traceback from the first convolution)
        raise TypeError(f"net's parameters are {', '.join(other)}, and byol takes a float32 network to {use} (bf16 "
                        "with train.precision=bf16, under autocast, where a target's EMA steps are not rounded "
                        "away): give net.float()")
    if any(t.is_meta for t in (*net.parameters(), *net.buffers())):  # (torch's traceback from moving it)
        raise TypeError(f"net's weights are on the meta device, which holds no values: make them with "
                        f"net.to_empty(device=...) and initialize them (or load weights) before you {use}")


def given_to(config: Config, resume: bool, net: Optional[nn.Module], hidden_layer: Cut) -> Optional[dict]:
    """For :func:`~byol.train.pretrain`: the :func:`net_record` of ``net`` (None: none given), with ``config``
    (its checked copy) set to ``model.backbone: custom`` where given, and refused where it says so but none is."""
    given = net_record(net, hidden_layer)
    if given is not None:
        config.model.backbone = GIVEN
    else:
        refuse_without_net(config, resume, last_checkpoint(config.train.out_dir))
    return given


def as_given(net: Optional[nn.Module]) -> list[tuple[Optional[nn.Module], str, nn.Module, bool]]:
    """``net``'s modules as given: ``(parent, name, module, training)``. Under torchrun the run trains
    synchronized BatchNorm layers (:func:`byol.distributed.convert_sync_batchnorm`), which share their weights
    and statistics but take the places of those inside ``net``'s children, and the run sets the modes of the
    layers it trains: :func:`put_back` undoes both."""
    if net is None:
        return []
    return [(None, "", net, net.training)] + [(parent, name, child, child.training) for parent in net.modules()
                                              for name, child in parent.named_children()]


def put_back(modules: list[tuple[Optional[nn.Module], str, nn.Module, bool]]) -> None:
    """The modules of :func:`as_given` back in their places and modes, after the run: a network given holds its
    own BatchNorm layers, which need no process group (a synchronized one in training mode would wait on every
    rank, or fail where none is), and a network given in eval mode is not left with its layers in training mode."""
    for parent, name, module, _ in modules:
        if parent is not None:
            setattr(parent, name, module)
    for _, _, module, training in modules:  # parents first: each module's own mode set last
        module.train(training)  # (not the flag alone: a module may act on it, as torchvision's DualGraphModule)


def trained(net: Optional[nn.Module], out_dir: str) -> None:
    """Remember that a run in ``out_dir`` trained ``net``, for :func:`note_trained_before`."""
    if net is not None:
        _TRAINED[net] = str(out_dir)


def note_trained_before(net: Optional[nn.Module]) -> None:
    """A new run given a network that an earlier run of this process trained (a sweep that built it once)
    starts from those weights: said, as it is seldom meant, and nothing in the run folder shows it."""
    earlier = _TRAINED.get(net) if net is not None else None
    if earlier is not None:
        note(f"net was trained by an earlier byol.pretrain in this process (in {earlier}), and this run starts from "
             "those weights, not from the network's initial ones; for runs that each start afresh (a sweep), give "
             "each a network of its own (built anew, or a copy.deepcopy of one taken before training)")


def recorded(state: dict) -> Optional[dict]:
    """The :func:`net_record` of a checkpoint's run (None: a ResNet run's)."""
    record = state.get("extra", {}).get("net")
    return record if isinstance(record, dict) else None


def resume_call(record: dict, out_dir: Optional[str] = None) -> str:
    """How a run trained on a network given from Python (its :func:`net_record`) is resumed, said in its errors;
    with ``out_dir``, the run's folder, the config spelled as read from it (from the command line there is none)."""
    layer = _shown(record.get("hidden_layer", -2))
    cut = f", hidden_layer={layer!r}" if layer != -2 else ""
    # (a review: `byol pretrain --resume` was told byol.pretrain(config, ...), and config was nowhere to be had)
    config = "config" if out_dir is None else f"byol.resume_config(None, [{f'--train.out_dir={out_dir}'!r}])"
    return (f"resume it from Python with byol.pretrain({config}, resume=True, "
            f"net={record.get('class') or 'YourNet'}(...){cut}), a network of the same architecture, which the "
            "checkpoint's weights are loaded into")


def refuse_without_net(config: Config, resume: bool, ckpt_path: Path) -> None:
    """``model.backbone: custom`` with no ``net`` given (``byol pretrain --config RUN/config.yaml``, its
    ``--resume``): the network was given from Python, and byol cannot build it."""
    if config.model.backbone != GIVEN:
        return
    if not resume:
        raise ConfigError(f"model.backbone={GIVEN} is a network given from Python, which byol cannot build: pass it "
                          "as byol.pretrain(config, net=...), or choose a ResNet by name for model.backbone")
    if not ckpt_path.is_file():
        return  # nothing to resume: the run folder says so
    try:
        record = recorded(load_checkpoint(ckpt_path, map_location="cpu")) or {}
    except CheckpointError:  # (unreadable: the network's class is not known)
        record = {}
    raise CheckpointError(f"{config.train.out_dir}'s run trained a network given from Python "
                          f"({record.get('class', 'not a ResNet byol builds')}), which byol cannot build (nor "
                          f"byol pretrain --resume): {resume_call(record, str(config.train.out_dir))}")


def other_net(record: Optional[dict], given: Optional[str]) -> dict:
    """:func:`~byol.checkpoint.load_model_state`'s guess where a network of class ``given`` does not take the
    weights of a checkpoint's run on one (``record``, its :func:`net_record`): none where either is None."""
    if record is None or given is None:
        return {}
    trained = record.get("class")
    return {"guess": f"net is a {given} of another size or layout than the run's?" if trained == given
            else f"the run trained a {trained}, and net is a {given}"}


def check_resume(state: dict, given: Optional[dict], ckpt_path: Path) -> None:
    """A resume's network (``given``, the :func:`net_record` of ``net=``; None: the config's ResNet) is the
    kind the checkpoint's run trained, cut at the same ``hidden_layer``."""
    record = recorded(state)
    if record is None and given is not None:
        backbone = state.get("config", {}).get("model", {}).get("backbone")
        raise CheckpointError(f"{ckpt_path} is of a run of model.backbone={backbone}, which byol builds by name, "
                              f"not of a network given from Python: resume it without net=")
    if record is not None and given is None:
        raise CheckpointError(f"{ckpt_path} is of a run that trained a network given from Python "
                              f"({record.get('class')}): {resume_call(record)}")
    if record is not None and record.get("hidden_layer") != given["hidden_layer"]:
        cut = _shown(record.get("hidden_layer"))
        raise CheckpointError(f"{ckpt_path}'s run took its representation at hidden_layer={cut!r}, and a resume "
                              f"trains that cut on: resume with hidden_layer={cut!r}")


def check_eval(state: dict, net: Optional[nn.Module], path: Path, for_export: bool,
               hidden_layer: object = RUN_S_CUT) -> Optional[dict]:
    """The :func:`net_record` of a checkpoint to evaluate, embed or export, where its run trained a network
    given from Python (None: a ResNet run's), once ``net`` (the network given here, or None) and ``hidden_layer``
    (:data:`RUN_S_CUT`: none given) fit what it is."""
    if net is not None:
        check_net(net, "evaluate or embed")
    record = recorded(state)
    if record is None:
        if net is not None:
            raise CheckpointError(f"net= takes the checkpoint of a run pretrained on a network given from Python "
                                  f"(byol.pretrain(config, net=...)), and {path} is of a ResNet that byol builds by "
                                  "name: leave net out")
        if hidden_layer is not RUN_S_CUT:  # (a ResNet's representation is its pooled trunk)
            raise CheckpointError(f"hidden_layer= goes with net=, for the checkpoint of a run pretrained on a network "
                                  f"given from Python, and {path} is not one: leave hidden_layer out")
        return None
    cls = record.get("class")
    if for_export:
        raise CheckpointError(f"{path} is of a run that trained a network given from Python ({cls}), which byol "
                              f"export cannot write: byol.load_encoder(path, net={cls}(...)) loads its weights into "
                              "that network, then save it with torch.save(net.state_dict(), ...)")
    if net is None:
        raise CheckpointError(f"{path} is of a run that trained a network given from Python ({cls}), which byol "
                              f"cannot build: evaluate or embed it from Python, giving a {cls} of the same "
                              f"architecture as net=, e.g. byol.knn(path, net=net) (byol.linear, byol.embed and "
                              "byol.load_encoder take net= too)")
    if hidden_layer is not RUN_S_CUT and _spelled(net, hidden_layer) != record.get("hidden_layer"):
        cut = _shown(record.get("hidden_layer"))
        raise CheckpointError(f"{path}'s run took its representation at hidden_layer={cut!r}, where training and "
                              f"the kNN monitor took it and where byol evaluates and embeds it: leave hidden_layer "
                              f"out (the run's is taken), or give hidden_layer={cut!r}")
    return record


def given_encoder(state: dict, config: Config, net: nn.Module, record: dict, path: Path,
                  random_init: bool) -> nn.Module:
    """The online encoder of a checkpoint of a run on a network given from Python (``record``, its
    :func:`check_eval`): ``net`` cut at the run's ``hidden_layer`` as training cut it, the checkpoint's weights loaded into ``net`` (``random_init``: its own
    kept; the run's initial weights cannot be rebuilt from a network byol did not make), in eval mode."""
    byol = build_model(config, net, record["hidden_layer"])
    if not random_init:
        load_model_state(byol, state["model"], str(path), **other_net(record, type(net).__name__))
        _LOADED[net] = str(path)
    # (a user test: byol.knn(path, net=net) loads the checkpoint into net, and a second call with random_init=True
    # scored the trained encoder, recorded as the one at random init, step 0; a review: another checkpoint's, too)
    elif earlier := _TRAINED.get(net) or _LOADED.get(net) or (
            str(path) if state.get("step") and _holds_trained(byol, state["model"]) else None):
        raise CheckpointError(f"net holds trained weights (of {earlier}: trained in it by byol.pretrain, or loaded "
                              "into it by an earlier byol.knn, linear, embed or load_encoder call given it), so "
                              "random_init=True would score a trained encoder as the baseline: give a network "
                              "built anew, with the weights the run started from")
    net.eval()
    return byol.encoder


def _holds_trained(byol, saved: dict) -> bool:
    """Whether the online encoder of ``byol`` (the network given, cut) holds the checkpoint's trained weights
    ``saved`` (its model state), every floating-point tensor of them equal."""
    own = {k: v for k, v in byol.state_dict().items()
           if k.startswith("online.encoder.") and torch.is_tensor(v) and v.is_floating_point()}
    return bool(own) and all(torch.is_tensor(saved.get(k)) and saved[k].shape == v.shape
                             and torch.equal(saved[k].to(v.device, v.dtype), v) for k, v in own.items())
