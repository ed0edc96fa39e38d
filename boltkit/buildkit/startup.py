"""buildkitd's start, replayed offline: what the daemon will do to a root's stores the next time it starts.

Each step is written from BuildKit's own code path (commit 73ed6825, v0.32.0-57, the daemon the
recordings in shared/startup were made with) and replayed on an ``Overlay`` of each store, so a read meets
damage exactly where the daemon's read would, and every write is journaled with its reason:

1. worker creation: the snapshotter's metadata.db, containerdmeta.db, then metadata_v2.db with plain
   ``bolt.Open`` (an open error stops the daemon, a panic crashes it); ``metadata.Store.All`` decodes every
   record (one bad value refuses the start); ``cacheManager.init`` calls ``getRecord`` on each record in key
   order and clears those that fail, with their leases (`getRecord`: parents first, with no cycle guard; the
   ``equalMutable`` branch; ``cache.deleted``; a mutable record's snapshot; lazy blobs);
   ``base.NewWorker`` drops temporary leases;
2. ``boltutil.SafeOpen`` of cache.db (``NewStore`` creates its four buckets) and history.db: a failure inside
   ``bolt.Open`` renames the file to ``<name>.<id>.bak`` and starts empty, nothing else is recovered;
3. ``solver.NewCacheManager`` → ``ReleaseUnreferenced``: every result whose worker ref cannot be loaded is
   released, and ``emptyBranchWithParents`` removes keys left with no results and no links, recursively;
4. the history queue: the v2 migration stamp, ``clearOrphans`` and the retention ``gc``;
5. the start-up GC (one second after the start, when the worker has a GC policy): the policy's rules in
   order, as ``cacheManager.prune`` runs them (gc.py; a rule with a byte budget first calls ``DiskUsage``,
   whose load of every record of unknown size removes a mutable record left without its immutable
   partner), containerd's metadata GC, which removes the snapshots and content no lease holds
   (containerd_gc.py), and, when the pass removed something, ``ReleaseUnreferenced`` of cache.db again.

Every loaded record holds a reference on each of its parents; releasing the last one stamps the parent as
used now (``updateLastUsed``), which is how a start that drops records bumps a surviving parent's
usageCount (CASES.md rule 13).

The result is a typed plan: the outcome (the daemon starts, refuses with exit 1, crashes with exit 2, or
starts after SafeOpen reset a store) and every change, store by store, with byte paths and a reason.
"""
from __future__ import annotations

import datetime
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from ..chained import Chained
from ..check.problems import _show as _text         # bytes as a report shows them: text, else 0x-hex
from ..errors import BoltkitError, CorruptionError, OpenError
from ..storage import Database
from ..storage.overlay import EmptyOverlay, OBucket, Overlay
from ..storage.gcpause import gc_paused
from .containerd_gc import collect as containerd_collect
from .gc import DiskStat, collect, int_value, worker_policy
from .gotime import parse_rfc3339, unix_ns
from .root import Root, discover
from .startconfig import StartConfig


class Outcome(str, Enum):
    STARTS = "starts"
    REFUSES = "refuses"          # exits 1 before it is ready (an error returned from start-up)
    CRASHES = "crashes"          # exits 2 before it is ready (a Go panic or fatal error)
    RESETS = "resets"            # starts after SafeOpen replaced a store with an empty one


class Cause(str, Enum):
    """What stops the daemon, as far as a repair needs to know."""
    BAD_VALUE = "bad-value"            # a metadata value that does not decode: All() fails
    PARENT_CYCLE = "parent-cycle"      # getRecord recurses forever
    DAMAGE = "damage"                  # a page the daemon reads is damaged: bbolt panics
    LINK_CYCLE = "link-cycle"          # emptyBranchWithParents recurses forever round stale backlinks
    OPEN = "open-failure"              # bolt.Open fails on a store without SafeOpen


class Stage(str, Enum):
    REPAIR = "repair"                        # a fix `buildkit repair` makes before the start it replays
    WORKER = "worker"                        # opening the worker's stores, cacheManager.init, NewWorker
    CACHE_OPEN = "cache-open"                # SafeOpen(cache.db), NewStore
    HISTORY_OPEN = "history-open"            # SafeOpen(history.db)
    RELEASE = "release-unreferenced"         # solver.NewCacheManager
    HISTORY = "history-queue"                # history.NewQueue: migration, clearOrphans, gc
    STARTUP_GC = "startup-gc"                # Controller.gc one second after the start
    CONTAINERD_GC = "containerd-gc"          # containerd metadata GC after the start-up GC
    PRUNE = "prune"                          # `buildctl prune` on the started daemon (`buildkit gc --prune`)
    LATER_RELEASE = "release-after-gc"       # ReleaseUnreferenced right after a GC pass or prune that removed some


class Why(str, Enum):
    """Why the daemon changes something. ``routine`` ones are its ordinary clean-up, the rest discard data."""
    PARENT_NOT_LOADED = "parent-not-loaded"              # rule 7: a parent failed, so does every descendant
    RECORD_MISSING = "record-missing"                    # getMetadata found no `_main/<id>`
    DELETED_FLAG = "deleted-flag"                        # cache.deleted on a record without equalMutable
    SNAPSHOT_MISSING = "snapshot-missing"                # a mutable record's snapshot is gone
    PARTNER_NOT_LOADED = "partner-not-loaded"            # an unfinalized immutable whose mutable failed
    EQUAL_MUTABLE_CLEARED = "equal-mutable-cleared"      # a finalized immutable whose mutable is gone: key emptied
    LAZY_BLOB = "lazy-blob"                              # blob-only record whose blob is not in the content store
    CREATED_AT_SET = "created-at-set"                    # initializeMetadata stamps a record without createdAt
    LEASE_OF_CLEARED_RECORD = "lease-of-cleared-record"
    TEMPORARY_LEASE = "temporary-lease"
    TOP_BUCKET_CREATED = "top-bucket-created"
    STORE_RESET = "store-reset"
    RESULT_UNLOADABLE = "result-unloadable"              # ReleaseUnreferenced: Exists is false
    RESULT_OF_CLEARED_RECORD = "result-of-cleared-record"  # ... because this start cleared its record
    EMPTY_BRANCH = "empty-branch"                        # emptyBranchWithParents
    HISTORY_VERSION = "history-version"
    HISTORY_ORPHAN = "history-orphan"                    # clearOrphans: the record's lease holds nothing
    HISTORY_RETENTION = "history-retention"              # gc: past both maxEntries and maxAge
    PARTNERLESS_MUTABLE = "partnerless-mutable"          # start-up GC's DiskUsage commits and releases it
    UNREFERENCED = "unreferenced"                        # containerd GC: no lease or other root holds it
    SNAPSHOT_OF_LIVE_RECORD = "snapshot-of-live-record"  # containerd GC removes what a kept record still names
    GC_POLICY = "gc-policy"                              # a GC rule or prune removes the record
    GC_PAIR_HALF = "gc-pair-half"                        # ... the immutable half of the pair it removes
    LAST_USED_STAMPED = "last-used-stamped"              # its last child went: updateLastUsed on the parent
    SIZE_RECORDED = "size-recorded"                      # cacheRecord.size writes what it measured
    REPAIR_BAD_VALUE = "repair-bad-value"                # buildkit repair: drop a value that stops the start
    REPAIR_PARENT_CYCLE = "repair-parent-cycle"          # buildkit repair: clear the records of a parent cycle


# A mutable record no immutable one commits to is the scratch layer of a build that never finished (a killed
# daemon leaves one per running step): the start-up GC removes it after every such stop, so it is routine.
ROUTINE = {Why.TEMPORARY_LEASE, Why.TOP_BUCKET_CREATED, Why.RESULT_UNLOADABLE, Why.EMPTY_BRANCH,
           Why.HISTORY_VERSION, Why.HISTORY_RETENTION, Why.UNREFERENCED, Why.PARTNERLESS_MUTABLE,
           Why.GC_POLICY, Why.GC_PAIR_HALF, Why.LAST_USED_STAMPED, Why.SIZE_RECORDED}
GC_WHY = (Why.GC_POLICY, Why.GC_PAIR_HALF, Why.SIZE_RECORDED)     # gc.py's removals and size writes


