"""What every page of the file is: meta, freelist, branch/leaf of which bucket, overflow, free, leaked.

"Pending" has no on-disk flag (bbolt stores free ∪ pending); we call a listed page *pending* when
the previous meta's tree still uses it, which is exactly what bbolt's pending list means: freed by
the last transaction, still needed by readers of the one before.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CorruptionError
from ..schemas import PAGE_HEADER, PAGE_HEADER_SIZE, PageFlag
from .database import Database
from .meta import Meta
from .pages import Node, pages_in
from .tree import Bucket, Tree


@dataclass
class PageInfo:
    pgid: int
    kind: str                 # meta, freelist, branch, leaf, overflow, free, pending, leaked, beyond-eof
    items: int | None = None
    overflow: int = 0
    bucket: tuple[bytes, ...] | None = None
    of: int | None = None     # for overflow pages: the page whose span they continue
    run: int = 1              # consecutive pages this row stands for: never-written (all-zero) leaked pages,
    #                           pages past the end of the file, one page's overflow span; a 10 GiB sparse file
    #                           is a few rows, not millions


def written_headers(db: Database, lo: int, hi: int) -> tuple[np.ndarray, ...]:
    """(pgid, id, flags, count, overflow) of the pages in [lo, hi) that hold a non-zero header, in bulk.

    Only the file's data extents are read (the holes of a sparse file are zeros), a chunk of pages at a
    time, and each chunk's pages are released from memory after it: a scan of a huge file stays small."""
    ps = db.page_size
    u8 = db.source.array
    parts = []
    hi = min(hi, pages_in(db.file_size, ps))      # a last page cut short counts when its header is whole
    step = 1 << 16
    for start, end in db.source.data_extents():
        a, b = max(lo, start // ps), min(hi, -(-end // ps))
        for c in range(a, b, step):
            pg = np.arange(c, min(c + step, b), dtype=np.int64)
            raw = u8[(pg * ps)[:, None] + np.arange(PAGE_HEADER_SIZE)]
            db.source.release(int(pg[0]) * ps, (int(pg[-1]) + 1) * ps)
            hdr = raw.view(PAGE_HEADER.dtype).reshape(-1)
            nz = raw.any(axis=1)
            parts.append((pg[nz], hdr["id"][nz].astype(np.uint64), hdr["flags"][nz].astype(np.int64),
                          hdr["count"][nz].astype(np.int64), hdr["overflow"][nz].astype(np.int64)))
    if not parts:
        z = np.zeros(0, np.int64)
        return z, z.astype(np.uint64), z, z, z
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(5))


def reachable_pages(db: Database, meta: Meta, errors: list | None = None) -> dict[int, tuple[Node, Bucket]]:
    """Every tree page reachable from ``meta``'s root, with the bucket that owns it."""
    from .pages import Pager
    pager = Pager(db.data, db.file_size, db.page_size, meta.pgid)
    tree = Tree(pager)
    owners: dict[int, tuple[Node, Bucket]] = {}
    errs = errors if errors is not None else []
    try:
        root = tree.bucket_at((), meta.root, meta.sequence)
    except CorruptionError as e:
        errs.append(e)
        return owners

    def on_page(bucket, node, depth, elems):
        if not node.inline:
            owners[node.pgid] = (node, bucket)

    for _ in tree.walk(root, on_damage=errs.append, on_page=on_page):
        pass
    return owners


def page_map(db: Database) -> tuple[list[PageInfo], list]:
    """One row per page below the high-water mark, in page order; runs of never-written pages, of pages past
    the end of the file, and the overflow span of one page (a 400 MB value is one row, not 100k) are one row
    each (``run``)."""
    meta = db.meta
    errors: list = []
    limit = db.file_size // db.page_size
    known: dict[int, PageInfo] = {}
    end = meta.pgid
    # pages some row already stands for; only those inside the file are marked (a high-water mark can lie by
    # terabytes), past it a page is taken when a row starts there
    taken = np.zeros(max(min(end, limit), 0), bool)

    def put(info: PageInfo) -> None:
        known[info.pgid] = info
        taken[info.pgid:info.pgid + info.run] = True

    def span(first: int, last: int, **kw) -> None:
        """The overflow pages first..last (clipped at the high-water mark) as one row."""
        last = min(last, end - 1)
        if first <= last:
            put(PageInfo(first, "overflow", run=last - first + 1, **kw))

    for i in (0, 1):
        if i < end:
            put(PageInfo(i, "meta"))
    free = np.zeros(0, dtype=np.uint64)
    try:
        fl = db.freelist()
    except CorruptionError as e:
        errors.append(e)
        fl = None
    if fl is not None:
        free = fl.ids
        if fl.pgid is not None and fl.pgid < end:
            put(PageInfo(fl.pgid, "freelist", items=len(fl.ids), overflow=fl.overflow))
            span(fl.pgid + 1, fl.pgid + fl.overflow, of=fl.pgid)
    for pgid, (node, bucket) in reachable_pages(db, meta, errors).items():
        if pgid >= end:
            continue
        put(PageInfo(pgid, PageFlag.name_of(node.flags), node.count, node.overflow, bucket.path))
        span(pgid + 1, pgid + node.overflow, bucket=bucket.path, of=pgid)
    other = None if meta.index is None else db.metas[1 - meta.index]
    still_used = set()
    if other is not None and other.usable and other.txid < meta.txid:
        still_used = set(reachable_pages(db, other))
    for p in free.tolist():
        if p < end and not (taken[p] if p < taken.size else p in known):
            put(PageInfo(p, "pending" if p in still_used else "free"))
    # every other page below the end of the file is leaked: its header as stored, or a run of zeros
    pg, _, _, count, overflow = written_headers(db, 0, min(end, limit))
    keep = ~taken[pg]
    for p, c, o in zip(pg[keep].tolist(), count[keep].tolist(), overflow[keep].tolist()):
        known[p] = PageInfo(p, "leaked", items=c, overflow=o)
    infos: list[PageInfo] = []
    nxt = 0
    for p in sorted(known) + [end]:
        if p > nxt:     # pages nothing names and whose header is zero: never written (or a hole)
            if nxt < min(p, limit):
                infos.append(PageInfo(nxt, "leaked", items=0, overflow=0, run=min(p, limit) - nxt))
            if max(nxt, limit) < p:
                infos.append(PageInfo(max(nxt, limit), "beyond-eof", run=p - max(nxt, limit)))
        if p < end:
            infos.append(known[p])
            nxt = max(nxt, p + known[p].run)
    return infos, errors
