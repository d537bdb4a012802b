"""Encoders: any ``nn.Module`` cut at a hidden layer, and the width of its output (torchvision ResNets by name:
``resnets.py``)."""

import contextlib
import copy
import difflib
import numbers
import re
import threading
import warnings
from itertools import chain
from typing import Union

import torch
from torch import nn
from torchvision.models.feature_extraction import DualGraphModule, NodePathTracer, create_feature_extractor

from .errors import outside_stacklevel
# (defined beside extract_features, which puts modes back too and imports no torchvision)
from .features import keep_modes
# byol.backbones' ResNets as well, as the package, its modules, tests, benchmarks and CONTRIBUTING.md name them there
from .resnets import RESNETS, resnet, resnet_settings

__all__ = ["RESNETS", "resnet", "resnet_settings", "keep_modes", "flat_representation", "HiddenLayer", "HookedLayer",
           "cut_at", "strided_over_one_pixel", "feature_dim", "NetDoesNotRun", "feature_width"]

try:  # the tracer settings create_feature_extractor traces with (torchvision.ops' modules as leaves)
    from torchvision.models.feature_extraction import _set_default_tracer_kwargs
    _TRACER_KWARGS = _set_default_tracer_kwargs(None)
except ImportError:  # a torchvision without it: plain tracing
    _TRACER_KWARGS = {}


# One trace at a time in the process, and none while a network is measured: torch.fx patches nn.Module's methods
# process-wide while it traces, so that a network called in another thread meanwhile failed ("module is not
# installed as a submodule"), and two traces at once (learners built in a thread pool) restored each other's
# patches, which then failed every nn.Module call in the process. (warnings.catch_warnings is global too.)
_TRACING = threading.RLock()


def flat_representation(out: object, where: str) -> torch.Tensor:
    """``out`` flattened to (B, D); a TypeError naming ``where`` if it is not one tensor (a dict, a tuple)."""
    if not torch.is_tensor(out):
        what = f"a dict with keys {list(out)}" if isinstance(out, dict) else f"a {type(out).__name__}"
        raise TypeError(f"{where} is {what}, not a tensor: BYOL's representation is one tensor; set hidden_layer "
                        "to a module that outputs one (such as the backbone's name), or wrap the network so that "
                        "it returns one")
    if out.dim() < 2:  # (a user test: a net ending in .squeeze(1) failed in torch's words)
        raise ValueError(f"{where} has shape {tuple(out.shape)}: BYOL's representation is a batch of vectors, (B, D) "
                         "or more dimensions flattened to it; set hidden_layer to a layer before it")
    return out.flatten(1)


class HiddenLayer(nn.Module):
    """The output of one named layer of ``net``, flattened to (B, D).

    Built by symbolic tracing (torchvision's feature extractor), not forward hooks, so it
    works under DDP and ``torch.compile``. It holds the same parameter objects as ``net``:
    training it trains ``net``. Its state_dict keys are ``net``'s, less the unused layers.
    """

    def __init__(self, net: nn.Module, layer: str):
        super().__init__()
        self.layer = layer
        tracer_kwargs = _tracer_kwargs(net, layer)
        # (tracing sets net's modes, module by module; and runs, on net's own tensors, what its forward does to them)
        with _TRACING, keep_modes(net), warnings.catch_warnings(), _tensors_kept(net, layer):
            # torchvision's note when the train and eval graphs differ (googlenet's auxiliary heads):
            # the node taken is in both.
            warnings.filterwarnings("ignore", message="NOTE: The nodes obtained by tracing")
            self.body = create_feature_extractor(net, return_nodes={_last_call(net, layer, tracer_kwargs): "out"},
                                                 tracer_kwargs=tracer_kwargs)
        if "__deepcopy__" not in vars(DualGraphModule):  # torchvision < 0.21
            type(self.body).__deepcopy__ = _deepcopy_dual_graph  # (torch.fx makes each body a class of its own)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Its forward, not its call: torch.fx's call prints the traceback of an error in the traced code
        # to stderr (24 lines before "the batch does not fit in memory"); the body has no hooks of its own.
        return flat_representation(self.body.forward(x)["out"], f"the output of hidden_layer={self.layer!r}")


