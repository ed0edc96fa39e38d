"""The stored freelist page: free and pending ids, with bbolt's 0xFFFF count rule."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CorruptionError
from ..schemas import FREELIST_COUNT_SENTINEL, FREELIST_U64, PAGE_HEADER_SIZE, PageFlag
from .pages import Pager, pages_in


@dataclass
class Freelist:
    pgid: int | None          # None when the file stores no freelist
    overflow: int
    ids: np.ndarray           # uint64, as stored (normally sorted, free ∪ pending)
    raw_count: int            # the header's count field (0xFFFF when the count is stored separately)

    @property
    def pages(self) -> range:
        """The pages the freelist itself occupies."""
        return range(self.pgid, self.pgid + self.overflow + 1) if self.pgid is not None else range(0)


def read_freelist(pager: Pager, pgid: int) -> Freelist:
    off = pgid * pager.page_size
    pid, flags, count, overflow = pager.header(pgid)
    if pid != pgid:
        raise CorruptionError(f"freelist page header says id {pid}, expected {pgid}", pgid=pgid, offset=off)
    if flags != PageFlag.FREELIST:
        raise CorruptionError(f"freelist page has type {PageFlag.name_of(flags)}", pgid=pgid, offset=off + 8)
    end = off + (overflow + 1) * pager.page_size
    if end > pager.file_size or pgid + overflow >= pager.hwm:
        raise CorruptionError(f"freelist overflow {overflow} runs past the end of the file or the hwm",
                              pgid=pgid, offset=off + 12)
    start = off + PAGE_HEADER_SIZE
    n = count
    if count == FREELIST_COUNT_SENTINEL:
        n = int(np.frombuffer(pager.data, dtype=FREELIST_U64, count=1, offset=start)[0])
        start += FREELIST_U64.itemsize
    if start + n * FREELIST_U64.itemsize > end:
        raise CorruptionError(f"freelist claims {n} ids, more than its {overflow + 1} page(s) hold",
                              pgid=pgid, offset=off + 10)
    ids = np.frombuffer(pager.data, dtype=FREELIST_U64, count=n, offset=start).copy()
    return Freelist(pgid, overflow, ids, count)


def freed_ids(data, file_size: int, page_size: int, pgid: int) -> set[int] | None:
    """The ids of the freelist page ``pgid``, None when it cannot be read (the ladder and the rebuilt root weigh
    transactions by what their freelists free)."""
    try:
        return set(read_freelist(Pager(data, file_size, page_size, pages_in(file_size, page_size)), pgid).ids.tolist())
    except CorruptionError:
        return None
