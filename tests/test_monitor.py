import math

import pytest
import torch

from byol.loss import byol_loss
from byol.monitor import CollapseMonitor, effective_rank, normalized_std


def gaussian(b=512, d=128, seed=0):
    return torch.randn(b, d, generator=torch.Generator().manual_seed(seed))


def rank_k(k, b=512, d=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, k, generator=g))  # (d, k) orthonormal columns
    return torch.randn(b, k, generator=g) @ basis.T  # (b, d), rank k


def collapsed(b=512, d=128, noise=1e-4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, d, generator=g).expand(b, d) + noise * torch.randn(b, d, generator=g)


def test_normalized_std_is_one_over_sqrt_dim_when_spread():
    for d in (64, 256):
        assert normalized_std(gaussian(d=d)).item() == pytest.approx(1 / math.sqrt(d), rel=0.05)


def test_normalized_std_vanishes_when_collapsed():
    assert normalized_std(collapsed()).item() < 1e-3 / math.sqrt(128)


def test_normalized_std_ignores_scale_and_returns_a_float32_scalar_tensor():
    z = gaussian(d=32)
    out = normalized_std(z.bfloat16())
    assert isinstance(out, torch.Tensor) and out.ndim == 0 and out.dtype == torch.float32
    scaled = z * torch.rand(len(z), 1, generator=torch.Generator().manual_seed(1)).add(0.1) * 100
    assert normalized_std(scaled).item() == pytest.approx(normalized_std(z).item(), rel=1e-4)


def test_effective_rank_is_high_for_gaussian_and_one_for_collapse():
    assert effective_rank(gaussian()).item() > 0.8 * 128
    assert effective_rank(collapsed()).item() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_effective_rank_of_rank_k_data_is_about_k(k):
    assert effective_rank(rank_k(k)).item() == pytest.approx(k, rel=0.1)


def test_centering_measures_the_variation_only():
    z = rank_k(5) + 20 * torch.randn(1, 128, generator=torch.Generator().manual_seed(3))  # large common mean
    assert effective_rank(z).item() < 2.0  # the mean direction dominates
    assert effective_rank(z, center=True).item() == pytest.approx(5, rel=0.1)


def test_effective_rank_casts_low_precision_up():
    z = gaussian(b=64, d=32)
    out = effective_rank(z.bfloat16())
    assert out.dtype == torch.float32 and out.ndim == 0
    assert out.item() == pytest.approx(effective_rank(z).item(), rel=0.02)
    assert effective_rank(torch.zeros(8, 4)).item() == pytest.approx(1.0)  # defined, not NaN


def stats(z):
    return normalized_std(z).item(), effective_rank(z).item(), z.shape[1]


def test_monitor_is_silent_when_healthy_and_warns_when_collapsed():
    monitor = CollapseMonitor()
    for step, z in enumerate([gaussian(d=256), rank_k(20, d=256), gaussian(b=32, d=256)]):
        assert monitor.check(*stats(z), step=step) is None
    message = monitor.check(*stats(collapsed(d=256)), step=300)
    assert message is not None and message.startswith("representation collapse: ") and "step" not in message
    assert "0.0625" in message and "1/sqrt(256)" in message
    assert "predictor" in message and "tau" in message and "learning rate" in message


def test_identical_projections_point_at_the_images_first():
    # What a folder of all-black images gave at its first record (a user test): every row the same vector, a std of
    # exactly 0, which no training reaches. The warning had only the predictor, tau and lr to suggest.
    same = stats(gaussian(b=1, d=64).expand(32, 64))
    assert same[0] == 0.0
    message = CollapseMonitor().check(*same, step=5)
    assert "exactly the same projection" in message and "all black" in message and "predictor" in message
    learned = CollapseMonitor().check(*stats(collapsed(d=64)), step=5)  # a collapse training reached: not the images
    assert learned.startswith("representation collapse: ") and "all black" not in learned
    assert "optim.weight_decay" in learned  # a user test: weight decay 50 collapsed a run, and went unnamed


def test_monitor_warns_on_dimensional_collapse_with_a_healthy_std():
    z = rank_k(1, d=256) + 1e-4 * gaussian(d=256)
    std, rank, dim = stats(z)
    assert std > 0.5 / math.sqrt(dim)  # the std alone would not see it
    assert CollapseMonitor().check(std, rank, dim, step=1) is not None


def test_monitor_warns_on_the_transition_only_unless_asked_to_repeat():
    healthy, bad = (0.06, 100.0, 256), (0.001, 1.1, 256)
    monitor = CollapseMonitor()
    assert monitor.check(*bad, step=10) is not None
    assert monitor.check(*bad, step=20) is None
    assert monitor.check(*healthy, step=30) is None
    assert monitor.check(*bad, step=40) is not None  # collapsed again after recovering
    repeating = CollapseMonitor(repeat_every=100)
    warned = [repeating.check(*bad, step=s) is not None for s in range(0, 301, 50)]
    assert warned == [True, False, True, False, True, False, True]


def test_monitor_thresholds_are_relative_to_the_healthy_std():
    monitor = CollapseMonitor(std_fraction=0.1, min_rank=1.5)
    for dim in (64, 2048):
        healthy = 1 / math.sqrt(dim)
        assert not monitor.is_collapsed(0.2 * healthy, 50.0, dim)
        assert monitor.is_collapsed(0.05 * healthy, 50.0, dim)
    assert monitor.is_collapsed(0.05, 1.2, 256)


def test_effective_rank_weighs_each_direction_by_its_singular_value():
    """A mutation audit: weighing by the squared singular values (the variances) survived every test. Roy &
    Vetterli's effective rank (RankMe's) normalizes the singular values themselves: (3, 1) gives p = (3/4, 1/4),
    exp(H(p)) = 1.7548; squared ones would give (0.9, 0.1), 1.384."""
    z = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert expected == pytest.approx(1.7548, abs=1e-4)
    assert effective_rank(z).item() == pytest.approx(expected, rel=1e-5)


