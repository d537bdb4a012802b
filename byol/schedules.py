"""Schedules as pure functions of the global step."""

import math


def cosine_lr(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0,
              final_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to ``base_lr`` over ``warmup_steps``, then cosine decay to ``final_lr``.

    Step 0 gives ``base_lr / warmup_steps`` (the first warm-up step is not wasted at lr 0);
    step ``warmup_steps`` gives ``base_lr``; step ``total_steps`` gives ``final_lr`` where ``warmup_steps <
    total_steps`` (otherwise the warm-up runs whole, and ``final_lr`` comes the step after ``warmup_steps``).
    A deliberate deviation from the reference code (deepmind-research byol/utils/schedules.py,
    ``learning_schedule``: ``step / warmup_steps * base_lr``, 0 at step 0): the warm-up here is one
    step ahead of it; from ``warmup_steps`` on the two are the same.
    """
    _check_step(step)
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return final_lr + 0.5 * (base_lr - final_lr) * (1.0 + math.cos(math.pi * progress))


def tau_schedule(step: int, total_steps: int, base_tau: float = 0.996, final_tau: float = 1.0) -> float:
    """EMA rate ``τ = 1 - (1 - τ_base)(cos(πk/K) + 1)/2`` (paper, section 3.2), from ``base_tau`` to 1."""
    _check_step(step)
    if not (0 <= base_tau <= 1 and 0 <= final_tau <= 1):
        raise ValueError(f"base_tau and final_tau must be in [0, 1] (the paper's 0.996 and 1), got {base_tau} and "
                         f"{final_tau}")
    progress = min(1.0, step / max(1, total_steps))
    return final_tau - (final_tau - base_tau) * (math.cos(math.pi * progress) + 1.0) / 2.0


def _check_step(step: int) -> None:
    if step < 0:
        raise ValueError(f"step must be >= 0 (the first is 0), got {step}")
