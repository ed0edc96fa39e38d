"""Serialising nodes the way every bbolt writer lays them out (node.write / WriteInodeToPage).

Header, element array, then keys and values packed in element order with no gaps; ``pos`` is
relative to each element; the tail of the last page is zero.
"""
from __future__ import annotations

import numpy as np

from ..errors import WriteError
from ..schemas import (BRANCH_ELEMENT, BUCKET_HEADER, ELEMENT_SIZE, LEAF_ELEMENT, MAX_ELEMENTS, PAGE_HEADER,
                       PAGE_HEADER_SIZE, PageFlag)

BranchEntry = tuple[bytes, int]           # first key of the child, child page id


class Run:
    """Leaf elements whose key and value bytes lie in ``buf``: element i is key buf[ks:ke], value buf[ke:ve].

    A run copied from a bbolt page keeps that page's packing, so its data is one contiguous slice."""

    __slots__ = ("buf", "flags", "ks", "ke", "ve")

    def __init__(self, buf, flags: np.ndarray, ks: np.ndarray, ke: np.ndarray, ve: np.ndarray):
        self.buf, self.flags, self.ks, self.ke, self.ve = buf, flags, ks, ke, ve

    @classmethod
    def single(cls, key: bytes, value: bytes, flags: int) -> "Run":
        k = len(key)
        return cls(key + value, np.array([flags], np.int64), np.array([0], np.int64), np.array([k], np.int64),
                   np.array([k + len(value)], np.int64))

    def __len__(self) -> int:
        return len(self.ks)

    def sizes(self) -> np.ndarray:
        """Bytes each element takes in a page: element header, key, value."""
        return ELEMENT_SIZE + (self.ve - self.ks)

    def key(self, i: int) -> bytes:
        return bytes(self.buf[int(self.ks[i]):int(self.ke[i])])

    def slice(self, a: int, b: int) -> "Run":
        return Run(self.buf, self.flags[a:b], self.ks[a:b], self.ke[a:b], self.ve[a:b])

    def stretches(self) -> list[tuple[int, int]]:
        """(start, end) in ``buf`` of each stretch of packed keys and values that is contiguous there."""
        ks, ve = self.ks, self.ve
        if not len(ks):
            return []
        breaks = np.flatnonzero(ks[1:] != ve[:-1]) + 1
        return list(zip(ks[np.r_[0, breaks]].tolist(), ve[np.r_[breaks, len(ks)] - 1].tolist()))

    def data(self) -> bytes:
        """The packed keys and values: one slice per stretch that is contiguous in ``buf`` (views joined: each
        byte copied once, not into a slice and then into the join)."""
        with memoryview(self.buf) as view:
            return b"".join([view[a:b] for a, b in self.stretches()])

    @classmethod
    def packed(cls, runs: list["Run"]) -> "Run":
        """One run over a new buffer holding the elements of ``runs`` (over different buffers), packed."""
        flags = np.concatenate([r.flags for r in runs])
        klen = np.concatenate([r.ke - r.ks for r in runs])
        vlen = np.concatenate([r.ve - r.ke for r in runs])
        ks = np.concatenate([[0], np.cumsum(klen + vlen)[:-1]]).astype(np.int64)
        return cls(b"".join(r.data() for r in runs), flags, ks, ks + klen, ks + klen + vlen)

    @classmethod
    def concat(cls, runs: list["Run"]) -> "Run":
        """One run from several over the same buffer."""
        return cls(runs[0].buf, *(np.concatenate([getattr(r, f) for r in runs]) for f in ("flags", "ks", "ke", "ve")))


def encode_leaf(runs: list[Run], pgid: int, page_size: int | None) -> bytes:
    """A leaf page from runs of elements (``page_size`` given: padded to whole pages with the overflow
    count set) or, with ``page_size=None``, the exact bytes of an inline bucket's page."""
    runs = [r for r in runs if len(r)]
    n = sum(len(r) for r in runs)
    if n >= MAX_ELEMENTS:
        raise WriteError(f"{n} elements in one page (bbolt allows fewer than {MAX_ELEMENTS})")
    if n == 0:
        return _finish(PageFlag.LEAF, pgid, 0, b"", b"", page_size)
    flags = np.concatenate([r.flags for r in runs])
    klen = np.concatenate([r.ke - r.ks for r in runs])
    vlen = np.concatenate([r.ve - r.ke for r in runs])
    before = np.concatenate([[0], np.cumsum(klen + vlen)[:-1]])       # data bytes ahead of element i
    pos = ELEMENT_SIZE * (n - np.arange(n)) + before                   # from element i to its key
    table = np.empty(n, LEAF_ELEMENT.dtype)
    table["flags"], table["pos"], table["ksize"], table["vsize"] = flags, pos, klen, vlen
    return _finish(PageFlag.LEAF, pgid, n, table.tobytes(), b"".join(r.data() for r in runs), page_size)


