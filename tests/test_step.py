"""The training step: compiled and eager agree, channels_last changes nothing but speed, no host sync.

Timing lives in benchmarks/ (BENCHMARKS.md), not here: these tests check what cannot be noisy.
"""

import copy
import math
import platform
import subprocess
import sys
import warnings
from itertools import chain

import pytest
import torch
from torch import nn

from byol.augment import Augment, cifar_views
from byol.backbones import resnet
from byol.data import TensorBatches
from byol.model import BYOL
from byol.optim import build_optimizer
from byol.schedules import cosine_lr, tau_schedule
from byol.compiling import Compiled, compile_step, compiled_augment, eager_fallbacks
from byol.cuda_graph import GraphedLoopStep
from byol.step import LoopStep, ViewsForward, train_step, views_loss

SIZE = 16


def tiny_byol(seed: int = 0) -> BYOL:
    torch.manual_seed(seed)
    view1, view2 = cifar_views(SIZE)
    return BYOL(resnet("resnet18", cifar_stem=True, width=8), image_size=SIZE, hidden_layer="avgpool",
                projection_size=16, projection_hidden_size=32, augment_fn=Augment(view1), augment_fn2=Augment(view2))


def optimizer_of(byol: BYOL, lr: float = 0.1) -> torch.optim.Optimizer:
    return build_optimizer("lars", nn.ModuleList([byol.online, byol.predictor]), lr=lr, weight_decay=1e-4)


def images(n: int = 8, seed: int = 0, device="cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g).to(device)


def run_steps(byol, forward, batch, steps=2, augment=None, device="cpu", lr=0.1) -> list[torch.Tensor]:
    """Losses of ``steps`` full steps (augment, forward, backward, LARS, EMA) on the same batch."""
    optimizer = optimizer_of(byol, lr)
    generator = torch.Generator(device=device).manual_seed(1)
    losses = []
    for _ in range(steps):
        loss, _ = train_step(forward, byol, optimizer, batch, generator, None, augment)
        byol.update_target(0.99)
        losses.append(loss)
    return losses


def test_channels_last_gives_the_same_losses():
    nchw = tiny_byol()
    cl = copy.deepcopy(nchw)
    batch = images()
    losses_nchw = run_steps(nchw, ViewsForward(nchw, channels_last=False), batch, steps=2)
    losses_cl = run_steps(cl, ViewsForward(cl), batch, steps=2)
    conv = cl.online.encoder.body.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    # The second loss is computed with the weights after one backward, LARS and EMA step.
    torch.testing.assert_close(torch.stack(losses_cl), torch.stack(losses_nchw), rtol=1e-4, atol=1e-5)


def test_views_forward_converts_the_parameters_the_optimizer_holds():
    byol = tiny_byol()
    optimizer = optimizer_of(byol)
    ViewsForward(byol)
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for p in byol.parameters() if p.requires_grad}
    assert byol.online.encoder.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def small_cnn_byol(seed: int = 0) -> BYOL:
    """BYOL over a 2-layer CNN: the same step, a graph small enough to compile in a minute on a CPU."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    view1, view2 = cifar_views(SIZE)
    return BYOL(net, image_size=SIZE, projection_size=16, projection_hidden_size=32,
                augment_fn=Augment(view1), augment_fn2=Augment(view2))


def compiled_graphs() -> tuple[int, dict]:
    """Graphs torch.compile has made since ``torch._dynamo.reset()``, and its graph breaks."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"], dict(counters["graph_break"])


def assert_compiled_once(forward, augment) -> None:
    """Three graphs, each made once at the first step (the loss computation and one per view's
    augmentation) and none broken: a graph break or a recompilation at a later step would add
    graphs, and compile time on every GPU run (BENCHMARKS.md: "GPU")."""
    assert forward.is_compiled, forward.error
    assert all(a.compiled.is_compiled for a in augment), [a.compiled.error for a in augment]
    graphs, breaks = compiled_graphs()
    assert (graphs, breaks) == (3, {})


