"""A write transaction over a read-only file: bbolt's bucket operations, kept in memory.

Predicting what a program does to a bbolt file means replaying its transactions. The overlay answers
reads from the file until a key is written, and reads the file the way bbolt's cursor does: a ``get``
descends to one leaf, iterating a bucket reads all of its pages. So damage is met exactly where the
replayed program would meet it, as a ``CorruptionError`` (bbolt panics there), and pages nobody
touches are never read. Every mutation is journaled with a caller-supplied reason, and a savepoint
can be rolled back, as a failed ``db.Update`` is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from .database import Database
from .tree import Bucket

_DELETED = object()          # an entry the transaction removed


@dataclass(frozen=True)
class Mutation:
    """One bucket operation, as it happened: ``op`` is put, delete, create-bucket or delete-bucket."""
    op: str
    path: tuple[bytes, ...]          # the bucket it applies to
    key: bytes
    value: bytes | None              # the new value of a put
    why: Any                         # the caller's reason (typed by the caller)


class OBucket:
    """One bucket of an Overlay. Child buckets are OBuckets too; the same key always gives the same object."""

    __slots__ = ("ov", "path", "src", "entries", "sequence", "complete")

    def __init__(self, ov: "Overlay", path: tuple[bytes, ...], src: Bucket | None, sequence: int = 0):
        self.ov = ov
        self.path = path
        self.src = src                           # on-disk bucket; None for one created in the transaction
        self.entries: dict[bytes, Any] = {}      # key -> bytes | OBucket | _DELETED: read or written so far
        self.sequence = src.sequence if src is not None else sequence
        self.complete = src is None              # every on-disk entry is in ``entries``

    # -- reads ----------------------------------------------------------------------------------

    def _load(self, key: bytes):
        e = self.entries.get(key)
        if e is not None:
            return e
        if self.complete:
            return _DELETED
        e = _DELETED
        if self.src is not None:
            tree = self.ov.db.tree
            item = tree.get(self.src, key)
            if item is not None:
                e = OBucket(self.ov, self.path + (key,), tree.child(self.src, item)) if item.is_bucket \
                    else self.ov.db.value(item)
        self.entries[key] = e
        return e

    def get(self, key: bytes) -> bytes | None:
        """A plain value (bbolt's Bucket.Get: None for a missing key and for a sub-bucket)."""
        e = self._load(key)
        return e if isinstance(e, bytes) else None

    def bucket(self, key: bytes) -> "OBucket | None":
        e = self._load(key)
        return e if isinstance(e, OBucket) else None

    def items(self) -> Iterator[tuple[bytes, "bytes | OBucket"]]:
        """Every entry in key order (a full cursor pass: reads every page of the bucket)."""
        if not self.complete:
            tree, db = self.ov.db.tree, self.ov.db
            for item in tree.items(self.src):
                if item.key not in self.entries:
                    self.entries[item.key] = OBucket(self.ov, self.path + (item.key,), tree.child(self.src, item)) \
                        if item.is_bucket else db.value(item)
            self.complete = True
        for k in sorted(self.entries):
            e = self.entries[k]
            if e is not _DELETED:
                yield k, e

    def keys(self) -> list[bytes]:
        return [k for k, _ in self.items()]

    def is_empty(self) -> bool:
        """bbolt's `Cursor().First() == nil`."""
        return next(self.items(), None) is None

    # -- writes ---------------------------------------------------------------------------------

    def _set(self, op: str, key: bytes, new, value: bytes | None, why) -> None:
        self.ov._undo.append((self, key, self.entries.get(key, None)))
        self.entries[key] = new
        self.ov.journal.append(Mutation(op, self.path, key, value, why))

    def put(self, key: bytes, value: bytes, why=None) -> None:
        if isinstance(self._load(key), OBucket):
            raise ValueError("incompatible value: the key is a bucket")
        self._set("put", key, bytes(value), bytes(value), why)

    def delete(self, key: bytes, why=None) -> bool:
        """bbolt's Bucket.Delete: a missing key is no error; a bucket is not deleted (False)."""
        e = self._load(key)
        if e is _DELETED or isinstance(e, OBucket):
            return False
        self._set("delete", key, _DELETED, None, why)
        return True

    def delete_bucket(self, key: bytes, why=None) -> bool:
        """bbolt's DeleteBucket: False (bbolt's ErrBucketNotFound) when there is no such bucket."""
        if not isinstance(self._load(key), OBucket):
            return False
        self._set("delete-bucket", key, _DELETED, None, why)
        return True

    def create_bucket_if_not_exists(self, key: bytes, why=None) -> "OBucket":
        e = self._load(key)
        if isinstance(e, OBucket):
            return e
        if isinstance(e, bytes):
            raise ValueError("incompatible value: the key holds a plain value")
        child = OBucket(self.ov, self.path + (key,), None)
        self._set("create-bucket", key, child, None, why)
        return child

    def plain(self) -> dict:
        """The bucket's current state as nested dicts (bytes for plain values), reading all of it."""
        return {k: (e.plain() if isinstance(e, OBucket) else e) for k, e in self.items()}

    def touched(self) -> bool:
        """Whether anything below this bucket was read into memory (untouched buckets are copied from the file)."""
        return bool(self.entries)


class Overlay:
    """A transaction over ``db``: ``root`` is the root bucket; ``journal`` lists every mutation in order."""

    def __init__(self, db: Database):
        self.db = db
        self.root = OBucket(self, (), db.root())
        self.journal: list[Mutation] = []
        self._undo: list[tuple[OBucket, bytes, Any]] = []

    def bucket(self, *path: bytes) -> OBucket | None:
        b: OBucket | None = self.root
        for name in path:
            if b is None:
                return None
            b = b.bucket(name)
        return b

    def savepoint(self) -> tuple[int, int]:
        return len(self._undo), len(self.journal)

    def rollback(self, mark: tuple[int, int]) -> None:
        """Undo everything since ``mark``, as a db.Update whose function returned an error."""
        undo, journal = mark
        while len(self._undo) > undo:
            bucket, key, old = self._undo.pop()
            if old is None:
                bucket.entries.pop(key, None)
            else:
                bucket.entries[key] = old
        del self.journal[journal:]

    @property
    def changed(self) -> bool:
        return bool(self.journal)


class EmptyOverlay(Overlay):
    """A transaction over a new, empty file (what SafeOpen leaves after a reset)."""

    def __init__(self):
        self.db = None
        self.root = OBucket(self, (), None)
        self.journal = []
        self._undo = []


__all__ = ["Overlay", "EmptyOverlay", "OBucket", "Mutation"]
