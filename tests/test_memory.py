"""A CPU step too big for memory is refused in one sentence before it starts (the kernel would kill it)."""

import subprocess
import sys

import pytest
import torch

from byol import BYOL, memory
from byol.build import build_model
from byol.config import load_config
from byol.step import ViewsForward
from conftest import tiny_overrides


def _model(image_size: int):
    config = load_config("cifar10-cpu", [f"--data.image_size={image_size}", "--model.projection_hidden_size=64"])
    torch.manual_seed(0)
    return build_model(config)


def _saved_by_a_step(byol, batch: int, image_size: int) -> int:
    """The bytes a real step's forward (augmentations, channels_last) keeps for backward, weights left out."""
    held = []  # (indices packed, not the tensors: as the probe, so that nothing is kept after the test)
    weights = {p.untyped_storage().data_ptr() for p in byol.parameters()}
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    forward = ViewsForward(byol)
    view1, view2 = byol.augment_fn(images, None), byol.augment_fn2(images, None)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: held.append(t) or len(held) - 1, held.__getitem__):
        forward(view1, view2)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in held}
    held.clear()
    return sum(n for ptr, n in storages.items() if ptr not in weights)


def test_the_probe_measures_what_a_step_keeps_and_leaves_the_model_as_it_was():
    for image_size in (32, 96):  # 96: measured at 64 pixels and scaled by the area
        byol = _model(image_size)
        state = {k: v.clone() for k, v in byol.state_dict().items() if torch.is_tensor(v)}
        rng = torch.get_rng_state()
        estimate = memory.saved_bytes_per_image(byol, image_size, None) * 8
        assert torch.equal(torch.get_rng_state(), rng)
        assert all(torch.equal(v, byol.state_dict()[k]) for k, v in state.items())  # BatchNorm statistics too
        actual = _saved_by_a_step(byol, 8, image_size)
        assert 0.9 * actual < estimate < 1.1 * actual, (image_size, estimate, actual)


def test_the_probe_of_a_network_that_takes_one_image_size_measures_at_that_size():
    # a given net with a layer sized for its images (a Linear after flatten, a ViT): no 64-pixel probe of it; the
    # check refused to start, a traceback, a run that would go
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 24 * 24, 16))
    byol = BYOL(net, image_size=96, hidden_layer=-1, projection_size=16, projection_hidden_size=32)
    estimate = memory.saved_bytes_per_image(byol, 96, None) * 8
    actual = _saved_by_a_step(byol, 8, 96)
    assert 0.9 * actual < estimate < 1.1 * actual, (estimate, actual)


def test_a_small_probe_out_of_memory_is_not_tried_again_at_image_size():
    """A review: a probe at 64 px that ran out of memory was tried again at image_size, (image_size / 64)^2 times
    the memory, where the system kills a process without a word: the error is the pre-check's."""
    sizes = []

    def forward(x):
        sizes.append(x.shape[-1])
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")

    torch.manual_seed(0)
    byol = BYOL(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()),
                image_size=224, hidden_layer=-1, projection_size=8, projection_hidden_size=16)
    byol.forward_views = lambda view1, view2: forward(view1)  # (the probe's deepcopy keeps the attribute)
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        memory.saved_bytes_per_image(byol, 224, None)
    assert sizes == [64]


def test_the_probe_leaves_nothing_behind(monkeypatch):
    """A user test (a notebook's repeated pretrains): the probe's copy of the model and its activations
    were never freed, held by a loop through the autograd graph that Python's collector cannot see."""
    import copy
    import gc
    import types
    import weakref
    copies = []
    monkeypatch.setattr(memory, "copy", types.SimpleNamespace(
        deepcopy=lambda m: copies.extend(map(weakref.ref, (r := copy.deepcopy(m)).parameters())) or r))
    memory.saved_bytes_per_image(_model(32), 32, None)
    gc.collect()
    assert copies and all(p() is None for p in copies)  # the probe copy's parameters
    forward_views = BYOL.forward_views

    def failing(self, *views):  # an error after the graph was built: a memory error, say
        forward_views(self, *views)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(BYOL, "forward_views", failing)
    copies.clear()
    with pytest.raises(RuntimeError, match="out of memory"):
        memory.saved_bytes_per_image(_model(32), 32, None)
    gc.collect()
    assert copies and all(p() is None for p in copies)


