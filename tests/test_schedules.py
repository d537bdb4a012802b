import math

import pytest

from byol.schedules import cosine_lr, tau_schedule


@pytest.mark.parametrize("step, expected", [
    (0, 1.0 / 10),       # first warm-up step
    (4, 5.0 / 10),
    (9, 1.0),            # last warm-up step reaches the base
    (10, 1.0),           # end of warm-up: start of the cosine
    (55, 0.5),           # half-way through the cosine
    (100, 0.0),          # last step
    (150, 0.0),          # past the end stays at the final value
])
def test_cosine_lr_table(step, expected):
    assert cosine_lr(step, total_steps=100, base_lr=1.0, warmup_steps=10) == pytest.approx(expected, abs=1e-12)


def test_cosine_lr_decays_along_a_cosine_not_a_line():
    """A mutation audit: a linear decay in place of the cosine survived every test (the table's points, the
    start, the middle and the end, are the same on both). A quarter and three quarters of the way through the
    decay the cosine gives (1 + cos(pi/4)) / 2 and (1 + cos(3 pi/4)) / 2 of the base, where a line gives 3/4 and 1/4."""
    assert cosine_lr(25, 100, base_lr=1.0) == pytest.approx((1 + math.cos(math.pi / 4)) / 2, abs=1e-12)
    assert cosine_lr(75, 100, base_lr=1.0) == pytest.approx((1 + math.cos(3 * math.pi / 4)) / 2, abs=1e-12)
    # with a warm-up and a floor: the cosine runs from the warm-up's end to total_steps, between base and floor
    assert cosine_lr(40, 100, base_lr=2.0, warmup_steps=20, final_lr=0.5) == pytest.approx(
        0.5 + 0.75 * (1 + math.cos(math.pi / 4)), abs=1e-12)


def test_cosine_lr_without_warmup_and_final_lr():
    assert cosine_lr(0, 10, base_lr=2.0) == pytest.approx(2.0)
    assert cosine_lr(10, 10, base_lr=2.0, final_lr=0.5) == pytest.approx(0.5)
    assert cosine_lr(5, 10, base_lr=2.0, final_lr=0.0) == pytest.approx(1.0)


@pytest.mark.parametrize("step, expected", [
    (0, 0.996),
    (50, 0.998),
    (100, 1.0),
    (150, 1.0),          # past the end stays at 1 (BYOL(total_steps=N) stepped on past N)
    (25, 1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2),
])
def test_tau_table(step, expected):
    assert tau_schedule(step, total_steps=100, base_tau=0.996) == pytest.approx(expected, abs=1e-12)


def test_tau_is_monotone():
    taus = [tau_schedule(s, 1000) for s in range(1001)]
    assert all(a <= b for a, b in zip(taus, taus[1:]))


def test_a_step_before_0_or_a_tau_outside_0_and_1_is_refused():
    """A user test: cosine_lr(-5, ...) gave 0.99 and tau_schedule(0, 100, 1.5) gave 1.5, without a word."""
    with pytest.raises(ValueError, match="step must be >= 0"):
        cosine_lr(-5, 100, 1.0)
    with pytest.raises(ValueError, match="step must be >= 0"):
        tau_schedule(-1, 100)
    with pytest.raises(ValueError, match=r"base_tau and final_tau must be in \[0, 1\]"):
        tau_schedule(0, 100, 1.5)
    with pytest.raises(ValueError, match=r"base_tau and final_tau must be in \[0, 1\]"):
        tau_schedule(0, 100, 0.996, final_tau=1.5)
    assert tau_schedule(0, 100, 0.0) == 0.0 and tau_schedule(100, 100) == 1.0


def test_tau_rises_from_base_tau_to_final_tau():
    """A mutation audit: tau_schedule rising to 1 whatever final_tau it was given survived every test."""
    assert [tau_schedule(s, 100, base_tau=0.99, final_tau=0.999) for s in (0, 50, 100)] == pytest.approx(
        [0.99, 0.9945, 0.999], abs=1e-12)


def test_tau_starts_at_the_papers_0_996_by_default():
    """A mutation audit: a default base_tau of 0.99 survived every test. Paper, section 3.2: tau_base = 0.996."""
    assert [tau_schedule(s, 100) for s in (0, 50, 100)] == pytest.approx([0.996, 0.998, 1.0], abs=1e-12)
