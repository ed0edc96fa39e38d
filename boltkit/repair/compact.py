"""Compaction: copy every bucket, key, value and sequence into a fresh, dense file (like `bbolt compact`).

The source is checked first and refused when damaged (salvage is for that). Being sound, its leaf
pages are copied as runs of elements — whole slices of packed keys and values — and its inline
buckets, which bbolt wrote canonically and which hold all their contents in their value, are copied
verbatim: Python works per batch of leaves (read a tree level at a time, storage/levels.py) and per paged
bucket, never per key.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..check.checker import progress_part
from ..storage.gather import Gather
from ..storage.levels import Leaves, as_i64, leaves_in_key_order, release_windows
from ..storage.pages import Node
from ..errors import CorruptionError, OutputExists
from ..schemas import BUCKET_HEADER_SIZE, BUCKET_LEAF_FLAG, LEAF_ELEMENT, PAGE_HEADER, PageFlag
from ..storage import Database, Item
from ..write import BoltWriter, Run
from ..write.destination import output_error
from .preflight import readable_source, require_sound

_COUNT = PAGE_HEADER.offset_of("count")


@dataclass
class CompactResult:
    src_size: int
    dst_size: int
    buckets: int
    pairs: int
    mode: int = 0o600          # permission bits of the new file: the source's

    @property
    def gain(self) -> float:
        return self.src_size / self.dst_size if self.dst_size else 0.0

    @property
    def saved(self) -> int:
        """Bytes given back (negative when the copy is larger, e.g. a smaller fill percent)."""
        return self.src_size - self.dst_size


def _u64_at(u8: np.ndarray, off: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(u8[off[:, None] + np.arange(8)]).view("<u8").ravel()


def _u16_at(u8: np.ndarray, off: np.ndarray) -> np.ndarray:
    return u8[off].astype(np.int64) | (u8[off + 1].astype(np.int64) << 8)


class _Copier:
    def __init__(self, db: Database, writer: BoltWriter, progress, pages: int = 1):
        self.db = db
        self.writer = writer
        self.progress = progress
        self.pages = max(pages, 1)       # pages the copy visits (the check's count), for progress
        self.seen = 0
        self.u8 = np.frombuffer(db.data, np.uint8)
        self.gather = Gather(db.data, db.file_size)
        self.inline_max = writer.page_size // 4        # largest inline page the destination keeps inline
        self.buckets = 0
        self.pairs = 0
        self.entered = np.zeros(db.pager.limit_pages, bool)     # pages the copy has read, each once

    BATCH = 256   # leaf pages decoded together

    def events(self, bucket, held: list):
        """Runs to copy as they are, and the sub-buckets that need a new root of their own. The leaves read
        are kept mapped in ``held`` a batch behind (the writer keeps up to a page of runs, which read their
        bytes when they are flushed: released at once, those pages were refaulted and stayed mapped); the
        caller releases what is left once the bucket is written."""
        node = bucket.node
        if node.pgid == 0:      # an inline bucket (one too large to stay inline in the destination)
            leaves = Leaves(as_i64([0]), as_i64([node.base]), as_i64([node.end]), as_i64([node.count]))
            owner = as_i64([node.owner])
        else:
            leaves = leaves_in_key_order(self.db.pager, self.gather, node.pgid, self.entered, self.db.source.release)
            owner = leaves.pgid
        for a in range(0, leaves.pgid.size, self.BATCH):
            batch = leaves.take(slice(a, a + self.BATCH))
            yield from self._batch(batch, owner[a:a + self.BATCH])
            if node.pgid:
                held.append(batch)
                if len(held) > 1:
                    self._release(held.pop(0))

    def _release(self, leaves: Leaves) -> None:
        """Drop our mapping of leaves that are copied (their runs written, their sub-buckets done: the caller
        resumed us); the pages stay in the page cache, and a later read (a neighbour's) refaults them. Without
        it the copy's RSS was the whole source file."""
        release_windows(self.db.source.release, leaves.base, leaves.end)

    def _elements(self, leaves: Leaves, owner: np.ndarray):
        counts, bases, ends = leaves.count, leaves.base, leaves.end
        node = np.repeat(np.arange(counts.size), counts)
        local = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        off = bases[node] + PAGE_HEADER.size + local * LEAF_ELEMENT.size
        r = self.gather.records(LEAF_ELEMENT.dtype, off)
        ks = off + r["pos"].astype(np.int64)
        ke = ks + r["ksize"].astype(np.int64)
        ve = ke + r["vsize"].astype(np.int64)
        bad = np.flatnonzero(ve > ends[node])
        if bad.size:
            raise CorruptionError("element extends past the end of its page", pgid=int(owner[node[bad[0]]]),
                                  offset=int(off[bad[0]]))
        return r["flags"].astype(np.int64), ks, ke, ve, node

    def _batch(self, leaves: Leaves, owner: np.ndarray):
        data, u8 = self.db.data, self.u8
        if self.progress is not None:      # leaf pages copied, against the pages the check found reachable
            self.seen += int(leaves.pgid.size)
            self.progress(min(self.seen, self.pages), self.pages)
        flags, ks, ke, ve, node = self._elements(leaves, owner)
        isb = np.flatnonzero(flags & BUCKET_LEAF_FLAG)
        special = isb[:0]
        if isb.size:
            roots = _u64_at(u8, ke[isb])
            page_bytes = ve[isb] - ke[isb] - BUCKET_HEADER_SIZE
            verbatim = (roots == 0) & (page_bytes <= self.inline_max)
            special = isb[~verbatim]
            self.buckets += int(isb.size)
            self.pairs += int(_u16_at(u8, ke[isb[verbatim]] + BUCKET_HEADER_SIZE + _COUNT).sum())
        self.pairs += int(flags.size - isb.size)
        start = 0
        for i in special.tolist() + [flags.size]:
            if i > start:
                yield Run(data, flags[start:i], ks[start:i], ke[start:i], ve[start:i])
            if i < flags.size:
                j = int(node[i])
                holder = Node(int(leaves.pgid[j]), PageFlag.LEAF, int(leaves.count[j]), 0, int(leaves.base[j]),
                              int(leaves.end[j]), int(owner[j]))
                yield Item(data[int(ks[i]):int(ke[i])], int(flags[i]), int(ke[i]), int(ve[i]), holder)
            start = i + 1

    def run(self, start=None) -> None:
        """Copy the contents of ``start`` (default: the root; its sub-buckets, for a whole file) into the
        writer's current bucket."""
        tree, writer = self.db.tree, self.writer
        root = self.db.root() if start is None else start
        held: list = []
        stack = [(root, self.events(root, held), held)]
        while stack:
            bucket, events, held = stack[-1]
            ev = next(events, None)
            if ev is None:
                stack.pop()
                if stack:
                    writer.end_bucket()
                for leaves in held:
                    self._release(leaves)
            elif isinstance(ev, Run):
                writer.put_run(ev)
            else:
                child = tree.child(bucket, ev)
                writer.begin_bucket(ev.key, child.sequence)
                held = []
                stack.append((child, self.events(child, held), held))


def compact(src: str, dst: str, *, page_size: int | None = None, fill_percent: float = 1.0,
            freelist: bool = True, meta: int | None = None,
            progress: Callable[[int, int], None] | None = None, snapshot: bool = False) -> CompactResult:
    """Compact ``src`` into the new file ``dst`` (which must not exist). A source a writer holds is refused
    (InUse) unless ``snapshot``: then a consistent copy of it is compacted. ``progress(done, total)``: the
    check of the source, then the copy, in pages."""
    if os.path.exists(dst):
        raise OutputExists(f"{dst} already exists; refusing to overwrite it")
    with readable_source(src, snapshot) as path:
        return _compact(src, path, dst, page_size, fill_percent, freelist, meta, progress)


def _compact(src, path, dst, page_size, fill_percent, freelist, meta, progress) -> CompactResult:
    report = require_sound(path, meta, name=src,
                           progress=progress_part(progress, 0, 500, 1000))
    with Database(path, meta=meta, refuse_held=True) as db:
        writer = BoltWriter(dst, page_size=page_size or db.page_size, fill_percent=fill_percent, freelist=freelist)
        try:
            # the check was the first half of the work, the copy is the second
            copier = _Copier(db, writer, progress_part(progress, 500, 1000, 1000),
                             report.pages_reachable or db.pager.limit_pages)
            copier.run()
            writer.close()
            # the copy gets the source's permission bits, as `bbolt compact` opens it with the source's mode
            mode = os.stat(src).st_mode & 0o7777
            os.chmod(dst, mode)
        except BaseException as e:
            writer.abort()
            if isinstance(e, OSError):      # a full disk, a file size limit: said of the file being written
                raise output_error(dst, e) from None
            raise
        return CompactResult(db.file_size, os.path.getsize(dst), copier.buckets, copier.pairs, mode)
