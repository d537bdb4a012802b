"""embed: which folder a split is, how its labels are numbered, the files written."""

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from byol import embeddings
from byol.data import DataError
from byol.folder import ImageFolder, unescape_name
from byol.outputs import OutputError
from byol.scan import scan
from conftest import extract_jpegs


def test_the_held_out_split_of_a_train_folder_given_as_dot_is_val(tmp_path, monkeypatch):
    """A data.root of "." from inside ROOT/train is ROOT/train, as its absolute path is: its name was "", so embed
    took it for a plain folder and embedded the training images in place of ROOT/val (and had no val split)."""
    from PIL import Image
    for where in ("train/ant/a.png", "train/bee/b.png", "val/bee/c.png"):
        (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / where)
    monkeypatch.chdir(tmp_path / "train")
    for split in (None, "val"):
        folder = embeddings._folder_split(".", split, 8, "train")
        assert folder.root == str(tmp_path / "val") and folder.labels.tolist() == [1]  # numbered as train's


def test_a_plain_folder_has_no_splits_its_sub_folders_are_classes(tmp_path, capsys):
    root = extract_jpegs(tmp_path / "photos", per_class=1)
    (root / "cat").rename(root / "test")  # a class named like a split
    folder = embeddings._folder_split(root, None, 8, "train")
    assert folder.root == str(root) and len(folder) == 10
    assert f"{root} is a plain folder of images" in capsys.readouterr().err
    for split in ("val", "test"):  # a split, not the class test/
        with pytest.raises(DataError, match=f"there is no {split} split: {root} is a plain folder") as e:
            embeddings._folder_split(root, split, 8, "train")
        assert ("--split ./test embeds its class test/" in str(e.value)) == (split == "test")
    plain = extract_jpegs(tmp_path / "vehicles", per_class=1)  # bus/ car/ train/ (docs/data.md)
    (plain / "truck").rename(plain / "train")  # a user test: --split train embedded all, taken for the class alone
    capsys.readouterr()
    assert len(embeddings._folder_split(plain, "train", 8, "train")) == 10
    assert ("so --split train embeds all of it, as the run trained on it; --split ./train embeds its class train/ "
            "alone") in capsys.readouterr().err
    assert len(embeddings._folder_split(plain, "./train", 8, "train")) == 1
    next((root / "test").iterdir()).rename(root / "cover.jpg")  # a loose file elsewhere: not dog's to say
    run_classes = sorted(f.name for f in root.iterdir() if f.is_dir() and any(f.iterdir()))  # (test/ is empty)
    capsys.readouterr()
    for name in ("dog", "dog/", "./dog"):  # a class, asked by name (tab completion adds the slash)
        dog = embeddings._folder_split(root, name, 8, "train")
        assert dog.classes == run_classes and dog.labels.tolist() == [run_classes.index("dog")]
        assert [p.split("/")[-2] for p in dog.paths] == ["dog"] and "labeled -1" not in capsys.readouterr().err
    (root / "dog" / "puppies").mkdir()
    for name in ("dog/..", "dog/puppies"):  # (a user test: the deeper one was said to be no sub-folder at all)
        with pytest.raises(DataError, match=f"^'{name}' is not a folder directly inside {root}: "):
            embeddings._folder_split(root, name, 8, "train")
    with pytest.raises(DataError, match=f"^unknown split 'dgo': {root} has no sub-folder dgo; choose train "
                                        r"\(all of it, as the run trained on it\) or one of its class folders$"):
        embeddings._folder_split(root, "dgo", 8, "train")  # (a user test: told to choose val, which it refuses)


def test_a_split_outside_the_root_is_refused(tmp_path):
    """embed --split .. or an absolute --split read outside the run's data root (an ImageNet-style layout's
    splits; a plain folder's classes were refused already)."""
    from PIL import Image
    for path in ("set/train/cat/0.png", "set/val/cat/0.png", "elsewhere/cat/0.png"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / path)
    for split in ("..", "../elsewhere", "val/../..", str(tmp_path / "elsewhere")):
        with pytest.raises(DataError, match=f"^'{split}' is not a folder inside {tmp_path / 'set'}: name one of its "
                                            "splits or folders, or give another folder of images as --data.root="):
            embeddings._folder_split(tmp_path / "set", split, 8, "train")
    assert embeddings._folder_split(tmp_path / "set", "val/cat", 8, "train").root == str(tmp_path / "set/val/cat")


