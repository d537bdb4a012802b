import math

import numpy as np
import pytest
import torch
from torch import nn

from byol.evaluate import CIFAR10_MEAN, CIFAR10_STD, extract_features, knn_accuracy, knn_classify, linear_probe
from conftest import CIFAR10


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: intra-op threads only contend (10x slower on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CIFAR = CIFAR10 / "cifar-10-batches-bin"


def unit(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


# One class-0 point on the query, two class-1 points at cosine 0.5, one class-2 point opposite.
TRAIN = torch.tensor([unit(0), unit(60), unit(-60), unit(180)])
LABELS = torch.tensor([0, 1, 1, 2])
QUERY = torch.tensor([[2.0, 0.0]])


def test_knn_weights_votes_by_exp_similarity_over_temperature():
    scores = knn_classify(TRAIN, LABELS, QUERY, k=3, temperature=0.1)
    # exp(sim / T) per neighbour, over exp(max sim / T): exp(10) and 2 exp(5), each over exp(10)
    expected = torch.tensor([[1.0, 2 * math.exp(-5), 0.0]])  # class 2 is not among the 3 nearest
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=0)
    assert scores.argmax(1).item() == 0  # weighted vote: the one close neighbour wins
    flat = knn_classify(TRAIN, LABELS, QUERY, k=3, temperature=100.0)
    assert flat.argmax(1).item() == 1  # near-uniform weights: the majority wins


def test_a_small_temperature_does_not_overflow_the_vote():
    """A user test: at T 0.01, exp(sim / T) was inf in float32 for both classes here, and the vote went
    to class 0 (the first of the tie), where exp(1 / T) > 2 exp(0.99 / T) makes it class 1's."""
    train = torch.tensor([unit(0), unit(math.degrees(math.acos(0.99))), unit(-math.degrees(math.acos(0.99)))])
    scores = knn_classify(train, torch.tensor([1, 0, 0]), QUERY, k=3, temperature=0.01)
    assert torch.isfinite(scores).all() and scores.argmax(1).item() == 1
    torch.testing.assert_close(scores, torch.tensor([[2 * math.exp(-1), 1.0]]), rtol=1e-3, atol=0)
    x, y, q, qy = random_split()
    assert knn_accuracy(x, y, q, qy, ks=(5,), temperature=1e-4)[5] == knn_accuracy(x, y, q, qy, ks=(1,))[1]  # 1-NN's


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


def test_knn_classify_defaults_to_k_200_and_temperature_0_1():
    """A mutation audit: knn_classify's default k of 20 in place of 200 survived every test. Its defaults are
    lightly's knn_predict's, k 200 and temperature 0.1, as its docstring says (knn_accuracy reports k 20 beside)."""
    x, y, q, _ = random_split(n_train=250)
    scores = knn_classify(x, y, q)
    assert torch.equal(scores, knn_classify(x, y, q, k=200, temperature=0.1))
    assert not torch.allclose(scores, knn_classify(x, y, q, k=20, temperature=0.1))


def test_knn_accuracy_breaks_a_tie_as_knn_classify_s_argmax_does():
    """A mutation audit: knn_accuracy breaking a tie of two classes' scores toward the later class survived every
    test. Its prediction is knn_classify's argmax(1), which takes the first: two neighbours at one cosine, of
    classes 1 and 0, score the same, and class 0 is the prediction (a collapsed encoder's features tie so)."""
    train, labels = torch.tensor([unit(60), unit(-60)]), torch.tensor([1, 0])
    scores = knn_classify(train, labels, QUERY, k=2)
    assert scores[0, 0] == scores[0, 1] and scores.argmax(1).item() == 0
    assert knn_accuracy(train, labels, QUERY, torch.tensor([0]), ks=(2,)) == {2: 100.0}


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
    # A k given twice is scored once (a user test: --k 10 10 gave twice the accuracy of --k 10)
    assert knn_accuracy(x, y, q, qy, ks=(5, 1, 5, 5)) == {5: acc[5], 1: acc[1]}


def lightly_knn_predict(feature, feature_bank, feature_labels, num_classes, knn_k=200, knn_t=0.1):
    """lightly 1.6.0's ``lightly.utils.benchmarking.knn_predict`` (MoCo's CIFAR-10 demo), transcribed: lightly is
    not a test dependency. Its benchmark passes both sides L2-normalized and the bank as (D, N)."""
    sim_weight, sim_indices = torch.mm(feature, feature_bank).topk(k=knn_k, dim=-1)
    sim_labels = torch.gather(feature_labels.expand(feature.size(0), -1), dim=-1, index=sim_indices)
    one_hot = torch.zeros(feature.size(0) * knn_k, num_classes).scatter(-1, sim_labels.view(-1, 1), 1.0)
    scores = (one_hot.view(feature.size(0), -1, num_classes) * (sim_weight / knn_t).exp().unsqueeze(-1)).sum(1)
    return scores.argsort(dim=-1, descending=True)


def test_knn_predictions_are_lightlys_knn_predict():
    """What README's results call lightly's classifier: the same top-1 prediction for every query (the
    scores differ by a factor per row, exp(max sim / T), which keeps a small T from overflowing)."""
    x, y, q, _ = random_split(n_train=500, n_test=200, d=16, c=10)
    bank, queries = torch.nn.functional.normalize(x), torch.nn.functional.normalize(q)
    for k, t in ((20, 0.1), (200, 0.1), (20, 0.07)):
        theirs = lightly_knn_predict(queries, bank.t().contiguous(), y, 10, knn_k=k, knn_t=t)[:, 0]
        ours = knn_classify(x, y, q, k=k, temperature=t, num_classes=10, chunk_size=64).argmax(1)
        assert torch.equal(ours, theirs), (k, t)


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
                       ((x, y.double().masked_fill(y == 0, math.inf), x, y), r"the train labels must be class indices"),
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
    for bad in (dict(k=0), dict(temperature=0.0), dict(temperature=float("inf"))):  # inf: the CLI refuses it too
        with pytest.raises(ValueError, match="every k must be a whole number >= 1 and the temperature > 0"):
            knn_classify(x, y, x, **bad)
    with pytest.raises(ValueError, match="num_classes=1, but the train labels go up to 1"):
        knn_classify(x, y, x, num_classes=1)
    with pytest.raises(ValueError, match=r"ks must be a list or tuple of whole numbers >= 1, such as \(20, 200\)"):
        knn_accuracy(x, y, x, y, ks=5)  # as byol.knn says (eval_arguments.check_counts)
    with pytest.raises(ValueError, match="every k must be a whole number >= 1"):
        knn_accuracy(x, y, x, y, ks=[2.5])
    assert knn_accuracy(x, y, x, y, ks=np.array([5])) == knn_accuracy(x, y, x, y, ks=(5,))  # NumPy's whole numbers
    for fn in (knn_accuracy, linear_probe):  # (a user test: 0.0%, as if measured)
        with pytest.raises(ValueError, match="^the test split is empty: there is nothing to score$"):
            fn(x, y, x[:0], y[:0])
    with pytest.raises(ValueError, match="every k must be a whole number >= 1"):
        knn_accuracy(x, y, x, y, ks=(True,))  # (it was k=1)


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


def test_a_broken_tqdm_is_no_bar_for_features_and_the_linear_probe(monkeypatch, capsys):
    """With tqdm that cannot be imported, progress=True is a note and no bar (as pretraining's bar is): the
    features and the linear probe failed on 'NoneType' object has no attribute 'close' (a review: features.shown
    closed the bar that tqdm_bar did not make), so eval, embed and the kNN monitor's passes with a bar."""
    import sys
    from byol.progress import _no_bars
    net = nn.Conv2d(3, 2, 3)
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    quiet = extract_features(net, images, batch_size=4)
    x, y = torch.randn(16, 4), torch.arange(16) % 2
    probe = linear_probe(x, y, x, y, epochs=3)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    _no_bars.cache_clear()  # (said once a process)
    torch.testing.assert_close(extract_features(net, images, batch_size=4, progress="train features"), quiet)
    assert linear_probe(x, y, x, y, epochs=3, progress=True) == probe
    assert capsys.readouterr().err.count("note: tqdm cannot be imported") == 1
    _no_bars.cache_clear()


def test_extract_features_refuses_pixels_it_would_misread():
    """A user test: int64 pixels, or floats in 0..255, gave features of nonsense without a word (the learner
    refused both); (images, labels) batches failed on 'not enough values to unpack'."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    u8 = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    u8[0, 0, 0, 0] = 255  # (its maximum, whatever the generator drew)
    with pytest.raises(ValueError, match="images of dtype torch.int64 are neither uint8"):
        extract_features(net, u8.long())
    with pytest.raises(ValueError, match="float images must be in \\[0, 1\\], but this batch reaches 255; divide it"):
        extract_features(net, u8.float())
    with pytest.warns(UserWarning, match="extract_features scales and normalizes the images itself") as caught:
        extract_features(net, (u8.float() / 255 - 0.5) / 0.1)
    assert caught[0].filename == __file__  # said where the caller gave them
    torch.testing.assert_close(extract_features(net, u8.float() / 255), extract_features(net, u8))
    pairs = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(u8, torch.zeros(6)), batch_size=3)
    with pytest.raises(ValueError, match=r"^batches must be \(images, labels, indices\) triples, .* got a list of 2;"):
        extract_features(net, pairs)


def test_linear_probe_standardizes_the_test_rows_with_the_train_splits_statistics_each_on_its_own():
    """A mutation audit: standardizing the test split with its own mean and std survived every test. The
    probe is a fixed function of a row, learned on the train split: a test split shifted along the class
    axis must land on the class it is shifted into, and a row must score as it does among others."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    y = (x[:, 0] > 0).long()
    xt = torch.randn(200, 8, generator=g)
    xt[:, 0] += 2.0  # 98% of it on the class-1 side
    yt = (xt[:, 0] > 0).long()
    result = linear_probe(x, y, xt, yt, epochs=10)
    assert result["top1"] > 90  # recentred on itself, half of it would be called class 0
    rows = range(0, 200, 20)
    alone = [linear_probe(x, y, xt[i:i + 1], yt[i:i + 1], epochs=10)["top1"] for i in rows]
    assert sum(alone) / len(alone) == linear_probe(x, y, xt[0:200:20], yt[0:200:20], epochs=10)["top1"]


def test_linear_probe_is_the_same_for_features_of_any_scale_and_offset():
    """A mutation audit: a probe without the standardization survived every test. Features are standardized
    with the train split's mean and std (MAE's BatchNorm without affine), so the default lr suits any
    encoder: features scaled by 1e-3 to 1e3 per dimension and offset by 7 give the same probe."""
    x, y, xt, yt = random_split(n_train=200, n_test=100, d=8, c=2)
    y, yt = (x[:, 0] + x[:, 1] > 0).long(), (xt[:, 0] + xt[:, 1] > 0).long()
    ref = linear_probe(x, y, xt, yt, epochs=5)
    scale = torch.logspace(-3, 3, 8)
    other = linear_probe(x * scale + 7, y, xt * scale + 7, yt, epochs=5)
    assert ref["top1"] > 90
    assert other["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-3)
    assert abs(other["top1"] - ref["top1"]) <= 1  # a row, at most, on the boundary


def test_linear_probe_is_the_same_for_features_whose_spread_is_tiny():
    """An audit: the std was floored by adding 1e-6, so features spread by 1e-8 were flattened to about 0 and
    probed near chance (random-init ResNet-18 features of CIFAR-10 scaled by 1e-8: 10.9% top-1 for 35.4%).
    Standardizing divides by the std alone, so the scale of an encoder's output does not change its probe."""
    x, y = separable(400)
    xt, yt = separable(200, seed=1)
    ref = linear_probe(x, y, xt, yt, epochs=5)
    for scale in (1e-6, 1e-8, 1e-12):
        tiny = linear_probe(x * scale, y, xt * scale, yt, epochs=5)
        assert tiny["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-3), scale
        assert abs(tiny["top1"] - ref["top1"]) <= 0.5, scale


def test_linear_probe_trains_on_the_callers_features_not_a_standardized_copy(monkeypatch):
    """A user test at ImageNet's size (1.28M x 512 float32, 2.6 GB): the probe held a standardized copy of
    the train features (5.2 GB more while it was made). Each batch is standardized as it is drawn, with the
    same result."""
    from byol import evaluate
    x, y, xt, yt = random_split(n_train=300, n_test=50, d=8, c=3)
    trained_on, fit = [], evaluate._fit_linear

    def recording(features, *args, **kwargs):
        trained_on.append(features.data_ptr())
        return fit(features, *args, **kwargs)

    monkeypatch.setattr(evaluate, "_fit_linear", recording)
    result = linear_probe(x, y, xt, yt, epochs=2)
    assert trained_on == [x.data_ptr()]
    assert linear_probe(x.double(), y, xt, yt, epochs=2) == result  # a float32 copy of float64 ones: the same


def test_linear_probe_trains_as_documented_nesterov_sgd_with_weight_decay_and_a_cosine_schedule():
    """A mutation audit: the probe without its cosine schedule, its Nesterov momentum or its weight decay
    passed every test here, and no other test reads its numbers (eval's JSON names all three). The
    documented recipe, step by step, gives its results."""
    x, y, xt, yt = random_split(n_train=40, n_test=30, d=8, c=3)
    epochs, batch_size, lr, weight_decay = 3, 16, 0.5, 0.05
    result = linear_probe(x, y, xt, yt, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay)
    mean, std = x.mean(0), x.std(0) + 1e-6
    head = nn.Linear(8, 3)
    nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * 3)  # 3 steps an epoch
    order = torch.Generator().manual_seed(0)  # seed=0
    for _ in range(epochs):
        total, perm = 0.0, torch.randperm(40, generator=order)
        for idx in perm.split(batch_size):
            loss = nn.functional.cross_entropy(head((x[idx] - mean) / std), y[idx])
            opt.zero_grad(), loss.backward(), opt.step(), schedule.step()
            total += loss.item() * len(idx)
    with torch.no_grad():
        top1 = 100 * ((head((xt - mean) / std).argmax(1) == yt).sum().item()) / 30
    assert result["train_loss"] == pytest.approx(total / 40, rel=1e-5) and result["top1"] == top1


def test_linear_probe_top5_counts_the_fifth_class_and_its_defaults_are_the_documented_ones(monkeypatch):
    """A mutation audit: top-5 over the 4 best classes, and a default of 10 epochs for 100, survived. A head
    fixed to the identity ranks each test row's classes by its standardized features: a label in 5th place
    is a top-5 hit, not a top-1, one in 6th neither."""
    import byol.evaluate
    calls = []

    def identity_head(x, mean, std, y, num_classes, epochs, batch_size, lr, weight_decay, seed, progress):
        calls.append((epochs, batch_size, lr, weight_decay, seed))
        head = nn.Linear(num_classes, num_classes)
        nn.init.eye_(head.weight), nn.init.zeros_(head.bias)
        return head, 0.0

    monkeypatch.setattr(byol.evaluate, "_fit_linear", identity_head)
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    y = torch.arange(50) % 6
    ranked = x.mean(0) + x.std(0) * torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])  # classes 0 > 1 > ... > 5
    result = linear_probe(x, y, ranked.repeat(3, 1), torch.tensor([0, 4, 5]))
    assert (result["top1"], result["top5"]) == pytest.approx((100 / 3, 200 / 3))
    assert calls == [(100, 256, 0.1, 5e-4, 0)]


