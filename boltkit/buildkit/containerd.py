"""containerdmeta.db (the OCI worker's containerd metadata): the leases of the `buildkit` namespace, which
are the GC roots for everything metadata_v2.db references (reference/buildkit-stores.md §5.2).

Ids (lease ids, snapshot keys and names, label names) are the file's bytes, as metadata_v2.db's record ids are:
compared with them exactly, rendered only where they are shown."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import CorruptionError
from ..storage import Database

TEMPORARY = b"buildkit/lease.temporary"
SUFFIXES = (b"-variants", b"-view")


@dataclass
class Lease:
    id: bytes
    labels: set[bytes] = field(default_factory=set)
    resources: int = 0          # snapshots + content + ingests it holds

    @property
    def temporary(self) -> bool:
        return TEMPORARY in self.labels

    @property
    def record(self) -> bytes:
        """The record id a BuildKit lease is named after (`<id>`, `<id>-variants`, `<id>-view`)."""
        for s in SUFFIXES:
            if self.id.endswith(s):
                return self.id[:-len(s)]
        return self.id


def leases(db: Database, namespace: bytes = b"buildkit", on_damage=None) -> dict[bytes, Lease]:
    """The leases of a containerdmeta.db namespace, by id: labels, and how many resources each holds."""
    tree = db.tree

    def fill(lease: Lease, lb) -> None:
        for sub in tree.items(lb, on_damage=on_damage):
            if not sub.is_bucket:
                continue
            child = tree.child(lb, sub)
            if sub.key == b"labels":
                lease.labels = {i.key for i in tree.items(child, on_damage=on_damage)}
            else:
                lease.resources += _count_leaves(tree, child, on_damage)
    return _each(db, _bucket_at(db, (b"v1", namespace, b"leases"), on_damage), Lease, fill, on_damage)


def _count_leaves(tree, bucket, on_damage) -> int:
    n = 0
    for _parent, child, _item in tree.walk(bucket, on_damage=on_damage):
        if child is None:
            n += 1
    return n


# -- snapshots ------------------------------------------------------------------------------------
#
# Two stores describe a snapshot: containerdmeta.db maps BuildKit's key to a backend name and a parent
# key (`v1/<ns>/snapshots/<snapshotter>/<key>/{name, parent, children/, labels/, createdat, updatedat}`),
# and the snapshotter's own snapshots/metadata.db holds the backend row with its kind
# (`v1/snapshots/<name>/{id, kind, parent, ...}`) (reference/buildkit-stores.md §5.2, §5.3). containerd's
# metadata snapshotter answers Stat(key) only when both exist.

KIND_VIEW, KIND_ACTIVE, KIND_COMMITTED = 1, 2, 3
KIND_NAMES = {KIND_VIEW: "view", KIND_ACTIVE: "active", KIND_COMMITTED: "committed"}
WORKER_PREFIXES = ("runc-", "containerd-")


def worker_snapshotter(worker_dir: str) -> str | None:
    """The snapshotter a worker directory is named after (`runc-overlayfs` -> `overlayfs`,
    `runc-fuse-overlayfs` -> `fuse-overlayfs`); None for a directory not named `<worker>-<snapshotter>`
    (Docker's graphdriver worker keeps its snapshots in snapshots.db instead)."""
    for prefix in WORKER_PREFIXES:
        if worker_dir.startswith(prefix) and len(worker_dir) > len(prefix):
            return worker_dir[len(prefix):]
    return None


@dataclass
class Snapshot:
    """One snapshot of a containerdmeta.db namespace, under BuildKit's key."""
    key: bytes
    name: bytes | None = None               # backend key in the snapshotter's metadata.db (`buildkit/<seq>/<key>`)
    parent: bytes = b""                     # the parent snapshot's key, empty for none
    children: set[bytes] = field(default_factory=set)
    labels: dict[bytes, bytes] = field(default_factory=dict)


@dataclass
class BackendSnapshot:
    """One row of the snapshotter's own snapshots/metadata.db."""
    name: bytes
    id: int | None = None                   # directory snapshots/snapshots/<id>
    kind: int | None = None                 # KIND_VIEW, KIND_ACTIVE, KIND_COMMITTED
    parent: bytes = b""                     # the parent's backend name

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, f"unknown ({self.kind})") if self.kind is not None else "unknown (None)"


