import errno
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from byol.checkpoint import (CheckpointError, copy_atomically, load_checkpoint, load_model_state, read_state,
                             rng_state, rng_state_kept, save_checkpoint, unwrap)
from byol.resume import _restore_generators


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
    wrong = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 5), nn.Linear(5, 5))
    with pytest.raises(CheckpointError) as e:
        load_model_state(wrong, load_checkpoint(tmp_path / "a.pt")["model"])
    # Counted, with two examples each, not every key spelled out.
    assert str(e.value) == ("checkpoint does not match this model (different backbone, width, projector sizes or "
                            "predictor?): 4 of the model's keys missing there (e.g. 2.weight, 2.bias); 3 keys the "
                            "model does not have (e.g. 1.running_mean, 1.running_var); 4 of another shape (e.g. "
                            "0.weight (4, 3) vs (5, 3), 0.bias (4,) vs (5,))")


def test_a_state_missing_keys_or_with_extra_ones_but_no_other_shape_is_refused(tmp_path):
    """A mutation audit: loading with strict=False survived every test (each mismatch tested had a shape
    differing too, which non-strict loading also refuses); a checkpoint without the predictor would have
    left the model's own random one in place, without a word."""
    model, opt = make()
    state = model.state_dict()
    fewer = {k: v for k, v in state.items() if k != "1.running_var"}
    with pytest.raises(CheckpointError, match=r"1 of the model's keys missing there \(e.g. 1.running_var\)$"):
        load_model_state(make()[0], fewer)
    with pytest.raises(CheckpointError, match=r"1 keys the model does not have \(e.g. 2.weight\)$"):
        load_model_state(make()[0], {**state, "2.weight": torch.ones(1)})


