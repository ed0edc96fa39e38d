"""Which BuildKit store a bolt file is, and refusing the wrong one.

Commands that decode one kind of store (graph and prune read cache.db, history reads history.db, du reads
metadata_v2.db) would otherwise find none of their buckets in another store and print an empty, clean
answer: a history.db given to `buildkit graph` looked like a cache with no keys. Refused with exit 8.
"""
from __future__ import annotations

from ..errors import WrongStore
from ..storage import Database


def require_store(db: Database, expected: str) -> None:
    """Raise WrongStore when ``db`` is recognisably another kind of store than ``expected`` (its top-level
    buckets are another store's). A file no kind recognises passes: a salvaged store may have lost its top
    buckets (they come back with `prune --rehome`), and a store created but never written is empty."""
    from .fsck import store_kind
    found = store_kind(db)
    if found in (expected, "unknown"):
        return
    what = "a containerd store" if found == "containerd" else f"a {found} store"
    raise WrongStore(f"{db.path}: is {what}, not a {expected} (see `boltkit buildkit ls` for which store is which)",
                     expected=expected, found=found)
