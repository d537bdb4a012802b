import os
import pickle

import pytest
import torch
from torch import nn

from byol.checkpoint import (CheckpointError, load_checkpoint, load_model_state, save_checkpoint, unwrap)


def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def test_save_is_complete_and_atomic(tmp_path):
    model, opt = make()
    model(torch.randn(8, 3)).sum().backward()
    opt.step()
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(path, model, opt, step=7, config={"train": {"seed": 1}}, generator=torch.Generator())
    assert os.listdir(path.parent) == ["last.pt"]  # no temporary file left behind
    state = load_checkpoint(path)
    assert state["step"] == 7 and state["config"] == {"train": {"seed": 1}}
    assert {"model", "optimizer", "scaler", "rng", "versions"} <= state.keys()
    assert state["optimizer"]["state"]  # momentum buffers are saved
    other, _ = make()
    load_model_state(other, state["model"])
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)


def test_unwrap_removes_compile_wrapper_prefixes():
    model, _ = make()
    compiled = torch.compile(model)
    assert unwrap(compiled) is model
    assert not any(k.startswith("_orig_mod") for k in unwrap(compiled).state_dict())


def test_mismatch_is_a_clear_error(tmp_path):
    model, opt = make()
    save_checkpoint(tmp_path / "a.pt", model, opt, 0, {})
    wrong = nn.Sequential(nn.Linear(3, 5))
    with pytest.raises(CheckpointError, match="does not match this model"):
        load_model_state(wrong, load_checkpoint(tmp_path / "a.pt")["model"])


def test_truncated_and_garbage_files_are_clear_errors(tmp_path, fault_table):
    model, opt = make()
    save_checkpoint(tmp_path / "a.pt", model, opt, 0, {})
    data = (tmp_path / "a.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a byol checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    fault_table("checkpoint truncated to half its size, or empty", "CheckpointError: one sentence, nothing loaded")
    fault_table("file that is not a byol checkpoint", "CheckpointError: one sentence, nothing loaded")


class _WritesAFile:
    """Unpickling this calls ``open(path, "w")``: what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path, fault_table):
    marker = tmp_path / "pwned.txt"
    model, opt = make()
    state = {"model": model.state_dict(), "payload": _WritesAFile(marker)}
    torch.save(state, tmp_path / "evil.pt")
    assert not marker.exists()
    # Sanity: the payload is real; an unsafe load would create the file.
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump(_WritesAFile(tmp_path / "proof.txt"), f)
    with open(tmp_path / "plain.pkl", "rb") as f:
        pickle.load(f).close()
    assert (tmp_path / "proof.txt").exists()
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    fault_table("checkpoint carrying a pickled payload that writes a file when unpickled",
                "refused by weights_only=True with one sentence; the file is never written")
