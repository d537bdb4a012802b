"""What pip gets: the source distribution holds what its tests, benchmarks and docs need; the wheel holds
the package, its presets and the licence, and nothing else. Built from a copy of the tracked files."""

import ast
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import byol

ROOT = Path(__file__).resolve().parents[1]


def _tracked() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files")
    return subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()


def test_the_sdist_holds_every_tracked_file_and_the_wheel_the_package_alone(tmp_path):
    """A packaging test: the sdist lacked tests/conftest.py (half the suite failed to load from it),
    docs/, BENCHMARKS.md and a licence file; the wheel shipped no licence."""
    pytest.importorskip("setuptools", minversion="77")  # pyproject's build requirement
    tracked = _tracked()
    source = tmp_path / "src"
    for name in tracked:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    build = ("from setuptools import build_meta as b\n"
             f"names = b.build_sdist({str(tmp_path)!r}), b.build_wheel({str(tmp_path)!r})\nprint(*names)")
    proc = subprocess.run([sys.executable, "-c", build], cwd=source, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sdist_name, wheel_name = proc.stdout.splitlines()[-1].split()  # (setuptools says what it does before)
    top = f"byol-{byol.__version__}/"
    with tarfile.open(tmp_path / sdist_name) as sdist:
        in_sdist = {m.name[len(top):] for m in sdist.getmembers() if m.isfile()}
    assert set(tracked) - {".gitignore"} <= in_sdist, sorted(set(tracked) - in_sdist)
    with zipfile.ZipFile(tmp_path / wheel_name) as wheel:
        in_wheel = set(wheel.namelist())
    info = f"byol-{byol.__version__}.dist-info/"
    package = {n for n in tracked if n.startswith("byol/")} | {
        "byol/configs/" + n[len("configs/"):] for n in tracked if n.startswith("configs/")}
    assert {n for n in in_wheel if not n.startswith(info)} == package
    assert f"{info}licenses/LICENSE" in in_wheel


def test_the_messages_of_the_package_cite_no_file_of_the_source_tree():
    """An installed-wheel test: a warning sent the user to docs/python_api.md and an error to configs/NAME.yaml,
    neither of which a pip-installed byol has. Every string the package's code holds, docstrings and comments
    aside, names no path of the checkout alone (docs/, benchmarks/, tests/, configs/, a .md file)."""
    source_only = re.compile(r"\b(docs|benchmarks|tests|configs)/|\b\w+\.md\b")
    cited = []
    for path in sorted((ROOT / "byol").glob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        cited += [f"{path.name}:{node.lineno}: {node.value}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and id(node) not in docstrings and source_only.search(node.value)]
    assert not cited, "\n".join(cited)
