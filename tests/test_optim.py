import pytest
import torch
import torchvision
from torch import nn

from byol.optim import LARS, build_optimizer, param_groups


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))


def test_param_groups_exclude_biases_and_norms():
    model = make_model()
    regular, excluded = param_groups(model, weight_decay=0.1)
    assert {id(p) for p in regular["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in excluded["params"]} == {
        id(model[0].bias), id(model[1].weight), id(model[1].bias), id(model[2].bias)}
    assert regular["weight_decay"] == 0.1 and not regular["lars_exclude"]
    assert excluded["weight_decay"] == 0.0 and excluded["lars_exclude"]


def test_param_groups_exclude_every_parameter_of_a_norm_layer_and_every_bias_whatever_its_shape():
    """A review: a network of one's own (net=) with a LayerNorm over (C, H, W) had its 3-D weight and bias
    decayed and LARS-adapted, as weights, where the paper excludes biases and normalization parameters."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.ln = nn.LayerNorm([4, 6, 6])
            self.gn = nn.GroupNorm(2, 4)
            self.scale = nn.Parameter(torch.ones(4))  # 1-D: excluded, as before
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
            self.b.weight = self.a.weight  # shared: once
            self.attention = nn.MultiheadAttention(4, 2)  # its in_proj_bias, out_proj.bias
            self.shift = nn.Module()  # a bias of 4 dimensions, broadcast over (B, C, H, W): by its name
            self.shift.bias = nn.Parameter(torch.zeros(1, 4, 1, 1))

    net = Net()
    regular, excluded = param_groups(net, weight_decay=0.1)
    named = {id(p): name for name, p in net.named_parameters()}
    assert sorted(named[id(p)] for p in regular["params"]) == [
        "a.weight", "attention.in_proj_weight", "attention.out_proj.weight", "conv.weight"]
    assert sorted(named[id(p)] for p in excluded["params"]) == [
        "a.bias", "attention.in_proj_bias", "attention.out_proj.bias", "b.bias", "conv.bias", "gn.bias", "gn.weight",
        "ln.bias", "ln.weight", "scale", "shift.bias"]
    assert len(regular["params"]) + len(excluded["params"]) == len(list(net.parameters()))


def test_param_groups_skip_frozen_parameters():
    model = make_model()
    model[0].requires_grad_(False)
    ids = {id(p) for g in param_groups(model, 0.0) for p in g["params"]}
    assert id(model[0].weight) not in ids and id(model[0].bias) not in ids


@pytest.mark.parametrize("clip", [False, True])
def test_a_lars_step_with_its_learning_rate_in_a_tensor_is_the_numbers_but_for_rounding(clip):
    """LARS.step(lr=tensor) (what a CUDA graph's replay reads): the steps of the group's number, a multiply and
    an add where the number's is one op apart; the tensor, not the groups' lr, is what counts."""
    models = [make_model() for _ in range(2)]
    optimizers = [build_optimizer("lars", m, lr=0.5, weight_decay=1e-3, lars_clip=clip) for m in models]
    lr = torch.zeros(())
    for step in range(4):
        x = torch.randn(8, 6)
        for model, optimizer in zip(models, optimizers):
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
        for group in optimizers[0].param_groups:
            group["lr"] = 0.1 * (step + 1)
        lr.fill_(0.1 * (step + 1))  # the other's groups keep 0.5
        optimizers[0].step()
        optimizers[1].step(lr=lr)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_lars_step_matches_the_formula():
    model = make_model()
    lr, wd, eta, mom = 0.5, 0.01, 0.001, 0.9
    opt = LARS(param_groups(model, wd), lr=lr, momentum=mom, weight_decay=wd, trust_coefficient=eta)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {}
    for step in range(2):
        opt.zero_grad()
        model(torch.randn(8, 6)).pow(2).sum().backward()
        grads[step] = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
    # Recompute both steps by hand.
    expected, bufs = dict(before), {}
    for step in range(2):
        for n in expected:
            w, g = expected[n], grads[step][n]
            if w.ndim > 1:  # regular: weight decay and the trust ratio
                g = g + wd * w
                g = eta * w.norm() / g.norm() * g
            bufs[n] = g if step == 0 else mom * bufs[n] + g
            expected[n] = w - lr * bufs[n]
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n], rtol=1e-5, atol=1e-7)


def test_clipped_lars_steps_at_most_as_far_as_sgd():
    # solo-learn's CIFAR recipe: eta 0.02 with LARC clipping, a layer's step min(eta ||w|| / ||g||, lr) g.
    # With lr 0.0015 the first Linear's trust step (0.0018) is above lr and the second's (0.0012)
    # below it: the clip binds on one layer only.
    model = make_model()
    lr, eta = 0.0015, 0.02
    opt = LARS(param_groups(model, 0.0), lr=lr, momentum=0.9, trust_coefficient=eta, clip=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(8, 6)).pow(2).sum().backward()
    opt.step()
    bound = []
    for n, p in model.named_parameters():
        g = p.grad
        step = min(eta * before[n].norm() / g.norm(), lr) if p.ndim > 1 else lr
        if p.ndim > 1:
            bound.append(bool(eta * before[n].norm() / g.norm() > lr))
        torch.testing.assert_close(p.detach(), before[n] - step * g, rtol=1e-5, atol=1e-7)
    assert bound == [True, False]
    # lr 0, a cosine schedule's last step: no step and no NaN.
    opt.param_groups[0]["lr"] = opt.param_groups[1]["lr"] = 0.0
    still = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), still))


def test_lars_leaves_excluded_parameters_unadapted_and_undecayed():
    # An excluded parameter with zero gradient must not move (no weight decay on it), while a
    # regular one with zero gradient shrinks by weight decay.
    model = make_model()
    opt = LARS(param_groups(model, 0.1), lr=1.0, weight_decay=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    bias_before = model[0].bias.detach().clone()
    weight_before = model[0].weight.detach().clone()
    opt.step()
    torch.testing.assert_close(model[0].bias.detach(), bias_before, rtol=0, atol=0)
    # the regular weight's update is its decay, wd w, adapted: trust eta ||w|| / ||wd w|| (eps 1e-8) = eta / wd
    trust = 0.001 * weight_before.norm() / (0.1 * weight_before.norm() + 1e-8)
    torch.testing.assert_close(model[0].weight.detach(), weight_before - 1.0 * trust * 0.1 * weight_before)
    # An excluded parameter's step is plain SGD: lr * grad, however small the parameter.
    model = make_model()
    opt = LARS(param_groups(model, 0.1), lr=0.1, weight_decay=0.1)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    bn_before = model[1].weight.detach().clone()
    opt.step()
    torch.testing.assert_close(model[1].weight.detach(), bn_before - 0.1)


@pytest.mark.parametrize("name, cls", [("lars", LARS), ("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_build_optimizer(name, cls):
    opt = build_optimizer(name, make_model(), lr=0.1, weight_decay=1e-4)
    assert isinstance(opt, cls)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]


def test_adamw_takes_its_betas():
    """optim.beta1 and beta2 (an earlier note: AdamW's betas could not be set from the command line)."""
    opt = build_optimizer("adamw", make_model(), lr=0.1, weight_decay=1e-4, betas=(0.8, 0.95))
    assert [g["betas"] for g in opt.param_groups] == [(0.8, 0.95)] * 2
    assert build_optimizer("adamw", make_model(), lr=0.1, weight_decay=0.0).param_groups[0]["betas"] == (0.9, 0.999)


def test_build_optimizer_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("adam-ish", make_model(), lr=0.1, weight_decay=0.0)


def test_settings_that_mean_nothing_are_refused_in_one_sentence():
    """A user test: param_groups(model.parameters(), ...) failed on "'generator' object has no attribute
    'parameters'", and LARS took a negative momentum or weight decay (torch's SGD refuses them)."""
    model = nn.Linear(3, 2)
    with pytest.raises(TypeError, match=r"param_groups takes the model \(an nn.Module\), not generator"):
        param_groups(model.parameters(), 0.0)
    for bad, said in ((dict(momentum=-1), "invalid momentum -1"), (dict(weight_decay=-1), "invalid weight_decay -1"),
                      (dict(lr=-0.1), "invalid learning rate -0.1"),
                      (dict(trust_coefficient=0.0), "invalid trust_coefficient 0.0")):
        with pytest.raises(ValueError, match=said):
            LARS(param_groups(model, 0.0), **{"lr": 0.1, **bad})


def test_lars_trust_ratio_is_of_the_gradient_with_weight_decay():
    """A mutation audit: the trust ratio over the norm of the raw gradient survived every test. LARS adapts
    the update it takes, g + wd w (You et al. 2017): with a zero raw gradient that is wd w, its trust ratio
    eta ||w|| / ||wd w|| = eta / wd, and the step lr eta w (the raw gradient's norm, 0, would skip the
    adaptation: a step of lr wd w, 500 times as large here)."""
    lin = nn.Linear(4, 3, bias=False)
    wd, eta, lr = 0.5, 0.001, 1.0
    opt = LARS(param_groups(lin, wd), lr=lr, weight_decay=wd, trust_coefficient=eta)
    w = lin.weight.detach().clone()
    lin.weight.grad = torch.zeros_like(w)
    opt.step()
    torch.testing.assert_close(lin.weight.detach(), w - lr * eta * w)


def test_lars_steps_a_zero_weight_as_sgd_does():
    """A mutation audit: applying the trust ratio where a norm is zero survived every test. A zero-initialized
    weight has trust ratio 0 (eta ||w|| / ||g||), which would freeze it for good: where either norm is zero,
    LARS skips the adaptation (as its docstring says), and the step is plain SGD's."""
    lin = nn.Linear(4, 3, bias=False)
    nn.init.zeros_(lin.weight)
    opt = LARS(param_groups(lin, 0.0), lr=0.1, trust_coefficient=0.001)
    g = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    lin.weight.grad = g.clone()
    opt.step()
    torch.testing.assert_close(lin.weight.detach(), -0.1 * g)
    # and a weight with no gradient (nor weight decay) stays where it is, not NaN
    lin = nn.Linear(4, 3, bias=False)
    w = lin.weight.detach().clone()
    opt = LARS(param_groups(lin, 0.0), lr=0.1, trust_coefficient=0.001)
    lin.weight.grad = torch.zeros_like(w)
    opt.step()
    assert torch.equal(lin.weight.detach(), w)
    # also with eps=0, as the reference code (a mutation audit: the trust ratio applied where only the gradient's
    # norm is zero survived, eps keeping eta ||w|| / eps finite: with eps 0 it is inf, and 0 * inf NaN)
    opt = LARS(param_groups(lin, 0.0), lr=0.1, trust_coefficient=0.001, eps=0.0)
    opt.step()
    assert torch.equal(lin.weight.detach(), w)


def test_lars_decays_the_weight_by_weight_decay_before_the_trust_ratio():
    """A mutation audit: half the weight decay in LARS survived every test (where the raw gradient is zero, the
    trust ratio cancels wd's size). With w = (3, 0), g = (0, 4) and wd 1 the update is g + wd w = (3, 4), of norm 5:
    trust eta 3 / 5, and the step lr eta 3 / 5 (3, 4), in the direction that wd sets."""
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 0.0]]))
    opt = LARS(param_groups(lin, 1.0), lr=1.0, weight_decay=1.0, trust_coefficient=0.1)
    lin.weight.grad = torch.tensor([[0.0, 4.0]])
    opt.step()
    expected = torch.tensor([[3.0, 0.0]]) - 0.1 * 3 / 5 * torch.tensor([[3.0, 4.0]])
    torch.testing.assert_close(lin.weight.detach(), expected)


