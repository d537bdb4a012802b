import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from byol.evaluate import (CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, center_crop, extract_features,
                           knn_accuracy, knn_classify, linear_probe)

@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: intra-op threads only contend (10x slower on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar-10-batches-bin"


def unit(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


# One class-0 point on the query, two class-1 points at cosine 0.5, one class-2 point opposite.
TRAIN = torch.tensor([unit(0), unit(60), unit(-60), unit(180)])
LABELS = torch.tensor([0, 1, 1, 2])
QUERY = torch.tensor([[2.0, 0.0]])


def test_knn_weights_votes_by_exp_similarity_over_temperature():
    scores = knn_classify(TRAIN, LABELS, QUERY, k=3, temperature=0.1)
    expected = torch.tensor([[math.exp(10), 2 * math.exp(5), 0.0]])  # class 2 is not among the 3 nearest
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=0)
    assert scores.argmax(1).item() == 0  # weighted vote: the one close neighbour wins
    flat = knn_classify(TRAIN, LABELS, QUERY, k=3, temperature=100.0)
    assert flat.argmax(1).item() == 1  # near-uniform weights: the majority wins


def test_knn_uses_cosine_similarity():
    scale = torch.tensor([[0.01], [5.0], [3.0], [100.0]])
    torch.testing.assert_close(knn_classify(TRAIN * scale, LABELS, QUERY * 7, k=3),
                               knn_classify(TRAIN, LABELS, QUERY, k=3))


def test_knn_k_is_capped_and_num_classes_respected():
    scores = knn_classify(TRAIN, LABELS, QUERY, k=50, num_classes=5)
    assert scores.shape == (1, 5) and scores[0, 2] > 0 and scores[0, 3:].sum() == 0


def random_split(n_train=60, n_test=23, d=8, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n_train, d, generator=g), torch.randint(0, c, (n_train,), generator=g),
            torch.randn(n_test, d, generator=g), torch.randint(0, c, (n_test,), generator=g))


def test_knn_chunked_equals_unchunked():
    x, y, q, _ = random_split()
    one = knn_classify(x, y, q, k=10, chunk_size=1)
    whole = knn_classify(x, y, q, k=10, chunk_size=10_000)
    assert one.shape == (23, 4)
    torch.testing.assert_close(one, whole)


def test_knn_chunks_hold_the_similarities_to_a_bound_a_large_bank_sets(monkeypatch):
    """A user test at ImageNet scale: 1,024 queries at a time against a bank of 1.3 million took
    5.3 GB. By default a chunk has 1,024 rows, fewer where the bank is large; the scores are the same."""
    import byol.evaluate
    x, y, q, qy = random_split(n_train=600, n_test=50)

    def sizes():
        return [len(sims) for _, sims, _ in byol.evaluate._knn_chunks(x, q, 5, None, None)]
    assert sizes() == [50]  # one chunk: 1,024 rows of 600 are far below the bound
    expected = knn_accuracy(x, y, q, qy, ks=(1, 5))
    monkeypatch.setattr(byol.evaluate, "KNN_CHUNK_ENTRIES", 6_000)  # 10 rows of 600
    assert sizes() == [10] * 5
    assert knn_accuracy(x, y, q, qy, ks=(1, 5)) == expected
    monkeypatch.setattr(byol.evaluate, "KNN_CHUNK_ENTRIES", 100)  # less than a row: one row at a time
    assert sizes() == [1] * 50


def test_knn_accuracy_matches_knn_classify_for_every_k():
    x, y, q, qy = random_split()
    acc = knn_accuracy(x, y, q, qy, ks=(1, 5, 20), chunk_size=7)
    assert list(acc) == [1, 5, 20]
    for k, value in acc.items():
        pred = knn_classify(x, y, q, k=k, num_classes=4).argmax(1)
        assert value == pytest.approx(100.0 * (pred == qy).float().mean().item())
    assert knn_accuracy(x, y, x, y, ks=(1,))[1] == 100.0  # each point is its own nearest neighbour


def separable(n, d=16, c=4, seed=0):
    """Gaussian blobs whose centres are 8 standard deviations apart or more: linearly separable."""
    centres = 8 * torch.eye(c, d) + 3  # (C, D), pairwise distance 8 * sqrt(2)
    y = torch.arange(n) % c
    return centres[y] + torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), y


def test_linear_probe_separates_linearly_separable_data():
    x, y = separable(1000)
    xt, yt = separable(300, seed=1)
    result = linear_probe(x, y, xt, yt, epochs=30, batch_size=64)
    assert set(result) == {"top1", "top5", "classes", "train_loss"}
    assert result["top1"] > 99 and result["train_loss"] < 0.05
    assert result["top5"] == 100.0 and result["classes"] == 4  # top-min(5, C) with C = 4


