"""Pausing Python's cyclic garbage collector over a bulk phase.

A replay or a plan over a fleet-size store allocates millions of small objects (bytes, tuples, dicts,
journal records) that hold no reference cycles. The collector's generation-2 passes rescan every one of
them again and again while they pile up, which cost a third of `buildkit fsck`'s time on a 265 MB
cache.db. Reference counting still frees everything as usual; the collector resumes afterwards (only if
it was running).
"""
from __future__ import annotations

import gc
from contextlib import contextmanager


@contextmanager
def gc_paused():
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


__all__ = ["gc_paused"]
