"""What every page of the file is: meta, freelist, branch/leaf of which bucket, overflow, free, leaked.

"Pending" has no on-disk flag (bbolt stores free ∪ pending); we call a listed page *pending* when
the previous meta's tree still uses it, which is exactly what bbolt's pending list means: freed by
the last transaction, still needed by readers of the one before.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CorruptionError
from ..schemas import PAGE_HEADER, PageFlag
from .database import Database
from .meta import Meta
from .pages import Node
from .tree import Bucket, Tree


@dataclass
class PageInfo:
    pgid: int
    kind: str                 # meta, freelist, branch, leaf, overflow, free, pending, leaked, beyond-eof
    items: int | None = None
    overflow: int = 0
    bucket: tuple[bytes, ...] | None = None
    of: int | None = None     # for overflow pages: the page whose span they continue


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

    for _ in tree.walk(root, on_error=errs.append, on_page=on_page):
        pass
    return owners


def page_map(db: Database) -> tuple[list[PageInfo], list]:
    meta = db.meta
    errors: list = []
    # pages the file really has, and a bounded run of "beyond-eof" rows for a truncated file
    infos: list[PageInfo | None] = [None] * min(meta.pgid, db.file_size // db.page_size + 65536)
    for i in (0, 1):
        if i < len(infos):
            infos[i] = PageInfo(i, "meta")
    free = np.zeros(0, dtype=np.uint64)
    try:
        fl = db.freelist()
    except CorruptionError as e:
        errors.append(e)
        fl = None
    if fl is not None:
        free = fl.ids
        for p in fl.pages:
            if p < len(infos):
                infos[p] = PageInfo(p, "freelist" if p == fl.pgid else "overflow",
                                    items=len(fl.ids) if p == fl.pgid else None, overflow=fl.overflow if p == fl.pgid else 0,
                                    of=None if p == fl.pgid else fl.pgid)
    for pgid, (node, bucket) in reachable_pages(db, meta, errors).items():
        if pgid >= len(infos):
            continue
        infos[pgid] = PageInfo(pgid, PageFlag.name_of(node.flags), node.count, node.overflow, bucket.path)
        for o in range(pgid + 1, min(pgid + node.overflow + 1, len(infos))):
            infos[o] = PageInfo(o, "overflow", bucket=bucket.path, of=pgid)
    other = db.metas[1 - meta.index]
    still_used = set()
    if other is not None and other.usable and other.txid < meta.txid:
        still_used = set(reachable_pages(db, other))
    for p in free.tolist():
        if p < len(infos) and infos[p] is None:
            infos[p] = PageInfo(p, "pending" if p in still_used else "free")
    limit = db.file_size // db.page_size
    for p in range(len(infos)):
        if infos[p] is None:
            if p >= limit:
                infos[p] = PageInfo(p, "beyond-eof")
            else:
                _, flags, count, overflow = PAGE_HEADER.unpack_from(db.data, p * db.page_size)
                infos[p] = PageInfo(p, "leaked", items=count, overflow=overflow)
    return infos, errors
