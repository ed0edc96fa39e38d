"""A write transaction over a read-only file: bbolt's bucket operations, kept in memory.

Predicting what a program does to a bbolt file means replaying its transactions. The overlay answers
reads from the file until a key is written, and reads the file the way bbolt's cursor does: a ``get``
descends to one leaf, iterating a bucket reads all of its pages. So damage is met exactly where the
replayed program would meet it, as a ``CorruptionError`` (bbolt panics there), and pages nobody
touches are never read. Every mutation is journaled with a caller-supplied reason, and a savepoint
can be rolled back, as a failed ``db.Update`` is. A caller that worked out many mutations in bulk (from
columns, say) hands them over whole (``Overlay.defer``): they are journaled at once and applied to the
buckets only when something next reads them, so a replay whose state nobody reads costs nothing more.
"""
from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from ..errors import CorruptionError
from .database import Database
from .tree import Bucket, Item

_MAX_DEPTH = 64              # no bbolt tree is this deep: a deeper descent is a page cycle
_LEAF_CACHE = 8192           # decoded leaves kept (a replay reads keys in order, so recent leaves are hot)

_DELETED = object()          # an entry the transaction removed


@dataclass(frozen=True)
class Mutation:
    """One bucket operation, as it happened: ``op`` is put, delete, create-bucket or delete-bucket."""
    op: str
    path: tuple[bytes, ...]          # the bucket it applies to
    key: bytes
    value: bytes | None              # the new value of a put
    why: Any                         # the caller's reason (typed by the caller)