@pytest.mark.slow
def test_compiled_and_eager_steps_give_the_same_loss():
    eager = small_cnn_byol()
    compiled = copy.deepcopy(eager)
    batch = images()
    losses_eager = run_steps(eager, ViewsForward(eager), batch)
    torch._dynamo.reset()
    forward, augment = compile_step(ViewsForward(compiled), compiled)
    losses_compiled = run_steps(compiled, forward, batch, steps=3, augment=augment)
    assert_compiled_once(forward, augment)  # three steps: a recompilation at the second or third shows
    torch.testing.assert_close(torch.stack(losses_compiled[:2]), torch.stack(losses_eager), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_compiled_and_eager_steps_give_the_same_loss_on_cuda(full_fp32):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    device = torch.device("cuda")
    eager = tiny_byol().to(device)
    compiled = copy.deepcopy(eager)
    batch = images(16, device=device)
    # lr 1e-3, not 0.1: this tiny network's losses move with the order of a sum. On the CPU, the
    # eager step alone on 1 thread against 2 (another order of the same sums) gave a third loss
    # 0.017 apart at lr 0.1 (the biases' and BatchNorm's plain SGD steps carry it), 1e-4 at 1e-3;
    # compiled against eager there, all parts compiled, the three losses agreed to 1e-4 at 1e-3.
    losses_eager = run_steps(eager, ViewsForward(eager), batch, steps=3, device=device, lr=1e-3)
    torch._dynamo.reset()
    forward, augment = compile_step(ViewsForward(compiled), compiled)
    losses_compiled = run_steps(compiled, forward, batch, steps=3, augment=augment, device=device, lr=1e-3)
    assert forward.is_compiled, forward.error
    assert all(a.compiled.is_compiled for a in augment), [a.compiled.error for a in augment]
    torch.testing.assert_close(torch.stack(losses_compiled), torch.stack(losses_eager), rtol=1e-3, atol=1e-3)
    assert compiled_graphs() == (3, {})  # as on the CPU (assert_compiled_once)


def test_compiled_augment_gives_the_same_views():
    augment = Augment(cifar_views(SIZE)[1])
    batch = images()
    eager = augment(batch, torch.Generator().manual_seed(3))
    compiled = compiled_augment(augment)(batch, torch.Generator().manual_seed(3))
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def _failing_backend(gm, example_inputs):
    raise RuntimeError("no compiler here")


def test_compile_falls_back_to_eager_with_a_warning():
    module = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    forward = Compiled(module, backend=_failing_backend)
    x = torch.randn(3, 4)
    with pytest.warns(RuntimeWarning, match="running the step eagerly"):
        out = forward(x)
    assert not forward.is_compiled and isinstance(forward.error, Exception)
    torch.testing.assert_close(out, module(x))
    torch.testing.assert_close(forward(x), module(x))  # and stays eager, without warning again


def test_a_backward_that_fails_to_compile_falls_back_to_eager():
    """torch compiles the backward at the first backward, outside Compiled's call: train_step redoes
    that step eagerly, from the same draws, and the losses are the eager step's."""
    from torch._dynamo.backends.common import aot_autograd

    def no_backward_compiler(gm, example_inputs):
        raise RuntimeError("no backward compiler here")

    eager = small_cnn_byol()
    other = copy.deepcopy(eager)
    batch = images()
    forward = Compiled(ViewsForward(other), backend=aot_autograd(fw_compiler=lambda gm, _: gm.forward,
                                                                 bw_compiler=no_backward_compiler))
    with pytest.warns(RuntimeWarning, match="no backward compiler here.*running the step eagerly"):
        losses = run_steps(other, forward, batch)
    assert not forward.is_compiled and "no backward compiler" in str(forward.error)
    assert forward.error.__traceback__ is None and "no_backward_compiler" in forward.trace  # text, not frames
    torch.testing.assert_close(torch.stack(losses), torch.stack(run_steps(eager, ViewsForward(eager), batch)))


def test_eager_fallbacks_names_the_parts_that_did_not_compile():
    module = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    assert eager_fallbacks(module, None) == []  # an eager step has nothing to report
    failing, working = Compiled(module, backend=_failing_backend), Compiled(module, backend="eager")
    with pytest.warns(RuntimeWarning):
        failing(torch.randn(3, 4))
    working(torch.randn(3, 4))
    assert eager_fallbacks(working, None) == []
    assert eager_fallbacks(failing, None) == [failing]


def test_compiled_reraises_errors_of_the_function_itself():
    calls = []

    def broken(x):
        calls.append(1)
        raise ValueError("a bug in the step")

    fn = Compiled(broken, backend="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="a bug in the step"):
            fn(torch.ones(2))
    assert len(calls) >= 2  # tried compiled, then eagerly, which raised


HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


@pytest.fixture
def host_reads(monkeypatch):
    """Count the Tensor methods that copy a value to the host (a GPU sync when on CUDA)."""
    counts: dict[str, int] = {}
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            counts[_name] = counts.get(_name, 0) + 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


def make_loop_step(byol, forward=None, generator=None, augment=None, device="cpu", step_class=LoopStep, lr=0.1,
                   **kwargs):
    """pretrain's loop body (``LoopStep``: schedules, guard, step, EMA, metrics on the device) over
    ``byol``; by default eager (``ViewsForward``) with a generator seeded 0."""
    optimizer = optimizer_of(byol, lr)
    forward = forward if forward is not None else ViewsForward(byol)
    generator = generator if generator is not None else torch.Generator(device=device).manual_seed(0)
    return step_class(forward, byol, optimizer, generator, None, augment, lr=lr, warmup_steps=2,
                      total_steps=100, tau_base=0.99, **kwargs)


def loop_steps(byol, forward, batches, generator, steps, device, augment=None):
    """Steps of pretrain's loop body (:func:`make_loop_step`)."""
    loop_step = make_loop_step(byol, forward, generator, augment, device)
    it = iter(batches)
    for step in range(steps):
        batch, _, _ = next(it)
        loop_step(step, batch)
    return loop_step


def test_loop_step_reads_nothing_back_to_the_host(host_reads):
    byol = tiny_byol()
    batches = TensorBatches(images(64), None, 8, generator=0)
    loop_step = loop_steps(byol, ViewsForward(byol), batches, torch.Generator().manual_seed(0), 3, "cpu")
    assert host_reads == {}
    record = loop_step.read(torch.randn(8, 16))  # the counter does see the reads every log_every steps
    assert host_reads.get("tolist") == 1 and host_reads.get("item", 0) >= 2
    assert record["train/skipped_steps"] == 0 and record["train/loss"] > 0


def test_a_step_the_guard_undid_adds_nothing_to_the_sums_not_even_its_nan():
    """A user test: the undone step's z std entered as NaN * 0, NaN, so its whole record's
    monitor/z_std was NaN (off the collapse plot, past the collapse warning) where the loss was not."""
    from byol.step import step_metrics
    nan = torch.tensor(float("nan"))
    assert step_metrics(nan, torch.full((4, 8), float("nan")), torch.tensor(False)).tolist() == [0.0, 0.0, 0.0]
    kept = step_metrics(torch.tensor(1.5), torch.randn(4, 8), torch.tensor(True))
    assert kept[0] == 1.5 and 0 < kept[1] < 1 and kept[2] == 1.0


def test_a_step_the_guard_undid_left_the_target_as_it_was():
    """A user test: the guard put the online branch and the optimizer back, but the EMA update after
    it still moved the target (toward the restored online weights): an EMA step for each undone step."""
    byol = tiny_byol()
    forward = ViewsForward(byol)
    poison = {"on": False}

    def tensors():
        return dict(chain(byol.named_parameters(), byol.named_buffers()))

    def maybe_nan(view1, view2):
        loss, z1 = forward(view1, view2)
        return (loss * float("nan") if poison["on"] else loss), z1

    loop_step = make_loop_step(byol, forward=maybe_nan)
    loop_step(0, images())  # a good step: the target moves, the optimizer state exists
    before = {k: v.clone() for k, v in tensors().items()}
    poison["on"] = True
    loop_step(1, images(seed=1))
    assert loop_step.guard.skipped.item() == 1
    assert any(k.startswith("target.") for k in before)
    for k, v in tensors().items():
        assert torch.equal(v, before[k]), k
    poison["on"] = False
    loop_step(2, images(seed=2))
    key = "target.encoder.body.conv1.weight"  # the next good step moves it again
    assert not torch.equal(tensors()[key], before[key])


@pytest.mark.gpu
@pytest.mark.parametrize("compile", [False, True])
def test_loop_step_makes_no_cuda_sync(compile):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    device = torch.device("cuda")
    byol = tiny_byol().to(device)
    forward, augment = ViewsForward(byol), None
    if compile:
        forward, augment = compile_step(forward, byol)
    batches = TensorBatches(images(256, device=device), None, 16, generator=0)  # batch 16, as the test above: its compiled graphs serve
    generator = torch.Generator(device=device).manual_seed(0)
    loop_steps(byol, forward, batches, generator, 3, device, augment)  # warm-up: compile, allocator, cuDNN
    if compile:  # else this would time the eager fallback again and pass for the compiled step
        assert forward.is_compiled, forward.error
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loop_step = loop_steps(byol, forward, batches, generator, 3, device, augment)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert loop_step.read(torch.randn(8, 16, device=device))["train/skipped_steps"] == 0


def test_graphed_loop_step_refuses_a_cpu():
    with pytest.raises(ValueError, match="needs a CUDA device"):
        make_loop_step(tiny_byol(), step_class=GraphedLoopStep)


@pytest.mark.gpu
def test_graphed_loop_step_refuses_what_it_cannot_capture():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    device = torch.device("cuda")
    byol = tiny_byol().to(device)
    graphed = dict(device=device, step_class=GraphedLoopStep)
    with pytest.raises(ValueError, match="CUDA generator"):
        make_loop_step(byol, generator=torch.Generator(), **graphed)
    forward, augment = compile_step(ViewsForward(byol), byol)  # refused before anything compiles
    with pytest.raises(ValueError, match="not compile_step's"):
        make_loop_step(byol, forward=forward, **graphed)
    with pytest.raises(ValueError, match="not compile_step's"):
        make_loop_step(byol, augment=augment, **graphed)
    with pytest.raises(ValueError, match="at least one eager step"):
        make_loop_step(byol, eager_steps=0, **graphed)


class _WaitsForTheHost(ViewsForward):
    """The step of a network of one's own that reads a value back in its forward (a host sync)."""

    def forward(self, view1, view2):
        if view1.sum().item() < 0:  # never, but asked of the GPU
            raise AssertionError
        return super().forward(view1, view2)


def _step_captured_here(monkeypatch, forward_backward) -> tuple[GraphedLoopStep, list]:
    """A GraphedLoopStep whose capture runs on a CPU, with torch.cuda.graph and its helpers stood in for
    (the capture's body runs eagerly, and an error in it fails the capture's end too, as on a GPU), and
    ``forward_backward`` as its forward and backward; with the streams it set as current, in a list."""
    from contextlib import contextmanager, nullcontext

    @contextmanager
    def graph(*args, **kwargs):
        try:
            yield
        except RuntimeError:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    streams = []
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: object())
    monkeypatch.setattr(torch.cuda, "device", lambda device: nullcontext())
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: "the stream before the capture")
    monkeypatch.setattr(torch.cuda, "set_stream", streams.append)
    byol = tiny_byol()
    step = object.__new__(GraphedLoopStep)  # (its constructor refuses a CPU)
    step.forward, step.byol, step.optimizer, step.generator = ViewsForward(byol), byol, optimizer_of(byol), None
    step.amp, step.augment, step._side, step.graph, step.capture_tail = None, None, None, None, False
    monkeypatch.setattr(step, "_forward_backward", forward_backward)
    return step, streams


