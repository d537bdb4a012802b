"""An encoder to evaluate, embed with or export: the online encoder of a byol checkpoint (or the one its
run started from), or a bare ResNet state_dict (``byol export``'s ``encoder.pt``, a torchvision model's),
with the config it goes with and where its weights come from."""

import re
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from .resnets import RESNETS, resnet, resnet_settings
from .build import build_model, check_evaluated_size
from .precision import usual_torch_defaults
from .checkpoint import CheckpointError, load_model_state, read_state
from .config import (Config, ConfigError, another_version, apply_overrides, config_from_dict, load_config,
                     override_list, validate)
from .config_files import override_key, read_preset
from .config_rules import GIVEN_BACKBONE, refuse_data_limit
from .assumed_input import (ExportSays, assumed_preset, export_says, folder_at_exported_size, folder_at_native_size,
                            note_assumed_input, settings_said)
from .datasets import NATIVE_SIZE
from . import distributed as dist
from .distributed import note
from .errors import path_argument
from .given_net import RUN_S_CUT, Cut, check_eval, given_encoder


def load_encoder(path: Union[str, Path], overrides: Optional[list[str]] = None,
                 random_init: bool = False, *, net: Optional[nn.Module] = None,
                 hidden_layer: Cut = RUN_S_CUT) -> tuple[nn.Module, Config]:
    """The online encoder (a torchvision ResNet trunk, classifier removed) from a checkpoint or an export.

    A checkpoint carries its config; an exported ``encoder.pt`` takes it from the
    ``config.yaml`` beside it. ``overrides`` (``section.key=value``) apply on top, e.g. a new
    ``data.root``. ``random_init`` gives the encoder the run started from instead of the trained
    one: the same architecture initialized from the run's ``train.seed`` as ``byol pretrain``
    does (the baseline that pretraining must beat; a ``train.seed`` override does not change it,
    and an exported encoder without a ``config.yaml`` beside it uses the default seed). The
    caller's random number generator is left as it was. ``model.*`` overrides are refused: the
    model is the checkpoint's (but for a bare state_dict with no ``config.yaml`` beside it, whose
    architecture they describe: e.g. a torchvision model's, ``model.cifar_stem=false``; its input is taken to be
    normalized with ImageNet's mean and std, ``augment.preset=paper``, unless an ``export.json`` beside it records
    another preset's or ``augment.preset`` is given, e.g. ``cifar`` for byol's cifar presets). A relative
    ``data.root`` (older runs stored it as typed) that is not found from here is looked up from
    the directory the run was started in, when the checkpoint's place in its run directory tells which.
    An encoder whose weights or BatchNorm statistics are not all finite (a diverged run's) is a
    :class:`~byol.checkpoint.CheckpointError`.

    ``net``: for the checkpoint of a run pretrained on a network given from Python (``byol.pretrain(config,
    net=...)``, which byol cannot build), a network of the same architecture, which receives the checkpoint's
    online encoder weights; the encoder returned is ``net`` cut at the run's ``hidden_layer`` as training cut
    it (its parameters are ``net``'s). With ``random_init``, ``net``'s own weights as given (the run's
    initial ones are not rebuilt). ``hidden_layer`` need not be given: the run's is taken; one given (as to
    ``byol.pretrain``) that is not the run's is a :class:`~byol.checkpoint.CheckpointError`.
    """
    # (evaluated=False: the encoder is the caller's to feed, at the size it was trained on too: a review)
    encoder, config, _ = load_encoder_with_origin(path, overrides, random_init, net=net, hidden_layer=hidden_layer,
                                                  evaluated=False)
    return encoder, config


