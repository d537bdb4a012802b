"""The CUDA graph of pretrain's step (byol.cuda_graph): what it refuses, its errors, and its replays against
the eager step, on the CPU with torch.cuda's graph stood in for and on a GPU."""

import copy
import math

import pytest
import torch

from byol import BYOL
from byol.compiling import compile_step
from byol.cuda_graph import GraphedLoopStep
from byol.data import TensorBatches
from byol.step import LoopStep, ViewsForward
from steps import images, make_loop_step, optimizer_of, tiny_byol


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
