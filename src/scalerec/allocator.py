"""glibc malloc settings for training on the CPU.

PyTorch's CPU allocator is malloc. glibc serves blocks above its mmap threshold (128 KiB at start, raised
dynamically up to 32 MiB) with fresh mmap'd pages, so an activation or gradient of a few MB allocated at every
step page-faults every one of its 4 KiB pages on first touch, and unmaps them again when freed. A step at batch
8192 allocates dozens of such blocks. Serving them from the heap (mmap threshold 32 MiB, the largest glibc
allows) and keeping freed memory there (trim threshold 1 GiB) reuses the same pages instead. glibc's own
settings cannot be restored once changed (its dynamic threshold stays off), so benchmarks/step_speed.py counts
the page faults per step of a run with them (--glibc-malloc) and of one without. The cost is up to the trim
threshold of freed memory kept resident. Settings a user made with glibc's MALLOC_*_ environment variables are
left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
HEAP = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 1 << 30, _M_TOP_PAD: 64 << 20}
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def _mallopt():
    if not hasattr(os, "confstr"):
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):  # glibc only (not musl, macOS, Windows)
            return None
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, ValueError, AttributeError):
        return None


def keep_large_blocks_in_heap() -> bool:
    """Serve and keep blocks up to 32 MiB in malloc's heap, for the rest of the process. True if applied: on
    glibc, and unless the user set MALLOC_*_ variables."""
    mallopt = _mallopt()
    if mallopt is None or any(v in os.environ for v in _ENV):
        return False
    return all(mallopt(param, value) == 1 for param, value in HEAP.items())
