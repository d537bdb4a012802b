import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import byol.progress
from byol.features import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, _Rows, center_crop, extract_features
from byol.progress import LogLines, shown


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


def test_extract_features_puts_back_each_module_s_own_mode_a_frozen_batchnorm_s_too():
    """A review: the encoder's flag alone was put back (encoder.train(True)), which set a BatchNorm layer held in
    eval mode (frozen, in a network given to pretrain) to training, so the kNN monitor's first evaluation unfroze it
    for the rest of the run: its statistics moved, and the run trained otherwise than with the monitor off."""
    net, x = encoder(), images()
    net[1].eval()
    extract_features(net, x, batch_size=3)
    assert [m.training for m in net] == [True, False, True, True]
    net.eval()
    net[2].train()  # and the other way round: a module in training mode under a parent in eval mode
    extract_features(net, x)
    assert [m.training for m in net] == [False, False, True, False] and not net.training


def test_extract_features_under_autocast_returns_float32():
    net, x = encoder(), images()
    feats = extract_features(net, x, amp_dtype=torch.bfloat16)
    assert feats.dtype == torch.float32 and not feats.is_inference()
    full = extract_features(net, x)
    torch.testing.assert_close(feats, full, atol=0.03, rtol=0.03)
    assert not torch.equal(feats, full)  # in bf16: without the autocast, the lines above pass too


