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

from byol import BYOL
from byol.augment import Augment, cifar_views
from byol.data import TensorBatches
from byol.schedules import cosine_lr, tau_schedule
from byol.compiling import Compiled, compile_step, compiled_augment, eager_fallbacks
from byol.monitor import CollapseMonitor
from byol.step import LoopStep, ViewsForward, step_metrics, train_step, views_loss
from steps import SIZE, images, loop_steps, make_loop_step, optimizer_of, tiny_byol


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


def test_a_platform_torch_compile_refuses_outright_trains_eagerly_with_a_warning(monkeypatch):
    """torch.compile itself raises on some platforms (a Python it does not support yet): the step runs eagerly
    (a mutation audit: Compiled raising it survived every test)."""
    def refuses(fn, **options):
        raise RuntimeError("Python 3.13+ is not yet supported for torch.compile")
    monkeypatch.setattr(torch, "compile", refuses)
    module = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.warns(RuntimeWarning, match="not yet supported for torch.compile.*running the step eagerly"):
        forward = Compiled(module)
    x = torch.randn(3, 4)
    torch.testing.assert_close(forward(x), module(x))
    assert not forward.is_compiled and eager_fallbacks(forward, None) == [forward]


def test_a_recompilation_that_fails_after_compiled_steps_falls_back_to_eager():
    """A later call that torch recompiles (a new shape) and fails to is torch's failure, not the step's: the run
    goes on eagerly (a mutation audit: raising it, as an error of the step itself, survived every test)."""
    def recompile_fails(*args, **kwargs):
        raise torch._dynamo.exc.TorchDynamoException("recompiling failed")
    module = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    forward = Compiled(module, backend="eager")
    forward(torch.randn(3, 4))
    assert forward.is_compiled
    forward.compiled = recompile_fails
    x = torch.randn(5, 4)
    with pytest.warns(RuntimeWarning, match="recompiling failed.*running the step eagerly"):
        torch.testing.assert_close(forward(x), module(x))
    assert not forward.is_compiled


def test_compile_step_compiles_each_view_s_own_augmentation():
    """View 1 with the first recipe, view 2 with the second, each compiled (a mutation audit: view 1's recipe
    for both views, or neither compiled, survived every test but a slow one that compiles)."""
    byol = tiny_byol()
    _, augments = compile_step(ViewsForward(byol), byol)
    assert [a.compiled.fn.__self__ for a in augments] == [byol.augment_fn, byol.augment_fn2]