def test_a_folder_outside_a_plain_folder_is_refused_as_outside_it(tmp_path):
    """embed --split of a folder outside a plain folder's run (docs/cli.md: another folder's images are embedded
    with --data.root=FOLDER) was told it was not 'directly inside' the root, as if it were a folder deeper down."""
    for path in ("photos/cat/0.png", "photos/dog/1.png", "elsewhere/cat/2.png"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / path)
    for split in ("../elsewhere", str(tmp_path / "elsewhere"), "cat/../../elsewhere"):
        with pytest.raises(DataError, match=f"^'{split}' is not a folder inside {tmp_path / 'photos'}: name one of "
                                            "its class folders, or give another folder of images as --data.root="):
            embeddings._folder_split(tmp_path / "photos", split, 8, "train")


def test_an_absolute_split_inside_the_root_is_that_folder(tmp_path):
    """embed --split ROOT/val (a path tab-completed from another directory) was refused as 'not a folder inside
    ROOT', and a plain folder's ROOT/dog as 'not a folder directly inside ROOT'."""
    for path in ("set/train/cat/0.png", "set/train/dog/1.png", "set/val/dog/2.png", "photos/cat/3.png",
                 "photos/dog/4.png", "photos/train/5.png"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / path)
    for split, named in (("set/val", "val"), ("set/val/dog", "val/dog"), ("set/train/../val", "val")):
        folder = embeddings._folder_split(tmp_path / "set", str(tmp_path / split), 8, "train")
        as_named = embeddings._folder_split(tmp_path / "set", named, 8, "train")
        assert folder.root == as_named.root == str(tmp_path / "set" / named)
        assert folder.labels.tolist() == as_named.labels.tolist() == ([1] if named == "val" else [-1])
    dog = embeddings._folder_split(tmp_path / "photos", str(tmp_path / "photos/dog"), 8, "train")
    assert dog.paths == [str(tmp_path / "photos/dog/4.png")] and dog.labels.tolist() == [1]
    train = embeddings._folder_split(tmp_path / "photos", str(tmp_path / "photos/train"), 8, "train")
    assert len(train) == 1  # the class train/, not the whole folder that --split train is
    with pytest.raises(DataError, match="is not a folder inside"):
        embeddings._folder_split(tmp_path / "set", str(tmp_path / "set"), 8, "train")
    (tmp_path / "link").symlink_to(tmp_path / "set")  # ROOT a link, the split by its target's path (a review)
    for root, split in (("link", "set/val"), ("set", "link/val")):
        assert embeddings._folder_split(tmp_path / root, str(tmp_path / split), 8, "train").labels.tolist() == [1]
    with pytest.raises(DataError, match="is not a folder inside"):
        embeddings._folder_split(tmp_path / "link", str(tmp_path / "photos/dog"), 8, "train")


def test_a_file_outside_the_class_folders_is_labeled_minus_1_alone_and_named(tmp_path, capsys):
    """One stray file at the top of a split dropped the labels of all the others (a user test)."""
    root = extract_jpegs(tmp_path / "photos", per_class=2)
    next((root / "cat").iterdir()).rename(root / "cover.jpg")
    folder = embeddings._folder_split(root, "train", 8, "train")
    whole = ImageFolder(root / "dog", 8)  # (its images: unlabeled, loose in dog/)
    assert folder.classes is not None and "cat" in folder.classes and len(folder.classes) == 10
    loose = [p for p, label in zip(folder.paths, folder.labels.tolist()) if label == -1]
    assert loose == [str(root / "cover.jpg")] and whole.classes is None
    assert (f"1 image file of {root} is labeled -1, outside its class sub-folders ({root / 'cover.jpg'}); the "
            "others have their class") in capsys.readouterr().err
    embeddings._folder_split(root / "dog", "train", 8, "train")  # no class folders at all
    assert f"the images of {root / 'dog'} are labeled -1: it has no class sub-folders" in capsys.readouterr().err


