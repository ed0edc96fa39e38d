"""metadata_v2.db (cache/metadata): what the cross-file checks need from it so far — the record ids."""
from __future__ import annotations

from ..storage import Database


def record_ids(db: Database, on_damage=None) -> set[str]:
    """Names of the `_main/<id>` record buckets: the refIDs that cache.db results may point at."""
    root = db.root()
    main = db.tree.get(root, b"_main")
    if main is None or not main.is_bucket:
        return set()
    bucket = db.tree.child(root, main)
    return {it.key.decode("utf-8", "replace") for it in db.tree.items(bucket, on_error=on_damage) if it.is_bucket}
