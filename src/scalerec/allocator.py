"""glibc malloc settings for training on the CPU.

PyTorch's CPU allocator is malloc. glibc serves blocks above its mmap threshold (128 KiB at start, raised
dynamically up to 32 MiB, the largest it allows) with fresh mmap'd pages, so an activation or gradient of a few
MB allocated at every step page-faults every one of its 4 KiB pages on first touch, and unmaps them again when
freed. A step at batch 8192 allocates dozens of such blocks, and at ML-20M shape the dense gradients of the user
tables alone are above any threshold. Serving every block from the heap (no mmap at all) and keeping freed memory
there (trim threshold 1 GiB) reuses the same pages instead: no page faults in the step, and a faster step
(benchmarks/step_speed.py; figures in benchmarks/RESULTS.md).
glibc's own settings cannot be restored once changed (its dynamic threshold stays off), so step_speed.py counts
the page faults per step of a run with them (--glibc-malloc) and of one without. The cost is freed memory kept
resident until it is reused: up to the trim threshold at the heap's top, and any free block inside it, which
`release_free_memory` hands back (find_batch.reset_peak_rss calls it, so that each trial step's peak is its
own). Settings a user made with glibc's MALLOC_*_ environment variables are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4
HEAP = {_M_MMAP_THRESHOLD: 32 << 20, _M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: 1 << 30, _M_TOP_PAD: 64 << 20}
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


@functools.cache  # loaded once: release_free_memory runs at every peak reset
def _libc():
    if not hasattr(os, "confstr"):
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):  # glibc only (not musl, macOS, Windows)
            return None
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except (OSError, ValueError):
        return None


def _mallopt():
    libc = _libc()
    return getattr(libc, "mallopt", None)


def keep_large_blocks_in_heap() -> bool:
    """Serve and keep every block in malloc's heap, for the rest of the process. True if applied: on glibc, and
    unless the user set MALLOC_*_ variables."""
    mallopt = _mallopt()
    if mallopt is None or any(v in os.environ for v in _ENV):
        return False
    return all(mallopt(param, value) == 1 for param, value in HEAP.items())


def release_free_memory() -> bool:
    """Hand the heap's free memory back to the system (glibc's malloc_trim), so that the resident memory is what
    is in use. False where not glibc."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True