@contextlib.contextmanager
def _tensors_kept(net: nn.Module, layer: str):
    """Put back ``net``'s parameters and buffers as they were before the tracing inside, and refuse (a ValueError) a
    trace that changed one: a forward that updates its own tensor (a custom layer's running statistic, ``mul_``
    then ``add_``) runs that update on the tensor itself at each trace, and the traced forward leaves it out (a user
    test: building the learner halved a statistic twice, and training never moved it again)."""
    named = list(chain(net.named_parameters(remove_duplicate=False), net.named_buffers(remove_duplicate=False)))
    # (parameters are not copied: a forward that changes one in place cannot be traced with a gradient)
    saved = {name: t.detach().clone() for name, t in net.named_buffers(remove_duplicate=False)}
    before = [(name, t, t._version) for name, t in named]
    try:
        yield
    finally:
        changed = []
        for name, t, version in before:
            parent, _, attr = name.rpartition(".")
            module = net.get_submodule(parent)
            kind = module._parameters if attr in module._parameters else module._buffers
            if kind.get(attr) is not t or t._version != version:
                changed.append(name)
                kind[attr] = t  # (the forward set another tensor in its place)
                if name in saved:
                    with torch.no_grad():
                        t.copy_(saved[name])
    if changed:
        raise ValueError(f"net's forward changes {', '.join(changed[:3])}{' and more' if changed[3:] else ''} when "
                         f"it runs, which the traced forward up to {layer!r} would leave out")


def _deepcopy_dual_graph(self: DualGraphModule, memo: dict) -> DualGraphModule:
    """torchvision 0.21's ``DualGraphModule.__deepcopy__``: before it, a copy (the target network) kept
    the graph of the mode it was in, not its train and eval graphs, and ``.eval()`` or ``.train()`` of
    it failed (AttributeError: 'GraphModule' object has no attribute 'eval_graph')."""
    copied = type(self).__new__(type(self))  # (torch.fx gives each copy a class of its own, too)
    memo[id(self)] = copied
    fake = torch.fx.graph_module._CodeOnlyModule(copy.deepcopy(self.__dict__, memo))
    DualGraphModule.__init__(copied, fake, fake.__dict__["train_graph"], fake.__dict__["eval_graph"],
                             class_name=type(self).__name__)
    for attr in ("_state_dict_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks"):
        if attr in self.__dict__:  # lost in __init__, as in torch.fx's own __deepcopy__
            setattr(copied, attr, copy.deepcopy(self.__dict__[attr], memo))
    copied.meta = copy.deepcopy(getattr(self, "meta", {}), memo)
    type(copied).__deepcopy__ = _deepcopy_dual_graph  # a copy of the copy, too
    return copied


class _OneModule(type):
    """A class whose ``isinstance`` holds for one module object alone (``cls.module``): the tracer's
    ``leaf_modules`` takes types, and the same type may hold it (nn.Sequential in nn.Sequential)."""

    def __instancecheck__(cls, obj: object) -> bool:
        return obj is cls.module


def _tracer_kwargs(net: nn.Module, layer: str) -> dict:
    """The tracer settings under which ``layer`` is traced as one call, what it returns, not inlined:
    a module with children inlined was cut at the last value computed inside it (a user test: a block
    that kept a side output, ``self.aux_out = self.aux(out)``, gave that, not its ``out``). So it runs
    as a module at each call: its own hooks fire, and its submodules are those it holds then."""
    module = net.get_submodule(layer)
    if not any(True for _ in module.children()) or "leaf_modules" not in _TRACER_KWARGS:
        return dict(_TRACER_KWARGS)  # a leaf already (or an old torchvision's tracer: inlined, as before)
    whole = _OneModule("Whole", (), {"module": module})
    return {**_TRACER_KWARGS, "leaf_modules": [*_TRACER_KWARGS["leaf_modules"], whole]}


def _last_call(net: nn.Module, layer: str, tracer_kwargs: dict) -> str:
    """The traced node of ``layer``'s last call, as byol-pytorch's hook keeps its last output: a
    layer may run more than once (a torchvision BasicBlock's ``relu`` twice). Found by what each
    node calls, not by its name: torchvision names a later call ``relu_1``, but also a functional
    ``F.relu`` after a module ``relu``, and a module ``act_1`` ``act`` where none is named ``act``."""
    def calls(training: bool) -> list[str]:
        net.train(training)
        tracer = NodePathTracer(**tracer_kwargs)
        graph = tracer.trace(net)
        return [tracer.node_to_qualname[n] for n in graph.nodes if n.op == "call_module" and n.target == layer]

    with keep_modes(net):
        in_train = calls(True)
        if len(in_train) <= 1:  # the usual case: one trace, not two
            return in_train[0] if in_train else layer
        in_eval = calls(False)
    both = [name for name in in_train if name in in_eval]  # create_feature_extractor takes it in both modes
    return both[-1] if both else layer