@dataclass(frozen=True)
class Change:
    """One write the start makes. ``path`` is the bucket, ``key`` the entry in it (a bucket for bucket ops)."""
    store: str                       # path relative to the root
    op: str                          # put, delete, delete-bucket, create-bucket, reset
    path: tuple[bytes, ...]
    key: bytes
    value: bytes | None
    what: str                        # record, record-value, index, external, lease, snapshot, result, ...
    why: Why
    subject: bytes                   # the record, result, key or lease the change is about
    stage: Stage

    @property
    def routine(self) -> bool:
        return self.why in ROUTINE

    def as_dict(self) -> dict:
        """The record a repair's JSON report keeps (bytes as text when printable, else 0x-hex)."""
        return {"type": "change", "store": self.store, "op": self.op, "path": [_text(p) for p in self.path],
                "key": _text(self.key), "value": None if self.value is None else _text(self.value), "what": self.what,
                "why": self.why.value, "subject": _text(self.subject), "stage": self.stage.value,
                "routine": self.routine}




class _ChangeTable(Sequence):
    """The changes of a bulk of mutations one store's overlay was handed (release.py's ReleaseJournal), each
    Change made when it is read."""

    def __init__(self, store: str, bulk):
        self.store, self.bulk = store, bulk
        self._counts: Counter | None = None

    def __len__(self) -> int:
        return len(self.bulk)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        op, path, key, what, why, subject = self.bulk.fields(range(len(self))[i])
        return Change(self.store, op, path, key, None, what, why, subject, self.bulk.stage)

    def counts(self) -> Counter:
        if self._counts is None:
            self._counts = Counter({(self.store, op, what, why, self.bulk.stage): n for (op, what, why), n in
                                    self.bulk.counts().items()})
        return self._counts


class Changes(Chained):
    """A plan's changes in order: Change objects, and the tables of bulk passes whose rows become Change
    objects only when they are read (a start that releases every result of a fleet-size cache.db makes
    hundreds of thousands). Compares equal to a list of the same changes."""

    def __init__(self, changes=()):
        self._parts: list = []
        self._tail: list[Change] = []
        self.extend(changes)

    def append(self, c: Change) -> None:
        if not self._parts or self._parts[-1] is not self._tail:
            self._tail = []
            self._parts.append(self._tail)
        self._tail.append(c)

    def extend(self, changes) -> None:
        if isinstance(changes, _ChangeTable):
            self._parts.append(changes)
        elif isinstance(changes, Changes):
            for p in changes._parts:
                self.extend(p)
        else:
            for c in changes:
                self.append(c)

    def __repr__(self) -> str:
        return f"Changes({list(self)!r})"

    def counts(self) -> Counter:
        """(store, op, what, why, stage) -> how many, without making the changes of the bulk tables."""
        out: Counter = Counter()
        for p in self._parts:
            if isinstance(p, _ChangeTable):
                out.update(p.counts())
            else:
                out.update((c.store, c.op, c.what, c.why, c.stage) for c in p)
        return out

    def discards(self) -> list[Change]:
        """The changes that are not routine (a table of routine changes only is not read row by row)."""
        out: list[Change] = []
        for p in self._parts:
            if not isinstance(p, _ChangeTable) or any(k[3] not in ROUTINE for k in p.counts()):
                out.extend(c for c in p if not c.routine)
        return out


@dataclass(frozen=True)
class Note:
    """Something the replay could not settle exactly (a store that is not there, a value only the disk knows)."""
    kind: str
    store: str | None
    message: str


@dataclass
class StartPlan:
    root: Path
    outcome: Outcome
    stage: Stage | None = None               # where it refuses or crashes
    store: str | None = None                 # the store that stops it
    message: str | None = None               # the daemon's error or panic, as it would print it
    cause: Cause | None = None
    cause_records: tuple[bytes, ...] = ()    # the record (bad value) or the records of the cycle
    cause_key: bytes | None = None           # the key of the bad value
    changes: Changes = field(default_factory=Changes)
    resets: list[str] = field(default_factory=list)       # stores SafeOpen replaces (renamed to <name>.<id>.bak)
    unreadable: list[str] = field(default_factory=list)   # stores this user cannot read: not predicted
    notes: list[Note] = field(default_factory=list)
    overlays: dict[str, Overlay] = field(default_factory=dict)   # each store's state after the start
    starts_replayed: int = 1                 # consecutive starts the plan covers (until_stable)
    gc: list = field(default_factory=list)   # (stage, gc.GCResult) per worker and GC pass, in order
    _models: list = field(default_factory=list, repr=False, compare=False)   # the replays: they hold the files

    @property
    def daemon_exit(self) -> int | None:
        """The daemon's exit status before it is ready (1 refused, 2 crashed), None when it starts."""
        return {Outcome.REFUSES: 1, Outcome.CRASHES: 2}.get(self.outcome)

    @property
    def starts(self) -> bool:
        return self.outcome in (Outcome.STARTS, Outcome.RESETS)

    @property
    def discards(self) -> list[Change]:
        return self.changes.discards()

    @property
    def exit_class(self) -> int:
        """The fsck contract: 8 the daemon will not start or a store is reset, 4 it starts but discards data,
        0 it starts and changes nothing or only its routine clean-up."""
        if not self.starts or self.resets or self.unreadable:
            return 8
        return 4 if self.discards else 0


class _Stop(Exception):
    def __init__(self, outcome: Outcome, stage: Stage, store: str | None, message: str, cause: Cause,
                 records: tuple[bytes, ...] = (), key: bytes | None = None):
        super().__init__(message)
        self.outcome, self.stage, self.store, self.message = outcome, stage, store, message
        self.cause, self.records, self.key = cause, records, key


class BadValue(ValueError):
    def __init__(self, message: str, rid: bytes, key: bytes):
        super().__init__(message)
        self.rid, self.key = rid, key


@dataclass(frozen=True)
class Fix:
    """A change `buildkit repair` makes to a worker's stores before the start it replays."""
    worker: str            # the worker directory, relative to the root
    cause: Cause
    records: tuple[bytes, ...]
    key: bytes | None = None


class _LoadError(Exception):
    """getRecord failed. ``not_found`` is BuildKit's errNotFound (IsNotFound), which the equalMutable branch
    tells apart from other errors."""
    def __init__(self, why: Why, subject: bytes, not_found: bool = True):
        super().__init__(why.value)
        self.why, self.subject, self.not_found = why, subject, not_found


_GO_JSON_CONST = {"NaN", "Infinity", "-Infinity"}


def _json(raw: bytes):
    """Go's json.Unmarshal into an untyped value, as far as acceptance goes (no NaN, strict UTF-8 tolerated)."""
    def reject(c):
        raise ValueError(f"invalid character '{c[0]}' looking for beginning of value")
    return json.loads(raw.decode("utf-8", "surrogateescape"), parse_constant=reject)


