import pytest
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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_loss_of_low_precision_vectors_is_computed_in_float32(dtype):
    """A mutation audit: normalizing and taking the cosine in the inputs' own dtype survived every test. Under
    bf16 autocast the predictions and projections come in bf16 (8 bits of mantissa: steps of 2^-7 near 1), where
    2 - 2 cos of two close vectors (a trained network's, loss ~0.1 per direction) is mostly rounding. The loss of
    low-precision vectors is the float32 2 - 2 cos of their values, in float32."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 256, generator=g)
    p = (z + 0.3 * torch.randn(16, 256, generator=g)).to(dtype)
    z = z.to(dtype)
    loss = regression_loss(p, z)
    assert loss.dtype == torch.float32
    expected = 2 - 2 * F.cosine_similarity(p.double(), z.double(), dim=-1)
    torch.testing.assert_close(loss.double(), expected, rtol=0, atol=1e-6)


def test_the_loss_is_scale_invariant_down_to_tiny_norms():
    """A mutation audit: normalizing with a floor of 1e-6 on the norms (F.normalize's eps) survived every test.
    The loss is 2 - 2 cos whatever the vectors' norms (paper, eq. 2); the floor, byol-pytorch's 1e-12 (see
    regression_loss), only keeps a zero vector finite. Norms of 1e-8: the same loss as at norm 1; zero: finite."""
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    expected = 2 - 2 * F.cosine_similarity(p, z, dim=-1)
    tiny_p, tiny_z = 1e-8 * F.normalize(p, dim=-1), 1e-8 * F.normalize(z, dim=-1)
    for a, b in ((tiny_p, z), (p, tiny_z), (tiny_p, tiny_z)):
        torch.testing.assert_close(regression_loss(a, b), expected)
    assert torch.equal(regression_loss(torch.zeros(2, 16), z[:2]), torch.full((2,), 2.0))
