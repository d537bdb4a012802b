"""The three systems timed by ``benchmarks.speed``, each doing one full BYOL step per ``step()``.

A full step: a batch of images is drawn, both views are augmented, the online network runs forward
and backward on both, the target forward on both, the optimizer steps and the target takes its
EMA step. Every system gets the same images (CIFAR-10, uint8), the same torchvision ResNet-18 with
the CIFAR stem, 4096-wide projector/predictor MLPs with 256 outputs, batch, device and optimizer
(LARS, the paper's and our default; see ``OPTIMIZER``). The peers are imported here only, lazily:
the project and its tests never import them.
"""

import copy
import math
import os
from typing import Optional

import torch
from torch import nn

from byol.backbones import resnet
from byol.config import Config
from byol.data import TensorBatches
from byol.optim import LARS, param_groups
from byol.compiling import Compiled, compile_step, eager_fallbacks
from byol.allocator import keep_freed_memory
from byol.cuda_graph import GraphedLoopStep
from byol.step import LoopStep, ViewsForward
from byol.build import build_model

# The same optimizer for every system: LARS with the paper's settings, and its parameter groups
# (no weight decay / LARS adaptation on biases and norms). byol-pytorch's README uses Adam and
# lightly's example SGD; the optimizer is ~1% of a step either way, and counting one keeps the
# comparison to the part the libraries differ in.
OPTIMIZER = dict(lr=0.2, weight_decay=1.5e-6, momentum=0.9, trust_coefficient=0.001)
TOTAL_STEPS = 100 * 97  # schedules as in a 100-epoch CIFAR-10 run at batch 512
PROJECTION_HIDDEN, PROJECTION = 4096, 256
# The reference workload's widths. Narrower ones (``--width 8 --head-width 64`` in benchmarks.speed)
# keep every op of a step but make its arithmetic negligible: what is left is the host's cost of
# issuing the ops, the floor of an eager step on any device.
WIDTH, HEAD_WIDTH = 64, PROJECTION_HIDDEN


def make_optimizer(model: nn.Module, batch: int) -> LARS:
    o = OPTIMIZER
    return LARS(param_groups(model, o["weight_decay"]), lr=o["lr"] * batch / 256, momentum=o["momentum"],
                weight_decay=o["weight_decay"], trust_coefficient=o["trust_coefficient"])


def our_model(batch: int, device: torch.device, width: int = WIDTH,
              head_width: int = HEAD_WIDTH) -> tuple[nn.Module, LARS]:
    """This project's model as ``byol pretrain`` builds it from the default config, and its optimizer."""
    config = Config()
    config.train.batch_size = batch
    config.model.width, config.model.projection_hidden_size = width, head_width
    byol = build_model(config).to(device)
    return byol, make_optimizer(nn.ModuleList([byol.online, byol.predictor]), batch)