def _id(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


class MetaValues:
    """A record's values as BuildKit's StorageItem holds them: key -> (raw JSON payload, index)."""

    def __init__(self, rid: bytes, values: dict[str, tuple[object, str]]):
        self.id = rid
        self.values = values

    @classmethod
    def decode(cls, rid: bytes, bucket: OBucket) -> "MetaValues":
        """newStorageItem: every non-empty value must be a JSON object (or null) with a string ``index``;
        raises ValueError with the reason otherwise. Keys match Go's case-insensitive field names."""
        out: dict[str, tuple[object, str]] = {}
        for k, v in bucket.items():
            if not isinstance(v, bytes) or not v:
                continue
            try:
                doc = _json(v)
            except ValueError as e:
                raise BadValue(f"_main/{rid.decode(errors='replace')}/{k.decode(errors='replace')}: {e}", rid,
                               k) from None
            if doc is None:
                out[k.decode("utf-8", "surrogateescape")] = (None, "")
                continue
            if not isinstance(doc, dict):
                raise BadValue(f"_main/{rid.decode(errors='replace')}/{k.decode(errors='replace')}: json: cannot "
                               f"unmarshal {type(doc).__name__} into Go value of type metadata.Value", rid, k)
            value, index = None, ""
            for name, x in doc.items():
                low = name.lower()
                if low == "value":
                    value = x
                elif low == "index":
                    if x is not None and not isinstance(x, str):
                        raise BadValue(f"_main/{rid.decode(errors='replace')}/{k.decode(errors='replace')}: json: "
                                       "cannot unmarshal into Go struct field Value.index of type string", rid, k)
                    index = x or ""
            out[k.decode("utf-8", "surrogateescape")] = (value, index)
        return cls(rid, out)

    def _get(self, key: str, kind):
        v = self.values.get(key)
        if v is None or v[0] is None:
            return None
        x = v[0]
        if kind is int:
            return x if isinstance(x, int) and not isinstance(x, bool) and -2**63 <= x < 2**63 else None
        return x if isinstance(x, kind) else None

    def string(self, key: str) -> str:
        return self._get(key, str) or ""

    def boolean(self, key: str) -> bool:
        return self._get(key, bool) is True

    def int64(self, key: str) -> int | None:
        return self._get(key, int)

    def strings(self, key: str) -> list[str]:
        x = self._get(key, list)
        return x if x is not None and all(isinstance(s, str) for s in x) else []

    def indexes(self) -> list[str]:
        return [index for _, index in self.values.values() if index]

    def snapshot_id(self) -> bytes:
        return _id(self.string("cache.snapshot")) if self.string("cache.snapshot") else self.id

    def parents(self) -> list[bytes]:
        """parentsOf: the layer parent, else the merge parents, else the diff parents (lower, upper)."""
        if self.string("cache.parent"):
            return [_id(self.string("cache.parent"))]
        merge = self.strings("cache.mergeParents")
        if merge:
            return [_id(p) for p in merge]
        return [_id(self.string(k)) for k in ("cache.lowerDiffParent", "cache.upperDiffParent") if self.string(k)]

    def kind(self) -> str:
        if self.strings("cache.mergeParents"):
            return "merge"
        if self.string("cache.lowerDiffParent") or self.string("cache.upperDiffParent"):
            return "diff"
        if self.string("cache.parent"):
            return "layer"
        return "base"


@dataclass
class _Rec:
    id: bytes
    md: MetaValues
    mutable: bool
    parents: list[bytes]
    equal_mutable: bytes | None = None
    equal_immutable: bytes | None = None
    held: list[bytes] = field(default_factory=list)     # the records it holds a reference on (its parents)


RESULT, LINKS, BYRESULT, BACKLINKS = b"_result", b"_links", b"_byresult", b"_backlinks"
CACHE_TOP = (RESULT, LINKS, BYRESULT, BACKLINKS)


class _Worker:
    """One worker directory's stores during the replay: the cache manager of `cache/manager.go`."""

    def __init__(self, model: "_Model", wdir: Path, worker_id: bytes | None):
        self.model = model
        self.dir = wdir
        self.rel = os.path.relpath(wdir, model.root.path)
        self.worker_id = worker_id
        from .containerd import worker_snapshotter
        self.snapshotter = (worker_snapshotter(wdir.name) or "").encode() or None
        self.md: Overlay | None = None
        self.cd: Overlay | None = None          # containerdmeta.db; None: not present (effects unknown)
        self.backend: Overlay | None = None     # snapshots/metadata.db
        self.records: dict[bytes, _Rec] = {}
        self.loading: list[bytes] = []
        self.cleared: set[bytes] = set()         # records this start removes
        self.holders: dict[bytes, set[bytes]] = {}  # record -> the records holding a reference on it
        self.stamped: list[bytes] = []               # records updateLastUsed stamped, in order
        self.unstamped = 0                       # records loaded without cache.createdAt

    def store(self, name: str) -> str:
        return os.path.normpath(os.path.join(self.rel, name))

    # -- containerd's answers -------------------------------------------------------------------

    def stat(self, key: bytes) -> bool:
        """The metadata snapshotter's Stat: the namespace's snapshot bucket and the backend row it names."""
        if self.cd is None or self.snapshotter is None:
            return True
        snaps = self.cd.bucket(b"v1", b"buildkit", b"snapshots", self.snapshotter)
        s = snaps.bucket(key) if snaps is not None else None
        if s is None:
            return False
        if self.backend is None:
            return True
        name = s.get(b"name")
        rows = self.backend.bucket(b"v1", b"snapshots")
        return name is not None and rows is not None and rows.bucket(name) is not None

    def has_content(self, digest: bytes) -> bool:
        if self.cd is None:
            return True
        blobs = self.cd.bucket(b"v1", b"buildkit", b"content", b"blob")
        return blobs is not None and blobs.bucket(digest) is not None

    def delete_lease(self, lid: bytes, why: Why, subject: bytes, stage: Stage) -> None:
        if self.cd is None:
            return
        leases = self.cd.bucket(b"v1", b"buildkit", b"leases")
        if leases is not None:
            leases.delete_bucket(lid, ("lease", why, subject, stage))

    # -- metadata_v2.db -------------------------------------------------------------------------

    def clear(self, rid: bytes, why: Why, subject: bytes, stage: Stage = Stage.WORKER) -> None:
        """MetadataStore.Clear: `_external/<id>`, the record's index keys, `_main/<id>`, in one transaction."""
        ov = self.md
        mark = ov.savepoint()
        ext = ov.bucket(b"_external")
        if ext is not None:
            ext.delete_bucket(rid, ("external", why, subject, stage))
        main = ov.bucket(b"_main")
        rec = main.bucket(rid) if main is not None else None
        if rec is None:
            return
        self.cleared.add(rid)
        try:
            values = MetaValues.decode(rid, rec)
        except ValueError:
            ov.rollback(mark)
            return
        index = ov.bucket(b"_index")
        if index is not None:
            for name in values.indexes():
                index.delete(_id(name) + b"::" + rid, ("index", why, subject, stage))
        main.delete_bucket(rid, ("record", why, subject, stage))

    def remove(self, rec: _Rec, why: Why, subject: bytes, stage: Stage = Stage.WORKER, *,
               remove_snapshot: bool = True) -> None:
        """cacheRecord.remove: its leases (with the snapshot), its metadata, then its references on its
        parents."""
        self.records.pop(rec.id, None)
        if remove_snapshot:
            for lid in (rec.id, rec.id + b"-variants"):
                self.delete_lease(lid, why if why in ROUTINE else Why.LEASE_OF_CLEARED_RECORD, subject, stage)
        self.clear(rec.id, why, subject, stage)
        self.release_refs(rec.id, rec.held, stage)
        self.holders.pop(rec.id, None)

    # -- references -----------------------------------------------------------------------------------------

    def ref_target(self, pid: bytes) -> bytes:
        """cm.get on a mutable record with an immutable partner hands out a reference on the partner."""
        p = self.records.get(pid)
        if p is not None and p.mutable and p.equal_immutable is not None:
            return p.equal_immutable
        return pid

    def hold(self, holder: bytes, pid: bytes) -> bytes:
        target = self.ref_target(pid)
        self.holders.setdefault(target, set()).add(holder)
        return target

    def release_refs(self, holder: bytes, targets: list[bytes], stage: Stage) -> None:
        """immutableRef.release of each reference: when no other reference that counts use is left on the
        record, updateLastUsed stamps it (usageCount + 1, lastUsedAt = now). Releasing twice, as getRecord's
        deferred release does after cacheRecord.remove, stamps twice."""
        for t in targets:
            held = self.holders.get(t)
            if held is not None:
                held.discard(holder)
            if not held and t in self.records:
                self.stamp(self.records[t], stage)

    def stamp(self, rec: _Rec, stage: Stage) -> None:
        main = self.md.bucket(b"_main")
        b = main.bucket(rec.id) if main is not None else None
        if b is None:
            return
        count = (rec.md.int64("cache.usageCount") or 0) + 1
        now = self.model.clock()
        tag = ("record-value", Why.LAST_USED_STAMPED, rec.id, stage)
        b.put(b"cache.usageCount", int_value(count), tag)
        b.put(b"cache.lastUsedAt", int_value(now), tag)
        rec.md.values["cache.usageCount"] = (count, "")
        rec.md.values["cache.lastUsedAt"] = (now, "")
        self.stamped.append(rec.id)

    def metadata(self, rid: bytes) -> MetaValues | None:
        """getMetadata: the record as the store holds it now (Store.Get ignores a decoding error)."""
        main = self.md.bucket(b"_main")
        b = main.bucket(rid) if main is not None else None
        if b is None:
            return None
        try:
            return MetaValues.decode(rid, b)
        except ValueError:
            return MetaValues(rid, {})

    def check_lazy(self, rec: _Rec) -> None:
        seen, todo = set(), [rec.id]
        while todo:
            rid = todo.pop()
            if rid in seen or rid not in self.records:
                continue
            seen.add(rid)
            r = self.records[rid]
            blob = r.md.string("cache.blob")
            if r.md.boolean("cache.blobonly") and blob and not self.has_content(_id(blob)):
                raise _LoadError(Why.LAZY_BLOB, rid, not_found=False)
            todo.extend(r.parents)

    def get_record(self, rid: bytes) -> _Rec:
        if rid in self.records:
            rec = self.records[rid]
            self.check_lazy(rec)
            return rec
        md = self.metadata(rid)
        if md is None:
            raise _LoadError(Why.RECORD_MISSING, rid)
        if rid in self.loading:
            # getRecord -> parentsOf -> get -> getRecord with no guard: the goroutine stack overflows
            cycle = self.loading[self.loading.index(rid):] + [rid]
            raise _Stop(Outcome.CRASHES, Stage.WORKER, self.store("metadata_v2.db"),
                        "runtime: goroutine stack exceeds 1000000000-byte limit / fatal error: stack overflow "
                        "(cache.parent cycle " + " -> ".join(c.decode(errors="replace") for c in cycle) + ")",
                        Cause.PARENT_CYCLE, tuple(cycle[:-1]))
        self.loading.append(rid)
        try:
            return self._load(rid, md)
        finally:
            self.loading.pop()

    def _load(self, rid: bytes, md: MetaValues) -> _Rec:
        """getRecord past the cache: parentsOf takes a reference on each parent; whatever fails after that
        releases them again (the deferred ``parents.release``)."""
        held: list[bytes] = []
        try:
            return self._load_held(rid, md, held)
        except _LoadError:
            self.release_refs(rid, held, Stage.WORKER)
            raise

    def _load_held(self, rid: bytes, md: MetaValues, held: list[bytes]) -> _Rec:
        parents = md.parents()
        for p in parents:
            try:
                self.get_record(p)
            except _LoadError as e:
                raise _LoadError(Why.PARENT_NOT_LOADED, e.subject if e.why is Why.PARENT_NOT_LOADED else p,
                                 e.not_found) from None
            held.append(self.hold(rid, p))
        em = md.string("cache.equalMutable")
        if em:
            try:
                mutable = self.get_record(_id(em))
            except _LoadError as e:
                if not e.not_found:
                    raise
                if not self.stat(md.snapshot_id()):
                    self.clear(rid, Why.PARTNER_NOT_LOADED, _id(em))
                    raise _LoadError(Why.PARTNER_NOT_LOADED, _id(em)) from None
                # "there may have been a crash while finalizing this ref": the key is emptied, the record kept
                self.md.bucket(b"_main").bucket(rid).put(b"cache.equalMutable", b"",
                                                         ("record-value", Why.EQUAL_MUTABLE_CLEARED, _id(em),
                                                          Stage.WORKER))
                md.values.pop("cache.equalMutable", None)
            else:
                rec = _Rec(rid, md, False, parents, equal_mutable=mutable.id, held=held)
                mutable.equal_immutable = rid
                self.records[rid] = rec
                return rec
        rec = _Rec(rid, md, not md.boolean("snapshot.committed"), parents, held=held)
        if md.kind() in ("merge", "diff"):
            rec.mutable = False         # the v0.10.{0,1} kludge (#2740)
        if md.boolean("cache.deleted"):
            self.remove(rec, Why.DELETED_FLAG, rid)
            raise _LoadError(Why.DELETED_FLAG, rid)
        if rec.mutable and not self.stat(rid):
            self.remove(rec, Why.SNAPSHOT_MISSING, rid)
            raise _LoadError(Why.SNAPSHOT_MISSING, rid)
        if not md.int64("cache.createdAt"):
            self.unstamped += 1             # initializeMetadata stamps the time of the start (noted, not written)
        self.records[rid] = rec
        self.check_lazy(rec)
        return rec

    def init(self) -> None:
        """cacheManager.init: metadata.Store.All, then getRecord for each record; failures are cleared."""
        name = self.store("metadata_v2.db")
        main = self.md.bucket(b"_main")
        ids: list[bytes] = []
        try:
            for rid, b in (main.items() if main is not None else ()):
                if isinstance(b, OBucket):
                    MetaValues.decode(rid, b)
                    ids.append(rid)
        except BadValue as e:
            raise _Stop(Outcome.REFUSES, Stage.WORKER, name, f"buildkitd: {e}", Cause.BAD_VALUE, (e.rid,),
                        e.key) from None
        for rid in ids:
            try:
                self.get_record(rid)
            except _LoadError as e:
                why = e.why if e.why is not Why.RECORD_MISSING else Why.PARENT_NOT_LOADED
                self.clear(rid, why, e.subject)
                for lid in (rid, rid + b"-variants"):
                    self.delete_lease(lid, Why.LEASE_OF_CLEARED_RECORD, rid, Stage.WORKER)

    def apply_fix(self, fix: Fix) -> None:
        """What `buildkit repair` does about a cause that stops the start: a bad value goes (the key then reads
        as unset, as an empty value does); the records of a parent cycle are cleared with their leases, which
        is what the start would do if getRecord could see the cycle (their descendants then go at the start)."""
        if fix.cause is Cause.BAD_VALUE:
            rec = self.md.bucket(b"_main", fix.records[0])
            if rec is not None and fix.key is not None:
                rec.delete(fix.key, ("record-value", Why.REPAIR_BAD_VALUE, fix.records[0], Stage.REPAIR))
        elif fix.cause is Cause.PARENT_CYCLE:
            for rid in fix.records:
                self.clear(rid, Why.REPAIR_PARENT_CYCLE, rid, Stage.REPAIR)
                for lid in (rid, rid + b"-variants"):
                    self.delete_lease(lid, Why.REPAIR_PARENT_CYCLE, rid, Stage.REPAIR)

    def drop_temporary_leases(self) -> None:
        if self.cd is None:
            return
        leases = self.cd.bucket(b"v1", b"buildkit", b"leases")
        for lid, b in list(leases.items()) if leases is not None else ():
            labels = b.bucket(b"labels") if isinstance(b, OBucket) else None
            if labels is not None and labels.get(b"buildkit/lease.temporary") is not None:
                leases.delete_bucket(lid, ("lease", Why.TEMPORARY_LEASE, lid, Stage.WORKER))

    def exists(self, ref: bytes) -> bool:
        """The worker half of cacheResultStorage.Exists: LoadRef -> cacheManager.Get."""
        if not ref or self.md is None:       # (metadata_v2.db not readable here: nothing is predicted for it)
            return True
        try:
            self.get_record(ref)
        except _LoadError:
            return False
        return True


class _Model:
    def __init__(self, root: Root, config: StartConfig, now: datetime.datetime, fixes: tuple[Fix, ...] = (),
                 previous: StartPlan | None = None, prune_rule=None, columns: dict | None = None, progress=None,
                 disk=None):
        self.prune_rule = prune_rule    # a gc.Rule: `buildctl prune` with it once the daemon has started
        self._disk = disk               # a gc.DiskStat: the root's file system as the daemon sees it
        self.previous = previous        # the start before this one: its overlays are this start's files
        self.columns = columns or {}    # store -> CacheColumns read by a check of the root (fsck): not read again
        self.progress = progress        # (done, total): releases replayed
        self.root = root
        self.config = config
        self.now = now
        self.fixes = fixes
        self.plan = StartPlan(root.path, Outcome.STARTS)
        self.workers: list[_Worker] = []
        self.climbing: list[bytes] = []     # the keys whose emptyBranchWithParents frames are open

    def note(self, kind: str, store: str | None, message: str) -> None:
        self.plan.notes.append(Note(kind, store, message))

    @property
    def disk(self):
        """disk.GetDiskStat of the root: given, or statfs of the root here."""
        if self._disk is None:
            self._disk = DiskStat.of(self.root.path)
        return self._disk

    def clock(self) -> int:
        """time.Now() for a value the daemon stamps: the replay's time, one microsecond later at each call, so
        that records stamped one after another are ordered as the daemon's clock orders them (a GC's ranking
        counts distinct lastUsedAt values)."""
        self._ticks = getattr(self, "_ticks", 0) + 1
        return unix_ns(self.now) + (self._ticks - 1) * 1000

    # -- opening --------------------------------------------------------------------------------

    def open_store(self, path: Path, *, safe: bool, stage: Stage) -> Overlay | None:
        """bolt.Open as buildkitd calls it. SafeOpen'd stores that fail to open are reset (None returned, the
        reset recorded); for the others an error refuses the start and a panic crashes it."""
        rel = os.path.relpath(path, self.root.path)
        if self.previous is not None and rel in self.previous.overlays:
            self.plan.overlays[rel] = self.previous.overlays[rel]
            return self.plan.overlays[rel]
        if not path.exists():
            if safe:
                return EmptyOverlay()
            return None
        try:
            meta, failure, panic = bbolt_open(path)
        except OpenError as e:
            if e.kind == "empty":           # bolt.Open initialises an empty file: a new store, nothing lost
                self.plan.overlays[rel] = EmptyOverlay()
                return self.plan.overlays[rel]
            self.note("unreadable", rel, f"{e}: what buildkitd does with this store is not predicted")
            self.plan.unreadable.append(rel)
            return None
        if failure is None:
            db = Database(str(path), meta=meta, lock=False)
            self._dbs.append(db)
            try:
                ov = Overlay(db)
            except CorruptionError as e:        # the root page: bolt.Open does not read it, the first access does
                raise _Stop(Outcome.CRASHES, stage, rel, f"panic: {e} (bbolt assertion at the first read of "
                                                         f"{path.name})", Cause.DAMAGE) from None
            self.plan.overlays[rel] = ov
            return ov
        if safe:
            self.plan.resets.append(rel)
            self.note("reset", rel, f"SafeOpen: bolt.Open fails ({failure}); buildkitd logs \"failed to open database "
                                    f"file {path.name}, resetting to empty\", renames it to {path.name}.<id>.bak and "
                                    "starts with an empty store")
            ov = EmptyOverlay()
            self.plan.overlays[rel] = ov
            self.plan.changes.append(Change(rel, "reset", (), b"", None, "store", Why.STORE_RESET, rel.encode(), stage))
            return ov
        raise _Stop(Outcome.CRASHES if panic else Outcome.REFUSES, stage, rel,
                    (f"panic: {failure}" if panic else f"buildkitd: {failure}"), Cause.OPEN)

    def run(self) -> StartPlan:
        self._dbs: list[Database] = []
        if self.previous is not None:
            self.plan.resets = list(self.previous.resets)
            self.plan.changes = Changes(c for c in self.previous.changes if c.op == "reset")
            self.plan.notes = list(self.previous.notes)
            self.plan.starts_replayed = self.previous.starts_replayed + 1
        try:
            self._start()
        except _Stop as s:
            self.plan.outcome, self.plan.stage, self.plan.store, self.plan.message = (
                s.outcome, s.stage, s.store, s.message)
            self.plan.cause, self.plan.cause_records, self.plan.cause_key = s.cause, s.records, s.key
        self._collect()
        if self.plan.outcome is Outcome.STARTS and self.plan.resets:
            self.plan.outcome = Outcome.RESETS
        return self.plan

    def _guard(self, stage: Stage, store: str, where: str):
        class _G:
            def __enter__(self):
                return self

            def __exit__(self, et, e, tb):
                if et is not None and issubclass(et, CorruptionError):
                    raise _Stop(Outcome.CRASHES, stage, store,
                                f"panic: {e} (bbolt assertion while reading the tree, in {where})",
                                Cause.DAMAGE) from None
                return False
        return _G()

    def _start(self) -> None:
        for w in self.root.workers:
            worker = _Worker(self, w.dir, w.worker_id.encode() if w.worker_id else None)
            self.workers.append(worker)
            backend = w.dir / "snapshots" / "metadata.db"
            if worker.snapshotter is not None:
                if backend.exists():
                    with self._guard(Stage.WORKER, worker.store("snapshots/metadata.db"), "the snapshotter"):
                        worker.backend = self.open_store(backend, safe=False, stage=Stage.WORKER)
                else:
                    self.note("absent", worker.store("snapshots/metadata.db"),
                              "not in this root: snapshot checks use containerdmeta.db alone")
                cd = w.dir / "containerdmeta.db"
                if cd.exists():
                    with self._guard(Stage.WORKER, worker.store("containerdmeta.db"), "containerd's metadata"):
                        worker.cd = self.open_store(cd, safe=False, stage=Stage.WORKER)
                else:
                    self.note("absent", worker.store("containerdmeta.db"),
                              "not in this root (a partial copy?): lease, snapshot and content effects are not "
                              "predicted; a daemon given this root creates it empty and clears every mutable record")
            md = self.open_store(w.dir / "metadata_v2.db", safe=False, stage=Stage.WORKER)
            if md is None:
                continue            # not readable here: this worker's records are not predicted
            worker.md = md
            for fix in self.fixes:
                if fix.worker == worker.rel:
                    with self._guard(Stage.REPAIR, worker.store("metadata_v2.db"), "the repair"):
                        worker.apply_fix(fix)
            with self._guard(Stage.WORKER, worker.store("metadata_v2.db"), "metadata.(*Store).All / cacheManager.init"):
                worker.init()
            if worker.unstamped:
                self.note("timing", worker.store("metadata_v2.db"),
                          f"{worker.unstamped} record(s) without cache.createdAt: buildkitd stamps them with the time "
                          "of the start (initializeMetadata; not written by the replay)")
            with self._guard(Stage.WORKER, worker.store("containerdmeta.db"), "base.NewWorker"):
                worker.drop_temporary_leases()
        cache_path = self.root.path / "cache.db"
        cache = self.open_store(cache_path, safe=True, stage=Stage.CACHE_OPEN)
        if cache is not None:
            self.plan.overlays.setdefault("cache.db", cache)
            with self._guard(Stage.CACHE_OPEN, "cache.db", "bboltcachestorage.NewStore"):
                for name in CACHE_TOP:
                    cache.root.create_bucket_if_not_exists(name, ("bucket", Why.TOP_BUCKET_CREATED, name,
                                                                  Stage.CACHE_OPEN))
        history_path = self.root.path / "history.db"
        history = self.open_store(history_path, safe=True, stage=Stage.HISTORY_OPEN)
        if history is not None:
            self.plan.overlays.setdefault("history.db", history)
        if cache is not None:
            with self._guard(Stage.RELEASE, "cache.db", "solver.(*cacheManager).ReleaseUnreferenced"):
                self.release_unreferenced(cache)
        if history is not None:
            with self._guard(Stage.HISTORY, "history.db", "history.(*Queue).clearOrphans"):
                self.history(history)
        if self.config.gc:
            for worker in [w for w in self.workers if w.md is not None]:
                with self._guard(Stage.STARTUP_GC, worker.store("metadata_v2.db"), "the start-up GC"):
                    self.startup_gc(worker)
            for worker in [w for w in self.workers if w.md is not None]:
                with self._guard(Stage.CONTAINERD_GC, worker.store("containerdmeta.db"), "containerd's GC"):
                    self.containerd_gc(worker)
            # Controller.gc: "gc cleaned up N bytes" starts throttledReleaseUnreferenced, which (throttle.After)
            # runs at once and only then waits its 5 minutes
            if cache is not None and sum(res.reclaimed for _, res in self.plan.gc) > 0:
                with self._guard(Stage.LATER_RELEASE, "cache.db", "solver.(*cacheManager).ReleaseUnreferenced"):
                    self.release_unreferenced(cache, Stage.LATER_RELEASE)
        if self.prune_rule is not None:
            self.prune(self.prune_rule)

    # -- cache.db -------------------------------------------------------------------------------

    def result_exists(self, rid: bytes) -> Why | None:
        """None when cacheResultStorage.Exists is true, else why it is false."""
        parts = rid.split(b"::")
        if len(parts) != 2:
            return Why.RESULT_UNLOADABLE
        worker = next((w for w in self.workers if w.worker_id == parts[0]), None)
        if worker is None:
            return Why.RESULT_UNLOADABLE
        if worker.exists(parts[1]):
            return None
        return Why.RESULT_OF_CLEARED_RECORD if parts[1] in worker.cleared else Why.RESULT_UNLOADABLE

    release_stage = Stage.RELEASE

    def release_unreferenced(self, ov: Overlay, stage: Stage = Stage.RELEASE) -> None:
        """ReleaseUnreferenced: Walk over `_links`, WalkResults of each key, Release of every result whose ref
        does not exist, each in its own transaction. An undecodable result ends the walk (its error is logged)."""
        self.release_stage = stage
        cols = self._columns(ov)
        bulk = self._release_bulk(ov, cols) if cols is not None else None
        if bulk is not None:
            if len(bulk):
                ov.defer(bulk)
            if self.progress is not None:
                self.progress(len(bulk), len(bulk))
            return
        order = self._release_order(ov) if cols is not None else None
        if order is not None:
            for i, rid in enumerate(order):
                self._release_one(ov, rid, self.result_exists(rid))
                if self.progress is not None and not i & 1023:
                    self.progress(i, len(order))
            return
        links = ov.bucket(LINKS)
        ids = [k for k, v in links.items() if isinstance(v, OBucket)] if links is not None else []
        visited: set[bytes] = set()
        for kid in ids:
            results = ov.bucket(RESULT)
            rb = results.bucket(kid) if results is not None else None
            found: list[bytes] = []
            for rkey, value in (rb.items() if rb is not None else ()):
                decoded = _result_id(value)
                if decoded is None:
                    self.note("release-stopped", "cache.db",
                              f"_result/{kid.decode(errors='replace')}/{rkey.decode(errors='replace')} does not "
                              "decode: ReleaseUnreferenced stops there, results after it are not released")
                    return
                found.append(decoded)
            for rid in found:
                if rid in visited:
                    continue
                visited.add(rid)
                self._release_one(ov, rid, self.result_exists(rid))

    def _release_one(self, ov: Overlay, rid: bytes, why: Why | None) -> None:
        """One Release in its own transaction (rolled back when emptyBranchWithParents fails)."""
        if why is None:
            return
        mark = ov.savepoint()
        try:
            self.release(ov, rid, why)
        except _InvalidKey:
            ov.rollback(mark)
        except (CorruptionError, _Stop):
            ov.rollback(mark)       # the panic or fatal error ends the process inside this transaction
            raise

    def _columns(self, ov: Overlay):
        """cache.db's columns, from one bulk pass over the file (cachecolumns.py), for the fast paths of
        ReleaseUnreferenced; None when the walk must be replayed key by key: the store is damaged (the walk's
        reads may crash), a result does not decode or names another id, or an entry has a shape BuildKit does
        not write (link keys with their zero values spelled out excepted: the walk never reads link keys, and
        emptyBranchWithParents splits them at their one '@' as any other). With the columns, cache.db's four
        top-level buckets are primed from them (``OBucket.prime``), so the releases read no page either; the
        primers are made the first time a bucket asks (a release done in bulk reads none)."""
        from .cachecolumns import load_cache_columns
        if ov.db is None:
            return None
        cols: Any = getattr(ov, "columns", None)     # the columns of an earlier start of this replay
        if cols is None:
            cols = self.columns.get("cache.db")      # what a check of the same tree read already (fsck)
            if cols is None or cols.tree != (ov.db.meta.index, ov.db.meta.txid) or not cols.sound:
                met: list = []     # damage makes the columns unsound: the walk below then meets it key by key
                cols = load_cache_columns(ov.db, on_damage=met.append)
            if not cols.sound or cols.result_errors or cols.anomalies or cols.link_errors:
                cols = False
            else:
                made = _Primers(cols)
                for name in CACHE_TOP:
                    top = ov.bucket(name)
                    if top is not None and not top.touched():
                        top.prime(made.of(name))
            ov.columns = cols  # type: ignore[attr-defined]  # kept on the overlay for the next start
        return cols or None

    def _release_bulk(self, ov: Overlay, cols):
        """The whole pass computed on the columns (release.py), when nothing has changed cache.db yet but
        NewStore's creation of its top-level buckets; None otherwise, or when the columns cannot decide."""
        import numpy as np

        from .graph import sorted_unique
        from .release import release_on_columns
        if ov._pending or any(m.op != "create-bucket" or m.path for m in ov.journal):
            return None
        reasons = (Why.RESULT_UNLOADABLE, Why.RESULT_OF_CLEARED_RECORD, Why.EMPTY_BRANCH)
        why_of = np.full(len(cols.names), -1, np.int64)
        codes = sorted_unique(cols.result_rid)
        if not any(w.worker_id for w in self.workers):
            why_of[codes] = 0       # no worker: every result's ref fails to load
        else:
            for code in codes.tolist():
                why = self.result_exists(cols.names.bytes(code))
                if why is not None:
                    why_of[code] = reasons.index(why)
        return release_on_columns(cols, why_of, reasons, 2, self.release_stage)

    def _release_order(self, ov: Overlay) -> list[bytes] | None:
        """The results ReleaseUnreferenced releases, in the order its walk meets them, from the columns
        (``_columns``) instead of a lookup per key, less what earlier starts of this replay released."""
        from .graph import sorted_unique

        cols: Any = ov.columns  # type: ignore[attr-defined]
        text = cols.names.all_bytes()
        # what earlier starts of this replay removed already
        gone_results = {(m.path[1], m.key) for m in ov.journal if m.op == "delete" and len(m.path) == 2
                        and m.path[0] == RESULT}
        gone_links = {m.key for m in ov.journal if m.op == "delete-bucket" and m.path == (LINKS,)}
        ids = sorted((text[c], c) for c in sorted_unique(cols.links_ids).tolist())
        rank = {c: i for i, (name, c) in enumerate(ids) if name not in gone_links}
        unloadable = {}
        for code in sorted_unique(cols.result_rid).tolist():
            rid = text[code]
            if self.result_exists(rid) is not None:
                unloadable[code] = rid
        if not unloadable:
            return []
        pairs = []
        for kid, code in zip(cols.result_kid.tolist(), cols.result_rid.tolist()):
            if code in unloadable and kid in rank:
                rid = unloadable[code]
                if not gone_results or (text[kid], rid) not in gone_results:
                    pairs.append((rank[kid], rid))
        order, seen = [], set()
        for _, rid in sorted(pairs):
            if rid not in seen:
                seen.add(rid)
                order.append(rid)
        return order

    def release(self, ov: Overlay, rid: bytes, why: Why) -> None:
        byresult = ov.bucket(BYRESULT)
        b = byresult.bucket(rid) if byresult is not None else None
        if b is None:
            return          # ErrNotFound, ignored by the caller
        tops = ov.bucket(RESULT), ov.bucket(LINKS), byresult, ov.bucket(BACKLINKS)     # the same all along
        for kid in b.keys():
            results = tops[0].bucket(kid)
            if results is None:
                continue
            results.delete(rid, ("result", why, rid, self.release_stage))
            ids = byresult.bucket(rid)
            if ids is None:
                continue
            ids.delete(kid, ("byresult", why, rid, self.release_stage))
            if ids.is_empty():
                byresult.delete_bucket(rid, ("byresult", why, rid, self.release_stage))
            self.empty_branch(tops, kid)

    def empty_branch(self, tops: tuple, kid: bytes) -> None:
        """emptyBranchWithParents: a key with no results and no links goes, with the links that point at it.
        ``tops``: the `_result`, `_links`, `_byresult` and `_backlinks` buckets."""
        result_top, links_top, _, back_top = tops
        results = result_top.bucket(kid)
        if results is None:
            return
        links = links_top.bucket(kid)
        if not results.is_empty() or (links is not None and not links.is_empty()):
            return
        climbing = self.climbing
        if kid in climbing:
            # back at a key whose frame has not finished: nothing between changes, so Go recurses until its
            # goroutine stack overflows (a fatal error, not a panic: the daemon exits 2, at every start)
            cycle = climbing[climbing.index(kid):] + [kid]
            climbing.clear()
            raise _Stop(Outcome.CRASHES, self.release_stage, "cache.db",
                        "runtime: goroutine stack exceeds 1000000000-byte limit / fatal error: stack overflow "
                        "(emptyBranchWithParents, _backlinks cycle " + " -> ".join(_text(c) for c in cycle) + ")",
                        Cause.LINK_CYCLE, tuple(cycle[:-1]))
        climbing.append(kid)
        try:
            self._empty_branch(tops, kid)
        finally:
            if climbing and climbing[-1] == kid:
                climbing.pop()

    def _empty_branch(self, tops: tuple, kid: bytes) -> None:
        result_top, links_top, _, back_top = tops
        why = (Why.EMPTY_BRANCH, kid, self.release_stage)
        back = back_top.bucket(kid)
        if back is not None:
            for parent in back.keys():
                sub = links_top.bucket(parent)
                if sub is not None:
                    doomed = []
                    for lk in sub.keys():
                        parts = lk.split(b"@")
                        if len(parts) != 2:
                            raise _InvalidKey(lk)
                        if parts[1] == kid:
                            doomed.append(lk)
                    for lk in doomed:
                        sub.delete(lk, ("link",) + why)
                    if sub.is_empty():
                        sr = result_top.bucket(parent)
                        if sr is None or sr.is_empty():
                            links_top.delete_bucket(parent, ("links", Why.EMPTY_BRANCH, parent, self.release_stage))
                self.empty_branch(tops, parent)
            back_top.delete_bucket(kid, ("backlinks",) + why)
        links_top.delete_bucket(kid, ("links",) + why)
        result_top.delete_bucket(kid, ("results",) + why)

    # -- history.db -----------------------------------------------------------------------------

    def history(self, ov: Overlay) -> None:
        from .history import decode_record
        version = ov.bucket(b"_version")
        v = version.get(b"version") if version is not None else None
        try:
            current = int(v.decode()) if v is not None else 0
        except (UnicodeDecodeError, ValueError):
            current = 0
        records = ov.bucket(b"_records")
        if current <= 1:
            if records is not None and not records.is_empty():
                self.note("unmodelled", "history.db", "history.db needs the v2 migration (its leases move to the "
                                                      "buildkit_history namespace): not replayed")
            why = ("history-version", Why.HISTORY_VERSION, b"version", Stage.HISTORY)
            ov.root.create_bucket_if_not_exists(b"_version", why).put(b"version", b"2", why)
        if records is None:
            return
        hleases = self._history_leases()
        decoded = []
        orphans = []
        for key, dt in records.items():
            if not isinstance(dt, bytes):
                continue
            rec = decode_record(key, dt)
            if rec.decode_error:
                self.note("history-stopped", "history.db", f"_records/{key.decode(errors='replace')} does not "
                                                           "decode: clearOrphans and gc stop there")
                return
            # the lease is looked up by the key, the deletion goes by the record's own Ref
            decoded.append((_id(rec.ref or ""), rec))
            if hleases is not None:
                lease = hleases.bucket(b"ref_" + key)
                if lease is None or not _lease_resources(lease):
                    orphans.append(_id(rec.ref or ""))
        gone = set()
        for ref in orphans:
            if not self._delete_history(ov, ref, Why.HISTORY_ORPHAN):
                break       # deleting a missing lease fails the transaction, and clearOrphans returns
            gone.add(ref)
        kept = [(k, r) for k, r in decoded if not r.pinned and k not in gone]
        limit = self.config.history_max_entries
        if len(kept) < limit:
            return
        kept.sort(key=lambda kr: _completed_ns(kr[1]), reverse=True)
        cutoff = unix_ns(self.now - self.config.history_max_age)
        for key, rec in kept[limit:]:
            if cutoff > _completed_ns(rec) and not self._delete_history(ov, key, Why.HISTORY_RETENTION):
                return      # the lease is missing: gc returns the error

    def _history_leases(self) -> OBucket | None:
        for w in self.workers:
            if w.cd is not None:
                return w.cd.bucket(b"v1", b"buildkit_history", b"leases")
        return None

    def _delete_history(self, ov: Overlay, key: bytes, why: Why) -> bool:
        """Queue.delete: the record and its `ref_<key>` lease in one transaction, which fails (nothing
        deleted) when the lease does not exist."""
        leases = self._history_leases()
        if leases is not None:
            if leases.bucket(b"ref_" + key) is None:
                return False
            leases.delete_bucket(b"ref_" + key, ("lease", why, key, Stage.HISTORY))
        ov.bucket(b"_records").delete(key, ("history-record", why, key, Stage.HISTORY))
        return True

    # -- the start-up GC ------------------------------------------------------------------------

    def startup_gc(self, worker: _Worker) -> None:
        """Controller.gc: the worker's policy, rule by rule (gc.py)."""
        rules = worker_policy(self.config, self.disk)
        if rules:
            self.plan.gc.append((Stage.STARTUP_GC, collect(self, worker, rules, Stage.STARTUP_GC,
                                                            GC_WHY)))

    def prune(self, rule) -> None:
        """`buildctl prune` on the started daemon: the rule on every worker, containerd's GC, and the
        release of the results whose records went (Controller.Prune's deferred ReleaseUnreferenced)."""
        removed = False
        for worker in [w for w in self.workers if w.md is not None]:
            with self._guard(Stage.PRUNE, worker.store("metadata_v2.db"), "cacheManager.Prune"):
                res = collect(self, worker, [rule], Stage.PRUNE, GC_WHY)
            self.plan.gc.append((Stage.PRUNE, res))
            removed = removed or bool(res.removed)
            with self._guard(Stage.CONTAINERD_GC, worker.store("containerdmeta.db"), "containerd's GC"):
                self.containerd_gc(worker)
        cache = self.plan.overlays.get("cache.db")
        if removed and cache is not None:
            with self._guard(Stage.LATER_RELEASE, "cache.db", "solver.(*cacheManager).ReleaseUnreferenced"):
                self.release_unreferenced(cache, Stage.LATER_RELEASE)

    def partnerless(self, worker: _Worker, stage: Stage) -> None:
        """DiskUsage's get() of each record of unknown size: a mutable record with no immutable partner is
        committed to a temporary record and released, and without a retain policy both go (rule 12)."""
        for rid, rec in sorted(worker.records.items()):
            if not rec.mutable or rec.equal_immutable is not None:
                continue
            if rec.md.int64("snapshot.size") is not None:
                continue
            if rec.md.int64("cache.cachePolicy") == 1:
                continue        # retained (a cache mount): released, kept; nothing written (cases 01, 08)
            worker.remove(rec, Why.PARTNERLESS_MUTABLE, rid, stage)

    def containerd_gc(self, worker: _Worker) -> None:
        if worker.cd is None:
            return
        backends = {}
        if worker.backend is not None and worker.snapshotter is not None:
            backends[worker.snapshotter.decode()] = worker.backend.root.plain()
        live = {r.md.snapshot_id() for r in worker.records.values()}
        for rm in containerd_collect(worker.cd.root.plain(), backends, now=self.now):
            ov = worker.cd if rm.store == "containerdmeta.db" else worker.backend
            if ov is None:
                continue
            parent = ov.bucket(*rm.path[:-1])
            if parent is None:
                continue
            why = Why.SNAPSHOT_OF_LIVE_RECORD if rm.kind == "snapshot" and rm.name in live else Why.UNREFERENCED
            tag = (rm.kind, why, rm.name, Stage.CONTAINERD_GC)
            if rm.is_bucket:
                parent.delete_bucket(rm.path[-1], tag)
            else:
                parent.delete(rm.path[-1], tag)

    # -- the plan -------------------------------------------------------------------------------

    def _collect(self) -> None:
        seen = set()
        for rel, ov in self.plan.overlays.items():
            if id(ov) in seen:
                continue
            seen.add(id(ov))
            for part in ov.journal.parts():
                if not isinstance(part, list):
                    self.plan.changes.extend(_ChangeTable(rel, part))
                    continue
                for m in part:
                    what, why, subject, stage = m.why
                    self.plan.changes.append(Change(rel, m.op, m.path, m.key, m.value, what, why, subject, stage))

    def close(self) -> None:
        for db in getattr(self, "_dbs", []):
            db.close()


class _Primers:
    """cachecolumns.primers of one store's columns, made when a primed bucket is first asked for a key."""

    def __init__(self, cols):
        self.cols = cols
        self.made: dict | None = None

    def of(self, name: bytes):
        def children(key: bytes):
            if self.made is None:
                from .cachecolumns import primers
                self.made = primers(self.cols)
            return self.made[name](key)
        return children


class _InvalidKey(Exception):
    """emptyBranchWithParents met a link key without exactly one '@': the release's transaction fails."""


def _result_id(value) -> bytes | None:
    """json.Unmarshal into solver.CacheResult: the ID (case-insensitive field), or None when it fails."""
    if not isinstance(value, bytes):
        return None
    try:
        doc = _json(value)
    except ValueError:
        return None
    if doc is None:
        return b""
    if not isinstance(doc, dict):
        return None
    rid = ""
    for name, x in doc.items():
        low = name.lower()
        if low == "id":
            if x is not None and not isinstance(x, str):
                return None
            rid = x or ""
        elif low == "createdat" and x is not None:
            if not isinstance(x, str) or parse_rfc3339(x.encode("utf-8", "surrogateescape")) is None:
                return None
    return _id(rid)


def _completed_ns(rec) -> int:
    """A build record's CompletedAt in Unix nanoseconds; a missing one is Go's zero Timestamp, the epoch."""
    return (parse_rfc3339(rec.completed_at.encode()) if rec.completed_at else None) or 0


def _lease_resources(lease: OBucket) -> int:
    n = 0
    for name, sub in lease.items():
        if name in (b"content", b"snapshots", b"ingests") and isinstance(sub, OBucket):
            for _, x in sub.items():
                n += sum(1 for _ in x.items()) if isinstance(x, OBucket) else 1
    return n


_NOT_KNOWN = {"permission", "io", "not-a-file", "directory", "empty"}


def bbolt_open(path: Path) -> tuple[int | None, str | None, bool]:
    """What ``bolt.Open`` (bbolt v1.5, read-write) makes of a file: (the meta it reads through, the failure
    message or None, whether the failure is a panic). It finds the page size from meta 0 or by probing for
    meta 1, validates magic, version and checksum, takes the valid meta with the higher txid, and then reads
    that meta's freelist page: a page that is not a freelist panics (SafeOpen recovers it, plain Open not)."""
    from ..storage.meta import META1_PROBE_OFFSETS, decode_meta
    from ..storage.source import Source
    try:
        src = Source(str(path), lock=False)
    except OpenError as e:
        if e.kind in _NOT_KNOWN:
            raise                   # says nothing about what bbolt would make of the file
        return None, str(e), False
    try:
        metas = []
        m0 = decode_meta(src.data, 0, 0, src.size)
        if m0 is not None and m0.valid:
            metas.append(m0)
            m1 = decode_meta(src.data, m0.page_size, 1, src.size)
        else:
            m1 = next((c for c in (decode_meta(src.data, off, 1, src.size) for off in META1_PROBE_OFFSETS)
                       if c is not None and c.valid and c.page_size == c.offset), None)
        if m1 is not None and m1.valid:
            metas.append(m1)
        if not metas:
            return None, "invalid database", False
        meta = max(metas, key=lambda m: m.txid)
        if meta.has_freelist:
            off = meta.freelist * meta.page_size
            flags = int.from_bytes(src.data[off + 8:off + 10], "little") if off + 16 <= src.size else 0
            if flags != 0x10:
                names = {0x01: "branch", 0x02: "leaf", 0x04: "meta"}
                return meta.index, (f"invalid freelist page: {meta.freelist}, page type is "
                                    f"{names.get(flags, f'unknown<{flags:02x}>')}"), True
        return meta.index, None, False
    finally:
        src.close()


def write_start(plan: StartPlan, out: str | os.PathLike) -> list[str]:
    """A copy of the root's stores as the start leaves them, under ``out`` (which must not exist): stores the
    start changes are rewritten from their overlays (which hold the transactions committed before a refusal
    or crash too), the others copied byte for byte; a reset store is written new and empty beside a copy of
    the original named ``<name>.boltkit-simulated.bak``. A damaged store whose committed changes cannot be
    written around its damage is copied unchanged (a note says so). Also copies each worker's ``workerid``.
    Returns the files written, relative to ``out``."""
    import shutil
    root, dest = Path(plan.root), Path(out)
    dest.mkdir(parents=True, exist_ok=False)
    try:
        return _write_start(plan, root, dest)
    except BaseException as e:        # a full disk, a signal: the new directory goes whole, nothing half-written
        shutil.rmtree(dest, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, BoltkitError):
            from ..write.destination import output_error
            raise output_error(str(dest), e) from None
        raise


def _write_start(plan: StartPlan, root: Path, dest: Path) -> list[str]:
    import shutil
    from ..repair.apply import write_overlay
    found = discover(root)
    written = []
    rels = [os.path.relpath(s.path, root) for s in found.stores]
    rels += [os.path.relpath(w.dir / "workerid", root) for w in found.workers if (w.dir / "workerid").is_file()]
    rels += [r for r in plan.overlays if r not in rels]
    for rel in rels:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        ov = plan.overlays.get(rel)
        if rel in plan.resets and (root / rel).exists():
            shutil.copyfile(root / rel, str(target) + ".boltkit-simulated.bak")
            written.append(rel + ".boltkit-simulated.bak")
        if ov is not None and (ov.changed or ov.db is None):
            try:
                write_overlay(ov, str(target))
                written.append(rel)
                continue
            except CorruptionError:
                plan.notes.append(Note("unwritable", rel, "the changes committed before the crash sit in a damaged "
                                                          "file: copied unchanged"))
        if (root / rel).exists():
            shutil.copyfile(root / rel, target)
        else:
            continue
        written.append(rel)
    return written


def simulate_start(root: str | os.PathLike, *, config: StartConfig | None = None,
                   now: datetime.datetime | None = None, fixes: tuple[Fix, ...] = (),
                   until_stable: bool = False, prune=None, columns: dict | None = None,
                   progress=None, disk=None) -> StartPlan:
    """Replay buildkitd's next start on the root (read-only): the outcome and every change it makes.
    ``prune`` (a gc.Rule): then `buildctl prune` with it on the started daemon (the plan's ``gc`` passes).
    ``disk`` (a gc.DiskStat): the root's file system sizes the GC's percentages and minFreeSpace read (the
    root's own by default; a copy examined elsewhere needs its original's).
    ``until_stable``: replay start after start until one changes nothing (some effects take two starts: a
    record whose parent the start-up GC removed goes at the following start). The plan's overlays hold each
    store's state afterwards (``write_start``); release the plan's files with ``close_plan``. ``columns``:
    {"cache.db": CacheColumns} a check read already; used only when they are of the tree the start opens.
    ``progress(done, total)``: the results of cache.db released (the bulk of a start's work), first start."""
    found = discover(root)
    config = config or StartConfig()
    now = now or datetime.datetime.now(datetime.timezone.utc)
    with gc_paused():
        return _simulate(found, config, now, fixes, until_stable, prune, columns, progress, disk)


def _simulate(found, config, now, fixes, until_stable, prune, columns, progress, disk) -> StartPlan:
    models = [_Model(found, config, now, fixes, prune_rule=prune, columns=columns, progress=progress, disk=disk)]
    plan = models[0].run()
    while until_stable and plan.starts and plan.starts_replayed < 8:
        before = sum(len(ov.journal) for ov in plan.overlays.values())
        models.append(_Model(found, config, now, (), previous=plan, disk=disk))
        nxt = models[-1].run()
        if sum(len(ov.journal) for ov in nxt.overlays.values()) == before or not nxt.starts:
            if not nxt.starts:
                plan = nxt
            break
        plan = nxt
    plan._models = models        # keeps the files open for the overlays
    return plan


def close_plan(plan: StartPlan) -> None:
    for model in getattr(plan, "_models", []):
        model.close()


__all__ = ["simulate_start", "write_start", "close_plan", "StartPlan", "Change", "Note", "Outcome", "Stage", "Why",
           "Cause", "Fix", "ROUTINE", "bbolt_open", "Changes"]