@pytest.mark.parametrize("error", [RuntimeError("CUDA error: operation not permitted when stream is capturing\n"
                                                "CUDA kernel errors might be reported asynchronously"),
                                   torch.cuda.OutOfMemoryError("CUDA out of memory.")])
def test_a_graphed_step_that_cannot_be_captured_is_one_sentence(monkeypatch, error):
    """A step that cannot be captured (a network's .item(), say) is a setting's error in one sentence
    with CUDA's first line, not CUDA's traceback; running out of memory stays itself (the command line
    says that one); nothing is replayed after either."""
    from byol.config import ConfigError

    def fails(*args, **kwargs):
        raise error

    step, streams = _step_captured_here(monkeypatch, fails)
    expected = (ConfigError, "^train.cuda_graph=true: the training step could not be captured in a CUDA graph "
                r"\(RuntimeError: CUDA error: operation not permitted when stream is capturing\); .*"
                "train with train.cuda_graph=false$") if type(error) is RuntimeError else (type(error), "out of memory")
    with pytest.raises(expected[0], match=expected[1]) as raised:
        step._capture(images())
    assert raised.value is error or raised.value.__cause__.__context__ is error  # (the capture's end's, then it)
    assert step.graph is None
    # torch.cuda.graph leaves its side stream current where its capture's end fails: put back
    assert streams == ["the stream before the capture"]