def cifar_resnet18(width: int = WIDTH) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem (3x3 stride-1 conv1, no max-pool); ``width``
    channels in its first stage (64: torchvision's)."""
    return resnet("resnet18", cifar_stem=True, width=width)


class Cycle:
    """Batches of a TensorBatches, epoch after epoch."""

    def __init__(self, batches: TensorBatches):
        self.batches, self.epoch, self.it = batches, 0, iter(batches)

    def __next__(self) -> torch.Tensor:
        try:
            return next(self.it)[0]
        except StopIteration:
            self.epoch += 1
            self.batches.set_epoch(self.epoch)
            self.it = iter(self.batches)
            return next(self.it)[0]


class Ours:
    """This project: the body of ``byol.train.pretrain``'s loop (``byol.step.LoopStep``: schedules,
    non-finite guard, step, EMA, metrics summed on the device), less the reads every ``log_every`` steps."""

    name = "byol (this project)"

    def __init__(self, images: torch.Tensor, batch: int, device: torch.device, amp: Optional[torch.dtype],
                 compile: bool, channels_last: bool = True, keep_memory: bool = True, seed: int = 0,
                 name: Optional[str] = None, graphed: bool = False, width: int = WIDTH,
                 head_width: int = HEAD_WIDTH, capture_tail: bool = False):
        if keep_memory and device.type == "cpu":  # as byol.train.pretrain does (train.keep_freed_memory)
            keep_memory = keep_freed_memory()
        self.name = name or self.name
        self.byol, self.optimizer = our_model(batch, device, width, head_width)
        forward, augment = ViewsForward(self.byol, channels_last=channels_last), None
        if compile:
            forward, augment = compile_step(forward, self.byol)
        self.forward, self.augment = forward, augment
        self.batches = Cycle(TensorBatches(images, None, batch, generator=seed))
        generator = torch.Generator(device=device).manual_seed(seed)
        step_class = GraphedLoopStep if graphed else LoopStep  # graphed: experimental (byol.cuda_graph)
        self.loop_step = step_class(forward, self.byol, self.optimizer, generator, amp, augment,
                                    lr=OPTIMIZER["lr"] * batch / 256, warmup_steps=10 * 97, total_steps=TOTAL_STEPS,
                                    tau_base=0.996, **({"capture_tail": True} if capture_tail else {}))
        self.steps = 0
        self.notes = (f"per-image crops/jitter/grayscale/solarize, paper's T and T' (CIFAR: no blur); "
                      f"{'compiled' if compile else 'eager'}{', CUDA graph (experimental)' if graphed else ''}"
                      f"{' holding the optimizer, EMA and guard too' if capture_tail else ''}, "
                      f"{'channels_last' if channels_last else 'NCHW'}"
                      f"{', bf16' if amp else ''}"
                      f"{', freed memory kept' if keep_memory and device.type == 'cpu' else ''}")

    @property
    def compiled(self) -> bool:
        """Compiling asked for (speed.py reports where its first compile's time went)."""
        return isinstance(self.forward, Compiled)

    def step(self) -> None:
        self.loop_step(self.steps, next(self.batches))
        self.steps += 1

    def compile_status(self) -> Optional[str]:
        """None when eager was asked for; else whether the compiled loss computation and augmentations
        are in use, or which fell back to eager (and why): the table must not call an eager run compiled."""
        failed = eager_fallbacks(self.forward, self.augment)
        if not failed:
            return None
        return f"COMPILE FAILED for {len(failed)} parts, eager there ({failed[0].error!r:.200})"


class BYOLPytorch:
    """byol-pytorch, fed as its README shows: ``loss = learner(images)``, backward, step, EMA.

    Its default augmentation is torchvision transforms applied to the whole batch tensor: one crop,
    one flip, one jitter decision for all images of a batch, and only one recipe for both views
    (less work than per-image augmentation, and a different, weaker distribution).
    """

    name = "byol-pytorch"

    def __init__(self, images: torch.Tensor, batch: int, device: torch.device, amp: Optional[torch.dtype],
                 seed: int = 0, width: int = WIDTH, head_width: int = HEAD_WIDTH):
        from byol_pytorch import BYOL
        import byol_pytorch

        self.learner = BYOL(cifar_resnet18(width).to(device), image_size=32, hidden_layer="avgpool",
                            projection_size=PROJECTION, projection_hidden_size=head_width)
        self.optimizer = make_optimizer(self.learner, batch)
        self.batches = Cycle(TensorBatches(images, None, batch, generator=seed))
        self.amp = amp
        version = getattr(byol_pytorch, "__version__", None) or _version("byol-pytorch")
        self.notes = (f"v{version}; ONE crop/flip/jitter per batch (transforms on the batch tensor), one recipe "
                      "for both views (blur p=0.2 3x3, no solarize); views concatenated (one BatchNorm "
                      "batch); its simplicial embedding on (default); per-tensor EMA loop")

    def step(self) -> None:
        images = next(self.batches).float().div_(255)  # its transforms take float images in [0, 1]
        with torch.autocast(images.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            loss = self.learner(images)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.learner.update_moving_average()


class _LightlyBYOL(nn.Module):
    """The model of lightly's BYOL example (examples/pytorch/byol.py), from lightly's building blocks."""

    def __init__(self, backbone: nn.Module, features: int = 512, head_width: int = HEAD_WIDTH):
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(features, head_width, PROJECTION)
        self.prediction_head = BYOLPredictionHead(PROJECTION, head_width, PROJECTION)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x):
        y = self.backbone(x).flatten(start_dim=1)
        z = self.projection_head(y)
        return self.prediction_head(z)

    def forward_momentum(self, x):
        y = self.backbone_momentum(x).flatten(start_dim=1)
        return self.projection_head_momentum(y).detach()


class _PILImages(torch.utils.data.Dataset):
    """(N, H, W, 3) uint8 images served as PIL images, as torchvision's CIFAR10 does."""

    def __init__(self, images_hwc, transform):
        self.images, self.transform = images_hwc, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), 0


