"""The method: online branch, predictor, target branch, and the loss over two views.

byol-pytorch's learner, ``byol.BYOL``, is :class:`BYOLModel` with its surface around it (:mod:`byol.dropin`).
"""

from collections import OrderedDict
from typing import Callable, Optional

import torch
from torch import nn

from .backbones import flat_representation
from .ema import build_target, update_target
from .loss import byol_loss


class MLP(nn.Sequential):
    """Linear -> BatchNorm -> ReLU -> Linear, the paper's projector and predictor (4096 -> 256).

    The last Linear has a bias, as in byol-pytorch (whose drop-in this package is) and solo-learn;
    the reference code's has none (deepmind-research byol/utils/networks.py, ``MLP``:
    ``hk.Linear(output_size, with_bias=False)``), a deliberate deviation.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256):
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Flattened first, as byol-pytorch does: a network's own output (hidden_layer=-1) may be
        # (B, C, 1, 1), as from a pooling layer. A view, nothing copied, for (B, D).
        x = flat_representation(x, "the projector's input, the representation at hidden_layer,")
        if x.shape[1] != self[0].in_features:  # a shape, no sync: else "mat1 and mat2 shapes cannot be multiplied"
            raise ValueError(f"the MLP takes {self[0].in_features} features, but its input has {x.shape[1]} (shape "
                             f"{tuple(x.shape)}); a BYOL projector is as wide as its feature_dim, or, where none "
                             "is given, as the representation of (2, 3, image_size, image_size) images: for inputs "
                             "of another shape, give BYOL(..., feature_dim=D) with D their representation's width")
        return super().forward(x)


class BYOLModel(nn.Module):
    """Bootstrap Your Own Latent (Grill et al. 2020): the method, on one screen.

    ``online = encoder -> projector``, ``predictor`` on top of it, and ``target``, a deep copy
    of ``online`` with gradients off, updated only by :meth:`update_target` (an exponential moving
    average, called after the optimizer step). The loss of two views is :meth:`forward_views`.

    Args:
        encoder: the network, images -> (B, feature_dim) representations (or (B, feature_dim, 1, 1)).
        feature_dim: the width of its representation, the projector's input.
        projection_size, projection_hidden_size: the MLPs' output and hidden widths.
        use_predictor: ``False`` drops the predictor (an ablation that collapses; see paper, table 5).
        use_momentum: ``False`` uses the online network itself (no gradient) as the target.
        concat_views: run both views through each branch (encoder, projector, predictor, target) as one
            batch of 2B (shared BatchNorm statistics, as byol-pytorch does) instead of one view at a
            time as the reference code does.
        place_mlp: applied to the projector and to the predictor before the target is copied (the
            drop-in's dtype, device and synchronized BatchNorm); none by default.
    """

    def __init__(self, encoder: nn.Module, feature_dim: int, projection_size: int = 256,
                 projection_hidden_size: int = 4096, *, use_predictor: bool = True, use_momentum: bool = True,
                 concat_views: bool = False, place_mlp: Optional[Callable[[nn.Module], nn.Module]] = None):
        super().__init__()
        projector = MLP(feature_dim, projection_hidden_size, projection_size)
        predictor = MLP(projection_size, projection_hidden_size, projection_size) if use_predictor else nn.Identity()
        if place_mlp is not None:
            projector, predictor = place_mlp(projector), place_mlp(predictor)
        self.online = nn.Sequential(OrderedDict(encoder=encoder, projector=projector))
        self.predictor = predictor
        self.target = build_target(self.online) if use_momentum else None
        self.concat_views = concat_views

    @property
    def encoder(self) -> nn.Module:
        """The online encoder: the network that is evaluated and exported."""
        return self.online.encoder

    def forward_views(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the loss and the online projections of ``view1`` (B, projection_size), detached."""
        if view1.shape[:1] != view2.shape[:1]:  # (a review: concatenated, 4 and 6 views paired as 5 and 5, silently)
            raise ValueError(f"view1 and view2 are two views of the same images, one each, but they hold "
                             f"{view1.shape[:1].numel()} and {view2.shape[:1].numel()}: give batches of one size")
        if self.concat_views:  # one BatchNorm batch of 2B rows in every branch, the predictor's too (byol-pytorch's)
            z = self.online(torch.cat([view1, view2]))  # (2B, projection_size)
            p1, p2 = self.predictor(z).chunk(2)
            z1 = z.chunk(2)[0]
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


def __getattr__(name: str):
    """``byol.model.BYOL`` and ``OnlineEncoder``, where byol-pytorch's learner was defined before it had its own
    module: a learner pickled whole then (``torch.save(learner)``) names them here, and loads."""
    if name in ("BYOL", "OnlineEncoder"):
        from . import dropin  # (the one import upward, at such a load only)
        return getattr(dropin, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