class HookedLayer(nn.Module):
    """The output of one named layer of ``net``, flattened to (B, D), taken by a forward hook while
    all of ``net`` runs, as byol-pytorch does: for networks that symbolic tracing cannot cut (a
    forward with data-dependent control flow). The layers after it run too, unused, and their
    parameters get no gradient (under DDP: ``find_unused_parameters=True``).
    """

    def __init__(self, net: nn.Module, layer: str):
        super().__init__()
        self.net, self.layer = net, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taken: list[torch.Tensor] = []
        # Its last call's output, as byol-pytorch's hook keeps (a layer may run more than once),
        # copied: an in-place layer after it (ReLU(inplace=True)) would change it.
        def keep(module: nn.Module, inputs: object, output: object) -> None:
            taken[:] = [output.clone() if torch.is_tensor(output) else output]

        hook = self.net.get_submodule(self.layer).register_forward_hook(keep)
        try:
            self.net(x)
        finally:
            hook.remove()
        if not taken:
            raise ValueError(f"hidden_layer={self.layer!r} did not run in the network's forward")
        return flat_representation(taken[0], f"the output of hidden_layer={self.layer!r}")


def _wrapper_hint(net: nn.Module) -> str:
    """A hint where ``net`` is torch.compile's or DataParallel's wrapper, whose one child holds the layers a
    ``hidden_layer`` names (a user test: a compiled ResNet's 'avgpool' was not a module, its children _orig_mod)."""
    inner = next((getattr(net, name) for name in ("_orig_mod", "module")
                  if isinstance(getattr(net, name, None), nn.Module)), None)
    if inner is None or list(net.children()) != [inner]:
        return ""
    return (f"; net is {type(net).__name__}'s wrapper of a {type(inner).__name__}: give the {type(inner).__name__} "
            "itself, and compile or wrap the learner instead")


def cut_at(net: nn.Module, hidden_layer: Union[str, int, None], hook_fallback: bool = True,
           trace: bool = True) -> nn.Module:
    """Return an encoder giving the representation at ``hidden_layer`` of ``net``.

    ``None`` or ``-1`` uses ``net``'s own output (byol-pytorch's ``-1``: no cutting, so any
    network); a string names a module (e.g. ``"avgpool"``); another integer indexes ``net``'s
    direct children as byol-pytorch does (``-2`` is ResNet's avgpool). The network is cut by
    symbolic tracing (:class:`HiddenLayer`); where that fails, with ``hook_fallback`` the layer's
    output is taken by a forward hook (:class:`HookedLayer`, with a warning), else it is an error.
    ``trace=False`` takes the hook at once, for a network whose forward changes after this call.
    """
    if not isinstance(net, nn.Module):  # (a function failed on "no attribute 'named_children'"; -1 returned it)
        raise TypeError(f"cut_at takes the network (an nn.Module), not {type(net).__name__} {net!r:.60}: "
                        "cut_at(net, hidden_layer)")
    if hidden_layer is not None and (isinstance(hidden_layer, bool)
                                     or not isinstance(hidden_layer, (str, numbers.Integral))):
        named = next((name for name, m in net.named_modules() if m is hidden_layer), None)
        hint = f"; for this module, hidden_layer={named!r}" if named else ""
        raise TypeError(f"hidden_layer must be a module's name (such as 'avgpool'), a child's index (such as -2) or "
                        f"None, not {type(hidden_layer).__name__} {hidden_layer!r:.60}{hint}")
    if hidden_layer is None or hidden_layer == -1:
        return net
    if hidden_layer == "":  # (the root's name: it was hooked, with tracing's warning)
        raise ValueError("hidden_layer='' names no layer; None (or -1) takes the network's own output")
    if isinstance(hidden_layer, numbers.Integral):
        children = [name for name, _ in net.named_children()]
        try:
            hidden_layer = children[hidden_layer]
        except IndexError:  # (a user test: a one-child network with the default -2 was told nothing more)
            raise ValueError(f"hidden_layer={hidden_layer} is out of range: the network has {len(children)} "
                             f"{'child' if len(children) == 1 else 'children'} ({', '.join(children) or 'none'}); "
                             f"hidden_layer=-1 takes the network's own output{_wrapper_hint(net)}") from None
    names = [name for name, _ in net.named_modules() if name]
    if hidden_layer not in names:
        close = difflib.get_close_matches(str(hidden_layer), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"hidden_layer={hidden_layer!r} is not a module of the network{hint}; its children are "
                         f"{', '.join(name for name, _ in net.named_children()) or 'none'}{_wrapper_hint(net)}")
    if not trace:
        return HookedLayer(net, hidden_layer)
    try:
        return HiddenLayer(net, hidden_layer)
    except Exception as e:  # tracing fails on data-dependent control flow, among others
        why = f"symbolic tracing could not cut the network at hidden_layer={hidden_layer!r} ({type(e).__name__}: {e})"
        if not hook_fallback:
            raise ValueError(why) from e
    warnings.warn(f"{why}; its output is taken with a forward hook while the whole network runs, as byol-pytorch "
                  "does (under DDP, the layers after it need find_unused_parameters=True)",
                  stacklevel=outside_stacklevel())
    return HookedLayer(net, hidden_layer)


