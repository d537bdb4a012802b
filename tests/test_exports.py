"""embed and export: which folder a split is, how its labels are numbered, the files written."""

import numpy as np
import pytest

from byol import exports
from byol.data import DataError
from byol.folder import ImageFolder
from conftest import extract_jpegs


def test_a_plain_folder_has_no_splits_its_sub_folders_are_classes(tmp_path, capsys):
    root = extract_jpegs(tmp_path / "photos", per_class=1)
    (root / "cat").rename(root / "test")  # a class named like a split
    folder = exports._folder_split(root, None, 8, "train")
    assert folder.root == str(root) and len(folder) == 10
    assert f"{root} is a plain folder of images" in capsys.readouterr().err
    for split in ("val", "test"):  # a split, not the class test/
        with pytest.raises(DataError, match=f"there is no {split} split: {root} is a plain folder") as e:
            exports._folder_split(root, split, 8, "train")
        assert ("--split ./test embeds its class test/" in str(e.value)) == (split == "test")
    plain = extract_jpegs(tmp_path / "vehicles", per_class=1)  # bus/ car/ train/ (docs/data.md)
    (plain / "truck").rename(plain / "train")  # a user test: --split train embedded all, taken for the class alone
    capsys.readouterr()
    assert len(exports._folder_split(plain, "train", 8, "train")) == 10
    assert ("so --split train embeds all of it, as the run trained on it; --split ./train embeds its class train/ "
            "alone") in capsys.readouterr().err
    assert len(exports._folder_split(plain, "./train", 8, "train")) == 1
    next((root / "test").iterdir()).rename(root / "cover.jpg")  # a loose file elsewhere: not dog's to say
    run_classes = sorted(f.name for f in root.iterdir() if f.is_dir() and any(f.iterdir()))  # (test/ is empty)
    capsys.readouterr()
    for name in ("dog", "dog/", "./dog"):  # a class, asked by name (tab completion adds the slash)
        dog = exports._folder_split(root, name, 8, "train")
        assert dog.classes == run_classes and dog.labels.tolist() == [run_classes.index("dog")]
        assert [p.split("/")[-2] for p in dog.paths] == ["dog"] and "labeled -1" not in capsys.readouterr().err
    (root / "dog" / "puppies").mkdir()
    for name in ("dog/..", "dog/puppies"):  # (a user test: the deeper one was said to be no sub-folder at all)
        with pytest.raises(DataError, match=f"^'{name}' is not a folder directly inside {root}: "):
            exports._folder_split(root, name, 8, "train")


def test_an_empty_split_or_export_folder_is_refused_as_the_command_line_refuses_it(tmp_path, monkeypatch):
    """The Python API's "" as the CLI's (a review): embed took the held-out split and export wrote into the
    folder the process ran in (Path("") is ".")."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="split is empty; give a split's name"):
        exports.embed(tmp_path / "none.pt", tmp_path / "e.npy", split="")
    with pytest.raises(exports.OutputError, match="out_dir is empty; give the folder to export into"):
        exports.export(tmp_path / "none.pt", "")
    assert list(tmp_path.iterdir()) == []


def test_a_path_that_is_no_path_is_a_sentence_naming_the_argument(tmp_path):
    """byol.knn(None) and friends raised pathlib's "expected str, bytes or os.PathLike object, not NoneType"."""
    import byol
    checkpoint = "path must be a checkpoint file \\(such as RUN/checkpoints/last.pt\\) or an exported encoder.pt, as "
    for call in (lambda: byol.knn(None), lambda: byol.linear(3), lambda: byol.load_encoder(None),
                 lambda: byol.export(None, tmp_path / "e"), lambda: byol.embed(None, tmp_path / "e.npy")):
        with pytest.raises(TypeError, match=f"^{checkpoint}a str or pathlib.Path, got (NoneType None|int 3)$"):
            call()
    with pytest.raises(TypeError, match="^out_dir must be the folder to export into, as a str or pathlib.Path, got "):
        byol.export(tmp_path / "none.pt", None)
    with pytest.raises(TypeError, match="^out must be the file to write, NAME.npy or NAME.pt, as a str or "):
        byol.embed(tmp_path / "none.pt", None)
    assert list(tmp_path.iterdir()) == []


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
            exports._folder_split(tmp_path / "set", split, 8, "train")
    assert exports._folder_split(tmp_path / "set", "val/cat", 8, "train").root == str(tmp_path / "set/val/cat")


