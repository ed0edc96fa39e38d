"""Bulk reads of 16-byte records at arbitrary file offsets.

Every record the tree walk needs — page header, branch element, leaf element, bucket header — is
16 bytes (see schemas.layout). Real pages sit at multiples of the page size, so their records are
16-aligned and one structured view of the file gathers them all at once. Inline buckets sit at any
offset; for those we keep one view per byte shift (0..15) and gather each residue class from the
view it is aligned in, so unaligned records cost the same as aligned ones.
"""
from __future__ import annotations

import numpy as np

from ..schemas import BRANCH_ELEMENT, BUCKET_HEADER, LEAF_ELEMENT, PAGE_HEADER

RECORD = 16
for _layout in (PAGE_HEADER, BRANCH_ELEMENT, LEAF_ELEMENT, BUCKET_HEADER):
    assert _layout.size == RECORD


class Gather:
    def __init__(self, data, size: int):
        self.data = data
        self.size = size
        self.u8 = np.frombuffer(data, dtype=np.uint8, count=size)
        self._views: dict = {}

    def _view(self, dtype: np.dtype, shift: int) -> np.ndarray:
        key = (dtype, shift)
        v = self._views.get(key)
        if v is None:
            n = max((self.size - shift) // dtype.itemsize, 0)
            v = np.frombuffer(self.data, dtype=dtype, count=n, offset=shift) if n else np.zeros(0, dtype)
            self._views[key] = v
        return v

    def records(self, dtype: np.dtype, off: np.ndarray) -> np.ndarray:
        """Records of ``dtype`` at absolute offsets ``off`` (each must satisfy off + 16 <= file size)."""
        off = np.asarray(off, dtype=np.int64)
        if off.size == 0:
            return np.zeros(0, dtype)
        residue = off & (RECORD - 1)
        if not residue.any():
            return self._view(dtype, 0)[off >> 4]
        out = np.empty(off.size, dtype)
        order = np.argsort(residue, kind="stable")          # a counting sort: one pass, not 16 masks
        ends = np.cumsum(np.bincount(residue, minlength=RECORD))
        start = 0
        for k in range(RECORD):
            if ends[k] > start:
                idx = order[start:ends[k]]
                out[idx] = self._view(dtype, k)[(off[idx] - k) >> 4]
            start = ends[k]
        return out

    def prefix8(self, off: np.ndarray, length: np.ndarray) -> np.ndarray:
        """The first 8 bytes at ``off`` as a big-endian u64, bytes at or past ``length`` read as zero.

        Two aligned big-endian words around each offset, shifted together: no per-byte gather."""
        if off.size == 0:
            return np.zeros(0, np.uint64)
        words = self._view(_BE64, 0)
        top = words.size - 1
        length = np.minimum(np.minimum(length, self.size - off), 8).clip(0)
        w = off >> 3
        hi = words[np.minimum(w, top)]
        lo = words[np.minimum(w + 1, top)]
        shift = ((off & 7) * 8).astype(np.uint64)
        # lo >> (64 - shift), written so that shift 0 gives 0 instead of an undefined 64-bit shift
        out = (hi << shift) | ((lo >> np.uint64(1)) >> (np.uint64(63) - shift))
        out &= _KEEP[length]
        return out


_BE64 = np.dtype(">u8")
_KEEP = np.array([((1 << (8 * n)) - 1) << (64 - 8 * n) for n in range(9)], dtype=np.uint64)  # first n bytes


def compare_keys(g: Gather, a_off, a_len, b_off, b_len, a_first=None, b_first=None) -> np.ndarray:
    """Byte-wise comparison of key pairs (like bytes.Compare): -1, 0 or 1 per pair, 8 bytes a round,
    each round only on the pairs still tied. ``a_first``/``b_first``: first-round prefixes, if known."""
    n = len(a_off)
    res = np.zeros(n, dtype=np.int8)
    todo = np.arange(n)
    shift = 0
    while todo.size:
        al = a_len[todo] - shift
        bl = b_len[todo] - shift
        if shift == 0 and a_first is not None:
            ca, cb = a_first, b_first
        else:
            ca = g.prefix8(a_off[todo] + shift, al)
            cb = g.prefix8(b_off[todo] + shift, bl)
        lt = ca < cb
        gt = ca > cb
        res[todo[lt]] = -1
        res[todo[gt]] = 1
        tie = ~(lt | gt)
        ends = tie & ((al <= 8) | (bl <= 8))
        res[todo[ends]] = np.sign(al[ends] - bl[ends]).astype(np.int8)
        todo = todo[tie & ~ends]
        shift += 8
    return res