def test_a_loose_file_whose_name_holds_a_line_break_is_named_on_the_note_s_one_line(tmp_path, capsys):
    root = extract_jpegs(tmp_path / "photos", per_class=1)
    next((root / "cat").iterdir()).rename(root / "cover\nphoto.jpg")
    embeddings._folder_split(root, "train", 8, "train")
    assert f"outside its class sub-folders ({root}/cover\\nphoto.jpg); the others" in capsys.readouterr().err


def test_a_split_with_no_class_of_the_run_s_does_not_say_the_others_have_their_class(tmp_path, capsys):
    """A user test: ``--split unlabeled``, whose sub-folders are none of train's classes, said of its loose
    files 'the others have their class', where every image is labeled -1."""
    root = extract_jpegs(tmp_path / "photos" / "train", per_class=1).parent
    extract_jpegs(root / "unlabeled" / "misc", per_class=1)  # unlabeled/misc/: a class folder train has not
    next((root / "unlabeled" / "misc" / "cat").iterdir()).rename(root / "unlabeled" / "loose.jpg")
    folder = embeddings._folder_split(root, "unlabeled", 8, "train")
    err = capsys.readouterr().err
    assert set(folder.labels.tolist()) == {-1} and "has class folders that" in err
    assert f"1 image file of {root / 'unlabeled'} is labeled -1, outside its class sub-folders (" in err
    assert "the others have their class" not in err


def test_embedded_paths_are_one_line_each_as_the_file_system_spells_them():
    names = ["a/plain.jpg", "b/new\nline.jpg", "c/bad\udcff.jpg", "d/back\\nslash.jpg", "e/tab\t.jpg"]
    assert embeddings._path_lines(names) == (b"a/plain.jpg\nb/new\\nline.jpg\nc/bad\xff.jpg\nd/back\\\\nslash.jpg\n"
                                             b"e/tab\\t.jpg\n")  # \udcff: the byte 0xff


def test_embedded_paths_stay_one_line_each_for_a_reader_that_splits_at_every_line_break(tmp_path):
    """A review: a name holding a form feed or U+2028 was written as it is, so ``read_text().splitlines()`` (which
    breaks there too) gave more lines than rows, and every later file was mapped to the wrong row."""
    names = ["a/form\x0cfeed.jpg", "b/line\u2028separator.jpg", "c/next\x85line.jpg", "d/plain.jpg"]
    (tmp_path / "e_paths.txt").write_bytes(embeddings._path_lines(names))
    lines = (tmp_path / "e_paths.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4 and lines[3] == "d/plain.jpg"
    assert [unescape_name(line) for line in lines] == names


def test_a_split_is_numbered_by_the_training_folders_classes(tmp_path, capsys):
    train = extract_jpegs(tmp_path / "set" / "train", per_class=1)
    val = extract_jpegs(tmp_path / "set" / "val", per_class=1)
    classes = ImageFolder(train, 8).classes
    (val / classes[0]).rename(val / "zebra")  # val: classes 1-9 and one train has not
    own = ImageFolder(val, 8)
    numbered, unknown = own.numbered_as(classes)
    assert unknown == ["zebra"] and numbered.classes == classes
    names = [p.split("/")[-2] for p in numbered.paths]
    assert [classes[y] if y >= 0 else "zebra" for y in numbered.labels.tolist()] == names
    assert own.labels.tolist() == list(range(10))  # the folder itself unchanged
    # The training folder unreadable (emptied since): its own numbering, said so.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert embeddings._numbered_as(own, empty) is own
    assert f"{own.root}'s labels are numbered by its own class folders" in capsys.readouterr().err


def test_files_of_no_image_format_left_out_of_a_split_are_counted_in_a_note(tmp_path, capsys):
    from PIL import Image
    from byol.config import load_config
    from byol.pipeline import labeled_splits
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / split / "cat" / "a.png")
    for name in ("IMG_1.heic", "IMG_2.HEIC", "notes.txt"):  # a phone's photos: not embedded, and said so
        (tmp_path / "val" / "cat" / name).write_bytes(b"")
    said = (f"3 files (.heic 2, .txt 1) in {tmp_path / 'val'} are left out: their names do not end in the "
            "extension of an image format Pillow opens")
    assert len(embeddings._folder_split(tmp_path, None, 8, "train")) == 1
    assert said in capsys.readouterr().err
    labeled_splits(load_config("cifar10", ["--data.dataset=folder", f"--data.root={tmp_path / 'train'}"]))
    assert said in capsys.readouterr().err  # eval's splits too
    with pytest.raises(DataError, match=r"is neither ROOT nor ROOT/train of such a layout: point --data.root at the "
                                        r"ROOT, the folder that holds train/ and val/$"):  # a user test: "at it"
        labeled_splits(load_config("cifar10", ["--data.dataset=folder", f"--data.root={tmp_path / 'val'}"]))


