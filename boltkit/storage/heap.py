"""Keeping the C heap's freed memory for the next step of a bulk pass.

A bulk pass (the checker's levels, the count, compact's copier) works in chunks of 65,536 elements: each step
allocates and frees a few MiB of numpy temporaries. glibc gives the top of its heap back to the kernel whenever more
than 128 KiB is free there (M_TRIM_THRESHOLD follows M_MMAP_THRESHOLD, which grows to the largest block freed), so
every chunk faulted its temporaries in again, zero-filled by the kernel: `export --count` of the 849 MB flat file
took 91k minor faults and 0.36 CPU s of system time, most of the walk's own cost. Raising M_TOP_PAD to 64 MiB makes
glibc keep that much of the heap's top when it trims (and grow it in steps that large, touched only as used), so a
chunk's temporaries reuse the pages the last chunk freed: 32k faults and 0.19 s, peak RSS within a few MiB (`check`
of the 265 MB BuildKit-like file, whose chunks allocate less: 31k faults before, 28k after).

Process-wide, once, and only where the C library is glibc (``mallopt`` exists elsewhere with other meanings
or not at all); nothing else about allocation changes.
"""
from __future__ import annotations

import sys

M_TOP_PAD = -2          # glibc's malloc.h
TOP_PAD = 64 << 20

_done = False


def keep_freed_memory() -> None:
    """Raise glibc's M_TOP_PAD to 64 MiB, once per process (a no-op off glibc, and if the call fails)."""
    global _done
    if _done:
        return
    _done = True
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):     # musl and others: not glibc's mallopt
            return
        libc.mallopt(M_TOP_PAD, TOP_PAD)
    except (OSError, AttributeError):
        pass
