"""Keep freed host memory in the process for reuse instead of handing it back to the OS
(glibc, CPU runs).

A training step on CPU allocates and frees gigabytes of short-lived tensors (activations,
logits and their gradients). glibc hands memory back to the OS eagerly: it trims the top of
its heap whenever more than its trim threshold (by default at most 64 MiB) lies free there,
and serves allocations above its mmap threshold with fresh mappings that are unmapped on
free. The next step then faults those pages in again, 4 KiB at a time, each zero-filled by
the kernel, and elementwise ops over fresh pages run several times slower than over reused
memory. With vLLM in the process it was worst (its weight reloads leave the heap so that
little is reused): its update per completion token was the slowest.

Here the mmap threshold is fixed at glibc's largest (32 MiB: every smaller tensor comes from
the heap) and the heap top is trimmed only beyond 1 GiB free: most page faults go, the update
gets faster with and without vLLM, and peak RSS does not move (bench/RESULTS.md#update,
"Host memory kept for reuse", has the figures).
Tried and not kept: turning mmap off altogether (M_MMAP_MAX 0, no trimming) removed all
faults, but then tensors above 32 MiB come from the heap too, and a repeated pattern of
large 64-byte-aligned allocations can leave every freed hole a few bytes too small, so the
heap grew every round in one of two runs of a probe: unbounded growth, not worth it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>
MMAP_THRESHOLD = 32 << 20  # glibc's maximum (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Set glibc's malloc to reuse freed memory (see the module docstring); returns whether it
    took effect (False on other C libraries, where nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
