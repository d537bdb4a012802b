"""The BYOL objective: normalized mean squared error between predictions and target projections."""

import torch
import torch.nn.functional as F


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per-sample ``2 - 2 cos(p, z)``, the squared L2 distance of the normalized vectors.

    Paper, eq. 2: ``||q̄ - z̄'||² = 2 - 2 <q, z'> / (||q|| ||z'||)``. The reference code computes
    ``||q̄ - z̄'||²`` with norms floored at 1e-6 (``x * rsqrt(max(||x||², 1e-12))``); this follows
    byol-pytorch (``F.normalize``, norms floored at 1e-12, then ``2 - 2 cos``): the same loss up to
    float rounding (~5e-7) wherever both norms are at least 1e-6; apart only for vectors near zero.

    Args:
        p: online predictions, (B, D).
        z: target projections, (B, D); treated as constants (detached).

    Returns:
        (B,) loss per sample, in [0, 4].
    """
    if not (isinstance(p, torch.Tensor) and isinstance(z, torch.Tensor)):
        raise TypeError(f"p and z must be tensors, got {type(p).__name__} and {type(z).__name__}")
    if p.shape != z.shape:
        raise ValueError(f"each prediction regresses the other view's projection, so they must have one shape, "
                         f"got {tuple(p.shape)} and {tuple(z.shape)}")
    p = F.normalize(p.float(), dim=-1)
    z = F.normalize(z.detach().float(), dim=-1)
    return 2 - 2 * (p * z).sum(dim=-1)


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Symmetrized BYOL loss, mean over the batch.

    The prediction from view 1 regresses the target projection of view 2 and vice versa;
    the two directions are summed (paper, eq. 2 and the "symmetrize" paragraph).
    """
    return (regression_loss(p1, z2) + regression_loss(p2, z1)).mean()