@usual_torch_defaults()
def load_encoder_with_origin(path: Union[str, Path], overrides: Optional[list[str]], random_init: bool,
                             for_export: bool = False,
                             net: Optional[nn.Module] = None,
                             hidden_layer: Cut = RUN_S_CUT, evaluated: bool = True) -> tuple[nn.Module, Config, dict]:
    """:func:`load_encoder`, and where its weights come from, for a result to say: the checkpoint
    (an absolute path), its training ``step`` and ``epoch`` (an exported encoder's from the
    ``export.json`` beside it; None where nothing says: a state_dict from elsewhere, an export
    written before export.json recorded them; 0 with ``random_init``). A bare state_dict with no
    config.yaml beside it is read with an assumed input (:func:`byol.assumed_input.assumed_preset`, said in a note), or,
    ``for_export``, refused. ``evaluated``: a network given from Python is checked on the images byol's
    evaluation feeds it (knn, linear, embed)."""
    path = path_argument(path, "path", CHECKPOINT_PATH)
    with torch.random.fork_rng(devices=[]):  # the modules the weights are loaded into draw their initialization
        return _load_encoder_with_origin(path, overrides, random_init, for_export, net, hidden_layer, evaluated)


# What the functions that read a run's encoder take as their path.
CHECKPOINT_PATH = "a checkpoint file (such as RUN/checkpoints/last.pt) or an exported encoder.pt"


# How to evaluate a network byol cannot build or read the weights of, said where it cannot.
EVALUATE_YOURSELF = ("give its features from byol.features.extract_features(net, images, mean=..., std=...) to "
                     "byol.evaluate.knn_accuracy or linear_probe")


def _load_encoder_with_origin(path: Union[str, Path], overrides: Optional[list[str]], random_init: bool,
                              for_export: bool, own_net: Optional[nn.Module],
                              hidden_layer: Cut, evaluated: bool) -> tuple[nn.Module, Config, dict]:
    overrides = override_list(overrides)  # before anything is read
    given = [override_key(o) for o in overrides]
    refuse_data_limit(given)
    refuse = _run_setting_given(given, path)
    dist.init()  # under torchrun: features are extracted on every rank's share and gathered
    path = Path(path)
    state = read_state(path)
    bare = not (isinstance(state, dict) and "model" in state and "config" in state)
    unknown_input = bare and not (path.parent / "config.yaml").is_file()  # nothing says what it trained on
    if refuse and not unknown_input:
        raise refuse
    validate(apply_overrides(Config(), overrides or []), given)  # the settings given, not the checkpoint's own
    origin = {"checkpoint": str(path.absolute()), "step": None, "epoch": None}
    if bare and own_net is not None:
        raise CheckpointError(f"net= takes the checkpoint of a run pretrained on a network given from Python "
                              f"(RUN/checkpoints/last.pt), and {path} is not a byol run's checkpoint: " + (
                                  "it is a ResNet's state_dict, which byol reads without net=: leave net out"
                                  if isinstance(state, dict) and resnet_settings(state) is not None else
                                  f"load its weights into net yourself, then {EVALUATE_YOURSELF}"))
    # a network given from Python?
    record = check_eval(state if not bare else {}, own_net, path, for_export, hidden_layer)
    if not bare:  # a byol checkpoint
        config = _saved_config(state, path)
        origin.update(_trained(state))
        if record is not None:
            net = given_encoder(state, config, own_net, record, path, random_init)
            origin["hidden_layer"] = record.get("hidden_layer")  # where the run cut it (an evaluation records it)
        elif random_init:
            net = _initial_net(config)
        else:
            byol = build_model(config)
            load_model_state(byol, state["model"], str(path))
            net = _net_of(byol, config)
    else:  # an exported torchvision state_dict
        if for_export and unknown_input:
            raise CheckpointError(f"{path} is a bare state_dict with no config.yaml beside it, so nothing says what "
                                  "its encoder was trained on (the input size and normalization export.json records); "
                                  "byol export takes a byol run's checkpoint, such as RUN/checkpoints/last.pt")
        said = export_says(path)  # (export.json read, and the file hashed, once)
        net, config = _state_dict_encoder(path, state, overrides or [], random_init, said)
        origin.update(_exported(path, said))
    if "data.root" not in given:  # from the run's own out_dir: a --train.out_dir given here changes nothing
        _find_relative_root(config, path)
    trained_on, trained_size = config.data.dataset, config.data.image_size
    apply_overrides(config, overrides or [])
    if config.data.dataset != "folder":  # CIFAR's and STL-10's own size is read, not data.image_size (said ignored):
        config.data.image_size = trained_size  # pretraining's, which evaluation_precision tells auto's precision by
    if unknown_input:
        folder_at_exported_size(config, said, given)
        note_assumed_input(path, config, given, said)
    elif trained_on in NATIVE_SIZE and config.data.dataset == "folder":
        folder_at_native_size(config, trained_on, given)
    if record is None:
        net.fc = nn.Identity()  # the representation is the pooled trunk output
    elif evaluated:  # at the size the overrides give (a folder's --data.image_size), before the data is read
        check_evaluated_size(config, net)
    _refuse_nonfinite(net, path)
    if random_init:
        origin.update(step=0, epoch=0.0)
    return net.eval(), config, origin