def test_linear_probe_is_at_chance_on_random_labels_and_deterministic():
    x, y, xt, yt = random_split(n_train=400, n_test=1000, d=32, c=4)
    result = linear_probe(x, y, xt, yt, epochs=10, batch_size=64)
    assert 25 - 6 < result["top1"] < 25 + 6  # 4 sigma for 1000 test points
    assert linear_probe(x, y, xt, yt, epochs=10, batch_size=64) == result


def encoder():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2))


def images(n=10, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_extract_features_matches_a_manual_forward_and_restores_train_mode():
    net, x = encoder(), images()
    net.train()
    running = net[1].running_mean.clone()
    feats = extract_features(net, x, batch_size=3, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    assert net.training and torch.equal(net[1].running_mean, running)
    assert feats.shape == (10, 16) and feats.dtype == torch.float32
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        manual = net.eval()((x.float() / 255 - mean) / std).flatten(1)
    torch.testing.assert_close(feats, manual)
    extract_features(net, x)
    assert not net.training  # eval stays eval


def test_extract_features_under_autocast_returns_float32():
    net, x = encoder(), images()
    feats = extract_features(net, x, amp_dtype=torch.bfloat16)
    assert feats.dtype == torch.float32 and not feats.is_inference()
    torch.testing.assert_close(feats, extract_features(net, x), atol=0.03, rtol=0.03)


def test_extract_features_resizes_first():
    net, x = encoder(), images()
    feats = extract_features(net, x, size=16)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    big = F.interpolate(x.float() / 255, size=16, mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(feats, net.eval()((big - mean) / std).flatten(1))


@pytest.mark.parametrize("side, crop", [(37, 32), (256, 224), (9, 4), (8, 8), (6, 8)])
def test_center_crop_cuts_what_torchvisions_center_crop_cuts(side, crop):
    from torchvision.transforms.v2.functional import center_crop as torchvision_center_crop
    x = images(n=2, size=side)
    expected = torchvision_center_crop(x, [crop, crop]) if side >= crop else x  # smaller: whole, not padded
    assert torch.equal(center_crop(x, crop), expected)


def test_extract_features_takes_numpy_and_says_what_it_cannot_take():
    net, x = encoder(), images()
    torch.testing.assert_close(extract_features(net, x.numpy()), extract_features(net, x))
    for bad, said in (((net, x.permute(0, 2, 3, 1)), r"images must be a batch \(N, C, H, W\) with C = 3, the "
                                                     r"channels of mean and std, got shape \(10, 8, 8, 3\)"),
                      ((net, [(x[:, :1], torch.zeros(10), torch.arange(10))]), "images must be a batch"),
                      ((net, x, 0), "batch_size must be >= 1, got 0")):
        with pytest.raises(ValueError, match=said):
            extract_features(*bad)


def test_extract_features_crops_the_center_first():
    net, x = encoder(), images(size=12)
    feats = extract_features(net, x, crop=8, size=16)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    big = F.interpolate(x[:, :, 2:10, 2:10].float() / 255, size=16, mode="bilinear", antialias=True,
                        align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(feats, net.eval()((big - mean) / std).flatten(1))
    batches = [(x[:5], torch.zeros(5), torch.arange(5)), (x[5:], torch.zeros(5), torch.arange(5, 10))]
    torch.testing.assert_close(extract_features(net, batches, crop=8, size=16)[0], feats)


def test_extract_features_from_shuffled_batches_returns_dataset_order():
    net, x = encoder(), images(n=11)
    labels = torch.arange(11) % 3
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(1))
    batches = [(x[idx], labels[idx], idx) for idx in perm.split(4)]
    feats, got_labels = extract_features(net, batches)
    torch.testing.assert_close(feats, extract_features(net, x))
    assert torch.equal(got_labels, labels)


class Batches:
    """A loader's stand-in: ``(images, labels, indices)`` batches, and a sampler whose length is the total."""

    def __init__(self, batches, total):
        self.batches, self.sampler = batches, range(total)

    def __iter__(self):
        return iter(self.batches)


@pytest.mark.parametrize("case", ["in order", "shuffled", "some left out", "more than the total"])
def test_batches_are_written_into_one_tensor_of_their_total_and_come_out_in_dataset_order(case, monkeypatch):
    """A folder's embeddings take their own size once: the rows are written into one tensor of the
    loader's total as they come, not listed, concatenated and reordered (3x their size at 1.3M images)."""
    net, x = encoder(), images(n=11)
    cat, joined = torch.cat, []
    monkeypatch.setattr(torch, "cat", lambda parts, *a, **k: joined.append(parts[0].dtype) or cat(parts, *a, **k))
    labels, expected = torch.arange(11) % 3, extract_features(net, x)
    idx = {"in order": torch.arange(11), "shuffled": torch.randperm(11, generator=torch.Generator().manual_seed(1)),
           "some left out": torch.tensor([0, 1, 2, 4, 5, 9, 10]), "more than the total": torch.arange(11)}[case]
    total = 9 if case == "more than the total" else 11  # a sampler that said too few: listed from there on
    loader = Batches([(x[i], labels[i], i) for i in idx.split(4)], total)
    feats, got_labels, got_idx = extract_features(net, loader, with_indices=True)
    present = idx.sort().values
    torch.testing.assert_close(feats, expected[present])
    assert torch.equal(got_labels, labels[present]) and torch.equal(got_idx, present)
    assert (torch.float32 in joined) == (case == "more than the total")  # features concatenated there only
    if case in ("in order", "some left out"):  # the one tensor itself, of the total's rows: not reordered
        assert feats.untyped_storage().nbytes() == 11 * feats.shape[1] * 4


def test_a_loader_whose_own_batch_sampler_picks_the_items_is_not_sized_by_its_whole_data_set():
    """From a review: a DataLoader given a batch_sampler has the whole data set as its sampler, and the
    features of its 32 items were written into a tensor of all 100,000 rows (kept alive by the result)."""
    from torch.utils.data import DataLoader, TensorDataset
    data = TensorDataset(images(n=12), torch.zeros(12, dtype=torch.int64), torch.arange(12))
    net = encoder()
    feats, _ = extract_features(net, DataLoader(data, batch_sampler=[[3, 4, 5], [7]]))
    assert feats.untyped_storage().nbytes() == 4 * feats.shape[1] * 4
    torch.testing.assert_close(feats, extract_features(net, data.tensors[0])[[3, 4, 5, 7]])
    feats, _ = extract_features(net, DataLoader(data, batch_size=5, sampler=range(2, 9)))  # its sampler: 7 rows
    assert feats.untyped_storage().nbytes() == 7 * feats.shape[1] * 4


def load_cifar(name, n):
    r = np.fromfile(CIFAR / name, np.uint8, count=n * 3073).reshape(-1, 3073)
    images = torch.from_numpy(r[:, 1:].reshape(-1, 3, 32, 32).copy())  # (N, 3, 32, 32) uint8
    return images, torch.from_numpy(r[:, 0].astype(np.int64))


@pytest.mark.skipif(not CIFAR.is_dir(), reason="real CIFAR-10 not found in ../shared/data")
def test_real_cifar10_raw_pixels_are_well_above_chance():
    (x, y), (xt, yt) = load_cifar("data_batch_1.bin", 2000), load_cifar("test_batch.bin", 1000)
    pixels = nn.Flatten()
    kwargs = dict(mean=CIFAR10_MEAN, std=CIFAR10_STD)
    f, ft = extract_features(pixels, x, **kwargs), extract_features(pixels, xt, **kwargs)
    assert f.shape == (2000, 3072)
    acc = knn_accuracy(f, y, ft, yt, ks=(20, 200))
    assert acc[20] > 25 and acc[200] > 25, acc  # chance is 10
    probe = linear_probe(f, y, ft, yt, epochs=20)
    assert probe["top1"] > 22 and probe["top5"] > 65, probe


def test_settings_that_mean_nothing_are_errors():
    x, y = torch.randn(8, 4), torch.arange(8) % 2
    for bad in (dict(ks=(0,)), dict(ks=(20, -3)), dict(ks=()), dict(temperature=0.0)):
        with pytest.raises(ValueError):
            knn_accuracy(x, y, x, y, **bad)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        linear_probe(x, y, x, y, epochs=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        linear_probe(x, y, x, y, batch_size=0)


def test_numpy_features_and_labels_as_embed_writes_them_give_what_tensors_give(tmp_path):
    x, y, xt, yt = random_split(n_train=40, n_test=20, d=8, c=3)
    for name, array in (("x", x), ("y", y), ("xt", xt), ("yt", yt)):
        np.save(tmp_path / f"{name}.npy", array.numpy())
    x_np, y_np, xt_np, yt_np = (np.load(tmp_path / f"{name}.npy") for name in ("x", "y", "xt", "yt"))
    assert knn_accuracy(x_np, y_np, xt_np, yt_np) == knn_accuracy(x, y, xt, yt)
    assert torch.equal(knn_classify(x_np, y_np, xt_np), knn_classify(x, y, xt))
    assert linear_probe(x_np, y_np, xt_np, yt_np, epochs=2) == linear_probe(x, y, xt, yt, epochs=2)
    assert knn_accuracy(x, y.tolist(), xt, yt.double().numpy()) == knn_accuracy(x, y, xt, yt)  # integral floats


def test_features_and_labels_that_do_not_fit_are_one_sentence():
    x, y = torch.randn(8, 4), torch.arange(8) % 2
    for args, said in (((x[:, 0], y, x, y), r"the train features must be a matrix \(N, D\), got shape \(8,\)"),
                       ((x, y[:5], x, y),
                        r"the train labels must be one per row of its features, shape \(8,\), got \(5,\)"),
                       ((x, y, x, y[:, None]), r"the test labels must be one per row"),
                       ((x, y - 1, x, y), r"the train labels must be class indices 0, 1, ... \(byol embed writes -1"),
                       ((x, y + 0.5, x, y), r"the train labels must be class indices"),
                       ((x, y, x[:, :3], y), r"the train and test features differ in width: 4 and 3")):
        for fn in (knn_accuracy, linear_probe):
            with pytest.raises(ValueError, match=said):
                fn(*args)
    with pytest.raises(ValueError, match="the train labels must be class indices"):
        knn_classify(x, y - 1, x)
    for args, said in (((x, y, x, None), "the test labels are needed to score the test split"),
                       ((x[:0], y[:0], x, y), r"the train split needs at least \d rows?, got 0"),
                       ((x * math.nan, y, x, y), "the train features hold NaN or infinite values"),
                       ((x, y, x / 0, y), "the test features hold NaN or infinite values")):
        for fn in (knn_accuracy, linear_probe):
            with pytest.raises(ValueError, match=said):
                fn(*args)
    with pytest.raises(ValueError, match="the train split needs at least 2 rows, got 1"):  # its std
        linear_probe(x[:1], y[:1], x, y)
    with pytest.raises(ValueError, match="epochs must be a whole number, got 1.5"):
        linear_probe(x, y, x, y, epochs=1.5)
    for bad in (dict(k=0), dict(temperature=0.0)):
        with pytest.raises(ValueError, match="every k must be a whole number >= 1 and the temperature > 0"):
            knn_classify(x, y, x, **bad)
    with pytest.raises(ValueError, match="num_classes=1, but the train labels go up to 1"):
        knn_classify(x, y, x, num_classes=1)
    with pytest.raises(ValueError, match=r"ks must be a list or tuple of whole numbers >= 1, such as \(20, 200\)"):
        knn_accuracy(x, y, x, y, ks=5)  # as byol.knn says (pipeline.check_counts)
    with pytest.raises(ValueError, match="every k must be a whole number >= 1"):
        knn_accuracy(x, y, x, y, ks=[2.5])
    assert knn_accuracy(x, y, x, y, ks=np.array([5])) == knn_accuracy(x, y, x, y, ks=(5,))  # NumPy's whole numbers
    assert knn_accuracy(x, y, x[:0], y[:0]) == {20: 0.0, 200: 0.0}  # no test rows: nothing right


def test_progress_bars_on_stderr_only_when_asked(capsys):
    net = nn.Conv2d(3, 2, 3)
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    quiet = extract_features(net, images, batch_size=4)
    assert capsys.readouterr().err == ""
    shown = extract_features(net, images, batch_size=4, progress="train features")
    err = capsys.readouterr().err
    assert "train features" in err and "/10 [" in err and "img/s" in err, err  # N/10: timing decides N
    torch.testing.assert_close(shown, quiet)
    x, y = torch.randn(16, 4), torch.arange(16) % 2
    assert linear_probe(x, y, x, y, epochs=3, progress=True) == linear_probe(x, y, x, y, epochs=3)
    err = capsys.readouterr().err
    assert "linear probe" in err and "/3 [" in err and "epoch/s" in err, err


def test_bars_are_drawn_on_a_terminal_that_says_it_has_no_rows(monkeypatch):
    """A user test under `script` (a pseudo-terminal whose size was never set: 0 rows): tqdm hid every bar,
    so a run showed nothing until its closing table."""
    import io
    import os
    from tqdm import tqdm
    from byol.evaluate import bar_shape
    monkeypatch.setattr(os, "get_terminal_size", lambda fd: os.terminal_size((100, 0)))
    monkeypatch.setattr(sys, "stderr", types.SimpleNamespace(fileno=lambda: 2))
    assert bar_shape() == {"ncols": 100, "nrows": 24}
    monkeypatch.setattr(os, "get_terminal_size", lambda fd: os.terminal_size((0, 0)))
    assert bar_shape() == {"ncols": 80, "nrows": 24}
    monkeypatch.setattr(os, "get_terminal_size", lambda fd: os.terminal_size((100, 40)))
    assert bar_shape() == {"dynamic_ncols": True}
    shown = io.StringIO()
    with tqdm(total=3, file=shown, ncols=100, nrows=24, mininterval=0) as bar:
        bar.update(3)
    assert "3/3" in shown.getvalue()