class Journal:
    """The mutations of a transaction in order: single ones as they happen, and bulks (sequences of
    Mutations a caller computed, typically built on demand from columns) as they were handed over."""

    def __init__(self):
        self._parts: list = []
        self._new_tail()

    def _new_tail(self) -> None:
        self._tail: list[Mutation] = []
        self._parts.append(self._tail)
        self.append = self._tail.append

    def add_bulk(self, bulk: Sequence[Mutation]) -> None:
        self._parts.append(bulk)
        self._new_tail()

    def parts(self) -> list[Sequence[Mutation]]:
        """The single mutations (as lists) and the bulks, in order, the empty ones left out."""
        return [p for p in self._parts if len(p)]

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts)

    def __bool__(self) -> bool:
        return any(len(p) for p in self._parts)

    def __iter__(self) -> Iterator[Mutation]:
        for p in self._parts:
            yield from p

    def __getitem__(self, i):
        return list(self)[i]

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` mutations (a rollback); a bulk is kept or dropped whole."""
        kept: list = []
        for p in self._parts:
            if n >= len(p):
                kept.append(p)
                n -= len(p)
            elif isinstance(p, list):
                kept.append(p[:n])
                n = 0
            elif n:
                raise ValueError("a rollback into the middle of a bulk of mutations")
            else:
                break
        self._parts = kept
        if kept and isinstance(kept[-1], list):
            self._tail = kept[-1]
            self.append = self._tail.append
        else:
            self._new_tail()


class OBucket:
    """One bucket of an Overlay. Child buckets are OBuckets too; the same key always gives the same object."""

    __slots__ = ("ov", "path", "src", "entries", "sequence", "complete", "primer", "live")

    def __init__(self, ov: "Overlay", path: tuple[bytes, ...], src: Bucket | None, sequence: int = 0):
        self.ov = ov
        self.path = path
        self.src = src                           # on-disk bucket; None for one created in the transaction
        self.entries: dict[bytes, Any] = {}      # key -> bytes | OBucket | _DELETED: read or written so far
        self.sequence = src.sequence if src is not None else sequence
        self.complete = src is None              # every on-disk entry is in ``entries``
        self.primer = None                       # see ``prime``
        self.live = 0                            # entries not deleted, counted once ``complete``

    # -- reads ----------------------------------------------------------------------------------

    def _load(self, key: bytes):
        if self.ov._pending:
            self.ov.settle()
        e = self.entries.get(key)
        if e is not None:
            return e
        if self.complete:
            return _DELETED
        e = _DELETED
        if self.primer is not None:
            child = self.primer(key)
            if child is not None:
                e = OBucket(self.ov, self.path + (key,), None, child[0])
                e.entries, e.live = child[1], len(child[1])
        elif self.src is not None:
            tree = self.ov.db.tree
            item = self.ov.lookup(self.src, key)
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
        if self.ov._pending:
            self.ov.settle()
        if not self.complete:
            assert self.src is not None         # a bucket created in the transaction is complete from the start
            tree, db = self.ov.db.tree, self.ov.db
            for item in tree.items(self.src):
                if item.key not in self.entries:
                    self.entries[item.key] = OBucket(self.ov, self.path + (item.key,), tree.child(self.src, item)) \
                        if item.is_bucket else db.value(item)
            self.complete = True
            self.live = sum(e is not _DELETED for e in self.entries.values())
        for k in sorted(self.entries):
            e = self.entries[k]
            if e is not _DELETED:
                yield k, e

    def prime(self, children) -> None:
        """Answer reads of this bucket's keys from what the caller read of it in bulk, not page by page:
        ``children(key)`` is None when the bucket has no such key, else ``(sequence, entries)`` of the
        sub-bucket stored under it, every one of its entries a plain value (key -> bytes). The caller
        vouches that this is the bucket's whole content and that the file's tree is whole (no read could
        meet damage), so nothing the replayed program would see changes; a full pass (``items``) still
        reads the pages and keeps what was answered already."""
        self.primer = children

    def keys(self) -> list[bytes]:
        return [k for k, _ in self.items()]

    def is_empty(self) -> bool:
        """bbolt's `Cursor().First() == nil`."""
        if self.ov._pending:
            self.ov.settle()
        if self.complete:       # nothing left to read: the count says it
            return not self.live
        return next(self.items(), None) is None

    # -- writes ---------------------------------------------------------------------------------

    def _set(self, op: str, key: bytes, new, value: bytes | None, why) -> None:
        self.ov._undo.append((self, key, self.entries.get(key, None)))
        self._replace(key, new)
        self.ov.journal.append(Mutation(op, self.path, key, value, why))

    def _replace(self, key: bytes, new) -> None:
        """Set (or, ``new`` None, forget) one entry, keeping the count of live entries."""
        old = self.entries.pop(key, None) if new is None else self.entries.get(key)
        if new is not None:
            self.entries[key] = new
        self.live += (new is not None and new is not _DELETED) - (old is not None and old is not _DELETED)

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
        if self.ov._pending:
            self.ov.settle()
        return bool(self.entries)


class Overlay:
    """A transaction over ``db``: ``root`` is the root bucket; ``journal`` lists every mutation in order."""

    def __init__(self, db: Database):
        self.db = db
        self._leaves: OrderedDict[int, dict] = OrderedDict()
        self._branches: dict[int, tuple[list[bytes], list[int]]] = {}
        self._nodes: dict = {}               # pgid -> validated Node
        self.root = OBucket(self, (), db.root())
        self.journal = Journal()
        self._undo: list[tuple[OBucket, bytes, Any]] = []
        self._pending: list[Sequence[Mutation]] = []     # bulks journaled but not applied to the buckets yet

    def lookup(self, bucket: Bucket, key: bytes) -> Item | None:
        """bbolt's seek for one key: one descent, reading the pages on the way (decoded pages are kept)."""
        pager, data = self.db.pager, self.db.data
        node = bucket.node
        for _ in range(_MAX_DEPTH):
            if node.is_leaf:
                table = self._leaves.get(node.base)
                if table is None:
                    table = {}
                    for flags, ks, ke, ve in pager.leaf_elements(node):
                        table.setdefault(data[ks:ke], (flags, ke, ve))
                    self._leaves[node.base] = table
                    if len(self._leaves) > _LEAF_CACHE:
                        self._leaves.popitem(last=False)
                hit = table.get(key)
                return None if hit is None else Item(key, hit[0], hit[1], hit[2], node)
            entry = self._branches.get(node.base)
            if entry is None:
                elems = pager.branch_elements(node)
                if not elems:
                    raise CorruptionError("branch page with no elements", pgid=node.pgid, offset=node.base + 10,
                                          path=bucket.path)
                entry = self._branches[node.base] = ([data[a:b] for a, b, _ in elems], [c for _, _, c in elems])
            keys, children = entry
            pgid = children[max(bisect_right(keys, key) - 1, 0)]
            cached = self._nodes.get(pgid)
            node = cached if cached is not None else self._nodes.setdefault(pgid, pager.node(pgid))
        raise CorruptionError(f"the tree under {bucket.path!r} is deeper than {_MAX_DEPTH} levels (a page cycle)",
                              pgid=node.pgid, path=bucket.path)

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
        self.settle()
        undo, journal = mark
        while len(self._undo) > undo:
            bucket, key, old = self._undo.pop()
            bucket._replace(key, old)
        self.journal.truncate(journal)

    def defer(self, bulk: Sequence[Mutation]) -> None:
        """Mutations worked out elsewhere, in order, each one valid where it stands (as if made one by one):
        journaled now, applied to the buckets when they are next read (``settle``)."""
        self.journal.add_bulk(bulk)
        self._pending.append(bulk)

    def settle(self) -> None:
        """Apply the deferred bulks to the buckets (undoable, not journaled again)."""
        pending, self._pending = self._pending, []
        for bulk in pending:
            for m in bulk:
                b = self.bucket(*m.path)
                if b is None:
                    raise ValueError(f"a deferred {m.op} in a bucket that is not there: {m.path!r}")
                old = b._load(m.key)
                if m.op == "put":
                    new: Any = bytes(m.value or b"")
                elif m.op == "create-bucket":
                    new = old if isinstance(old, OBucket) else OBucket(self, m.path + (m.key,), None)
                else:
                    new = _DELETED
                self._undo.append((b, m.key, b.entries.get(m.key, None)))
                b._replace(m.key, new)

    @property
    def changed(self) -> bool:
        return bool(self.journal)


class EmptyOverlay(Overlay):
    """A transaction over a new, empty file (what SafeOpen leaves after a reset)."""

    def __init__(self):
        self.db = None
        self.root = OBucket(self, (), None)
        self.journal = Journal()
        self._undo = []
        self._pending = []


__all__ = ["Overlay", "EmptyOverlay", "OBucket", "Mutation", "Journal"]
