"""Our kNN protocol beside lightly's, image for image, on a checkpoint's encoder and all of CIFAR-10.

    benchmarks/.venv/bin/python -m benchmarks.knn_parity CHECKPOINT [--root ../shared/data/cifar10]

(``benchmarks/setup_peers.sh`` makes the venv with lightly 1.6.0.) Features of the train split (the memory bank)
and the test split (the queries), ours (``extract_features``) in float32 and bf16, and lightly's as its
``BenchmarkModule`` computes them (PIL image, ``ToTensor``, ``Normalize``, the encoder in eval mode,
``F.normalize``); then ``knn_classify`` against lightly's ``knn_predict`` (bank transposed, 512 queries at a
time), at k = 20 and 200, T = 0.1: the accuracies and how many predictions differ. BENCHMARKS.md, "Are our
numbers the peers' numbers?", quotes its output.
"""

import argparse

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from lightly.utils.benchmarking import knn_predict
from PIL import Image

import byol
from byol.build import views_of
from byol.datasets import build_dataset
from byol.evaluate import extract_features, knn_classify


@torch.no_grad()
def lightly_features(encoder, images: torch.Tensor, mean, std, batch: int = 512) -> torch.Tensor:
    """Unit features as lightly's BenchmarkModule computes them, from each image as a PIL image."""
    transform = T.Compose([T.ToTensor(), T.Normalize(mean=mean, std=std)])
    out = []
    for i in range(0, len(images), batch):
        x = torch.stack([transform(Image.fromarray(img.permute(1, 2, 0).numpy())) for img in images[i:i + batch]])
        out.append(F.normalize(encoder(x).flatten(1), dim=1))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--root", default="../shared/data/cifar10")
    args = parser.parse_args()
    encoder, config = byol.load_encoder(args.checkpoint, [f"--data.root={args.root}"])
    view1, _ = views_of(config)
    train = build_dataset("cifar10", args.root, "train", None, False)
    test = build_dataset("cifar10", args.root, "test", None, False)
    ours = {name: [extract_features(encoder, split.images, batch_size=512, mean=view1.mean, std=view1.std,
                                    amp_dtype=amp) for split in (train, test)]
            for name, amp in (("fp32", None), ("bf16", torch.bfloat16))}
    bank, queries = (lightly_features(encoder, split.images, view1.mean, view1.std) for split in (train, test))
    gap = float((bank - F.normalize(ours["fp32"][0], dim=1)).abs().max())
    print(f"{len(train):,} train and {len(test):,} test images; unit features, lightly's path against ours in "
          f"float32: at most {gap:.1e} apart")
    ty, qy = train.labels, test.labels
    accuracy = lambda predicted: 100.0 * float((predicted == qy).float().mean())  # noqa: E731
    for k in (20, 200):
        predicted = {name: knn_classify(f[0], ty, f[1], k=k, temperature=0.1, num_classes=10).argmax(1)
                     for name, f in ours.items()}
        theirs = torch.cat([knn_predict(queries[i:i + 512], bank.t().contiguous(), ty, 10, k, 0.1)[:, 0]
                            for i in range(0, len(queries), 512)])
        print(f"k={k}: lightly {accuracy(theirs):.2f}%; ours float32 {accuracy(predicted['fp32']):.2f}% "
              f"({int((predicted['fp32'] != theirs).sum())} predictions differ from lightly's), bf16 "
              f"{accuracy(predicted['bf16']):.2f}% ({int((predicted['bf16'] != predicted['fp32']).sum())} differ "
              f"from float32's) of {len(qy):,}")


if __name__ == "__main__":
    main()