def _saved_config(state: dict, path: Path) -> Config:
    """The settings a byol checkpoint holds; where they do not load here, a :class:`CheckpointError` naming
    the checkpoint (a bare "unknown config key" read as a mistake in the settings given)."""
    try:
        return config_from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(another_version(path, str(e), "it was written")) from None


def _refuse_nonfinite(net: nn.Module, path: Path) -> None:
    """A :class:`CheckpointError` where the encoder's weights or BatchNorm statistics are not all finite
    (a diverged run's checkpoint, or a state_dict with NaN in it): eval, embed and export of it gave
    NaN, a traceback or, exported, a broken encoder without a word (user tests)."""
    bad = [name for name, t in (*net.named_parameters(), *net.named_buffers())
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"the encoder of {path} holds NaN or infinite values in {len(bad)} of its tensors "
                              f"(e.g. {', '.join(bad[:2])}), as after a run that diverged; evaluate, embed or export "
                              "an earlier checkpoint")


def _run_setting_given(given: list[str], path: Union[str, Path]) -> Optional[ConfigError]:
    """The error for a setting among ``given`` that the checkpoint decides: its model, and the preset
    whose mean and std normalized every image it trained on (a bare state_dict takes them)."""
    for key in given:
        if key.startswith("model.") or key == "augment.preset":
            what = ("the model (backbone, width, projector)" if key.startswith("model.") else
                    "the encoder's input normalization (its preset's mean and std)")
            return ConfigError(f"--{key} cannot be set here: {what} comes from the checkpoint {path}; only "
                               "settings such as --data.root or --train.device apply")
    return None


def _trained(state: dict) -> dict:
    """A checkpoint's training ``step`` and ``epoch`` (step / its steps an epoch, where it says)."""
    step = state.get("step")
    per_epoch = state.get("extra", {}).get("steps_per_epoch")
    return {"step": step, "epoch": step / per_epoch if isinstance(step, int) and per_epoch else None}


def _exported(path: Path, said: ExportSays) -> dict:
    """The ``step`` and ``epoch`` that ``byol export`` recorded in the ``export.json`` beside the
    ``encoder.pt`` at ``path``, as ``said`` (none where it names another file, says neither, or records another
    file's SHA-256: the file was replaced since)."""
    if said.changed:
        note(f"{path} is not the file that byol export wrote beside {path.parent / 'export.json'} (it has changed "
             "since): its training step is not known")
        return {}
    if not said.record:  # none beside it, not JSON, or another file's
        return {}
    step, epoch = said.record.get("step"), said.record.get("epoch")
    return {"step": step if type(step) is int else None,
            "epoch": epoch if type(epoch) in (int, float) else None}