def test_the_fewest_train_rows_each_evaluation_needs_are_enough():
    """kNN scores with a bank of one row, the linear probe with two (it standardizes by their std): a mutation
    audit found the boundaries untested."""
    bank, labels = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    assert knn_accuracy(bank, labels, torch.tensor([[1.0, 0.1]]), torch.tensor([0]), ks=(1,)) == {1: 100.0}
    two, labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    assert linear_probe(two, labels, two, labels, epochs=5)["top1"] == 100.0
    with pytest.raises(ValueError, match="the train split needs at least 2 rows, got 1"):
        linear_probe(two[:1], labels[:1], two, labels)


def test_knn_accuracy_votes_with_exactly_k_neighbours_for_each_k():
    """A mutation audit: knn_accuracy voting with k + 1 neighbours for every k but the largest survived. At a
    temperature of 100 the votes are near-equal: the 2 nearest of the query (classes 0, 1) pick class 0 (the
    nearer), the 3 nearest (0, 1, 1) class 1."""
    assert knn_accuracy(TRAIN, LABELS, QUERY, torch.tensor([0]), ks=(2, 3), temperature=100.0) == {2: 100.0, 3: 0.0}


def test_knn_under_a_callers_bf16_autocast_is_the_float32_knn():
    """A mutation audit: the kNN without its autocast guard survived. A caller's bf16 autocast (the training
    loop's kNN monitor, a notebook) would make the similarities bf16: other neighbours, and a RuntimeError where
    their weights are added into the float32 scores."""
    x, y, q, qy = random_split(n_train=200, n_test=50, d=16)
    scores, acc = knn_classify(x, y, q, k=20), knn_accuracy(x, y, q, qy, ks=(1, 20))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(knn_classify(x, y, q, k=20), scores)
        assert knn_accuracy(x, y, q, qy, ks=(1, 20)) == acc