def test_a_run_on_another_folder_of_root_embeds_root_train_as_train_and_numbers_splits_by_its_classes(tmp_path):
    from PIL import Image
    for path in ("train/cat/0.png", "train/dog/0.png", "val/cat/0.png", "val/dog/0.png",
                 "unlabeled/part1/0.png", "unlabeled/part1/1.png"):  # trained on ROOT/unlabeled (data.train_split)
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / path)
    train = embeddings._folder_split(tmp_path, "train", 8, "unlabeled")
    assert train.root == str(tmp_path / "train") and train.classes == ["cat", "dog"]  # as eval's bank
    for split in (None, "val"):  # numbered as eval numbers them, not by ROOT/unlabeled's part1/
        val = embeddings._folder_split(tmp_path, split, 8, "unlabeled")
        assert val.root == str(tmp_path / "val") and val.classes == ["cat", "dog"] and val.labels.tolist() == [0, 1]
    assert len(embeddings._folder_split(tmp_path, "unlabeled", 8, "unlabeled")) == 2


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_embeddings_are_written_straight_into_their_file_and_a_full_disk_there_keeps_the_earlier_output(
        tmp_path, monkeypatch, suffix):
    """The embeddings go from the tensor into the file (no copy of them in memory first: a .pt took 3x
    their size); a disk that fills up in the middle leaves an earlier output's files as they were."""
    import errno
    import torch
    from byol.outputs import OutputError
    out, rows = tmp_path / f"e{suffix}", torch.arange(40.0).view(10, 4)
    embeddings._save_embeddings(out, rows, torch.arange(10), ["a.png"] * 10, ["cat"], "float32")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    saved = torch.load(out, weights_only=True)["embeddings"] if suffix == ".pt" else torch.from_numpy(np.load(out))
    assert torch.equal(saved, rows)
    real = {".npy": (np, "save"), ".pt": (torch, "save")}[suffix]
    write = getattr(*real)

    def full_disk(*args, **kwargs):  # np.save(file, array), torch.save(obj, file)
        result = write(*args, **kwargs)
        if not hasattr(args[0 if suffix == ".npy" else 1], "getvalue"):  # a file on disk, not bytes in memory
            raise OSError(errno.ENOSPC, "No space left on device")
        return result

    monkeypatch.setattr(*real, full_disk)
    with pytest.raises(OutputError, match=f"cannot write {out}: No space left on device"):
        embeddings._save_embeddings(out, rows[:5], torch.arange(5), None, None, "float32")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary left either
    monkeypatch.undo()
    if suffix == ".pt":  # 5 rows saved, not the 10 of the tensor they are a part of
        embeddings._save_embeddings(out, rows[:5], torch.arange(10)[:5], None, None, "float32")
        saved = torch.load(out, weights_only=True)
        assert all(saved[k].untyped_storage().nbytes() == saved[k].nbytes for k in ("embeddings", "labels"))
        assert torch.equal(saved["embeddings"], rows[:5])


