"""Byte strings of a mapped file, in bulk: copied out a length at a time, hashed, interned.

A cache.db names its ~200k ids about 1.6M times (bucket names, link targets, index entries). Comparing
them as Python bytes objects costs a second per million; here every string of one length is copied out
as the rows of one array in a single gather (a strided view of the file, so no index per byte), hashed a
word column at a time with two independent 64-bit hashes, and interned in a hash table (Interner): each
distinct string gets a dense integer code, and the rest of the work is on integers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


_I64 = np.int64
CHUNK = 1 << 16        # strings copied out at a time: keeps the copies small next to the file
CHUNK_BYTES = 1 << 20  # bytes of rows worked on at a time: each pass over them stays in the cache, and the
#                        temporaries of a check over every column (a bool a byte) stay small


def chunks(idx: np.ndarray, width: int = 0):
    """``idx`` in slices of CHUNK strings, or, given the rows' ``width`` in bytes, of about CHUNK_BYTES."""
    step = max(1024, min(CHUNK, CHUNK_BYTES // width)) if width else CHUNK
    return (idx[a:a + step] for a in range(0, idx.size, step))


def string_at(u8: np.ndarray, off, length, i) -> bytes:
    o = int(off[i])
    return u8[o:o + int(length[i])].tobytes()


@dataclass
class Names:
    """Interned strings: code -> one occurrence in the file. Codes are dense, numbered in order of first
    appearance (for cache.db: ids first as _links bucket names, which the file keeps sorted)."""
    data: np.ndarray              # the file as bytes; a view keeps the mapping alive after the Database closes
    off: np.ndarray
    length: np.ndarray

    def __len__(self) -> int:
        return int(self.off.size)

    def bytes(self, code) -> bytes:
        o = int(self.off[code])
        return self.data[o:o + int(self.length[code])].tobytes()

    def str(self, code) -> str:
        return self.bytes(code).decode("utf-8", "replace")

    def all_bytes(self) -> list:
        """Every string as bytes, by code: copied out in one gather, sliced from one buffer, kept."""
        cached = self.__dict__.get("_all_bytes")
        if cached is None:
            cached = self.__dict__["_all_bytes"] = byte_strings(self.data, self.off, self.length)
        return cached


def byte_strings(u8: np.ndarray, off: np.ndarray, length: np.ndarray) -> list:
    """The byte strings at the file ranges, as a list of bytes: gathered a chunk at a time into one buffer
    and sliced from it (a ``tobytes`` per string costs several times more)."""
    out: list = []
    off, length = np.asarray(off, _I64), np.asarray(length, _I64)
    for a in range(0, off.size, CHUNK):
        o, n = off[a:a + CHUNK], length[a:a + CHUNK]
        ends = np.cumsum(n)
        starts = ends - n
        idx = np.repeat(o - starts, n) + np.arange(int(ends[-1]) if ends.size else 0)
        buf = u8[idx].tobytes()
        out += [buf[s:e] for s, e in zip(starts.tolist(), ends.tolist())]
    return out


def rows_at(u8: np.ndarray, off: np.ndarray, n: int) -> np.ndarray:
    """The n-byte strings at ``off`` as the rows of a (len(off), n) array.

    Gathered as n-byte opaque items from a view with an item starting at every byte (as ``Gather`` reads
    records): one copy per string, two to three times faster than indexing the rows of a (size, n) strided
    view, which numpy copies a byte at a time."""
    if not n:
        return np.zeros((off.size, 0), np.uint8)
    items = np.ndarray((u8.size - n + 1,), np.dtype((np.void, n)), buffer=u8, strides=(1,))
    return items[off].view(np.uint8).reshape(-1, n)


def hash_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent 64-bit hashes of strings given as the rows of one (m, n) byte array: zero-padded to whole
    8-byte words and hashed a word column at a time (in place: no temporaries a column)."""
    m, n = rows.shape
    w = -(-n // 8)
    buf = np.zeros((m, w * 8), np.uint8)
    buf[:, :n] = rows
    words = buf.view(np.uint64)
    a = np.full(m, n * 0x9E3779B97F4A7C15 % 2**64, np.uint64)
    b = ~a
    x = np.empty(m, np.uint64)
    for j in range(w):
        col = words[:, j]
        np.bitwise_xor(a, col, out=a)
        np.multiply(a, _FNV, out=a)
        np.add(b, col, out=x)
        np.multiply(x, _MIX, out=x)
        np.right_shift(x, _29, out=b)
        np.bitwise_xor(b, x, out=b)
    return a ^ (a >> np.uint64(31)), b


_FNV, _MIX, _29 = np.uint64(0x100000001B3), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(29)


def _unique(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(h, return_index=True, return_inverse=True), sooner: the first index of each distinct value
    (in value order), and each value's group.

    An argsort of millions of 64-bit hashes is ten times slower than a plain sort, so each hash's top bits
    and its index are packed into one word and sorted as values; the few runs whose top bits are equal
    but whose hashes differ are then put in hash order by an argsort of their own."""
    n = h.size
    if n < 2:
        return np.arange(n, dtype=_I64), np.zeros(n, _I64)
    bits = max(int(n - 1).bit_length(), 1)
    low = np.uint64((1 << bits) - 1)
    packed = (h & ~low) | np.arange(n, dtype=np.uint64)
    packed.sort()
    order = (packed & low).astype(_I64)
    sh = h[order]
    differ = sh[1:] != sh[:-1]
    mixed = differ & ((packed[1:] & ~low) == (packed[:-1] & ~low))   # two hashes in one run of top bits
    if mixed.any():
        top = packed & ~low
        fix = np.flatnonzero(np.isin(top, top[1:][mixed]))
        sub = order[fix]
        order[fix] = sub[np.lexsort((sub, h[sub]))]
        sh = h[order]
        differ = sh[1:] != sh[:-1]
    new = np.empty(n, bool)
    new[0] = True
    new[1:] = differ
    inv = np.empty(n, _I64)
    inv[order] = np.cumsum(new) - 1
    return order[new], inv


class Interner:
    """Codes for byte strings met a chunk at a time, while the pages holding them are resident: each
    distinct string is hashed (``hash_rows``) and copied out once, into a buffer of its own, so the file's
    pages can be released as soon as a chunk is read and nothing needs them again.

    The strings form numbered lists (as ``intern`` takes them); each string added says where it stands (its
    list and position, ``place``), and ``finish`` numbers the distinct strings in order of first appearance
    in the lists, as ``intern`` does. A string added but never placed (a candidate that turned out not to
    be in any list) gets no code.

    A string is recognised by its first hash in a hash table and confirmed by its second, as ``intern``
    does; a string whose first hash is taken by another string (never seen) is interned by its bytes."""

    def __init__(self, expect: int = 0):
        """``expect``: about how many distinct strings will come (the table is made for them at once; it
        grows past them all the same)."""
        self._expect = expect
        self._table = np.zeros(1, np.uint64)   # hash table of the distinct strings' first hashes (_find)
        self._claim = np.zeros(0, np.int32)
        self._mask, self._filled = np.uint64(0), 0
        self._h1 = np.zeros(0, np.uint64)      # by provisional code: the first hash
        self._h2 = np.zeros(0, np.uint64)      # by provisional code: the second hash
        self._first = np.zeros(0, _I64)        # by provisional code: the first place it stands at
        self._off = np.zeros(0, _I64)          # by provisional code: where its bytes are in the buffer
        self._len = np.zeros(0, np.int32)
        self._buf = bytearray()
        self._exact: dict[bytes, int] = {}     # strings whose first hash another string has
        self.n = 0

    @staticmethod
    def where(list_no: int, positions) -> np.ndarray:
        """The place key of positions in list ``list_no``: lists in order, then positions."""
        return np.asarray(positions, _I64) + (list_no << 40)

    def add(self, u8: np.ndarray, off: np.ndarray, length: np.ndarray, where: np.ndarray | None = None,
            hashes: tuple | None = None) -> np.ndarray:
        """Provisional codes of the strings at the ranges ``off``, ``length`` of ``u8`` (in bounds), placed at
        ``where`` (see ``where``; None: not yet). ``hashes``: their ``hash_rows``, where the caller has
        them."""
        off, length = np.asarray(off, _I64), np.asarray(length, _I64)
        m = off.size
        if not m:
            return np.zeros(0, _I64)
        if hashes is not None:
            codes = self._codes(u8, off, length, *hashes)
        else:                       # a length at a time: the rows hashed are the bytes kept of new strings
            codes = np.empty(m, _I64)
            for n, group in by_length(length):
                for idx in chunks(group, n):
                    rows = rows_at(u8, off[idx], n)
                    codes[idx] = self._codes(u8, off[idx], length[idx], *hash_rows(rows), rows)
        if where is not None:
            self.place(codes, where)
        return codes

    def _codes(self, u8, off, length, h1, h2, rows=None) -> np.ndarray:
        codes = self._find(h1)
        new = np.flatnonzero(codes < 0)
        if new.size:
            first, inv = _unique(h1[new])
            fresh = self._grow(first.size)
            reps = new[first]
            self._h2[fresh] = h2[reps]
            if rows is None:
                self._keep(u8, off[reps], length[reps], fresh)
            else:
                n = rows.shape[1]
                self._off[fresh] = len(self._buf) + n * np.arange(fresh.size, dtype=_I64)
                self._len[fresh] = n
                self._buf += rows[reps].tobytes()
            self._insert(h1[reps], fresh)
            codes[new] = fresh[inv]
        for i in np.flatnonzero(self._h2[codes] != h2).tolist():      # the first hash is another string's
            o, n = int(off[i]), int(length[i])
            b = u8[o:o + n].tobytes()
            c = self._exact.get(b)
            if c is None:
                c = self._exact[b] = int(self._grow(1)[0])
                self._h2[c] = h2[i]
                self._keep(u8, off[i:i + 1], length[i:i + 1], np.array([c]))
            codes[i] = c
        return codes

    def _find(self, h: np.ndarray) -> np.ndarray:
        """The provisional codes of the first hashes ``h`` (-1: not in the table). The table is open
        addressing on the hashes' low bits, probed linearly, all lookups of a call at once. A slot is one
        word: the hash's top 32 bits and the code + 1 (0: free); a match of those bits is confirmed by the
        whole hash, kept by code."""
        out = np.full(h.size, -1, _I64)
        if not self._filled:
            return out
        at = (h & self._mask).astype(_I64)
        low = h & _HIGH_FREE
        todo = np.arange(h.size)
        while todo.size:
            slot = self._table[at]
            used = slot != 0
            c = (slot & _LOW32).astype(_I64) - 1
            hit = used & ((slot & _HIGH_FREE) == low[todo])
            hit[hit] = self._h1[c[hit]] == h[todo[hit]]
            out[todo[hit]] = c[hit]
            on = ~hit & used                          # another string's slot: the next one
            todo, at = todo[on], (at[on] + 1) & (self._table.size - 1)
        return out

    def _insert(self, h: np.ndarray, codes: np.ndarray) -> None:
        """Put the distinct first hashes ``h``, none in the table yet, in it (grown to stay at most 70 % full)."""
        self._h1[codes] = h
        if 10 * (self._filled + h.size) > 7 * self._table.size:
            need = max(self._filled + h.size, self._expect) * 10 // 7
            cap = max(1 << 16, 1 << int(need).bit_length())
            old = np.flatnonzero(self._table)
            old_codes = (self._table[old] & _LOW32).astype(_I64) - 1
            self._table = np.zeros(cap, np.uint64)
            self._claim = np.full(cap, -1, np.int32)
            self._mask = np.uint64(cap - 1)
            self._filled = 0
            self._put(self._h1[old_codes], old_codes)
        self._put(h, codes)

    def _put(self, h: np.ndarray, codes: np.ndarray) -> None:
        at = (h & self._mask).astype(_I64)
        word = (h & _HIGH_FREE) | (codes + 1).astype(np.uint64)
        todo = np.arange(h.size)
        claim = self._claim                 # per slot: which of the strings after it takes it this round
        while todo.size:
            free = np.flatnonzero(self._table[at] == 0)
            want = at[free]
            claim[want] = free              # several after one slot: one write wins
            mine = free[claim[want] == free]
            claim[want] = -1
            self._table[at[mine]] = word[todo[mine]]
            left = np.ones(todo.size, bool)
            left[mine] = False
            todo, at = todo[left], (at[left] + 1) & (self._table.size - 1)
        self._filled += h.size

    def add_bytes(self, strings: list, where: np.ndarray | None = None) -> np.ndarray:
        """``add`` of Python byte strings."""
        buf = np.frombuffer(b"".join(strings) + b"\0", np.uint8)
        length = np.array([len(b) for b in strings], _I64)
        return self.add(buf, np.cumsum(length) - length, length, where)

    def place(self, codes: np.ndarray, where: np.ndarray) -> None:
        """The strings ``codes`` stand at ``where`` (see ``where``)."""
        np.minimum.at(self._first, codes, where)

    def bytes(self, code: int) -> bytes:
        """The bytes of the string with provisional code ``code``."""
        o = int(self._off[code])
        return bytes(self._buf[o:o + int(self._len[code])])

    def finish(self) -> tuple[np.ndarray, "Names"]:
        """Per provisional code its code (-1: never placed), and the strings by code, in a buffer of their own
        (padded to whole 8-byte words, as a mapped file is read by ``Gather.prefix8``)."""
        first = self._first[:self.n]
        placed = np.flatnonzero(first != _UNPLACED)
        order = placed[np.argsort(first[placed], kind="stable")]
        rank = np.full(self.n, -1, _I64)
        rank[order] = np.arange(order.size, dtype=_I64)
        self._buf.extend(bytes(16 - len(self._buf) % 8))
        data = np.frombuffer(self._buf, np.uint8)      # the buffer itself (no copy): it grows no more
        self._buf = bytearray()
        return rank, Names(data, self._off[order], self._len[order].astype(_I64))

    def _grow(self, k: int) -> np.ndarray:
        """k new provisional codes."""
        if self.n + k > self._h2.size:
            # the first growth to the expected count, then by half: each array is made empty and only its used
            # part copied, so the pages of a capacity never reached are never touched (np.resize fills them)
            cap = max(self._h2.size * 3 // 2, self.n + k, 1024, self._expect)
            for name in ("_h1", "_h2", "_first", "_off", "_len"):
                old = getattr(self, name)
                new = np.empty(cap, old.dtype)
                new[:self.n] = old[:self.n]
                setattr(self, name, new)
        fresh = np.arange(self.n, self.n + k, dtype=_I64)
        self._h1[fresh] = 0
        self._first[fresh] = _UNPLACED
        self.n += k
        return fresh

    def _keep(self, u8: np.ndarray, off: np.ndarray, length: np.ndarray, codes: np.ndarray) -> None:
        """Copy the strings' bytes into the buffer, a length at a time."""
        for n, group in by_length(length):
            self._off[codes[group]] = len(self._buf) + n * np.arange(group.size, dtype=_I64)
            self._len[codes[group]] = n
            if n:
                self._buf += rows_at(u8, off[group], n).tobytes()


_UNPLACED = np.iinfo(_I64).max
_LOW32 = np.uint64(0xFFFFFFFF)
_HIGH_FREE = np.uint64(0xFFFFFFFF00000000)      # a slot's hash bits (the table's index is the low bits)


def by_length(length: np.ndarray):
    """(n, indices of the strings of length n) for each length present."""
    key = length.astype(np.uint16) if length.size and length.max() < 2**16 else length    # radix sort
    order = np.argsort(key, kind="stable")
    lengths, starts = np.unique(key[order], return_index=True)
    return zip(lengths.tolist(), np.split(order, starts[1:]))
