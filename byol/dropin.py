"""byol-pytorch's learner, ``byol.BYOL``: :class:`~byol.model.BYOLModel` built on a network as byol-pytorch
builds it, with its calls, names and EMA schedule, so that its users' scripts run unchanged."""

import copy
import numbers
import warnings
from itertools import chain
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from .backbones import cut_at, feature_width
from .distributed import convert_sync_batchnorm, world_size
from .ema import build_target
from .errors import outside_stacklevel
from .inputs import (check_arguments, check_batch_shape, check_is_tensor, check_network_input, check_pixel_range,
                     check_pixel_type, check_settings)
from .model import BYOLModel
from .schedules import tau_schedule


_eager_pixel_range = torch.compiler.disable(check_pixel_range)

# A representation wider than this is a layer's output flattened unpooled, it seems: a pooled one is a few thousand
# values at most (ResNet-50's 2,048, RegNetY-128GF's 7,392), a ViT-B/16's token sequence 151,296
WIDE_REPRESENTATION = 16_384


def _is_compiling_function() -> Callable[[], bool]:
    """torch.compiler.is_compiling from torch 2.3, torch._dynamo's before."""
    return getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling


# Found once, not at each call: torch 2.2's torch.compile cannot trace the getattr (a graph break).
_is_compiling = _is_compiling_function()


def _compiling() -> bool:
    """Whether torch.compile is tracing the call."""
    return _is_compiling()


def _float_dtype(tensors, default: torch.dtype) -> torch.dtype:
    """The dtype of the first floating-point tensor of ``tensors``, or ``default`` where there is none."""
    for t in tensors:  # (not next(..., default): torch 2.2's torch.compile breaks its graph on that)
        if t.is_floating_point():
            return t.dtype
    return default


def sync_norms(mlp: nn.Module, device: torch.device) -> nn.Module:
    """``mlp`` with BatchNorm statistics over all processes, for ``sync_batchnorm=True``.

    PyTorch's SyncBatchNorm, as byol-pytorch uses (outside a process group it normalizes each
    process's batch); on the CPU within a process group, where PyTorch's refuses to run,
    :class:`~byol.distributed.GlobalBatchNorm`.
    """
    if world_size() > 1:
        return convert_sync_batchnorm(mlp, device)
    return nn.SyncBatchNorm.convert_sync_batchnorm(mlp)


# How a learner's encoder took hidden_layer, by its state_dict keys: online.encoder.body.* (HiddenLayer) or .net.*
_CUTS = {"body": "cut by tracing", "net": "taken by a forward hook (trace=False, or a network tracing could not cut)"}


def _cut_by(keys) -> Optional[str]:
    """``"body"`` or ``"net"`` (:data:`_CUTS`) for the keys of a learner's state_dict; None for neither, or both (a
    network's own output, hidden_layer=-1, whose children are called so: a review)."""
    cuts = {parts[2] for parts in (str(key).split(".") for key in keys)
            if parts[:2] == ["online", "encoder"] and len(parts) > 3 and parts[2] in _CUTS}
    return cuts.pop() if len(cuts) == 1 else None


class OnlineEncoder(nn.Module):
    """byol-pytorch's ``learner.online_encoder``: the network passed in and the projector.

    A view of the learner's own modules, nothing copied: ``.net`` is the network that training
    updates, ``.projector`` the learner's projector, and calling it returns
    ``(projection, representation)``, or the representation alone with ``return_projection=False``.
    """

    def __init__(self, net: nn.Module, encoder: nn.Module, projector: nn.Module):
        super().__init__()
        self.net, self.projector = net, projector
        # Unregistered: its parameters are net's, and the state_dict keys stay byol-pytorch's
        # (net.*, projector.*).
        object.__setattr__(self, "encoder", encoder)

    def forward(self, x: torch.Tensor, return_projection: bool = True):
        representation = self.encoder(x).flatten(1)  # (B, D), as byol-pytorch's
        if not return_projection:
            return representation
        return self.projector(representation), representation


