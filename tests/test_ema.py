import sys
import warnings

import pytest
import torch
from torch import nn

from byol import BYOL
from byol.ema import build_target, update_target, update_target_by


def make_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def perturb(net):
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    net(torch.randn(16, 4))  # train-mode forward moves the BatchNorm running statistics


def test_target_is_a_frozen_deep_copy():
    online = make_net()
    target = build_target(online)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
    for po, pt in zip(online.parameters(), target.parameters()):
        assert po.data_ptr() != pt.data_ptr()
        torch.testing.assert_close(po, pt)


def test_tau_zero_copies_and_tau_one_keeps():
    online = make_net()
    target = build_target(online)
    before = [p.clone() for p in target.parameters()]
    perturb(online)
    update_target(target, online, tau=1.0)
    for b, pt in zip(before, target.parameters()):
        torch.testing.assert_close(pt, b, rtol=0, atol=0)
    update_target(target, online, tau=0.0)
    for po, pt in zip(online.parameters(), target.parameters()):
        torch.testing.assert_close(pt, po, rtol=0, atol=0)


def test_intermediate_tau_is_exact_and_buffers_follow():
    online = make_net()
    target = build_target(online)
    perturb(online)
    before = [p.clone() for p in target.parameters()]
    update_target(target, online, tau=0.9)
    for b, po, pt in zip(before, online.parameters(), target.parameters()):
        torch.testing.assert_close(pt, 0.9 * b + 0.1 * po)
    for bo, bt in zip(online.buffers(), target.buffers()):
        torch.testing.assert_close(bt, bo, rtol=0, atol=0)
    assert online[1].num_batches_tracked.item() == target[1].num_batches_tracked.item() == 1


def test_shared_and_missing_tensors_are_averaged_as_parameters_and_buffers_list_them():
    """update_target reads each module's own parameters and buffers (two walks of the trees, not four): a
    parameter and a submodule shared by two places once, a missing bias and a non-persistent buffer as
    parameters() and buffers() have them, each target tensor paired with its online one."""
    torch.manual_seed(0)
    shared = nn.Linear(3, 3)
    online = nn.Sequential(shared, nn.Linear(3, 3, bias=False), shared, nn.BatchNorm1d(3), nn.Linear(3, 2))
    online[1].weight = shared.weight  # tied: one parameter in two modules
    online[1].register_buffer("scratch", torch.ones(2), persistent=False)
    target = build_target(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
        for b in online.buffers():
            b.add_(3)
    expected = [t + 0.5 * (o - t) for t, o in zip(target.parameters(), online.parameters())]
    update_target(target, online, 0.5)
    assert len(expected) == 6 and all(torch.allclose(t, e) for t, e in zip(target.parameters(), expected))
    assert all(torch.equal(t, o) for t, o in zip(target.buffers(), online.buffers()))
    assert target[1].bias is None and torch.equal(target[1].scratch, torch.full((2,), 4.0))


def test_target_keeps_each_modules_mode():
    """A deep copy of an fx GraphModule (an encoder cut at hidden_layer) comes back in training mode;
    the target must not: in eval mode its BatchNorm uses running statistics like the online one."""
    from byol.backbones import cut_at, resnet
    online = cut_at(resnet("resnet18", cifar_stem=True, width=8), "avgpool").eval()
    online.body.layer1.train()  # modes may differ module by module
    target = build_target(online)
    assert [m.training for m in target.modules()] == [m.training for m in online.modules()]
    x = torch.rand(2, 3, 32, 32)
    online.eval(), target.eval()
    torch.testing.assert_close(target(x), online(x))



def test_target_of_a_traced_encoder_runs_the_graph_of_its_mode():
    """torchvision's traced encoder holds a training and an eval graph and swaps them in train():
    the target must be switched with train(), not by its flag alone, or it runs dropout in eval mode."""
    import torch.nn.functional as F
    from byol.backbones import cut_at

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.mid, self.head = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.mid(F.dropout(self.fc(x), 0.5, self.training)))

    online = cut_at(Net(), "mid").eval()
    target = build_target(online)
    x = torch.rand(16, 4)
    torch.testing.assert_close(target(x), online(x))


@pytest.mark.parametrize("tau", [0.0, 0.996, 0.9, 1.0])
def test_the_ema_step_read_from_a_tensor_is_the_numbers_but_for_rounding(tau):
    """update_target_by (1 - tau from a device tensor, for a CUDA graph's replay): the same move and buffers as
    update_target's lerp, within a rounding of the weights; tau 1 keeps the target to the bit."""
    online = make_net()
    targets = [build_target(online) for _ in range(2)]
    perturb(online)
    update_target(targets[0], online, tau)
    update_target_by(targets[1], online, torch.tensor(1.0 - tau))
    for a, b in zip(*(t.parameters() for t in targets)):
        torch.testing.assert_close(a, b, rtol=0 if tau == 1 else 1e-6, atol=0 if tau == 1 else 1e-7)
    for a, b in zip(*(t.buffers() for t in targets)):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="different parameter lists"):
        update_target_by(build_target(nn.Linear(4, 4)), online, torch.tensor(0.1))


