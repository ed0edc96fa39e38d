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
        for k in np.unique(residue).tolist():
            m = residue == k
            out[m] = self._view(dtype, k)[(off[m] - k) >> 4]
        return out

    def prefix8(self, off: np.ndarray, length: np.ndarray) -> np.ndarray:
        """The first 8 bytes at ``off`` as a big-endian u64, bytes at or past ``length`` read as zero."""
        if off.size == 0:
            return np.zeros(0, np.uint64)
        length = np.clip(length, 0, 8)
        safe = np.minimum(off, self.size - 8)          # never read past the end; those bytes get masked
        length = np.minimum(length, self.size - off).clip(0, 8)
        residue = safe & 7
        out = np.empty(off.size, np.uint64)
        for k in np.unique(residue).tolist():
            m = residue == k
            out[m] = self._view(_BE64, k)[(safe[m] - k) >> 3]
        lost = (off - safe).astype(np.uint64) * np.uint64(8)          # bytes we had to start early
        out <<= lost
        drop = (np.uint64(8) - length.astype(np.uint64)) * np.uint64(8)
        keep = drop < 64
        out[~keep] = 0
        out[keep] = (out[keep] >> drop[keep]) << drop[keep]
        return out


_BE64 = np.dtype(">u8")


def compare_keys(g: Gather, a_off, a_len, b_off, b_len) -> np.ndarray:
    """Byte-wise comparison of key pairs (like bytes.Compare): -1, 0 or 1 per pair, 8 bytes a round,
    each round only on the pairs still tied."""
    n = len(a_off)
    res = np.zeros(n, dtype=np.int8)
    todo = np.arange(n)
    shift = 0
    while todo.size:
        al = a_len[todo] - shift
        bl = b_len[todo] - shift
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
