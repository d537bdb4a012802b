"""A run's setup before its first step: its data found again on a resume."""

import os

import pytest
import torch

from byol import run_setup
from byol.config import Config
from byol.data import DataError


def test_a_resume_whose_saved_relative_data_root_is_gone_from_here_says_to_give_the_new_one(tmp_path, monkeypatch):
    """A run whose config.yaml holds a relative data.root (written by hand, or by an earlier byol), resumed from
    another directory: the root resolved here is the saved one, so the data moved, and the hint is due (a user
    test: it was taken for a root given anew, and the hint left out)."""
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("data:\n  root: data\n")
    monkeypatch.chdir(tmp_path / "runs")
    config = Config()
    config.train.out_dir = str(run)
    config.data.root = os.path.abspath("data")  # as checked_run_config makes it

    def missing(*args):
        raise DataError(f"image folder {config.data.root} does not exist; check the path")

    monkeypatch.setattr(run_setup, "load_data", missing)
    with pytest.raises(DataError, match=r"resume with --data\.root=NEW$"):
        run_setup.load_run_data(config, torch.device("cpu"), 0, 1, resume=True)


@pytest.mark.parametrize("saved, given, hint", [("~/data", "data", True), ("data", "other", False)])
def test_the_hint_to_give_the_new_data_root_is_for_the_saved_one_only(tmp_path, monkeypatch, saved, given, hint):
    """A saved data.root under ~ is the same root made absolute here (a mutation audit: its expanduser was
    untested); a root given anew that is not there is said as it is, with no hint about a moved run."""
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"data:\n  root: {saved}\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    config = Config()
    config.train.out_dir = str(run)
    config.data.root = str(tmp_path / given)

    def missing(*args):
        raise DataError(f"image folder {config.data.root} does not exist; check the path")

    monkeypatch.setattr(run_setup, "load_data", missing)
    with pytest.raises(DataError) as e:
        run_setup.load_run_data(config, torch.device("cpu"), 0, 1, resume=True)
    assert str(e.value).endswith("resume with --data.root=NEW") == hint, str(e.value)