def test_linear_probe_takes_a_feature_that_never_varies():
    """A mutation audit: standardizing by the std alone (no epsilon) survived. A ReLU encoder's features often
    hold a unit that is 0 for every image (a dead unit): 0 / 0 made every logit NaN."""
    x, y = separable(200)
    xt, yt = separable(100, seed=1)
    x[:, 10], xt[:, 10] = 0.0, 0.0
    result = linear_probe(x, y, xt, yt, epochs=5)
    assert result["top1"] > 99 and math.isfinite(result["train_loss"])


def test_a_feature_constant_over_the_train_split_does_not_decide_a_test_row_where_it_differs():
    """A review: a unit the same in every train row but not 0 (a unit that never fired there, after a bias or a
    BatchNorm) was scaled by 1/1e-6: the head learned a weight for it from the mean's rounding, and each test row
    where the unit differed by 0.5 was classified by that weight alone, at chance (34% of 3 classes for 84%)."""
    g = torch.Generator().manual_seed(0)
    y, yt = torch.randint(0, 3, (600,), generator=g), torch.randint(0, 3, (300,), generator=g)
    x = torch.randn(600, 8, generator=g) + nn.functional.one_hot(y, 8) * 2.0
    xt = torch.randn(300, 8, generator=g) + nn.functional.one_hot(yt, 8) * 2.0
    ref = linear_probe(x, y, xt, yt, epochs=20)["top1"]
    assert ref > 80
    for value in (0.1, 1.7):
        top1 = linear_probe(torch.cat([x, torch.full((600, 1), value)], 1), y,
                            torch.cat([xt, torch.full((300, 1), value + 0.5)], 1), yt, epochs=20)["top1"]
        assert abs(top1 - ref) <= 1


