"""Bulk reads of 16-byte records at arbitrary file offsets.

Every record the tree walk needs — page header, branch element, leaf element, bucket header — is
16 bytes (see schemas.layout). Real pages sit at multiples of the page size, so their records are
16-aligned and one view of the file as 16-byte items gathers them all at once. Inline buckets sit at any
offset; for those a second view has an item starting at every byte (a stride of 1), so a batch of records
at any offsets is still one gather of 16-byte items (it was a gather per residue class mod 16, sixteen for
a batch of inline-bucket records, at five times the cost), viewed as the record's dtype afterwards.
"""
from __future__ import annotations

import sys

import numpy as np

from ..schemas import BRANCH_ELEMENT, BUCKET_HEADER, LEAF_ELEMENT, PAGE_HEADER
from .heap import keep_freed_memory

RECORD = 16
for _layout in (PAGE_HEADER, BRANCH_ELEMENT, LEAF_ELEMENT, BUCKET_HEADER):
    assert _layout.size == RECORD


class Gather:
    def __init__(self, data, size: int):
        self.data = data
        self.size = size
        self.u8 = np.frombuffer(data, dtype=np.uint8, count=size)
        self._views: dict = {}
        keep_freed_memory()     # every bulk reader gathers through one of these: its chunks' temporaries

    def _items(self, size: int, stride: int) -> np.ndarray:
        """The file as ``size``-byte opaque items, one starting every ``stride`` bytes."""
        key = ("items", size, stride)
        v = self._views.get(key)
        if v is None:
            n = (self.size - size) // stride + 1 if self.size >= size else 0
            v = np.ndarray((n,), np.dtype((np.void, size)), buffer=self.data, strides=(stride,)) if n else \
                np.zeros(0, np.dtype((np.void, size)))
            self._views[key] = v
        return v

    def records(self, dtype: np.dtype, off: np.ndarray) -> np.ndarray:
        """Records of ``dtype`` at absolute offsets ``off`` (each must satisfy off + 16 <= file size)."""
        off = np.asarray(off, dtype=np.int64)
        if off.size == 0:
            return np.zeros(0, dtype)
        if not (off & (RECORD - 1)).any():
            return self._items(RECORD, RECORD)[off >> 4].view(dtype)
        return self._items(RECORD, 1)[off].view(dtype)

    def prefix8(self, off: np.ndarray, length: np.ndarray) -> np.ndarray:
        """The first 8 bytes at ``off`` as a big-endian u64, bytes at or past ``length`` read as zero.

        One gather of 8-byte items from the view with an item at every byte, byte-swapped in place; only the
        keys shorter than 8 bytes are masked. An offset in the file's last 7 bytes reads the last item and
        shifts (the bytes past the end are past ``length`` too)."""
        if off.size == 0:
            return np.zeros(0, np.uint64)
        if self.size < 8:
            return _prefix8_bytes(self.u8, off, np.minimum(np.minimum(length, self.size - off), 8).clip(0))
        last = self.size - 8
        tail = off > last
        at = off
        if tail.any():
            at = np.minimum(off, last)
            length = np.minimum(length, self.size - off)
        out = self._items(8, 1)[at].view(np.uint64)
        if _LITTLE:
            out.byteswap(inplace=True)
        if tail.any():
            out[tail] <<= ((off[tail] - last) * 8).astype(np.uint64)
        short = length < 8
        if short.any():
            out[short] &= _KEEP[length[short].clip(0)]
        return out


def _prefix8_bytes(u8: np.ndarray, off: np.ndarray, length: np.ndarray) -> np.ndarray:
    """prefix8 a byte at a time: for buffers shorter than one 8-byte item."""
    out = np.zeros(off.size, np.uint64)
    for i in range(8):
        have = length > i
        out[have] |= u8[off[have] + i].astype(np.uint64) << np.uint64(56 - 8 * i)
    return out


_LITTLE = sys.byteorder == "little"
_KEEP = np.array([((1 << (8 * n)) - 1) << (64 - 8 * n) for n in range(9)], dtype=np.uint64)  # first n bytes


BLOCK = 32      # bytes a key pair still tied after its first 8 is compared in, a round


def compare_keys(g: Gather, a_off, a_len, b_off, b_len, a_first=None, b_first=None, gb: Gather | None = None
                 ) -> np.ndarray:
    """Byte-wise comparison of key pairs (like bytes.Compare): -1, 0 or 1 per pair, each round only on the
    pairs still tied. ``a_first``/``b_first``: first-round prefixes, if known. ``gb``: where the ``b`` keys
    are, when not in ``g``.

    The first round compares 8 bytes; the pairs it leaves tied (BuildKit's keys share long prefixes: `sha256:`,
    a link's `{"Digest":"sha256:`) are compared 32 bytes a round, one gather of 32-byte items per side, since
    every gather of keys spread over the file is a cache miss a key, and 8 bytes a round took four of them."""
    gb = g if gb is None else gb
    n = len(a_off)
    res = np.zeros(n, dtype=np.int8)
    todo = np.arange(n)
    shift = 0
    while todo.size:
        al = a_len[todo] - shift
        bl = b_len[todo] - shift
        if shift == 0:
            if a_first is not None:
                ca, cb = a_first, b_first
            else:
                ca = g.prefix8(a_off[todo], al)
                cb = gb.prefix8(b_off[todo], bl)
            width = 8
        else:
            ao, bo = a_off[todo] + shift, b_off[todo] + shift
            if int(ao.max()) + BLOCK > g.size or int(bo.max()) + BLOCK > gb.size:     # a key in the last bytes
                ca, cb = g.prefix8(ao, al), gb.prefix8(bo, bl)
                width = 8
            else:
                ca, cb = _first_difference(_block_words(g, ao, al), _block_words(gb, bo, bl))
                width = BLOCK
        lt = ca < cb
        gt = ca > cb
        res[todo[lt]] = -1
        res[todo[gt]] = 1
        tie = ~(lt | gt)
        ends = tie & ((al <= width) | (bl <= width))
        res[todo[ends]] = np.sign(al[ends] - bl[ends]).astype(np.int8)
        todo = todo[tie & ~ends]
        shift += width
    return res


def _block_words(g: Gather, off: np.ndarray, length: np.ndarray) -> np.ndarray:
    """(n, BLOCK // 8) big-endian words of the BLOCK bytes at each offset, bytes at or past ``length`` zero."""
    w = g._items(BLOCK, 1)[off].view(np.uint64).reshape(-1, BLOCK // 8)
    if _LITTLE:
        w.byteswap(inplace=True)
    short = length < BLOCK
    if short.any():
        w[short] &= _KEEP[np.clip(length[short, None] - _WORD_STARTS, 0, 8)]
    return w


_WORD_STARTS = np.arange(0, BLOCK, 8)


def _first_difference(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first word where ``a`` and ``b`` differ (the first word, equal, when none does): a
    lexicographic comparison of the rows is the comparison of these."""
    at = (a != b).argmax(axis=1)
    rows = np.arange(a.shape[0])
    return a[rows, at], b[rows, at]
