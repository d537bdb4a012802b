"""Where commands write: a place that cannot take the file is refused before the work, in one sentence."""

import errno
import tempfile

import pytest

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
    outputs.check_writable(existing / "e.npy")
    monkeypatch.setenv("RANK", "0")

    def no_new_files(*args, **kwargs):  # a folder that takes no new files (as root, permissions do not stop it)
        raise PermissionError(errno.EACCES, "Permission denied", str(kwargs.get("dir")))

    monkeypatch.setattr(tempfile, "TemporaryFile", no_new_files)
    with pytest.raises(outputs.OutputError, match="other.json: Permission denied"):
        outputs.check_writable(tmp_path / "other.json")  # named so, not as the probe's temporary file
    outputs.check_writable(existing)  # but a file there that can be written is fine