def _bucket_at(db: Database, path: tuple[bytes, ...], on_damage):
    """The bucket at ``path``, or None when a step is missing, is a plain value, or cannot be read (damage is
    reported to ``on_damage``, or raised without one)."""
    tree = db.tree
    b = db.root()
    try:
        for name in path:
            item = tree.get(b, name)
            if item is None or not item.is_bucket:
                return None
            b = tree.child(b, item)
    except CorruptionError as e:
        if on_damage is None:
            raise
        on_damage(e)
        return None
    return b


def _each(db: Database, b, make, fill, on_damage) -> dict:
    """``make(name)`` for every sub-bucket of ``b`` (None: no bucket, nothing), completed by ``fill(obj,
    sub_bucket)``; damage inside one is reported to ``on_damage`` (or raised) and leaves it as far as it got."""
    out: dict = {}
    if b is None:
        return out
    tree = db.tree
    for item in tree.items(b, on_damage=on_damage):
        if not item.is_bucket:
            continue
        obj = out[item.key] = make(item.key)
        try:
            fill(obj, tree.child(b, item))
        except CorruptionError as e:
            if on_damage is None:
                raise
            on_damage(e)
    return out


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def snapshotters(db: Database, namespace: bytes = b"buildkit", on_damage=None) -> list[str]:
    """Names of the snapshotter buckets of a containerdmeta.db namespace."""
    b = _bucket_at(db, (b"v1", namespace, b"snapshots"), on_damage)
    if b is None:
        return []
    return [_text(it.key) for it in db.tree.items(b, on_damage=on_damage) if it.is_bucket]


def snapshots(db: Database, snapshotter: str, namespace: bytes = b"buildkit", on_damage=None
              ) -> dict[bytes, Snapshot]:
    """The snapshots of ``v1/<namespace>/snapshots/<snapshotter>`` in a containerdmeta.db, by key; empty when the
    bucket does not exist. Damage skips what it hides (reported to ``on_damage``, raised without one)."""
    tree = db.tree

    def fill(snap: Snapshot, sb) -> None:
        for sub in tree.items(sb, on_damage=on_damage):
            if sub.is_bucket:
                if sub.key in (b"children", b"labels"):
                    child = tree.child(sb, sub)
                    entries = {i.key: db.value(i) for i in tree.items(child, on_damage=on_damage)
                               if not i.is_bucket}
                    if sub.key == b"children":
                        snap.children = set(entries)
                    else:
                        snap.labels = entries
            elif sub.key == b"name":
                snap.name = db.value(sub)
            elif sub.key == b"parent":
                snap.parent = db.value(sub)
    b = _bucket_at(db, (b"v1", namespace, b"snapshots", snapshotter.encode()), on_damage)
    return _each(db, b, Snapshot, fill, on_damage)


def _uvarint(b: bytes) -> int | None:
    n = shift = 0
    for i, byte in enumerate(b):
        if i >= 10:
            return None
        n |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return n if i == len(b) - 1 else None
        shift += 7
    return None


def backend_snapshots(db: Database, on_damage=None) -> dict[bytes, BackendSnapshot]:
    """The rows of a snapshotter's snapshots/metadata.db (`v1/snapshots/<name>`), by backend name."""
    tree = db.tree

    def fill(row: BackendSnapshot, sb) -> None:
        for sub in tree.items(sb, on_damage=on_damage):
            if sub.is_bucket:
                continue
            v = db.value(sub)
            if sub.key == b"id":
                row.id = _uvarint(v)
            elif sub.key == b"kind":
                row.kind = v[0] if len(v) == 1 else None
            elif sub.key == b"parent":
                row.parent = v
    return _each(db, _bucket_at(db, (b"v1", b"snapshots"), on_damage), BackendSnapshot, fill, on_damage)
