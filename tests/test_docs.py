"""What the documentation names is there: its config keys, the byol names it calls, its Python examples'
imports and syntax (the examples themselves need data and minutes; test_cli and test_dropin run their recipes)."""

import dataclasses
import importlib
import re
from pathlib import Path

import pytest

from byol.arguments import _commands, parser
from byol.config import Config

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCS = ROOT / "docs"
PRESETS = sorted((ROOT / "configs").glob("*.yaml"))

# section.key, as `--train.epochs=3` or `train.epochs`; not a file such as data.md or train.py
CONFIG_KEY = re.compile(r"(?<![\w./])(?:data|model|augment|optim|train)\.(?!(?:md|py|npy|yaml|pt|png|jsonl|txt)\b)"
                        r"[A-Za-z_]\w*")
BYOL_NAME = re.compile(r"(?<![\w./-])byol(?:\.[A-Za-z_]\w*)+")  # byol.pretrain, byol.build.views_of
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)
FROM_IMPORT = re.compile(r"^\s*from (byol[\w.]*) import ([\w, ]+)", re.M)


def _where(page: Path, text: str, start: int) -> str:
    return f"{page.relative_to(ROOT)}:{text.count(chr(10), 0, start) + 1}"


def _resolves(dotted: str) -> bool:
    """``byol.a.b`` names an attribute or a module (a submodule need not be imported by its package)."""
    obj, path = importlib.import_module("byol"), "byol"
    for part in dotted.split(".")[1:]:
        path += f".{part}"
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        try:
            obj = importlib.import_module(path)
        except ModuleNotFoundError:
            return False
    return True


def test_every_config_key_the_docs_and_presets_name_is_a_setting():
    """A key renamed or dropped left behind in a page reads as a setting that is refused when given."""
    keys = {f"{s.name}.{f.name}" for s in dataclasses.fields(Config) for f in dataclasses.fields(s.default_factory)}
    named, unknown = 0, []
    for page in PAGES + PRESETS:
        text = page.read_text(encoding="utf-8")
        for match in CONFIG_KEY.finditer(text):
            named += 1
            if match.group(0) not in keys:
                unknown.append(f"{_where(page, text, match.start())}: {match.group(0)}")
    assert named > 300 and unknown == [], unknown  # (named: the pattern still finds the keys the pages hold)


def test_every_option_of_the_command_line_is_in_cli_md_and_every_one_it_names_is_there():
    """docs/cli.md against the parser, both ways (a user test: --version was in --help alone)."""
    options = {o for action in parser()._actions for o in action.option_strings if o.startswith("--")}
    options |= {o for _, sub in _commands() for action in sub._actions for o in action.option_strings
                if o.startswith("--")}
    named = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)(?![\w.])", (DOCS / "cli.md").read_text()))
    assert options - named == set() and named - options == set(), (options - named, named - options)


def test_every_byol_name_the_docs_call_is_there():
    named, missing = 0, []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in BYOL_NAME.finditer(text):
            named += 1
            if not _resolves(match.group(0)):
                missing.append(f"{_where(page, text, match.start())}: {match.group(0)}")
    assert named > 30 and missing == [], missing


@pytest.mark.parametrize("page", [p for p in PAGES if PYTHON_BLOCK.search(p.read_text(encoding="utf-8"))],
                         ids=lambda p: p.name)
def test_python_examples_compile_and_import_what_they_name(page):
    text = page.read_text(encoding="utf-8")
    for block in PYTHON_BLOCK.finditer(text):
        compile(block.group(1), _where(page, text, block.start()), "exec")
        for module, names in FROM_IMPORT.findall(block.group(1)):
            for name in filter(None, (n.strip() for n in names.split(","))):
                assert hasattr(importlib.import_module(module), name), \
                    f"{_where(page, text, block.start())}: from {module} import {name}"


def test_the_readme_design_section_names_every_module():
    """The README's map of the package is where a reader looks for a file: one left out reads as not there."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    design = text[text.index("\n## Design\n"):]
    modules = sorted(p.name for p in (ROOT / "byol").glob("*.py") if not p.name.startswith("__"))
    assert len(modules) > 40, modules  # (the glob still finds the package)
    assert [m for m in modules if f"`{m}`" not in design] == []
