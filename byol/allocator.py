"""The C allocator's handling of freed memory on the CPU (glibc): kept for reuse by a training process
(:func:`keep_freed_memory`), handed back again in a process forked from one (:func:`give_back_freed_memory`)."""

import ctypes
import platform
from typing import Optional


# glibc's mallopt parameters (malloc.h), and their defaults (mallopt(3))
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_kept = False  # whether keep_freed_memory changed this process (or the one it was forked from)


def keep_freed_memory() -> bool:
    """Make the C allocator keep freed memory for reuse instead of returning it to the system.

    glibc serves each block over 32 MiB (at batch 512, every activation of a CIFAR ResNet's first
    stage) with a fresh ``mmap`` and unmaps it when the tensor is freed, and it trims the top of
    its heap the same way: the next step's tensors of the same sizes fault their pages in again,
    each page zeroed by the kernel. On a 2-core CPU that is 1.4 million page faults and about 2
    of 8.7 seconds of a ResNet-18 forward and backward at batch 512 (BENCHMARKS.md). With ``mmap``
    off, large blocks come from the heap, and with the trim threshold at its maximum the heap
    keeps what was freed, so each step reuses the previous step's memory, as PyTorch's caching
    allocator does on the GPU. The cost: the process holds on to its peak memory, and the
    fragmentation of its first steps, until it exits (3.3 -> 5.9 GB there).

    It changes the whole process, from now on, and cannot be undone (``byol.pretrain`` on a CPU
    calls it, and so do eval and embed, unless ``train.keep_freed_memory`` is false). It covers the
    main thread's heap, where the training step allocates; other threads' heaps still ``mmap``
    blocks over 64 MiB. Returns False, changing nothing, where the C library is not glibc (macOS,
    Windows, musl).
    """
    global _kept
    libc = glibc()
    if libc is None:
        return False
    _kept = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _kept


def give_back_freed_memory() -> None:
    """Undo :func:`keep_freed_memory` in a process forked from one that called it (a decoding process
    of a folder's DataLoader), which would otherwise hold its peak too (a user test at ImageNet scale,
    224x224 views: about 1 GB each, 160 MB without). glibc's default thresholds again (fixed now: any
    mallopt ends glibc's sliding mmap threshold), and what it holds now handed back."""
    global _kept
    libc = glibc()
    if _kept and libc is not None:
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)
        _kept = False


def glibc() -> Optional[ctypes.CDLL]:
    """The C library when it is glibc (Linux), for its allocator's controls; None elsewhere."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
