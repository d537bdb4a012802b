"""Resume refusals (byol.resume), checked on a checkpoint's state alone: no weights, no data, no training."""

import json

import pytest
import torch

from byol.checkpoint import CheckpointError, rng_state, rng_state_kept
from byol.config import load_config
from byol.resume import refuse_changed_settings, restore


def _state(config, **changed):
    """A checkpoint's state, as refuse_changed_settings reads it, of a run with ``config``'s settings but ``changed``
    (``section.key``: value) at step 4."""
    saved = config.to_dict()
    for key, value in changed.items():
        section, name = key.split(".")
        saved[section][name] = value
    return {"config": saved, "step": 4, "extra": {}}


@pytest.mark.parametrize("key, value, said", [
    ("train.seed", 7, "started from train.seed=7"),  # (a mutation audit: a resume with another seed was taken)
    ("train.batch_size", 32, "train.batch_size=32"),
    ("train.knn_holdout", 100, "train.knn_holdout=100"),
    ("optim.name", "lars", "optim.name=lars"),
    ("model.projection_size", 64, "model.projection_size=64"),
])
def test_a_resume_refuses_a_setting_that_would_make_it_another_run(tmp_path, key, value, said):
    """A resume is refused, before any weights load, with a setting the checkpoint's run cannot go on under
    (its seed makes its data's order and its initial weights); the same settings are taken."""
    config = load_config(None, [f"--train.out_dir={tmp_path}", "--optim.name=sgd"])
    path = tmp_path / "checkpoints" / "last.pt"
    assert refuse_changed_settings(_state(config), config, path) == {}
    with pytest.raises(CheckpointError, match=said):
        refuse_changed_settings(_state(config, **{key: value}), config, path)


def _knn_records(run, *steps_and_times):
    """A run folder's metrics.jsonl with a loss record at each step and a kNN record at each (step, time_s) given."""
    lines = [{"step": step, "train/loss": 1.0, "time_s": 0.5} for step in range(1, 7)]
    lines += [{"step": step, "eval/knn_top1": 0.25, "time_s": time_s} for step, time_s in steps_and_times]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_the_knn_records_up_to_the_checkpoint_s_step_are_those_a_resume_goes_on_from(tmp_path):
    """A mutation audit: counting the kNN records before the checkpoint's step only (its own, the run's end's or
    one a stop skipped, left out) survived. The records of later steps are of steps trained again."""
    config = load_config(None, [f"--train.out_dir={tmp_path}"])
    _knn_records(tmp_path, (0, 1.0), (2, 3.0), (4, 5.0), (6, 7.0))
    scored = refuse_changed_settings(_state(config), config, tmp_path / "checkpoints" / "last.pt")
    assert scored == {0: 1.0, 2: 3.0, 4: 5.0}


def test_a_resume_refuses_another_knn_limit_where_the_monitor_has_scored(tmp_path):
    """A mutation audit: another train.knn_limit taken on a resume survived; it would change the kNN monitor's bank
    and queries mid-run under the same names. Before any kNN record, any limit is taken."""
    config = load_config(None, [f"--train.out_dir={tmp_path}", "--train.knn_limit=200"])
    path = tmp_path / "checkpoints" / "last.pt"
    assert refuse_changed_settings(_state(config, **{"train.knn_limit": 100}), config, path) == {}
    _knn_records(tmp_path, (2, 3.0))
    assert refuse_changed_settings(_state(config, **{"train.knn_limit": 200}), config, path) == {2: 3.0}
    with pytest.raises(CheckpointError, match="train.knn_limit=100"):
        refuse_changed_settings(_state(config, **{"train.knn_limit": 100}), config, path)


def test_a_resume_from_a_scored_step_goes_on_from_the_knn_record_s_time_and_scores_it_not_again(tmp_path):
    """A mutation audit: the run's time left at the checkpoint's, below its kNN record's (a start that scored
    after its last checkpoint and died), survived; the time axis would go back."""
    config = load_config(None, [f"--train.out_dir={tmp_path}", "--train.epochs=2"])
    _knn_records(tmp_path, (4, 9.5))
    generator = torch.Generator()
    with rng_state_kept():
        state = {**_state(config), "rng": rng_state(generator), "extra": {"time_s": 8.0, "steps_per_epoch": 4}}
        loaded = (state, refuse_changed_settings(state, config, tmp_path / "checkpoints" / "last.pt"))
        step, extra = restore(loaded, tmp_path / "checkpoints" / "last.pt", config, generator, 1, 1, 4)
    assert (step, extra["time_s"], extra["knn_due"]) == (4, 9.5, False)