def test_linear_probe_seed_sets_the_shuffling():
    """A mutation audit: a seed the probe ignored survived (eval linear reports the seed it ran with)."""
    x, y, xt, yt = random_split(n_train=100, n_test=20, d=8, c=3)
    losses = {linear_probe(x, y, xt, yt, epochs=2, batch_size=16, seed=seed)["train_loss"] for seed in (0, 1, 0)}
    assert len(losses) == 2


def test_features_computed_with_gradients_on_are_scored_as_their_values():
    """A review: features from ``encoder(x)`` outside ``torch.no_grad()`` failed the probe with torch's "Trying to
    backward through the graph a second time", after writing a gradient into the encoder."""
    encoder = nn.Linear(8, 6)
    x, y, xt, yt = random_split(n_train=40, n_test=20, d=8, c=3)
    f, ft = encoder(x), encoder(xt)
    assert linear_probe(f, y, ft, yt, epochs=2) == linear_probe(f.detach(), y, ft.detach(), yt, epochs=2)
    assert not knn_classify(f, y, ft).requires_grad
    assert knn_accuracy(f, y, ft, yt) == knn_accuracy(f.detach(), y, ft.detach(), yt)
    assert encoder.weight.grad is None


def test_a_linear_probe_that_diverges_is_an_error_not_a_score():
    """A review: at lr nan, inf or 1e38 the head's weights went NaN and the probe reported a top-1 all the same."""
    x, y, xt, yt = random_split(n_train=40, n_test=20, d=8, c=3)
    said = r"^the linear probe diverged \(its last epoch's loss is (nan|inf)\) at lr="
    for lr in (math.nan, math.inf, 1e38):
        with pytest.raises(ValueError, match=said):
            linear_probe(x, y, xt, yt, epochs=2, lr=lr)


