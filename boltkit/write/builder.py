"""A streaming B+tree bulk loader for one bucket.

Keys arrive in order; full pages are written as soon as they are full, and the first key of each
written page moves up one level, so memory holds one page per level of each open bucket, never
the bucket's keys. A bucket is inlined exactly when bbolt would (Bucket.inlineable): its root is
a leaf, it has no sub-buckets, and header + elements + data fit in a quarter page.
"""
from __future__ import annotations

import numpy as np

from ..errors import WriteError
from ..schemas import BUCKET_LEAF_FLAG, ELEMENT_SIZE, PAGE_HEADER_SIZE

from .encode import (LARGE, Run, bucket_value, encode_alone, encode_branch, encode_leaf, encode_leaf_pairs,
                     encode_leaves, pages_for)

BATCH_PAGES = 32         # pages' worth of single puts gathered before they are cut into pages
PACK_LIMIT = 16 << 20     # bytes of runs over different buffers copied into one before a flush (huge values: not)


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

    def allocate_many(self, sizes: np.ndarray) -> list[int]:
        """``allocate`` for each size in turn, in one step."""
        pages = -(-sizes // self.page_size)
        ends = self.next_pgid + np.cumsum(pages)
        pgids = (ends - pages).tolist()
        self.next_pgid = int(ends[-1]) if ends.size else self.next_pgid
        return pgids

    def write(self, pgid: int, data) -> None:
        """``data``: the page's bytes, or a list of buffers to write one after the other (a huge value is
        written from where it lies, see encode.encode_leaves). Allocation order == write order: an append."""
        if isinstance(data, list):
            for part in data:
                self.f.write(part)
        else:
            self.f.write(data)


class BucketBuilder:
    def __init__(self, sink: PageSink, fill_percent: float, inline_allowed: bool = True):
        self.sink = sink
        ps = sink.page_size
        self.threshold = max(int(ps * fill_percent), PAGE_HEADER_SIZE + ELEMENT_SIZE)
        self.inline_limit = ps // 4 if inline_allowed else -1
        # single puts are written BATCH_PAGES pages at a time: the cuts and the encoding are array work whose
        # fixed cost, paid per page, was most of a prune's write (400k inline buckets into 28k pages)
        self.batch = self.threshold * BATCH_PAGES
        self.runs: list[Run] = []            # level 0: leaf elements not yet written
        self.levels: list[list] = [[]]       # level 0 unused; above: (first key, child pgid)
        self.level_sizes: list[int] = [PAGE_HEADER_SIZE]
        self.written: list[int] = [0]        # pages written per level
        self.last_written: list[int] = [0]
        self.has_subbucket = False
        self.last_key: bytes | None = None
        # single puts wait here as plain tuples and become one run when the runs are needed: four small
        # arrays per pair would cost more than everything else a put does
        self.pending: list[tuple[bytes, bytes, int]] = []

    def add(self, key: bytes, value: bytes, flags: int = 0) -> None:
        if not key:
            raise WriteError("empty key (bbolt requires a key)")
        if self.last_key is not None and key <= self.last_key:
            raise WriteError(f"keys must be added in strictly increasing order: {key!r} after {self.last_key!r}")
        self.last_key = key
        size = ELEMENT_SIZE + len(key) + len(value)
        if size >= LARGE and size > self.threshold - PAGE_HEADER_SIZE and not flags & BUCKET_LEAF_FLAG:
            self._alone(key, value, flags)
            return
        self.pending.append((key, value, flags))
        self.level_sizes[0] += size
        if flags & BUCKET_LEAF_FLAG:
            self.has_subbucket = True
        size = self.level_sizes[0]
        if size > self.batch and (self.has_subbucket or size > self.inline_limit):    # pages to write
            self._settle()
            self._flush_leaves(final=False)

    def _alone(self, key: bytes, value, flags: int) -> None:
        """A pair too big to share a page: every greedy cut puts it on a page of its own, so the elements
        before it are written now (their last page is as full as it will get) and its page is written
        straight from ``value`` (a view of the source map), never joined into a buffer."""
        self._settle()
        self._flush_leaves(final=True)
        pgid = self.sink.allocate(PAGE_HEADER_SIZE + ELEMENT_SIZE + len(key) + len(value))
        self.sink.write(pgid, encode_alone(key, value, flags, pgid, self.sink.page_size))
        self.written[0] += 1
        self.last_written[0] = pgid
        self._push(1, (bytes(key), pgid))

    def _settle(self) -> None:
        """The pending puts, and the unwritten rest before them, as one run over one buffer (the rest is less
        than a page: copying it keeps every flush on the batch path)."""
        if not self.pending:
            return
        keys = [k for k, _, _ in self.pending]
        values = [v for _, v, _ in self.pending]
        flags = np.array([f for _, _, f in self.pending], np.int64)
        klen = np.array([len(k) for k in keys], np.int64)
        vlen = np.array([len(v) for v in values], np.int64)
        rest = Run.concat(self.runs) if len(self.runs) > 1 and all(r.buf is self.runs[0].buf for r in self.runs) \
            else self.runs[0] if len(self.runs) == 1 else None
        if self.runs and rest is None:
            self.runs.append(_run(b"".join(k + v for k, v in zip(keys, values)), flags, klen, vlen))
        else:
            parts = ([rest.data()] if rest is not None else []) + [b for kv in zip(keys, values) for b in kv]
            if rest is not None:
                flags = np.concatenate([rest.flags, flags])
                klen = np.concatenate([rest.ke - rest.ks, klen])
                vlen = np.concatenate([rest.ve - rest.ke, vlen])
            self.runs = [_run(b"".join(parts), flags, klen, vlen)]
        self.pending = []

    def add_run(self, run: Run) -> None:
        """Elements already in strictly increasing key order (a run copied from a sound page)."""
        if not len(run):
            return
        self._settle()
        first = run.key(0)
        if not first or (self.last_key is not None and first <= self.last_key):
            raise WriteError(f"run starts with {first!r}, not after {self.last_key!r}")
        self._append(run, run.key(len(run) - 1))

    def _append(self, run: Run, last_key: bytes) -> None:
        self.last_key = last_key
        if (run.flags & BUCKET_LEAF_FLAG).any():
            self.has_subbucket = True
        self.runs.append(run)
        self.level_sizes[0] += int(run.sizes().sum())
        # keep everything while the bucket could still be inlined; after that, write full pages
        if self.has_subbucket or self.level_sizes[0] > max(self.inline_limit, self.threshold):
            self._flush_leaves(final=False)

    def _flush_leaves(self, final: bool) -> None:
        if self.level_sizes[0] <= self.threshold and not final:
            return
        if not self.runs:
            return
        if len(self.runs) > 1 and any(r.buf is not self.runs[0].buf for r in self.runs):
            if sum(int((r.ve - r.ks).sum()) for r in self.runs) > PACK_LIMIT:
                return self._flush_leaves_one_by_one(final)
            # a put among copied runs (a sub-bucket's value between runs of its parent's leaves): copying a few
            # pages' bytes into one buffer keeps the flush on the batch path, instead of a page at a time
            self.runs = [Run.packed(self.runs)]
        run = Run.concat(self.runs) if len(self.runs) > 1 else self.runs[0]
        cum = np.concatenate([[0], np.cumsum(run.sizes())])
        n_el = len(run)
        cuts = greedy_cuts(cum, self.threshold - PAGE_HEADER_SIZE, final)
        if not cuts:
            return
        at = np.array(cuts, np.int64)
        pgids = self.sink.allocate_many(PAGE_HEADER_SIZE + cum[at[:, 1]] - cum[at[:, 0]])
        self.sink.write(pgids[0], encode_leaves(run, cuts, pgids, self.sink.page_size))
        used = int(cum[cuts[-1][1]])
        self.level_sizes[0] -= used
        rest = run.slice(cuts[-1][1], n_el)
        self.runs = [rest] if len(rest) else []
        self.written[0] += len(cuts)
        self.last_written[0] = pgids[-1]
        buf, ks, ke = run.buf, run.ks[at[:, 0]].tolist(), run.ke[at[:, 0]].tolist()
        self._push_many(1, [(bytes(buf[k:e]), pgid) for k, e, pgid in zip(ks, ke, pgids)])

    def _flush_leaves_one_by_one(self, final: bool) -> None:
        """Runs over different buffers (single puts mixed with copied runs): one page at a time."""
        while self.runs and (final or self.level_sizes[0] > self.threshold):
            cum = np.cumsum(np.concatenate([r.sizes() for r in self.runs]))
            n = max(int(np.searchsorted(cum, self.threshold - PAGE_HEADER_SIZE, side="right")), 1)
            if not final and n == len(cum):
                break
            page: list[Run] = []
            left = n
            while left:
                r = self.runs[0]
                if len(r) <= left:
                    page.append(self.runs.pop(0))
                    left -= len(r)
                else:
                    page.append(r.slice(0, left))
                    self.runs[0] = r.slice(left, len(r))
                    left = 0
            size = PAGE_HEADER_SIZE + int(cum[n - 1])
            self.level_sizes[0] -= int(cum[n - 1])
            pgid = self.sink.allocate(size)
            self.sink.write(pgid, encode_leaf(page, pgid, self.sink.page_size))
            self.written[0] += 1
            self.last_written[0] = pgid
            self._push(1, (page[0].key(0), pgid))

    def _flush_branches(self, level: int, final: bool) -> None:
        buf = self.levels[level]
        while buf and (final or self.level_sizes[level] > self.threshold):
            size = PAGE_HEADER_SIZE
            n = 0
            for e in buf:
                es = ELEMENT_SIZE + len(e[0])
                if n and size + es > self.threshold:
                    break
                size += es
                n += 1
            if not final and n == len(buf):
                break
            chunk = buf[:n]
            del buf[:n]
            self.level_sizes[level] -= size - PAGE_HEADER_SIZE
            pgid = self.sink.allocate(size)
            self.sink.write(pgid, encode_branch(chunk, pgid, self.sink.page_size))
            self.written[level] += 1
            self.last_written[level] = pgid
            self._push(level + 1, (chunk[0][0], pgid))

    def _push(self, level: int, entry) -> None:
        self._push_many(level, [entry])

    def _push_many(self, level: int, entries: list) -> None:
        """Entries for the branch level ``level``, in key order. Pushing them all and then writing the full pages
        gives the pages pushing them one by one would (each page is the longest run of entries from the front
        that fits, and is only cut while what is waiting does not fit in one page)."""
        if level == len(self.levels):
            self.levels.append([])
            self.level_sizes.append(PAGE_HEADER_SIZE)
            self.written.append(0)
            self.last_written.append(0)
        self.levels[level].extend(entries)
        self.level_sizes[level] += ELEMENT_SIZE * len(entries) + sum(len(e[0]) for e in entries)
        if self.level_sizes[level] > self.threshold:
            self._flush_branches(level, final=False)

    def inlineable(self) -> bool:
        return (self.written[0] == 0 and not self.has_subbucket
                and self.level_sizes[0] <= self.inline_limit)

    def finish(self, sequence: int) -> bytes:
        """Write what is left and return the bucket's value (header, plus the page when inline)."""
        if self.inlineable() and not self.runs:
            return bucket_value(0, sequence, encode_leaf_pairs(self.pending, 0, None))
        self._settle()
        if self.inlineable():
            return bucket_value(0, sequence, encode_leaf(self.runs, 0, None))
        if self.written[0] == 0 and not self.runs:
            # an empty bucket that cannot be inline (the root bucket): one empty leaf
            pgid = self.sink.allocate(PAGE_HEADER_SIZE)
            self.sink.write(pgid, encode_leaf([], pgid, self.sink.page_size))
            return bucket_value(pgid, sequence)
        self._flush_leaves(final=True)
        level = 0
        while self.written[level] != 1:
            level += 1
            self._flush_branches(level, final=True)
        return bucket_value(self.last_written[level], sequence)


def greedy_cuts(cum: np.ndarray, room: int, final: bool) -> list[tuple[int, int]]:
    """Pages of elements, greedily: each takes as many elements from where the last ended as fit in ``room``
    bytes (at least one); ``cum`` is the running total of the elements' sizes, from 0. Unless ``final``, the
    elements that would only fill a last page partly are left out (more may come). Where each page would end
    is found for every element at once (one searchsorted), and the pages are then followed from element 0: a
    list step a page, where a searchsorted a page cost more than the page's encoding."""
    n = cum.size - 1
    if n <= 0:
        return []
    nxt = np.maximum(np.searchsorted(cum, cum[:-1] + room, side="right") - 1, np.arange(1, n + 1)).tolist()
    cuts = []
    a = 0
    while a < n:
        b = nxt[a]
        if b >= n and not final:
            break   # the last page is not full yet: wait for more keys
        b = min(b, n)
        cuts.append((a, b))
        a = b
    return cuts


def _run(buf: bytes, flags: np.ndarray, klen: np.ndarray, vlen: np.ndarray) -> Run:
    """Elements packed key, value, key, value, ... in ``buf``."""
    ks = np.concatenate([[0], np.cumsum(klen + vlen)[:-1]]).astype(np.int64)
    return Run(buf, flags, ks, ks + klen, ks + klen + vlen)