def test_a_failed_capture_puts_the_stream_back_on_the_images_device_and_leaves_the_current_device(monkeypatch):
    """torch.cuda.set_stream makes the stream's device the current one too: the stream is put back inside the
    capture's torch.cuda.device(images' device), which then makes the caller's device current again (a run on
    cuda:1 whose capture failed left cuda:1 current in the caller's process)."""
    from contextlib import contextmanager
    from byol.config import ConfigError

    def fails(*args, **kwargs):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    step, streams = _step_captured_here(monkeypatch, fails)

    @contextmanager
    def device(device):
        streams.append("device entered")
        try:
            yield
        finally:
            streams.append("device left")

    monkeypatch.setattr(torch.cuda, "device", device)
    with pytest.raises(ConfigError):
        step._capture(images())
    assert streams == ["device entered", "the stream before the capture", "device left"]


def _raised_while_handling(handled):
    """A network's forward that fails the capture while handling an error of its own (a cache miss, an
    out-of-memory fallback): the capture's error has ``handled`` as its context."""
    def forward_backward(*args, **kwargs):
        try:
            raise handled
        except type(handled):
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
    return forward_backward


@pytest.mark.parametrize("handled", [KeyError("conv1"), torch.cuda.OutOfMemoryError("CUDA out of memory.")])
def test_a_failed_capture_names_the_step_s_error_not_one_it_handled(monkeypatch, handled):
    """The sentence names the error that failed the capture, not the first of its chain: an error the
    network raised and handled itself before it (a KeyError; an out of memory it fell back from, which
    was re-raised as the run's out of memory) is not why the step cannot be captured."""
    from byol.config import ConfigError

    step, _ = _step_captured_here(monkeypatch, _raised_while_handling(handled))
    with pytest.raises(ConfigError, match=r"\(RuntimeError: CUDA error: operation not permitted when stream is "
                                          r"capturing\); "):
        step._capture(images())
    assert step.graph is None


