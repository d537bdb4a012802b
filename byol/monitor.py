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
# The loss when both directions' cosines are 0: exactly this, to float precision, over a whole logging interval
# only when the predictions or the target projections normalize to zero vectors (CollapseMonitor.check).
NO_SIGNAL_LOSS = 4.0


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
      early on; a collapsed run drops far below it (SimSiam's, without the stop-gradient, to near 0).
      Measured here (a review, 2026-12-07: cifar10-cpu at width 8, batch 32, 60 to 150 steps): healthy
      runs kept a ratio ``std * sqrt(dim)`` of 0.61 to 0.76 (batch 2 and 4 included), and two collapsing
      ones (no predictor; weight decay 50) fell to 0.02-0.07 within 40-90 steps. A tenfold margin under
      healthy separates the two without false alarms there. The std alone misses dimensional collapse
      into a random subspace (each dimension keeps its share of the variance), hence the rank.
    * ``min_rank = 1.5``: complete collapse gives 1 (every row nearly the same vector); below 1.5
      a single direction carries nearly all of the batch. Healthy runs keep more, though not
      always many: a random network's projections have over a hundred, while a user test of the
      cifar10-cpu preset (batch 256, its first 400 steps) saw 3 to 7, its projections sharing a
      common direction, and a collapsing run bottom out at 1.8, caught by the std alone. The std
      is the main signal; the rank catches the collapse into a subspace that the std misses.

    It also warns when the interval's mean loss is exactly :data:`NO_SIGNAL_LOSS` (4.0): no learning
    signal, which both statistics miss. ``F.normalize`` of a prediction whose norm is 0 (dead ReLUs) or
    overflows float32 (a coordinate past ~1e19, as a learning rate far too high leaves them: measured,
    ``sgd`` at ``optim.lr=1e7``) is the zero vector, so each direction's ``2 - 2 cos`` is exactly 2 and
    the gradient 0 or NaN, while the online projections the statistics read may still be spread out.
    A healthy run's loss starts near 4 (random vectors' cosines are near 0) but a float32 mean landing on
    4.0 exactly is not a chance event, so a healthy start does not trip it.

    It warns when the statistics cross into collapse (or the loss into 4.0), and again every
    ``repeat_every`` steps while they stay there (0: only on the transition).
    """

    def __init__(self, std_fraction: float = STD_FRACTION, min_rank: float = MIN_RANK, repeat_every: int = 0):
        self.std_fraction = std_fraction
        self.min_rank = min_rank
        self.repeat_every = repeat_every
        self.collapsed = False
        self.no_signal = False
        self._last_warned: Optional[int] = None

    def state(self) -> dict:
        """What it goes on from in a resumed run (a checkpoint's ``extra``): plain values."""
        return {"collapsed": self.collapsed, "no_signal": self.no_signal, "last_warned": self._last_warned}

    def load_state(self, state: dict) -> None:
        """Go on from :meth:`state`: a collapsed run resumed is not warned of again as newly collapsing (a review:
        each resume added a warning to warnings.txt that the uninterrupted run had not)."""
        self.collapsed, self.no_signal = bool(state["collapsed"]), bool(state["no_signal"])
        self._last_warned = state["last_warned"]

    def is_collapsed(self, std: float, rank: float, dim: int) -> bool:
        """Whether the statistics of a ``dim``-wide projection say it has collapsed."""
        return std < self.std_fraction / math.sqrt(dim) or rank < self.min_rank

    def check(self, std: float, rank: float, dim: int, step: int, loss: float = math.nan) -> Optional[str]:
        """Record the latest statistics; return a warning sentence if they show collapse.

        Args:
            std: ``normalized_std`` of the online projections, read to the host.
            rank: their ``effective_rank``.
            dim: projection width (256 in the paper).
            step: global training step, for ``repeat_every`` (the message leaves it out: the
                warning's line in ``warnings.txt`` starts with it).
            loss: the interval's mean loss (``train/loss``); exactly 4.0 is no learning signal.
                NaN (the default): not checked.

        Returns:
            The warning, on entering collapse or no signal (and every ``repeat_every`` steps in it); else None.
        """
        if math.isnan(std) and math.isnan(rank):  # no statistics (every step of the interval undone): the state
            return None  # stays, so a collapsed run is not warned of again as newly collapsing after it (a user test)
        was_no_signal, self.no_signal = self.no_signal, loss == NO_SIGNAL_LOSS
        if self.no_signal:  # says more than the statistics: they are of outputs the loss no longer trains
            return self._message(was_no_signal, step, no_signal_message(std, rank, dim))
        was_collapsed, self.collapsed = self.collapsed, self.is_collapsed(std, rank, dim)
        if not self.collapsed:
            return None
        return self._message(was_collapsed, step, collapse_message(std, rank, dim))

    def _message(self, was: bool, step: int, message: str) -> Optional[str]:
        """``message`` on entering a state (``was``: in it at the last check), and every ``repeat_every`` steps."""
        due = self.repeat_every > 0 and self._last_warned is not None \
            and step - self._last_warned >= self.repeat_every
        if was and not due:
            return None
        self._last_warned = step
        return message


def collapse_message(std: float, rank: float, dim: int) -> str:
    """The warning for a representation collapse (:class:`CollapseMonitor`)."""
    healthy = 1 / math.sqrt(dim)
    # A std of exactly 0 over a whole interval is not a collapse that training reaches (it leaves float noise):
    # every image gave the very same projection (a user test: a folder of all-black images warned at its first
    # record, of the predictor, tau and lr alone, none of them the cause)
    alike = ("Every image gave exactly the same projection (a std of exactly 0): check that the images differ "
             "(not all black or blank, nor one image repeated) and that the network's outputs depend on them "
             "(not dead ReLUs). Else check" if std == 0 else "Check")
    return ("representation collapse: the std of the L2-normalized online projections "
            f"is {std:.4g} (healthy is about {healthy:.4g} = 1/sqrt({dim})) and their effective rank is "
            f"{rank:.3g} (1 when every row is the same vector; healthy runs keep more, from a few up); the "
            "network maps every image to nearly the same vector, and the falling loss means nothing. "
            f"{alike} that the predictor is used and trained (BYOL collapses without it), that the target EMA "
            "rate tau is well above 0 (the paper's 0.996 rising to 1; short runs learn faster from 0.9, as the "
            "cifar10-cpu preset's), and that the learning rate is not too high (warmup, lr scaled by batch "
            "size/256), nor optim.weight_decay (50 collapsed a short cifar10-cpu run).")


def no_signal_message(std: float, rank: float, dim: int) -> str:
    """The warning for a loss of exactly 4.0 (:class:`CollapseMonitor`)."""
    return ("no learning signal: the loss is exactly 4.0 (2 - 2 cos with the cosine exactly 0 in both directions) "
            "at every step since the last record: the predictor's outputs or the target's projections normalize "
            "to zero vectors, their norm 0 (dead ReLUs) or past float32's range (weights blown up by a learning "
            "rate far too high), so the gradient is 0 or NaN and the network no longer learns, though the online "
            f"projections' std ({std:.4g}, healthy about {1 / math.sqrt(dim):.4g}) and effective rank ({rank:.3g}) "
            "may look fine. Lower optim.lr (and warm up longer, optim.warmup_epochs) and start again, or resume "
            "with a lower optim.lr from a checkpoint written before the loss sat at 4.0 (checkpoints/epoch_NNNN.pt, "
            "copied over checkpoints/last.pt).")