def _state_dict_encoder(path: Path, state: object, overrides: list[str],
                        random_init: bool, said: ExportSays) -> tuple[nn.Module, Config]:
    """The encoder of a bare ResNet state_dict (``byol export``'s ``encoder.pt``, a torchvision
    model's) and its config: the ``config.yaml`` beside it, else the architecture that its keys and
    shapes say, with ``model.*`` overrides over it, and the preset assumed (:func:`byol.assumed_input.assumed_preset`
    of what the export.json beside it ``said``)."""
    state = _unwrapped(state)
    beside = path.parent / "config.yaml"
    if _of_a_given_net(beside):  # (torch.save(net.state_dict()) into its run's folder)
        raise CheckpointError(f"{path} is a state_dict beside the config.yaml of a run on a network given from "
                              f"Python (model.backbone={GIVEN_BACKBONE}), which byol cannot build: evaluate the "
                              "run's checkpoint with net=, e.g. byol.knn('RUN/checkpoints/last.pt', net=net)")
    if not (isinstance(state, dict) and torch.is_tensor(state.get("conv1.weight"))):
        raise CheckpointError(f"{path} holds neither a byol checkpoint nor an encoder state_dict ({_contents(state)})"
                              f"{_peer_resnet(state, path)}")
    first = state["conv1.weight"]
    if first.dim() == 4 and first.shape[1] != 3:  # (a grayscale ResNet's was said to be named otherwise)
        raise CheckpointError(f"{path} is a state_dict whose first convolution (conv1) takes {first.shape[1]} "
                              "channel(s), not the 3 of the RGB images byol eval and embed feed it; load it yourself "
                              f"and {EVALUATE_YOURSELF}")
    guess = "a ResNet whose modules are not named as torchvision's: conv1, bn1, layerN.M.downsample?"
    if beside.is_file():
        config, what = load_config(str(beside)), str(path)
        guess = "a network other than the config.yaml beside it says?"
    else:
        config, found = Config(), resnet_settings(state)
        config.augment.preset = assumed_preset(said)[0]  # (an --augment.preset given goes over it)
        if found is None:  # no model.* setting makes one of those load it
            raise CheckpointError(f"{path} is a state_dict whose keys and shapes are not those of a ResNet byol builds "
                                  f"({', '.join(RESNETS)}, of any width, with a 3x3 or 7x7 first convolution), which "
                                  "are all byol eval and embed read; for another network, load it yourself and "
                                  f"{EVALUATE_YOURSELF}")
        for key, value in found.items():
            setattr(config.model, key, value)
        said = settings_said(config)
        apply_overrides(config, [o for o in overrides if override_key(o).startswith("model.")])
        used = settings_said(config)
        how = f"its keys say {said}" + (f", read as {used} as given" if used != said else "")
        if used != said:  # (the keys' own settings: a review found the naming blamed for a --model.width given)
            guess = "model.* settings given other than its keys say?"
        what = f"{path} (no config.yaml beside it; {how})"
    if random_init:
        return _initial_net(config), config
    net = resnet(config.model.backbone, cifar_stem=config.model.cifar_stem, width=config.model.width)
    # The classifier is not the encoder (eval drops it): one of another width, or none (fc = Identity), loads too.
    trunk = {k: v for k, v in state.items() if not k.startswith("fc.")}
    load_model_state(net, {**trunk, **{k: v for k, v in net.state_dict().items() if k.startswith("fc.")}}, what,
                     guess=guess)
    return net, config


