"""allocator.py: blocks of a few MB come from malloc's heap instead of fresh mmap'd pages (glibc only)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from scalerec import allocator

# A fresh interpreter mallocs 20 MB and prints the bytes glibc serves by mmap (mallinfo2().hblkhd) before and after.
PROBE = """
import ctypes, ctypes.util, sys
class MallInfo2(ctypes.Structure):
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(n, ctypes.c_size_t) for n in names.split()]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
if sys.argv[1] == "heap":
    from scalerec.allocator import keep_large_blocks_in_heap
    print(keep_large_blocks_in_heap())
before = libc.mallinfo2().hblkhd
block = libc.malloc(20 << 20)
print(libc.mallinfo2().hblkhd - before)
"""

glibc = pytest.mark.skipif(allocator._mallopt() is None, reason="glibc's mallopt is not available here")


def probe(mode: str, **env: str) -> list[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=environ, check=True)
    return out.stdout.split()


@glibc
def test_large_blocks_come_from_the_heap_once_set():
    assert int(probe("glibc")[-1]) >= 20 << 20  # glibc's start-up threshold (128 KiB): a fresh mapping
    applied, mapped = probe("heap")
    assert applied == "True" and int(mapped) == 0


@glibc
def test_a_users_malloc_variables_are_left_alone():
    applied, mapped = probe("heap", MALLOC_TOP_PAD_="0")
    assert applied == "False" and int(mapped) >= 20 << 20
