"""Surviving faults: non-finite steps rolled back on the device, and stopping cleanly on a signal."""

import _thread
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import nn

from .ema import own_tensors
from .streams import STOP_SIGNALS, left_ignored


# Integer dtypes by element size: a tensor's bits, viewed without copying (NonFiniteGuard.settle).
_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class NonFiniteGuard:
    """Skips training steps whose loss is not finite, or that left a weight that is not, without a
    host sync per step.

    Before a step, :meth:`snapshot` copies the modules' parameters and buffers (the learner's:
    online, predictor and target) and the optimizer state; after the step and its EMA update,
    :meth:`settle` puts the copies back where the loss was NaN or infinite, or where a parameter
    the optimizer updated is (a NaN or infinite gradient under a finite loss, an update that
    overflowed: else those weights were kept, every later step's loss was NaN and undone back to
    them, and an epoch's end could save them as the last good checkpoint), on the device, so
    nothing waits for the GPU. The streak of consecutive bad steps is counted on the device too
    and read with the other metrics. The snapshot is one foreach copy
    into buffers kept from step to step (so they hold memory the size of the model and optimizer
    state for the whole run). The modules' tree is read at the first snapshot: a submodule added or
    replaced after it (:meth:`~byol.BYOL.reset_moving_average`'s new target) is not guarded; build a new guard.

    The restore is a select, ``ok ? new : saved``, for some 200 tensors. ``torch.where`` per tensor
    would be one kernel each (more than the rest of the step outside forward and backward); no
    foreach op selects, and float arithmetic cannot (``NaN * 0`` is NaN). So it runs on the
    tensors' bits, viewed as integers of the same width: ``new * ok + saved * (1 - ok)`` with ``ok``
    0 or 1 is exact in integers (one term is 0, nothing overflows): three foreach ops per dtype.
    """

    def __init__(self, modules: Iterable[nn.Module], optimizer: torch.optim.Optimizer, device: torch.device):
        self.modules = list(modules)
        self.optimizer = optimizer
        self.streak = torch.zeros((), dtype=torch.int64, device=device)
        self.max_streak = torch.zeros((), dtype=torch.int64, device=device)
        self.skipped = torch.zeros((), dtype=torch.int64, device=device)
        self._tree: list[nn.Module] = []  # the modules' submodules, read at the first snapshot
        self._known: set[int] = set()  # ids of the tensors the buffers were made for
        self._now: list[torch.Tensor] = []  # the snapshot's tensors, alive to the settle: no new one takes an id
        self._saved: list[torch.Tensor] = []
        self._bits: dict[torch.dtype, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        self._key: tuple = ()

    def _optimizer_tensors(self) -> list[torch.Tensor]:
        # Only state on the device: a CPU-side step counter (plain AdamW on CUDA) would cost a
        # host sync per tensor to restore.
        return [v for state in self.optimizer.state.values() for v in state.values()
                if isinstance(v, torch.Tensor) and v.device == self.streak.device]

    def _tensors(self) -> list[torch.Tensor]:
        # The submodules' own dictionaries, not parameters() and buffers(), which walk the module tree
        # again at every call (a ResNet-18 learner's: 0.33 ms of the host's time, against 0.04). Each
        # tensor once (a module passed twice, a shared parameter): the restore adds, so a tensor listed
        # twice would come back doubled.
        if not self._tree:
            self._tree = list({id(s): s for m in self.modules for s in m.modules()}.values())
        tensors = [*own_tensors(self._tree, "_parameters"), *own_tensors(self._tree, "_buffers"),
                   *self._optimizer_tensors()]
        return list({id(t): t for t in tensors}.values())

    @torch.no_grad()
    def snapshot(self) -> None:
        tensors = self._tensors()
        # The memory too: the integer views kept below must still be views of these tensors' storage (a
        # tensor moved, converted or given new memory has another data_ptr), and of its layout and dtype (one
        # resized, transposed or viewed as another dtype in place keeps its data_ptr; a tensor of no elements
        # has data_ptr 0).
        key = (tuple(map(id, tensors)), tuple([t.data_ptr() for t in tensors]), tuple([t.shape for t in tensors]),
               tuple([t.stride() for t in tensors]), tuple([t.dtype for t in tensors]))
        if key != self._key:  # first step, or the optimizer created state: new buffers
            self._saved, self._bits = [], {}  # free the old ones first
            self._key, self._saved = key, [torch.empty_like(t) for t in tensors]
            self._known = set(key[0])
            for t, saved in zip(tensors, self._saved):  # integer views of the same memory, by width
                bits = _INT_OF_SIZE.get(t.element_size(), t.dtype)  # complex128: as it is, by where
                now, kept = self._bits.setdefault(bits, ([], []))
                now.append(t.view(bits))
                kept.append(saved.view(bits))
        torch._foreach_copy_(self._saved, tensors)
        self._now = tensors

    @torch.no_grad()
    def settle(self, loss: torch.Tensor) -> torch.Tensor:
        """Undo the step if ``loss`` is not finite; return the on-device flag ``ok``."""
        from .distributed import all_ranks_ok
        # Under DDP a NaN on one rank reaches every rank's weights through the gradient
        # all-reduce, so all ranks undo the step together.
        ok = all_ranks_ok(torch.isfinite(loss.detach() + self._weights_mark()))
        for bits, (now, kept) in self._bits.items():
            if bits not in _INT_OF_SIZE.values():
                for tensor, saved in zip(now, kept):
                    torch.where(ok, tensor, saved, out=tensor)
                continue
            keep_new = ok.to(bits)
            torch._foreach_mul_(now, keep_new)  # new or 0
            torch._foreach_mul_(kept, 1 - keep_new)  # 0 or saved (the copy is not needed after this)
            torch._foreach_add_(now, kept)
        for tensor in self._optimizer_tensors():  # state the step created (momentum at step 0)
            if id(tensor) not in self._known:
                tensor.copy_(torch.where(ok, tensor, torch.zeros_like(tensor)))
        self._now = []
        self.streak.copy_(torch.where(ok, torch.zeros_like(self.streak), self.streak + 1))
        torch.maximum(self.max_streak, self.streak, out=self.max_streak)
        self.skipped.add_((~ok).long())
        return ok

    def _weights_mark(self) -> torch.Tensor:
        """0, or NaN where a parameter the optimizer updates is NaN or infinite, as a device tensor
        (added to the loss, so that one isfinite judges both): each one's 1-norm times 0, summed. Not
        the 2-norm, whose squares overflow for weights of 1e19 (a step with lr 1e30 left such, finite);
        the 1-norm only where a tensor's absolute values sum past 3.4e38, and on a CPU the max-norm, which
        never overflows, took 10 to 30 ms a step (the 1-norm 0.6 ms, the cifar10-cpu preset's weights)."""
        params = list({id(p): p for group in self.optimizer.param_groups for p in group["params"]
                       if p.is_floating_point() and p.device == self.streak.device}.values())
        if not params:
            return torch.zeros((), device=self.streak.device)
        return (torch.stack(torch._foreach_norm(params, ord=1)) * 0).sum()

    def reset_max(self) -> int:
        """The longest streak since the last call (a host read: call it only when logging)."""
        value = int(self.max_streak.item())
        self.max_streak.copy_(self.streak)
        return value


# What a second Ctrl-C's KeyboardInterrupt says (a notebook shows it; byol's command line prints it).
SECOND_INTERRUPT = ("a Ctrl-C while the run was stopping ends it at once, without the checkpoint it was to write: "
                    "the steps since the run's last checkpoint, if it wrote one, are lost")
# ... and where the last checkpoint holds every finished step (the stop's, its plots being drawn): nothing is lost.
SECOND_INTERRUPT_SAVED = ("a Ctrl-C while the run was stopping ends it at once, after the checkpoint of step {step} "
                          "was written: --resume goes on from it")


class Stopped(BaseException):
    """A signal that cut short what :meth:`StopRequest.interrupting` wraps (a BaseException, as
    KeyboardInterrupt is: no ``except Exception`` on the way, such as a decoder's, takes it for a failure)."""


class StopRequest:
    """Turns SIGTERM, SIGINT, SIGHUP (a closed terminal or ssh session; not where it is ignored, as
    under nohup), SIGUSR1 and SIGUSR2 (a scheduler's warning that the time limit is near: Slurm's
    ``--signal=USR1@60``, which would otherwise end the process at once, unsaved) into a flag that the
    loop checks after each step.

    The loop then finishes the step, writes a checkpoint and exits; a second SIGINT
    interrupts at once (KeyboardInterrupt), saying whether that loses steps: ``saved`` returns the step
    of a checkpoint that holds every finished step, or None. Within :meth:`interrupting`,
    a signal raises :class:`Stopped` at once instead. Handlers are restored on exit.
    """

    SIGNALS = STOP_SIGNALS

    def __init__(self, saved: Callable[[], Optional[int]] = lambda: None):
        self.signum: Optional[int] = None
        self.saved = saved
        self._previous: dict = {}
        self._raising = False
        self._raising_now: Optional[tuple] = None
        self._previous_hook = sys.unraisablehook
        self._again: Optional[threading.Timer] = None  # a signal to deliver again (see _unraisable)
        self._again_lock = threading.Lock()

    def _handle(self, signum, frame):
        if self._raising:  # once: a further signal, while Stopped is handled, is one outside interrupting()
            before = self.signum
            self._raising = False
            self.signum = self.signum or signum
            raise self._raised(Stopped(), signum, before)
        if self.signum is not None and signum == signal.SIGINT:  # said, not printed here: a handler's print
            step = self.saved()  # could come inside another (the bar's): a reentrant write
            if step is not None:  # (the stop's checkpoint is written, its plots being drawn, say)
                raise self._raised(KeyboardInterrupt(SECOND_INTERRUPT_SAVED.format(step=step)), signum, self.signum)
            raise self._raised(KeyboardInterrupt(SECOND_INTERRUPT), signum, self.signum)
        self.signum = signum

    def _raised(self, error: BaseException, signum: int, before: Optional[int]) -> BaseException:
        """``error``, to raise from the handler, kept so that :meth:`_unraisable` knows it."""
        self._raising_now = (error, signum, isinstance(error, Stopped), before)
        return error

    def _unraisable(self, unraisable) -> None:
        """An exception that Python could not raise: the handler's, where the signal came while a weakref callback
        or a ``__del__`` ran (torch's, the garbage collector's), whose exceptions Python prints as "Exception
        ignored" and drops (a user test: a second Ctrl-C printed a traceback and the run went on). The signal is
        delivered again, from a thread a moment later (not within this hook, where its handler's exception would
        be dropped in turn), as if it came then (at :meth:`__exit__`, where that comes first); any other is the
        previous hook's."""
        error, signum, raising, before = self._raising_now or (None, None, False, None)
        if error is None or unraisable.exc_value is not error:
            return self._previous_hook(unraisable)
        self._raising_now = None
        self._raising, self.signum = raising, before  # as before the handler ran
        self._again = threading.Timer(0.01, self._deliver_again, (signum,))
        self._again.daemon = True
        self._again.start()

    def _deliver_again(self, signum: int) -> None:
        """The timer's: ``signum`` to this StopRequest's handler, unless :meth:`__exit__` took it (tripped, not sent
        with os.kill: its handler's in place once tripped, not a moment later, when __exit__ may have put back the
        previous one: a SIGTERM that came during the kNN evaluation then ended the process after the run)."""
        with self._again_lock:
            if self._again is not None:
                self._again = None
                _thread.interrupt_main(signum)

    @contextmanager
    def interrupting(self) -> Iterator[None]:
        """Within, a signal raises :class:`Stopped` at once, for work that a stop should cut short rather
        than wait for (the kNN evaluation, which may take minutes while a scheduler waits for the run to
        end). A signal that came before it raises nothing: :attr:`requested` says so."""
        self._raising = bool(self._previous)  # (not the main thread: no handlers, nothing comes)
        try:
            yield
        finally:
            self._raising = False

    def __enter__(self) -> "StopRequest":
        try:
            for s in self.SIGNALS:
                if left_ignored(s):
                    continue
                self._previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: leave the signals alone
            self._previous = {}
        if self._previous:
            self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def __exit__(self, *exc) -> None:
        with self._again_lock:  # a signal still to deliver again: this one's, delivered here
            again, self._again, self._raising_now = self._again, None, None
        for s, handler in self._previous.items():  # (signal.signal runs a tripped signal's handler first)
            signal.signal(s, handler)
        if self._previous:
            sys.unraisablehook = self._previous_hook
        if again is not None:
            again.cancel()
            self._handle(again.args[0], None)

    @property
    def requested(self) -> bool:
        return self.signum is not None