def _graphed_here(monkeypatch, byol, forward, capture_tail) -> GraphedLoopStep:
    """A GraphedLoopStep on a CPU (:func:`make_loop_step`'s settings), with torch.cuda's graph, streams and
    device stood in for: a capture runs its body, then puts back every tensor and the draws it changed (a
    capture runs nothing), and a replay runs the body again, with the learning rates and tau NaN meanwhile: a
    number read from them in the body (a tensor made of one) is the capture's on a GPU, not the step's."""
    from contextlib import contextmanager, nullcontext

    step = object.__new__(GraphedLoopStep)  # (its constructor refuses a CPU)
    LoopStep.__init__(step, forward, byol, optimizer_of(byol), torch.Generator().manual_seed(0), None, None,
                      lr=0.1, warmup_steps=2, total_steps=100, tau_base=0.99)
    step._prepare(3, capture_tail)

    @contextmanager
    def graph(*args, **kwargs):
        state = [*byol.parameters(), *byol.buffers(), step.sums, step.guard.streak, step.guard.max_streak,
                 step.guard.skipped, *(v for s in step.optimizer.state.values() for v in s.values())]
        kept, drawn = [t.clone() for t in state], step.generator.get_state()
        yield
        with torch.no_grad():
            torch._foreach_copy_(state, kept)
        step.generator.set_state(drawn)

    class Graph:
        replays = 0

        def register_generator_state(self, generator):
            pass

        def replay(self):  # a real replay runs no Python: the numbers the capture read are then its, baked in
            Graph.replays += 1
            numbers = [g["lr"] for g in step.optimizer.param_groups], step.tau
            for group in step.optimizer.param_groups:
                group["lr"] = float("nan")
            step.tau = float("nan")
            try:
                step._captured()
            finally:
                for group, lr in zip(step.optimizer.param_groups, numbers[0]):
                    group["lr"] = lr
                step.tau = numbers[1]

    class Stream:
        def __init__(self, *args):
            pass

        def wait_stream(self, other):
            pass

    for name, stand_in in (("CUDAGraph", Graph), ("graph", graph), ("device", lambda d: nullcontext()),
                           ("current_stream", Stream), ("Stream", Stream), ("stream", lambda s: nullcontext())):
        monkeypatch.setattr(torch.cuda, name, stand_in)
    return step


def test_a_graph_that_holds_the_tail_trains_as_the_eager_step(monkeypatch, host_reads):
    """capture_tail: the optimizer step, the EMA, the guard and the metrics replayed from the graph, their
    learning rate and 1 - tau read from the device, give the eager step's losses, weights, target, momentum,
    sums and skipped steps, a NaN step undone in the graph too, and read nothing back to the host in the
    replays. On a CPU, the graph stood in for (its GPU run: test_graphed_loop_step_matches_the_eager_one_on_cuda).
    Equal to the bit: the eager step here takes its learning rate and tau from tensors too, as the graph must
    (test_optim and test_ema compare those with the numbers' ops: a rounding apart, which lr 0.1 amplifies
    to 1e-3 in the loss within two steps here, as a change of 1e-7 in the weights does)."""
    from byol import ema, optim

    def tensor_lr_step(self, closure=None):  # the eager loop with the tail's ops, as the graphed step's eager
        return lars_step(self, closure, lr=torch.tensor(self.param_groups[0]["lr"]))  # steps run them too

    def tensor_tau(self, tau):
        ema.update_target_by(self.target, self.online, torch.tensor(1.0 - tau))

    lars_step = optim.LARS.step
    runs = {}
    for name in ("eager", "graphed"):
        byol = tiny_byol()
        forward = ViewsForward(byol)
        poison = {"on": False}

        def maybe_nan(view1, view2, forward=forward, poison=poison):
            loss, z1 = forward(view1, view2)
            return (loss * float("nan") if poison["on"] else loss), z1

        with monkeypatch.context() as patched:
            if name == "eager":
                patched.setattr(optim.LARS, "step", tensor_lr_step)
                patched.setattr(BYOL, "update_target", tensor_tau)
                loop_step = make_loop_step(byol, forward=maybe_nan)
            else:
                loop_step = _graphed_here(patched, byol, maybe_nan, capture_tail=True)
            batches = iter(TensorBatches(images(160), None, 16, generator=0))
            losses = []
            for step in range(9):  # graphed: 3 eager steps, the capture and its replay, 5 replays
                poison["on"] = step == 6
                if step == 4:
                    host_reads.clear()
                losses.append(loop_step(step, next(batches)[0])[0])
            if name == "graphed":
                assert host_reads == {} and torch.cuda.CUDAGraph.replays == 6
        runs[name] = (torch.stack(losses), [*byol.parameters(), *byol.buffers()], loop_step)
    (eager_losses, eager_tensors, eager), (graphed_losses, graphed_tensors, graphed) = runs["eager"], runs["graphed"]
    assert math.isnan(graphed_losses[6]) and graphed.guard.skipped.item() == eager.guard.skipped.item() == 1
    assert torch.equal(graphed_losses.nan_to_num(), eager_losses.nan_to_num())
    assert all(torch.equal(ours, theirs) for ours, theirs in zip(graphed_tensors, eager_tensors))
    momenta = [[s["momentum_buffer"] for s in step.optimizer.state.values()] for step in (graphed, eager)]
    assert all(torch.equal(ours, theirs) for ours, theirs in zip(*momenta))
    assert torch.equal(graphed.sums, eager.sums)
    assert graphed.read(graphed_tensors[0][:8]) == eager.read(eager_tensors[0][:8])