def test_the_paths_of_an_embedded_folder_with_an_undecodable_file_are_those_of_its_rows(tmp_path):
    """A mutation audit: naming row i by the folder's i-th file (not by the file the row is of) survived
    every test, none of which embedded a folder with a file that does not decode: from the bad file on,
    every row was named by the file before it."""
    import torch
    import torchvision
    from PIL import Image
    for i, (cls, shade) in enumerate([("a", 0), ("a", 60), ("b", 120), ("b", 180), ("b", 240)]):
        (tmp_path / "images" / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 12), (shade, 255 - shade, shade // 2)).save(tmp_path / "images" / cls / f"{i}.png")
    (tmp_path / "images" / "a" / "00_bad.png").write_bytes(b"not a png")  # the folder's second file
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pt")
    embeddings.embed(tmp_path / "r18.pt", tmp_path / "e.pt", overrides=[
        "--data.dataset=folder", f"--data.root={tmp_path / 'images'}", "--data.image_size=8", "--data.workers=0",
        "--train.precision=fp32"])
    saved = torch.load(tmp_path / "e.pt", weights_only=True)
    assert [p.removeprefix(str(tmp_path / "images") + "/") for p in saved["paths"]] == [
        "a/0.png", "a/1.png", "b/2.png", "b/3.png", "b/4.png"]
    assert saved["labels"].tolist() == [0, 0, 1, 1, 1]
    alone = embeddings.embed(tmp_path / "r18.pt", tmp_path / "one.pt", overrides=[
        "--data.dataset=folder", f"--data.root={tmp_path / 'images' / 'b'}", "--data.image_size=8",
        "--data.workers=0", "--train.precision=fp32"])
    # rows 2.. are b's files, as the paths say: b embedded alone gives them
    torch.testing.assert_close(torch.load(alone, weights_only=True)["embeddings"], saved["embeddings"][2:])


def test_split_test_of_a_root_with_val_and_test_is_test(tmp_path, capsys):
    """A mutation audit: looking for val/ first whatever split was asked for survived every test; embed
    --split test of ROOT/{train,val,test} would have embedded val/, with a note that there is no test/."""
    from PIL import Image
    for split in ("train", "val", "test"):
        (tmp_path / split / "cat").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / split / "cat" / "0.png")
    for split in ("test", "val", None):
        assert embeddings._find_split(tmp_path, split, 8, "train").root == str(tmp_path / (split or "val"))
    assert "no test/ folder" not in capsys.readouterr().err


def test_an_output_of_another_suffix_is_an_output_error_not_a_data_error(tmp_path):
    """A sweep's `except byol.OutputError` for what embed writes, as errors.py sorts them: it was a DataError."""
    with pytest.raises(OutputError, match="must end in .npy or .pt") as caught:
        embeddings.embed(tmp_path / "run.pt", tmp_path / "out")
    assert not isinstance(caught.value, DataError)


def test_a_limit_lists_only_that_many_files_labeled_as_the_whole_split(tmp_path, monkeypatch):
    """``embed --limit N`` lists the split's first N files, not all of them (a review at scale: 1,000 images of
    ImageNet's train split listed its 1.28 million files first, minutes on a network file system), with the labels,
    classes and paths a whole listing gives its first N."""
    for path in ("set/train/a/0.png", "set/train/a/1.png", "set/train/b/0.png", "set/train/b/1.png",
                 "set/train/c/0.png", "set/val/b/0.png", "set/val/c/0.png", "set/val/c/1.png"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / path)
    listed = []
    def counted_scan(root, one_per_class=False, **limit):
        found = scan(root, one_per_class, **limit)
        listed.append(len(found[0]) if not one_per_class else 0)
        return found
    monkeypatch.setattr("byol.folder.scan", counted_scan)
    for split, n in (("train", 3), (None, 2)):
        whole = embeddings._folder_split(tmp_path / "set", split, 8, "train")
        listed.clear()
        first = embeddings._folder_split(tmp_path / "set", split, 8, "train", limit=n)
        assert max(listed) == n and len(first) == n
        assert first.classes == whole.classes == ["a", "b", "c"]
        assert first.labels.tolist() == whole.labels[:n].tolist()
        assert [first.path(i) for i in range(n)] == [whole.path(i) for i in range(n)]


def _plain_folder_and_encoder(tmp_path):
    """A plain folder of classes a/ (2 images), b/ (3), c/ (1) and one loose image, and a torchvision
    resnet18 state_dict to embed it with: ``(checkpoint, overrides)``."""
    for i, cls in enumerate(["a", "a", "b", "b", "b", "c"]):
        (tmp_path / "images" / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 12), (40 * i, 255 - 40 * i, 20 * i)).save(tmp_path / "images" / cls / f"{i}.png")
    Image.new("RGB", (12, 12), (9, 9, 9)).save(tmp_path / "images" / "loose.png")  # labeled -1
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pt")
    return tmp_path / "r18.pt", ["--data.dataset=folder", f"--data.root={tmp_path / 'images'}",
                                 "--data.image_size=8", "--data.workers=0", "--train.precision=fp32"]


