"""The level-by-level reading of a tree, as arrays: the frontier of pages and inline buckets to enter next, the
nodes of one level, and their elements expanded to absolute offsets.

These are the reading half of the checker's whole-tree pass (check/scan.py judges each step as it reads it):
any bulk reader that wants a tree a level at a time, with Python per level rather than per key, builds on them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..schemas import ELEMENT_SIZE, PAGE_HEADER_SIZE

I64 = np.int64
NONE = -1


def as_i64(x) -> np.ndarray:
    return np.asarray(x, dtype=I64)


@dataclass
class Frontier:
    """Pages to enter at the next level (paged nodes), one entry per reference."""
    pg: np.ndarray
    parent: np.ndarray      # the referring page (-1 for the meta's root)
    bucket: np.ndarray      # index into the bucket table
    lo_off: np.ndarray      # key range the parent assigns: [lo, hi), -1 = unbounded
    lo_len: np.ndarray
    hi_off: np.ndarray
    hi_len: np.ndarray
    hidden: np.ndarray      # index of a "bucket not findable by key" problem covering this subtree, or -1

    @classmethod
    def root(cls, pgid: int) -> "Frontier":
        """The first level: the root page of a tree, with no parent, no key bounds and nothing hidden."""
        one, none = as_i64([pgid]), as_i64([NONE])
        zero = as_i64([0])
        return cls(one, none, zero, none, zero, none, zero, none)

    @classmethod
    def empty(cls) -> "Frontier":
        z = np.zeros(0, I64)
        return cls(z, z, z, z, z, z, z, z)

    def take(self, m) -> "Frontier":
        return Frontier(*(getattr(self, f)[m] for f in self.__dataclass_fields__))

    @classmethod
    def concat(cls, parts: list["Frontier"]) -> "Frontier":
        parts = [p for p in parts if p.pg.size]
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__))


@dataclass
class Inline:
    """Inline bucket values to open at the next level (a whole level's are kept: the columns may be 32-bit)."""
    vs: np.ndarray          # value start (bucket header); the page follows 16 bytes later
    ve: np.ndarray
    owner: np.ndarray       # the leaf page holding the value
    bucket: np.ndarray
    hidden: np.ndarray

    def take(self, m) -> "Inline":
        return Inline(*(getattr(self, f)[m] for f in self.__dataclass_fields__))

    @classmethod
    def concat(cls, parts: list["Inline"]) -> "Inline":
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__))


@dataclass
class Nodes:
    """Valid branch/leaf nodes of one level (real pages and inline pages together)."""
    pgid: np.ndarray        # 0 for inline pages
    owner: np.ndarray
    base: np.ndarray
    end: np.ndarray
    flags: np.ndarray
    count: np.ndarray
    bucket: np.ndarray
    lo_off: np.ndarray
    lo_len: np.ndarray
    hi_off: np.ndarray
    hi_len: np.ndarray
    hidden: np.ndarray
    vs: np.ndarray          # inline: value start; real pages: -1

    def take(self, m) -> "Nodes":
        return Nodes(*(getattr(self, f)[m] for f in self.__dataclass_fields__))

    @classmethod
    def concat(cls, a: "Nodes", b: "Nodes") -> "Nodes":
        return cls(*(np.concatenate([getattr(a, f), getattr(b, f)]) for f in cls.__dataclass_fields__))


def expand(nodes: Nodes):
    """Per element: its node index, its index within the node, and its absolute offset."""
    counts = nodes.count
    total = int(counts.sum())
    node = np.repeat(np.arange(counts.size, dtype=I64), counts)
    starts = np.cumsum(counts) - counts
    local = np.arange(total, dtype=I64) - np.repeat(starts, counts)
    off = nodes.base[node] + PAGE_HEADER_SIZE + local * ELEMENT_SIZE
    return node, local, off


def chunks(nodes: Nodes, limit: int):
    """Element work in slices of about ``limit``, so memory stays flat on huge levels."""
    csum = np.cumsum(nodes.count)
    if not csum.size or csum[-1] <= limit:
        yield nodes
        return
    cuts = np.searchsorted(csum, np.arange(limit, int(csum[-1]), limit))
    bounds = [0] + sorted(set(int(c) + 1 for c in cuts)) + [nodes.pgid.size]
    for a, b in zip(bounds, bounds[1:]):
        if b > a:
            yield nodes.take(slice(a, b))


WINDOW_SHIFT = 16       # the kernel's fault-around maps the 64 KiB around a touched page of a file mapping


def spans(off: np.ndarray, limit: int, windows: int) -> Iterator[tuple[int, int]]:
    """Slices [a, b) of a sequence of file offsets (in file order, or nearly) with at most ``limit`` entries
    and at most ``windows`` 64 KiB windows of the file each (counted as changes of window along the
    sequence): what one step may touch before its pages are released."""
    n = int(off.size)
    if n <= limit:
        w = off >> WINDOW_SHIFT
        if n < 2 or int(np.count_nonzero(w[1:] != w[:-1])) < windows:
            if n:
                yield 0, n
            return
    w = off >> WINDOW_SHIFT
    ordinal = np.zeros(n, I64)
    np.cumsum(w[1:] != w[:-1], out=ordinal[1:])
    a = 0
    while a < n:
        b = min(a + limit, n, int(np.searchsorted(ordinal, ordinal[a] + windows, side="left")))
        yield a, b
        a = b


def rechunk(parts: list[Inline], size: int) -> Iterator[Inline]:
    """The concatenation of ``parts`` in slices of ``size`` entries (the last one shorter), without ever holding
    the whole concatenation: each part is dropped from ``parts`` as it is used up."""
    pending: list[Inline] = []
    have = 0
    while parts:
        p = parts.pop(0)
        while p.vs.size:
            take = min(size - have, int(p.vs.size))
            pending.append(p.take(slice(0, take)) if take < p.vs.size else p)
            p = p.take(slice(take, None)) if take < p.vs.size else p.take(slice(0, 0))
            have += take
            if have == size:
                yield Inline.concat(pending) if len(pending) > 1 else pending[0]
                pending, have = [], 0
    if pending:
        yield Inline.concat(pending) if len(pending) > 1 else pending[0]
