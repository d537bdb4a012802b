"""export: what export.json says the encoder is fed, its TorchScript file; a bad argument to embed or export
(the rest of embed's: test_embeddings.py)."""

import errno
from pathlib import Path

import numpy as np
import pytest

from byol import exports
from byol.data import DataError


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


def test_a_deep_resnet_by_name_is_pretrained_exported_and_read_back(tmp_path, cifar10_root):
    """model.backbone=resnet101 (the paper's deeper ResNets; narrow and one step here): export.json names it, its
    encoder.pt loads strictly into the network export.json says, and eval reads it back as that network."""
    import torch
    from byol.backbones import resnet
    from byol.config import load_config
    from byol.encoders import load_encoder
    from byol.train import pretrain
    from conftest import tiny_overrides
    run = tmp_path / "run"
    pretrain(load_config("cifar10", tiny_overrides(run, **{
        "model.backbone": "resnet101", "model.width": 4, "train.max_steps": 1, "train.knn_every": -1,
        "train.batch_size": 4, "data.limit": 8}) + [f"--data.root={cifar10_root}"]))
    info = exports.export(run / "checkpoints" / "last.pt", tmp_path / "export")
    assert (info["backbone"], info["cifar_stem"], info["width"]) == ("resnet101", True, 4)
    assert "byol.resnet('resnet101', cifar_stem=True, width=4)" in info["architecture"]
    state = torch.load(info["state_dict"], weights_only=True)
    resnet("resnet101", cifar_stem=True, width=4).load_state_dict(state, strict=True)
    _, config = load_encoder(info["state_dict"])
    assert config.model.backbone == "resnet101" and info["output"]["features"] == 128


def test_an_export_that_fails_at_its_second_file_leaves_the_earlier_export_whole(tmp_path, cifar10_root,
                                                                                monkeypatch):
    """A mutation audit: encoder.pt written straight over the earlier one survived every test but one, which
    replaces the whole writer; a full disk at the second file left the new encoder.pt beside the old rest."""
    from byol.config import load_config
    from byol.train import pretrain
    from conftest import tiny_overrides
    run = tmp_path / "run"
    pretrain(load_config("cifar10", tiny_overrides(run, **{
        "model.width": 4, "train.max_steps": 1, "train.knn_every": -1, "train.batch_size": 4, "data.limit": 8})
        + [f"--data.root={cifar10_root}"]))
    out = tmp_path / "export"
    exports.export(run / "checkpoints" / "last.pt", out)
    for name in ("encoder.pt", "encoder_torchscript.pt", "config.yaml"):  # an earlier export's, unlike this one's
        (out / name).write_bytes(b"earlier " + name.encode())
    earlier = {path.name: path.read_bytes() for path in out.iterdir()}
    written = []
    real_write_bytes = Path.write_bytes

    def full_at_the_second(self, data):
        if Path(self).parent == out:
            written.append(self)
            if len(written) == 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write_bytes(self, data)
    monkeypatch.setattr(Path, "write_bytes", full_at_the_second)
    with pytest.raises(exports.OutputError, match=f"^cannot write {out / 'encoder_torchscript.pt'}: No space left"):
        exports.export(run / "checkpoints" / "last.pt", out)
    assert len(written) == 2
    assert {path.name: path.read_bytes() for path in out.iterdir()} == earlier


def test_an_export_into_a_run_directory_is_refused_as_one_before_any_work(tmp_path):
    """A mutation audit: without the run-directory check an export into RUN was refused only for its config.yaml
    (another sentence), and a run directory without one (removed, or written elsewhere) was written into."""
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(exports.OutputError, match=r"run is a run directory \(it holds checkpoints/\); export into a "
                                                  "folder of its own, such as .*run/export$"):
        exports.export(tmp_path / "none.pt", tmp_path / "run")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["checkpoints"]