def test_a_state_with_another_type_where_a_tensor_goes_is_refused_and_leaves_the_model_as_it_was():
    """A review: torch copies every tensor that fits before it refuses an entry that is not a tensor (weights_only
    reads lists and numbers too), and no copy was taken to put back: the model was left all but loaded, refused
    with 'the state does not load'."""
    model, _ = make()
    given = {k: v.clone() for k, v in model.state_dict().items()}
    other = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).state_dict()  # (the generator drawn on: other weights)
    other["1.running_mean"] = [0.0] * 4
    with pytest.raises(CheckpointError, match=r"1 not tensors \(e.g. 1.running_mean list\)$"):
        load_model_state(model, other)
    assert all(torch.equal(v, given[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("extra", [{}, {"ema_step": "many"}, None])
def test_a_learner_s_extra_state_that_is_not_one_is_refused_with_the_model_as_it_was(extra):
    """A review: a checkpoint's _extra_state without its ema_step (edited by hand) ended in a KeyError's traceback."""
    from byol import BYOL
    learner = BYOL(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), image_size=8,
                   hidden_layer=-1, projection_size=4, projection_hidden_size=8)
    given = {k: v.clone() for k, v in learner.state_dict().items() if torch.is_tensor(v)}
    state = {k: v + 1 if torch.is_tensor(v) and v.is_floating_point() else v for k, v in learner.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"does not match this model .*: the state does not load \(_extra_state "
                                              r"is not a BYOL learner's \((KeyError|TypeError|ValueError)"):
        load_model_state(learner, {**state, "_extra_state": extra})
    # (as it was because torch sets the root's extra state before it loads any child, not by load_model_state's
    # copy, which keys and shapes that all fit do not take: a review)
    assert all(torch.equal(v, given[k]) for k, v in learner.state_dict().items() if torch.is_tensor(v))


def test_a_folder_given_as_the_checkpoint_names_the_checkpoint_in_it(tmp_path):
    """Given a run's checkpoints/ folder, the message suggested checkpoints/checkpoints/last.pt."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "encoder.pt").write_bytes(b"")
    last = run / "checkpoints" / "last.pt"
    export = tmp_path / "export"
    for folder, named in ((run, last), (run / "checkpoints", last), (export, export / "encoder.pt")):
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(folder)
        assert str(e.value) == f"{folder} is a directory; give a checkpoint file in it, such as {named}"
    with pytest.raises(CheckpointError, match=r"is a directory; give a checkpoint file in it \(e.g. .*last.pt, or an "
                                              r"exported encoder.pt\)$"):
        load_checkpoint(tmp_path / "export" / "..")  # none in it


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path, fault_table):
    with pytest.raises(CheckpointError, match=f"{tmp_path} is a directory; give a checkpoint file in it"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.pt").write_text("train:\n  epochs: 2\n")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "config.pt")
    torch.jit.script(nn.Linear(3, 4)).save(str(tmp_path / "encoder_torchscript.pt"))
    with pytest.raises(CheckpointError, match="is a TorchScript module .* load it with torch.jit.load"):
        load_checkpoint(tmp_path / "encoder_torchscript.pt")
    fault_table("a folder, a text file or a TorchScript export given as the checkpoint",
                "CheckpointError: one sentence saying what it is and what to give instead")


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"),
                                     RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")])
def test_a_checkpoint_that_cannot_be_written_is_one_sentence_and_keeps_the_previous(tmp_path, monkeypatch, failure,
                                                                                   fault_table):
    said = f"{type(failure).__name__}: {failure}"  # before the write names its file in it (the table: no paths)
    model, opt = make()
    path = tmp_path / "last.pt"
    save_checkpoint(path, model, opt, 1, {})
    before = path.read_bytes()

    def full_disk(state, f):  # what torch.save meets on a full disk: a partial file, then an error
        Path(f).write_bytes(b"PK partial")
        raise failure

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"could not write the checkpoint .*last\.pt \(.*MiB free on that "
                                              r"disk\); the previous one is kept"):
        save_checkpoint(path, model, opt, 2, {})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["last.pt"]  # no partial file left
    fault_table(f"checkpoint write fails ({said}, simulated)",
                "CheckpointError: one sentence with the free space; the previous checkpoint kept, no partial file")


def test_an_error_that_is_not_a_failed_write_is_not_called_one(tmp_path, monkeypatch):
    model, opt = make()

    def broken(state, f):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="illegal memory access") as e:
        save_checkpoint(tmp_path / "last.pt", model, opt, 1, {})
    assert type(e.value) is RuntimeError  # itself, not a CheckpointError (a RuntimeError too) about writing


def test_a_truncated_export_is_told_to_export_again_not_to_copy_an_epoch_over_last_pt(tmp_path):
    """An export's encoder.pt cut short: its remedy is the export, not a run's checkpoints/ (which the
    export folder has not); a run's checkpoint keeps the advice about its kept epochs."""
    for folder in ("export", "run/checkpoints"):
        (tmp_path / folder).mkdir(parents=True)
        torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / folder / "encoder.pt")
        data = (tmp_path / folder / "encoder.pt").read_bytes()
        (tmp_path / folder / "encoder.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "export" / "export.json").write_text('{"state_dict": "encoder.pt"}')
    with pytest.raises(CheckpointError, match=r"corrupt or truncated .*; export it again from its run's checkpoint "
                       r"\(byol export CHECKPOINT --out DIR\)$") as e:
        read_state(tmp_path / "export" / "encoder.pt")
    assert "epoch_NNNN" not in str(e.value)
    with pytest.raises(CheckpointError, match="corrupt or truncated .*epoch_NNNN.pt"):
        read_state(tmp_path / "run" / "checkpoints" / "encoder.pt")


def test_a_truncated_checkpoint_beside_an_export_keeps_the_advice_about_kept_epochs(tmp_path):
    """A review: `byol export RUN/checkpoints/last.pt --out RUN/checkpoints` is allowed and puts export.json beside
    last.pt; a truncated last.pt there was told to export again, from itself. Only the file export.json names is."""
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "export.json").write_text('{"state_dict": "encoder.pt", "torchscript": "encoder_torchscript.pt", '
                                        '"config": "config.yaml", "backbone": "resnet18"}')
    for name in ("last.pt", "encoder.pt"):
        torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, folder / name)
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"corrupt or truncated .*copy it over checkpoints/last.pt\)$"):
        read_state(folder / "last.pt")
    with pytest.raises(CheckpointError, match=r"; export it again from its run's checkpoint"):
        read_state(folder / "encoder.pt")


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


