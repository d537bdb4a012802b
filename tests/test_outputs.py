"""Where commands write: a place that cannot take the file is refused before the work, in one sentence."""

import errno
import json
import os
import tempfile
import zipfile

import pytest
import torch

from byol import outputs


def test_check_writable_probes_only_what_the_writer_needs(tmp_path, monkeypatch):
    existing = tmp_path / "r.json"
    existing.write_text("keep")
    outputs.check_writable(existing)  # an existing file: opened to append, left as it was
    assert existing.read_text() == "keep"
    outputs.check_writable("/dev/null")
    outputs.check_writable(tmp_path / "new" / "deeper" / "e.npy")  # folders to be made: nothing made now
    assert not (tmp_path / "new").exists() and sorted(tmp_path.iterdir()) == [existing]
    with pytest.raises(outputs.OutputError, match="a folder is in the way"):
        outputs.check_writable(tmp_path)
    with pytest.raises(outputs.OutputError, match="a file is in the way"):
        outputs.check_writable(existing / "e.npy")
    monkeypatch.setenv("RANK", "1")  # under torchrun only rank 0 writes, so only it probes
    monkeypatch.setenv("WORLD_SIZE", "2")
    outputs.check_writable(existing / "e.npy")
    monkeypatch.setenv("RANK", "0")

    def no_new_files(*args, **kwargs):  # a folder that takes no new files (as root, permissions do not stop it)
        raise PermissionError(errno.EACCES, "Permission denied", str(kwargs.get("dir")))

    monkeypatch.setattr(tempfile, "TemporaryFile", no_new_files)
    with pytest.raises(outputs.OutputError, match="other.json: Permission denied"):
        outputs.check_writable(tmp_path / "other.json")  # named so, not as the probe's temporary file
    outputs.check_writable(existing)  # but a file there that can be written is fine


def test_eval_results_replace_no_export_file_and_no_embeddings(tmp_path):
    import json

    import numpy as np
    import torch
    export = tmp_path / "export"
    export.mkdir()
    (export / "export.json").write_text(json.dumps({"state_dict": "encoder.pt", "torchscript": "encoder_torchscript.pt",
                                                    "backbone": "resnet18"}))
    (export / "config.yaml").write_text("data: {}\n")
    for name in ("export.json", "config.yaml"):  # what says how to feed the encoder beside them
        with pytest.raises(outputs.OutputError, match=f"is an export's {name}"):
            outputs.check_writable(export / name, results=True)
        outputs.check_writable(export / name, replace_models=True)  # a new export replaces an earlier one's
    np.save(tmp_path / "emb.npy", np.zeros((2, 3), np.float32))
    torch.save({"embeddings": torch.zeros(2, 3), "labels": None}, tmp_path / "emb.pt")
    for name in ("emb.npy", "emb.pt"):
        with pytest.raises(outputs.OutputError, match="holds embeddings, which this evaluation's JSON"):
            outputs.check_writable(tmp_path / name, results=True)
        outputs.check_writable(tmp_path / name)  # embed may replace an earlier embed's
    for name, what in (("emb_classes.txt", "class names"), ("emb_paths.txt", "file paths")):  # beside emb.npy
        (tmp_path / name).write_text("cat\n")
        with pytest.raises(outputs.OutputError, match=f"{name} holds the {what} of the embeddings in emb.npy, which "
                                                      "this evaluation's JSON would replace; choose another --out"):
            outputs.check_writable(tmp_path / name, results=True)
    (tmp_path / "notes_paths.txt").write_text("a\n")  # no notes.npy beside it: a file of the user's, replaced
    outputs.check_writable(tmp_path / "notes_paths.txt", results=True)
    (tmp_path / "r.json").write_text("{}")
    outputs.check_writable(tmp_path / "r.json", results=True)  # an earlier result is replaced
    assert json.loads((export / "export.json").read_text())["backbone"] == "resnet18"


def test_a_whole_pickled_model_is_not_replaced_and_another_zip_is(tmp_path):
    """``torch.save(model)`` (not loadable as weights alone) is a model the output would replace: refused; a zip
    of something else is no model (a coverage audit: neither was run)."""
    model = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), model)
    with pytest.raises(outputs.OutputError, match=r"model\.pt holds what torch.save wrote, which this would replace"):
        outputs.check_writable(model)
    archive = tmp_path / "archive.pt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("notes.txt", "no model")
    outputs.check_writable(archive)  # no error: an earlier output of another kind may be replaced


def test_results_written_to_a_link_or_a_device_go_through_it(tmp_path):
    """`--out /dev/stdout | jq`, or a link to a shared results file: written through, not replaced by a file."""
    target = tmp_path / "shared" / "results.json"
    target.parent.mkdir()
    target.write_text("{}")
    link = tmp_path / "results.json"
    link.symlink_to(target)
    outputs.write_results({"top1": 50.0}, str(link), tmp_path / "default.json")
    assert link.is_symlink() and json.loads(target.read_text()) == {"top1": 50.0}


def test_the_default_results_file_is_not_written_through_a_link_there(tmp_path):
    """A user test: a run folder from elsewhere whose checkpoints/last_knn.json was a link to a file outside it
    (not there yet): eval without --out wrote its results there. The link is replaced by the results."""
    default = tmp_path / "last_knn.json"
    default.symlink_to(tmp_path / "elsewhere.json")
    outputs.write_results({"top1": 50.0}, None, default)
    assert not (tmp_path / "elsewhere.json").exists()
    assert not default.is_symlink() and json.loads(default.read_text()) == {"top1": 50.0}


def test_an_earlier_result_is_kept_by_a_rename_where_the_file_system_has_no_hard_links(tmp_path, monkeypatch):
    """FAT or exFAT, some network and FUSE file systems (coverage: that way was never run)."""

    def no_hard_links(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_hard_links)
    result = tmp_path / "last_knn.json"
    for n in (1, 2):
        result.write_text(f"result {n}")
        assert outputs.keep_earlier(result) == tmp_path / f"last_knn.{n}.json" and not result.exists()
    assert [(tmp_path / f"last_knn.{n}.json").read_text() for n in (1, 2)] == ["result 1", "result 2"]