def worker_start(workers: int) -> Optional[str]:
    """How a peer's DataLoader starts its workers: by fork where the platform has it, as a user's script
    started on Linux does (Python's default there up to 3.13), else the default.

    Each system runs in a process started by spawn (``benchmarks.speed``), and multiprocessing hands its
    start method down: left to the default, a DataLoader's workers were spawned too, one after the other,
    each starting a Python, importing torch and the peer and unpickling the 50,000 images. In a spawned
    process on a 2-core AMD EPYC, starting 8 workers over such images took 19-25 s by spawn and 0.1-0.2
    s by fork (plain torch, no peer imported; benchmarks/results/cpu-amd-2026-12-05/worker_start.py); on
    the H100 machine (2026-12-05) lightly's construction had not ended after 75 s in one part (its
    stacks: still starting its workers), and most likely took up most of another's time limit.
    Construction is not timed, but it spent the parts' budgets (BENCHMARKS.md, "GPU"). Forked after CUDA
    started in that process (the workers touch no CUDA): not yet run on the GPU.
    """
    import multiprocessing

    return "fork" if workers > 0 and "fork" in multiprocessing.get_all_start_methods() else None


class Lightly:
    """lightly's BYOL example: BYOLTransform on PIL images in DataLoader workers, its heads, its EMA.

    As in lightly's CIFAR-10 example: ``BYOLView1Transform(input_size=32, gaussian_blur=0.0)`` and
    the same for view 2 (per-image crops, flip, jitter, grayscale, solarize on view 2 only: the same
    recipe as ours), a shuffled DataLoader with workers, ``update_momentum`` on a cosine schedule,
    ``NegativeCosineSimilarity``. The example's heads are 1024 wide; here 4096, the paper's and ours.
    """

    name = "lightly"

    def __init__(self, images: torch.Tensor, batch: int, device: torch.device, amp: Optional[torch.dtype],
                 workers: int, seed: int = 0, width: int = WIDTH, head_width: int = HEAD_WIDTH):
        from lightly.loss import NegativeCosineSimilarity
        from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform

        resnet18 = cifar_resnet18(width)
        backbone = nn.Sequential(*list(resnet18.children())[:-1])  # as the example: drop the classifier
        self.model = _LightlyBYOL(backbone, resnet18.fc.in_features, head_width).to(device)
        self.criterion = NegativeCosineSimilarity()
        self.optimizer = make_optimizer(self.model, batch)
        transform = BYOLTransform(view_1_transform=BYOLView1Transform(input_size=32, gaussian_blur=0.0),
                                  view_2_transform=BYOLView2Transform(input_size=32, gaussian_blur=0.0))
        dataset = _PILImages(images.permute(0, 2, 3, 1).cpu().numpy(), transform)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
            persistent_workers=workers > 0, pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(seed), multiprocessing_context=worker_start(workers))
        self.it = iter(self.loader)
        self.device, self.amp, self.steps = device, amp, 0
        # The batches its workers prepare ahead of the step that takes them. Between lightly's rounds
        # (while the other systems run) the workers fill that buffer; a round that began on it would time
        # steps whose augmentation was done outside it. benchmarks.speed starts each round with at least
        # this many untimed steps, so that the timed ones wait on the workers as a long run's do. The workers
        # refill it meanwhile: a step drains 1 - x batches of it, x its time over a batch's augmentation time
        # divided among the workers. On a CPU x is ~40 (a step of 20-35 s, ~1 s to augment a batch): the buffer
        # stays full in a long run too, and one buffer's steps settle it. On a GPU x may be near 1: three
        # buffers' steps drain it for x up to 2/3 (a review's stand-in loader at x = 0.5: 9.1 batches/s after
        # them, 11.2 after one buffer's, 9 in a long run).
        buffer = self.loader.prefetch_factor * workers if workers > 0 else 0
        self.ahead = buffer * (3 if device.type == "cuda" else 1)
        self.notes = (f"v{_version('lightly')}; per-image PIL transforms in {workers} DataLoader workers "
                      "(host CPU), same recipe as ours; per-view forward; per-tensor EMA loop"
                      + (f"; each round after {self.ahead} untimed steps (its workers prefetch {buffer} batches)"
                         if self.ahead else ""))

    def _next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)

    def step(self) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        (x0, x1), _ = self._next()
        momentum = cosine_schedule(self.steps, TOTAL_STEPS, 0.996, 1)
        update_momentum(self.model.backbone, self.model.backbone_momentum, m=momentum)
        update_momentum(self.model.projection_head, self.model.projection_head_momentum, m=momentum)
        x0 = x0.to(self.device, non_blocking=True)
        x1 = x1.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            p0 = self.model(x0)
            z0 = self.model.forward_momentum(x0)
            p1 = self.model(x1)
            z1 = self.model.forward_momentum(x1)
            loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.steps += 1


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def default_workers() -> int:
    """lightly's example uses 8 workers; fewer where the machine has fewer cores."""
    return min(8, os.cpu_count() or 1)


def epoch_seconds(images_per_s: float, epoch: int = 50_000) -> float:
    return epoch / images_per_s if images_per_s > 0 else math.inf
