"""The benchmark harnesses' contract with their callers (gpu_speed.sh, BENCHMARKS.md), on a tiny CPU workload.

Timing itself is not checked here (it is noise on a shared 2-core machine): what is checked is what a
caller reads, the table, the JSON and the exit code, when a system asked for cannot be timed.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # about 2 minutes of subprocesses on a 2-core machine: in CI's second run (-m slow)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--batch", "8", "--warmup", "1", "--repeats", "1", "--steps", "1", "--settle", "0",
        "--width", "8", "--head-width", "64", "--data", "random", "--threads", "1"]


def _speed(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "speed.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.speed", *TINY, "--json", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode in (0, 4) and out.is_file(), proc.stderr[-3000:]  # (4: a system not timed)
    return proc, json.loads(out.read_text())


def _rows(table: str) -> dict[str, list[str]]:
    cells = [line.strip("|").split("|") for line in table.splitlines()[2:]]
    return {row[0].strip(): [c.strip() for c in row[1:]] for row in cells}


def test_a_system_asked_for_that_cannot_be_timed_fails_its_row_and_the_exit_code(tmp_path):
    proc, result = _speed(tmp_path, "--systems", "byol,no-such-system")
    assert proc.returncode == 4, proc.stderr[-2000:]
    rows = _rows(result["table"])
    assert float(rows["byol (this project)"][0].replace(",", "")) > 0  # the others are still timed
    assert rows["no-such-system"][0] == "-" and "FAILED" in rows["no-such-system"][-1]
    assert result["no_rounds"] == ["no-such-system"] and result["complete"]
    assert result["table"] in proc.stdout  # the table is printed before the exit
    assert "no timed round for no-such-system" in proc.stderr


@pytest.mark.skipif(any(importlib.util.find_spec(p) for p in ("lightly", "byol_pytorch")),
                    reason="a peer is installed: the default run would time it")
def test_peers_not_named_and_not_installed_are_left_out_without_failing(tmp_path):
    proc, result = _speed(tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list(_rows(result["table"])) == ["byol (this project)"] and result["no_rounds"] == []


class _Marks:
    """Two items, each what the worker that loads it sees of a mark its parent set at run time."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> str:
        return getattr(sys.modules.get("benchmarks.systems"), "MARK_FOR_A_TEST", "not inherited")


def _what_workers_see(workers: int) -> list[str]:
    import torch
    import benchmarks.systems as systems

    systems.MARK_FOR_A_TEST = "inherited"  # set here, after the import: a spawned worker imports anew
    loader = torch.utils.data.DataLoader(_Marks(), batch_size=None, num_workers=workers,
                                         multiprocessing_context=systems.worker_start(workers))
    return list(loader)


@pytest.mark.skipif(sys.platform != "linux", reason="fork is Linux's (macOS: spawn, as a script there does)")
def test_a_peers_dataloader_forks_its_workers_in_a_spawned_process():
    """benchmarks.speed runs each system in a spawned process; lightly's DataLoader workers were spawned
    from there too, 19-25 s to start 8 on a 2-core CPU and over a minute on the H100 machine: forked, as a
    user's script on Linux starts them, they are the parent's copies (what it set at run time included)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:  # not daemonic
        assert pool.submit(_what_workers_see, 2).result(timeout=120) == ["inherited", "inherited"]
        assert pool.submit(_what_workers_see, 0).result(timeout=120) == ["inherited", "inherited"]  # no workers


def test_profile_step_refuses_a_variant_it_cannot_run_in_a_sentence():
    """gpu_speed.sh's profile parts: a variant misspelled, or the CUDA-graph one on a CPU, is one line, exit 2."""
    for variant, says in (("eager-x", "eager-x unknown"), ("graphed-cl", "graphed-cl needs a CUDA device")):
        proc = subprocess.run([sys.executable, "-m", "benchmarks.profile_step", "--device", "cpu", "--variants",
                               variant, "--data", "random"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_gpu_speed_skips_a_compiling_part_that_has_not_the_time_to_finish_anything(tmp_path):
    """gpu_speed.sh `more` on CUDA: a part with less left of the budget than it needs to bring anything back (the
    compiled tests: their first took 58 s on the H100, pytest 25 more) is skipped, not started and killed mid-compile
    (a stand-in Python that does nothing: the script's own arithmetic, in a second)."""
    calls = tmp_path / "calls"
    stub = tmp_path / "python"
    stub.write_text(f'#!/usr/bin/env bash\n[ "$1" = - ] && cat > /dev/null\necho "$*" >> {calls}\nexit 0\n')
    stub.chmod(0o755)
    proc = subprocess.run(["bash", "benchmarks/gpu_speed.sh", "more"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHON": str(stub), "DEVICE": "cuda", "BUDGET": "82",
                                           "OUT": str(tmp_path / "out"), "PATH": os.environ["PATH"]})
    out = proc.stdout
    # 67 s left after the parts before, which take about none: enough for a part that compiles nothing (30 s), not
    # for the compiled tests (90), the compiled profile (100) or the ablations (180)
    assert "=== profile-graphed: done" in out, out
    assert "=== gpu-tests-compiled: skipped" in out and "under the 90s it needs" in out, out
    assert "test_loop_step_makes_no_cuda_sync[True]" not in calls.read_text()
    assert "=== profile-compiled: skipped" in out and "=== ablations: skipped" in out, out
    assert proc.returncode == 3, out


@pytest.mark.parametrize("part", ["guard", "ema"])
def test_tail_host_times_this_tree_against_a_revision(part):
    """benchmarks.tail_host (BENCHMARKS.md, changes 14 and 15): a row for this tree and one for the revision's
    module, imported from git as it was there."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.tail_host", "--part", part, "--against", "HEAD",
                           "--rounds", "1", "--calls", "2"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    counted = "guarded" if part == "guard" else "in the learner and its optimizer"  # (the guard's count, not the EMA's)
    assert lines[0].startswith(f"{part}: 339 tensors {counted}") and len(lines) == 3, proc.stdout
    assert lines[1].startswith("this tree: ") and lines[2].startswith("HEAD: ") and " ms a step" in lines[2]


def test_step_memory_measures_a_case():
    """benchmarks.step_memory (BENCHMARKS.md, docs/runs.md: the factor behind byol.memory's note): one small case
    runs and prints its line (it failed in every case after train._build took a network of one's own: a docs audit)."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.step_memory", "8", "32", "fp32"], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.fullmatch(r"batch +8, +32 px, fp32: saved \d+\.\d\d GiB, peak rise -?\d+\.\d\d GiB, ratio -?\d+\.\d\d\n",
                        proc.stdout), proc.stdout


def test_gpu_speed_names_tests_that_exist():
    """gpu_speed.sh names GPU tests by node id and by -k: a test moved or renamed fails only on the GPU machine
    (a review: tests/test_step.py's CUDA-graph tests moved to tests/test_cuda_graph.py)."""
    script = (ROOT / "benchmarks" / "gpu_speed.sh").read_text()
    ids = sorted(set(re.findall(r"tests/\w+\.py::[\w\[\]-]+", script)))
    selection = re.search(r'-k "([^"]+)" ((?:tests/\w+\.py ?)+)', script)
    assert len(ids) >= 5 and selection, script
    for args in (ids, ["-k", selection[1], *selection[2].split()]):
        proc = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", "-m", "gpu",
                               *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-2000:]
        collected = [line for line in proc.stdout.splitlines() if "::" in line]
        assert len(collected) >= (len(ids) if args is ids else 1), proc.stdout