def test_a_file_outside_the_class_folders_is_labeled_minus_1_alone_and_named(tmp_path, capsys):
    """One stray file at the top of a split dropped the labels of all the others (a user test)."""
    root = extract_jpegs(tmp_path / "photos", per_class=2)
    next((root / "cat").iterdir()).rename(root / "cover.jpg")
    folder = exports._folder_split(root, "train", 8, "train")
    whole = ImageFolder(root / "dog", 8)  # (its images: unlabeled, loose in dog/)
    assert folder.classes is not None and "cat" in folder.classes and len(folder.classes) == 10
    loose = [p for p, label in zip(folder.paths, folder.labels.tolist()) if label == -1]
    assert loose == [str(root / "cover.jpg")] and whole.classes is None
    assert (f"1 image file of {root} is labeled -1, outside its class sub-folders ({root / 'cover.jpg'}); the "
            "others have their class") in capsys.readouterr().err
    exports._folder_split(root / "dog", "train", 8, "train")  # no class folders at all
    assert f"the images of {root / 'dog'} are labeled -1: it has no class sub-folders" in capsys.readouterr().err


def test_a_split_with_no_class_of_the_run_s_does_not_say_the_others_have_their_class(tmp_path, capsys):
    """A user test: ``--split unlabeled``, whose sub-folders are none of train's classes, said of its loose
    files 'the others have their class', where every image is labeled -1."""
    root = extract_jpegs(tmp_path / "photos" / "train", per_class=1).parent
    extract_jpegs(root / "unlabeled" / "misc", per_class=1)  # unlabeled/misc/: a class folder train has not
    next((root / "unlabeled" / "misc" / "cat").iterdir()).rename(root / "unlabeled" / "loose.jpg")
    folder = exports._folder_split(root, "unlabeled", 8, "train")
    err = capsys.readouterr().err
    assert set(folder.labels.tolist()) == {-1} and "has class folders that" in err
    assert f"1 image file of {root / 'unlabeled'} is labeled -1, outside its class sub-folders (" in err
    assert "the others have their class" not in err


def test_embedded_paths_are_one_line_each_as_the_file_system_spells_them():
    names = ["a/plain.jpg", "b/new\nline.jpg", "c/bad\udcff.jpg", "d/back\\nslash.jpg", "e/tab\t.jpg"]
    assert exports._path_lines(names) == (b"a/plain.jpg\nb/new\\nline.jpg\nc/bad\xff.jpg\nd/back\\\\nslash.jpg\n"
                                          b"e/tab\\t.jpg\n")  # \udcff: the byte 0xff


@pytest.mark.parametrize("preset, overrides, size, load, crop, views", [
    ("cifar10-cpu", [], 32, 32, None, 24),
    ("imagenet", [], 224, 256, 224, 224),
    ("imagenet", ["--data.load_size=160"], 160, 160, None, 224)])
def test_export_records_the_size_eval_and_embed_feed_not_the_training_views(preset, overrides, size, load, crop,
                                                                           views):
    from byol.config import load_config
    from byol.exports import _eval_input
    info = _eval_input(load_config(preset, overrides), (0.1, 0.2, 0.3), (1.0, 1.0, 1.0))
    assert (info["image_size"], info["training_views"]) == (size, views)
    assert (info["load_size"], info["crop"]) == (load, crop)  # as numbers
    # CIFAR's own images as stored; a folder's (also for an encoder trained on CIFAR, as eval and embed feed it)
    assert info["images"].startswith("cifar10's own images, not resized; other images (a folder's) alike: each "
                                     "file opened") == (preset == "cifar10-cpu")
    assert f"resized to {load} x {load}" in info["images"]
    cut = f"center {crop} x {crop} cut out at offset round(({load} - {crop}) / 2)"
    assert (cut in info["images"]) == bool(crop)
    assert info["mean"] == [0.1, 0.2, 0.3]  # the run's own: checked end to end in test_cli's export test


def test_export_says_how_eval_and_embed_read_pixels_and_in_which_precision_they_compute_features():
    """What a user recomputing the features needs (a user test matched embed's to bf16's rounding only
    with bf16 autocast, which export.json did not name; and read an RGBA PNG as PIL's convert would)."""
    from byol.config import load_config
    from byol.exports import _eval_input
    for precision, said in (("auto", "bf16 autocast where the device computes bf16 natively"), ("fp32", "float32"),
                            ("bf16", "bf16 autocast")):
        info = _eval_input(load_config("imagenet", [f"--train.precision={precision}"]), (0.5,) * 3, (1.0,) * 3)
        assert info["precision"].startswith(said), info["precision"]
    said = ("EXIF", "transparent pixels", "composited onto black", "16-bit gray")
    assert all(words in info["images"] for words in said)


