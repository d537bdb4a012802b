"""Whether a training step can fit in this machine's memory, checked before the first step.

On a GPU, a batch too big raises torch's out-of-memory error, which the command line turns into
one sentence. On a CPU under Linux, the kernel kills the process instead (exit 137, no word said),
so a CPU run checks first: the tensors a step keeps for its backward pass are a lower bound of its
memory, and they are measured, not guessed, on a copy of the model at a small batch and image size.
"""

import copy
import sys
from pathlib import Path
from typing import Iterator, Optional

import torch

from .config import ConfigError
from .dropin import BYOL
from .error_lines import RESUMED_LOWER, is_out_of_memory

GiB = 2 ** 30
_PROBE_SIZE = 64  # the largest probe image side: the activations of larger ones grow with their area
# A step's peak memory over what it saves for backward: 1.22 to 1.65 for ResNet-18 (CIFAR stem) on a CPU,
# float32 and bf16, 32 and 64 pixels (the rise of maxrss over two steps: python -m benchmarks.step_memory).
_PEAK_OVER_SAVED = 1.2


def saved_bytes_per_image(byol: BYOL, image_size: int, amp: Optional[torch.dtype]) -> float:
    """The bytes one image's two views keep for the backward pass of a step (online branch and predictor),
    measured at batches 2 and 4 of a copy of ``byol`` (the model itself, its BatchNorm statistics and torch's
    generator are not touched) and scaled from an image side of at most ``_PROBE_SIZE`` to ``image_size``; at
    ``image_size`` itself for a network that takes no other (a layer sized for it: a given net's Linear, a ViT)."""
    probe = copy.deepcopy(byol).cpu()

    def saved(batch: int, size: int) -> int:
        held: list[torch.Tensor] = []

        def keep(t: torch.Tensor) -> int:
            # Its index, not t: a tensor that an op saves from its own output, packed as itself, holds its own
            # graph, a loop Python's collector cannot see (the probe, its copy of the model, was never freed).
            # Held here until counted, so that no storage is freed and its address reused meanwhile.
            held.append(t)
            return len(held) - 1

        views = torch.zeros(batch, 3, size, size)
        try:  # (torch's generator forked: a network's dropout draws from it, which a resume finds as it was saved)
            with torch.autograd.graph.saved_tensors_hooks(keep, held.__getitem__), torch.random.fork_rng(devices=[]), \
                    torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
                probe.forward_views(views, views.clone())
            storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in held}
        finally:  # (an error in the forward too: the graph it left holds the hook, and the hook held)
            held.clear()
        return sum(storages.values())  # the weights, saved at either batch, cancel out below

    size = min(image_size, _PROBE_SIZE)
    try:
        return (saved(4, size) - saved(2, size)) / 2 * (image_size / size) ** 2
    except Exception as e:  # (RuntimeError, a ViT's AssertionError, ...): the size it is trained at is then probed
        # but not where the small probe ran out of memory: one at image_size needs more (a kill, no word said)
        if size == image_size or is_out_of_memory(e):
            raise
    return (saved(4, image_size) - saved(2, image_size)) / 2


def free_memory(root: Path = Path("/")) -> Optional[int]:
    """The bytes this process can still allocate: MemAvailable, or less under the memory limit of its
    cgroup or of one above it (a container's, a Slurm job's; cgroup v2 or v1), where the page cache
    that can be reclaimed (inactive files) counts as free; None where nothing can be read (not Linux).
    ``root``: where ``/proc`` and ``/sys`` are (a test's fake)."""
    free = []
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for folder, names in _cgroup_folders(root):
        room = _cgroup_room(folder, *names)
        if room is not None:
            free.append(room)
    return min(free) if free else None


def address_space_room(root: Path = Path("/"), limit: Optional[int] = None) -> Optional[int]:
    """The bytes this process may still map under its address-space limit (``ulimit -v``, ``prlimit --as``; Grid
    Engine's ``h_vmem`` sets it): the limit less what it maps now (``VmSize``); None without one. ``root`` as for
    :func:`free_memory`; ``limit``: a test's, else the soft limit ``getrlimit`` reads."""
    if limit is None:
        try:
            import resource
        except ImportError:  # (not Unix)
            return None
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY:
            return None
    try:
        for line in (root / "proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return max(0, limit - int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return None


_V2 = ("memory.max", "memory.current", "inactive_file")
_V1 = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")


def _cgroup_folders(root: Path) -> Iterator[tuple[Path, tuple[str, str, str]]]:
    """This process's memory cgroup folder and those above it, each with its files' names."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and not controllers:
            mount, names = root / "sys/fs/cgroup", _V2
        elif "memory" in controllers.split(","):
            mount, names = root / "sys/fs/cgroup/memory", _V1
        else:
            continue
        folder = mount / path.strip("/")
        if not folder.is_dir():  # a cgroup namespace: the mount is this process's own cgroup
            folder = mount
        while True:
            yield folder, names
            if folder == mount:
                break
            folder = folder.parent


def _cgroup_room(folder: Path, limit_name: str, usage_name: str, inactive_key: str) -> Optional[int]:
    """``limit - usage + reclaimable cache`` of one cgroup folder; None where it has no limit."""
    try:
        limit = (folder / limit_name).read_text().strip()
        if limit == "max" or int(limit) >= 2 ** 60:  # v1 writes "no limit" as a huge number
            return None
        usage = int((folder / usage_name).read_text())
        stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines() if line.strip())
        return int(limit) - usage + int(stat.get(inactive_key, 0))
    except (OSError, ValueError):
        return None


def check_step_fits(byol: BYOL, batch: int, image_size: int, amp: Optional[torch.dtype], resumed: bool = False) -> None:
    """Refuse, in one sentence, a CPU step whose saved activations alone exceed the free memory; ``resumed``: a
    resumed run's, whose train.batch_size and model its checkpoint fixes (a resume refuses others)."""
    free, space = free_memory(), address_space_room()
    # (a user test: under ulimit -v the step was refused late, by torch's allocator, and the check's figure, where
    # it spoke, was the machine's free memory, not what the limit left this process)
    limited = space is not None and (free is None or space < free)
    free = space if limited else free
    if free is None:
        return
    need = saved_bytes_per_image(byol, image_size, amp) * batch
    what = (f"a training step at train.batch_size={batch} and data.image_size={image_size} keeps at least "
            f"{_size(need)} for its backward pass")
    room = (f"this process may map {_size(free)} more (its address-space limit: ulimit -v)" if limited else
            f"this machine has {_size(free)} free")
    if need > free:
        lower = RESUMED_LOWER if resumed else "lower train.batch_size or data.image_size (or model.width)"
        raise ConfigError(f"{what}, and {room}; {lower}")
    if need * _PEAK_OVER_SAVED > free:
        # (a resume refuses another train.batch_size: the note, as the error, names what it can lower)
        safer = "a smaller data.image_size is safer (a resumed run keeps its checkpoint's train.batch_size)" \
            if resumed else "a smaller train.batch_size is safer"
        fate = "an allocation may fail" if limited else "the system may kill the run for memory"
        print(f"note: {what}, and {room}: its peak is higher (1.2 to 1.7 times as much, measured), so {fate}; "
              f"{safer}", file=sys.stderr)


def _size(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / 2 ** 20:.0f} MiB"