def test_a_checkpoint_with_entries_of_the_wrong_kind_is_one_sentence(tmp_path):
    """A user test: a checkpoint edited or made elsewhere (its config a string, its step text, no RNG states)
    ended a resume in a traceback, and eval or export of it too where its config was not a mapping."""
    from byol.encoders import load_encoder
    whole = {"model": {}, "optimizer": {}, "step": 3, "rng": {}, "config": {"train": {}}}
    path = tmp_path / "last.pt"
    for change, said in (({"config": "oops"}, "its 'config' entry is of type str, not dict"),
                         ({"config": {"train": "oops"}}, "its 'config' entry is not a mapping of sections"),
                         ({"step": "3"}, "its 'step' entry is of type str, not int"), ({"rng": None}, "'rng'"),
                         ({"step": True}, "its 'step' entry is of type bool, not int")):  # (bool is an int)
        torch.save({**whole, **change}, path)
        with pytest.raises(CheckpointError, match=f"is not a complete byol checkpoint \\(.*{re.escape(said)}"):
            load_checkpoint(path)
    for key in ("optimizer", "step", "rng", "config"):  # (coverage: an entry missing, but for 'model', was never tried)
        torch.save({k: v for k, v in whole.items() if k != key}, path)
        with pytest.raises(CheckpointError, match=f"is not a complete byol checkpoint \\(no '{key}' entry\\)"):
            load_checkpoint(path)
    torch.save({**whole, "config": "oops"}, path)
    with pytest.raises(CheckpointError, match="the settings are not a mapping of sections"):
        load_encoder(path)
    import zipfile
    with zipfile.ZipFile(path, "w") as z:  # another zip: not said to be a corrupt checkpoint
        z.writestr("notes.txt", "hi")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint \\(a zip archive that torch.save did not"):
        load_checkpoint(path)


def _damaged(path: Path, out: Path, find: bytes) -> Path:
    """A copy of ``path`` with the first byte of ``find`` in it flipped to one that is no UTF-8's first byte."""
    data = bytearray(path.read_bytes())
    data[data.index(find)] ^= 0xF0
    out.write_bytes(bytes(data))
    return out


def test_a_damaged_byte_is_a_corrupt_checkpoint_not_a_traceback_nor_a_silent_load(tmp_path, fault_table):
    """A user test flipped single bytes of a checkpoint: in its pickle, a UnicodeDecodeError traceback or 'holds objects
    other than tensors' (an 'Unsupported operand'); in a tensor, a silent load of the wrong weights."""
    model, opt = make()
    with torch.no_grad():
        model[0].weight.fill_(1234.5)
    save_checkpoint(tmp_path / "a.pt", model, opt, 0, {})
    marker = torch.tensor(1234.5).numpy().tobytes() * 4
    crc = "corrupt or truncated and cannot be read (its bytes do not match their CRC-32)"
    for find in (marker, b"weight"):  # a tensor's bytes, a string in the pickle
        with pytest.raises(CheckpointError, match=re.escape(crc)):
            load_checkpoint(_damaged(tmp_path / "a.pt", tmp_path / "bad.pt", find))
    # Without CRC-32s (torch.save with them off), the pickle's failures are still named as corruption.
    if not hasattr(torch.serialization, "set_crc32_options"):
        return  # torch < 2.6 writes them always
    torch.serialization.set_crc32_options(False)
    try:
        save_checkpoint(tmp_path / "plain.pt", model, opt, 0, {})
    finally:
        torch.serialization.set_crc32_options(True)
    load_checkpoint(tmp_path / "plain.pt")  # (its records' CRC-32s are 0: not checked)
    undecodable = "corrupt or truncated and cannot be read (UnicodeDecodeError)"
    with pytest.raises(CheckpointError, match=re.escape(undecodable)):
        load_checkpoint(_damaged(tmp_path / "plain.pt", tmp_path / "bad.pt", b"weight"))
    data = bytearray((tmp_path / "plain.pt").read_bytes())
    at = data.index(b"data.pkl") + 200  # past the record's name and header: inside the pickle's opcodes
    data[at:at + 50] = bytes(50)
    (tmp_path / "zeros.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt or truncated and cannot be read"):
        load_checkpoint(tmp_path / "zeros.pt")
    fault_table("checkpoint with one byte flipped (in a tensor, or in its pickle), or 50 bytes of its pickle zeroed",
                "CheckpointError: one sentence saying it is corrupt (a CRC-32 mismatch, where torch.save stored them), "
                "nothing loaded")


class _WritesAFile:
    """Unpickling this calls ``open(path, "w")``: what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


class _RunsACommand:
    """Unpickling this calls ``os.system``: torch names such a global in lower case ('unsupported GLOBAL')."""

    def __reduce__(self):
        return (os.system, ("true",))


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
    torch.save({"model": model.state_dict(), "payload": _RunsACommand()}, tmp_path / "system.pt")
    with pytest.raises(CheckpointError, match="refused: it holds objects other than tensors"):  # not 'corrupt'
        load_checkpoint(tmp_path / "system.pt")
    fault_table("checkpoint carrying a pickled payload that writes a file when unpickled",
                "refused by weights_only=True with one sentence; the file is never written")


def test_a_pickled_payload_is_refused_in_the_words_of_torch_before_2_4_too(tmp_path, monkeypatch):
    """torch 2.2 and 2.3 say 'Unsupported class posix.system' (after their advice, on one line), not
    'Unsupported global': such a checkpoint was called corrupt, not refused."""
    model, opt = make()
    save_checkpoint(tmp_path / "a.pt", model, opt, 0, {})
    said = ("Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will likely "
            "succeed, but it can result in arbitrary code execution.Do it only if you get the file from a trusted "
            "source. WeightsUnpickler error: Unsupported class posix.system")  # torch 2.2's, word for word

    def torch_2_2_load(*args, **kwargs):
        raise pickle.UnpicklingError(said)

    monkeypatch.setattr(torch, "load", torch_2_2_load)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(tmp_path / "a.pt")
    assert str(refused.value) == (f"checkpoint {tmp_path / 'a.pt'} was refused: it holds objects other than tensors "
                                  "and plain data, which could run code when unpickled (WeightsUnpickler error: "
                                  "Unsupported class posix.system)")


def test_a_checkpoint_is_read_without_its_tensors_where_torch_maps_a_file_named_by_a_str_alone(tmp_path, monkeypatch):
    """torch 2.2's torch.load(mmap=True) takes a str, and raised for a Path: a checkpoint's step and settings
    were not found (a resume replaced an earlier start's epoch_N.pt of another length, and a run without its
    config.yaml went on with the default settings), and eval --out called a checkpoint 'what torch.save wrote'."""
    from byol.checkpoint import saved_config, saved_step
    from byol.outputs import _model_in
    load = torch.load

    def torch_2_2_load(f, *args, mmap=None, **kwargs):
        if mmap and not isinstance(f, str):
            raise ValueError("f must be a string filename in order to use mmap argument")
        return load(f, *args, mmap=mmap, **kwargs)

    model, opt = make()
    save_checkpoint(tmp_path / "a.pt", model, opt, 7, {"train": {"epochs": 3}})
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    monkeypatch.setattr(torch, "load", torch_2_2_load)
    assert saved_step(tmp_path / "a.pt") == 7 and saved_config(tmp_path / "a.pt") == {"train": {"epochs": 3}}
    assert _model_in(tmp_path / "weights.pt") == "a model's weights (written by torch.save)"


@pytest.mark.parametrize("rng", [{}, {"torch": "oops"}])
def test_random_number_generator_states_that_do_not_load_are_one_sentence(tmp_path, rng):
    """A review: a checkpoint whose rng entry was a mapping, but not of byol's states, ended a resume in a
    KeyError traceback (only the entries' kinds were checked)."""
    from byol.resume import _restore_generators
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(tmp_path))}'s random number generator states do not "
                                              "load \\(.*\\); resume from a checkpoint a byol run wrote$"):
        _restore_generators({"rng": rng}, torch.Generator(), 0, 1, tmp_path)