def test_a_linear_probe_that_diverged_in_its_last_step_is_an_error_not_a_score():
    """A mutation audit: the loss of one epoch of one batch is measured before its step, finite at lr=inf; only
    the head's logits said it diverged (without their check, a NaN head scored a top-1 as if measured)."""
    x, y, xt, yt = random_split(n_train=40, n_test=20, d=8, c=3)
    with pytest.raises(ValueError, match=r"^the linear probe diverged \(its last epoch's loss is 1.099\) at lr=inf"):
        linear_probe(x, y, xt, yt, epochs=1, batch_size=64, lr=math.inf)


def test_a_chunk_size_below_1_is_an_error_not_a_score_of_no_rows():
    """A review: chunk_size=-1 ("all at once") scored no test row, knn_accuracy 0.0% as if measured."""
    x, y = torch.randn(8, 4), torch.arange(8) % 2
    for bad in (-1, 0, 2.5, True):
        with pytest.raises(ValueError, match=r"^chunk_size must be None or a whole number >= 1"):
            knn_classify(x, y, x, chunk_size=bad)
        with pytest.raises(ValueError, match=r"^chunk_size must be None or a whole number >= 1"):
            knn_accuracy(x, y, x, y, chunk_size=bad)
    assert knn_accuracy(x, y, x, y, ks=(1,), chunk_size=3) == {1: 100.0}