def test_extract_features_resizes_first():
    net, x = encoder(), images()
    feats = extract_features(net, x, size=16)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    big = F.interpolate(x.float() / 255, size=16, mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(feats, net.eval()((big - mean) / std).flatten(1))


def test_extract_features_resizes_down_antialiased():
    """A mutation audit: the resize without its antialiasing survived every test, whose resize went up (where
    antialiasing changes nothing); down, as a 96 px STL-10 image fed at 32, it averages the pixels it drops."""
    net, x = encoder(), images(size=32)
    feats = extract_features(net, x, size=8, mean=(0.0,) * 3, std=(1.0,) * 3)
    small = F.interpolate(x.float() / 255, size=8, mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(feats, net.eval()(small).flatten(1))


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


def test_batches_whose_labels_or_indices_are_not_one_per_image_are_refused():
    """A loader of one's own yielding 10 images with 9 labels gave 20 features and 19 labels, misaligned, without a
    word (a review); indices one short gave each label to another image's features."""
    net, x = encoder(), images()
    for labels, indices, shapes in ((torch.zeros(9), torch.arange(10), r"\(9,\) and indices of shape \(10,\)"),
                                    (torch.zeros(10), torch.arange(11), r"\(10,\) and indices of shape \(11,\)"),
                                    (torch.tensor(0), torch.arange(10), r"\(\) and indices of shape \(10,\)")):
        batches = [(x, torch.zeros(10), torch.arange(10)), (x, labels, indices + 10)]
        with pytest.raises(ValueError, match=rf"a batch has 10 images but labels of shape {shapes}: each image needs "
                                             r"its label and its index \(both of shape \(10,\)\)"):
            extract_features(net, batches)


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


def test_rows_of_another_dtype_than_the_first_batch_s_are_listed_and_promoted_not_truncated():
    """From a review: a later batch of another dtype was copied into the first batch's (0.5 became 0)."""
    for total in (4, None):
        rows = _Rows(total)
        rows.add(torch.tensor([1, 2]))
        rows.add(torch.tensor([0.5, 1.5]))
        assert torch.equal(rows.all(), torch.tensor([1.0, 2.0, 0.5, 1.5])), total


def test_bars_are_drawn_on_a_terminal_that_says_it_has_no_rows(monkeypatch):
    """A user test under `script` (a pseudo-terminal whose size was never set: 0 rows): tqdm hid every bar,
    so a run showed nothing until its closing table."""
    import io
    import os
    from tqdm import tqdm
    from byol.progress import bar_shape
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


def test_note_lines_say_where_a_pass_that_failed_stopped_not_that_it_ended(monkeypatch, capsys):
    """``progress=LogLines()`` (a log): a pass cut short by an error says how far it got, not "N images in X s"
    as a whole pass does (it did: a log read as if the features were all extracted before the error)."""
    import byol.progress
    from byol.progress import LogLines
    monkeypatch.setattr(byol.progress, "SCAN_NOTES", (0.0, 0.0))

    class Failing(nn.Module):  # its third batch fails
        def __init__(self, fail_at: int):
            super().__init__()
            self.calls, self.fail_at = 0, fail_at

        def forward(self, x):
            self.calls += 1
            if self.calls == self.fail_at:
                raise RuntimeError("out of memory")
            return x.float().flatten(1)

    images = torch.zeros(10, 3, 2, 2, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="out of memory"):
        extract_features(Failing(3), images, batch_size=4, device="cpu", progress=LogLines("test features"))
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("note: test features: stopped after 8 of 10 images, "), lines
    assert not any(" images in " in line for line in lines), lines
    extract_features(Failing(0), images, batch_size=4, device="cpu", progress=LogLines("test features"))
    assert capsys.readouterr().err.splitlines()[-1].startswith("note: test features: 10 images in ")


def test_note_lines_say_the_rate_and_the_time_left_for_what_is_left(monkeypatch, capsys):
    """A mutation audit: the time left reckoned for the whole pass rather than what is left of it, and the lines
    after the first 5 s apart rather than 30, survived. 30 of 100 images in 10 s, then 40 in 40 s: 1 img/s, and
    60 images left, a minute, on a clock the test moves; and a pass too short for a line
    says nothing at its end either (a survivor too)."""
    now = [1000.0]
    monkeypatch.setattr(byol.progress.time, "monotonic", lambda: now[0])
    with shown(LogLines("test features"), 100, "img", "features") as bar:
        now[0] += 10.0
        bar.update(30)
        now[0] += 29.0  # the next line 30 s after the first (SCAN_NOTES), not 5
        bar.update(10)
        assert len(capsys.readouterr().err.splitlines()) == 1
        now[0] += 1.0
        bar.update(0)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "note: test features: 40 of 100 images, 40 s, 1.0 img/s, about 0:01:00 left", lines
    with shown(LogLines("quick"), 100, "img", "features") as bar:  # under 5 s: no line, at its end neither
        now[0] += 4.0
        bar.update(100)
    assert capsys.readouterr().err == ""


def test_note_lines_of_a_pass_whose_last_batch_comes_at_a_line_say_only_its_end(monkeypatch, capsys):
    """A user review: the last batch, 5 s in, said "6,000 of 6,000 images, 5 s, ..., about 0:00:00 left" and then
    "6,000 images in 5 s" (the same, twice); now only the end's line."""
    now = [1000.0]
    monkeypatch.setattr(byol.progress.time, "monotonic", lambda: now[0])
    with shown(LogLines("test features"), 100, "img", "features") as bar:
        now[0] += 2.0
        bar.update(60)
        now[0] += 4.0
        bar.update(40)
    assert capsys.readouterr().err.splitlines() == ["note: test features: 100 images in 6 s"]


def test_note_lines_of_a_pass_stopped_by_ctrl_c_say_where_it_stopped(monkeypatch, capsys):
    """A KeyboardInterrupt (Ctrl-C), no Exception, cuts a pass short too (a mutation audit: caught as Exception,
    the log said "40 images in 10 s", as if the pass were whole)."""
    now = [1000.0]
    monkeypatch.setattr(byol.progress.time, "monotonic", lambda: now[0])
    with pytest.raises(KeyboardInterrupt):
        with shown(LogLines("test features"), 100, "img", "features") as bar:
            now[0] += 10.0
            bar.update(40)
            raise KeyboardInterrupt
    assert capsys.readouterr().err.splitlines()[-1] == "note: test features: stopped after 40 of 100 images, 10 s"


def test_the_pretraining_bar_counts_images_from_where_the_run_stands():
    """A mutation audit: the pretraining bar counting steps rather than images (its total and its start) survived:
    a run resumed at step 2 of 10, 16 images a step, stands at 32 of 160 images, in thousands past 100,000."""
    from byol.progress import progress_bar
    train = types.SimpleNamespace(progress=True)
    bar = progress_bar(train, rank=0, step=2, end_step=10, batch_size=16)
    try:
        assert (bar.total, bar.n, bar.unit, bar.unit_scale) == (160, 32, "img", False)
    finally:
        bar.close()
    big = progress_bar(train, rank=0, step=0, end_step=1000, batch_size=256)
    big.close()
    assert big.total == 256_000 and big.unit_scale
    assert progress_bar(train, rank=1, step=2, end_step=10, batch_size=16) is None  # rank 0's alone


def test_center_crop_of_an_image_taller_than_wide_cuts_its_rows_at_the_top_offset_and_its_columns_at_the_left():
    """A mutation audit: the top and left offsets swapped survived every test, whose images were square. At 11 x 7
    the offsets differ, and each is one torchvision rounds up ((11 - 4) / 2 = 3.5 to 4, (7 - 4) / 2 = 1.5 to 2)."""
    from torchvision.transforms.v2.functional import center_crop as torchvision_center_crop
    x = torch.arange(2 * 3 * 11 * 7).reshape(2, 3, 11, 7)
    for tall in (x, x.transpose(-1, -2)):
        assert torch.equal(center_crop(tall, 4), torchvision_center_crop(tall, [4, 4]))


def test_extract_features_records_no_graph_through_the_encoder():
    """A mutation audit: extract_features without its inference mode was caught only by a warning's stack level
    (test_evaluate). Its features come without gradients: with them, each batch's features would hold the graph
    of its forward pass (its activations), a data set's worth of them for a bank."""
    net, x = encoder(), images()
    assert all(p.requires_grad for p in net.parameters())
    assert not extract_features(net, x, batch_size=3).requires_grad
    batches = [(x[:4], torch.zeros(4), torch.arange(4)), (x[4:], torch.ones(6), torch.arange(4, 10))]
    feats, _ = extract_features(net, batches)
    assert not feats.requires_grad and all(p.grad is None for p in net.parameters())
