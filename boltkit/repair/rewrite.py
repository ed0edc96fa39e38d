"""Copying a sound bbolt file into a new one while leaving out chosen buckets and keys."""
from __future__ import annotations

from typing import Callable

from ..storage import Database
from ..write import BoltWriter

# keep(path, key, is_bucket) -> False to leave the entry (and, for a bucket, all below it) out
Keep = Callable[[tuple, bytes, bool], bool]


def rewrite(src: str, dst: str, keep: Keep) -> int:
    """Stream ``src`` into the new file ``dst`` without the entries ``keep`` rejects; returns how many it left out."""
    dropped = 0
    with Database(src) as db:
        writer = BoltWriter(dst, page_size=db.page_size)
        try:
            open_path: tuple = ()
            skip: tuple | None = None
            for parent, child, item in db.tree.walk(db.root()):
                path = parent.path
                if skip is not None and path[:len(skip)] == skip:
                    continue
                skip = None
                while open_path != path:
                    writer.end_bucket()
                    open_path = open_path[:-1]
                if not keep(path, item.key, child is not None):
                    dropped += 1
                    if child is not None:
                        skip = child.path
                    continue
                if child is None:
                    writer.put(item.key, db.value(item))
                else:
                    writer.begin_bucket(item.key, child.sequence)
                    open_path = child.path
            writer.close()
        except BaseException:
            writer.abort()
            raise
    return dropped
