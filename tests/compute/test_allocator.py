"""Freed host memory stays in the process for reuse (glibc's malloc, read through mallinfo2)."""

import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys, torch
from grpo.compute.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
def info():
    i = libc.mallinfo2()
    return i.hblkhd, i.arena  # bytes in mmapped blocks, bytes of heap
mapped0, heap0 = info()
x = torch.empty(6, 1024, 1024)  # a 24 MiB tensor, like one step's activations
mapped1, heap1 = info()
del x
mapped2, heap2 = info()
print((mapped1 - mapped0) >> 20, (heap1 - heap0) >> 20, (mapped1 - mapped2) >> 20, (heap1 - heap2) >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or "glibc" not in " ".join(__import__("platform").libc_ver()),
                    reason="glibc's malloc")
def test_a_step_sized_tensor_comes_from_the_heap_and_stays_there_when_freed():
    def mib(mode):  # [mmapped, heap grown, unmapped on free, heap trimmed on free]
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        return [int(v) for v in out.stdout.split()]

    mapped, _, unmapped, _ = mib("default")
    assert mapped == unmapped == 24  # glibc's default: its own mapping, returned to the OS on free
    mapped, grown, unmapped, trimmed = mib("keep")
    assert mapped == unmapped == trimmed == 0 and grown >= 20  # heap memory, kept for the next step