def test_build_optimizer_passes_on_momentum_trust_coefficient_and_clip():
    """A mutation audit: SGD built without the momentum given (torch's default, 0), and LARS built with its own
    trust coefficient and momentum in place of the ones given (optim.trust_coefficient, optim.momentum), each
    survived every test."""
    sgd = build_optimizer("sgd", make_model(), lr=0.1, weight_decay=0.0, momentum=0.8)
    assert [g["momentum"] for g in sgd.param_groups] == [0.8, 0.8]
    lars = build_optimizer("lars", make_model(), lr=0.1, weight_decay=0.0, momentum=0.7, trust_coefficient=0.02,
                           lars_clip=True)
    assert [(g["momentum"], g["trust_coefficient"], g["clip"]) for g in lars.param_groups] == [(0.7, 0.02, True)] * 2


def test_lars_step_with_a_closure_returns_its_loss_and_steps_on_its_gradients():
    """As torch's optimizers: ``step(closure)`` evaluates the loss with gradients on (a coverage audit: not run)."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(3, 4))
    stepped = nn.Parameter(w.detach().clone())
    x = torch.randn(5, 4)

    def closure():
        stepped.grad = None
        loss = (x @ stepped.t()).square().sum()
        loss.backward()
        return loss

    (x @ w.t()).square().sum().backward()
    LARS([w], lr=0.1, weight_decay=1e-3).step()
    with torch.no_grad():
        loss = LARS([stepped], lr=0.1, weight_decay=1e-3).step(closure)
    assert loss is not None and loss.requires_grad and torch.equal(stepped, w)


def test_a_vit_s_class_token_and_position_embedding_are_decayed_and_its_layer_norms_and_biases_are_not():
    """A review's decision, pinned: as DINO's get_params_groups and MoCo v3's LARS split a ViT (ndim <= 1 and biases
    excluded), torchvision's class_token and pos_embedding (3-D) are decayed and LARS-adapted (docs/python_api.md)."""
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8,
                                               mlp_dim=16)
    regular, excluded = param_groups(vit, 1.5e-6)
    names = {id(p): n for n, p in vit.named_parameters()}
    decayed = {names[id(p)] for p in regular["params"]}
    assert {"class_token", "encoder.pos_embedding", "conv_proj.weight", "heads.head.weight"} <= decayed
    assert not any(n.endswith("bias") or ".ln" in n for n in decayed)
    assert {names[id(p)] for p in excluded["params"]} == set(names.values()) - decayed
    assert excluded["weight_decay"] == 0.0 and excluded["lars_exclude"]


def test_lars_defaults_are_the_papers_momentum_and_trust_coefficient():
    """A mutation audit: build_optimizer's default momentum 0 and trust coefficient 0.02 each survived every test
    (the training loop passes the config's own). Paper, appendix C: LARS with momentum 0.9 and trust coefficient
    eta 0.001, unclipped; biases and normalization parameters without weight decay."""
    for opt in (build_optimizer("lars", make_model(), lr=0.1, weight_decay=1.5e-6),
                LARS(param_groups(make_model(), 1.5e-6), lr=0.1)):
        assert [(g["momentum"], g["trust_coefficient"], g["clip"], g["weight_decay"]) for g in opt.param_groups] == [
            (0.9, 0.001, False, 1.5e-6), (0.9, 0.001, False, 0.0)]