def _meta_output(encoder: nn.Module, image_size: int, dtype: torch.dtype):
    """``encoder``'s output for (2, 3, image_size, image_size) images, on the meta device (no real compute)."""
    meta = {k: torch.empty_like(v, device="meta") for k, v in
            [*encoder.named_parameters(), *encoder.named_buffers()]}
    x = torch.empty(2, 3, image_size, image_size, device="meta", dtype=dtype)
    with _TRACING, keep_modes(encoder):
        encoder.eval()  # eval so BatchNorm does not try to update its (real) running statistics
        return torch.func.functional_call(encoder, meta, (x,))


def strided_over_one_pixel(encoder: nn.Module, image_size: int) -> list[str]:
    """The names of ``encoder``'s 2-D convolutions that run strided, with a kernel wider than 1, over a map one pixel
    high or wide at ``image_size``: found on the meta device (none told after a forward that reads values)."""
    found: list[str] = []

    def check(name: str):
        def hook(module: nn.Conv2d, args) -> None:
            if any(side == 1 and stride > 1 and kernel > 1
                   for side, stride, kernel in zip(args[0].shape[-2:], module.stride, module.kernel_size)):
                found.append(name)
        return hook

    hooks = [m.register_forward_pre_hook(check(n)) for n, m in encoder.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        _meta_output(encoder, image_size, torch.float32)
    except Exception:  # noqa: BLE001 - e.g. .item() on a meta tensor: the convolutions before it are told
        pass
    finally:
        for hook in hooks:
            hook.remove()
    return found


def feature_dim(encoder: nn.Module, image_size: int) -> int:
    """The width of ``encoder``'s flattened output, found on the meta device (no real compute)."""
    return _meta_output(encoder, image_size, torch.float32).flatten(1).shape[1]


class NetDoesNotRun(ValueError):
    """A network that does not run on blank (2, 3, image_size, image_size) images (:func:`feature_width`);
    ``why``: torch's first line of the reason."""

    def __init__(self, message: str, why: str):
        super().__init__(message)
        self.why = why


def feature_width(encoder: nn.Module, image_size: int, device: torch.device,
                  dtype: torch.dtype = torch.float32) -> tuple[int, torch.dtype]:
    """The width and dtype of ``encoder``'s flattened output for (2, 3, image_size, image_size) images of
    ``dtype``: found on the meta device (no real compute), or, for a forward that reads values
    (data-dependent control flow), by running two blank images. A network that raises a RuntimeError
    or an AssertionError on them (torch's shape errors, torch._assert) is a :class:`NetDoesNotRun`."""
    try:
        out = _meta_output(encoder, image_size, dtype).flatten(1)
        return out.shape[1], out.dtype
    except Exception:  # e.g. "Tensor.item() cannot be called on meta tensors"; a real error raises below
        # Not under the caller's autocast: the dtype found is the one the MLPs are built in
        try:
            no_autocast = torch.autocast(device.type, enabled=False)
        except (RuntimeError, ValueError):  # a device type this torch has no autocast for: none to turn off
            no_autocast = contextlib.nullcontext()
        with _TRACING, keep_modes(encoder), torch.no_grad(), no_autocast:
            encoder.eval()  # eval so BatchNorm does not update its running statistics
            try:
                out = encoder(torch.zeros(2, 3, image_size, image_size, device=device, dtype=dtype))
            except (RuntimeError, AssertionError) as e:  # torch's shape errors; torch._assert's (torchvision's ViT)
                why = (str(e).splitlines() or [""])[0] or type(e).__name__
                # A traced torch._assert's message was formatted at tracing: "but got Proxy(getitem_2)!"
                why = re.sub(r"Proxy\(\w*\)", "another", why)
                raise NetDoesNotRun(f"net does not run on two blank {image_size}x{image_size} images (image_size="
                                    f"{image_size}): {why}; the representation's width is found "
                                    "on (2, 3, image_size, image_size) images: give image_size the size the network "
                                    "takes, or for a network taking other inputs (another number of channels) "
                                    "BYOL(..., feature_dim=D)", why) from e
    # A cut layer's output is checked where it is taken; this is the network's own.
    out = flat_representation(out, "the network's own output (hidden_layer=-1)")
    return out.shape[1], out.dtype
