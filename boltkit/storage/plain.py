"""A whole bbolt file as nested dicts, for the models that reason about a store's logical content.

Models of what a program does to a store (containerd's garbage collector, buildkitd's start) work on
plain data so they can be fed a state that is not on disk (a store with some buckets already deleted)
and so the order of keys is bbolt's own: bytes compare the way bbolt compares keys. A bucket becomes a
dict, a plain value bytes; bucket sequences are not kept (no model needs them yet).
"""
from __future__ import annotations

from .database import Database

PlainTree = dict  # dict[bytes, "bytes | PlainTree"]


def plain_tree(db: Database) -> PlainTree:
    """Every bucket and key of ``db``'s current tree. Damage raises CorruptionError: a partial tree would
    let a model predict removals from what it could not read."""
    out: PlainTree = {}
    dicts: dict[tuple[bytes, ...], PlainTree] = {(): out}
    for bucket, child, item in db.tree.walk(db.root()):
        parent = dicts[bucket.path]
        if child is None:
            parent[bytes(item.key)] = bytes(db.value(item))
        else:
            parent[bytes(item.key)] = dicts[child.path] = {}
    return out
