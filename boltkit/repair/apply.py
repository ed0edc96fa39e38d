"""Writing what a transaction left: an Overlay's buckets into a new file.

Buckets the transaction never read are streamed from the source file as they are (``rewrite.stream``), so
the cost is that of a copy, not of a Python object per key.
"""
from __future__ import annotations

from ..storage.overlay import OBucket, Overlay
from ..write import BoltWriter
from .rewrite import stream


def write_overlay(ov: Overlay, dst: str, *, page_size: int | None = None) -> None:
    """The state ``ov`` describes, as the new file ``dst`` (bbolt's inline rule and a fresh freelist)."""
    writer = BoltWriter(dst, page_size=page_size or (ov.db.page_size if ov.db is not None else 4096))
    try:
        _emit(ov, ov.root, writer)
        writer.close()
    except BaseException:
        writer.abort()
        raise


def _emit(ov: Overlay, bucket: OBucket, writer: BoltWriter) -> None:
    for key, entry in bucket.items():
        if isinstance(entry, bytes):
            writer.put(key, entry)
            continue
        writer.begin_bucket(key, entry.sequence)
        if entry.touched() or entry.src is None:
            _emit(ov, entry, writer)
        else:
            stream(ov.db, entry.src, writer)
        writer.end_bucket()
