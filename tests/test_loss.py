import torch
import torch.nn.functional as F

from byol.loss import byol_loss, regression_loss


def test_regression_loss_is_two_minus_two_cosine():
    torch.manual_seed(0)
    p, z = torch.randn(8, 16), torch.randn(8, 16)
    expected = 2 - 2 * F.cosine_similarity(p, z, dim=-1)
    torch.testing.assert_close(regression_loss(p, z), expected)
    # Equal to the squared distance of the normalized vectors (paper, eq. 2).
    torch.testing.assert_close(regression_loss(p, z), (F.normalize(p) - F.normalize(z)).pow(2).sum(-1))


def test_loss_is_zero_for_identical_directions_and_scale_invariant():
    z = torch.randn(4, 16)
    torch.testing.assert_close(regression_loss(3.0 * z, z), torch.zeros(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(regression_loss(-z, z), torch.full((4,), 4.0))


def test_byol_loss_sums_both_directions_and_is_symmetric():
    torch.manual_seed(1)
    p1, p2, z1, z2 = (torch.randn(5, 8) for _ in range(4))
    loss = byol_loss(p1, p2, z1, z2)
    expected = (regression_loss(p1, z2) + regression_loss(p2, z1)).mean()
    torch.testing.assert_close(loss, expected)
    # Swapping the views gives the same loss.
    torch.testing.assert_close(byol_loss(p2, p1, z2, z1), loss)
    # Pairing is cross-view: p1 with z2, not with z1.
    assert not torch.allclose(loss, (regression_loss(p1, z1) + regression_loss(p2, z2)).mean())


def test_no_gradient_flows_into_target_projections():
    p = torch.randn(4, 8, requires_grad=True)
    z = torch.randn(4, 8, requires_grad=True)
    byol_loss(p, p, z, z).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None


def test_what_is_not_a_pair_of_like_tensors_is_one_sentence():
    """A user test: NumPy arrays failed on "'numpy.ndarray' object has no attribute 'float'", and mismatched
    widths on torch's broadcasting message."""
    import numpy as np
    import pytest
    p = torch.randn(4, 8)
    with pytest.raises(TypeError, match="p and z must be tensors, got ndarray and Tensor"):
        regression_loss(np.zeros((4, 8)), p)
    with pytest.raises(ValueError, match=r"must have one shape, got \(4, 8\) and \(4, 16\)"):
        byol_loss(p, p, torch.randn(4, 16), torch.randn(4, 16))
