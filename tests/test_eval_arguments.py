"""The settings eval and embed read, and the Python callers' arguments (byol/eval_arguments.py); they are
checked through byol.knn, linear and embed in tests/test_pipeline.py and tests/test_embeddings.py too."""

import pytest

from byol.config import Config
from byol.eval_arguments import note_unused, unused_settings


@pytest.mark.parametrize("command, given, unused", [
    ("eval knn", ["--optim.lr=1", "--augment.crop_min_scale=0.2", "--train.epochs=3"],
     ["optim.lr", "augment.crop_min_scale", "train.epochs"]),
    ("eval knn", ["--data.root=x", "--data.workers=0", "--augment.preset=none", "--train.device=cpu",
                  "--train.precision=fp32", "--model.width=8"], []),
    ("eval knn", ["--train.seed=1", "--train.seed=2", "--data.train_split=x"], ["train.seed", "data.train_split"]),
    ("eval linear", ["--train.seed=1", "--train.progress=false", "--train.log_every=3"], ["train.log_every"]),
    ("embed", ["--train.seed=1", "--data.train_split=x", "--data.on_device=true"], ["train.seed", "data.on_device"]),
    ("embed", ["--data.limit=4", "--no.such=1", "--train.nope=1"], []),  # refused, not noted
])
def test_the_settings_eval_and_embed_do_not_read_are_named(command, given, unused):
    assert unused_settings(given, command) == unused  # on a folder


def test_cifar_and_stl10_are_read_without_a_folders_settings():
    given = ["--data.image_size=64", "--data.load_size=72", "--data.workers=2", "--data.train_split=x",
             "--data.root=r", "--train.device=cpu"]
    for dataset in ("cifar10", "stl10"):
        assert unused_settings(given, "embed", dataset) == [k[2:].split("=")[0] for k in given[:4]]
    assert unused_settings(given, "embed", "folder") == []


def test_knn_k_given_to_eval_knn_points_to_k(capsys):
    """A user test: --train.knn_k=5 given to eval knn was said to be ignored, and nothing more."""
    note_unused(["--train.knn_k=5"], "eval knn", Config())
    assert capsys.readouterr().err == ("note: byol eval knn does not use train.knn_k (pretraining settings); it is "
                                       "ignored; the number of neighbours here is --k\n")
    note_unused(["--train.knn_k=5"], "embed", Config())
    assert capsys.readouterr().err.endswith("it is ignored\n")