def test_networks_that_do_not_match_are_a_clear_error():
    online = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    for other, said in ((nn.Sequential(nn.Linear(4, 4)), "different parameter lists"),
                        (nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), "different buffer lists")):
        with pytest.raises(ValueError, match=said):
            update_target(build_target(other), online, 0.99)


class Scaled(nn.Module):
    def __init__(self, width: int, scales: int):
        super().__init__()
        self.linear = nn.Linear(4, width)
        self.register_buffer("scale", torch.ones(scales))


@pytest.mark.parametrize("shapes, said", [
    ((3, 1), r"parameters differ in shape: the target's linear.weight is \(3, 4\), the online network's "
                   r"\(1, 4\); the target must be a copy of the online network \(build_target\)"),
    ((1, 5), r"buffers differ in shape: the target's scale is \(5,\), the online network's \(1,\)")])
def test_networks_whose_tensors_differ_in_shape_are_a_clear_error_and_move_nothing(shapes, said):
    """An online (1, 4) weight was broadcast into a (3, 4) target's, which update_target moved without a word (a
    review); the CUDA graph's update_target_by did so too."""
    online, target = Scaled(1, 1), Scaled(*shapes).requires_grad_(False)
    before = [t.clone() for t in (*target.parameters(), *target.buffers())]
    for update in (lambda: update_target(target, online, 0.9),
                   lambda: update_target_by(target, online, torch.tensor(0.1))):
        with pytest.raises(ValueError, match=said):
            update()
        assert all(torch.equal(a, b) for a, b in zip((*target.parameters(), *target.buffers()), before))


def test_swapped_arguments_are_a_clear_error_and_move_nothing():
    """A user test: update_target(online, target, tau) pulled the online network toward the target, which never
    moved from its initialization, without a word."""
    online = make_net()
    target = build_target(online)
    perturb(online)
    before = [t.clone() for t in (*online.parameters(), *target.parameters())]
    for update in (lambda: update_target(online, target, 0.9),
                   lambda: update_target_by(online, target, torch.tensor(0.1))):
        with pytest.raises(ValueError, match="the arguments are swapped; give the target first"):
            update()
        assert all(torch.equal(a, b) for a, b in zip((*online.parameters(), *target.parameters()), before))
    online[0].requires_grad_(False)  # a frozen layer: the right order still moves the target
    update_target(target, online, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), online.parameters()))


@pytest.mark.parametrize("tau", [-0.1, 1.5, float("nan")])
def test_a_tau_outside_0_and_1_is_refused(tau):
    """A user test: update_target(target, online, 2.0) extrapolated the target away from the online network."""
    target, online = nn.Linear(3, 3), nn.Linear(3, 3)
    before = target.weight.clone()
    with pytest.raises(ValueError, match=r"tau must be in \[0, 1\]"):
        update_target(target, online, tau)
    assert torch.equal(target.weight, before)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_low_precision_target_is_warned_of_as_its_ema_steps_are_rounded_away(dtype):
    """A learner.to(torch.bfloat16): an EMA step at tau 0.996 changed 1.3% of its target's weights (38% in
    float32), silently; a float32 target is not warned of."""
    online = make_net()
    target = build_target(online)
    perturb(online)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        update_target(target, online, tau=0.996)  # float32: no warning
    online, target = online.to(dtype), target.to(dtype)
    with pytest.warns(UserWarning, match=f"target network is in {str(dtype)[6:]}.*torch.autocast") as caught:
        update_target(target, online, tau=0.996)
    assert [w.filename for w in caught] == [__file__]  # the caller's line, not torch.no_grad's wrapper's


def test_the_low_precision_warning_names_the_line_that_calls_the_learner():
    """It named torch/utils/_contextlib.py (update_target's torch.no_grad wrapper), where a user looks for
    the line of theirs that updates the target: learner.update_moving_average() here."""
    learner = BYOL(make_net(), image_size=8, feature_dim=8, projection_size=4, projection_hidden_size=8,
                   augment_fn=lambda x: x).to(torch.bfloat16)
    with pytest.warns(UserWarning, match="target network is in bfloat16") as caught:
        learner.update_moving_average()
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, sys._getframe().f_lineno - 1)]