def test_npy_labels_and_class_names_are_those_of_each_row_s_file(tmp_path):
    """A mutation audit: the .npy labels written in reverse order, and no class names at all where one image
    is labeled -1, survived every test (the .npy tests checked labels as a set, on CIFAR, with no -1)."""
    ckpt, overrides = _plain_folder_and_encoder(tmp_path)
    out = embeddings.embed(ckpt, tmp_path / "e.npy", overrides=overrides, split="train")
    labels = np.load(tmp_path / "e_labels.npy")
    paths = [unescape_name(line) for line in (tmp_path / "e_paths.txt").read_text().splitlines()]
    classes = (tmp_path / "e_classes.txt").read_text().splitlines()
    assert classes == ["a", "b", "c"] and len(paths) == len(labels) == len(np.load(out)) == 7
    named = [classes[y] if y >= 0 else "-" for y in labels.tolist()]
    assert named == [p.split("/")[-2] if "loose" not in p else "-" for p in paths]
    assert labels.dtype == np.int64 and np.load(out).dtype == np.float32


def test_a_limited_plain_folder_or_class_of_one_keeps_the_run_s_classes(tmp_path):
    """A mutation audit: a plain folder's --limit (its classes cut to those of its first files), --limit on one
    of its classes (ignored: that folder is listed whole), and a class numbered 0 embedded alone (its class names
    dropped) survived every test."""
    ckpt, overrides = _plain_folder_and_encoder(tmp_path)
    (tmp_path / "images" / "loose.png").unlink()
    for split, limit, labels in ((None, 1, [0]), ("a", None, [0, 0]), ("b", 1, [1])):
        saved = torch.load(embeddings.embed(ckpt, tmp_path / "e.pt", split, overrides, limit), weights_only=True)
        assert saved["classes"] == ["a", "b", "c"] and saved["labels"].tolist() == labels, (split, limit)
        assert len(saved["embeddings"]) == len(saved["paths"]) == len(labels)


def test_a_limit_that_lists_a_loose_file_alone_does_not_say_the_folder_has_no_class_folders(tmp_path, capsys):
    """--limit 1 of a plain folder whose first file is a loose one said "it has no class sub-folders" of a folder
    that has them (the note read the limited listing's classes, which its one loose file has not)."""
    root = tmp_path / "images"
    for name in ("0.png", "a/1.png", "b/2.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(root / name)
    for split in (None, "train"):
        folder = embeddings._folder_split(root, split, 8, "train", limit=1)
        err = capsys.readouterr().err
        assert folder.paths == [str(root / "0.png")] and folder.labels.tolist() == [-1]
        assert "it has no class sub-folders" not in err
        assert f"1 image file of {root} is labeled -1, outside its class sub-folders ({root / '0.png'})\n" in err


def test_a_loose_file_beside_a_single_class_says_the_others_have_their_class(tmp_path, capsys):
    """A mutation audit: the note's "the others have their class" asked for a label above 0, which a folder of one
    class (label 0) and a loose file has not; no test had a split whose labeled files were all of class 0."""
    root = tmp_path / "images"
    for name in ("a/0.png", "a/1.png", "loose.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(root / name)
    folder = embeddings._folder_split(root, "train", 8, "train")
    assert sorted(folder.labels.tolist()) == [-1, 0, 0]
    assert (f"1 image file of {root} is labeled -1, outside its class sub-folders ({root / 'loose.png'}); the "
            "others have their class\n") in capsys.readouterr().err


def test_an_output_named_as_an_earlier_output_s_labels_is_refused(tmp_path):
    """A mutation audit: --out NAME_labels.npy beside an earlier NAME.npy (its labels' file) survived every test
    without its refusal; the refusal comes before the checkpoint is read."""
    np.save(tmp_path / "e.npy", np.zeros((2, 4), np.float32))
    np.save(tmp_path / "e_labels.npy", np.zeros(2, np.int64))
    with pytest.raises(OutputError, match=r"e_labels.npy holds the labels of e.npy, an earlier byol embed's rows"):
        embeddings.embed(tmp_path / "none.pt", tmp_path / "e_labels.npy")
    assert np.load(tmp_path / "e_labels.npy").tolist() == [0, 0]