def test_an_interval_without_statistics_leaves_the_monitor_as_it_was():
    """A user test: a record whose std and rank are NaN (every step of its interval undone by the guard) counted as
    healthy, so a collapsed run was warned of again, as newly collapsing, at its next record."""
    m = CollapseMonitor()
    assert m.check(1e-4, 1.0, 256, step=10) is not None
    assert m.check(math.nan, math.nan, 256, step=20) is None and m.collapsed
    assert m.check(1e-4, 1.0, 256, step=30) is None  # still the same collapse
    healthy = CollapseMonitor()
    assert healthy.check(math.nan, math.nan, 256, step=10) is None and not healthy.collapsed
    assert healthy.check(1e-4, 1.0, 256, step=20) is not None


def test_a_rank_lost_to_a_non_finite_last_batch_leaves_the_std_to_warn():
    """A mutation audit: skipping the check where either statistic is NaN survived. The rank is of the
    interval's last batch alone (NaN where its projections are not finite) while the std is the mean of the
    interval's good steps: a collapsed std must still warn without a rank."""
    assert CollapseMonitor().check(1e-4, math.nan, 256, step=10) is not None
    assert CollapseMonitor().check(0.06, math.nan, 256, step=10) is None  # healthy std: no warning


def test_a_statistic_exactly_at_its_threshold_is_not_collapse():
    """A mutation audit: ``<=`` for ``<`` survived. Collapsed means below the thresholds (the docstring's
    ``std < std_fraction / sqrt(dim) or rank < min_rank``), as collapse.png's dashed lines show them."""
    monitor = CollapseMonitor(std_fraction=0.125, min_rank=1.5)
    assert not monitor.is_collapsed(0.125 / 8, 50.0, 64)  # 0.125 / sqrt(64), exactly in binary
    assert not monitor.is_collapsed(0.5, 1.5, 64)
    assert monitor.is_collapsed(0.125 / 8 - 1e-9, 50.0, 64) and monitor.is_collapsed(0.5, 1.5 - 1e-9, 64)


def test_a_loss_of_exactly_four_warns_of_no_learning_signal_though_the_projections_look_healthy():
    """A user's report: a network blown up by a huge learning rate logged a loss of exactly 4.0 that neither
    collapse measure flagged. Predictions past ~1e19 have a float32 norm of inf, F.normalize makes them 0, and
    both directions' 2 - 2 cos are exactly 2, while the online projections (what the std and rank read) are fine."""
    p = torch.full((16, 32), 1.5e19)  # finite, but its squared norm overflows
    z = gaussian(b=16, d=32)
    assert byol_loss(p, p, z, z).item() == 4.0
    monitor = CollapseMonitor()
    std, rank, dim = stats(z)
    assert not monitor.is_collapsed(std, rank, dim)  # the statistics alone: silent
    assert monitor.check(std, rank, dim, step=2, loss=3.7) is None
    message = monitor.check(std, rank, dim, step=4, loss=4.0)
    assert message is not None and message.startswith("no learning signal: the loss is exactly 4.0")
    assert "predictor" in message and "target" in message and "optim.lr" in message and "epoch_NNNN.pt" in message
    assert f"std ({std:.4g}, healthy about 0.1768) and effective rank ({rank:.3g})" in message  # 1/sqrt(32)
    assert monitor.check(std, rank, dim, step=6, loss=4.0) is None  # one warning while it sits there
    assert monitor.check(math.nan, math.nan, dim, step=8, loss=math.nan) is None  # steps undone: the state stays
    assert monitor.check(std, rank, dim, step=10, loss=4.0) is None
    assert monitor.check(std, rank, dim, step=12, loss=3.9) is None  # learning again
    assert monitor.check(std, rank, dim, step=14, loss=4.0) is not None


def test_a_healthy_start_near_four_does_not_warn_of_no_signal():
    """Random projections' cosines are near 0, so a healthy run's first losses are near 4, but not exactly 4."""
    monitor = CollapseMonitor()
    std, rank, dim = stats(gaussian(b=16, d=32))
    for step, loss in enumerate([4.072782516479492, 3.9999998, 4.0000005, 5.934326171875]):
        assert monitor.check(std, rank, dim, step=step, loss=loss) is None


def test_a_resumed_monitor_goes_on_as_the_uninterrupted_one():
    """A mutation audit: load_state dropping the collapsed state, or when it last warned, survived every fast test.
    Resumed, a run still collapsed is not warned of again as newly collapsing, and its repeats keep their steps."""
    bad = (0.001, 1.1, 256)
    first = CollapseMonitor(repeat_every=100)
    assert first.check(*bad, step=10) is not None
    resumed = CollapseMonitor(repeat_every=100)
    resumed.load_state(first.state())
    assert resumed.check(*bad, step=60) is None and resumed.check(*bad, step=110) is not None


def test_the_default_thresholds_are_a_tenth_of_the_healthy_std_and_a_rank_of_1_5():
    """A mutation audit: a default std fraction of 0.01 for 0.1 survived every test here (the tests above give
    theirs). The defaults are docs/metrics.md's: a std below 0.1 / sqrt(dim) (1/16 at dim 256), or a rank below 1.5."""
    monitor = CollapseMonitor()
    assert monitor.is_collapsed(0.09 / 16, 50.0, 256) and not monitor.is_collapsed(0.11 / 16, 50.0, 256)
    assert monitor.is_collapsed(1 / 16, 1.49, 256) and not monitor.is_collapsed(1 / 16, 1.51, 256)