def test_an_out_of_memory_error_at_the_first_call_is_raised_not_taken_for_a_failure_to_compile():
    """A batch that does not fit fails compiled or eager: it is the user's error to see, not a warning that
    compiling failed and a second, eager try (a mutation audit: the first call's check survived every test)."""
    calls = []

    def out_of_memory(x):
        calls.append(1)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    fn = Compiled(out_of_memory, backend="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "torch.compile is unavailable here"
        with pytest.raises(torch.cuda.OutOfMemoryError):
            fn(torch.ones(2))
    assert calls == [1] and fn.error is None


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


def test_a_share_of_one_image_has_no_collapse_statistics_and_is_no_collapse():
    """Under torchrun with train.batch_size = processes each process's share is one image: its std was torch's NaN
    of one row, with torch's warning on every process, and its effective rank 1, which the collapse monitor warned
    of as a collapse at the first record (a user test)."""
    loop_step, z1 = make_loop_step(tiny_byol()), torch.randn(1, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "std(): degrees of freedom is <= 0"
        loop_step.sums += step_metrics(torch.tensor(1.5), z1, torch.tensor(True))
        record = loop_step.read(z1)
    assert record["train/loss"] == 1.5, record
    assert math.isnan(record["monitor/z_std"]) and math.isnan(record["monitor/effective_rank"]), record
    assert CollapseMonitor().check(record["monitor/z_std"], record["monitor/effective_rank"], 16, 2, 1.5) is None


def test_a_share_of_two_images_has_its_collapse_statistics():
    """A mutation audit: only a share of one image has no spread; two (train.batch_size = 2 x processes) are
    measured, a finite std and effective rank (a bound of 2 in place of 1 survived every test)."""
    loop_step, z1 = make_loop_step(tiny_byol()), torch.randn(2, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loop_step.sums += step_metrics(torch.tensor(1.5), z1, torch.tensor(True))
        record = loop_step.read(z1)
    assert 0 < record["monitor/z_std"] < 1 and 1 < record["monitor/effective_rank"] <= 2, record


def test_a_non_finite_last_batch_reads_as_no_rank_not_an_svd_error():
    """A mutation audit: the effective rank taken of a last batch holding NaN or inf survived every test; its SVD
    raised "linalg.svd: The algorithm failed to converge", ending the run at a read that the guard had undone the
    step of. The rank is NaN, the std the mean of the interval's good steps, and the monitor still judges by it."""
    loop_step = make_loop_step(tiny_byol())
    loop_step.sums += step_metrics(torch.tensor(1.5), torch.randn(8, 16), torch.tensor(True))
    z1 = torch.randn(8, 16)
    z1[0, 0] = float("nan")
    record = loop_step.read(z1)
    assert math.isnan(record["monitor/effective_rank"]) and 0 < record["monitor/z_std"] < 1, record
    assert CollapseMonitor().check(record["monitor/z_std"], math.nan, 16, 2, 1.5) is None


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
from byol.decoding_processes import _start_decoding_process
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
    _, z1 = loop_step(1, images())
    assert cosine_lr(1, 8, 0.4, 4) == pytest.approx(0.2)
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(0.2)] * 2
    tau = tau_schedule(1, 8, 0.9)  # 0.9038 (step 2's: 0.9146)
    for b, po, pt in zip(before, byol.online.parameters(), byol.target.parameters()):
        torch.testing.assert_close(pt, tau * b + (1 - tau) * po)
    # and the record logs the step's own (a mutation audit: the peak lr and tau_base logged survived every test)
    record = loop_step.read(z1)
    assert (record["train/lr"], record["train/tau"]) == (pytest.approx(0.2), pytest.approx(tau))


@pytest.mark.parametrize("amp", [torch.bfloat16, None])
def test_the_step_computes_under_autocast_in_the_dtype_it_is_given(amp):
    """A mutation audit: autocast switched off in the step survived every test (fp32 is right, only slower).
    With bf16 the projections come out of bf16 matrix products, and without it in float32."""
    byol = tiny_byol()
    _, z1 = views_loss(ViewsForward(byol, channels_last=False), byol, images(), torch.Generator().manual_seed(0), amp)
    assert z1.dtype == (amp or torch.float32)


def test_the_optimizer_step_of_step_s_takes_the_learning_rate_the_schedule_gives_at_s():
    """A mutation audit: the schedules set after the optimizer step (so that step s ran with step s - 1's
    learning rate, and step 0 with the optimizer's own) survived every test, which read the lr after the call.
    Step 1 of LoopStep equals a plain train_step with cosine_lr(1)'s learning rate, not the optimizer's 0."""
    byol = tiny_byol()
    twin = copy.deepcopy(byol)
    loop_step = LoopStep(ViewsForward(byol, channels_last=False), byol, optimizer_of(byol, lr=0.0),
                         torch.Generator().manual_seed(0), None, None, lr=0.4, warmup_steps=4, total_steps=8,
                         tau_base=0.9)
    loop_step(1, images())
    train_step(ViewsForward(twin, channels_last=False), twin, optimizer_of(twin, lr=cosine_lr(1, 8, 0.4, 4)),
               images(), torch.Generator().manual_seed(0), None)
    moved = [not torch.equal(p, q) for p, q in zip(byol.online.parameters(), tiny_byol().online.parameters())]
    assert any(moved)
    for p, q in zip(byol.online.parameters(), twin.online.parameters()):
        torch.testing.assert_close(p, q)


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
