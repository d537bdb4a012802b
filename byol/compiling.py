"""``torch.compile`` of the training step, with a fallback to eager where compiling is unavailable
or fails: the loss computation (forward and backward) and each view's augmentation.

:func:`compile_step` gives what :func:`byol.step.train_step` takes; :class:`Compiled` is the
wrapper that falls back, and :func:`eager_fallbacks` says which parts did, so that a benchmark does
not call an eager run compiled. ``byol pretrain`` compiles with ``train.compile=true``.
"""

import traceback
import warnings
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .augment import Augment
from .dropin import BYOL

AugmentFn = Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor]
"""A view's augmentation as the step calls it: ``fn(images, generator)``, uint8 in, float views out."""


class Compiled:
    """``torch.compile(fn)``, falling back to ``fn`` itself where compiling is unavailable or fails.

    A failure (no C compiler, no Triton, an unsupported Python, an op that does not trace) is
    reported once as a warning and the eager ``fn`` runs from then on; training goes on either way.
    Errors of ``fn`` itself still raise: the eager retry raises them again. The backward is
    compiled at the first backward through the compiled forward, outside this call:
    :func:`byol.step.train_step` reports a failure there (:meth:`backward_failed`) and does the step again.
    """

    def __init__(self, fn: Callable, **options):
        self.fn = fn
        self.error: Optional[BaseException] = None
        self._compiled_once = False
        self.backward_unproven = True  # until a backward through the compiled forward has finished
        self.trace: Optional[str] = None  # the failure's traceback, formatted
        try:
            self.compiled = torch.compile(fn, **options)
        except Exception as e:  # torch.compile refuses this platform outright
            self._fall_back(e)

    @property
    def is_compiled(self) -> bool:
        """True while the compiled version is in use (after a first successful call)."""
        return self.error is None and self._compiled_once

    def _fall_back(self, error: BaseException) -> None:
        # The traceback as text (a benchmark prints it), not the frames: they would keep alive what
        # the failed call held, such as a failed backward's saved activations.
        self.trace = "".join(traceback.format_exception(error))
        self.error = error.with_traceback(None)
        warnings.warn(f"torch.compile is unavailable here ({type(error).__name__}: {error}); "
                      "running the step eagerly", RuntimeWarning, stacklevel=3)

    def backward_failed(self, error: BaseException) -> bool:
        """The first backward through the compiled forward raised ``error``: fall back to eager
        (True), unless it is an out-of-memory error or the forward was not compiled (False: raise it)."""
        if self.error is not None or not self._compiled_once or isinstance(error, torch.cuda.OutOfMemoryError):
            return False
        self._fall_back(error)
        self.backward_unproven = False
        return True

    def __call__(self, *args, **kwargs):
        if self.error is None:
            try:
                out = self.compiled(*args, **kwargs)
                self._compiled_once = True
                return out
            except torch.cuda.OutOfMemoryError:  # the batch does not fit, compiled or not
                raise
            except torch._dynamo.exc.TorchDynamoException as e:  # a later recompilation failed
                self._fall_back(e)
            except Exception as e:
                if self._compiled_once:  # compiling worked: this is an error of fn itself
                    raise
                self._fall_back(e)
        return self.fn(*args, **kwargs)


def compiled_augment(augment: Augment) -> AugmentFn:
    """A view's augmentation with its pixel work (``Augment.apply_params``) compiled into a few kernels.

    The random draw stays eager: a generator argument would break the graph there, and drawing
    is one kernel anyway.
    """
    apply = Compiled(augment.apply_params, dynamic=False)

    def run(images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        b, _, height, width = images.shape
        return apply(images, augment.sample_params(b, height, width, generator, images.device))

    run.compiled = apply  # for a caller that reports whether compiling worked
    return run


def eager_fallbacks(forward: Callable, augment: Optional[Sequence[AugmentFn]]) -> list[Compiled]:
    """The parts of a :func:`compile_step` result that have run and fell back to eager (an empty
    list for an eager step): what a benchmark must report rather than call compiled."""
    parts = [forward, *(getattr(a, "compiled", None) for a in augment or ())]
    return [p for p in parts if isinstance(p, Compiled) and p.error is not None]


def compile_step(forward: nn.Module, byol: BYOL) -> tuple[Compiled, tuple[AugmentFn, AugmentFn]]:
    """The compiled loss computation and the two compiled augmentations, for :func:`byol.step.train_step`."""
    augments = tuple(compiled_augment(a) if isinstance(a, Augment) else a
                     for a in (byol.augment_fn, byol.augment_fn2))
    return Compiled(forward), augments