def test_a_checkpoint_puts_back_every_generator_it_saved_so_the_draws_after_it_are_the_same(tmp_path):
    """torch's, NumPy's (its cached Gaussian too), Python's (gauss's too) and the augmentation generator's:
    after a checkpoint is written and read back, each draws what it drew after the write."""
    import random

    import numpy as np
    from byol.checkpoint import rng_state_kept, set_rng_state
    model, opt = make()
    with rng_state_kept():
        generator = torch.Generator().manual_seed(5)
        torch.manual_seed(1), np.random.seed(2), random.seed(3)
        np.random.standard_normal(), random.gauss(0, 1)  # leave a Gaussian cached in each

        def draws():
            return (torch.rand(4), np.random.rand(4), np.random.standard_normal(), random.random(),
                    random.gauss(0, 1), torch.rand(4, generator=generator))

        save_checkpoint(tmp_path / "last.pt", model, opt, 1, {}, generator)
        expected = draws()
        draws()  # the generators move on
        set_rng_state(load_checkpoint(tmp_path / "last.pt")["rng"], generator)
        got = draws()
    for a, b in zip(expected, got):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else np.array_equal(a, b)


def test_a_resume_under_torchrun_gives_each_process_its_own_rank_s_augmentation_generator():
    """A mutation audit: every rank given rank 0's saved generator survived every test (the torchrun resume
    test is not in the default run): each rank's augmentations would then draw rank 0's."""
    streams = [torch.Generator().manual_seed(10 + rank).get_state() for rank in range(2)]
    with rng_state_kept():
        state = {"rng": rng_state(), "extra": {"generator_per_rank": streams}}
        for rank in range(2):
            generator = torch.Generator().manual_seed(99)
            _restore_generators(state, generator, rank, 2, Path("last.pt"))
            assert torch.equal(generator.get_state(), streams[rank]), rank


