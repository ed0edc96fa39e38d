"""Page views: headers, overflow spans, and element tables, every read bounds-checked.

A ``Node`` is a branch or leaf page as the tree sees it: a real page (with its overflow span) or
the fake leaf page inside an inline bucket value. Element tables come back as absolute byte
offsets into the file, so keys and values are sliced straight from the map without copies of
whole pages. Nothing here trusts a count, a position or a size before checking it against the
span it must lie in.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CorruptionError
from ..schemas import (BRANCH_ELEMENT, ELEMENT_SIZE, LEAF_ELEMENT, PAGE_HEADER, PAGE_HEADER_SIZE,
                       PageFlag)

# Below this many elements a struct loop beats numpy's per-call overhead; the result is the same.
_NUMPY_MIN_COUNT = 24


@dataclass(slots=True)
class Node:
    pgid: int        # 0 for an inline page
    flags: int
    count: int
    overflow: int
    base: int        # absolute offset of the page header
    end: int         # absolute end of the bytes this node may use (span or inline value)
    owner: int       # page that physically holds it (the pgid, or the leaf holding the inline bucket)

    @property
    def is_leaf(self) -> bool:
        return self.flags == PageFlag.LEAF

    @property
    def is_branch(self) -> bool:
        return self.flags == PageFlag.BRANCH

    @property
    def inline(self) -> bool:
        return self.pgid == 0


class Pager:
    """Reads pages of one file under one meta (page size and high-water mark)."""

    def __init__(self, data, file_size: int, page_size: int, hwm: int):
        self.data = data
        self.file_size = file_size
        self.page_size = page_size
        self.hwm = hwm
        # pages beyond the end of the file or the hwm do not exist for the tree
        self.limit_pages = min(hwm, file_size // page_size)

    def header(self, pgid: int) -> tuple[int, int, int, int]:
        """(id, flags, count, overflow) of page ``pgid``, raw."""
        off = pgid * self.page_size
        if pgid < 0 or off + PAGE_HEADER_SIZE > self.file_size:
            raise CorruptionError(f"page {pgid} is beyond the end of the file", pgid=pgid, offset=off)
        return PAGE_HEADER.unpack_from(self.data, off)

    def span_end(self, pgid: int, overflow: int) -> int:
        return (pgid + overflow + 1) * self.page_size

    def node(self, pgid: int) -> Node:
        """A tree page, validated: inside [2, hwm), span inside hwm and file, self id, branch or leaf."""
        ps = self.page_size
        off = pgid * ps
        if pgid < 2:
            raise CorruptionError(f"tree points at meta page {pgid}", pgid=pgid, offset=off)
        if pgid >= self.hwm:
            raise CorruptionError(f"page {pgid} is beyond the high-water mark {self.hwm}", pgid=pgid, offset=off)
        pid, flags, count, overflow = self.header(pgid)
        if pid != pgid:
            raise CorruptionError(f"page header says id {pid}, expected {pgid}", pgid=pgid, offset=off)
        if flags not in (PageFlag.BRANCH, PageFlag.LEAF):
            raise CorruptionError(f"invalid type {PageFlag.name_of(flags)} for a tree page", pgid=pgid, offset=off + 8)
        if pgid + overflow >= self.limit_pages:
            raise CorruptionError(
                f"overflow {overflow} runs past the " +
                ("high-water mark" if pgid + overflow >= self.hwm else "end of the file"), pgid=pgid, offset=off + 12)
        node = Node(pgid, flags, count, overflow, off, off + (overflow + 1) * ps, pgid)
        self._check_count(node)
        return node

    def inline_node(self, start: int, end: int, owner: int) -> Node:
        """The fake leaf page of an inline bucket whose page bytes are file[start:end]."""
        if end - start < PAGE_HEADER_SIZE:
            raise CorruptionError(f"inline bucket value too short for a page header ({end - start} bytes)",
                                  pgid=owner, offset=start)
        pid, flags, count, overflow = PAGE_HEADER.unpack_from(self.data, start)
        if flags != PageFlag.LEAF:
            raise CorruptionError(f"inline bucket page has type {PageFlag.name_of(flags)}, expected leaf",
                                  pgid=owner, offset=start + 8)
        node = Node(0, flags, count, overflow, start, end, owner)
        self._check_count(node)
        return node

    def _check_count(self, node: Node) -> None:
        if node.base + PAGE_HEADER_SIZE + node.count * ELEMENT_SIZE > node.end:
            raise CorruptionError(f"{node.count} elements do not fit in the page",
                                  pgid=node.owner, offset=node.base + 10)

    # -- element tables -------------------------------------------------------------------------

    def leaf_elements(self, node: Node) -> list[tuple[int, int, int, int]]:
        """[(flags, key_start, key_end, value_end)] with absolute offsets; the value starts at key_end."""
        n = node.count
        first = node.base + PAGE_HEADER_SIZE
        if n < _NUMPY_MIN_COUNT:
            out = []
            unpack = LEAF_ELEMENT.struct.unpack_from
            for i in range(n):
                e = first + i * ELEMENT_SIZE
                flags, pos, ksize, vsize = unpack(self.data, e)
                ks = e + pos
                vend = ks + ksize + vsize
                if vend > node.end:
                    raise self._out_of_bounds(node, i, e)
                out.append((flags, ks, ks + ksize, vend))
            return out
        return list(zip(*(a.tolist() for a in self.leaf_arrays(node))))

    def leaf_arrays(self, node: Node) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The leaf element table as numpy arrays (flags, key_start, key_end, value_end), bounds-checked."""
        n = node.count
        first = node.base + PAGE_HEADER_SIZE
        arr = np.frombuffer(self.data, dtype=LEAF_ELEMENT.dtype, count=n, offset=first)
        e = first + np.arange(n, dtype=np.int64) * ELEMENT_SIZE
        ks = e + arr["pos"]
        ke = ks + arr["ksize"]
        ve = ke + arr["vsize"]
        bad = np.flatnonzero(ve > node.end)
        if bad.size:
            i = int(bad[0])
            raise self._out_of_bounds(node, i, first + i * ELEMENT_SIZE)
        return arr["flags"].astype(np.int64), ks, ke, ve

    def branch_elements(self, node: Node) -> list[tuple[int, int, int]]:
        """[(key_start, key_end, child_pgid)] with absolute offsets."""
        n = node.count
        first = node.base + PAGE_HEADER_SIZE
        if n < _NUMPY_MIN_COUNT:
            out = []
            unpack = BRANCH_ELEMENT.struct.unpack_from
            for i in range(n):
                e = first + i * ELEMENT_SIZE
                pos, ksize, child = unpack(self.data, e)
                ks = e + pos
                if ks + ksize > node.end:
                    raise self._out_of_bounds(node, i, e)
                out.append((ks, ks + ksize, child))
            return out
        arr = np.frombuffer(self.data, dtype=BRANCH_ELEMENT.dtype, count=n, offset=first)
        e = first + np.arange(n, dtype=np.int64) * ELEMENT_SIZE
        ks = e + arr["pos"]
        ke = ks + arr["ksize"]
        bad = np.flatnonzero(ke > node.end)
        if bad.size:
            i = int(bad[0])
            raise self._out_of_bounds(node, i, first + i * ELEMENT_SIZE)
        return list(zip(ks.tolist(), ke.tolist(), arr["pgid"].tolist()))

    @staticmethod
    def _out_of_bounds(node: Node, i: int, elem_off: int) -> CorruptionError:
        what = "inline bucket element" if node.inline else "element"
        return CorruptionError(f"{what} {i}: key/value extends past the end of its page", pgid=node.owner,
                               offset=elem_off)