def _replays_follow_their_numbers(loop_step: GraphedLoopStep, batches) -> None:
    """After the capture, a replay with a learning rate of 0 and a tau of 1 written for it leaves the online
    network, the predictor and the target as they are, and the next, with the schedules' numbers back, moves
    them: the graph's tail reads both from the device at each replay, not the capture's numbers."""
    byol = loop_step.byol
    for step in range(4):  # 3 eager steps, the capture and its replay
        loop_step(step, next(batches)[0])
    trained, target = [*byol.online.parameters(), *byol.predictor.parameters()], list(byol.target.parameters())
    before = [t.detach().clone() for t in (*trained, *target)]
    lr, tau_base = loop_step.lr, loop_step.tau_base
    loop_step.lr, loop_step.tau_base = 0.0, 1.0
    loop_step(4, next(batches)[0])
    assert all(torch.equal(a, b) for a, b in zip(before, (*trained, *target)))
    loop_step.lr, loop_step.tau_base = lr, tau_base
    loop_step(5, next(batches)[0])
    assert not all(torch.equal(a, b) for a, b in zip(before, trained))
    assert not all(torch.equal(a, b) for a, b in zip(before[len(trained):], target))
    assert loop_step.guard.skipped.item() == 0


def test_a_graph_s_tail_reads_its_learning_rate_and_tau_at_each_replay(monkeypatch):
    byol = tiny_byol()
    loop_step = _graphed_here(monkeypatch, byol, ViewsForward(byol), capture_tail=True)
    _replays_follow_their_numbers(loop_step, iter(TensorBatches(images(160), None, 16, generator=0)))


def test_a_graph_holds_the_tail_with_lars_only():
    byol = tiny_byol()
    step = object.__new__(GraphedLoopStep)
    LoopStep.__init__(step, ViewsForward(byol), byol, torch.optim.SGD(byol.parameters(), lr=0.1), None, None, None,
                      lr=0.1, warmup_steps=2, total_steps=100, tau_base=0.99)
    with pytest.raises(ValueError, match="with LARS only .*, not SGD; capture_tail=False"):
        step._prepare(3, capture_tail=True)
    step._prepare(3, capture_tail=False)