@pytest.mark.parametrize("saved_world, world", [(1, 2), (2, 4)])
def test_a_resume_with_more_processes_gives_every_process_an_augmentation_stream_of_its_own(saved_world, world):
    """A review: a run resumed under torchrun with more processes than wrote its checkpoint (a 1-process run's
    too) gave every rank rank 0's saved generator, so each rank's i-th image got the same crop, flip and
    colours for the rest of the run. The ranks the run had keep their own; the others draw streams apart."""
    streams = [torch.Generator().manual_seed(10 + rank).get_state() for rank in range(saved_world)]
    with rng_state_kept():
        state = {"rng": rng_state(torch.Generator().manual_seed(10)),
                 "extra": {"generator_per_rank": streams} if saved_world > 1 else {}}
        draws = []
        for rank in range(world):
            generator = torch.Generator().manual_seed(99 + rank)  # build_run's seed + rank
            _restore_generators(state, generator, rank, world, Path("last.pt"))
            if rank < saved_world:
                assert torch.equal(generator.get_state(), streams[rank]), rank
            draws.append(tuple(torch.rand(4, generator=generator).tolist()))
    assert len(set(draws)) == world


def test_a_torchrun_resume_of_an_older_byol_s_checkpoint_does_not_claim_its_run_had_one_process(capsys):
    """A journey test (a user upgrading byol): a byol before 2026-12-02 saved no steps_per_epoch, and before
    2026-11-22's per-rank streams none of a torchrun run's other ranks' generators; its checkpoint under torchrun was
    said to be "written by a run of 1 process", also where its run had as many as the resume."""
    with rng_state_kept():
        old = {"rng": rng_state(torch.Generator().manual_seed(10)), "extra": {}}  # what such a byol saved
        _restore_generators(old, torch.Generator(), 0, 2, Path("last.pt"))
        err = capsys.readouterr().err
        assert "was written by a run of 1 process" not in err
        assert err.startswith("note: last.pt was written by an older byol, which does not record how many processes "
                              "ran it; this one has 2: ") and err.count("\n") == 1
        new = {"rng": old["rng"], "extra": {"steps_per_epoch": 4}}  # a 1-process run of this byol: said as it was
        _restore_generators(new, torch.Generator(), 0, 2, Path("last.pt"))
        assert "note: last.pt was written by a run of 1 process, this one has 2" in capsys.readouterr().err


