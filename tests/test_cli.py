"""The real command line, end to end, on real data (../shared/data), in subprocesses."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from conftest import extract_jpegs, tiny_overrides


def byol(*args, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "byol", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"byol {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def assert_user_error(proc, *fragments):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("byol: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import CIFAR10
    if not (CIFAR10 / "cifar-10-batches-bin" / "data_batch_1.bin").is_file():
        pytest.skip("real CIFAR-10 not found in ../shared/data")
    run = tmp_path_factory.mktemp("cli") / "run"
    proc = byol("pretrain", "--config", "cifar10", f"--data.root={CIFAR10}",
                *tiny_overrides(run, **{"train.max_steps": 4}))
    return run, proc


def test_pretrain_prints_knn_against_random_init(trained):
    run, proc = trained
    assert "kNN top-1 (k=200)" in proc.stdout and "kNN top-1 at random init" in proc.stdout
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "config.yaml").is_file()


def test_eval_knn_and_linear_print_a_table_and_write_json(trained, tmp_path):
    run, _ = trained
    ckpt = run / "checkpoints" / "last.pt"
    proc = byol("eval", "knn", ckpt, "--limit", 300, "--out", tmp_path / "knn.json")
    assert "kNN top-1 (k=20)" in proc.stdout and "kNN top-1 (k=200)" in proc.stdout
    result = json.loads((tmp_path / "knn.json").read_text())
    assert set(result["knn_top1"]) == {"20", "200"} and result["n_test"] == 300
    assert 0 <= result["knn_top1"]["200"] <= 100
    proc = byol("eval", "linear", ckpt, "--limit", 300, "--epochs", 3)
    assert "linear top-1" in proc.stdout and "linear top-5" in proc.stdout
    result = json.loads((run / "checkpoints" / "last_linear.json").read_text())
    assert 0 <= result["top1"] <= result["top5"] <= 100


def test_random_init_is_the_encoder_the_run_started_from(tmp_path):
    from byol.pipeline import load_encoder
    from conftest import CIFAR10
    if not CIFAR10.is_dir():
        pytest.skip("real CIFAR-10 not found in ../shared/data")
    # With lr 0 a step leaves every weight where it started (only BatchNorm statistics move), so
    # the trained and the random-init encoder must have equal parameters; with lr 0.5 they differ.
    # A folder decoded into memory runs a DataLoader before the model is built (it draws from the
    # global random stream), so the init must not depend on what loading drew.
    images = extract_jpegs(tmp_path / "images", per_class=3)
    folder = ["--data.dataset=folder", f"--data.root={images}", "--data.image_size=32", "--data.on_device=true",
              "--data.workers=0"]
    for lr, same, data in ((0.0, True, [f"--data.root={CIFAR10}"]), (0.0, True, folder),
                           (0.5, False, [f"--data.root={CIFAR10}"])):
        run = tmp_path / f"lr{lr}-{len(data)}"
        byol("pretrain", "--config", "cifar10", *data, "--optim.name=sgd", f"--optim.lr={lr}", "--train.seed=3",
             *tiny_overrides(run, **{"train.max_steps": 1, "train.knn_every": -1, "train.batch_size": 8}))
        ckpt = run / "checkpoints" / "last.pt"
        trained_net, _ = load_encoder(ckpt)
        init_net, _ = load_encoder(ckpt, random_init=True)
        pairs = list(zip(trained_net.parameters(), init_net.parameters()))
        assert len(pairs) > 40
        assert all(torch.equal(a, b) for a, b in pairs) == same, (lr, data)
    byol("eval", "knn", ckpt, "--limit", 100, "--random-init")
    assert json.loads((run / "checkpoints" / "last_knn_random_init.json").read_text())["random_init"] is True


def test_embed_writes_embeddings_with_labels(trained, tmp_path):
    run, _ = trained
    byol("embed", run / "checkpoints" / "last.pt", "--out", tmp_path / "emb.npy", "--limit", 50)
    emb = np.load(tmp_path / "emb.npy")
    labels = np.load(tmp_path / "emb_labels.npy")
    assert emb.shape == (50, 64) and np.isfinite(emb).all()
    assert labels.shape == (50,) and set(labels) <= set(range(10))
    byol("embed", run / "checkpoints" / "last.pt", "--out", tmp_path / "emb.pt", "--limit", 20, "--split", "train")
    saved = torch.load(tmp_path / "emb.pt", weights_only=True)
    assert saved["embeddings"].shape == (20, 64)


@pytest.mark.parametrize("cifar_stem", [False, True])
def test_export_loads_into_plain_torchvision_resnet(tmp_path, cifar_stem):
    from conftest import CIFAR10
    if not CIFAR10.is_dir():
        pytest.skip("real CIFAR-10 not found")
    run = tmp_path / "run"
    byol("pretrain", "--config", "cifar10", f"--data.root={CIFAR10}", f"--model.cifar_stem={cifar_stem}",
         *tiny_overrides(run, **{"model.width": 64, "train.max_steps": 1, "train.batch_size": 8,
                                 "train.knn_every": -1}))
    byol("export", run / "checkpoints" / "last.pt", "--out", tmp_path / "export")
    net = torchvision.models.resnet18()
    if cifar_stem:  # the README's two lines for the CIFAR stem
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.load_state_dict(torch.load(tmp_path / "export" / "encoder.pt", weights_only=True), strict=True)
    # The trunk carries the trained weights, not torchvision's initialization.
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    torch.testing.assert_close(net.layer1[0].conv1.weight, state["online.encoder.body.layer1.0.conv1.weight"])
    net.fc = nn.Identity()
    scripted = torch.jit.load(str(tmp_path / "export" / "encoder_torchscript.pt"))
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(scripted(x), net.eval()(x))
    # An exported encoder can itself be evaluated.
    proc = byol("eval", "knn", tmp_path / "export" / "encoder.pt", "--limit", 100)
    assert "kNN top-1 (k=200)" in proc.stdout


def test_folder_of_jpegs_with_corrupt_and_empty_files(tmp_path):
    root = extract_jpegs(tmp_path / "images", per_class=4)
    (root / "cat" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "dog" / "empty.jpg").write_bytes(b"")
    run = tmp_path / "run"
    proc = byol("pretrain", "--config", "cifar10", "--data.dataset=folder", f"--data.root={root}",
                "--data.image_size=32", "--data.workers=2",
                *tiny_overrides(run, **{"train.batch_size": 6, "train.knn_every": -1, "data.limit": "null"}))
    assert "pretraining done" in proc.stdout
    assert "unreadable files skipped  2 (listed in skipped_files.txt)" in proc.stdout
    skipped = (run / "skipped_files.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0].rsplit("/", 1)[-1] for line in skipped) == ["corrupt.jpg", "empty.jpg"]
    # 42 files in batches of 6 is one epoch of 7 steps that visits every file; the bad ones are
    # dropped from their batches and the run goes on.
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 7
    # A resumed run keeps the list of the run before it (here, a file since deleted).
    with open(run / "skipped_files.txt", "a") as f:
        f.write(f"{root / 'cat' / 'gone.jpg'}\tdeleted since\n")
    byol("pretrain", "--config", "cifar10", "--data.dataset=folder", f"--data.root={root}", "--data.image_size=32",
         "--data.workers=2", "--resume", *tiny_overrides(run, **{"train.batch_size": 6, "train.knn_every": -1,
                                                                 "data.limit": "null", "train.epochs": 2}))
    skipped = (run / "skipped_files.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0].rsplit("/", 1)[-1] for line in skipped) == ["corrupt.jpg", "empty.jpg",
                                                                                  "gone.jpg"]


def test_a_run_on_a_train_folder_monitors_and_evaluates_on_val_beside_it(tmp_path):
    """The ImageNet layout: pretrain on ROOT/train (as configs/imagenet.yaml); the kNN monitor and
    ``byol eval`` use ROOT/train and ROOT/val, evenly spread over the classes when limited."""
    train = extract_jpegs(tmp_path / "imagenet" / "train", per_class=3)
    extract_jpegs(tmp_path / "imagenet" / "val", per_class=2)
    run = tmp_path / "run"
    proc = byol("pretrain", "--config", "cifar10", "--data.dataset=folder", f"--data.root={train}",
                "--data.image_size=32", "--data.workers=0",
                *tiny_overrides(run, **{"train.batch_size": 6, "train.knn_every": 0, "train.knn_limit": "null",
                                        "data.limit": 12}))  # 12 of the 30 files: one epoch of 2 steps
    assert "kNN top-1 at random init" in proc.stdout and "kNN top-1 (k=200)" in proc.stdout, proc.stdout
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval/knn_top1" in r]
    assert [r["step"] for r in evals] == [0, 2]
    proc = byol("eval", "knn", run / "checkpoints" / "last.pt", "--k", 5)
    assert "30 train / 20 test images" in proc.stdout, proc.stdout
    proc = byol("eval", "knn", run / "checkpoints" / "last.pt", "--k", 5, "--limit", 10)
    assert "10 train / 10 test images" in proc.stdout, proc.stdout


def test_bad_input_gives_one_sentence_and_exit_2(tmp_path, trained):
    assert_user_error(byol("pretrain", "--data.root", tmp_path / "nowhere", check=False))  # not key=value
    assert_user_error(byol("pretrain", f"--data.root={tmp_path / 'nowhere'}", *tiny_overrides(tmp_path / "r1"),
                           check=False), "nowhere")
    assert_user_error(byol("pretrain", "--train.epohcs=3", check=False), "unknown config key 'train.epohcs'")
    assert_user_error(byol("pretrain", "--config", "cifar11", check=False), "unknown preset")
    assert_user_error(byol("pretrain", "--model.backbone=resnet101", check=False), "model.backbone must be one of")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert_user_error(byol("eval", "knn", bad, check=False), str(bad))
    assert_user_error(byol("eval", "knn", tmp_path / "missing.pt", check=False), "does not exist")
    run, _ = trained
    cut = tmp_path / "cut.pt"
    data = (run / "checkpoints" / "last.pt").read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    assert_user_error(byol("eval", "linear", cut, check=False), "corrupt or truncated")


def test_resume_without_checkpoint_and_occupied_run_dir(tmp_path, trained):
    run, _ = trained
    assert_user_error(byol("pretrain", "--resume", f"--train.out_dir={tmp_path / 'fresh'}", check=False),
                      "cannot resume")
    before = (run / "checkpoints" / "last.pt").read_bytes()
    assert_user_error(byol("pretrain", f"--train.out_dir={run}", check=False), "--resume")
    assert (run / "checkpoints" / "last.pt").read_bytes() == before  # nothing already written is lost