def _as_export_json_says(path, load: int, crop) -> np.ndarray:
    """A file's pixels as export.json's ``input.images`` describes them, written apart from byol's
    decoding (PIL, NumPy and torchvision only): what someone without byol would write from it."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps
    from torchvision.transforms import CenterCrop
    with Image.open(path) as im:
        im.draft(im.mode, (load, load))
        im.load()
        fmt = im.format
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # "a malformed EXIF: as stored" (Pillow 9.1 fails so on any TIFF once loaded)
            pass
    if im.mode.startswith("I;16") or (im.mode == "I" and fmt in ("PNG", "PPM")):
        im = Image.fromarray(np.round(np.asarray(im, np.float64) / 257).astype(np.uint8))
    elif im.mode in ("I", "F"):
        v = np.asarray(im, np.float64)
        top = v[np.isfinite(v)].max(initial=0.0)
        v = np.where(np.isfinite(v), v, np.where(v > 0, top, 0.0))
        if im.mode == "I":
            v = v if top <= 255 else v / 257 if top <= 65535 else v / (top / 255)
        else:
            v = v * 255 if top <= 1 else v if top <= 255 else v * (255 / top)
        im = Image.fromarray(np.clip(np.round(v), 0, 255).astype(np.uint8))
    elif "A" in im.mode or "transparency" in im.info:  # an alpha channel, a transparent colour or entry
        rgba = np.asarray(im.convert("RGBA"), np.float64)
        im = Image.fromarray(np.round(rgba[..., :3] * rgba[..., 3:] / 255).astype(np.uint8))
    im = im.convert("RGB")
    w, h = im.size
    s = min(w, h)
    im = im.resize((load, load), Image.Resampling.BILINEAR, box=((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2))
    pixels = torch.from_numpy(np.array(im)).permute(2, 0, 1)
    return (CenterCrop(crop)(pixels) if crop else pixels).numpy()


@pytest.mark.parametrize("load, crop", [(27, 24), (73, 64), (256, 224), (40, None)])
def test_export_jsons_description_of_a_folders_pixels_reproduces_what_eval_and_embed_feed(tmp_path, load, crop):
    """Files of every kind that the description names (EXIF turned, transparent, 16- and 32-bit and
    float gray, odd sizes, a JPEG decoded by draft), decoded as export.json says by code written apart
    from byol's, give the pixels eval and embed feed: byol's decoding and center crop. A user test found
    the offset's rounding and the fractional box unsaid; either way off here fails."""
    from PIL import Image
    from byol.evaluate import center_crop
    from byol.images import decode_image
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (61, 90, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "wide.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: turned upright
    Image.fromarray(noise[:, :77]).save(tmp_path / "turned.jpg", exif=exif)
    Image.fromarray(rng.integers(0, 256, (450, 301, 3), dtype=np.uint8)).save(tmp_path / "large.jpg")  # draft
    Image.fromarray(rng.integers(0, 256, (33, 50, 4), dtype=np.uint8), "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(rng.integers(0, 65536, (41, 30), dtype=np.uint16)).save(tmp_path / "gray16.png")
    keyed = noise[:40, :30].copy()
    keyed[::3] = (255, 0, 0)  # a PNG's transparent colour (tRNS): composited, as alpha is (a review)
    Image.fromarray(keyed).save(tmp_path / "colour_key.png", transparency=(255, 0, 0))
    Image.fromarray(noise[:, :, 0]).save(tmp_path / "gray_key.png", transparency=int(noise[0, 0, 0]))
    Image.fromarray(noise).convert("P").save(tmp_path / "palette.png", transparency=3)
    Image.fromarray(noise[:40, :40]).convert("LA").save(tmp_path / "gray_alpha.png")
    Image.fromarray(noise).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(noise).convert("1").save(tmp_path / "one_bit.png")
    for name, top in (("int_8.tif", 200), ("int_16.tif", 60000), ("int_big.tif", 2 ** 20)):
        values = rng.integers(0, top, (30, 35))
        Image.fromarray(values.astype(np.int32), "I").save(tmp_path / name)
    for name, values in (("float_1.tif", rng.random((29, 36))), ("float_255.tif", rng.random((29, 36)) * 250),
                         ("float_big.tif", rng.random((29, 36)) * 1e4)):
        values[0, :3] = (np.nan, np.inf, -np.inf) if name == "float_big.tif" else values[0, :3]
        Image.fromarray(values.astype(np.float32), "F").save(tmp_path / name)
    for path in sorted(tmp_path.iterdir()):
        byols = decode_image(str(path), load)
        byols = (center_crop(byols[None], crop)[0] if crop else byols).numpy()
        assert np.array_equal(_as_export_json_says(path, load, crop), byols), path.name


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
    assert exports._numbered_as(own, empty) is own
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
    assert len(exports._folder_split(tmp_path, None, 8, "train")) == 1
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
    train = exports._folder_split(tmp_path, "train", 8, "unlabeled")
    assert train.root == str(tmp_path / "train") and train.classes == ["cat", "dog"]  # as eval's bank
    for split in (None, "val"):  # numbered as eval numbers them, not by ROOT/unlabeled's part1/
        val = exports._folder_split(tmp_path, split, 8, "unlabeled")
        assert val.root == str(tmp_path / "val") and val.classes == ["cat", "dog"] and val.labels.tolist() == [0, 1]
    assert len(exports._folder_split(tmp_path, "unlabeled", 8, "unlabeled")) == 2


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_embeddings_are_written_straight_into_their_file_and_a_full_disk_there_keeps_the_earlier_output(
        tmp_path, monkeypatch, suffix):
    """The embeddings go from the tensor into the file (no copy of them in memory first: a .pt took 3x
    their size); a disk that fills up in the middle leaves an earlier output's files as they were."""
    import errno
    import torch
    from byol.outputs import OutputError
    out, rows = tmp_path / f"e{suffix}", torch.arange(40.0).view(10, 4)
    exports._save_embeddings(out, rows, torch.arange(10), ["a.png"] * 10, ["cat"], "float32")
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
        exports._save_embeddings(out, rows[:5], torch.arange(5), None, None, "float32")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary left either
    monkeypatch.undo()
    if suffix == ".pt":  # 5 rows saved, not the 10 of the tensor they are a part of
        exports._save_embeddings(out, rows[:5], torch.arange(10)[:5], None, None, "float32")
        saved = torch.load(out, weights_only=True)
        assert all(saved[k].untyped_storage().nbytes() == saved[k].nbytes for k in ("embeddings", "labels"))
        assert torch.equal(saved["embeddings"], rows[:5])


def test_export_scripts_a_layer_whose_attribute_has_the_id_of_a_function_torch_has_freed():
    """CI: export failed at random ('builtin cannot be used as a value', at a Conv2d's
    ``_reversed_padding_repeated_twice``) in a process that had done other work: TorchScript's table of
    builtins is keyed by id() and keeps those of functions torch.library has since freed, which a new object
    can be given. Here one is, on purpose."""
    import torch
    from byol.backbones import resnet
    net = resnet("resnet18", cifar_stem=True, width=8).eval()
    table = torch.jit._builtins._get_builtin_table()
    padding = net.layer2[0].conv1._reversed_padding_repeated_twice
    table[id(padding)] = "aten::freed_long_ago"  # as if a freed op had lived where this tuple now lives
    try:
        scripted = exports._script(net)
    finally:
        table.pop(id(padding), None)
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(scripted(images), net(images))


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
    exports.embed(tmp_path / "r18.pt", tmp_path / "e.pt", overrides=[
        "--data.dataset=folder", f"--data.root={tmp_path / 'images'}", "--data.image_size=8", "--data.workers=0",
        "--train.precision=fp32"])
    saved = torch.load(tmp_path / "e.pt", weights_only=True)
    assert [p.removeprefix(str(tmp_path / "images") + "/") for p in saved["paths"]] == [
        "a/0.png", "a/1.png", "b/2.png", "b/3.png", "b/4.png"]
    assert saved["labels"].tolist() == [0, 0, 1, 1, 1]
    alone = exports.embed(tmp_path / "r18.pt", tmp_path / "one.pt", overrides=[
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
        assert exports._find_split(tmp_path, split, 8, "train").root == str(tmp_path / (split or "val"))
    assert "no test/ folder" not in capsys.readouterr().err
