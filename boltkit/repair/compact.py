"""Compaction: copy every bucket, key, value and sequence into a fresh, dense file (like `bbolt compact`)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from ..errors import CorruptionError
from ..storage import Database
from ..write import BoltWriter


@dataclass
class CompactResult:
    src_size: int
    dst_size: int
    buckets: int
    pairs: int
    damage: list

    @property
    def gain(self) -> float:
        return self.src_size / self.dst_size if self.dst_size else 0.0


def copy_tree(db: Database, writer: BoltWriter, on_error=None,
              progress: Callable[[int], None] | None = None) -> tuple[int, int]:
    """Stream ``db``'s tree into ``writer``; returns (buckets, pairs)."""
    data = db.data
    buckets = pairs = 0
    open_path: tuple = ()
    for parent, child, item in db.tree.walk(db.root(), on_error=on_error):
        # close the buckets the walk has left (it yields depth-first, so parent.path is a prefix of open_path)
        while open_path != parent.path:
            writer.end_bucket()
            open_path = open_path[:-1]
        if child is None:
            writer.put(item.key, data[item.value_start:item.value_end])
            pairs += 1
        else:
            writer.begin_bucket(item.key, child.sequence)
            open_path = child.path
            buckets += 1
        if progress is not None and (pairs + buckets) % 65536 == 0:
            progress(item.node.owner)
    while open_path:
        writer.end_bucket()
        open_path = open_path[:-1]
    return buckets, pairs


def compact(src: str, dst: str, *, page_size: int | None = None, fill_percent: float = 1.0,
            freelist: bool = True, meta: int | None = None, progress=None) -> CompactResult:
    """Compact ``src`` into the new file ``dst`` (which must not exist). Damage aborts: salvage is for that."""
    if os.path.exists(dst):
        raise FileExistsError(f"{dst} already exists; refusing to overwrite it")
    with Database(src, meta=meta) as db:
        writer = BoltWriter(dst, page_size=page_size or db.page_size, fill_percent=fill_percent, freelist=freelist)
        try:
            buckets, pairs = copy_tree(db, writer, progress=progress)
            writer.close()
        except ValueError as e:     # the writer refuses what the source's damage would put in the new file
            writer.abort()
            raise CorruptionError(f"{src} is damaged ({e}); run `boltkit check` on it") from None
        except BaseException:
            writer.abort()
            raise
        return CompactResult(db.file_size, os.path.getsize(dst), buckets, pairs, [])
