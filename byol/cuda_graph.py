"""The training step replayed from a CUDA graph (``train.cuda_graph=true``, experimental).

An eager step issues some 1,800 kernels and their Python; on a GPU fed by one host core that costs
~30 ms a step (BENCHMARKS.md, "The host floor"), a cap of ~17,000 images/s at batch 512. A CUDA graph
captures the step's kernels once and launches them all from one call at every step after.
"""

from typing import Optional

import torch

from .compiling import Compiled
from .config import ConfigError
from .ema import update_target_by
from .optim import LARS
from .step import LoopStep, views_loss


class GraphedLoopStep(LoopStep):
    """:class:`~byol.step.LoopStep` with both views' augmentation, the forward and the backward captured
    once in a CUDA graph and replayed each step.

    With ``capture_tail`` (LARS only) the graph holds the rest of the step too: the guard's snapshot,
    the optimizer step, the EMA update, the guard's settle and the metrics' sums, some 200 more kernels
    and the Python around them, which otherwise run eagerly after each replay. Their learning rate and
    ``1 - tau``, numbers that change every step, are then read from two device tensors written before
    each replay (:meth:`byol.optim.LARS.step`'s ``lr``, :func:`byol.ema.update_target_by`): two fills a
    step. The eager steps before the capture run the same tensor forms (so their kernels have run once
    before the capture, and every step's arithmetic is the replays'), which differ from the eager loop's
    by a rounding (LARS's last update a multiply and an add, the EMA a subtract, a multiply and an add,
    where :class:`~byol.step.LoopStep` has one op each): the tests compare them on a CPU. **Written on a
    CPU and not yet run on a GPU**: off by default, measured by ``benchmarks.speed``'s ``byol-graphed-tail``.

    **Experimental**: written on a CPU; its GPU tests (without ``capture_tail``) passed at its first run
    on a GPU (an H100, 2026-12-05: 16,948 images/s against the eager step's 11,190 in 2 rounds;
    BENCHMARKS.md, "GPU"). ``byol pretrain`` runs it with ``train.cuda_graph=true`` (off by default). For
    one CUDA process, eager modules (not ``compile_step``'s), batches of one shape. The first
    ``eager_steps`` calls run the eager step on a side stream, as CUDA graphs need (cuDNN's
    autotuning, the gradients and the optimizer state allocated); the next captures, and every call
    from then on copies its batch in and replays.
    """

    def __init__(self, *args, eager_steps: int = 3, capture_tail: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        from .distributed import world_size

        if self.guard.streak.device.type != "cuda":
            raise ValueError("GraphedLoopStep needs a CUDA device (CUDA graphs)")
        if self.generator is not None and self.generator.device.type != "cuda":
            raise ValueError("GraphedLoopStep draws with a CUDA generator (a CPU one copies to the device)")
        if isinstance(self.forward, Compiled) or any(hasattr(a, "compiled") for a in self.augment or ()):
            raise ValueError("GraphedLoopStep captures eager modules and augmentations, not compile_step's")
        if world_size() > 1:
            raise ValueError("GraphedLoopStep runs in one process (no collectives in the graph)")
        self._prepare(eager_steps, capture_tail)

    def _prepare(self, eager_steps: int, capture_tail: bool) -> None:
        if eager_steps < 1:
            raise ValueError("GraphedLoopStep needs at least one eager step before the capture")
        if capture_tail and type(self.optimizer) is not LARS:
            raise ValueError(f"GraphedLoopStep captures the tail with LARS only (its learning rate read from the "
                             f"device), not {type(self.optimizer).__name__}; capture_tail=False")
        self.eager_steps, self.capture_tail = eager_steps, capture_tail
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.calls = 0
        self._side: Optional[torch.cuda.Stream] = None
        if capture_tail:  # the learning rate and 1 - tau that the tail reads, in the eager steps and the replays
            self._lr, self._rate = torch.zeros((), device=self.sums.device), torch.zeros((), device=self.sums.device)

    def _forward_backward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # No autocast cache: its bf16 weight copies would be made, and freed, inside the capture.
        loss, z1 = views_loss(self.forward, self.byol, images, self.generator, self.amp, self.augment,
                              autocast_cache=False)
        loss.backward()
        return loss.detach(), z1

    def _captured(self) -> None:
        """What the graph holds: the step from ``static_images`` to ``static_loss`` and ``static_z1``."""
        if self.capture_tail:
            self.guard.snapshot()
        self.optimizer.zero_grad(set_to_none=False)  # the gradients stay where the eager steps put them
        self.static_loss, self.static_z1 = self._forward_backward(self.static_images)
        if self.capture_tail:
            self._optimizer_step()
            self._finish(self.static_loss, self.static_z1)

    def _optimizer_step(self) -> None:
        if self.capture_tail:
            self.optimizer.step(lr=self._lr)
        else:
            self.optimizer.step()

    def _update_target(self) -> None:
        if not self.capture_tail:
            super()._update_target()
        elif self.byol.target is not None:  # 1 - tau read from the device (as the learner's update_target skips)
            update_target_by(self.byol.target, self.byol.online, self._rate)

    def _capture(self, images: torch.Tensor) -> None:
        self.static_images = images.clone()
        graph = torch.cuda.CUDAGraph()
        if self.generator is not None:  # the augmentations' draws, advanced on every replay
            graph.register_generator_state(self.generator)
        # On the images' device (torch.cuda.graph would capture on the current one, cuda:0 unless set) and
        # its side stream; thread_local: a DataLoader's pinning thread may call CUDA meanwhile.
        failed: list[Exception] = []  # the step's own error: the capture's end fails too after it, with CUDA's
        with torch.cuda.device(images.device):  # (also around the stream's restore: set_stream sets its device)
            current = torch.cuda.current_stream(images.device)
            try:
                with torch.cuda.graph(graph, stream=self._side, capture_error_mode="thread_local"):
                    try:
                        self._captured()
                    except Exception as e:  # (not the chain's root: the step may raise while handling its own error)
                        failed.append(e)
                        raise
            except Exception as e:  # a network's own .item() or CPU work, say: a sentence, not CUDA's traceback
                # torch.cuda.graph's exit leaves its stream current if capture_end fails; set_stream makes the
                # stream's device current too, which the device context then puts back
                torch.cuda.set_stream(current)
                first = failed[0] if failed else e
                if isinstance(first, torch.cuda.OutOfMemoryError):
                    raise first from None  # the command line's sentence for it
                raise ConfigError(uncapturable(first)) from e
        self.graph = graph  # only once captured: a failed capture is not replayed

    def __call__(self, step: int, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._schedules(step)
        if self.capture_tail:  # (fills: kernels, no host sync; every group has the schedule's one lr)
            self._lr.fill_(self.optimizer.param_groups[0]["lr"])
            self._rate.fill_(1.0 - self.tau)
        if self.graph is None and self.calls < self.eager_steps:
            self.guard.snapshot()
            main = torch.cuda.current_stream(images.device)
            side = self._side = self._side or torch.cuda.Stream(images.device)
            side.wait_stream(main)
            with torch.cuda.stream(side):
                self.optimizer.zero_grad(set_to_none=False)
                loss, z1 = self._forward_backward(images)
                self._optimizer_step()
            main.wait_stream(side)
            self.calls += 1
            return self._finish(loss, z1)
        # Eager before each replay without the tail; with it, once before the capture: where the eager steps left
        # the guard's key to change (eager_steps=1: the optimizer's state made in the first), its new buffers are
        # made outside the graph.
        if not self.capture_tail or self.graph is None:
            self.guard.snapshot()
        if self.graph is None:
            self._capture(images)
        elif images.shape != self.static_images.shape or images.dtype != self.static_images.dtype:
            raise ValueError(f"GraphedLoopStep was captured for batches of {tuple(self.static_images.shape)} "
                             f"{self.static_images.dtype}, not {tuple(images.shape)} {images.dtype}")
        self.static_images.copy_(images)
        self.graph.replay()
        # Copies: the graph's outputs are overwritten by the next replay.
        loss, z1 = self.static_loss.clone(), self.static_z1.clone()
        self.calls += 1
        if self.capture_tail:
            return loss, z1
        self._optimizer_step()
        return self._finish(loss, z1)


def uncapturable(error: BaseException) -> str:
    """What a failed capture of :class:`GraphedLoopStep` says, ``error`` the step's own (else the capture's)."""
    said = (str(error).strip().splitlines() or [""])[0]
    return (f"train.cuda_graph=true: the training step could not be captured in a CUDA graph "
            f"({type(error).__name__}{': ' + said if said else ''}); a graph replays GPU work only, so the "
            "step's forward and backward must not wait for the GPU (no .item(), .cpu() or print of a tensor) "
            "nor run on the CPU; train with train.cuda_graph=false")


def loop_step_class(cuda_graph: bool, device: torch.device, world: int) -> type:
    """LoopStep, or with ``train.cuda_graph`` the experimental GraphedLoopStep where it can run."""
    if not cuda_graph:
        return LoopStep
    if device.type != "cuda":
        raise ConfigError(f"train.cuda_graph=true needs a CUDA GPU (it replays the step from a CUDA graph), and this "
                          f"run is on {device}; use train.cuda_graph=false")
    if world > 1:
        raise ConfigError(f"train.cuda_graph=true runs in one process, not {world} (the graph holds no "
                          "collectives); use train.cuda_graph=false")
    return GraphedLoopStep