def _peer_resnet(state: object, path: Path) -> str:
    """Where a peer's checkpoint holds its online encoder, said as how to save it as the state_dict byol
    reads ('' where it holds no ResNet): byol-pytorch's learner (``net.``), solo-learn's module
    (``backbone.``), lightly's (``backbone.``, an ``nn.Sequential`` of the ResNet's children), each also in
    a Lightning checkpoint's ``state_dict``. (A user test: they were refused with their first keys alone.)"""
    lightning = isinstance(state, dict) and isinstance(state.get("state_dict"), dict)
    keys = set(state["state_dict"] if lightning else state) if isinstance(state, dict) else set()
    found = {k[:-len(leaf)]: numbered for k in keys if isinstance(k, str)
             for leaf, inner, numbered in (("conv1.weight", "layer1.0.conv1.weight", False),
                                          ("0.weight", "4.0.conv1.weight", True))
             if k.endswith(leaf) and k[:-len(leaf)] + inner in keys}
    # words of the prefix, not parts of them (semantic_encoder. is no EMA's); MoCo's key encoder is encoder_k.
    words = {p: {w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+", p)} for p in found}  # (emaModel too)
    target = [p for p in found if words[p] & {"target", "momentum", "teacher", "ema", "k"}]
    # byol-pytorch's net. is online_encoder.net.; by name where as long (the same sentence at every call)
    online = sorted((p for p in found if p not in target), key=lambda p: (len(p), p))
    if not online:
        return ""
    # (map_location: a checkpoint of a GPU's tensors, read on a machine without one)
    prefix, sd = online[0], f"torch.load({str(path)!r}, map_location='cpu')" + "['state_dict']" * lightning
    where = (f"; its online encoder looks to be the ResNet under the keys '{prefix}'" if prefix else
             "; its 'state_dict' looks to be a ResNet's" if lightning else "; it looks to be a ResNet's") + (
        f" (not {', '.join(repr(p) for p in sorted(target))}: the target's)" if target else "")
    if found[prefix]:
        return (f"{where}, numbered as nn.Sequential(*list(resnet.children())[:-1]) numbers it (lightly's "
                "backbone): load it into that model and give the ResNet's own, torch.save(resnet.state_dict(), "
                "'encoder.pt'), which holds the same weights")
    save = (f"sd = {sd}; torch.save({{k[{len(prefix)}:]: v for k, v in sd.items() if k.startswith('{prefix}')}}, "
            "'encoder.pt')" if prefix else f"torch.save({sd}, 'encoder.pt')")
    return f"{where}: save that alone, {save}, and give encoder.pt"


def _of_a_given_net(config_yaml: Path) -> bool:
    """Whether ``config_yaml`` is the config of a run on a network given from Python (``model.backbone: custom``);
    false where it is not there or does not read (a config.yaml from elsewhere: said where it is loaded)."""
    try:
        return config_yaml.is_file() and read_preset(config_yaml).get("model", {}).get("backbone") == GIVEN_BACKBONE
    except (ConfigError, OSError, AttributeError):
        return False


def _unwrapped(state: object) -> object:
    """A state_dict saved from a DDP- or torch.compile-wrapped model without its key prefixes, in
    either order (``module._orig_mod.``: DDP of a compiled model; ``_orig_mod.module.``: the reverse)."""
    def prefix_of(state: object) -> Optional[str]:
        if not isinstance(state, dict) or not state or not all(isinstance(k, str) for k in state):
            return None
        return next((p for p in ("module.", "_orig_mod.") if all(k.startswith(p) for k in state)), None)

    while (prefix := prefix_of(state)) is not None:
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _contents(state: object) -> str:
    """What a file that is no checkpoint holds, in a few words."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}"
    keys = ", ".join(str(k) for k in list(state)[:3]) + (", ..." if len(state) > 3 else "")
    return f"its keys: {keys}" if state else "it holds an empty dict"


def _find_relative_root(config: Config, checkpoint: Path) -> None:
    """A relative ``data.root`` missing from here, for a checkpoint at ``BASE/out_dir/checkpoints/``
    of a run with a relative ``train.out_dir``: ``BASE/data.root``, where ``byol pretrain`` ran."""
    root, out_dir = Path(config.data.root).expanduser(), Path(config.train.out_dir)
    if root.is_absolute() or root.exists() or out_dir.is_absolute() or ".." in out_dir.parts:
        return
    run_dir = checkpoint.resolve().parent.parent
    n = len(out_dir.parts)
    if n == 0 or run_dir.parts[-n:] != out_dir.parts:
        return
    found = Path(*run_dir.parts[:-n]) / root
    if found.exists():
        note(f"data.root {config.data.root} is relative and not found here; using {found.resolve()}, "
             f"from the directory the run was started in")
        config.data.root = str(found.resolve())


def _initial_net(config: Config) -> nn.Module:
    """The encoder a run with ``config`` starts from: ``pretrain`` seeds rank 0 with ``train.seed``
    just before building the model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        return _net_of(build_model(config), config)


def _net_of(byol, config: Config) -> nn.Module:
    """A full torchvision ResNet holding the online encoder of ``byol`` (its classifier freshly initialized)."""
    m = config.model
    net = resnet(m.backbone, cifar_stem=m.cifar_stem, width=m.width)
    trunk = byol.encoder.body.state_dict() if hasattr(byol.encoder, "body") else byol.encoder.state_dict()
    missing, unexpected = net.load_state_dict(trunk, strict=False)
    if unexpected or any(not k.startswith("fc.") for k in missing):
        raise CheckpointError(f"the encoder does not match {m.backbone}: {missing or unexpected}")
    return net