class BYOL(BYOLModel):
    """Bootstrap Your Own Latent (Grill et al. 2020), as byol-pytorch's learner.

    The method is :class:`~byol.model.BYOLModel`'s: ``online = encoder -> projector``, ``predictor`` on
    top of it, and ``target``, a deep copy of ``online`` updated only by :meth:`update_target` (an
    exponential moving average). This class builds it on ``net`` as byol-pytorch does, and adds its calls
    and names.

    Two ways to call it:

    * ``loss = model(view1, view2)``: two augmented batches in, the symmetrized loss out; they go
      into the network as they are (with the default augmentations, uint8 is a ``ValueError``).
    * ``loss = model(images)``: byol-pytorch style; both views are drawn here with
      ``augment_fn`` / ``augment_fn2`` (the paper's two recipes by default). With the default
      augmentations, images are uint8 or float in [0, 1]; each batch's dtype is checked, and the
      first batch's values (one host sync, once): a float batch in 0..255 or holding NaN is a
      ``ValueError``, one below -0.5 (normalized) a warning.

    Inputs are (B, 3, H, W) batches, with B >= 2 in training mode (the projector's and predictor's
    BatchNorm need two images per batch); another shape is a ``ValueError``.

    As in byol-pytorch, the projector and predictor are put on ``net``'s device, and
    ``learner.net`` and ``learner.online_encoder`` (``.net``, ``.projector``) are there.

    Args:
        net: the encoder, any ``nn.Module`` taking (B, 3, H, W); the projector and predictor are
            built in the dtype of the representation it returns (with ``feature_dim`` given, its own).
        image_size: side of the augmented views; also used to find the feature width.
        hidden_layer: where the representation is taken, as in byol-pytorch: an index into
            ``net``'s children (default ``-2``, a torchvision ResNet's avgpool), or a module
            name (``"avgpool"``); ``-1`` (or ``None``) is ``net``'s own output. A layer is cut out
            by symbolic tracing, or, where that fails, taken by a forward hook while all of ``net``
            runs (:class:`~byol.backbones.HookedLayer`). Training updates ``net``'s own parameters.
        projection_size, projection_hidden_size: the MLPs' output and hidden widths.
        augment_fn, augment_fn2: callables on a batch, for the one-argument call;
            ``augment_fn2`` defaults to ``augment_fn``, and both to the paper's two recipes.
        moving_average_decay: the EMA rate tau (its base value when ``total_steps`` is set).
        use_momentum: ``False`` uses the online network itself (no gradient) as the target.
        sync_batchnorm: BatchNorm statistics of the projector and predictor over all processes
            (:func:`sync_norms`); ``None`` does so when a process group of more than one is up.
            ``net``'s own BatchNorm layers are left as they are (convert them yourself).
        total_steps: if set, :meth:`update_moving_average` follows the paper's cosine schedule
            from ``moving_average_decay`` to 1 over this many calls; otherwise tau is constant.
        use_predictor: ``False`` drops the predictor (an ablation that collapses; see paper, table 5).
        concat_views: run both views through each branch (encoder, projector, predictor, target) as one
            batch of 2B (shared BatchNorm statistics, as byol-pytorch does) instead of one view at a
            time as the reference code does.
        feature_dim: the encoder's output width; found automatically when ``None``.
        trace: ``False`` takes ``hidden_layer`` with a forward hook while all of ``net`` runs, as
            byol-pytorch does, so that what ``net`` does at each call counts: forward hooks on
            ``net`` or its containers, modules replaced and attributes changed after construction.
            Tracing (the default) fixes ``net``'s forward as it was at construction, and runs no
            layer after ``hidden_layer``. Under DDP, ``trace=False`` needs ``find_unused_parameters=True``: the
            layers after ``hidden_layer`` run without a gradient.
        use_simplicial_embeddings, sem_*: byol-pytorch's; ``False`` (the paper's BYOL) is accepted,
            with ``sem_*`` ignored as there; ``True``, or ``sem_*`` alone (byol-pytorch's default
            would use them), is a ``ValueError``.
    """

    def __init__(self, net: nn.Module, image_size: int = 224, hidden_layer: Union[str, int, None] = -2,
                 projection_size: int = 256, projection_hidden_size: int = 4096,
                 augment_fn: Optional[Callable] = None, augment_fn2: Optional[Callable] = None,
                 moving_average_decay: float = 0.996, use_momentum: bool = True,
                 sync_batchnorm: Optional[bool] = None, use_simplicial_embeddings: Optional[bool] = None,
                 sem_num_simplices: Optional[int] = None, sem_simplex_dim: Optional[int] = None,
                 sem_temperature: Optional[float] = None, *,
                 total_steps: Optional[int] = None, use_predictor: bool = True, concat_views: bool = False,
                 feature_dim: Optional[int] = None, trace: bool = True):
        check_arguments(net, image_size, default_views=augment_fn is None,
                        augment_fns=(augment_fn, augment_fn2))
        check_settings(projection_size=projection_size, projection_hidden_size=projection_hidden_size,
                       moving_average_decay=moving_average_decay, total_steps=total_steps, feature_dim=feature_dim)
        sem = (sem_num_simplices, sem_simplex_dim, sem_temperature)
        if use_simplicial_embeddings or (use_simplicial_embeddings is None and any(v is not None for v in sem)):
            # (sem_* alone: byol-pytorch's default turns it on; with False it ignores them, as here)
            raise ValueError("byol-pytorch's simplicial embedding (use_simplicial_embeddings, its default, and "
                             "sem_*; not in the BYOL paper) is not in byol; leave them out or pass "
                             "use_simplicial_embeddings=False")
        tensors = list(chain(net.parameters(), net.buffers()))
        device = tensors[0].device if tensors else torch.device("cpu")
        # The probe's dtype is net's (net.double() before the learner, as learner.double() after); the
        # MLPs', its representation's (float32 from a bfloat16 trunk that converts its output)
        dtype = _float_dtype(tensors, torch.float32)
        encoder = cut_at(net, hidden_layer, trace=trace)
        dim, out_dtype = feature_dim, dtype
        if feature_dim is None:
            dim, out_dtype = feature_width(encoder, image_size, device, dtype)
            if dim > WIDE_REPRESENTATION:  # (a user test of a ViT: the default -2 took its unpooled token sequence)
                warnings.warn(f"the representation at hidden_layer={hidden_layer!r} is {dim:,} values an image, a "
                              f"layer's output flattened, not pooled, it seems: the projector's first layer holds "
                              f"{dim * projection_hidden_size / 1e6:,.0f} million weights; BYOL's representation is a "
                              "pooled one: give hidden_layer a layer that pools (a ResNet's 'avgpool'), or wrap the "
                              "network so that its penultimate child does",
                              stacklevel=outside_stacklevel())
        dtype = out_dtype if out_dtype.is_floating_point else dtype
        if sync_batchnorm is None:  # byol-pytorch's default
            sync_batchnorm = world_size() > 1

        def place(mlp: nn.Module) -> nn.Module:
            mlp = mlp.to(dtype)
            return (sync_norms(mlp, device) if sync_batchnorm else mlp).to(device)

        super().__init__(encoder, dim, projection_size, projection_hidden_size, use_predictor=use_predictor,
                         use_momentum=use_momentum, concat_views=concat_views, place_mlp=place)
        # Not a registered submodule: the encoder holds its parameters, and the state_dict
        # keeps one copy of each.
        object.__setattr__(self, "net", net)
        self.moving_average_decay = moving_average_decay
        self.total_steps = total_steps
        self.ema_step = 0
        self.check_first_batch = augment_fn is None  # the paper's view 1, which takes uint8 or [0, 1]
        self.rgb_input = augment_fn is None  # the paper's views take 3 channels
        # In training the projector's BatchNorm needs two rows: per process, unless synchronized.
        self.min_train_batch = 1 if sync_batchnorm and world_size() > 1 else 2
        if augment_fn is None:
            from .augment import Augment, paper_views  # lazily: augment is only needed for this call style
            view1, view2 = paper_views(image_size)
            augment_fn = Augment(view1)
            augment_fn2 = Augment(view2) if augment_fn2 is None else augment_fn2
        elif augment_fn2 is None:
            augment_fn2 = augment_fn  # as byol-pytorch: one augmentation for both views
        self.augment_fn, self.augment_fn2 = augment_fn, augment_fn2

    @property
    def online_encoder(self) -> OnlineEncoder:
        """byol-pytorch's ``online_encoder``: ``.net``, ``.projector``, ``(x) -> (projection, representation)``;
        one object, as byol-pytorch's attribute is."""
        return self._view("_online_view", self.online.encoder,
                          lambda: OnlineEncoder(self.net, self.online.encoder, self.online.projector))

    def _view(self, name: str, encoder: nn.Module, build: Callable[[], "OnlineEncoder"]) -> "OnlineEncoder":
        """The byol-pytorch view ``name`` of ``encoder``, built once (and again after :meth:`_apply` or a new target).
        Unregistered: its modules are the learner's own, and the state_dict keeps its keys."""
        view = self.__dict__.get(name)  # absent from a learner pickled before the views were kept
        # Another encoder's: a DataParallel replica's __dict__ holds the original's view, whose modules (on the first
        # device) its forward ran (a review)
        if view is None or view.encoder is not encoder:
            built = build()
            built.training = self.training  # (a review: built after learner.eval(), it said it was training)
            if view is not None:  # its hooks run in a replica, as DataParallel's replicas of modules keep theirs
                built.__dict__.update({key: value for key, value in vars(view).items() if "_hooks" in key})
            view = built
            object.__setattr__(self, name, view)
        return view

    def forward(self, x: torch.Tensor, view2: Union[torch.Tensor, bool, None] = None,
                return_embedding: Optional[bool] = None, return_projection: bool = True):
        """The loss for two views, or for one batch of images augmented here.

        With ``return_embedding=True`` it returns the online (projection, embedding) of ``x``
        instead, as byol-pytorch does (only the embedding if ``return_projection=False``), ``x``
        fed to the network as it is (with the default views, a float batch: uint8 is a ``ValueError``);
        byol-pytorch's positional ``learner(x, True)`` and ``learner(x, True, False)`` mean the same.
        """
        if view2 is not None and (not torch.is_tensor(view2) or view2.dim() == 0):
            # byol-pytorch's return_embedding, which takes any truthy value: bool, int, NumPy's, a 0-dim tensor
            if not isinstance(view2, (numbers.Number, np.bool_, torch.Tensor)):
                raise TypeError(f"the second argument must be a tensor (the second view) or, as in byol-pytorch, "
                                f"return_embedding (True or False), not {type(view2).__name__}")
            view2 = bool(view2)
        if isinstance(view2, bool):  # byol-pytorch's order: forward(x, return_embedding, return_projection)
            if return_embedding is not None:  # the third positional argument is its return_projection
                return_projection = return_embedding
            view2, return_embedding = None, view2
        return_embedding = bool(return_embedding)
        # The projector's BatchNorm batch statistics need two rows; the encoder alone, or eval
        # mode (running statistics), takes one image.
        needs_batch_stats = self.training and (return_projection or not return_embedding) and not (
            self.concat_views and not return_embedding)  # the projector and predictor see 2B rows
        min_batch = self.min_train_batch if needs_batch_stats else 1
        if self.rgb_input:  # with augment_fn given, the batch is whatever it takes
            check_is_tensor(x)
        check_batch_shape(x, min_batch, rgb=self.rgb_input and view2 is None and not return_embedding,
                          image=self.rgb_input)
        if return_embedding:
            if self.rgb_input:
                check_network_input(x)
            return self.online_encoder(x, return_projection=return_projection)
        if view2 is not None:
            check_batch_shape(view2, min_batch, image=self.rgb_input)
            if self.rgb_input:  # an image network; with augment_fn given, its views may be anything (tokens)
                check_network_input(x, views=True)
                check_network_input(view2, views=True)
        else:
            if self.check_first_batch:  # the range of the first alone: the check reads a value back to the host
                # Under torch.compile(learner), run as it is: a break in the graph, not torch's warning of one
                (_eager_pixel_range if _compiling() else check_pixel_range)(x)
                self.check_first_batch = False
            elif self.rgb_input:
                check_pixel_type(x)
            x, view2 = self.augment_fn(x), self.augment_fn2(x)
            if self.rgb_input:  # float32 views, for a network that learner.to(dtype) may have converted
                dtype = _float_dtype(self.online.parameters(), x.dtype)
                x, view2 = x.to(dtype), view2.to(dtype)
        return self.forward_views(x, view2)[0]

    def current_tau(self) -> float:
        """The tau that the next :meth:`update_moving_average` will use."""
        if self.total_steps is None:
            return self.moving_average_decay
        return tau_schedule(self.ema_step, self.total_steps, self.moving_average_decay)

    def update_moving_average(self) -> None:
        """byol-pytorch's name for the EMA step, with the tau schedule built in."""
        self.update_target(self.current_tau())
        self.ema_step += 1

    def _apply(self, fn, *args, **kwargs):
        # net is not a submodule (the encoder holds its parameters), but the parts of it the encoder
        # leaves out (a ResNet's fc) go along with .to(), .cuda() and .half(), as in byol-pytorch;
        # target_encoder.net's copies of them are made again.
        self.net._apply(fn, *args, **kwargs)
        self.__dict__.pop("_target_view", None)
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True) -> "BYOL":
        self.net.train(mode)  # learner.eval() puts all of net in eval mode, as in byol-pytorch
        for name in ("_online_view", "_target_view"):  # and the views, target_encoder.net's copy of net with them
            view = self.__dict__.get(name)  # (a review: it stayed in training mode, its BatchNorm moving the target's)
            if view is not None:
                view.train(mode)
        return super().train(mode)

    # byol-pytorch's names for the same parts, so that its users' scripts run unchanged.
    @property
    def online_predictor(self) -> nn.Module:
        return self.predictor

    @property
    def target_encoder(self) -> Optional[OnlineEncoder]:
        """The target branch as byol-pytorch's ``target_encoder``: ``(x) -> (projection, representation)``,
        and ``.net`` the target's copy of ``net`` (:meth:`target_net`); None without momentum."""
        if self.target is None:
            return None
        return self._view("_target_view", self.target.encoder,
                          lambda: OnlineEncoder(self.target_net(), self.target.encoder, self.target.projector))

    def target_net(self) -> nn.Module:
        """The target's ``net``, with ``net``'s keys (it loads into the network passed in): the target
        encoder's tensors themselves, and copies of ``net``'s own for the layers after
        ``hidden_layer``, which neither branch runs (a ResNet's ``fc``). A new copy at each call;
        ``target_encoder.net`` keeps one."""
        if self.target is None:
            raise ValueError("use_momentum=False: the target is the online network itself, learner.net")
        online = chain(self.online.encoder.named_parameters(), self.online.encoder.named_buffers())
        target = dict(chain(self.target.encoder.named_parameters(), self.target.encoder.named_buffers()))
        # frozen as the target is, the copies of net's own layers too (a user test found fc's trainable)
        return copy.deepcopy(self.net, {id(tensor): target[name] for name, tensor in online}).requires_grad_(False)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """torch's, with one sentence for byol-pytorch's keys (``online_encoder.net.*``), which are not ours."""
        if any(str(key).startswith("online_encoder.net.") for key in state_dict):
            raise ValueError("this is a byol-pytorch learner's state_dict, whose keys are not byol's: load its "
                             "network into yours, net.load_state_dict({k.removeprefix('online_encoder.net.'): v "
                             "for k, v in state.items() if k.startswith('online_encoder.net.')}), then build the "
                             "learner on net (the projector and predictor start afresh)")
        saved, built = _cut_by(state_dict), _cut_by(self.state_dict(keep_vars=True))  # buffers too, as saved
        if strict and saved is not None and built is not None and saved != built:
            raise ValueError(f"this state_dict is of a learner whose hidden_layer was {_CUTS[saved]}, and this one's "
                             f"is {_CUTS[built]}: build the learner as the saved one was (trace={saved == 'body'})")
        self.__dict__.pop("_target_view", None)  # assign=True puts new tensors in the target
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def use_momentum(self) -> bool:
        return self.target is not None

    @property
    def augment1(self) -> Callable:
        return self.augment_fn

    @property
    def augment2(self) -> Callable:
        return self.augment_fn2

    def reset_moving_average(self) -> None:
        """A new target, a copy of the online branch as it is now (byol-pytorch's reset)."""
        if self.target is not None:
            self.target = build_target(self.online)
            self.__dict__.pop("_target_view", None)

    def get_extra_state(self) -> dict:
        return {"ema_step": self.ema_step}

    def set_extra_state(self, state: dict) -> None:
        try:
            self.ema_step = int(state["ema_step"])
        except (KeyError, TypeError, ValueError) as e:  # (as torch's own refusals: a review found a traceback)
            raise RuntimeError(f"_extra_state is not a BYOL learner's ({type(e).__name__}: {e})") from None