def test_a_step_that_cannot_fit_is_one_sentence_and_leaves_no_run_folder(tmp_path, capsys, monkeypatch,
                                                                         cifar10_root, fault_table):
    from byol.cli import main
    size = load_config("cifar10-cpu").data.image_size
    need = memory.saved_bytes_per_image(_model(size), size, None) * 16  # tiny_overrides' batch, float32
    monkeypatch.setattr(memory, "free_memory", lambda: int(need / 2))
    run = tmp_path / "run"
    args = ["pretrain", "--config", "cifar10-cpu", f"--data.root={cifar10_root}", "--train.precision=fp32",
            *tiny_overrides(run)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("byol: error: a training step at train.batch_size=16 and "
                                               f"data.image_size={size} keeps at least"), err
    assert "lower train.batch_size" in err[0] and not run.exists()

    monkeypatch.setattr(memory, "free_memory", lambda: int(need * 1.1))  # fits, but with less room than a peak needs
    assert main([*args, "--train.max_steps=1"]) == 0
    assert "note: a training step at train.batch_size=16" in capsys.readouterr().err
    assert (run / "checkpoints" / "last.pt").is_file()
    fault_table("a CPU step whose saved activations exceed the free memory (free memory simulated; the kernel "
                "would kill the run)", "one sentence before the first step, exit 2, no run folder; with less room "
                "than a step's peak, a note and the run goes on")


def test_a_resumed_run_s_step_that_cannot_fit_says_what_a_resume_can_lower(monkeypatch):
    """A user test: a resumed run whose step could not fit was told to lower train.batch_size, which the resume
    then refused (its checkpoint's steps are in that many images): a resume can lower data.image_size alone."""
    byol = _model(8)
    monkeypatch.setattr(memory, "free_memory", lambda: 1)
    with pytest.raises(memory.ConfigError) as new:
        memory.check_step_fits(byol, 16, 8, None)
    assert str(new.value).endswith("lower train.batch_size or data.image_size (or model.width)")
    with pytest.raises(memory.ConfigError) as resumed:
        memory.check_step_fits(byol, 16, 8, None, resumed=True)
    assert str(resumed.value).endswith("; lower data.image_size (a resumed run keeps its checkpoint's "
                                       "train.batch_size and model), or start a new run with a smaller "
                                       "train.batch_size")


def test_a_resumed_run_s_note_of_little_room_says_what_a_resume_can_lower(monkeypatch, capsys):
    """A review: the note of a step with less room than its peak told a resumed run to take a smaller
    train.batch_size, which the resume refuses (as the error beside it had, before it was fixed)."""
    byol = _model(8)
    need = memory.saved_bytes_per_image(byol, 8, None) * 16
    monkeypatch.setattr(memory, "free_memory", lambda: int(need * 1.1))  # fits, with less room than a peak needs
    memory.check_step_fits(byol, 16, 8, None)
    assert capsys.readouterr().err.endswith("; a smaller train.batch_size is safer\n")
    memory.check_step_fits(byol, 16, 8, None, resumed=True)
    said = capsys.readouterr().err
    assert said.startswith("note: a training step at train.batch_size=16") and said.endswith(
        "; a smaller data.image_size is safer (a resumed run keeps its checkpoint's train.batch_size)\n")


def test_under_an_address_space_limit_a_step_is_checked_against_what_the_limit_leaves(tmp_path, monkeypatch, capsys):
    """A user test: under ulimit -v (prlimit --as; Grid Engine's h_vmem) a step too big was refused late, by torch's
    allocator, and the check's figure was the machine's free memory, not what the limit left the process."""
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "status").write_text("Name:\tpython\nVmPeak:\t 4000000 kB\nVmSize:\t 3000000 kB\n")
    assert memory.address_space_room(tmp_path, limit=5 * 10 ** 9) == 5 * 10 ** 9 - 3000000 * 1024
    assert memory.address_space_room(tmp_path, limit=10 ** 9) == 0
    assert memory.address_space_room(tmp_path / "nothing", limit=10 ** 9) is None
    limited = ("import resource; from byol import memory; resource.setrlimit(resource.RLIMIT_AS, (8 * 2 ** 30, "
               "resource.getrlimit(resource.RLIMIT_AS)[1])); print(memory.address_space_room())")
    room = subprocess.run([sys.executable, "-c", limited], capture_output=True, text=True, check=True).stdout
    assert 0 < int(room) < 8 * 2 ** 30
    byol = _model(8)
    need = memory.saved_bytes_per_image(byol, 8, None) * 16
    monkeypatch.setattr(memory, "free_memory", lambda: int(need * 100))
    monkeypatch.setattr(memory, "address_space_room", lambda: int(need / 2))
    with pytest.raises(memory.ConfigError, match=r"for its backward pass, and this process may map \S+ \S+ more \(its "
                                                 r"address-space limit: ulimit -v\); lower train.batch_size"):
        memory.check_step_fits(byol, 16, 8, None)
    monkeypatch.setattr(memory, "address_space_room", lambda: int(need * 1.1))  # fits, with less room than a peak
    memory.check_step_fits(byol, 16, 8, None)
    assert "and this process may map" in capsys.readouterr().err
    monkeypatch.setattr(memory, "address_space_room", lambda: int(need * 200))  # the machine's free memory is less
    monkeypatch.setattr(memory, "free_memory", lambda: int(need / 2))
    with pytest.raises(memory.ConfigError, match="for its backward pass, and this machine has "):
        memory.check_step_fits(byol, 16, 8, None)


