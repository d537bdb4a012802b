"""A network given from Python to pretraining (``byol.pretrain(config, net=...)``) instead of a ResNet built
by name: how its run records it (``model.backbone: custom`` in the config; the network's class and
``hidden_layer`` in each checkpoint's ``extra["net"]``), and the checks that a resume, an evaluation or an
embedding of the run is given a network, and the one the run trained (the command line cannot build it)."""

import numbers
from pathlib import Path
from typing import Optional, Union

from torch import nn

from .backbones import HiddenLayer, HookedLayer
from .build import build_model
from .checkpoint import CheckpointError, load_checkpoint, load_model_state
from .config import Config, ConfigError
from .config_rules import GIVEN_BACKBONE as GIVEN
from .run_folder import last_checkpoint

Cut = Union[str, int, None]  # a hidden_layer, as byol.BYOL takes it


def net_record(net: Optional[nn.Module], hidden_layer: Cut) -> Optional[dict]:
    """What a run's checkpoints record of a network given to it (None: a ResNet by name): its class's
    name, for messages, and the ``hidden_layer`` its representation is taken at, to cut it again: a child's index
    as that child's name, -1 as None (the same cuts, which a resume given the other spelling refused: a review)."""
    if net is None:
        return None
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be an nn.Module (the network to pretrain), not {type(net).__name__}")
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
    return {"class": type(net).__name__, "hidden_layer": hidden_layer}


def given_to(config: Config, resume: bool, net: Optional[nn.Module], hidden_layer: Cut) -> Optional[dict]:
    """For :func:`~byol.train.pretrain`: the :func:`net_record` of ``net`` (None: none given), with ``config``
    (its checked copy) set to ``model.backbone: custom`` where given, and refused where it says so but none is."""
    given = net_record(net, hidden_layer)
    if given is not None:
        config.model.backbone = GIVEN
    else:
        refuse_without_net(config, resume, last_checkpoint(config.train.out_dir))
    return given


def recorded(state: dict) -> Optional[dict]:
    """The :func:`net_record` of a checkpoint's run (None: a ResNet run's)."""
    record = state.get("extra", {}).get("net")
    return record if isinstance(record, dict) else None


def resume_call(record: dict) -> str:
    """How a run trained on a network given from Python (its :func:`net_record`) is resumed, said in its errors."""
    layer = record.get("hidden_layer", -2)
    cut = f", hidden_layer={layer!r}" if layer != -2 else ""
    return (f"resume it from Python with byol.pretrain(config, resume=True, net={record.get('class') or 'YourNet'}"
            f"(...){cut}), a network of the same architecture, which the checkpoint's weights are loaded into")


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
                          f"byol pretrain --resume): {resume_call(record)}")


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
        raise CheckpointError(f"{ckpt_path}'s run took its representation at hidden_layer="
                              f"{record.get('hidden_layer')!r}, and a resume trains that cut on: resume with "
                              f"hidden_layer={record.get('hidden_layer')!r}")


def check_eval(state: dict, net: Optional[nn.Module], path: Path, for_export: bool) -> Optional[dict]:
    """The :func:`net_record` of a checkpoint to evaluate, embed or export, where its run trained a network
    given from Python (None: a ResNet run's), once ``net`` (the network given here, or None) fits what it is."""
    record = recorded(state)
    if record is None:
        if net is not None:
            raise CheckpointError(f"net= takes the checkpoint of a run pretrained on a network given from Python "
                                  f"(byol.pretrain(config, net=...)), and {path} is of a ResNet that byol builds by "
                                  "name: leave net out")
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
    return record


def given_encoder(state: dict, config: Config, net: nn.Module, hidden_layer: Cut, path: Path,
                  random_init: bool) -> nn.Module:
    """The online encoder of a checkpoint of a run on a network given from Python: ``net`` cut at the run's
    ``hidden_layer`` as training cut it, the checkpoint's weights loaded into ``net`` (``random_init``: its own
    kept; the run's initial weights cannot be rebuilt from a network byol did not make), in eval mode."""
    byol = build_model(config, net, hidden_layer)
    if not random_init:
        load_model_state(byol, state["model"], str(path))
    net.eval()
    return byol.encoder


def load_back(net: nn.Module, byol) -> None:
    """The online encoder's weights and statistics put into ``net`` (given to pretraining under torchrun): its
    BatchNorm layers trained as synchronized copies (:func:`~byol.distributed.convert_sync_batchnorm`), and
    those a traced cut holds in places of its own (``net``'s direct children) are not ``net``'s (a review: a
    BatchNorm's running mean was still 0 after the run)."""
    encoder = byol.online.encoder
    inner = encoder.body if isinstance(encoder, HiddenLayer) else encoder.net if isinstance(encoder, HookedLayer) \
        else encoder
    net.load_state_dict(inner.state_dict(), strict=False)  # (the layers after the cut: not the encoder's)
