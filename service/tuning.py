"""Process-level tuning, applied once before the workers fork (gunicorn.conf.py) and by the benchmark.

Standard library only; every function is a no-op where it does not apply.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc caps M_MMAP_THRESHOLD at 32 MiB on 64-bit systems; a larger value is refused.
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 1 << 30


def keep_freed_arrays() -> bool:
    """Let glibc keep freed arrays of up to 32 MiB on its heap for the next request instead of unmapping them.

    By default every array over 128 KiB gets fresh pages from the kernel and gives them back when freed, so each
    pass over a large network pays a page fault per 4 KiB of every new array (measured: about 1,400 faults and
    15-30% of the engine's time on [784, 256, 128, 10], m = 256). The cost is that a worker's memory stays at
    its high-water mark, which gunicorn's max-requests recycling bounds. Returns whether glibc accepted it.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
