import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

# One thread per test process: the tiny models here gain little from a second thread, and
# OpenMP threads that spin-wait for a busy core slow a loaded machine down by 10x or more.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR10 = SHARED_DATA / "cifar10"
CIFAR10_JPG_TAR = SHARED_DATA / "cifar10-jpg" / "test.tar"


def pytest_configure(config):
    """With BYOL_REQUIRE_DATA=1 (CI sets it), real data that is missing stops the run: the tests that need
    it would otherwise skip, and a green run would have checked nothing on real data (a mutation audit)."""
    missing = [p for p in (CIFAR10 / "cifar-10-batches-bin" / "data_batch_1.bin", CIFAR10_JPG_TAR) if not p.is_file()]
    if os.environ.get("BYOL_REQUIRE_DATA") == "1" and missing:
        pytest.exit(f"BYOL_REQUIRE_DATA=1, but {missing[0]} is missing: the real data sets are expected in "
                    f"{SHARED_DATA} (../shared/data beside the repository)", returncode=4)


@pytest.fixture
def cifar10_root() -> Path:
    if not (CIFAR10 / "cifar-10-batches-bin" / "data_batch_1.bin").is_file():
        pytest.skip(f"real CIFAR-10 not found at {CIFAR10} (the repo's ../shared/data)")
    return CIFAR10


@pytest.fixture
def full_fp32():
    """CUDA convolutions and matmuls in full float32 (TF32 off) for the test: TF32 rounds to ~1e-3,
    differently for different kernels (a compiled graph's, cuDNN's autotuned choice), which would hide
    or fake a difference between two ways of computing the same step. And cuDNN's deterministic
    kernels: its fastest weight gradients may sum in a different order on each run."""
    b = torch.backends
    saved = b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.deterministic
    b.cudnn.allow_tf32 = b.cuda.matmul.allow_tf32 = False
    b.cudnn.deterministic = True
    yield
    b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.deterministic = saved


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


@pytest.fixture
def cli(capsys):
    """``cli(*args)`` runs ``byol ARGS`` by ``byol.cli.main`` in this process and returns what test_cli's ``byol``
    returns of the command's process (its exit code, stdout and stderr), without the seconds a fresh interpreter
    takes to import torch at each call. Output captured before a call is dropped."""
    from byol.cli import main

    def run(*args, check=True) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # --help: the process would exit
            code = e.code
        out, err = capsys.readouterr()
        if check and code != 0:
            raise AssertionError(f"byol {' '.join(map(str, args))} failed:\n{out}\n{err}")
        return subprocess.CompletedProcess(["byol", *map(str, args)], code, out, err)
    return run


def tiny_overrides(out_dir, **extra) -> list[str]:
    """Overrides for a seconds-long CPU run: a narrow network, small batches, few images."""
    values = {
        "model.width": 8, "model.projection_hidden_size": 64, "model.projection_size": 32,
        "train.batch_size": 16, "train.epochs": 1, "train.knn_limit": 200, "train.log_every": 2,
        "train.progress": False, "train.device": "cpu", "data.limit": 128, "train.out_dir": str(out_dir),
        "train.save_interval_s": 0,  # last.pt at every epoch, as the fault tests kill and resume runs
    }
    values.update(extra)
    return [f"--{k}={v}" for k, v in values.items()]


def shown_lines(err: str) -> list[str]:
    """The lines a terminal shows of ``err``: of each line, what follows its last carriage return (the
    progress bar redraws itself after one)."""
    return [line.split("\r")[-1] for line in err.split("\n")]


def finished_pid() -> int:
    """The process id of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def session_status(run: Path) -> str:
    """The run's status in TensorBoard's HParams tab (STATUS_SUCCESS, ...; "none" where no end was written)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    content = EventAccumulator(str(run / "tensorboard")).Reload().PluginTagToContent("hparams")
    if "_hparams_/session_end_info" not in content:
        return "none"
    return Status.Name(HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info.status)


def extract_jpegs(dest: Path, per_class: int = 20) -> Path:
    """The first ``per_class`` JPEGs of each class folder of the real CIFAR-10 JPEG test set."""
    if not CIFAR10_JPG_TAR.is_file():
        pytest.skip(f"{CIFAR10_JPG_TAR} not found")
    counts: dict = {}
    with tarfile.open(CIFAR10_JPG_TAR) as tar:
        for member in tar:
            if not member.isfile() or not member.name.lower().endswith(".jpg"):
                continue
            cls = Path(member.name).parent.name
            if counts.get(cls, 0) >= per_class:
                continue
            counts[cls] = counts.get(cls, 0) + 1
            out = dest / cls / Path(member.name).name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(member).read())
    return dest


_FAULT_ROWS: list = []


@pytest.fixture
def fault_table(request):
    """Record a row of the faults table: (what was tried, what happened)."""
    def add(fault: str, outcome: str) -> None:
        _FAULT_ROWS.append((request.node.nodeid.split("::")[-1], fault, outcome))
    return add


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("BYOL_FAULT_TABLE")
    if not path or not _FAULT_ROWS:
        return
    lines = ["# Faults and bad inputs tried, and what happened", "",
             "Written by the tests themselves (each row is an assertion that passed):", "",
             "    BYOL_FAULT_TABLE=docs/faults.md python -m pytest tests/test_faults.py tests/test_data.py "
             "tests/test_checkpoint.py tests/test_memory.py tests/test_run_folder.py -m 'slow or not slow'", "",
             "| fault or bad input | what happened | test |", "| --- | --- | --- |"]
    lines += [f"| {fault} | {outcome} | `{test}` |" for test, fault, outcome in _FAULT_ROWS]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")
