"""Resume refusals (byol.resume), checked on a checkpoint's state alone: no weights, no data, no training."""

import pytest

from byol.checkpoint import CheckpointError
from byol.config import load_config
from byol.resume import refuse_changed_settings


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