@pytest.mark.gpu
def test_a_step_that_waits_for_the_host_is_not_captured_on_cuda():
    """A failed capture, on a GPU. Not named for gpu_speed.sh's "graphed" part: it runs last in a part of its
    own, so that whatever a failed capture leaves in the process's CUDA state reaches no other test."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from byol.config import ConfigError

    device = torch.device("cuda")
    byol = tiny_byol().to(device)
    loop_step = make_loop_step(byol, forward=_WaitsForTheHost(byol), device=device, step_class=GraphedLoopStep)
    batches = iter(TensorBatches(images(64, device=device), None, 16, generator=0))
    for step in range(3):  # eager: a sync there only waits
        loop_step(step, next(batches)[0])
    with pytest.raises(ConfigError, match="^train.cuda_graph=true: the training step could not be captured"):
        loop_step(3, next(batches)[0])
    assert loop_step.graph is None
    assert torch.cuda.current_stream(device) == torch.cuda.default_stream(device)  # put back


@pytest.mark.gpu
@pytest.mark.parametrize("capture_tail", [False, True])
def test_graphed_loop_step_matches_the_eager_one_on_cuda(full_fp32, capture_tail):
    """The CUDA graph replays what the eager step runs: the same losses step by step (the graph's
    draws continue the same generator), each replay without a host sync; with ``capture_tail``, the
    optimizer step, the EMA, the guard and the metrics in the graph too, and the same sums."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    device = torch.device("cuda")
    eager_byol = tiny_byol().to(device)
    graphed_byol = copy.deepcopy(eager_byol)
    data = images(256, device=device)
    losses, sums = {}, {}
    for name, step_class, byol in (("eager", LoopStep, eager_byol), ("graphed", GraphedLoopStep, graphed_byol)):
        # lr 1e-3: a replay runs the eager step's kernels, but one summed in another order would move
        # this tiny network's losses by 1e-2 at lr 0.1 (the compiled test's comment)
        loop_step = make_loop_step(byol, device=device, step_class=step_class, lr=1e-3,
                                   **({"capture_tail": capture_tail} if name == "graphed" else {}))
        batches = iter(TensorBatches(data, None, 16, generator=0))
        losses[name] = []
        try:
            for step in range(7):  # graphed: 3 eager steps, the capture and its replay, 3 replays
                if name == "graphed" and step == 4:  # the replays after the capture: no host sync
                    torch.cuda.synchronize()
                    torch.cuda.set_sync_debug_mode("error")
                loss, _ = loop_step(step, next(batches)[0])
                losses[name].append(loss)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        if name == "graphed":
            assert loop_step.graph is not None and loop_step.calls == 7
        sums[name] = loop_step.sums
    torch.testing.assert_close(torch.stack(losses["graphed"]), torch.stack(losses["eager"]), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(sums["graphed"], sums["eager"], rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
def test_graphed_tail_reads_its_learning_rate_and_tau_at_each_replay_on_cuda(full_fp32):
    """The graph with the tail on CUDA: its replays follow the learning rate and tau written before them
    (a number read in the capture, a CPU tensor's say, is baked into the graph there; the test above, with
    lr 1e-3 and the schedules barely moving in its steps, does not tell it from the numbers of each step)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    device = torch.device("cuda")
    byol = tiny_byol().to(device)
    loop_step = make_loop_step(byol, device=device, step_class=GraphedLoopStep, capture_tail=True)
    _replays_follow_their_numbers(loop_step, iter(TensorBatches(images(256, device=device), None, 16, generator=0)))
    assert loop_step.graph is not None


# "Steps" that each allocate and free tensors above glibc's largest mmap threshold (32 MiB), as a
# batch-512 step does with its activations; prints the page faults of the last 16 of 24.
_PAGE_FAULTS = """
import resource, sys, torch
from byol.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 * 2**20)  # 64 MiB
    y = x * 2
    del x, y
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults = [step() for _ in range(24)]
print(kept, sum(faults[8:]))  # the heap settles within a few steps (alignment leaves gaps at first)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="keep_freed_memory changes glibc's malloc only")
def test_keep_freed_memory_ends_the_page_faults_of_later_steps():
    def faults(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", _PAGE_FAULTS, mode], capture_output=True, text=True, check=True)
        kept, count = out.stdout.split()
        return kept, int(count)

    _, default = faults("default")
    kept, with_keep = faults("keep")
    assert kept == "True"
    assert default >= 16 * 32  # 128 MiB a step faulted in again: 32768 pages of 4 KiB, or 64 of 2 MiB
    assert with_keep <= default // 8, (with_keep, default)  # measured: 0 to 1 step's worth in 16


# A decoding process forked from a process that keeps freed memory: what 64 MiB freed there leaves
# in its resident memory (MiB), with byol's start of a decoding process or with none.
_HELD_IN_WORKER = """
import resource, sys, torch
from torch.utils.data import DataLoader, Dataset
from byol.loaders import _start_decoding_process
from byol.allocator import keep_freed_memory
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
class Frees(Dataset):
    def __len__(self):
        return 1
    def __getitem__(self, index):
        before = resident()
        x = torch.ones(16 * 2**20)  # 64 MiB
        x += 1
        del x
        return resident() - before
kept = keep_freed_memory()
init = _start_decoding_process if sys.argv[1] == "byol" else None
print(kept, round(float(next(iter(DataLoader(Frees(), batch_size=None, num_workers=1, worker_init_fn=init))))))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="keep_freed_memory changes glibc's malloc only")
def test_a_decoding_process_hands_back_the_memory_it_frees_which_its_training_process_keeps():
    """A user test at ImageNet scale: each decoding process inherited keep_freed_memory and held ~1 GB
    at 224x224 (160 MB without)."""
    def held(init: str) -> int:
        out = subprocess.run([sys.executable, "-c", _HELD_IN_WORKER, init], capture_output=True, text=True, check=True)
        kept, mib = out.stdout.split()
        assert kept == "True"
        return int(mib)

    assert held("none") >= 60  # torch's own start of a worker: the 64 MiB stay resident
    assert held("byol") <= 16  # measured: 5


def test_loop_step_sets_the_scheduled_lr_and_moves_the_target_by_the_scheduled_tau():
    """A mutation audit: the EMA with 1 - tau, tau of the next step, and the cosine without its warm-up each
    survived every test. Step 1 of 8 with 4 warm-up steps: lr is 2/4 of the peak (warm-up), and the target
    is tau(1) of itself plus 1 - tau(1) of the online branch after the optimizer step (paper, eq. 1)."""
    byol = tiny_byol()
    with torch.no_grad():  # a target away from the online branch, so that tau shows
        for p in byol.target.parameters():
            p.add_(0.1 * torch.randn_like(p))
    optimizer = optimizer_of(byol)
    loop_step = LoopStep(ViewsForward(byol, channels_last=False), byol, optimizer, torch.Generator().manual_seed(0),
                         None, None, lr=0.4, warmup_steps=4, total_steps=8, tau_base=0.9)
    before = [p.clone() for p in byol.target.parameters()]
    loop_step(1, images())
    assert cosine_lr(1, 8, 0.4, 4) == pytest.approx(0.2)
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(0.2)] * 2
    tau = tau_schedule(1, 8, 0.9)  # 0.9038 (step 2's: 0.9146)
    for b, po, pt in zip(before, byol.online.parameters(), byol.target.parameters()):
        torch.testing.assert_close(pt, tau * b + (1 - tau) * po)


def test_the_second_view_is_drawn_with_the_second_recipe():
    """A mutation audit: drawing view 2 with view 1's augmentation survived every test. The paper's two
    recipes differ (view 2 solarizes, view 1 always blurs), and the loss is asymmetric in them."""
    byol = tiny_byol()
    batch = images()

    def first(x, generator):
        return x.float() / 255

    def second(x, generator):
        return 1 - x.float() / 255

    view1, view2 = views_loss(lambda v1, v2: (v1, v2), byol, batch, None, None, augment=(first, second))
    assert torch.equal(view1, first(batch, None)) and torch.equal(view2, second(batch, None))
    # byol's own recipes by default, from one generator: view 1's draws first
    view1, view2 = views_loss(lambda v1, v2: (v1, v2), byol, batch, torch.Generator().manual_seed(0), None)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(view1, byol.augment_fn(batch, g)) and torch.equal(view2, byol.augment_fn2(batch, g))


def test_the_logged_z_std_ratio_is_the_std_over_the_healthy_one_over_sqrt_of_the_width():
    """A mutation audit: the ratio over 1/sqrt(batch size) instead of 1/sqrt(projection width) survived every
    test. Spread projections have a normalized std of about 1/sqrt(width) (SimSiam, Sec. 4.1): a ratio of 1."""
    byol = tiny_byol()  # projections 16 wide, batches of 8
    loop_step = make_loop_step(byol)
    _, z1 = loop_step(0, images())
    record = loop_step.read(z1)
    assert z1.shape == (8, 16)
    assert record["monitor/z_std_ratio"] == pytest.approx(record["monitor/z_std"] * math.sqrt(16))


def test_the_logged_effective_rank_ratio_is_over_the_smaller_of_batch_and_width():
    """A mutation audit: the ratio over the projection width alone survived every test. The effective rank of a
    batch of 8 projections 16 wide is at most 8: the ratio is over min(B, d) (docs/metrics.md)."""
    byol = tiny_byol()
    loop_step = make_loop_step(byol)
    _, z1 = loop_step(0, images())
    record = loop_step.read(z1)
    assert z1.shape == (8, 16)
    assert record["monitor/effective_rank_ratio"] == pytest.approx(record["monitor/effective_rank"] / 8)


def test_the_logged_loss_and_std_are_the_means_of_the_steps_since_the_last_read():
    """A mutation audit: another divisor than the steps summed since the last read survived every test."""
    from byol.monitor import normalized_std
    loop_step = make_loop_step(tiny_byol())
    steps = [loop_step(step, images(seed=step)) for step in range(2)]
    record = loop_step.read(steps[-1][1])
    assert record["train/loss"] == pytest.approx(sum(loss.item() for loss, _ in steps) / 2)
    assert record["monitor/z_std"] == pytest.approx(sum(normalized_std(z1).item() for _, z1 in steps) / 2)
    loss, z1 = loop_step(2, images(seed=2))  # the sums start again after a read
    assert loop_step.read(z1)["train/loss"] == pytest.approx(loss.item())


def test_a_compiled_function_stays_compiled_through_its_own_errors_and_out_of_memory():
    """Compiled before its first call is not yet compiled; once it has run compiled, an error of the
    function itself is raised as it is (no fallback, no warning), and an out-of-memory backward is raised,
    not taken for a backward that cannot compile (a mutation audit: each survived). A backward that fails
    to compile falls back."""
    def step(x):
        if x.sum() < 0:
            raise ValueError("a bug in the step")
        return x * 2

    fn = Compiled(step, backend="eager")
    assert not fn.is_compiled  # nothing has run yet
    torch.testing.assert_close(fn(torch.ones(2)), torch.full((2,), 2.0))
    assert fn.is_compiled
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="a bug in the step"):
            fn(-torch.ones(2))
        assert not fn.backward_failed(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8 GiB"))
    assert said == [] and fn.is_compiled and fn.error is None
    with pytest.warns(RuntimeWarning, match="running the step eagerly"):
        assert fn.backward_failed(RuntimeError("no backward compiler here"))
    assert not fn.is_compiled