def test_an_older_byol_s_checkpoint_is_noted_once_by_rank_0_and_not_for_a_run_of_one_process(capsys):
    """A mutation audit: the older-checkpoint note said by every rank of a torchrun resume (once per process), or
    for a resume of one process (its generator is the one such a byol saved, its draws as they were), survived."""
    with rng_state_kept():
        old = {"rng": rng_state(torch.Generator().manual_seed(10)), "extra": {}}  # what such a byol saved
        _restore_generators(old, torch.Generator(), 1, 2, Path("last.pt"))
        _restore_generators(old, torch.Generator(), 0, 1, Path("last.pt"))
    assert capsys.readouterr().err == ""

def test_a_run_resumed_on_another_kind_of_device_goes_on_with_a_note(capsys):
    """A review: a checkpoint of a GPU run (its augmentation generator's state a CUDA one's, 16 bytes of seed
    and offset) resumed on a CPU (or a CPU run's on a GPU) was refused as one byol had not written, alone or
    under torchrun (a traceback there): every other generator is put back, and the views are drawn anew."""
    cuda_state = torch.zeros(16, dtype=torch.uint8)  # what torch.Generator("cuda").get_state() holds
    with rng_state_kept():
        torch.manual_seed(3)
        saved = rng_state(torch.Generator().manual_seed(3))
        saved["generator"] = cuda_state
        expected = torch.rand(4)
        for world in (1, 2):
            torch.manual_seed(4)
            generator = torch.Generator().manual_seed(7)
            state = {"rng": saved, "extra": {"generator_per_rank": [cuda_state] * 2} if world > 1 else {}}
            _restore_generators(state, generator, 0, world, Path("last.pt"))
            assert torch.equal(torch.rand(4), expected), world  # torch's own generator put back
            assert torch.equal(generator.get_state(), torch.Generator().manual_seed(7).get_state()), world
            assert "note: last.pt's augmentations drew on another kind of device" in capsys.readouterr().err


def test_a_generator_state_of_neither_kind_s_size_is_refused_not_taken_for_another_device_s():
    """A review: a torn augmentation generator state (of neither a CPU's size nor a CUDA one's) was taken for
    another kind of device's, resumed with a note that said so; it is refused, as before that note."""
    with rng_state_kept():
        saved = rng_state(torch.Generator().manual_seed(3))
        saved["generator"] = saved["generator"][:100]
        with pytest.raises(CheckpointError, match="do not load"):
            _restore_generators({"rng": saved, "extra": {}}, torch.Generator(), 0, 1, Path("last.pt"))


def test_a_copy_that_fills_the_disk_is_one_sentence_and_leaves_no_file(tmp_path, monkeypatch):
    """copy_atomically (a run's epoch_N.pt from its last.pt) on a full disk: the checkpoint named, why, and
    neither a torn copy nor its temporary left (a coverage audit: never run)."""
    source = tmp_path / "last.pt"
    source.write_bytes(b"x" * 1000)

    def full(src, dst):
        Path(dst).write_bytes(b"x" * 10)  # some bytes, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shutil, "copyfile", full)
    with pytest.raises(CheckpointError, match=rf"^could not write the checkpoint {re.escape(str(tmp_path))}/"
                                              rf"epoch_0001\.pt \({os.strerror(errno.ENOSPC)}\)$"):
        copy_atomically(source, tmp_path / "epoch_0001.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
