"""A streaming B+tree bulk loader for one bucket.

Keys arrive in order; full pages are written as soon as they are full, and the first key of each
written page moves up one level, so memory holds one page per level of each open bucket, never
the bucket's keys. A bucket is inlined exactly when bbolt would (Bucket.inlineable): its root is
a leaf, it has no sub-buckets, and header + elements + data fit in a quarter page.
"""
from __future__ import annotations

from ..schemas import BUCKET_LEAF_FLAG, ELEMENT_SIZE, PAGE_HEADER_SIZE
from .encode import bucket_value, encode_branch, encode_leaf, pages_for


class PageSink:
    """Allocates page ids in order and writes pages at their offsets (a sequential stream)."""

    def __init__(self, f, page_size: int, first_pgid: int = 2):
        self.f = f
        self.page_size = page_size
        self.next_pgid = first_pgid
        f.seek(first_pgid * page_size)

    def allocate(self, size: int) -> int:
        pgid = self.next_pgid
        self.next_pgid += pages_for(size, self.page_size)
        return pgid

    def write(self, pgid: int, data: bytes) -> None:
        # allocation order == write order, so this is an append
        self.f.write(data)


class BucketBuilder:
    def __init__(self, sink: PageSink, fill_percent: float, inline_allowed: bool = True):
        self.sink = sink
        ps = sink.page_size
        self.threshold = max(int(ps * fill_percent), PAGE_HEADER_SIZE + ELEMENT_SIZE)
        self.inline_limit = ps // 4 if inline_allowed else -1
        self.levels: list[list] = [[]]       # level 0: (key, value, flags); above: (first key, child pgid)
        self.level_sizes: list[int] = [PAGE_HEADER_SIZE]
        self.written: list[int] = [0]        # pages written per level
        self.last_written: list[int] = [0]
        self.has_subbucket = False
        self.last_key: bytes | None = None

    def add(self, key: bytes, value: bytes, flags: int = 0) -> None:
        if not key:
            raise ValueError("empty key (bbolt requires a key)")
        if self.last_key is not None and key <= self.last_key:
            raise ValueError(f"keys must be added in strictly increasing order: {key!r} after {self.last_key!r}")
        self.last_key = key
        if flags & BUCKET_LEAF_FLAG:
            self.has_subbucket = True
        self.levels[0].append((key, value, flags))
        self.level_sizes[0] += ELEMENT_SIZE + len(key) + len(value)
        # keep everything while the bucket could still be inlined; after that, write full pages
        if self.has_subbucket or self.level_sizes[0] > max(self.inline_limit, self.threshold):
            self._flush(0, final=False)

    def _entry_size(self, level: int, e) -> int:
        return ELEMENT_SIZE + len(e[0]) + (len(e[1]) if level == 0 else 0)

    def _flush(self, level: int, final: bool) -> None:
        """Write pages of ``level`` from the front of its buffer: all of it when ``final``, else full pages."""
        buf = self.levels[level]
        while buf and (final or self.level_sizes[level] > self.threshold):
            size = PAGE_HEADER_SIZE
            n = 0
            for e in buf:
                es = self._entry_size(level, e)
                if n and size + es > self.threshold:
                    break
                size += es
                n += 1
            if not final and n == len(buf):
                break   # the page is not full yet: wait for more keys
            chunk = buf[:n]
            del buf[:n]
            self.level_sizes[level] -= size - PAGE_HEADER_SIZE
            pgid = self.sink.allocate(size)
            if level == 0:
                self.sink.write(pgid, encode_leaf(chunk, pgid, self.sink.page_size))
            else:
                self.sink.write(pgid, encode_branch(chunk, pgid, self.sink.page_size))
            self.written[level] += 1
            self.last_written[level] = pgid
            self._push(level + 1, (chunk[0][0], pgid))

    def _push(self, level: int, entry) -> None:
        if level == len(self.levels):
            self.levels.append([])
            self.level_sizes.append(PAGE_HEADER_SIZE)
            self.written.append(0)
            self.last_written.append(0)
        self.levels[level].append(entry)
        self.level_sizes[level] += ELEMENT_SIZE + len(entry[0])
        if self.level_sizes[level] > self.threshold:
            self._flush(level, final=False)

    def inlineable(self) -> bool:
        return (self.written[0] == 0 and not self.has_subbucket
                and self.level_sizes[0] <= self.inline_limit)

    def finish(self, sequence: int) -> bytes:
        """Write what is left and return the bucket's value (header, plus the page when inline)."""
        if self.inlineable():
            return bucket_value(0, sequence, encode_leaf(self.levels[0], 0, None))
        level = 0
        while True:
            if self.written[level] == 0 and not self.levels[level]:
                # an empty bucket that cannot be inline (the root bucket): one empty leaf
                pgid = self.sink.allocate(PAGE_HEADER_SIZE)
                self.sink.write(pgid, encode_leaf([], pgid, self.sink.page_size))
                return bucket_value(pgid, sequence)
            self._flush(level, final=True)
            if self.written[level] == 1:
                return bucket_value(self.last_written[level], sequence)
            level += 1