def encode_leaf_pairs(pairs: list[tuple[bytes, bytes, int]], pgid: int, page_size: int | None) -> bytes:
    """``encode_leaf`` for a few (key, value, flags) pairs given as they are: an inline bucket's page costs
    a struct call per element instead of a round of array work."""
    n = len(pairs)
    if n >= MAX_ELEMENTS:
        raise WriteError(f"{n} elements in one page (bbolt allows fewer than {MAX_ELEMENTS})")
    pack = LEAF_ELEMENT.struct.pack
    elems = bytearray()
    before = 0
    for i, (k, v, f) in enumerate(pairs):
        elems += pack(f, ELEMENT_SIZE * (n - i) + before, len(k), len(v))
        before += len(k) + len(v)
    return _finish(PageFlag.LEAF, pgid, n, bytes(elems), b"".join(b for k, v, _ in pairs for b in (k, v)), page_size)


LARGE = 1 << 20      # a stretch of at least this many bytes is written from where it lies, never copied


def encode_leaves(run: Run, cuts: list[tuple[int, int]], pgids: list[int], page_size: int) -> list:
    """Many leaf pages at once: page k holds elements cuts[k] of ``run`` and has id pgids[k]; pages are
    laid out back to back, each padded to its whole pages, exactly as encode_leaf would write them.

    Returned as buffers to write in order: the pages' headers, element tables and small keys and values
    copied into bytearrays, and every stretch of at least ``LARGE`` bytes as a view of ``run.buf`` itself (the
    source map), so a 400 MB value costs no copy at all (it used to cost two: the page, and the temporary
    bytearray that slice assignment from a foreign buffer makes)."""
    run = run.slice(0, cuts[-1][1])      # cuts are contiguous from element 0
    n_el = len(run)
    klen = run.ke - run.ks
    vlen = run.ve - run.ke
    dlen = klen + vlen
    starts = np.array([a for a, _ in cuts], np.int64)
    counts = np.array([b - a for a, b in cuts], np.int64)
    page_of = np.repeat(np.arange(len(cuts)), counts)
    local = np.arange(n_el, dtype=np.int64) - np.repeat(starts, counts)
    cum = np.concatenate([[0], np.cumsum(dlen)])
    before = cum[:-1] - np.repeat(cum[starts], counts)
    table = np.empty(n_el, LEAF_ELEMENT.dtype)
    table["flags"] = run.flags
    table["pos"] = ELEMENT_SIZE * (counts[page_of] - local) + before
    table["ksize"], table["vsize"] = klen, vlen
    raw = table.tobytes()
    sizes = PAGE_HEADER_SIZE + ELEMENT_SIZE * counts + (cum[starts + counts] - cum[starts])
    npages = -(-sizes // page_size)
    if not ((run.ve - run.ks) >= LARGE).any():
        return [_small_leaves(run, cuts, pgids, raw, cum, npages, page_size)]
    parts: list = []
    view = memoryview(run.buf)
    blob = bytearray(_small_bytes(run, cuts, npages, page_size))
    bv = memoryview(blob)                # slice assignment through a view copies once, straight from the map
    off = 0                              # where in ``blob`` the next byte goes
    done = 0                             # bytes of ``blob`` already handed out as parts
    for k, (a, b) in enumerate(cuts):
        n = b - a
        page_start = off
        bv[off:off + PAGE_HEADER_SIZE] = PAGE_HEADER.struct.pack(pgids[k], PageFlag.LEAF, n, int(npages[k]) - 1)
        t = off + PAGE_HEADER_SIZE
        bv[t:t + ELEMENT_SIZE * n] = raw[ELEMENT_SIZE * a:ELEMENT_SIZE * b]
        t += ELEMENT_SIZE * n
        streamed = 0                     # bytes of this page written from the map instead of ``blob``
        for s, e in run.slice(a, b).stretches():
            if e - s >= LARGE:
                parts.append(bv[done:t])
                parts.append(view[s:e])
                done = t
                streamed += e - s
            else:
                bv[t:t + e - s] = view[s:e]
                t += e - s
        off = page_start + int(npages[k]) * page_size - streamed     # the zero tail stays in ``blob``
    parts.append(bv[done:off])
    return [p for p in parts if len(p)]


def _small_leaves(run: Run, cuts: list[tuple[int, int]], pgids: list[int], raw: bytes, cum: np.ndarray,
                  npages: np.ndarray, page_size: int) -> bytearray:
    """encode_leaves' pages when no stretch is large: the keys and values packed once for the whole run (one
    slice per stretch contiguous in the source); the pages' headers and element tables, 16-byte records at
    16-aligned offsets of the pages, put in place in one scatter each; then a slice assignment a page for its
    keys and values: no array work per page."""
    data = memoryview(run.data())
    blob = bytearray(int(npages.sum()) * page_size)
    at = np.array(cuts, np.int64).reshape(-1, 2)
    counts = at[:, 1] - at[:, 0]
    first = (np.cumsum(npages) - npages) * (page_size // 16)     # each page's first 16-byte record in ``blob``
    header = np.zeros(len(cuts), PAGE_HEADER.dtype)
    header["id"], header["flags"], header["count"], header["overflow"] = pgids, PageFlag.LEAF, counts, npages - 1
    records = np.frombuffer(blob, _RECORD)
    records[first] = header.view(_RECORD)
    records[np.repeat(first + 1 - at[:, 0], counts) + np.arange(int(counts.sum()))] = np.frombuffer(raw, _RECORD)
    del records      # the bytearray's export: it is written out next
    begin = (first * 16 + PAGE_HEADER_SIZE + ELEMENT_SIZE * counts).tolist()
    starts = cum.tolist()
    for t, (a, b) in zip(begin, cuts):
        blob[t:t + starts[b] - starts[a]] = data[starts[a]:starts[b]]
    return blob


_RECORD = np.dtype((np.void, 16))


def encode_alone(key: bytes, value, flags: int, pgid: int, page_size: int) -> list:
    """The leaf page of one element, as buffers to write in order: header, element and key; the value as it was
    given (a view of the source map: never copied); the zero tail. Equal, byte for byte, to encode_leaf's."""
    size = PAGE_HEADER_SIZE + ELEMENT_SIZE + len(key) + len(value)
    pages = -(-size // page_size)
    head = (PAGE_HEADER.struct.pack(pgid, PageFlag.LEAF, 1, pages - 1)
            + LEAF_ELEMENT.struct.pack(flags, ELEMENT_SIZE, len(key), len(value)) + bytes(key))
    return [head, value, bytes(pages * page_size - size)]


def _small_bytes(run: Run, cuts: list[tuple[int, int]], npages: np.ndarray, page_size: int) -> int:
    """Bytes of ``blob`` encode_leaves needs: the pages less their stretches of ``LARGE`` bytes or more."""
    total = int(npages.sum()) * page_size
    big = (run.ve - run.ks) >= LARGE
    if not big.any():
        return total
    for a, b in cuts:
        for s, e in run.slice(a, b).stretches():
            if e - s >= LARGE:
                total -= e - s
    return total


def encode_branch(entries: list[BranchEntry], pgid: int, page_size: int) -> bytes:
    n = len(entries)
    if n >= MAX_ELEMENTS:
        raise WriteError(f"{n} elements in one page (bbolt allows fewer than {MAX_ELEMENTS})")
    elems = bytearray()
    data = bytearray()
    data_start = PAGE_HEADER_SIZE + ELEMENT_SIZE * n
    pack = BRANCH_ELEMENT.struct.pack
    for i, (k, child) in enumerate(entries):
        if child == pgid:
            raise WriteError(f"branch page {pgid} would point to itself")
        pos = data_start + len(data) - (PAGE_HEADER_SIZE + ELEMENT_SIZE * i)
        elems += pack(pos, len(k), child)
        data += k
    return _finish(PageFlag.BRANCH, pgid, n, bytes(elems), bytes(data), page_size)


def _finish(flags: int, pgid: int, count: int, elems: bytes, data: bytes, page_size: int | None) -> bytes:
    size = PAGE_HEADER_SIZE + len(elems) + len(data)
    if page_size is None:
        return PAGE_HEADER.struct.pack(pgid, flags, count, 0) + elems + data
    pages = -(-size // page_size)
    header = PAGE_HEADER.struct.pack(pgid, flags, count, pages - 1)
    # one join, not three concatenations: a page holding a 400 MB value is copied once, not three times
    return b"".join((header, elems, data, bytes(pages * page_size - size)))


def pages_for(size: int, page_size: int) -> int:
    return -(-size // page_size)


def bucket_value(root: int, sequence: int, inline_page: bytes = b"") -> bytes:
    return BUCKET_HEADER.struct.pack(root, sequence) + inline_page
