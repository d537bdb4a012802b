"""The method: online branch, predictor, target branch, and the loss over two views."""

from collections import OrderedDict
from typing import Callable, Optional, Union

import torch
from torch import nn

from .backbones import cut_at, feature_dim as probe_feature_dim
from .ema import build_target, update_target
from .loss import byol_loss
from .schedules import tau_schedule


class MLP(nn.Sequential):
    """Linear -> BatchNorm -> ReLU -> Linear, the paper's projector and predictor (4096 -> 256)."""

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256):
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class BYOL(nn.Module):
    """Bootstrap Your Own Latent (Grill et al. 2020).

    ``online = encoder -> projector``, ``predictor`` on top of it, and ``target``, a deep copy
    of ``online`` updated only by :meth:`update_target` (an exponential moving average).

    Two ways to call it:

    * ``loss = model(view1, view2)``: two augmented batches in, the symmetrized loss out.
    * ``loss = model(images)``: byol-pytorch style; both views are drawn here with
      ``augment_fn`` / ``augment_fn2`` (the paper's two recipes by default).

    Args:
        net: the encoder, any ``nn.Module`` taking (B, 3, H, W).
        image_size: side of the augmented views; also used to find the feature width.
        hidden_layer: where the representation is taken: ``None`` for ``net``'s output, a
            module name (``"avgpool"``) or an index into ``net``'s children (byol-pytorch's ``-2``).
            Training updates ``net``'s own parameters either way.
        projection_size, projection_hidden_size: the MLPs' output and hidden widths.
        augment_fn, augment_fn2: callables on a batch, for the one-argument call.
        moving_average_decay: the EMA rate tau (its base value when ``total_steps`` is set).
        total_steps: if set, :meth:`update_moving_average` follows the paper's cosine schedule
            from ``moving_average_decay`` to 1 over this many calls; otherwise tau is constant.
        use_momentum: ``False`` uses the online network itself (no gradient) as the target.
        use_predictor: ``False`` drops the predictor (an ablation that collapses; see paper, table 5).
        concat_views: run both views through the online branch as one batch (shared BatchNorm
            statistics) instead of one view at a time as the reference code does.
        feature_dim: the encoder's output width; found automatically when ``None``.
    """

    def __init__(self, net: nn.Module, image_size: int = 224, hidden_layer: Union[str, int, None] = None,
                 projection_size: int = 256, projection_hidden_size: int = 4096,
                 augment_fn: Optional[Callable] = None, augment_fn2: Optional[Callable] = None,
                 moving_average_decay: float = 0.996, total_steps: Optional[int] = None,
                 use_momentum: bool = True, use_predictor: bool = True, concat_views: bool = False,
                 feature_dim: Optional[int] = None):
        super().__init__()
        encoder = cut_at(net, hidden_layer)
        dim = feature_dim or probe_feature_dim(encoder, image_size)
        self.online = nn.Sequential(OrderedDict(
            encoder=encoder,
            projector=MLP(dim, projection_hidden_size, projection_size),
        ))
        self.predictor = MLP(projection_size, projection_hidden_size, projection_size) if use_predictor \
            else nn.Identity()
        self.target = build_target(self.online) if use_momentum else None
        self.concat_views = concat_views
        self.moving_average_decay = moving_average_decay
        self.total_steps = total_steps
        self.ema_step = 0
        if augment_fn is None or augment_fn2 is None:
            from .augment import Augment, paper_views  # lazily: augment is only needed for this call style
            view1, view2 = paper_views(image_size)
            augment_fn = augment_fn or Augment(view1)
            augment_fn2 = augment_fn2 or Augment(view2)
        self.augment_fn, self.augment_fn2 = augment_fn, augment_fn2

    @property
    def encoder(self) -> nn.Module:
        """The online encoder: the network that is evaluated and exported."""
        return self.online.encoder

    def forward(self, x: torch.Tensor, view2: Optional[torch.Tensor] = None,
                return_embedding: bool = False, return_projection: bool = True):
        """The loss for two views, or for one batch of images augmented here.

        With ``return_embedding=True`` it returns the online (projection, embedding) of ``x``
        instead, as byol-pytorch does (only the embedding if ``return_projection=False``).
        """
        if return_embedding:
            embedding = self.online.encoder(x)
            return (self.online.projector(embedding), embedding) if return_projection else embedding
        if view2 is None:
            x, view2 = self.augment_fn(x), self.augment_fn2(x)
        return self.forward_views(x, view2)[0]

    def forward_views(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the loss and the online projections of ``view1`` (B, projection_size), detached."""
        if self.concat_views:
            z1, z2 = self.online(torch.cat([view1, view2])).chunk(2)
        else:
            z1, z2 = self.online(view1), self.online(view2)  # per-view BatchNorm statistics
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            target = self.target if self.target is not None else self.online
            if self.concat_views:
                t1, t2 = target(torch.cat([view1, view2])).chunk(2)
            else:
                t1, t2 = target(view1), target(view2)
        return byol_loss(p1, p2, t1, t2), z1.detach()

    def update_target(self, tau: float) -> None:
        """EMA step of the target toward the online branch; call after ``optimizer.step()``."""
        if self.target is not None:
            update_target(self.target, self.online, tau)

    def current_tau(self) -> float:
        """The tau that the next :meth:`update_moving_average` will use."""
        if self.total_steps is None:
            return self.moving_average_decay
        return tau_schedule(self.ema_step, self.total_steps, self.moving_average_decay)

    def update_moving_average(self) -> None:
        """byol-pytorch's name for the EMA step, with the tau schedule built in."""
        self.update_target(self.current_tau())
        self.ema_step += 1

    def get_extra_state(self) -> dict:
        return {"ema_step": self.ema_step}

    def set_extra_state(self, state: dict) -> None:
        self.ema_step = int(state["ema_step"])
