"""One page decoded for a person: its header as stored, then whatever its type holds, read as far as the
bounds allow (a damaged page shows what it can and says where it stopped)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import CorruptionError
from ..schemas import BUCKET_HEADER, BUCKET_HEADER_SIZE, BUCKET_LEAF_FLAG, PAGE_HEADER, PageFlag
from .database import Database
from .freelist import read_freelist
from .meta import Meta
from .pages import Node


@dataclass
class LeafEntry:
    flags: int
    key: bytes
    value: bytes
    bucket: tuple[int, int, int] | None = None     # (root, sequence, inline page element count) for buckets


@dataclass
class PageView:
    pgid: int
    header_id: int
    flags: int
    count: int
    overflow: int
    offset: int
    size: int                                        # bytes shown: the span, cut at the end of the file
    meta: Meta | None = None
    freelist: list[int] | None = None
    branch: list[tuple[bytes, int]] = field(default_factory=list)
    leaf: list[LeafEntry] = field(default_factory=list)
    error: str | None = None


def describe_page(db: Database, pgid: int) -> PageView:
    hid, flags, count, overflow = db.page_header(pgid)
    off = pgid * db.page_size
    pages = 1 if flags == PageFlag.META else overflow + 1
    view = PageView(pgid, hid, flags, count, overflow, off, min(pages * db.page_size, db.file_size - off))
    node = Node(pgid, flags, count, overflow, off, off + view.size, pgid)
    try:
        if flags == PageFlag.META:
            view.meta = db.metas[pgid] if pgid in (0, 1) else None
        elif flags == PageFlag.FREELIST:
            view.freelist = read_freelist(db.pager, pgid).ids.tolist()
        elif flags == PageFlag.BRANCH:
            view.branch = [(db.data[s:e], child) for s, e, child in db.pager.branch_elements(node)]
        elif flags == PageFlag.LEAF:
            for eflags, ks, ke, ve in db.pager.leaf_elements(node):
                entry = LeafEntry(eflags, db.data[ks:ke], db.data[ke:ve])
                if eflags & BUCKET_LEAF_FLAG and ve - ke >= BUCKET_HEADER_SIZE:
                    root, seq = BUCKET_HEADER.unpack_from(db.data, ke)
                    inline_count = 0
                    if root == 0 and ve - ke >= BUCKET_HEADER_SIZE + PAGE_HEADER.size:
                        inline_count = PAGE_HEADER.unpack_from(db.data, ke + BUCKET_HEADER_SIZE)[2]
                    entry.bucket = (root, seq, inline_count)
                view.leaf.append(entry)
    except CorruptionError as e:
        view.error = str(e)
    return view
