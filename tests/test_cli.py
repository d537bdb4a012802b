"""The real command line, end to end, on real data (../shared/data): in subprocesses (``byol``) where a test is
of the process (its exit code, signals, pipes, environment, a crash), else in this process (``cli``)."""

import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from torch import nn

from byol.config import Config, load_config
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
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith("byol: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def main_error(capsys, *args, after_progress=False) -> tuple[str, str]:
    """Run ``byol ARGS`` in this process, expecting a user error; returns (stdout, the error line).

    ``after_progress``: progress bars may precede the error on stderr (it is then the last line)."""
    from byol.cli import main
    assert main([str(a) for a in args]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    lines = err.strip().splitlines()  # a bar redraws with carriage returns: each is a line here
    assert lines and (after_progress or len(lines) == 1), err
    assert lines[-1].startswith("byol: error: "), err
    return out, lines[-1]


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
    # and what it ran in: bf16 where this CPU has bf16 arithmetic (train.precision=auto), else float32
    from byol.precision import native_bf16
    assert re.search(rf"device +cpu, {'bf16 autocast' if native_bf16(torch.device('cpu')) else 'float32'}\n",
                     proc.stdout), proc.stdout
    # of the images the monitor scored (train.knn_limit=200 here), which eval's (all of them) differ from
    assert "kNN top-1 (k=200, 200 train / 200 test images)" in proc.stdout, proc.stdout
    assert "kNN top-1 at random init (200 train / 200 test images)" in proc.stdout, proc.stdout
    # and how long it took, for comparing runs from their logs (a user test)
    assert re.search(r"time +\d+:\d\d:\d\d since the first step, its starts summed, [\d,]+\.\d img/s training "
                     r"\(this start\)\n",
                     proc.stdout), proc.stdout
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "config.yaml").is_file()


def test_eval_knn_and_linear_print_a_table_and_write_json(cli, trained, tmp_path):
    run, _ = trained
    ckpt = run / "checkpoints" / "last.pt"
    proc = cli("eval", "knn", ckpt, "--limit", 300, "--out", tmp_path / "knn.json")
    assert "kNN top-1 (k=20)" in proc.stdout and "kNN top-1 (k=200)" in proc.stdout
    result = json.loads((tmp_path / "knn.json").read_text())
    assert set(result["knn_top1"]) == {"20", "200"} and result["n_test"] == 300
    assert 0 <= result["knn_top1"]["200"] <= 100
    proc = cli("eval", "linear", ckpt, "--limit", 300, "--epochs", 3)
    assert "linear top-1" in proc.stdout and "linear top-5" in proc.stdout
    result = json.loads((run / "checkpoints" / "last_linear.json").read_text())
    assert 0 <= result["top1"] <= result["top5"] <= 100 and result["epochs"] == 3 and result["classes"] == 10
    assert "always 100" not in proc.stdout
    assert (run / "checkpoints" / "last_linear.json").read_text().endswith("}\n")  # a text file's last line


def test_eval_results_say_what_they_are_of(trained, tmp_path, capsys):
    """The JSON (and the table) of an evaluation name the checkpoint, its step and epoch, the features'
    width and precision, and the linear probe's settings: they said none, so two results could not
    be told apart or traced."""
    from byol import __version__
    from byol.backbones import resnet
    from byol.precision import native_bf16
    from byol.cli import main
    from conftest import CIFAR10
    ckpt = trained[0] / "checkpoints" / "last.pt"  # step 4 of 8 an epoch (128 images, batch 16)
    precision = "bf16 autocast" if native_bf16(torch.device("cpu")) else "float32"  # train.precision=auto
    origin = {"checkpoint": str(ckpt), "step": 4, "epoch": 0.5, "random_init": False, "feature_dim": 64,
              "image_size": 32, "device": "cpu", "precision": precision,
              "model": {"backbone": "resnet18", "cifar_stem": True, "width": 8},  # (the fixture's run)
              "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616],  # augment.preset=cifar's
              "versions": {"byol": __version__, "torch": str(torch.__version__)}}  # (as checkpoints record)
    assert main(["eval", "knn", str(ckpt), "--limit", "40", "--out", str(tmp_path / "k.json")]) == 0
    knn = json.loads((tmp_path / "k.json").read_text())
    assert {k: knn[k] for k in origin} == origin and "no augmentation" in knn["features"]
    out = capsys.readouterr().out
    assert re.search(rf"features +64-d, of 32x32 images, {precision} on cpu\n", out), out
    assert re.search(r"weights +step 4 \(epoch 0.50\)\n", out), out
    assert main(["eval", "linear", str(ckpt), "--limit", "40", "--epochs", "2", "--out", str(tmp_path / "l.json")]) \
        == 0
    linear = json.loads((tmp_path / "l.json").read_text())
    assert {k: linear[k] for k in origin} == origin
    assert re.search(r"probe +2 epochs, seed 0\n", capsys.readouterr().out)  # (a user test: the seed was unsaid)
    assert {k: linear[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "seed")} == {
        "epochs": 2, "batch_size": 256, "lr": 0.1, "weight_decay": 5e-4, "seed": 0}
    assert "no augmentation, standardized" in linear["features"] and "Nesterov" in linear["optimizer"]
    assert main(["eval", "knn", str(ckpt), "--limit", "40", "--random-init", "--out", str(tmp_path / "r.json")]) == 0
    init = json.loads((tmp_path / "r.json").read_text())
    assert (init["step"], init["epoch"], init["random_init"]) == (0, 0.0, True)
    assert re.search(r"weights +at random initialization \(--random-init\), step 0\n", capsys.readouterr().out)
    exported = tmp_path / "encoder.pt"  # a state_dict: no step to say
    torch.save(resnet("resnet18", cifar_stem=True, width=8).state_dict(), exported)
    assert main(["eval", "knn", str(exported), "--limit", "40", "--out", str(tmp_path / "e.json"),
                 "--model.width=8", f"--data.root={CIFAR10}", "--train.device=cpu", "--train.precision=fp32"]) == 0
    bare = json.loads((tmp_path / "e.json").read_text())
    assert (bare["checkpoint"], bare["step"], bare["epoch"], bare["precision"]) == (str(exported), None, None,
                                                                                    "float32")
    assert "weights" not in capsys.readouterr().out


def test_eval_of_an_exported_encoder_reports_the_step_its_export_recorded(trained, tmp_path, capsys):
    """export.json records the checkpoint's step and epoch, and eval of its encoder.pt reports them
    (they were null: the export said nothing of them); an export.json from before says neither: null."""
    from byol.cli import main
    export = tmp_path / "export"
    assert main(["export", str(trained[0] / "checkpoints" / "last.pt"), "--out", str(export)]) == 0
    said = capsys.readouterr().out  # each file it wrote, by its path
    assert all(str(export / name) in said for name in ("encoder.pt", "encoder_torchscript.pt", "export.json",
                                                         "config.yaml")), said
    info = json.loads((export / "export.json").read_text())
    assert (info["step"], info["epoch"]) == (4, 0.5)  # step 4 of 8 an epoch
    torch.manual_seed(1)  # the same checkpoint exports to the same bytes, whatever the random stream
    assert main(["export", str(trained[0] / "checkpoints" / "last.pt"), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "export.json").read_text())
    assert again["state_dict_sha256"] == info["state_dict_sha256"]
    assert (tmp_path / "again" / "encoder.pt").read_bytes() == (export / "encoder.pt").read_bytes()
    out = ["--limit", "20", "--k", "5", "--out", str(tmp_path / "e.json")]
    assert main(["eval", "knn", str(export / "encoder.pt"), *out]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert (result["checkpoint"], result["step"], result["epoch"]) == (str(export / "encoder.pt"), 4, 0.5)
    assert re.search(r"weights +step 4 \(epoch 0.50\)\n", capsys.readouterr().out)
    state = torch.load(export / "encoder.pt", weights_only=True)
    state["conv1.weight"] += 1  # fine-tuned, say, and saved over the export's file: not step 4's weights
    torch.save(state, export / "encoder.pt")
    assert main(["eval", "knn", str(export / "encoder.pt"), *out]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["step"] is None
    assert "encoder.pt is not the file that byol export wrote beside" in capsys.readouterr().err
    for key in ("step", "epoch"):
        del info[key]
    (export / "export.json").write_text(json.dumps(info))
    assert main(["eval", "knn", str(export / "encoder.pt"), *out]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert (result["step"], result["epoch"]) == (None, None) and "weights" not in capsys.readouterr().out


def test_eval_and_embed_name_the_pretraining_settings_given_to_them(trained, tmp_path, capsys):
    """--optim.*, --augment.crop_min_scale and most --train.* were taken and did nothing, without a word;
    so were a folder's data.workers and data.image_size on CIFAR. A setting refused is not noted first,
    and Python callers get the note too."""
    from byol.cli import main
    ckpt = str(trained[0] / "checkpoints" / "last.pt")
    out = ["--limit", "20", "--k", "5", "--out", str(tmp_path / "k.json")]
    assert main(["eval", "knn", ckpt, *out, "--train.precision=fp32", "--train.device=cpu"]) == 0
    assert "does not use" not in capsys.readouterr().err  # the checkpoint's own config is not noted
    main_error(capsys, "eval", "knn", ckpt, *out, "--optim.lr=-1")  # its one line: the error alone
    import byol
    byol.knn(ckpt, ["--data.workers=0", "--data.image_size=64"], ks=(5,), limit=20)
    assert "note: byol eval knn does not use data.workers, data.image_size (pretraining settings); they are " \
        "ignored\n" in capsys.readouterr().err
    assert main(["eval", "knn", ckpt, *out, "--optim.lr=0.5", "--augment.crop_min_scale=0.2",
                 "--train.precision=fp32"]) == 0
    assert "note: byol eval knn does not use optim.lr, augment.crop_min_scale (pretraining settings); they are " \
        "ignored\n" in capsys.readouterr().err
    assert main(["embed", ckpt, "--out", str(tmp_path / "e.npy"), "--limit", "4", "--train.epochs=3"]) == 0
    assert "note: byol embed does not use train.epochs (pretraining settings); it is ignored\n" in \
        capsys.readouterr().err


def test_eval_again_keeps_the_earlier_result_beside_the_new_one(trained, tmp_path, capsys, monkeypatch):
    """A quick re-run (--limit) must not overwrite an hour's evaluation: the default JSON's earlier
    contents move to NAME.1.json, NAME.2.json, ... (the free name is probed before the evaluation,
    as keeping takes a new file); an explicit --out is overwritten as asked."""
    import byol.outputs
    from byol.cli import main
    probed = []
    probe = byol.outputs.check_writable
    monkeypatch.setattr(byol.outputs, "check_writable",
                        lambda path, **kw: probed.append(Path(path).name) or probe(path, **kw))
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    ckpt = run / "checkpoints" / "last.pt"
    for limit in (300, 200, 100):
        assert main(["eval", "knn", str(ckpt), "--limit", str(limit), "--k", "5"]) == 0
    kept = {p.name: json.loads(p.read_text())["n_test"] for p in ckpt.parent.glob("last_knn*.json")}
    assert kept == {"last_knn.json": 100, "last_knn.1.json": 300, "last_knn.2.json": 200}, kept
    assert "the earlier result in last_knn.json is kept as last_knn.2.json" in capsys.readouterr().err
    assert probed == ["last_knn.json", "last_knn.json", "last_knn.1.json", "last_knn.json", "last_knn.2.json"]
    for limit in (300, 100):
        assert main(["eval", "knn", str(ckpt), "--limit", str(limit), "--k", "5", "--out", str(tmp_path / "k.json")]) == 0
    assert json.loads((tmp_path / "k.json").read_text())["n_test"] == 100 and not list(tmp_path.glob("k.*.json"))


def test_eval_knn_says_when_k_is_above_the_training_images(trained, tmp_path, capsys):
    from byol.cli import main
    ckpt = trained[0] / "checkpoints" / "last.pt"
    out = ["--out", str(tmp_path / "k.json")]
    assert main(["eval", "knn", str(ckpt), "--limit", "20", "--k", "5", *out]) == 0
    assert "note: k=" not in capsys.readouterr().err
    assert main(["eval", "knn", str(ckpt), "--limit", "20", "--k", "5", "200", *out]) == 0
    said = capsys.readouterr()
    assert "note: k=200 is more than the 20 training images, so it votes with all of them" in said.err
    # the table too, as pretrain's labels it, and the vote's temperature (a user test: a note on stderr alone)
    assert re.search(r"kNN top-1 \(k=5\) +\d", said.out) and "kNN top-1 (k=200 > 20: all vote)" in said.out, said.out
    assert re.search(r"kNN vote +cosine similarity, each neighbour.s vote exp\(sim / T\), T=0\.1\n", said.out), said.out
    assert main(["eval", "knn", str(ckpt), "--limit", "20", "--k", "5", "--temperature", "0.07", *out]) == 0
    assert "T=0.07\n" in capsys.readouterr().out
    assert main(["eval", "knn", str(ckpt), "--limit", "20", "--k", "50", "200", *out]) == 0
    assert "note: k=50, 200 are more than the 20 training images, so each votes" in capsys.readouterr().err
    assert main(["eval", "knn", str(ckpt), "--limit", "20", "--k", "200", "200", *out]) == 0  # scored once
    assert "note: k=200 is more than the 20 training images, so it votes" in capsys.readouterr().err
    assert list(json.loads((tmp_path / "k.json").read_text())["knn_top1"]) == ["200"]
    import byol  # from Python too (a user test: only the command line said it)
    assert list(byol.knn(ckpt, ks=(200,), limit=20)["knn_top1"]) == [200]
    assert "note: k=200 is more than the 20 training images, so it votes" in capsys.readouterr().err


def test_linear_top5_of_five_classes_or_fewer_says_it_is_always_100(monkeypatch, capsys, tmp_path):
    import byol.pipeline
    from byol.cli import main
    fake = {"dataset": "folder", "top1": 61.0, "top5": 100.0, "train_loss": 0.5, "epochs": 1, "seed": 0,
            "n_train": 40, "n_test": 20, "test_split": "val", "classes": 4, "feature_dim": 64, "image_size": 37,
            "precision": "float32", "device": "cpu", "random_init": False, "step": None, "epoch": None}
    monkeypatch.setattr(byol.pipeline, "linear", lambda *a, **k: dict(fake))
    (tmp_path / "x.pt").touch()  # (the command line finds the file before it loads torch)
    assert main(["eval", "linear", str(tmp_path / "x.pt"), "--out", str(tmp_path / "l.json")]) == 0
    out = capsys.readouterr().out
    assert "100.00% (of 4 classes: always 100)" in out and "40 train / 20 val images" in out


def test_eval_table_counts_the_images_with_thousands_separators(monkeypatch, capsys, tmp_path):
    """A user review: eval's title said "50000 train / 10000 test images" where pretraining's table, and eval's own
    "k=200 > 1,000: all vote", write 50,000."""
    import byol.pipeline
    from byol.cli import main
    fake = {"dataset": "cifar10", "knn_top1": {20: 90.0}, "temperature": 0.1, "n_train": 50000, "n_test": 10000,
            "test_split": "test", "feature_dim": 512, "image_size": 32, "precision": "float32", "device": "cpu",
            "random_init": False, "step": None, "epoch": None}
    monkeypatch.setattr(byol.pipeline, "knn", lambda *a, **k: dict(fake))
    (tmp_path / "x.pt").touch()
    assert main(["eval", "knn", str(tmp_path / "x.pt"), "--out", str(tmp_path / "k.json")]) == 0
    assert "cifar10: 50,000 train / 10,000 test images" in capsys.readouterr().out


def test_eval_table_says_that_the_result_carries_notes_and_where(monkeypatch, capsys, tmp_path):
    """A review: the notes that qualify a result's numbers (docs/metrics.md) were said on stderr before the table,
    which a long log scrolls out of sight, and kept in the JSON, but the table did not say that there were any."""
    import byol.pipeline
    from byol.cli import main
    notes = ["k=200 is more than the 40 training images, so it votes with all of them", "2 files could not be decoded"]
    fake = {"dataset": "folder", "knn_top1": {200: 50.0}, "temperature": 0.1, "n_train": 40, "n_test": 20,
            "test_split": "val", "feature_dim": 64, "image_size": 32, "precision": "float32", "device": "cpu",
            "random_init": False, "step": None, "epoch": None, "notes": notes}
    monkeypatch.setattr(byol.pipeline, "knn", lambda *a, **k: dict(fake))
    (tmp_path / "x.pt").touch()
    assert main(["eval", "knn", str(tmp_path / "x.pt"), "--out", str(tmp_path / "k.json")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\n  notes +2, said above and kept in the results' \"notes\"\n  results +\S*k\.json\n", out), out
    assert json.loads((tmp_path / "k.json").read_text())["notes"] == notes
    fake["notes"] = []
    assert main(["eval", "knn", str(tmp_path / "x.pt"), "--out", str(tmp_path / "k.json")]) == 0
    assert "notes" not in capsys.readouterr().out


def test_random_init_is_the_encoder_the_run_started_from(cli, tmp_path):
    from byol.encoders import load_encoder
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
        cli("pretrain", "--config", "cifar10", *data, "--optim.name=sgd", f"--optim.lr={lr}", "--train.seed=3",
            *tiny_overrides(run, **{"train.max_steps": 1, "train.knn_every": -1, "train.batch_size": 8}))
        ckpt = run / "checkpoints" / "last.pt"
        trained_net, _ = load_encoder(ckpt)
        init_net, _ = load_encoder(ckpt, random_init=True)
        pairs = list(zip(trained_net.parameters(), init_net.parameters()))
        assert len(pairs) > 40
        assert all(torch.equal(a, b) for a, b in pairs) == same, (lr, data)
    cli("eval", "knn", ckpt, "--limit", 100, "--random-init")
    assert json.loads((run / "checkpoints" / "last_knn_random_init.json").read_text())["random_init"] is True


def test_embed_writes_embeddings_with_labels(cli, trained, tmp_path):
    run, _ = trained
    (tmp_path / "emb_paths.txt").write_text("an earlier emb.npy's, not this one's\n")
    np.save(tmp_path / "emb.npy", np.zeros((3, 2), np.float32))  # (that earlier emb.npy)
    proc = cli("embed", run / "checkpoints" / "last.pt", "--out", tmp_path / "emb.npy", "--limit", 50)
    # CIFAR: no file paths, none said, and an earlier emb's removed
    assert f"(labels in {tmp_path / 'emb_labels.npy'}; class names in {tmp_path / 'emb_classes.txt'})" \
        in proc.stdout, proc.stdout
    assert not (tmp_path / "emb_paths.txt").exists()
    assert (tmp_path / "emb_classes.txt").read_text().split() == ["airplane", "automobile", "bird", "cat", "deer",
                                                                  "dog", "frog", "horse", "ship", "truck"]
    emb = np.load(tmp_path / "emb.npy")
    labels = np.load(tmp_path / "emb_labels.npy")
    assert emb.shape == (50, 64) and np.isfinite(emb).all()
    assert labels.shape == (50,) and set(labels) <= set(range(10))
    # bf16 autocast that train.precision=auto chose is said (a user test could not tell), and .pt records it
    from byol.precision import native_bf16
    bf16 = native_bf16(torch.device("cpu"))
    assert ("note: the embeddings are computed in bf16 autocast (train.precision=auto" in proc.stderr) == bf16
    for precision, said in (("auto", "bf16 autocast" if bf16 else "float32"), ("fp32", "float32")):
        proc = cli("embed", run / "checkpoints" / "last.pt", "--out", tmp_path / "emb.pt", "--limit", 20, "--split",
                   "train", f"--train.precision={precision}")
        saved = torch.load(tmp_path / "emb.pt", weights_only=True)
        noted = "note: the embeddings are computed" in proc.stderr
        assert saved["precision"] == said and noted == (said != "float32")
    assert saved["embeddings"].shape == (20, 64) and saved["classes"][0] == "airplane"
    # 20 rows saved, not the whole split behind them (a slice saves its whole storage)
    assert all(saved[k].untyped_storage().nbytes() == saved[k].nbytes for k in ("embeddings", "labels"))


def test_a_cifar_encoder_embeds_a_folder_of_cifar_s_images_as_it_embeds_them_and_as_documented(cli, trained, tmp_path):
    """A user test: a CIFAR-trained encoder embedded a folder at the folder default for its views (the
    center 32 of 37 here; of 27 for cifar10-cpu's 24), export.json said CIFAR's 32 whole, and the Python
    recipe (decode_image at build.load_size(config)) a third size: the same image's features were 0.907
    cosine (median) from its CIFAR twin's. Now all three are the image whole at 32: lossless PNGs of
    CIFAR's test images embed as the binary files do."""
    from PIL import Image

    from byol import load_encoder
    from byol.build import eval_crop, load_size, views_of
    from byol.datasets import load_cifar
    from byol.features import extract_features
    from byol.images import decode_image
    from conftest import CIFAR10
    run, _ = trained
    ckpt = run / "checkpoints" / "last.pt"
    test = load_cifar(CIFAR10, "cifar10", "test")
    paths = []
    for i in range(6):
        paths.append(tmp_path / "pngs" / "val" / f"c{test.labels[i]}" / f"{i}.png")
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).save(paths[-1])
    cli("embed", ckpt, "--out", tmp_path / "bin.pt", "--limit", 6, "--train.precision=fp32")
    proc = cli("embed", ckpt, "--out", tmp_path / "folder.pt", "--data.dataset=folder",
               f"--data.root={tmp_path / 'pngs'}", "--train.precision=fp32")
    assert "note: the encoder was trained on cifar10, which eval and embed feed whole at 32x32: this folder's " \
        "images are fed alike, each one's center square resized to 32x32" in proc.stderr, proc.stderr
    binary, folder = (torch.load(tmp_path / f, weights_only=True) for f in ("bin.pt", "folder.pt"))
    rows = [binary["embeddings"][int(Path(p).stem)] for p in folder["paths"]]
    torch.testing.assert_close(folder["embeddings"], torch.stack(rows), atol=1e-5, rtol=1e-5)
    net, config = load_encoder(ckpt)  # the Python recipe of docs/python_api.md, for your own images
    assert (load_size(config), eval_crop(config)) == (32, None)
    images = torch.stack([decode_image(p, load_size(config)) for p in folder["paths"]])
    view = views_of(config)[0]
    features = extract_features(net, images, mean=view.mean, std=view.std, crop=eval_crop(config))
    torch.testing.assert_close(features, folder["embeddings"], atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:.*torch.jit.load. is deprecated:FutureWarning")  # python_api.md says so
@pytest.mark.parametrize("cifar_stem", [False, True])
def test_export_loads_into_plain_torchvision_resnet(cli, tmp_path, cifar_stem):
    from conftest import CIFAR10
    if not CIFAR10.is_dir():
        pytest.skip("real CIFAR-10 not found")
    run = tmp_path / "run"
    cli("pretrain", "--config", "cifar10", f"--data.root={CIFAR10}", f"--model.cifar_stem={cifar_stem}",
        *tiny_overrides(run, **{"model.width": 64, "train.max_steps": 1, "train.batch_size": 8,
                                "train.knn_every": -1}))
    cli("export", run / "checkpoints" / "last.pt", "--out", tmp_path / "export")
    info = json.loads((tmp_path / "export" / "export.json").read_text())
    assert (info["backbone"], info["cifar_stem"], info["width"]) == ("resnet18", cifar_stem, 64)
    # The files by their names in the folder, which can then be moved: not by paths from the cwd of the export.
    assert (info["state_dict"], info["torchscript"]) == ("encoder.pt", "encoder_torchscript.pt")
    net = torchvision.models.resnet18()
    if cifar_stem:  # docs/python_api.md's two lines for the CIFAR stem
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
    # What to build without byol, what comes out, and the config a moved copy needs, named
    stem = ("Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False), maxpool = Identity()"
            if cifar_stem else "")
    assert info["architecture"].startswith("torchvision.models.resnet18()") and info["architecture"].endswith(stem)
    assert info["output"]["features"] == scripted(x).shape[1] == 512 and "avgpool" in info["output"]["layer"]
    assert info["config"] == "config.yaml" and (tmp_path / "export" / info["config"]).is_file()
    moved = tmp_path / "moved"  # copied without it (a user test): the note points at it
    moved.mkdir()
    for name in ("encoder.pt", "export.json"):
        shutil.copy(tmp_path / "export" / name, moved / name)
    proc = cli("eval", "knn", moved / "encoder.pt", "--limit", 20, "--k", 5, "--out", tmp_path / "m.json",
               f"--data.root={CIFAR10}")
    assert f"{moved / 'encoder.pt'} has no config.yaml beside it, which byol export wrote beside export.json" \
        in proc.stderr, proc.stderr
    # the mean and std export.json records (the cifar10 preset's), not the ImageNet ones a bare state_dict is given
    assert "its input is taken to be augment.preset=cifar (the mean and std export.json records)" in proc.stderr
    assert json.loads((tmp_path / "m.json").read_text())["mean"] == info["input"]["mean"] == [0.4914, 0.4822, 0.4465]
    # An exported encoder can itself be evaluated.
    proc = cli("eval", "knn", tmp_path / "export" / "encoder.pt", "--limit", 100)
    assert "kNN top-1 (k=200 > 100: all vote)" in proc.stdout, proc.stdout  # (the bank is the 100 images)
    # export.json says how to feed it: the run's own embeddings of CIFAR-10's first test images are the
    # TorchScript encoder's on those images in [0, 1], normalized with its mean and std (in float32 both:
    # embed follows train.precision, bf16 where the machine has it).
    cli("embed", run / "checkpoints" / "last.pt", "--out", tmp_path / "e.npy", "--limit", 4, "--train.precision=fp32")
    raw = np.fromfile(CIFAR10 / "cifar-10-batches-bin" / "test_batch.bin", np.uint8, count=4 * 3073)
    images = torch.from_numpy(raw.reshape(4, 3073)[:, 1:].reshape(4, 3, 32, 32).copy()).float() / 255
    mean, std = (torch.tensor(info["input"][k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    assert info["input"]["image_size"] == 32
    torch.testing.assert_close(scripted((images - mean) / std), torch.from_numpy(np.load(tmp_path / "e.npy")),
                               rtol=1e-4, atol=1e-4)


def test_folder_of_jpegs_with_corrupt_and_empty_files(cli, tmp_path, capsys):
    root = extract_jpegs(tmp_path / "images", per_class=4)
    (root / "cat" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "dog" / "empty.jpg").write_bytes(b"")
    for name in ("IMG_1.heic", "IMG_2.HEIC", "notes.txt", "README"):  # not images Pillow opens: said, not silent
        (root / "dog" / name).write_bytes(b"...")
    run = tmp_path / "run"
    proc = cli("pretrain", "--config", "cifar10", "--data.dataset=folder", f"--data.root={root}",
               "--data.image_size=32", "--data.workers=2",
               *tiny_overrides(run, **{"train.batch_size": 6, "train.knn_every": -1, "data.limit": "null"}))
    assert "pretraining done" in proc.stdout
    assert (f"note: 4 files (.heic 2, .txt 1, no extension 1) in {root} are left out: their names do not end "
            "in the extension of an image format Pillow opens (.jpg, .png, .webp, ...)") in proc.stderr
    assert "unreadable files skipped  2 (listed in skipped_files.txt)" in proc.stdout
    skipped = (run / "skipped_files.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0].rsplit("/", 1)[-1] for line in skipped) == ["corrupt.jpg", "empty.jpg"]
    # 42 files in batches of 6 is one epoch of 7 steps that visits every file; the bad ones are
    # dropped from their batches and the run goes on.
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 7
    # A resumed run keeps the list of the run before it (here, a file since deleted).
    with open(run / "skipped_files.txt", "a") as f:
        f.write(f"{root / 'cat' / 'gone.jpg'}\tdeleted since\n")
    cli("pretrain", "--config", "cifar10", "--data.dataset=folder", f"--data.root={root}", "--data.image_size=32",
        "--data.workers=2", "--resume", *tiny_overrides(run, **{"train.batch_size": 6, "train.knn_every": -1,
                                                                "data.limit": "null", "train.epochs": 2}))
    skipped = (run / "skipped_files.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0].rsplit("/", 1)[-1] for line in skipped) == ["corrupt.jpg", "empty.jpg",
                                                                                  "gone.jpg"]
    # A plain folder has no held-out split: embed takes the training images, and says so. Names
    # that are not UTF-8 or hold a line break are written one line each, as the file system has them.
    from byol.cli import main
    jpeg = next((root / "cat").glob("*.jpg")).read_bytes()
    (root / "cat" / "new\nline.jpg").write_bytes(jpeg)
    with open(os.fsencode(root / "cat") + b"/bad\xff.jpg", "wb") as f:
        f.write(jpeg)
    capsys.readouterr()
    assert main(["embed", str(run / "checkpoints" / "last.pt"), "--out", str(tmp_path / "emb.npy")]) == 0
    out, err = capsys.readouterr()
    assert f"note: {root} is a plain folder of images (no train/ in it: its sub-folders are classes, not splits), so " \
        "all of its images are embedded" in err, err
    assert f"file paths in {tmp_path / 'emb_paths.txt'}" in out, out
    assert np.load(tmp_path / "emb.npy").shape[0] == 42  # the 44 files but the two unreadable ones
    lines = (tmp_path / "emb_paths.txt").read_bytes().splitlines()
    assert len(lines) == 42 and os.fsencode(root / "cat" / "bad") + b"\xff.jpg" in lines
    assert os.fsencode(root / "cat") + b"/new\\nline.jpg" in lines
    _, line = main_error(capsys, "embed", run / "checkpoints" / "last.pt", "--out", tmp_path / "v.npy",
                         "--split", "val")
    assert f"there is no val split: {root} is a plain folder of images" in line


def test_a_run_on_a_train_folder_monitors_and_evaluates_on_val_beside_it(cli, tmp_path, capsys):
    """The ImageNet layout: pretrain on ROOT/train (as configs/imagenet.yaml); the kNN monitor and
    ``byol eval`` use ROOT/train and ROOT/val, evenly spread over the classes when limited."""
    train = extract_jpegs(tmp_path / "imagenet" / "train", per_class=3)
    extract_jpegs(tmp_path / "imagenet" / "val", per_class=2)
    run = tmp_path / "run"
    proc = cli("pretrain", "--config", "cifar10", "--data.dataset=folder", f"--data.root={train}",
               "--data.image_size=32", "--data.workers=0",
               *tiny_overrides(run, **{"train.batch_size": 6, "train.knn_every": 0, "train.knn_limit": "null",
                                       "data.limit": 12}))  # 12 of the 30 files: one epoch of 2 steps
    assert "kNN top-1 at random init (30 train / 20 val images)" in proc.stdout, proc.stdout
    assert "kNN top-1 (k=200 > 30: all vote, 30 train / 20 val images)" in proc.stdout, proc.stdout
    assert "unreadable files skipped" not in proc.stdout and not (run / "skipped_files.txt").exists()  # none were
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval/knn_top1" in r]
    assert [r["step"] for r in evals] == [0, 2]
    proc = cli("eval", "knn", run / "checkpoints" / "last.pt")
    assert "30 train / 20 val images" in proc.stdout and "of 32x32 images" in proc.stdout, proc.stdout
    # eval gives the monitor's last number: the same images, the same center crop of them
    assert json.loads((run / "checkpoints" / "last_knn.json").read_text())["knn_top1"]["200"] == \
        evals[-1]["eval/knn_top1_k200"]
    proc = cli("eval", "knn", run / "checkpoints" / "last.pt", "--k", 5, "--limit", 10, "--data.image_size=48")
    assert "10 train / 10 val images" in proc.stdout, proc.stdout
    assert "of 48x48 images" in proc.stdout, proc.stdout  # the center 48 of a folder decoded at 8/7 of it, said
    assert json.loads((run / "checkpoints" / "last_knn.json").read_text())["image_size"] == 48
    moved = tmp_path / "imagenet-moved"
    (tmp_path / "imagenet").rename(moved)  # the data moved since: said so, not blamed on the layout
    assert_user_error(cli("eval", "knn", run / "checkpoints" / "last.pt", check=False),
                      f"the image folder {train} (data.root) does not exist")
    moved.rename(tmp_path / "imagenet")
    # byol embed finds ROOT/val as eval does; --split train is the folder the run trained on.
    from byol.exports import embed
    for split, folder, n in ((None, "val", 20), ("val", "val", 20), ("test", "val", 20), ("train", "train", 30)):
        out = embed(run / "checkpoints" / "last.pt", tmp_path / f"{split}.npy", split=split)
        paths = (tmp_path / f"{split}_paths.txt").read_text().splitlines()
        assert np.load(out).shape[0] == n and {p.split("/")[-3] for p in paths} == {folder}, (split, paths[:2])
        noted = "has no test/ folder; embedding" in capsys.readouterr().err
        assert noted == (split == "test")  # the one stand-in is said
    # A limit above a folder's count embeds all of it (a mutation audit: taking `limit` files read past its end)
    everything = embed(run / "checkpoints" / "last.pt", tmp_path / "all.npy", split="train", limit=100)
    assert np.load(everything).shape[0] == 30
    # Its rows are the encoder's features of the center 32 of each image decoded at 37 (not of all 37)
    from byol import load_encoder
    from byol.build import views_of
    from byol.precision import autocast_dtype
    from byol.evaluate import extract_features
    from byol.images import decode_image
    net, config = load_encoder(run / "checkpoints" / "last.pt")
    squares = torch.stack([decode_image(p, 37) for p in (tmp_path / "val_paths.txt").read_text().splitlines()])
    mean, std = views_of(config)[0].mean, views_of(config)[0].std
    amp = autocast_dtype(config.train.precision, torch.device("cpu"))
    own = {crop: extract_features(net, squares, mean=mean, std=std, amp_dtype=amp, crop=crop) for crop in (32, None)}
    embedded = torch.from_numpy(np.load(tmp_path / "val.npy"))
    assert torch.equal(embedded, own[32]) and not torch.allclose(embedded, own[None], atol=1e-3)
    # Label i is one class in every split, the training folder's i-th, whatever val holds: here val
    # lacks a class and has one train has not.
    classes = (tmp_path / "train_classes.txt").read_text().splitlines()
    assert len(classes) == 10 and classes == sorted(classes)
    val = tmp_path / "imagenet" / "val"
    (val / classes[0]).rename(val / "zebra")
    shutil.rmtree(val / classes[1])
    embed(run / "checkpoints" / "last.pt", tmp_path / "odd.npy", split="val")
    assert f"{val} has class folders that {train} has not (zebra); their images are labeled -1" \
        in capsys.readouterr().err
    assert (tmp_path / "odd_classes.txt").read_text().splitlines() == classes
    labels = np.load(tmp_path / "odd_labels.npy")
    folders = [p.split("/")[-2] for p in (tmp_path / "odd_paths.txt").read_text().splitlines()]
    assert [classes[y] if y >= 0 else "?" for y in labels] == [c if c != "zebra" else "?" for c in folders]
    assert 0 not in labels and 1 not in labels and (labels == -1).sum() == 2
    main_error(capsys, "embed", run / "checkpoints" / "last.pt", "--out", tmp_path / "x.npy", "--split", "nonsense")


@pytest.mark.parametrize("monitor_off_between", [False, True])
def test_a_resume_after_images_were_added_names_the_images_the_random_init_knn_was_scored_on(
        tmp_path, capsys, monitor_off_between):
    """A user test: images and a class added to ROOT/train and ROOT/val before a resume; the closing table set the
    accuracy at random init (3 classes, 90 / 30 images) beside the end's with the end's counts (4 classes,
    120 / 40), as if both were of the same images. A review: a resume between with the monitor off
    (train.knn_every=-1) wrote checkpoints without the init's counts, and the next resume lost them."""
    from byol.cli import main
    train = extract_jpegs(tmp_path / "imagenet" / "train", per_class=3)
    val = extract_jpegs(tmp_path / "imagenet" / "val", per_class=2)
    run = tmp_path / "run"
    args = ["pretrain", "--config", "cifar10", "--data.dataset=folder", f"--data.root={train}",
            "--data.image_size=16", "--data.workers=0",
            *tiny_overrides(run, **{"train.batch_size": 6, "train.knn_every": 0, "train.knn_limit": "null",
                                    "train.max_steps": 1, "data.limit": "null"})]
    assert main(args) == 0
    assert "kNN top-1 at random init (30 train / 20 val images)" in capsys.readouterr().out
    for split, n in ((train, 2), (val, 1)):  # more images of a class, and a new class in both splits
        for name in ("airplane", "zebra"):
            (split / name).mkdir(exist_ok=True)
            for i in range(n):
                shutil.copy(next((split / "cat").iterdir()), split / name / f"new{i}.jpg")
    resume = ["pretrain", "--resume", f"--train.out_dir={run}"]
    if monitor_off_between:
        assert main([*resume, "--train.max_steps=2", "--train.knn_every=-1"]) == 0
        capsys.readouterr()
    assert main([*resume, "--train.max_steps=3", "--train.knn_every=0"]) == 0
    out = capsys.readouterr().out
    assert "kNN top-1 (k=200 > 34: all vote, 34 train / 22 val images)" in out, out
    assert "kNN top-1 at random init (30 train / 20 val images)" in out, out  # what it was scored on


def test_a_run_folder_inside_the_data_root_is_not_read_as_images(cli, tmp_path, capsys):
    """A run whose train.out_dir lies inside its data.root (the default runs/byol, started from the
    data folder) writes its plots there: --resume, eval and embed leave its folder out, with a note,
    and see the 30 images and 10 classes its first start saw (not the plots, nor a class "runs")."""
    train = extract_jpegs(tmp_path / "data" / "train", per_class=3)
    extract_jpegs(tmp_path / "data" / "val", per_class=2)
    run = train / "runs" / "r"
    pretrain = ["pretrain", "--config", "cifar10", "--data.dataset=folder", f"--data.root={train}",
                "--data.image_size=32", "--data.workers=0"]
    settings = {"train.batch_size": 8, "train.knn_every": -1, "data.limit": "null"}  # 3 steps an epoch
    cli(*pretrain, *tiny_overrides(run, **settings))
    assert (run / "loss.png").is_file()  # what a scan of train/ would find
    left_out = f"note: left out {run}: a byol run's folder (its plots are not data)"
    proc = cli(*pretrain, "--resume", *tiny_overrides(run, **settings, **{"train.epochs": 2}))
    assert proc.stderr.count(left_out) == 1 and "the data now makes" not in proc.stderr, proc.stderr
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 6
    from byol.cli import main
    assert main(["eval", "knn", str(run / "checkpoints" / "last.pt"), "--k", "5"]) == 0
    out, err = capsys.readouterr()
    assert "30 train / 20 val images" in out and err.count(left_out) == 1, err
    assert main(["embed", str(run / "checkpoints" / "last.pt"), "--out", str(tmp_path / "emb.npy"),
                 "--split", "train"]) == 0
    assert capsys.readouterr().err.count(left_out) == 1
    paths = (tmp_path / "emb_paths.txt").read_text().splitlines()
    assert len(paths) == 30 and not [p for p in paths if "runs" in p]
    assert (tmp_path / "emb_classes.txt").read_text().splitlines() == sorted(os.listdir(tmp_path / "data" / "val"))


def test_bad_input_gives_one_sentence_and_exit_2(cli, tmp_path, trained):
    assert_user_error(cli("pretrain", "--data.root", tmp_path / "nowhere", check=False))  # not key=value
    assert_user_error(cli("pretrain", f"--data.root={tmp_path / 'nowhere'}", *tiny_overrides(tmp_path / "r1"),
                          check=False), "nowhere")
    assert_user_error(cli("pretrain", "--train.epohcs=3", check=False), "unknown config key 'train.epohcs'")
    assert_user_error(cli("pretrain", "--config", "cifar11", check=False), "unknown preset")
    assert_user_error(cli("pretrain", "--model.backbone=resnet200", check=False), "model.backbone must be one of")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert_user_error(cli("eval", "knn", bad, check=False), str(bad))
    assert_user_error(cli("eval", "knn", tmp_path / "missing.pt", check=False), "does not exist")
    run, _ = trained
    cut = tmp_path / "cut.pt"
    data = (run / "checkpoints" / "last.pt").read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    assert_user_error(cli("eval", "linear", cut, check=False), "corrupt or truncated")


def test_resume_without_checkpoint_and_occupied_run_dir(cli, tmp_path, trained):
    run, _ = trained
    assert_user_error(cli("pretrain", "--resume", f"--train.out_dir={tmp_path / 'fresh'}", check=False),
                      "cannot resume")
    before = (run / "checkpoints" / "last.pt").read_bytes()
    assert_user_error(cli("pretrain", f"--train.out_dir={run}", check=False), "--resume")
    assert (run / "checkpoints" / "last.pt").read_bytes() == before  # nothing already written is lost


def test_a_new_run_keeps_a_config_written_by_hand_in_its_folder(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    mine = f"train:\n  out_dir: {run}\n  epochs: 1  # mine\n"
    (run / "config.yaml").write_text(mine)
    _, line = main_error(capsys, "pretrain", "--config", run / "config.yaml", "--train.epochs=2")
    assert f"{run / 'config.yaml'} was not written by byol" in line and "choose another train.out_dir" in line, line
    assert (run / "config.yaml").read_text() == mine  # before: replaced by the resolved config, epochs 2


@pytest.mark.parametrize("args, fragment", [
    (["eval", "knn", "x.pt", "--k", "-3"], "argument --k: must be >= 1, got -3"),
    (["eval", "knn", "x.pt", "--k", "20", "0"], "argument --k: must be >= 1, got 0"),
    # (a user test: the checkpoint after --k's values was taken for one, and the message did not say so)
    (["eval", "knn", "--k", "20", "200", "runs/x.pt"], "argument --k: must be a whole number >= 1, got 'runs/x.pt': "
     "--k takes every value after it, so give the checkpoint before --k (byol eval knn CHECKPOINT --k 20 200)"),
    (["eval", "knn", "x.pt", "--k", "2.5"], "argument --k: must be a whole number >= 1, got '2.5'"),
    (["eval", "knn", "x.pt", "--temperature", "0"], "argument --temperature: must be a finite number > 0"),
    (["eval", "knn", "x.pt", "--temperature", "inf"], "argument --temperature: must be a finite number > 0, got inf"),
    (["eval", "knn", "x.pt", "--temperature", "warm"], "argument --temperature: must be a number > 0, got 'warm'"),
    (["eval", "knn", "--k", "20", "x.pt"], "got 'x.pt': --k takes every value after it, so give the checkpoint "
     "before --k"),  # a checkpoint by its suffix alone: no folder, and not there
    (["eval", "knn", "x.pt", "--limit", "0"], "argument --limit: must be >= 1, got 0"),
    (["eval", "linear", "x.pt", "--limit", "-5"], "argument --limit: must be >= 1, got -5"),
    (["eval", "linear", "x.pt", "--epochs", "0"], "argument --epochs: must be >= 1, got 0"),
    (["eval", "linear", "x.pt", "--epochs", "-2"], "argument --epochs: must be >= 1, got -2"),
    (["eval", "linear", "x.pt", "--epochs", "ten"], "argument --epochs: must be a whole number >= 1, got 'ten'"),
    (["embed", "x.pt", "--out", "e.npy", "--limit", "-3"], "argument --limit: must be >= 1, got -3"),
    (["eval", "knn", "x.pt", "--holdout", "-1"], "argument --holdout: must be >= 0, got -1"),
    (["eval", "knn"], "the following arguments are required: checkpoint"),  # argparse's own, on one line
    # an empty path (a shell variable not set) was ".": export wrote into the working folder, eval took its default
    (["export", "x.pt", "--out", ""], "argument --out: is empty; give a value (a shell variable that is not set?)"),
    (["eval", "knn", "x.pt", "--out="], "argument --out: is empty; give a value"),
    (["embed", "x.pt", "--out", ""], "argument --out: is empty; give a value"),
    (["embed", "x.pt", "--out", "e.npy", "--split", ""], "argument --split: is empty; give a value"),  # the default
    (["eval", "linear", ""], "argument checkpoint: is empty; give a value"),  # was ". is a directory"
    ([], "give one of pretrain, eval, embed, export (see byol --help)"),  # "required: command" (a user test)
    (["eval"], "give one of knn, linear (see byol eval --help)"),  # "required: protocol", named nowhere
    # two configs (not merged: the last was taken alone), --download contradicted (a user test)
    (["pretrain", "--config", "a.yaml", "--config=b.yaml"], "--config is given twice (a.yaml and b.yaml), and configs "
     "are not merged: give one, and what changes it as --section.key=value"),
    (["pretrain", "--download", "--data.download=false"], "--download and --data.download are both given; keep one"),
    (["pretrain", "--config="], "the config is empty; give a preset name"),  # it was the cifar10 preset
    (["pretrain", "--confg", "x.yaml"], "unrecognized option '--confg'; see byol pretrain --help; config keys are"),
    # where a misplaced option belongs (a user test: all said "see byol eval --help")
    (["pretrain", "--epochs", "3"], "unrecognized option '--epochs' (did you mean --train.epochs=...?); see byol "
     "pretrain --help"),
    (["pretrain", "--batch-size=8"], "(did you mean --train.batch_size=...?)"),
    (["eval", "knn", "x.pt", "--epochs", "3"], "unrecognized option '--epochs', an option of byol eval linear; see "
     "byol eval knn --help"),
    (["embed", "x.pt", "--out", "e.npy", "--holdout", "3"], "'--holdout', an option of byol eval knn and byol eval "
     "linear; see byol embed --help"),
    (["eval", "knn", "x.pt", "--seed", "3"], "(did you mean --train.seed=...?); see byol eval knn --help"),
    # (a mutation audit: the branches below were untested) a checkpoint with no suffix, but in a folder, after --k;
    # a folder given to --resume; embed without its --out
    (["eval", "knn", "x.pt", "--k", "20", "runs/last"], "got 'runs/last': --k takes every value after it, so give "
     "the checkpoint before --k"),
    (["pretrain", "--resume=runs/c10"], "argument --resume: takes no value, or auto (continue if there is a "
     "checkpoint), got 'runs/c10'; the run's folder is --train.out_dir=..."),
    (["embed", "x.pt"], "the following arguments are required: --out"),
    # an option before the command: argparse took its value for the command ("invalid choice: '5'")
    (["eval", "--k", "5", "knn", "x.pt"], "option '--k' (an option of byol eval knn) is given before the command; "
     "give it after the command (see byol eval --help)"),
    (["--limit", "4", "embed", "x.pt"], "option '--limit' (an option of byol eval knn and byol eval linear and byol "
     "embed) is given before the command; give it after the command (see byol --help)"),
    (["eval", "5", "knn", "x.pt"], "'5' is not a command of byol eval: choose knn, linear"),
    (["pretrian"], "'pretrian' is not a command of byol: choose pretrain, eval, embed, export"),
    # a mistyped command after a setting or a flag, which may come first: the word is wrong, not the option (a review)
    (["eval", "--data.root=d", "knnn", "x.pt"], "'knnn' is not a command of byol eval: choose knn, linear"),
    (["eval", "--random-init", "knnn", "x.pt"], "'knnn' is not a command of byol eval: choose knn, linear"),
    (["--train.epochs=3", "pretrian"], "'pretrian' is not a command of byol: choose pretrain, eval, embed, export"),
    # what a new user types wrong, each said with its fix (a user test: "unrecognized argument '--data.root'; config
    # keys are set as --section.key=value", '—config' the same, argparse's "ignored explicit argument")
    (["pretrain", "--data.root", "../x"], "--data.root is given without '=': a config key takes its value after "
     "'=', as --data.root=../x"),
    (["eval", "knn", "x.pt", "--train.device", "cpu"], "as --train.device=cpu"),
    (["pretrain", "\u2014config", "cifar10"], "'\u2014config' starts with '\u2014', not '--' (a dash pasted from a web "
     "page?): type --config"),
    (["eval", "knn", "x.pt", "\u2013out=a.json"], "not '--' (a dash pasted from a web page?): type --out=a.json"),
    (["pretrain", "--config", "cifar10", " "], "a blank argument ' ' is given (a backslash before a space at a "
     "line's end?); remove it"),
    (["eval", "knn", "x.pt", "-k", "5"], "unrecognized option '-k' (did you mean --k?); see byol eval knn --help"),
    (["pretrain", "-c", "cifar10"], "unrecognized option '-c'; see byol pretrain --help"),
    (["eval", "knn", "x.pt", "y.pt"], "unrecognized argument 'y.pt': byol eval knn takes one checkpoint (see byol "
     "eval knn --help)"),
    (["pretrain", "cifar10"], "unrecognized argument 'cifar10': a preset or a YAML file is given as --config cifar10"),
    (["pretrain", "run.yaml"], "unrecognized argument 'run.yaml': a preset or a YAML file is given as --config "
     "run.yaml"),  # (a file's name, not a preset's)
    (["pretrain", "--data.root", "--train.epochs=3"], "as --data.root=VALUE"),  # (the next word is no value)
    (["eval", "knn", "x.pt", "--random-init=1"], "argument --random-init: takes no value, got '1'; give "
     "--random-init alone"),
    (["help"], "'help' is not a command of byol: choose pretrain, eval, embed, export (for help: byol --help)"),
])
def test_bad_arguments_are_one_sentence_before_anything_runs(capsys, args, fragment):
    _, line = main_error(capsys, *args)
    assert fragment in line, line


def test_a_bad_k_after_the_checkpoint_is_not_told_to_move_the_checkpoint(capsys):
    for k in ("2OO", "2.5", "twenty"):  # (a review: the hint came for any value that is no number)
        _, line = main_error(capsys, "eval", "knn", "x.pt", "--k", "20", k)
        assert line.endswith(f"argument --k: must be a whole number >= 1, got '{k}'"), line


def test_a_sigterm_handler_set_from_c_is_followed_by_the_default_not_an_error(capsys, monkeypatch):
    """main() puts back the SIGTERM handler it found; one set from C (an embedding program's, or a
    library's) reads as None, which signal.signal refuses: the default takes its place."""
    import signal
    from byol import cli
    real, found = signal.signal, []

    def from_c(signum, handler):
        previous = real(signum, handler)
        if signum == signal.SIGTERM and not found:
            found.append(previous)
            return None  # as signal.signal answers for a handler it did not set
        return previous

    monkeypatch.setattr(cli.signal, "signal", from_c)
    try:
        main_error(capsys, "eval", "knn")  # any command: the handler is set and put back around each
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        real(signal.SIGTERM, found[0] if found and found[0] is not None else signal.SIG_DFL)


def test_torchrun_s_sigterm_after_a_peer_was_killed_is_said_as_the_lost_peer_not_a_termination(capsys, monkeypatch):
    """A user test: rank 1 of one torchrun killed (-9), rank 0's all_reduce failed ("Connection reset by peer"), and
    torchrun's SIGTERM came while that failure was handled (the run's plots drawn): rank 0 said
    "byol: terminated (SIGTERM)", as though the user had stopped it, not that another process ended."""
    import signal
    from byol import cli
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    for name in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT"):  # no agent's store to ask
        monkeypatch.delenv(name, raising=False)

    def run(argv):
        try:
            raise RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:47532: Connection reset by "
                               "peer. This is typically caused by a remote worker hanging")
        except RuntimeError:
            signal.raise_signal(signal.SIGTERM)  # torchrun's stop of the processes left, as the plots were drawn
            raise

    monkeypatch.setattr(cli, "run", run)
    assert cli.main(["pretrain"]) == 1
    err = capsys.readouterr().err
    assert "terminated" not in err, err
    assert err.startswith("byol: stopped: another process of this torchrun run ended while this one waited for it "
                          "(Connection reset by peer"), err
    assert err.count("byol:") == 1, err


def test_a_run_into_a_folder_another_run_is_writing_is_one_sentence_and_writes_nothing(tmp_path, capsys):
    import fcntl
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".byol.lock", "a+") as held:  # as a run on another node holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 4242 on node7\n")
        held.flush()
        _, line = main_error(capsys, "pretrain", *tiny_overrides(run))
        assert f"another byol run (pid 4242 on node7) is writing to {run} now" in line, line
    assert [p.name for p in run.iterdir()] == [".byol.lock"]


def test_model_settings_are_refused_where_the_model_comes_from_the_checkpoint(capsys, trained, tmp_path):
    ckpt = trained[0] / "checkpoints" / "last.pt"
    for args in (["eval", "knn", ckpt], ["embed", ckpt, "--out", tmp_path / "e.npy"]):
        _, line = main_error(capsys, *args, "--model.width=16", "--train.device=cpu")
        assert "--model.width cannot be set here" in line and "comes from the checkpoint" in line, line
        _, line = main_error(capsys, *args, "--augment.preset=paper")  # another mean and std: other features
        assert "--augment.preset cannot be set here: the encoder's input normalization" in line, line
    _, line = main_error(capsys, "export", ckpt, "--out", tmp_path / "x", "--model.width=16")
    assert "--model.width" in line and "comes from the checkpoint" in line, line
    assert not (tmp_path / "x").exists()


def test_settings_given_to_eval_and_embed_are_checked_as_pretrain_checks_them(capsys, tmp_path):
    """An existing run's config is not checked again, but the settings given on top of it are (eval
    took --data.limit=0 and --data.image_size=0 without a word)."""
    from byol.backbones import resnet
    path = tmp_path / "encoder.pt"
    torch.save(resnet("resnet18", cifar_stem=True, width=8).state_dict(), path)
    for args, message in ((["eval", "knn", path, "--data.workers=-1"], "data.workers must be >= 0"),
                          (["eval", "linear", path, "--data.image_size=0"], "data.image_size must be >= 8"),
                          (["embed", path, "--out", tmp_path / "e.npy", "--data.load_size=0"],
                           "data.load_size must be >= 8 or null")):
        _, line = main_error(capsys, *args, "--model.width=8", "--train.device=cpu")
        assert line == f"byol: error: {message}", line


def test_a_broken_tqdm_or_matplotlib_is_a_note_and_the_run_completes(monkeypatch, capsys, tmp_path, cifar10_root):
    """A packaging test: with tqdm or matplotlib that cannot be imported (dependencies, but an install can
    break), pretrain ended in a traceback at its bar or at its first checkpoint's plots."""
    from byol.cli import main
    for name in ("tqdm", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    run = tmp_path / "run"
    assert main(["pretrain", "--config", "cifar10-cpu", f"--data.root={cifar10_root}",
                 *tiny_overrides(run, **{"train.progress": True, "train.knn_every": -1})]) == 0
    err = capsys.readouterr().err
    assert "note: tqdm cannot be imported (ModuleNotFoundError: import of tqdm halted; None in sys.modules); no " \
        "progress bars are drawn" in err, err
    assert err.count("note: matplotlib cannot be imported (ModuleNotFoundError: import of matplotlib.backends."
                     "backend_agg halted") == 1, err
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "metrics.jsonl").is_file()
    assert not list(run.rglob("*.png"))


def test_data_limit_is_refused_by_eval_and_embed_which_take_limit(capsys, tmp_path):
    """--data.limit (how many images pretraining trains on) was taken by eval and embed and did
    nothing: now one sentence pointing at --limit, before the checkpoint is read."""
    missing = tmp_path / "nothing_here.pt"  # (said before the checkpoint's path is: a review found it after)
    for args in (["eval", "knn", missing], ["eval", "linear", missing],
                 ["embed", missing, "--out", tmp_path / "e.npy"]):
        _, line = main_error(capsys, *args, "--data.limit=100")
        assert line == "byol: error: --data.limit does not apply to byol eval or embed (it is how many images " \
                       "pretraining trains on); use --limit N (limit=N from Python) for the first N images of each " \
                       "split", line


def test_outputs_that_cannot_be_written_are_one_sentence_and_keep_the_results(capsys, trained, tmp_path,
                                                                             monkeypatch):
    ckpt = trained[0] / "checkpoints" / "last.pt"
    # eval --out a directory: refused before the evaluation (no bar, no table: nothing was computed).
    out, line = main_error(capsys, "eval", "knn", ckpt, "--limit", 40, "--out", tmp_path)
    assert out == "", out
    assert line == (f"byol: error: cannot write {tmp_path}: a folder is in the way where a file is needed; "
                    "choose another --out")
    # export --out an existing file: refused, the file left as it was.
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    _, line = main_error(capsys, "export", ckpt, "--out", taken)
    assert line == (f"byol: error: cannot write {taken}: a file is in the way where a folder is needed; "
                    "choose another --out")
    assert taken.read_text() == "keep me"
    _, line = main_error(capsys, "embed", ckpt, "--out", taken / "e.npy", "--limit", 8)  # before extracting: no bar
    assert f"cannot write {taken}" in line and "a file is in the way where a folder is needed" in line, line
    # A place that takes no files, found before the work by a probe (as root, permissions do not stop it).
    _, line = main_error(capsys, "embed", ckpt, "--out", "/proc/e.npy", "--limit", 8)
    assert line.startswith("byol: error: cannot write /proc"), line
    assert not list(tmp_path.glob("*.npy"))
    # Read-only once the work is done (the probe passed; the error is made here): eval's table comes first.
    import errno
    import pathlib

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(pathlib.Path, "write_text", read_only)
    monkeypatch.setattr(pathlib.Path, "write_bytes", read_only)  # (written beside, then renamed)
    out, line = main_error(capsys, "eval", "knn", ckpt, "--limit", 40, "--out", tmp_path / "r.json",
                           after_progress=True)
    assert "kNN top-1 (k=20)" in out
    assert line == f"byol: error: cannot write {tmp_path / 'r.json'}: Read-only file system; choose another --out"
    # A disk that fills up while embed writes its second file: the earlier output's files are all kept
    # as they were (each new file is written beside its old one, and renamed only once all are written).
    monkeypatch.undo()
    from byol.cli import main
    assert main(["embed", str(ckpt), "--out", str(tmp_path / "e.npy"), "--limit", "8"]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.glob("e*")}
    write_bytes = pathlib.Path.write_bytes

    def full_disk(path, data):
        if "_labels" in path.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_bytes(path, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk)
    capsys.readouterr()
    _, line = main_error(capsys, "embed", ckpt, "--out", tmp_path / "e.npy", "--limit", 16, after_progress=True)
    # (the file it was writing named, not --out's: a full disk's error names no file, files.naming gives it one)
    assert line == f"byol: error: cannot write {tmp_path / 'e_labels.npy'}: No space left on device; choose another " \
        "--out"
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*") if p.name.startswith(("e", ".e"))} == before


def test_outputs_that_would_replace_what_is_read_are_refused(capsys, trained, tmp_path):
    run = trained[0]
    ckpt = run / "checkpoints" / "last.pt"
    state = ckpt.read_bytes()
    for args in (("eval", "knn", ckpt, "--limit", 40), ("embed", ckpt, "--limit", 8)):
        _, line = main_error(capsys, *args, "--out", ckpt)  # before: the checkpoint became the JSON
        assert line == f"byol: error: {ckpt} is the checkpoint being read; choose another --out"
    config = (run / "config.yaml").read_bytes()
    _, line = main_error(capsys, "export", ckpt, "--out", run)  # before: the run's config.yaml was replaced
    assert line == (f"byol: error: {run} is a run directory (it holds checkpoints/); export into a folder of its "
                    f"own, such as {run / 'export'}")
    assert ckpt.read_bytes() == state and (run / "config.yaml").read_bytes() == config
    # Nor what another checkpoint of a run, or a run's own files, hold (a user test: eval and embed replaced
    # an epoch_N.pt and a run's config.yaml, which then could not be resumed).
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "epoch_0001.pt").write_bytes(state)
    for name in ("config.yaml", "metrics.jsonl"):
        (other / name).write_bytes((run / name).read_bytes())
    before = {p: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    kept = other / "checkpoints" / "epoch_0001.pt"
    for args in (("eval", "knn", ckpt, "--limit", 40), ("embed", ckpt, "--limit", 8)):
        _, line = main_error(capsys, *args, "--out", kept)
        assert line == f"byol: error: {kept} is a training checkpoint, which this would replace; choose another --out"
    for name in ("config.yaml", "metrics.jsonl"):
        _, line = main_error(capsys, "eval", "knn", ckpt, "--limit", 40, "--out", other / name)
        assert line == (f"byol: error: {other / name} is a run's {name}, which this would replace; "
                        "choose another --out")
    assert {p: p.read_bytes() for p in other.rglob("*") if p.is_file()} == before
    # Nor the labels beside an earlier embed's rows (a user test: replaced by a (N, 64) array, without a word)
    from byol.cli import main
    for _ in range(2):  # the same .npy again: its own labels are replaced (a review: refused once, wrongly)
        assert main(["embed", str(ckpt), "--limit", "8", "--out", str(tmp_path / "emb.npy")]) == 0
    labels, _ = (tmp_path / "emb_labels.npy").read_bytes(), capsys.readouterr()
    _, line = main_error(capsys, "embed", ckpt, "--limit", 8, "--out", tmp_path / "emb_labels.npy")
    assert line == (f"byol: error: {tmp_path / 'emb_labels.npy'} holds the labels of emb.npy, an earlier byol embed's "
                    "rows, which this would replace; choose another --out")
    assert (tmp_path / "emb_labels.npy").read_bytes() == labels


def test_embed_removes_no_file_of_a_user_s_own_named_as_its_side_files(capsys, trained, tmp_path):
    """A review: `byol embed --out u.npy` removed a u_classes.txt of the user's own (no u.npy there), as if an
    earlier embed's, and replaced a u_paths.txt; refused now, before the work. An earlier embed's are its own."""
    from byol.cli import main
    ckpt = trained[0] / "checkpoints" / "last.pt"
    for name in ("u_classes.txt", "u_paths.txt", "u_labels.npy"):
        mine = tmp_path / name
        mine.write_text("mine\n")
        _, line = main_error(capsys, "embed", ckpt, "--limit", 8, "--out", tmp_path / "u.npy")
        assert line == (f"byol: error: {mine} is there without u.npy, as no earlier byol embed leaves it; this would "
                        "replace or remove it: move it, or choose another --out")
        assert mine.read_text() == "mine\n" and not (tmp_path / "u.npy").exists()
        mine.unlink()
    assert main(["embed", str(ckpt), "--limit", "8", "--out", str(tmp_path / "u.npy")]) == 0
    (tmp_path / "u_classes.txt").write_text("an earlier embed's\n")  # beside its u.npy: replaced or removed
    assert main(["embed", str(ckpt), "--limit", "8", "--out", str(tmp_path / "u.npy")]) == 0
    assert (tmp_path / "u_classes.txt").read_text() != "an earlier embed's\n"


def test_eval_and_embed_replace_no_model_file_but_an_earlier_embeds(capsys, trained, tmp_path):
    """A user test: `byol embed CKPT --out EXPORT/encoder.pt` replaced the exported encoder with 4 KB of
    embeddings (and the TorchScript file, a user's own state_dict the same way): refused now, as a
    checkpoint is; an earlier embed's .pt is replaced as before."""
    from byol.cli import main
    ckpt = trained[0] / "checkpoints" / "last.pt"
    exported = tmp_path / "exported"
    assert main(["export", str(ckpt), "--out", str(exported)]) == 0
    weights = tmp_path / "improved-net.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), weights)
    held = {exported / "encoder.pt": "a model's weights (written by torch.save)",
            exported / "encoder_torchscript.pt": "a TorchScript module",
            weights: "a model's weights (written by torch.save)"}
    before = {path: path.read_bytes() for path in held}
    for path, what in held.items():
        for args in (("eval", "knn", ckpt, "--limit", 40), ("embed", ckpt, "--limit", 8)):
            _, line = main_error(capsys, *args, "--out", path)
            assert line == f"byol: error: {path} holds {what}, which this would replace; choose another --out"
    assert {path: path.read_bytes() for path in held} == before
    emb = tmp_path / "emb.pt"
    for limit in (8, 4):  # the second replaces the first
        assert main(["embed", str(ckpt), "--out", str(emb), "--limit", str(limit)]) == 0
    assert len(torch.load(emb, weights_only=True)["embeddings"]) == 4


def test_eval_replaces_no_export_json_and_no_embeddings(capsys, trained, tmp_path):
    """A user test: `byol eval knn CKPT --out EXPORT/export.json` replaced what says how to feed the exported
    encoder, and `--out emb.npy` an embed's rows, with the evaluation's JSON: refused now, before the work."""
    from byol.cli import main
    ckpt = trained[0] / "checkpoints" / "last.pt"
    exported = tmp_path / "exported"
    assert main(["export", str(ckpt), "--out", str(exported)]) == 0
    assert main(["embed", str(ckpt), "--limit", "8", "--out", str(tmp_path / "emb.npy")]) == 0
    capsys.readouterr()
    refused = {exported / "export.json": "is an export's export.json, which this would replace",
               exported / "config.yaml": "is an export's config.yaml, which this would replace",
               tmp_path / "emb.npy": "holds embeddings, which this evaluation's JSON would replace",
               tmp_path / "emb_labels.npy": "holds the labels of the embeddings in emb.npy, which this evaluation's "
                                             "JSON would replace"}
    before = {path: path.read_bytes() for path in refused}
    for path, what in refused.items():
        _, line = main_error(capsys, "eval", "knn", ckpt, "--limit", 40, "--out", path)
        assert line == f"byol: error: {path} {what}; choose another --out"
    assert {path: path.read_bytes() for path in refused} == before
    assert main(["export", str(ckpt), "--out", str(exported)]) == 0  # a new export still replaces the earlier one


def test_export_of_an_exported_encoder_into_its_own_folder_is_refused(capsys, trained, tmp_path):
    """Export reads an exported encoder.pt (its config.yaml beside it says what it was trained on) and may replace
    an earlier export's files: its own input is the one it must not replace (a mutation audit: no test read one)."""
    from byol.cli import main
    exported = tmp_path / "exported"
    assert main(["export", str(trained[0] / "checkpoints" / "last.pt"), "--out", str(exported)]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in exported.iterdir()}
    encoder = exported / "encoder.pt"
    _, line = main_error(capsys, "export", encoder, "--out", exported)
    assert line == f"byol: error: {encoder} is the checkpoint being read; choose another --out"
    assert {p: p.read_bytes() for p in exported.iterdir()} == before
    assert main(["export", str(encoder), "--out", str(tmp_path / "again")]) == 0  # into another folder: exported


def test_a_path_the_system_refuses_is_one_sentence(capsys, trained, tmp_path):
    """A user test: a name over 255 bytes (a sweep's out_dir, say) was a traceback in every command; a rename
    refused named the temporary (.metrics.jsonl.tmp123), not the file."""
    from byol.error_lines import _file_error
    ckpt = trained[0] / "checkpoints" / "last.pt"
    long = tmp_path / ("x" * 300)
    for args in (("eval", "knn", ckpt, "--limit", 8, "--out", f"{long}.json"),
                 ("embed", ckpt, "--limit", 8, "--out", f"{long}.npy"),
                 ("pretrain", "--config", "cifar10-cpu", f"--train.out_dir={long}")):
        _, line = main_error(capsys, *args)
        assert line.startswith(f"byol: error: {long}") and \
            line.endswith(": File name too long; choose a shorter path"), line
    assert not any(tmp_path.iterdir())
    refused = PermissionError(1, "Operation not permitted", str(tmp_path / ".metrics.jsonl.tmp5"), None,
                              str(tmp_path / "metrics.jsonl"))
    assert _file_error(refused) == (f"{tmp_path / 'metrics.jsonl'}: Operation not permitted; check the path and its "
                                    "permissions, or choose another")
    # a path as bytes or a file descriptor's number (from a review: the handler itself failed on them), and an
    # error that is byol's own bug (EXDEV, EBADF), which keeps its traceback
    import errno
    assert _file_error(FileNotFoundError(errno.ENOENT, "No such file or directory", b"/x/y")) == \
        "/x/y: No such file or directory; check the path and its permissions, or choose another"
    assert _file_error(OSError(errno.EBADF, "Bad file descriptor", 99999)) is None
    assert _file_error(OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b")) is None
    # what the system says of a path otherwise (from a review: byol's own torn-temporary EBUSY, a name a vfat or SMB
    # folder takes as EINVAL, a stale NFS handle) is one sentence too
    assert _file_error(OSError(errno.EBUSY, "removed as a torn temporary again and again", "/x/.m.jsonl.tmp7")) == \
        "/x/m.jsonl: removed as a torn temporary again and again; check the path and its permissions, or choose another"


def test_an_export_that_cannot_be_written_leaves_no_folder_it_made(capsys, trained, tmp_path, monkeypatch):
    """A user test on a full disk: `byol export` said so in one sentence, but left its new folder, empty."""
    import errno
    import byol.exports

    def full_disk(files):
        raise OSError(errno.ENOSPC, "No space left on device", str(next(iter(files))))
    monkeypatch.setattr(byol.exports, "write_files_atomically", full_disk)
    out = tmp_path / "new" / "export"
    _, line = main_error(capsys, "export", trained[0] / "checkpoints" / "last.pt", "--out", out)
    assert line == f"byol: error: cannot write {out / 'encoder.pt'}: No space left on device; choose another --out"
    assert list(tmp_path.iterdir()) == []


def test_the_functions_say_bad_input_as_byol_errors_and_return_usable_paths(trained, tmp_path):
    """A user test of the Python API: its errors shared no base and none was importable from byol; export
    returned its config as a bare name; embed(path, out, [overrides]) read the overrides as the split."""
    import byol
    from conftest import CIFAR10
    ckpt = trained[0] / "checkpoints" / "last.pt"
    for name in ("ConfigError", "DataError", "CheckpointError", "OutputError"):
        assert issubclass(getattr(byol, name), byol.ByolError)
    assert issubclass(byol.reporting.NonFiniteLossError, byol.ByolError)  # a setting's fault too (the lr's)
    for call in (lambda: byol.embed(ckpt, tmp_path / "e.txt"), lambda: byol.knn(tmp_path / "none.pt"),
                 lambda: byol.knn(ckpt, ["--train.epochz=3"]), lambda: byol.export(ckpt, trained[0])):
        with pytest.raises(byol.ByolError):
            call()
    with pytest.raises(TypeError, match=r"split must be the name of a split, such as 'test', got list \['--data"):
        byol.embed(ckpt, tmp_path / "e.npy", [f"--data.root={CIFAR10}"])
    info = byol.export(ckpt, tmp_path / "export")
    for key, name in (("state_dict", "encoder.pt"), ("torchscript", "encoder_torchscript.pt"),
                      ("config", "config.yaml")):
        assert info[key] == str(tmp_path / "export" / name) and Path(info[key]).is_file()


def test_export_replaces_an_earlier_export_but_not_a_folders_own_files(capsys, trained, tmp_path):
    """A folder holding a config.yaml (or an export.json, encoder.pt) that no export wrote is refused; before, an
    export into it replaced that file."""
    ckpt = trained[0] / "checkpoints" / "last.pt"
    for name, text in (("config.yaml", "lr: 3\n"), ("export.json", '{"mine": 1}\n'), ("encoder.pt", "weights")):
        mine = tmp_path / name.replace(".", "_")
        mine.mkdir()
        (mine / name).write_text(text)
        _, line = main_error(capsys, "export", ckpt, "--out", mine)
        assert line == (f"byol: error: {mine} holds {name}, which this would replace, and no byol export wrote it "
                        f"(no export.json of one is beside it); export into a folder of its own, such as "
                        f"{mine / 'export'}")
        assert [p.name for p in mine.iterdir()] == [name] and (mine / name).read_text() == text
    from byol.cli import main
    out = tmp_path / "exported"
    assert main(["export", str(ckpt), "--out", str(out)]) == 0
    first = (out / "encoder.pt").read_bytes()
    (out / "encoder.pt").write_bytes(b"stale")
    with warnings.catch_warnings(record=True) as caught:  # it warned of torch.load reading the TorchScript file
        warnings.simplefilter("always")
        assert main(["export", str(ckpt), "--out", str(out)]) == 0  # an earlier export's files are replaced
    assert [str(w.message) for w in caught] == []
    assert (out / "encoder.pt").read_bytes() == first
    written = (out / "export.json").read_text()
    old = {"state_dict": str(out / "encoder.pt"), "torchscript": str(out / "encoder_torchscript.pt"),
           "backbone": "resnet18", "cifar_stem": True, "width": 8, "input": {}}  # as exports before 1 Dec wrote it
    (out / "export.json").write_text(json.dumps(old))  # (they were refused: 'no byol export wrote')
    assert main(["export", str(ckpt), "--out", str(out)]) == 0 and (out / "export.json").read_text() == written


def test_a_linear_probe_with_one_train_image_is_one_sentence(capsys, trained):
    """A user test: --limit 1 (or a --holdout of all but one) ended in a traceback from linear_probe."""
    ckpt = trained[0] / "checkpoints" / "last.pt"
    _, line = main_error(capsys, "eval", "linear", ckpt, "--limit", 1, "--epochs", 1)
    assert line == ("byol: error: the linear probe needs at least 2 train images (it standardizes the "
                    "features by their spread), got 1; raise --limit, or lower --holdout")


def test_data_not_found_on_eval_points_to_data_root(capsys, trained, tmp_path, monkeypatch):
    from byol.pipeline import knn
    from conftest import CIFAR10
    ckpt = trained[0] / "checkpoints" / "last.pt"
    (tmp_path / "empty").mkdir()
    for args in (["eval", "linear", ckpt], ["embed", ckpt, "--out", tmp_path / "e.npy"]):
        _, line = main_error(capsys, *args, f"--data.root={tmp_path / 'empty'}")
        assert "cifar10" in line and "point --data.root=" in line and "--download" not in line, line
    # A run from before data.root was stored absolute: relative to where pretrain ran, found from its
    # checkpoint's place in the run directory (BASE/out_dir/checkpoints/last.pt).
    state = torch.load(ckpt, weights_only=True)
    base = tmp_path / "project"
    state["config"]["data"]["root"] = os.path.relpath(CIFAR10, base)
    state["config"]["train"]["out_dir"] = "runs/old"
    old = base / "runs" / "old" / "checkpoints" / "last.pt"
    old.parent.mkdir(parents=True)
    torch.save(state, old)
    elsewhere = tmp_path / "a" / "b" / "c"  # not base's depth: the relative path leads nowhere from here
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    result = knn(old, limit=30)
    assert result["n_test"] == 30 and set(result["knn_top1"]) == {20, 200}  # ints from Python (JSON: strings)
    assert f"using {CIFAR10.resolve()}" in capsys.readouterr().err
    # --train.out_dir is a pretraining setting, named as ignored: it does not move that search either
    assert knn(old, ["--train.out_dir=other/place"], limit=30)["n_test"] == 30
    err = capsys.readouterr().err
    assert f"using {CIFAR10.resolve()}" in err and "train.out_dir" in err and "ignored" in err, err


def test_eval_and_embed_show_progress_on_a_terminal_only(capsys, trained, tmp_path, monkeypatch):
    """As pretrain's train.progress: auto by default (a log file, stderr not a terminal, filled with the
    bars' redrawings, \r by \r, on a large folder), true for a | tee or a notebook, false."""
    import sys
    from byol.cli import main
    from byol.pipeline import linear
    ckpt = trained[0] / "checkpoints" / "last.pt"
    linear_args = ["eval", "linear", str(ckpt), "--limit", "40", "--epochs", "2", "--train.device=cpu"]
    for terminal, given, shown in ((True, [], True), (False, [], False), (False, ["--train.progress=true"], True),
                                   (True, ["--train.progress=false"], False)):
        monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
        assert main([*linear_args, *given, "--out", str(tmp_path / f"l{terminal}{given}.json")]) == 0
        err = capsys.readouterr().err
        for bar in ("train features", "test features", "/40 [", "img/s", "linear probe", "/2 [", "epoch/s"):
            assert (bar in err) is shown, err
        assert "ignored" not in err  # train.progress is read here, not a pretraining setting
        assert main(["embed", str(ckpt), *given, "--out", str(tmp_path / f"e{terminal}{given}.npy"), "--limit",
                     "8"]) == 0
        assert ("embeddings:" in capsys.readouterr().err) is shown
    linear(ckpt, limit=40, epochs=2)  # the library is quiet unless asked
    assert capsys.readouterr().err == ""


def test_eval_and_embed_say_how_far_they_are_in_lines_where_no_bar_is_drawn(capsys, trained, tmp_path, monkeypatch):
    """A user test on a large folder: eval knn of 50,000 images said nothing for 72 s in a log (no bar there).
    Where no bar is drawn, a note line says how far each pass is (after 5 s, then every 30 s: here at once)."""
    import sys
    import byol.progress
    from byol.cli import main
    monkeypatch.setattr(byol.progress, "SCAN_NOTES", (0.0, 0.0))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    ckpt = trained[0] / "checkpoints" / "last.pt"
    assert main(["eval", "linear", str(ckpt), "--limit", "40", "--epochs", "2", "--train.device=cpu",
                 "--out", str(tmp_path / "l.json")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "/40 [" not in err, err  # no bar
    for pass_ in (r"train features: 40 images in \d+ s", r"test features: 40 images in \d+ s",
                  r"linear probe: 1 of 2 epochs, \d+ s, [\d,.]+ epoch/s, about \d:\d\d:\d\d left"):
        assert re.search(f"^note: {pass_}$", err, re.M), (pass_, err)
    assert "40 of 40 images" not in err, err  # a pass in one batch: its end's line only (not the same twice)
    assert main(["embed", str(ckpt), "--out", str(tmp_path / "e.npy"), "--limit", "8"]) == 0
    assert re.search(r"^note: embeddings: 8 images in \d+ s$", capsys.readouterr().err, re.M)
    assert main(["eval", "knn", str(ckpt), "--limit", "40", "--train.progress=true",
                 "--out", str(tmp_path / "k.json")]) == 0
    assert "note: train features" not in capsys.readouterr().err  # a bar, where one is asked for


def test_pretrain_help_shows_examples_with_real_presets(capsys):
    from byol.cli import main
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--section.key=value" in text and "examples:" in text
    presets = re.findall(r"byol pretrain --config (\S+)", text)
    assert {"cifar10-cpu", "cifar10"} <= set(presets), text
    for name in presets:  # each example's preset loads, with the example's settings
        line = next(line for line in text.splitlines() if f"--config {name} " in line)
        load_config(name, [w for w in line.split("#")[0].split() if w.startswith("--") and "=" in w])
    # where the keys and presets are, as installed (a packaging test: it said byol/config.py and configs/)
    keys, presets = re.search(r"is in\n  (\S+)\n\(--print-config prints them all, resolved\); the presets, every "
                              r"key they set\ncommented, are\n  (\S+)/\*\.yaml", text).groups()
    assert Path(keys).is_file() and Path(presets, "cifar10-cpu.yaml").is_file(), (keys, presets)


def test_under_torchrun_an_error_is_said_once_or_by_rank(capsys, monkeypatch, tmp_path):
    """Every process of a torchrun job meets a config error alike: rank 0 alone says it (each said
    it). Another error may be one process's own: the others say theirs too, named by rank."""
    from byol.cli import main
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's (a RANK without it is one process's: test_error_lines.py)
    for rank, said in (("0", "byol: error: unknown config key 'train.bogus'"), ("1", None)):
        monkeypatch.setenv("RANK", rank)
        assert main(["pretrain", "--train.bogus=1"]) == 2
        err = capsys.readouterr().err
        assert (said in err) if said else err == "", err
    monkeypatch.setenv("RANK", "1")
    assert main(["eval", "knn", str(tmp_path / "nope.pt")]) == 2
    assert capsys.readouterr().err.startswith("byol: error (rank 1): ")


def test_under_torchrun_a_stop_is_said_once(capsys, monkeypatch):
    """torchrun passes a SIGTERM (or Ctrl-C) on to every process, and stops the others with a SIGTERM when one
    fails: each said 'byol: terminated (SIGTERM)' (a user test: twice for one scancel; and after rank 0's
    error, rank 1's line read as if the job had been cancelled). Rank 0 alone says it; the codes are kept."""
    import signal
    import time
    from byol import cli
    monkeypatch.setenv("WORLD_SIZE", "2")

    def terminated(argv):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler raises first

    def interrupted(argv):
        raise KeyboardInterrupt
    for run, code, said in ((terminated, 143, "byol: terminated (SIGTERM)\n"),
                            (interrupted, 130, "byol: interrupted\n")):
        monkeypatch.setattr(cli, "run", run)
        for rank, err in (("0", said), ("1", "")):
            monkeypatch.setenv("RANK", rank)
            assert cli.main(["pretrain"]) == code
            assert capsys.readouterr().err == err


def test_under_torchrun_an_error_is_said_once_and_a_peer_s_failure_as_such(capsys, monkeypatch, tmp_path):
    """The processes tell each other through the store of torchrun's agent (here one of the test's own): an
    error both meet alike is said once, by the first (a user test: the same sentence from each rank); and rank
    0, stopped by torchrun's SIGTERM after rank 1 failed, or by the collective it waited in failing, says that
    rank 1 failed, not 'byol: terminated (SIGTERM)' nor a traceback of the collective."""
    import signal
    import time
    from datetime import timedelta
    from torch.distributed import TCPStore
    from byol import cli, peers
    store = TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=10))
    for name, value in (("TORCHELASTIC_USE_AGENT_STORE", "True"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", str(store.port)), ("TORCHELASTIC_RUN_ID", "test"),
                        ("TORCHELASTIC_RESTART_COUNT", "0")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(peers, "_store", None)
    nope = tmp_path / "nope.pt"
    for rank, said in (("1", f"byol: error (rank 1): checkpoint {nope} does not exist\n"), ("0", "")):
        monkeypatch.setenv("RANK", rank)
        assert cli.main(["eval", "knn", str(nope)]) == 2
        assert capsys.readouterr().err == said

    def terminated(argv):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler raises first

    def collective_failed(argv):
        raise RuntimeError("[../gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:1435")
    stopped = "byol: stopped: rank 1 of this torchrun run failed (its error is said above)\n"
    monkeypatch.setattr(cli, "run", terminated)
    for rank, err in (("0", stopped), ("1", "")):  # (said once, by rank 0)
        monkeypatch.setenv("RANK", rank)
        assert cli.main(["pretrain"]) == 143
        assert capsys.readouterr().err == err
    monkeypatch.setattr(cli, "run", collective_failed)
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["pretrain"]) == 1
    assert capsys.readouterr().err == stopped
    # In the agent's next start of the processes no process has failed yet: a SIGTERM is the user's, and a
    # collective's failure is a process lost without a word (its node down), not this one's failure; an error of
    # byol's own is its traceback (said to the others first)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    monkeypatch.setattr(cli, "run", terminated)
    assert cli.main(["pretrain"]) == 143
    assert capsys.readouterr().err == "byol: terminated (SIGTERM)\n"
    monkeypatch.setattr(cli, "run", collective_failed)
    assert cli.main(["pretrain"]) == 1
    assert capsys.readouterr().err.startswith("byol: stopped: another process of this torchrun run ended while "
                                              "this one waited")
    assert not store.check(["byol/test/1/failed"])

    def bug(argv):
        raise RuntimeError("a bug of byol's")
    monkeypatch.setattr(cli, "run", bug)
    with pytest.raises(RuntimeError, match="a bug of byol's"):
        cli.main(["pretrain"])
    assert store.get("byol/test/1/failed") == b"0"


def test_every_help_fits_80_columns_and_gives_each_option_s_default(capsys, monkeypatch):
    """At COLUMNS=80 no line of a --help is wider (a user test: pretrain's description and examples ran to 118
    columns), but a path alone on its line, as long as where byol is installed; and every option that takes a
    value and may be left out says its default (a user test: --limit said none); and every command says what it
    does and writes (eval, its knn and linear, embed and export said nothing above their options)."""
    from byol.arguments import _commands
    from byol.cli import main
    monkeypatch.setenv("COLUMNS", "80")
    for command, sub in [("", None), *_commands()]:
        with pytest.raises(SystemExit):
            main([*command.split(), "--help"])
        wide = [line for line in capsys.readouterr().out.splitlines() if len(line) > 80 and " " in line.strip()]
        assert not wide, (command, wide)
        assert sub is None or sub.description, command
        for action in sub._actions if sub else ():
            if action.option_strings and action.nargs != 0 and action.const is None and not action.required:
                assert "default" in action.help, (command, action.option_strings)


def test_eval_s_help_shows_its_examples_each_on_a_line_of_its_own(capsys, monkeypatch):
    """The examples below eval's options, as written: a help formatter that reflows them ran each command into the
    next (a mutation audit: only that a description is there was tested)."""
    from byol.cli import main
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    lines = capsys.readouterr().out.splitlines()
    assert "examples:" in lines
    for example in ("  byol eval knn runs/c10/checkpoints/last.pt", "  byol eval knn runs/c10/checkpoints/last.pt "
                    "--random-init", "  # the data moved since the run",
                    "  byol eval knn runs/c10/checkpoints/last.pt --data.root=DATA"):
        assert example in lines, (example, lines)


def test_eval_and_embed_help_name_every_setting_they_read(capsys):
    from byol.cli import main
    from byol.eval_arguments import SETTINGS_READ
    for command in SETTINGS_READ:
        with pytest.raises(SystemExit):
            main([*command.split(), "--help"])
        text = " ".join(capsys.readouterr().out.split())  # unwrapped
        assert all(f"--{key}" in text for key in SETTINGS_READ[command]), (command, text)


def test_help_and_usage_errors_answer_without_loading_torch():
    """``byol --help``, a mistyped command and (a packaging test: 3-6 s here) pretrain's unknown setting,
    preset or a value of the wrong type answer at once: importing torch and torchvision alone takes
    seconds. In a fresh interpreter, as the ``byol`` command runs."""
    script = ("import sys\nfrom byol.cli import main\nfor argv in (['pretrain', '--help'], ['--help']):\n"
              "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0\n"
              "assert main(['eval', 'knn']) == 2 and main(['pretrain', 'x']) == 2\n"
              "for argv in (['--train.bogus=1'], ['--config', 'nosuch'], ['--train.epochs=abc'],\n"
              "             ['--train.epoch=3']):\n"
              "    assert main(['pretrain', *argv]) == 2\n"
              "for argv in (['eval', 'knn', 'nosuch.pt'], ['embed', '.', '--out', 'e.npy'],\n"
              "             ['export', 'x', '--out', 'y']):\n"
              "    assert main(argv) == 2\n"  # a mistyped checkpoint (3 s, a wall-clock audit), a folder
              "print('torch' in sys.modules, 'torchvision' in sys.modules)")
    proc = _fresh_python(script)
    assert proc.stdout.strip().splitlines()[-1] == "False False", proc.stdout
    assert proc.stderr.count("byol: error: ") == 9 and "Traceback" not in proc.stderr, proc.stderr
    assert "byol: error: checkpoint nosuch.pt does not exist\n" in proc.stderr
    assert "byol: error: . is a directory; give a checkpoint file in it" in proc.stderr
    import byol  # the public names are still there, loaded on first use
    assert {"BYOL", "pretrain", "knn", "keep_freed_memory"} <= set(dir(byol)) and callable(byol.BYOL)
    assert set(byol.__all__) == set(byol._EXPORTS) and all(getattr(byol, name) is not None for name in byol.__all__)


def test_the_feature_and_evaluation_building_blocks_import_no_torchvision():
    """byol.features and byol.evaluate, for features of a network of one's own, import torch alone: a review found
    a change that made them import torchvision too (147 modules; 2.3 s to 4.1 s to import here, on a busy machine)."""
    proc = _fresh_python("import sys, byol.features, byol.evaluate\n"
                         "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'torchvision'}))")
    assert proc.stdout.strip() == "['torch']", proc.stdout


def _fresh_python(script: str) -> subprocess.CompletedProcess:
    """``script`` run in a fresh interpreter, as the ``byol`` command or a notebook starts; it must exit 0."""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_the_building_blocks_are_attributes_of_a_bare_import_byol():
    """docs/python_api.md: "The building blocks ... byol.augment, ..., byol.optim.LARS, byol.evaluate":
    after ``import byol`` alone, byol.schedules was an AttributeError, and byol.augment
    one until something else had imported it. In a fresh interpreter, as a notebook starts."""
    script = ("import byol\nprint(byol.schedules.cosine_lr(0, 10, 1.0), byol.augment.paper_views(32)[0].size,\n"
              "      byol.loss.byol_loss, byol.ema.update_target, byol.optim.LARS, byol.evaluate.knn_accuracy,\n"
              "      byol.color.solarize, sep='|')\n"
              "try:\n    byol.nonexistent\nexcept AttributeError as e:\n    print(e)")
    lines = _fresh_python(script).stdout.strip().splitlines()
    assert lines[0].startswith("1.0|32|<function byol_loss"), lines
    assert lines[1] == "module 'byol' has no attribute 'nonexistent'"


def test_a_bare_torchvision_state_dict_is_evaluated_as_the_architecture_its_keys_say(capsys, tmp_path,
                                                                                       cifar10_root):
    """No config travels with a plain torchvision state_dict: its architecture is read from its keys
    and shapes (a torchvision stem here); --model.* given over it that does not match says both."""
    torch.manual_seed(0)
    path = tmp_path / "tv_r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    common = ("--limit", 40, "--k", 5, f"--data.root={cifar10_root}", "--train.device=cpu",
              "--out", tmp_path / "r.json")
    from byol.cli import main
    assert main(["eval", "knn", str(path), *map(str, common)]) == 0
    out, err = capsys.readouterr()
    assert "kNN top-1 (k=5)" in out
    assert json.loads((tmp_path / "r.json").read_text())["knn_top1"]
    # The input it is fed is assumed, said (CIFAR: its normalization, ImageNet's; a folder's size too), unless given
    assert f"note: {path} has no config.yaml beside it, so nothing says what its encoder was trained on: its " \
        "input is taken to be augment.preset=paper (ImageNet's mean and std, as torchvision's pretrained weights" \
        in err and "give --augment.preset if it was not (--augment.preset=cifar for an encoder pretrained" in err, err
    assert json.loads((tmp_path / "r.json").read_text())["mean"] == [0.485, 0.456, 0.406]
    assert main(["eval", "knn", str(path), *map(str, common), "--augment.preset=cifar"]) == 0
    assert "no config.yaml" not in capsys.readouterr().err
    assert json.loads((tmp_path / "r.json").read_text())["mean"] == [0.4914, 0.4822, 0.4465]
    # export would write that guess into export.json as what to feed the encoder: refused
    _, line = main_error(capsys, "export", path, "--out", tmp_path / "exported")
    assert "is a bare state_dict with no config.yaml beside it, so nothing says what its encoder was trained on" \
        in line and not (tmp_path / "exported").exists(), line
    _, line = main_error(capsys, "eval", "knn", path, *common, "--model.cifar_stem=true")
    assert "no config.yaml beside it; its keys say model.backbone=resnet18, model.cifar_stem=false, model.width=64, " \
        "read as model.backbone=resnet18, model.cifar_stem=true, model.width=64 as given" in line, line


def test_eval_of_a_folder_path_with_no_name_is_one_sentence(capsys):
    _, line = main_error(capsys, "eval", "knn", ".")
    assert "is a directory; give a checkpoint file in it" in line, line


def test_a_narrow_encoder_at_an_odd_batch_trains_on_the_cpu(tmp_path, cifar10_root):
    """torch 2.14's oneDNN corrupts the heap (abort or segfault) in channels_last at an odd batch
    with a ResNet narrower than 16 (step.channels_last_crash); such a run trains in NCHW, and says so."""
    # float32: a CPU with bf16 arithmetic trains in bf16 (train.precision=auto), whose kernels do not crash, and
    # the run passed there with channels_last; in float32 it crashes in its first 2 steps (20 were run)
    args = ["pretrain", "--config", "cifar10-cpu", f"--data.root={cifar10_root}", *tiny_overrides(
        tmp_path / "run", **{"train.batch_size": 13, "data.limit": 26, "train.knn_every": -1,
                             "train.precision": "fp32"})]  # 2 steps
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # the crash needs two threads (not the byol helper's one)
    proc = subprocess.run([sys.executable, "-m", "byol", *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-500:])
    assert "pretraining done" in proc.stdout and "trains in NCHW" in proc.stderr


def test_a_narrow_encoder_at_larger_views_trains_on_the_cpu(tmp_path, cifar10_root):
    """The same heap corruption at an even batch with views larger than 32x32 (a user test's
    cifar10-cpu at --data.image_size=224 aborted in its first backward, and at 128): NCHW, said."""
    args = ["pretrain", "--config", "cifar10-cpu", f"--data.root={cifar10_root}", *tiny_overrides(
        tmp_path / "run", **{"train.batch_size": 16, "data.image_size": 128, "data.limit": 32, "train.knn_every": -1,
                             "train.precision": "fp32"})]  # float32, as above
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "byol", *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-500:])
    assert "pretraining done" in proc.stdout and "trains in NCHW, not channels_last, on the CPU (views of 128x128)" \
        in proc.stderr


def test_an_encoder_narrower_than_8_trains_on_the_cpu(tmp_path, cifar10_root):
    """The same heap corruption at any batch with strided 1x1 convolutions of 2 to 7 input channels (a user test:
    --model.width=2 or 4 aborted, segfaulted or, with two threads, hung in its first steps): NCHW, said."""
    args = ["pretrain", "--config", "cifar10-cpu", f"--data.root={cifar10_root}", *tiny_overrides(
        tmp_path / "run", **{"model.width": 2, "train.batch_size": 32, "data.image_size": 16, "train.knn_every": -1})]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread aborts at once; two may hang
    proc = subprocess.run([sys.executable, "-m", "byol", *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-500:])
    assert "pretraining done" in proc.stdout and ("this narrow encoder trains in NCHW, not channels_last, on the CPU "
                                                  "(a strided 1x1 convolution narrower than 8 channels)") in proc.stderr


def test_channels_last_is_given_up_only_where_it_crashes():
    from byol.backbones import resnet
    from byol import BYOL
    from byol.step import channels_last_crash
    cpu = torch.device("cpu")

    def learner(width, concat=False):
        return BYOL(resnet("resnet18", cifar_stem=True, width=width), image_size=16, projection_size=8,
                    projection_hidden_size=16, concat_views=concat)

    assert channels_last_crash(learner(8), 13, cpu) == "an odd batch of 13" and channels_last_crash(learner(8), 1, cpu)
    assert channels_last_crash(learner(8), 12, cpu) is None
    assert channels_last_crash(learner(8, concat=True), 13, cpu) is None  # both views in one batch of 26
    assert channels_last_crash(learner(16), 13, cpu) is None
    assert channels_last_crash(learner(8), 13, torch.device("cuda")) is None  # cuDNN: not this bug
    assert channels_last_crash(learner(8), 16, cpu, image_size=64) == "views of 64x64"  # even batches, larger views
    assert channels_last_crash(learner(8, concat=True), 13, cpu, image_size=33)
    assert channels_last_crash(learner(8), 256, cpu, image_size=32) is None  # the cifar10-cpu preset's 24 keeps it
    assert channels_last_crash(learner(16), 16, cpu, image_size=224) is None
    assert channels_last_crash(learner(8), 16, torch.device("cuda"), image_size=224) is None
    for width in (2, 4, 6):  # 2 to 7 input channels crash at any batch and size
        assert channels_last_crash(learner(width), 32, cpu, image_size=16) == (
            "a strided 1x1 convolution narrower than 8 channels")
    assert channels_last_crash(learner(4), 32, torch.device("cuda"), image_size=16) is None


def test_a_run_with_a_held_out_knn_monitor_says_so_and_how_many_images_it_scored(capsys, tmp_path, cifar10_root):
    """train.knn_holdout: the closing table names the held-out train images, as many as knn_limit leaves."""
    from byol.cli import main
    args = ["pretrain", "--config", "cifar10", f"--data.root={cifar10_root}",
            *tiny_overrides(tmp_path / "run", **{"train.max_steps": 1, "train.knn_holdout": 1000, "train.knn_limit": 64})]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "kNN top-1 (k=200 > 64: all vote, 64 train / 64 held-out train images)" in out, out
    assert "kNN top-1 at random init (64 train / 64 held-out train images)" in out, out
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"  # eval of the same held-out images, written apart from test's
    assert main(["eval", "knn", str(ckpt), "--holdout", "1000", "--limit", "40", "--k", "5"]) == 0
    result = json.loads((ckpt.parent / "last_knn_holdout.json").read_text())
    assert (result["test_split"], result["n_train"], result["n_test"]) == ("held-out train", 40, 40)
    assert result["data_root"] == os.path.abspath(cifar10_root)  # (a user test: the JSON did not say which data)
    assert "40 train / 40 held-out train images" in capsys.readouterr().out
    assert main(["eval", "knn", str(ckpt), "--holdout", "0", "--limit", "40", "--k", "5"]) == 0  # 0: off, as in Python
    assert "40 train / 40 test images" in capsys.readouterr().out


def test_an_out_dir_that_starts_with_a_tilde_is_in_the_home_folder(tmp_path, monkeypatch, cifar10_root):
    """``--train.out_dir=~/runs/t``: the shell leaves the ~ after =, and a folder named ~ was made in
    the working directory (a user test); it is the home folder's, for a new run and a resumed one."""
    from byol.checkpoint import load_checkpoint
    from byol.cli import main
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    settings = [f"--data.root={cifar10_root}", *tiny_overrides("~/runs/t", **{"train.max_steps": 2})]
    assert main(["pretrain", "--config", "cifar10", *settings]) == 0
    assert main(["pretrain", "--resume", *settings, "--train.max_steps=4"]) == 0
    assert load_checkpoint(tmp_path / "home" / "runs" / "t" / "checkpoints" / "last.pt")["step"] == 4
    assert not (tmp_path / "~").exists()


def test_resume_auto_starts_a_run_where_there_is_no_checkpoint_and_continues_it_where_there_is(
        tmp_path, cifar10_root, capsys):
    """One command for a job's first start and its requeues (the job script had to look for last.pt itself)."""
    import byol
    from byol.checkpoint import load_checkpoint
    from byol.cli import main
    from byol.run_folder import resumes
    run = tmp_path / "run"
    settings = [f"--data.root={cifar10_root}", *tiny_overrides(run, **{"train.knn_every": -1})]
    args = ["pretrain", "--config", "cifar10", "--resume=auto", *settings]
    assert main([*args, "--train.max_steps=2", "--optim.momentum=0.8"]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2
    err = capsys.readouterr().err  # which way it went, for a job's log (a user test: it said neither)
    assert f"note: --resume=auto: no {run / 'checkpoints' / 'last.pt'}, so a new run starts there\n" in err
    assert "resuming" not in err
    assert main([*args, "--train.max_steps=3"]) == 0
    state = load_checkpoint(run / "checkpoints" / "last.pt")  # with the run's own config.yaml, not the preset's
    assert state["step"] == 3 and state["config"]["optim"]["momentum"] == 0.8
    err = capsys.readouterr().err
    assert f"note: resuming {run} from step 2 " in err and "differ from it and are not used" in err, err
    assert "a new run starts" not in err  # (a mutation audit: said of a resume too, it went unnoticed)
    config = byol.load_config("cifar10", [*settings, "--train.max_steps=4"])
    byol.pretrain(config, resume="auto")  # Python's, the same
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4
    with pytest.raises(ValueError, match="resume must be True, False or \"auto\", got 'yes'"):
        byol.pretrain(config, resume="yes")
    capsys.readouterr()
    _, line = main_error(capsys, "pretrain", "--resume", str(run))  # (a user test: the run's folder given to it)
    assert line.endswith(f"takes no value, or auto (continue if there is a checkpoint), got {str(run)!r}; the run's "
                         "folder is --train.out_dir=..."), line
    (run / "checkpoints" / "last.pt").rename(run / "checkpoints" / "epoch_0001.pt")  # kept epochs, no last.pt: refused
    _, line = main_error(capsys, *args)  # with the copy that resumes, not after a note that a new run starts
    assert line.startswith(f"byol: error: {run} already holds a run (checkpoints/epoch_0001.pt)") and \
        line.endswith("; to resume from checkpoints/epoch_0001.pt, copy it to checkpoints/last.pt first"), line
    (run / "checkpoints" / "epoch_0001.pt").rename(run / "checkpoints" / "last.pt")
    assert not resumes("auto", tmp_path / "new") and capsys.readouterr().err == ""  # pretrain says it, on rank 0
    other = tmp_path / "other"  # any refusal of the folder comes alone (a review: the note came before them all)
    other.mkdir()
    (other / "checkpoints").write_text("")
    _, line = main_error(capsys, "pretrain", "--config", "cifar10", "--resume=auto", f"--data.root={cifar10_root}",
                         *tiny_overrides(other))
    assert "is a file where the run keeps its checkpoints/ folder" in line, line


def test_a_resume_with_another_knn_k_sets_the_last_accuracy_against_random_init_at_a_k_measured_both_times(
        capsys, tmp_path, cifar10_root):
    """The random-init record has k=20 and the run's k; a resume with a new train.knn_k has no random-init
    accuracy at it, so the closing table adds the pair at k=20, which both records hold."""
    from byol.cli import main
    args = ["pretrain", "--config", "cifar10", f"--data.root={cifar10_root}",
            *tiny_overrides(tmp_path / "run", **{"train.max_steps": 1, "train.knn_every": 0, "train.knn_limit": 64})]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["pretrain", "--resume", f"--train.out_dir={tmp_path / 'run'}", "--train.max_steps=2",
                 "--train.knn_k=50"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"kNN top-1 \(k=50, 64 train / 64 test images\) +\d+\.\d\d%", out), out
    pairs = [re.search(rf"kNN top-1 {what}\(k=20, 64 train / 64 test images\) +(\d+\.\d\d)%", out)
             for what in ("", "at random init ")]
    assert all(pairs), out
    init = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
            if r["step"] == 0 and "eval/knn_top1_k20" in r]
    assert f"{init[0]['eval/knn_top1_k20']:.2f}" == pairs[1].group(1)  # the run's start, as logged


def _with_stdout_gone(*args, stderr_gone=False) -> subprocess.CompletedProcess:
    """``byol ARGS`` whose stdout (and with ``stderr_gone`` its stderr) is a pipe whose reader has ended."""
    read, write = os.pipe()
    os.close(read)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    try:
        return subprocess.run([sys.executable, "-m", "byol", *map(str, args)], stdout=write,
                              stderr=write if stderr_gone else subprocess.PIPE, text=True, env=env, timeout=600)
    finally:
        os.close(write)


def test_an_evaluation_whose_result_cannot_be_written_leaves_no_empty_file(trained, tmp_path, capsys, monkeypatch):
    """A user test on a full disk: eval left a 0-byte last_knn.json, which the next eval kept as an earlier result."""
    import errno
    from byol.cli import main
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    ckpt = run / "checkpoints" / "last.pt"
    assert main(["eval", "knn", str(ckpt), "--limit", "50", "--k", "5"]) == 0
    earlier = (ckpt.parent / "last_knn.json").read_text()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # where a full disk shows, at the latest
    assert main(["eval", "knn", str(ckpt), "--limit", "50", "--k", "5"]) == 2
    assert "No space left on device; choose another --out" in capsys.readouterr().err
    assert not (ckpt.parent / "last_knn.json").exists() and (ckpt.parent / "last_knn.1.json").read_text() == earlier


def test_a_command_whose_output_pipe_is_gone_does_its_work_and_exits_0(trained, tmp_path):
    """A user test: `byol export ... | true` (or `| head`) wrote its files, then ended in a BrokenPipeError
    traceback and exit 1 at its table; with stderr gone too (`2>&1 | ...`), at its first note."""
    checkpoint = trained[0] / "checkpoints" / "last.pt"
    proc = _with_stdout_gone("export", checkpoint, "--out", tmp_path / "export")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert (tmp_path / "export" / "export.json").is_file()
    proc = _with_stdout_gone("eval", "knn", checkpoint, "--limit", "20", "--k", "5", "--out", tmp_path / "knn.json",
                             stderr_gone=True)
    assert proc.returncode == 0 and set(json.loads((tmp_path / "knn.json").read_text())["knn_top1"]) == {"5"}
    assert _with_stdout_gone("pretrain", "--help").returncode == 0


def test_a_tilde_after_an_equals_sign_is_the_home_folder(tmp_path, monkeypatch, capsys):
    """The shell leaves `~` in `--out=~/x` (it expands it only at a word's start): `--out=~/k.json` wrote
    into a folder named `~` (a user test); `--data.root=~/x` and `--train.out_dir=~/x` were expanded."""
    from byol.cli import main
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    for args, said in ((["eval", "knn", "--out=~/k.json", "~/run/last.pt"], "checkpoint "),
                       (["pretrain", "--config=~/c.yaml"], "config file ")):
        assert main(args) == 2
        assert f"byol: error: {said}{tmp_path / 'home'}" in capsys.readouterr().err
    assert not (tmp_path / "~").exists()


def test_version(capsys):
    from byol import __version__
    from byol.cli import main
    for flag in ("--version", "-V"):
        with pytest.raises(SystemExit) as e:
            main([flag])
        assert e.value.code == 0 and capsys.readouterr().out == f"byol {__version__}\n"


def test_a_storage_error_in_a_thread_is_said_once_by_the_command_not_as_the_thread_s_traceback(monkeypatch, capsys):
    """TensorBoard's writer thread meets a full disk first: its traceback came before the run's own."""
    import errno
    import threading
    from byol import cli
    said = []  # what the threads' hook is given to print
    monkeypatch.setattr(threading, "excepthook", said.append)
    hook = threading.excepthook

    def full_disk(argv):
        def write():
            raise OSError(errno.ENOSPC, "No space left on device")
        writer = threading.Thread(target=write)
        writer.start()
        writer.join()
        raise OSError(errno.ENOSPC, "No space left on device")  # as the writer raises it again in the run

    monkeypatch.setattr(cli, "run", full_disk)
    assert cli.main(["export", "x.pt", "--out", "y"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("byol: error: could not write to the disk (No space left on device); ") and \
        "Exception in thread" not in err and "Traceback" not in err, err
    assert said == [] and threading.excepthook is hook


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count the open descriptors")
def test_a_stream_lost_without_a_file_descriptor_leaves_no_descriptor_open():
    """A closed stdout, or one with no descriptor (pytest's capsys, a notebook's), that is lost: the /dev/null
    descriptor opened to redirect it stayed open, one more for each such command (found by a state check)."""
    from byol.streams import LosableStream

    def descriptors() -> set:
        return set(os.listdir("/proc/self/fd"))

    closed = io.StringIO()
    closed.close()
    for stream in (io.StringIO(), closed):
        lost = LosableStream(stream)
        before = descriptors()
        lost._lose()
        assert lost.lost and len(descriptors() - before) == 1  # the /dev/null the stream now writes to
        lost._stream.close()
        assert descriptors() <= before


def test_a_character_that_a_redirected_stdout_cannot_encode_is_written_escaped():
    """Imitating Windows, where stdout redirected to a file or a pipe takes the ANSI code page (cp1252):
    `byol eval knn 数据/last.pt > out.txt` ended in a UnicodeEncodeError traceback at its results' table,
    after the work was done."""
    from byol.streams import LosableStream
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="cp1252")
    stream = LosableStream(out)
    assert stream.write("run directory  runs/数据/é\n") == len("run directory  runs/数据/é\n")
    stream.flush()
    assert raw.getvalue() == "run directory  runs/\\u6570\\u636e/é\n".encode("cp1252") and not stream.lost


def test_a_stopped_run_says_where_it_stopped_its_checkpoint_and_the_files_it_skipped():
    """A user test at ImageNet scale: the closing table counts the skipped files, and the line of a
    run stopped by a signal (a scheduler's cancel), which has no table, did not."""
    from byol.reporting import stop_line
    results = {"stopped_by": "SIGTERM", "step": 1200, "checkpoint": "run/checkpoints/last.pt"}
    start = "stopped by SIGTERM at step 1200; checkpoint saved to run/checkpoints/last.pt"
    assert stop_line(results) == start + "; continue with --resume"
    assert stop_line({**results, "skipped_files": 1}) == (
        start + "; 1 unreadable file skipped so far (listed in skipped_files.txt); continue with --resume")
    assert stop_line({**results, "skipped_files": 12_345}).endswith(
        "; 12,345 unreadable files skipped so far (listed in skipped_files.txt); continue with --resume")


def test_the_closing_table_says_a_knn_of_features_that_are_not_finite_in_words_not_as_nan_percent():
    """A diverged run's kNN monitor scores NaN (knn_accuracy refuses such features; the run goes on): its table said
    "nan%", as if an accuracy (a review)."""
    from byol.cli import _pretrain_rows
    results = {"step": 10, "knn_images": (300, 20, "val"), "knn": {20: math.nan, 200: math.nan},
               "knn_init": {20: 12.5, 200: 10.0}}
    rows = dict(_pretrain_rows(Config(), results))
    assert rows["kNN top-1 (k=200, 300 train / 20 val images)"] == ("not scored: the encoder's features are NaN or "
                                                                   "infinite (a diverged run?)")
    assert rows["kNN top-1 at random init (300 train / 20 val images)"] == "10.00%"
    nan = "not scored: the encoder's features are NaN or infinite (a diverged run?)"
    results["knn_init"] = {200: math.nan}  # (an encoder of one's own whose random init gives such features)
    assert dict(_pretrain_rows(Config(), results))["kNN top-1 at random init (300 train / 20 val images)"] == nan
    results["knn_init"] = {20: math.nan}  # a resume asked for another k: the pair at k=20, both in words
    rows = dict(_pretrain_rows(Config(), results))
    assert rows["kNN top-1 (k=20, 300 train / 20 val images)"] == nan
    assert rows["kNN top-1 at random init (k=20, 300 train / 20 val images)"] == nan


def test_the_closing_table_says_how_many_images_the_run_trains_on_and_where():
    """A user test: a folder of 100,000 images said its count nowhere (but in warm-up's steps, if at all)."""
    from byol.cli import _pretrain_rows
    from byol.config import load_config
    rows = _pretrain_rows(Config(), {"step": 10, "train_images": (100_000, "/data/big/train")})
    assert rows[:2] == [("steps", "10"), ("training images", "100,000 (/data/big/train)")]
    limited = load_config("cifar10", ["--data.limit=600"])
    assert dict(_pretrain_rows(limited, {"step": 1, "train_images": (600, "cifar10's train split")}))[
        "training images"] == "600 (cifar10's train split, data.limit)"
    limited = load_config("cifar10", ["--data.limit=100000"])  # above the split's size: all of it, no cut said
    assert dict(_pretrain_rows(limited, {"step": 1, "train_images": (50_000, "cifar10's train split")}))[
        "training images"] == "50,000 (cifar10's train split)"
    assert "training images" not in dict(_pretrain_rows(Config(), {"step": 1}))


def test_the_closing_table_counts_the_knn_monitor_s_skipped_files_apart():
    """A user test: a run whose val split had bad files counted them as skipped, as if training images."""
    from byol.cli import _pretrain_rows
    rows = dict(_pretrain_rows(Config(), {"step": 10, "skipped_files": 7, "skipped_monitor_files": 2}))
    assert rows["unreadable files skipped"] == ("7 (2 of them the kNN monitor's, outside the training split; "
                                                "listed in skipped_files.txt)")
    rows = dict(_pretrain_rows(Config(), {"step": 10, "skipped_files": 7, "skipped_monitor_files": 0}))
    assert rows["unreadable files skipped"] == "7 (listed in skipped_files.txt)"
    rows = dict(_pretrain_rows(Config(), {"step": 10, "skipped_files": 2, "skipped_monitor_files": 2}))
    assert rows["unreadable files skipped"] == ("2 (all of them the kNN monitor's, outside the training split; "
                                                "listed in skipped_files.txt)")


def test_eval_and_embed_keep_freed_memory_on_a_cpu_as_pretrain_does_unless_told_not_to(trained, tmp_path,
                                                                                          monkeypatch, capsys):
    """Each batch's transient tensors reuse the last batch's memory (1.6x faster embed on 50,000 images),
    as the checkpoint's train.keep_freed_memory says; --train.keep_freed_memory=false is read, not ignored."""
    import byol.pipeline
    from byol.exports import embed
    from byol.pipeline import knn
    calls = []
    monkeypatch.setattr(byol.pipeline, "keep_freed_memory", lambda: calls.append(1))
    ckpt = trained[0] / "checkpoints" / "last.pt"
    embed(ckpt, tmp_path / "e.npy", limit=8)
    knn(ckpt, limit=40, ks=(5,))
    assert len(calls) == 3  # embed's split; eval's bank and queries
    embed(ckpt, tmp_path / "e.npy", limit=8, overrides=["--train.keep_freed_memory=false"])
    assert len(calls) == 3 and "does not use" not in capsys.readouterr().err


def _fake_evaluations(monkeypatch) -> list:
    """``byol.pipeline.knn`` and ``linear`` replaced by fakes that record the keyword arguments they are given
    and return a result of 10 classes, so that the command line runs alone."""
    import byol.pipeline
    given = []
    fake = {"dataset": "cifar10", "n_train": 40, "n_test": 20, "test_split": "test", "classes": 10, "feature_dim": 64,
            "image_size": 32, "precision": "float32", "device": "cpu", "random_init": False, "step": None,
            "epoch": None}

    def knn(checkpoint, overrides, **kwargs):
        given.append(kwargs)
        return {**fake, "knn_top1": {k: 50.0 for k in kwargs["ks"]}}

    def linear(checkpoint, overrides, **kwargs):
        given.append(kwargs)
        return {**fake, "top1": 50.0, "top5": 90.0, "train_loss": 1.0, "epochs": kwargs["epochs"], "seed": 0}

    monkeypatch.setattr(byol.pipeline, "knn", knn)
    monkeypatch.setattr(byol.pipeline, "linear", linear)
    return given


def test_eval_takes_the_documented_defaults_and_the_least_values_and_names_its_results_by_them(
        monkeypatch, capsys, tmp_path):
    """README and docs/cli.md: k 20 and 200 at T=0.1, 100 epochs of the probe, no holdout; the JSON beside
    the checkpoint, as NAME_knn.json, NAME_knn_random_init.json, NAME_knn_holdout.json. A mutation audit:
    the temperature, the epochs and the holdout's file name could change and no test failed; so could
    the least values each option takes (--k 1, --limit 1, --epochs 1, --holdout 0)."""
    from byol.cli import main
    given = _fake_evaluations(monkeypatch)
    ckpt = tmp_path / "last.pt"
    ckpt.touch()  # (the command line finds the file before it loads torch)
    assert main(["eval", "knn", str(ckpt)]) == 0 and main(["eval", "linear", str(ckpt)]) == 0
    knn, linear = given
    assert (knn["ks"], knn["temperature"], knn["limit"], knn["holdout"], knn["random_init"]) == ((20, 200), 0.1, None,
                                                                                                0, False)
    assert (linear["epochs"], linear["limit"], linear["holdout"], linear["random_init"]) == (100, None, 0, False)
    least = ["--out", os.devnull]
    assert main(["eval", "knn", str(ckpt), "--k", "1", "--limit", "1", "--holdout", "0", "--temperature", "0.05",
                 *least]) == 0
    assert (given[-1]["ks"], given[-1]["limit"], given[-1]["temperature"]) == ((1,), 1, 0.05)
    assert main(["eval", "linear", str(ckpt), "--epochs", "1", "--limit", "1", *least]) == 0
    assert (given[-1]["epochs"], given[-1]["limit"]) == (1, 1)
    for flags in (["--holdout", "5"], ["--random-init"], ["--random-init", "--holdout", "5"]):
        assert main(["eval", "knn", str(ckpt), *flags]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [
        "last_knn.json", "last_knn_holdout.json", "last_knn_random_init.json", "last_knn_random_init_holdout.json",
        "last_linear.json"]
    assert "last_knn.1.json" not in capsys.readouterr().err  # each its own file: none kept as an earlier result


def test_the_last_train_progress_given_to_eval_and_embed_is_taken(monkeypatch, tmp_path):
    """A setting given twice: the last wins (as for pretrain, and as a script adding to common settings expects)."""
    from byol.cli import main
    given = _fake_evaluations(monkeypatch)
    (tmp_path / "x.pt").touch()  # (the command line finds the file before it loads torch)
    for first, last in (("true", "false"), ("false", "true")):
        assert main(["eval", "knn", str(tmp_path / "x.pt"), "--out", os.devnull, f"--train.progress={first}",
                     f"--train.progress={last}"]) == 0
        assert given[-1]["progress"] is True if last == "true" else type(given[-1]["progress"]).__name__ == "LogLines"


@pytest.mark.parametrize("classes, always", [(5, True), (6, False)])
def test_linear_top5_is_said_to_be_always_100_up_to_five_classes(monkeypatch, capsys, tmp_path, classes, always):
    """The boundary of the note (a mutation audit: "< 5" survived): with 5 classes top-5 is every class."""
    import byol.pipeline
    from byol.cli import main
    fake = {"dataset": "folder", "top1": 61.0, "top5": 100.0, "train_loss": 0.5, "epochs": 1, "seed": 0,
            "n_train": 40, "n_test": 20, "test_split": "val", "classes": classes, "feature_dim": 64, "image_size": 37,
            "precision": "float32", "device": "cpu", "random_init": False, "step": None, "epoch": None}
    monkeypatch.setattr(byol.pipeline, "linear", lambda *a, **k: dict(fake))
    (tmp_path / "x.pt").touch()
    assert main(["eval", "linear", str(tmp_path / "x.pt"), "--out", str(tmp_path / "l.json")]) == 0
    assert (f"100.00% (of {classes} classes: always 100)" in capsys.readouterr().out) == always


def test_pretrain_without_config_takes_the_cifar10_preset(monkeypatch, tmp_path):
    """`byol pretrain` with no --config is the cifar10 preset (byol pretrain --help, README): a mutation audit
    found no test that ran it without one."""
    import byol.train
    from byol.cli import main
    taken = []

    class Taken(Exception):
        pass

    def pretrain(config, resume):
        taken.append(config)
        raise Taken

    monkeypatch.setattr(byol.train, "pretrain", pretrain)
    out = f"--train.out_dir={tmp_path / 'run'}"
    with pytest.raises(Taken):
        main(["pretrain", out])
    assert taken[0].to_dict() == load_config("cifar10", [out]).to_dict()


def test_a_process_forked_by_a_command_ends_by_the_signal_it_gets_not_as_the_command(tmp_path):
    """A decoding process forked while eval or embed runs has the command's SIGTERM handler: it must die of
    the signal, as it would have, not raise the command's own stop in the copy of the command it runs
    (which then said "byol: terminated" and went on as the command). A mutation audit: no test forked one."""
    script = (
        "import os, signal, sys\n"
        "from byol import cli\n"
        "def run(argv):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        os._exit(0)\n"
        "    _, status = os.waitpid(pid, 0)\n"
        "    print(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM)\n"
        "    return 0\n"
        "cli.run = run\n"
        "sys.exit(cli.main([]))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "True\n", ""), proc


def test_a_command_run_in_a_thread_not_the_main_one_leaves_the_signals_alone_and_runs(tmp_path, cifar10_root, cli):
    """A notebook's background thread, say: no signal handler can be set there (coverage: such a run was never
    tried)."""
    import signal
    import threading
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    done = {}

    def commands():
        settings = tiny_overrides(tmp_path / "run", **{"train.max_steps": 2, "train.knn_every": -1})
        done["pretrain"] = cli("pretrain", *settings, f"--data.root={cifar10_root}", check=False)
        done["eval"] = cli("eval", "knn", tmp_path / "missing.pt", check=False)

    thread = threading.Thread(target=commands)
    thread.start()
    thread.join()
    assert done["pretrain"].returncode == 0 and "pretraining done" in done["pretrain"].stdout
    assert (done["eval"].returncode, done["eval"].stderr) == (
        2, f"byol: error: checkpoint {tmp_path / 'missing.pt'} does not exist\n")
    assert {s: signal.getsignal(s) for s in handlers} == handlers


def test_a_config_read_from_a_pipe_is_read_once_by_resume_auto(tmp_path):
    """A review: ``--config /dev/stdin --resume=auto`` read the pipe twice (to find the run, then to start or
    resume it), and the second read, empty, was "config /dev/stdin holds no settings", either way."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    new, old = tmp_path / "new", tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    (old / "checkpoints" / "last.pt").write_text("not a checkpoint")
    for run, said in ((new, "does not exist"), (old, "last.pt")):
        text = f"train:\n  out_dir: {run}\ndata:\n  root: {tmp_path / 'no_data'}\n"
        proc = subprocess.run([sys.executable, "-m", "byol", "pretrain", "--config", "/dev/stdin", "--resume=auto"],
                              input=text, capture_output=True, text=True, env=env, timeout=300)
        assert_user_error(proc, said)
        assert "holds no settings" not in proc.stderr


def test_print_config_prints_the_config_a_run_saves_and_writes_nothing(cli, capsys, tmp_path, cifar10_root,
                                                                        monkeypatch):
    """byol pretrain --print-config: the config.yaml the same command's run writes (the preset under the settings
    given, data.root absolute), which --config reads back, and nothing written; with --resume, the run's own config
    under the settings given, refused where the resume would be (a batch size its checkpoint cannot change); refused
    where the start would refuse the folder or the network."""
    run = tmp_path / "run"
    monkeypatch.chdir(cifar10_root.parent)  # data.root relative, as a user gives it: the run saves it absolute
    root = Path(os.getcwd()) / cifar10_root.name  # (the working directory as the OS names it: ../shared may be a link)
    settings = ["pretrain", "--config", "cifar10-cpu", f"--data.root={cifar10_root.name}",
                *tiny_overrides(run, **{"train.max_steps": 1, "train.knn_every": -1})]
    printed = cli(*settings, "--print-config").stdout
    assert not run.exists() and f"root: {root}\n" in printed, printed
    (tmp_path / "printed.yaml").write_text(printed)
    expected = load_config("cifar10-cpu", settings[3:]).to_dict()
    expected["data"]["root"] = str(root)
    assert load_config(str(tmp_path / "printed.yaml")).to_dict() == expected
    cli(*settings)
    assert (run / "config.yaml").read_text() == printed
    listing = sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*"))
    resumed = yaml.safe_load(cli("pretrain", "--resume", f"--train.out_dir={run}", "--train.epochs=3",
                                 "--print-config").stdout)
    assert resumed["train"]["epochs"] == 3 and resumed["model"]["width"] == 8, resumed
    _, line = main_error(capsys, "pretrain", "--resume", f"--train.out_dir={run}", "--train.batch_size=8",
                         "--print-config")
    assert "was trained with train.batch_size=16" in line, line
    _, line = main_error(capsys, "pretrain", "--resume", f"--train.out_dir={tmp_path / 'none'}", "--print-config")
    assert "cannot resume: no checkpoint at" in line, line
    _, line = main_error(capsys, *settings, "--print-config")  # a new run where one is, as its start refuses it
    assert f"{run} already holds a run (checkpoints/last.pt); pass --resume" in line, line
    custom = yaml.safe_load(printed)
    custom["model"]["backbone"] = "custom"  # a run on a network given from Python: its config.yaml, fed back
    (tmp_path / "custom.yaml").write_text(yaml.safe_dump(custom))
    out, line = main_error(capsys, "pretrain", "--config", tmp_path / "custom.yaml",
                           f"--train.out_dir={tmp_path / 'none'}", "--print-config")
    assert out == "" and "model.backbone=custom is a network given from Python" in line, line
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*")) == listing
    assert not (tmp_path / "none").exists()


def test_a_process_of_a_torchrun_run_that_was_lost_is_one_sentence_on_each_node(capsys, monkeypatch):
    """A node killed mid-run (its processes gone without telling torchrun's store) left the others a traceback of
    the all_reduce they waited in (gloo: "Connection reset by peer"), not a sentence; said once a node."""
    from byol import cli
    lost = RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:29072: Connection reset by peer. "
                        "This is typically caused by a remote worker hanging or bugs in the application.")

    def collective_fails(argv):
        raise lost
    monkeypatch.setattr(cli, "run", collective_fails)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)  # (no store: nothing told of the loss)
    monkeypatch.setenv("WORLD_SIZE", "4")
    for rank, local_rank in [(2, 0), (3, 1)]:  # node 1 of two, its rank 1 the one that says it
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        assert cli.main(["pretrain"]) == 1
        said = capsys.readouterr().err
        lines = said.count("byol: stopped: another process of this torchrun run ended while this one waited")
        assert lines == (local_rank == 0), said
        assert "(Connection reset by peer: killed, its node lost, or it exited early, which its own log says); the " \
            "last checkpoint is kept: start the run again with --resume" in said \
            or local_rank, said
    monkeypatch.delenv("WORLD_SIZE")  # outside torchrun the same error is no peer's: a bug, its traceback
    with pytest.raises(RuntimeError, match="Connection reset by peer"):
        cli.main(["pretrain"])


@pytest.mark.parametrize("world, said", [("2", True), ("1", False), ("two", False)])
def test_a_peer_s_connection_closed_is_a_lost_process_in_any_run_of_two_or_more(capsys, monkeypatch, world, said):
    """A mutation audit: the test above gives "reset by peer" on 4 processes with LOCAL_RANK set; gloo's other
    words ("Connection closed by peer"), a run of 2, and a process without LOCAL_RANK (its default: node 0's first)
    were each untested, and WORLD_SIZE that is not a number is not torchrun's: a traceback, as outside it."""
    from byol import cli
    lost = RuntimeError("[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting ... "
                        "Connection closed by peer [10.0.0.2]:29500")

    def collective_fails(argv):
        raise lost
    monkeypatch.setattr(cli, "run", collective_fails)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", world)
    if not said:
        with pytest.raises(RuntimeError, match="Connection closed by peer"):
            cli.main(["pretrain"])
        return
    assert cli.main(["pretrain"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("byol: stopped: another process of this torchrun run ended while this one waited for it "
                          "(Connection closed by peer: ") and err.count("\n") == 1, err
    assert "the last checkpoint is kept" in err, err


def test_pretrain_with_the_reference_colour_ops_runs_and_its_config_yaml_says_so(tmp_path, cifar10_root):
    """augment.color_ops=reference (opt-in) trains through the real command line and is saved with the run."""
    from byol.cli import main
    run = tmp_path / "run"
    assert main(["pretrain", "--config", "cifar10-cpu", f"--data.root={cifar10_root}",
                 "--augment.color_ops=reference",
                 *tiny_overrides(run, **{"train.knn_every": -1, "train.max_steps": 2})]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["augment"]["color_ops"] == "reference"
    assert load_config(str(run / "config.yaml")).augment.color_ops == "reference"
