"""Collapse monitor: two cheap statistics of a batch of projections, and a warning rule.

BYOL has no negatives; what keeps it from the trivial solution (every image mapped to the same
vector) is the predictor and the slowly moving target. When that fails, it fails silently: the
loss goes to 0, which looks like success. These statistics make it visible.
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F

# The collapse warning's thresholds (CollapseMonitor's defaults, reasoned there): the normalized
# std below this fraction of 1/sqrt(dim), or the effective rank below this.
STD_FRACTION = 0.1
MIN_RANK = 1.5


def normalized_std(z: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the per-dimension std, across the batch, of L2-normalized ``z``.

    The SimSiam collapse metric (Chen & He 2021, Sec. 4.1): about ``1/sqrt(dim)`` for outputs
    spread over the sphere, 0 when every row is the same vector.

    Args:
        z: (B, dim) projections, B >= 2.

    Returns:
        A float32 scalar tensor on ``z``'s device (no host sync).
    """
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


def effective_rank(z: torch.Tensor, center: bool = False) -> torch.Tensor:
    """Exponential of the entropy of the normalized singular values of ``z`` (B, dim).

    Roy & Vetterli (2007); RankMe (Garrido et al. 2023) uses it on embeddings. Between 1 (all
    rows parallel) and ``min(B, dim)`` (all singular values equal).

    Args:
        z: (B, dim) embeddings; bf16/fp16 are computed in float32.
        center: subtract the batch mean first. Off by default, as in RankMe: centering turns
            complete collapse (every row the same vector plus noise) into pure noise, whose
            rank is high, and so hides the failure this monitor is for. Centered, it measures
            dimensional collapse of the variation only.

    Returns:
        A float32 scalar tensor on ``z``'s device. Note that on CUDA the singular value
        decomposition synchronizes with the host, so call it on logging steps only.
    """
    z = z.detach().float()
    if center:
        z = z - z.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(z)
    p = s / s.sum().clamp_min(torch.finfo(s.dtype).tiny)
    return torch.special.entr(p).sum().exp()  # entr(p) = -p log p, and 0 at p = 0


class CollapseMonitor:
    """Turns logged collapse statistics into one clear warning when the representation collapses.

    Collapsed means ``std < std_fraction / sqrt(dim)`` or ``rank < min_rank``.

    * ``std_fraction = 0.1``: healthy projections sit near ``1/sqrt(dim)`` (SimSiam, Fig. 2),
      or somewhat below it when they share a common mean direction, as BYOL's projections do
      early on; a collapsed run drops by orders of magnitude (to ~1e-3 of healthy). A tenfold
      margin separates the two without false alarms. The std alone misses dimensional collapse
      into a random subspace (each dimension keeps its share of the variance), hence the rank.
    * ``min_rank = 1.5``: complete collapse gives 1 (every row nearly the same vector); below 1.5
      a single direction carries nearly all of the batch. Healthy runs keep more, though not
      always many: a random network's projections have over a hundred, while a user test of the
      cifar10-cpu preset (batch 256, its first 400 steps) saw 3 to 7, its projections sharing a
      common direction, and a collapsing run bottom out at 1.8, caught by the std alone. The std
      is the main signal; the rank catches the collapse into a subspace that the std misses.

    It warns when the statistics cross into collapse, and again every ``repeat_every`` steps
    while they stay there (0: only on the transition).
    """

    def __init__(self, std_fraction: float = STD_FRACTION, min_rank: float = MIN_RANK, repeat_every: int = 0):
        self.std_fraction = std_fraction
        self.min_rank = min_rank
        self.repeat_every = repeat_every
        self.collapsed = False
        self._last_warned: Optional[int] = None

    def is_collapsed(self, std: float, rank: float, dim: int) -> bool:
        """Whether the statistics of a ``dim``-wide projection say it has collapsed."""
        return std < self.std_fraction / math.sqrt(dim) or rank < self.min_rank

    def check(self, std: float, rank: float, dim: int, step: int) -> Optional[str]:
        """Record the latest statistics; return a warning sentence if they show collapse.

        Args:
            std: ``normalized_std`` of the online projections, read to the host.
            rank: their ``effective_rank``.
            dim: projection width (256 in the paper).
            step: global training step, for ``repeat_every`` (the message leaves it out: the
                warning's line in ``warnings.txt`` starts with it).

        Returns:
            The warning, on entering collapse (and every ``repeat_every`` steps in it); else None.
        """
        if math.isnan(std) and math.isnan(rank):  # no statistics (every step of the interval undone): the state
            return None  # stays, so a collapsed run is not warned of again as newly collapsing after it (a user test)
        was_collapsed, self.collapsed = self.collapsed, self.is_collapsed(std, rank, dim)
        if not self.collapsed:
            return None
        due = self.repeat_every > 0 and self._last_warned is not None \
            and step - self._last_warned >= self.repeat_every
        if was_collapsed and not due:
            return None
        self._last_warned = step
        healthy = 1 / math.sqrt(dim)
        return ("representation collapse: the std of the L2-normalized online projections "
                f"is {std:.4g} (healthy is about {healthy:.4g} = 1/sqrt({dim})) and their effective rank is "
                f"{rank:.3g} (1 when every row is the same vector; healthy runs keep more, from a few up); the "
                "network maps every image to nearly the same vector, and the falling loss means nothing. "
                "Check that the predictor is used and trained (BYOL collapses without it), that the target EMA "
                "rate tau is well above 0 (the paper's 0.996 rising to 1; short runs learn faster from 0.9, as the "
                "cifar10-cpu preset's), and that the learning rate is not too high (warmup, lr scaled by batch "
                "size/256).")
