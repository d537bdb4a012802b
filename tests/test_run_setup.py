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
