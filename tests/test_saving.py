"""A run's checkpoints (byol.saving.Checkpoints): what each write saves beside the weights, when it writes, and
which kept epochs stay; checked without a network (the writes themselves are recorded, not made)."""

import types

import pytest
import torch

import byol.saving
from byol.config import load_config


def _checkpoints(tmp_path, *overrides, guard=None, sums=None, folder=None):
    """A Checkpoints of a run in ``tmp_path`` of 4 steps an epoch, whose writes are recorded in its ``written``:
    (name, step, what it saved beside the weights)."""
    config = load_config(None, [f"--train.out_dir={tmp_path}", *overrides])
    data = types.SimpleNamespace(batches=range(4), size=64, folder=folder, names_digest=None)
    saving = byol.saving.Checkpoints(None, None, None, config, guard, data, tmp_path, 0, 1, torch.device("cpu"),
                                     "fp32", sums=sums)
    saving.written = []
    saving._write = lambda name, step, progress: saving.written.append((name, step, dict(saving.extra)))
    saving._plot = lambda progress: None
    (tmp_path / "checkpoints").mkdir()
    return saving


def test_a_checkpoint_saves_what_a_resume_goes_on_from_and_none_is_written_within_a_non_finite_streak(tmp_path):
    """A mutation audit: each of these left out of the checkpoint survived the tests a resume's run makes; a resume
    then goes on from the run's time, the metrics' sums since the last record, the longest non-finite streak, the
    collapse monitor's state and the files skipped (also written to skipped_files.txt) as the run had them."""
    guard = types.SimpleNamespace(streak=torch.tensor(0), max_streak=torch.tensor(2))
    folder = types.SimpleNamespace(bad_files={}, skipped_inside=lambda: {"a.jpg": 3},
                                   write_skipped=lambda path: path.write_text("a.jpg\n"))
    saving = _checkpoints(tmp_path, guard=guard, sums=torch.tensor([1.5, 2.0]), folder=folder)
    saving.monitor = types.SimpleNamespace(state=lambda: {"rank": 7.5})
    saving.save(8, None, final=True, time_s=12.5)
    assert [(name, step) for name, step, _ in saving.written] == [("last.pt", 8)]
    extra = saving.written[0][2]
    assert {key: extra[key] for key in ("time_s", "metric_sums", "nonfinite_max_streak", "collapse_monitor",
                                        "skipped_inside")} == {
        "time_s": 12.5, "metric_sums": [1.5, 2.0], "nonfinite_max_streak": 2, "collapse_monitor": {"rank": 7.5},
        "skipped_inside": {"a.jpg": 3}}
    assert (tmp_path / "skipped_files.txt").read_text() == "a.jpg\n"
    guard.streak = torch.tensor(1)  # weights giving non-finite losses: never over the good checkpoint
    saving.save(12, 3, final=True, time_s=13.0)
    assert len(saving.written) == 1 and saving.written_step == 8


@pytest.mark.parametrize("keep, left", [
    (0, [1, 2, 3, 4, 5]),  # 0: all kept
    (1, [5]),
    (2, [4, 5]),
    (3, [3, 4, 5]),
    (6, [1, 2, 3, 4, 5]),
])
def test_keep_checkpoints_removes_the_oldest_kept_epochs_but_n(tmp_path, keep, left):
    """A mutation audit: train.keep_checkpoints=N keeps the newest N kept epochs, the one just written included,
    and removes only this run's epoch_NNNN.pt names, never a later epoch's (an earlier start's) nor another file."""
    saving = _checkpoints(tmp_path, f"--train.keep_checkpoints={keep}")
    checkpoints = tmp_path / "checkpoints"
    for name in ("epoch_0001_step5.pt", "last.pt", "epoch_0007.pt", *(f"epoch_{n:04d}.pt" for n in range(1, 6))):
        (checkpoints / name).write_bytes(b"checkpoint")
    saving._drop_older_epochs(5)
    assert sorted(p.name for p in checkpoints.iterdir()) == sorted(
        ["epoch_0001_step5.pt", "last.pt", "epoch_0007.pt", *(f"epoch_{n:04d}.pt" for n in left)])


def test_a_kept_epoch_of_an_earlier_start_at_another_step_is_kept_beside_and_one_of_the_same_step_replaced(
        tmp_path, monkeypatch, capsys):
    """A mutation audit: writing over an earlier start's epoch_N.pt of another step (a resume whose data gives
    another number of steps an epoch) survived; it is kept as epoch_N_stepS.pt, with a note."""
    saving = byol.saving.Checkpoints(None, None, None, load_config(None, [f"--train.out_dir={tmp_path}"]), None,
                                     types.SimpleNamespace(batches=range(4), size=64, folder=None, names_digest=None),
                                     tmp_path, 0, 1, torch.device("cpu"), "fp32")
    (tmp_path / "checkpoints").mkdir()
    monkeypatch.setattr(byol.saving, "saved_step", lambda path: int(path.read_text()))
    monkeypatch.setattr(byol.saving, "save_checkpoint", lambda path, *args, **kwargs: path.write_text(str(args[2])))
    (tmp_path / "checkpoints" / "epoch_0001.pt").write_text("5")
    (tmp_path / "checkpoints" / "epoch_0002.pt").write_text("8")
    saving._write("epoch_0001.pt", 4, None)
    saving._write("epoch_0002.pt", 8, None)
    assert {p.name: p.read_text() for p in (tmp_path / "checkpoints").iterdir()} == {
        "epoch_0001.pt": "4", "epoch_0001_step5.pt": "5", "epoch_0002.pt": "8"}
    assert "epoch_0001_step5.pt" in capsys.readouterr().err
