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


def pages_in(file_size: int, page_size: int) -> int:
    """Pages of the file whose header is in it: a last page cut short counts when its header is whole."""
    return max((file_size - PAGE_HEADER_SIZE) // page_size + 1, 0)


class Pager:
    """Reads pages of one file under one meta (page size and high-water mark)."""

    def __init__(self, data, file_size: int, page_size: int, hwm: int):
        self.data = data
        self.file_size = file_size
        self.page_size = page_size
        self.hwm = hwm
        # pages beyond the end of the file or the hwm do not exist for the tree; a last page cut short still
        # counts (bbolt reads it: a torn `cp` often ends inside its last page), bounded by the file's end
        self.limit_pages = min(hwm, pages_in(file_size, page_size))
        self._by_id: dict[int, int] | None = None

    def header(self, pgid: int) -> tuple[int, int, int, int]:
        """(id, flags, count, overflow) of page ``pgid``, raw."""
        off = pgid * self.page_size
        if pgid < 0 or off + PAGE_HEADER_SIZE > self.file_size:
            raise CorruptionError(f"page {pgid} is beyond the end of the file", pgid=pgid, offset=off)
        return PAGE_HEADER.unpack_from(self.data, off)

    def span_end(self, pgid: int, overflow: int) -> int:
        return (pgid + overflow + 1) * self.page_size

    def _tree_page_offset(self, pgid: int) -> int:
        """Where a tree page a pointer names starts; a meta page or one past the high-water mark is no tree page,
        whatever a reader makes of its header."""
        off = pgid * self.page_size
        if pgid < 2:
            raise CorruptionError(f"tree points at meta page {pgid}", pgid=pgid, offset=off)
        if pgid >= self.hwm:
            raise CorruptionError(f"page {pgid} is beyond the high-water mark {self.hwm}", pgid=pgid, offset=off)
        return off

    def node(self, pgid: int) -> Node:
        """A tree page, validated: inside [2, hwm), span inside hwm and file, self id, branch or leaf."""
        ps = self.page_size
        off = self._tree_page_offset(pgid)
        pid, flags, count, overflow = self.header(pgid)
        if pid != pgid:
            raise CorruptionError(f"page header says id {pid}, expected {pgid}", pgid=pgid, offset=off)
        if flags not in (PageFlag.BRANCH, PageFlag.LEAF):
            raise CorruptionError(f"invalid type {PageFlag.name_of(flags)} for a tree page", pgid=pgid, offset=off + 8)
        if pgid + overflow >= self.limit_pages:
            raise CorruptionError(
                f"overflow {overflow} runs past the " +
                ("high-water mark" if pgid + overflow >= self.hwm else "end of the file"), pgid=pgid, offset=off + 12)
        node = Node(pgid, flags, count, overflow, off, min(off + (overflow + 1) * ps, self.file_size), pgid)
        self._check_count(node)
        return node

    # -- lenient reads: what a tolerant reader recovers from a page whose header lies ---------------

    def node_lenient(self, pgid: int) -> tuple[Node, list[CorruptionError]]:
        """Like node(), but a header that lies is read past when the elements tell the truth: a page that
        identifies as another page is looked for where it moved (swapped pages), an overflow that runs past
        the file is cut to the file, an invalid type is told from the element chain, and a count that does
        not fit is recovered from the element table (see leaf_elements_lenient). Raises only when no page
        can be had (beyond the high-water mark or the file, a meta page)."""
        ps = self.page_size
        off = self._tree_page_offset(pgid)
        problems: list[CorruptionError] = []
        at = pgid
        pid, flags, count, overflow = self.header(pgid)
        if pid != pgid:
            moved = self.located(pgid)
            if moved is not None:
                problems.append(CorruptionError(f"page header says id {pid}, expected {pgid}; page {pgid} was "
                                                f"found at page {moved}'s place (swapped pages)", pgid=pgid,
                                                offset=off, whole=True))
                at = moved
                pid, flags, count, overflow = self.header(at)
            else:
                problems.append(CorruptionError(f"page header says id {pid}, expected {pgid}; read as page {pgid}",
                                                pgid=pgid, offset=off))
        base = at * ps
        limit_end = min(self.limit_pages * ps, self.file_size)
        end = base + (overflow + 1) * ps
        if at + overflow >= self.limit_pages:
            problems.append(CorruptionError(
                f"overflow {overflow} runs past the " + ("high-water mark" if at + overflow >= self.hwm
                                                         else "end of the file") + "; read to the end of the file",
                pgid=pgid, offset=base + 12))
            end = limit_end
            overflow = max(0, -(-(end - base) // ps) - 1)
        end = min(end, self.file_size)
        if flags not in (PageFlag.BRANCH, PageFlag.LEAF):
            guess = self._guess_type(base, end)
            problems.append(CorruptionError(f"invalid type {PageFlag.name_of(flags)} for a tree page; its elements "
                                            f"read as a {PageFlag.name_of(guess)} page", pgid=pgid, offset=base + 8))
            flags = guess
        node = Node(pgid, flags, count, overflow, base, end, pgid)
        return node, problems

    def located(self, pgid: int) -> int | None:
        """Where the page whose header says ``pgid`` sits, when that is not its own place (swapped pages)."""
        if self._by_id is None:
            n = max(self.file_size // self.page_size, 0)
            self._by_id = {}
            if n:
                ids = np.ndarray((n,), dtype="<u8", buffer=self.data, offset=0, strides=(self.page_size,))
                flags = np.ndarray((n,), dtype="<u2", buffer=self.data, offset=8, strides=(self.page_size,))
                where = np.flatnonzero((ids != np.arange(n, dtype=np.uint64)) & (ids < n) &
                                       ((flags == PageFlag.BRANCH) | (flags == PageFlag.LEAF)))
                for w in where.tolist():
                    self._by_id.setdefault(int(ids[w]), w)
        w = self._by_id.get(pgid)
        return w if w is not None and w >= 2 else None

    def _guess_type(self, base: int, end: int) -> int:
        scores = {}
        for flags in (PageFlag.LEAF, PageFlag.BRANCH):
            n = self._chain_count(base, end, flags == PageFlag.LEAF, 0xFFFF)
            scores[flags] = n[1]
        return max(scores, key=lambda f: (scores[f], f == PageFlag.LEAF))

    def _chain_count(self, base: int, end: int, leaf: bool, count: int) -> tuple[int, int]:
        """(the element count, how many elements chain up) that best explains the element table: bbolt writes
        element i's key (and value) right after element i-1's, the first right after the table, so a count
        that lies is recovered from element 0's position. The count whose table's elements chain from the
        table's end the furthest wins; then the one with the most chained elements anywhere (elements read
        from stale bytes past a lying count can chain among themselves, but never from the table's end)."""
        first = base + PAGE_HEADER_SIZE
        fit = max((end - first) // ELEMENT_SIZE, 0)
        cands = {min(count, fit)}
        if fit:
            pos0 = int.from_bytes(self.data[first + (4 if leaf else 0):first + (8 if leaf else 4)], "little")
            if pos0 % ELEMENT_SIZE == 0 and 1 <= pos0 // ELEMENT_SIZE <= fit:
                cands.add(pos0 // ELEMENT_SIZE)
        best, score = (min(count, fit), -1), (-1, -1)
        for n in sorted(cands, key=lambda c: c != min(count, fit)):
            good = prefix = 0
            expect = first + n * ELEMENT_SIZE
            table_end = expect
            for i, (_, ks, ke, ve) in enumerate(self._raw_elements(first, n, leaf)):
                if ks == expect and ks >= table_end and ke > ks and ve <= end:
                    good += 1
                    prefix += 1 if prefix == i else 0
                expect = ve
            if (prefix, good) > score:
                best, score = (n, good), (prefix, good)
        return best

    def _raw_elements(self, first: int, n: int, leaf: bool):
        """(flags, key_start, key_end, value_end) of ``n`` element records, unchecked (branch: value_end is
        the key end and flags the child id)."""
        if n == 0:
            return []
        if leaf:
            arr = np.frombuffer(self.data, dtype=LEAF_ELEMENT.dtype, count=n, offset=first)
            e = first + np.arange(n, dtype=np.int64) * ELEMENT_SIZE
            ks = e + arr["pos"]
            ke = ks + arr["ksize"]
            return list(zip(arr["flags"].tolist(), ks.tolist(), ke.tolist(), (ke + arr["vsize"]).tolist()))
        arr = np.frombuffer(self.data, dtype=BRANCH_ELEMENT.dtype, count=n, offset=first)
        offs = first + np.arange(n, dtype=np.int64) * ELEMENT_SIZE
        ks = offs + arr["pos"]
        ke = ks + arr["ksize"]
        return list(zip(arr["pgid"].tolist(), ks.tolist(), ke.tolist(), ke.tolist()))

    def _lenient(self, node: Node, leaf: bool) -> tuple[list, list[CorruptionError]]:
        first = node.base + PAGE_HEADER_SIZE
        n, _ = self._chain_count(node.base, node.end, leaf, node.count)
        problems: list[CorruptionError] = []
        if n != node.count:
            problems.append(CorruptionError(f"page claims {node.count} elements, its element table holds {n}",
                                            pgid=node.owner, offset=node.base + 10))
        table_end = first + n * ELEMENT_SIZE
        out: list = []
        bad: list = []
        raw = self._raw_elements(first, n, leaf)
        expect = table_end
        for i, (flags, ks, ke, ve) in enumerate(raw):
            # well-formed: inside the page, after the table, a key, and chained to its neighbours as bbolt packs
            # them (its data starts where the last good element's ends, or ends where the next one's starts):
            # a table read from garbage (a lying count or overflow) does not chain
            chained = ks == expect or (i + 1 < n and ve == raw[i + 1][1]) or (i + 1 == n and ve <= node.end
                                                                              and out and ks >= expect)
            if ks < table_end or ve > node.end or ke <= ks or not chained:      # bbolt writes no empty key
                bad.append(i)
                continue
            expect = ve
            out.append((flags, ks, ke, ve) if leaf else (ks, ke, flags))
        if bad:
            what = "inline bucket element" if node.inline else "element"
            problems.append(CorruptionError(
                f"{what}{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad[:8]))}{' ...' if len(bad) > 8 else ''}"
                f": key/value outside its page; {len(out)} of {n} element(s) kept", pgid=node.owner,
                offset=first + bad[0] * ELEMENT_SIZE))
        return out, problems

    def leaf_elements_lenient(self, node: Node) -> tuple[list, list[CorruptionError]]:
        """Every element bounded by its page, with what was wrong; the fast path when nothing is."""
        try:
            self._check_count(node)
            elems = self.leaf_elements(node)
            if all(ke > ks for _, ks, ke, _ in elems) and self._table_ends_at_first_key(node, elems, 1):
                return elems, []
        except CorruptionError:
            pass
        return self._lenient(node, True)

    def branch_elements_lenient(self, node: Node) -> tuple[list, list[CorruptionError]]:
        try:
            self._check_count(node)
            elems = self.branch_elements(node)
            if self._table_ends_at_first_key(node, elems, 0):
                return elems, []
        except CorruptionError:
            pass
        return self._lenient(node, False)

    @staticmethod
    def _table_ends_at_first_key(node: Node, elems: list, at: int) -> bool:
        """bbolt writes the first key right after the element table: when it starts elsewhere, the count lies
        (a count too low reads in bounds, but leaves the elements past it unread)."""
        return not elems or elems[0][at] == node.base + PAGE_HEADER_SIZE + node.count * ELEMENT_SIZE

    def inline_node_lenient(self, start: int, end: int, owner: int) -> tuple[Node, list[CorruptionError]]:
        if end - start < PAGE_HEADER_SIZE:
            raise CorruptionError(f"inline bucket value too short for a page header ({end - start} bytes)",
                                  pgid=owner, offset=start)
        pid, flags, count, overflow = PAGE_HEADER.unpack_from(self.data, start)
        problems = []
        if flags != PageFlag.LEAF:
            problems.append(CorruptionError(f"inline bucket page has type {PageFlag.name_of(flags)}, read as a leaf",
                                            pgid=owner, offset=start + 8))
        return Node(0, PageFlag.LEAF, count, 0, start, end, owner), problems

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
        offs = first + np.arange(n, dtype=np.int64) * ELEMENT_SIZE
        ks = offs + arr["pos"]
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
        offs = first + np.arange(n, dtype=np.int64) * ELEMENT_SIZE
        ks = offs + arr["pos"]
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
