"""Copying a sound bbolt file, or one bucket of it, into a writer while leaving out chosen buckets and keys."""
from __future__ import annotations

from typing import Callable

from ..storage import Bucket, Database
from ..write import BoltWriter

# keep(path, key, is_bucket) -> False to leave the entry (and, for a bucket, all below it) out
Keep = Callable[[tuple, bytes, bool], bool]


def stream(db: Database, start: Bucket, writer: BoltWriter, keep: Keep | None = None) -> int:
    """Write the contents of ``start`` (its keys and sub-buckets, depth first) into the writer's current bucket;
    returns how many entries ``keep`` left out."""
    dropped = 0
    base = start.path
    open_path: tuple = base
    skip: tuple | None = None
    for parent, child, item in db.tree.walk(start):
        path = parent.path
        if skip is not None and path[:len(skip)] == skip:
            continue
        skip = None
        while open_path != path:
            writer.end_bucket()
            open_path = open_path[:-1]
        if keep is not None and not keep(path, item.key, child is not None):
            dropped += 1
            if child is not None:
                skip = child.path
            continue
        if child is None:
            writer.put(item.key, db.value(item))
        else:
            writer.begin_bucket(item.key, child.sequence)
            open_path = child.path
    while open_path != base:
        writer.end_bucket()
        open_path = open_path[:-1]
    return dropped


def rewrite(src: str, dst: str, keep: Keep) -> int:
    """``src`` into the new file ``dst`` without the entries ``keep`` rejects; returns how many it left out."""
    with Database(src) as db:
        writer = BoltWriter(dst, page_size=db.page_size)
        try:
            dropped = stream(db, db.root(), writer, keep)
            writer.close()
        except BaseException:
            writer.abort()
            raise
    return dropped