def _fake_system(root, cgroup: str, files: dict) -> None:
    (root / "proc" / "self").mkdir(parents=True)
    (root / "proc" / "meminfo").write_text("MemTotal: 100000000 kB\nMemAvailable: 50000000 kB\n")
    (root / "proc" / "self" / "cgroup").write_text(cgroup)
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)


def test_free_memory_is_the_least_room_of_the_machine_and_of_this_process_s_cgroups(tmp_path):
    gib = 2 ** 30
    v2 = tmp_path / "v2"  # a job's cgroup inside a limited slice (Slurm, systemd): the slice's limit counts
    _fake_system(v2, "0::/slice/job\n", {
        "sys/fs/cgroup/slice/job/memory.max": "max\n",
        "sys/fs/cgroup/slice/memory.max": f"{16 * gib}\n", "sys/fs/cgroup/slice/memory.current": f"{15 * gib}\n",
        "sys/fs/cgroup/slice/memory.stat": f"anon 1\ninactive_file {4 * gib}\n"})  # the data set's page cache
    assert memory.free_memory(v2) == 5 * gib
    v1 = tmp_path / "v1"
    _fake_system(v1, "4:memory:/docker/abc\n0::/\n", {
        "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": f"{8 * gib}\n",
        "sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes": f"{6 * gib}\n",
        "sys/fs/cgroup/memory/docker/abc/memory.stat": f"total_inactive_file {gib}\n",
        "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n"})  # v1's "no limit"
    assert memory.free_memory(v1) == 3 * gib
    namespaced = tmp_path / "ns"  # the process sees its own cgroup as the mount's root
    _fake_system(namespaced, "0::/\n", {"sys/fs/cgroup/memory.max": "max\n"})
    assert memory.free_memory(namespaced) == 50000000 * 1024  # MemAvailable alone
    assert memory.free_memory(tmp_path / "nothing") is None


def test_where_no_free_memory_can_be_read_the_step_is_not_checked_and_a_limit_alone_still_is(monkeypatch, capsys):
    """A mutation audit: where neither figure can be read (not Linux) the check says nothing and lets the run start,
    and an address-space limit read without the machine's free memory is the figure checked, not a TypeError."""
    byol = _model(8)
    need = memory.saved_bytes_per_image(byol, 8, None) * 16
    monkeypatch.setattr(memory, "free_memory", lambda: None)
    monkeypatch.setattr(memory, "address_space_room", lambda: None)
    memory.check_step_fits(byol, 16, 8, None)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(memory, "address_space_room", lambda: int(need / 2))
    with pytest.raises(memory.ConfigError, match=r"and this process may map \S+ \S+ more \(its address-space limit"):
        memory.check_step_fits(byol, 16, 8, None)


def test_the_figure_checked_is_the_whole_batch_s_and_the_note_says_what_may_end_the_run(monkeypatch, capsys):
    """A mutation audit: the need is every image's of the batch (16 images' against room for 15.8 is refused), and
    the note says what ends a step with too little room: the kernel's kill under the machine's free memory, an
    allocation's failure under an address-space limit."""
    byol = _model(8)
    need = memory.saved_bytes_per_image(byol, 8, None) * 16
    monkeypatch.setattr(memory, "address_space_room", lambda: None)
    monkeypatch.setattr(memory, "free_memory", lambda: int(need * 0.99))
    with pytest.raises(memory.ConfigError, match=f"keeps at least {memory._size(need)} for its backward pass"):
        memory.check_step_fits(byol, 16, 8, None)
    monkeypatch.setattr(memory, "free_memory", lambda: int(need * 1.1))
    memory.check_step_fits(byol, 16, 8, None)
    said = capsys.readouterr().err
    assert "so the system may kill the run for memory;" in said and "allocation" not in said
    monkeypatch.setattr(memory, "free_memory", lambda: int(need * 100))
    monkeypatch.setattr(memory, "address_space_room", lambda: int(need * 1.1))
    memory.check_step_fits(byol, 16, 8, None)
    said = capsys.readouterr().err
    assert "so an allocation may fail;" in said and "kill" not in said


def test_sizes_are_said_in_gib_from_a_tenth_of_one_and_in_mib_below():
    gib, mib = 2 ** 30, 2 ** 20
    assert memory._size(5 * mib) == "5 MiB"
    assert memory._size(100 * mib) == "100 MiB"
    assert memory._size(gib / 10) == "0.1 GiB"
    assert memory._size(gib / 2) == "0.5 GiB"
    assert memory._size(3 * gib) == "3.0 GiB"


def test_the_probe_of_a_bf16_step_measures_what_autocast_keeps():
    """A mutation audit: the probe ran in float32 whatever train.precision said, twice what a bf16 step keeps (a
    refusal of a batch that fits)."""
    byol = _model(8)
    ratio = memory.saved_bytes_per_image(byol, 8, torch.bfloat16) / memory.saved_bytes_per_image(byol, 8, None)
    assert 0.4 < ratio < 0.7, ratio