def test_knn_accuracy_defaults_to_k_20_and_200_at_temperature_0_1():
    """A mutation audit: knn_accuracy's default ks of (20,) in place of (20, 200) survived every test. Its defaults
    are k 20 and 200 at temperature 0.1 (docs/metrics.md). One class-0 point on the query and 199 class-1 points at
    cosine 0.5: at k 20 class 1 weighs 19 exp(-5) = 0.13 < 1, at k 200 199 exp(-5) = 1.34 > 1 (at T 0.07, 0.16)."""
    bank, labels = torch.tensor([unit(0)] + [unit(60)] * 199), torch.tensor([0] + [1] * 199)
    acc = knn_accuracy(bank, labels, QUERY, torch.tensor([0]))
    assert list(acc) == [20, 200] and acc == {20: 100.0, 200: 0.0}


def test_linear_probe_counts_a_class_that_only_the_test_split_has():
    """A mutation audit: the probe's classes taken from the train labels alone survived every test. C is the
    classes of both splits (3 here, though the train split has 0 and 1 only), and top-5 is top-min(5, C): the
    3 best of 3 classes always hold the label, while the test rows of class 2 are never a top-1 hit."""
    x, y = separable(40, c=2)
    xt, yt = separable(30, c=3, seed=1)
    result = linear_probe(x, y, xt, yt, epochs=5)
    assert result["classes"] == 3 and result["top5"] == 100.0 and result["top1"] == pytest.approx(200 / 3)
