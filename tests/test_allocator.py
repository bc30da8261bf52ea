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
block = libc.malloc(int(sys.argv[2]) << 20)
print(libc.mallinfo2().hblkhd - before)
"""

glibc = pytest.mark.skipif(allocator._mallopt() is None, reason="glibc's mallopt is not available here")


def probe(mode: str, mb: int = 20, **env: str) -> list[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    cmd = [sys.executable, "-c", PROBE, mode, str(mb)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=environ, check=True)
    return out.stdout.split()


@glibc
@pytest.mark.parametrize("mb", [20, 100])  # below and above the largest mmap threshold glibc allows (32 MiB)
def test_large_blocks_come_from_the_heap_once_set(mb):
    assert int(probe("glibc", mb)[-1]) >= mb << 20  # glibc's start-up threshold (128 KiB): a fresh mapping
    applied, mapped = probe("heap", mb)
    assert applied == "True" and int(mapped) == 0


RELEASE = """
import sys, torch
from scalerec import allocator
from scalerec.find_batch import current_rss_bytes
allocator.keep_large_blocks_in_heap()
keep = torch.ones(1 << 20)  # allocated after the block below: the heap's top stays in use
block = torch.ones(64 << 20)  # 256 MB, touched
del keep
keep = torch.ones(1 << 20)
del block
held = current_rss_bytes()
print(allocator.release_free_memory(), held - current_rss_bytes())
"""


@pytest.mark.slow
@glibc
def test_free_memory_kept_in_the_heap_is_handed_back_on_request():
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", RELEASE], capture_output=True, text=True, env=environ, check=True)
    released, freed = out.stdout.split()
    assert released == "True" and int(freed) > 200 << 20


@glibc
def test_a_users_malloc_variables_are_left_alone():
    applied, mapped = probe("heap", MALLOC_TOP_PAD_="0")
    assert applied == "False" and int(mapped) >= 20 << 20
