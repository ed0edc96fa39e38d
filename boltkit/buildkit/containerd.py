"""containerdmeta.db (the OCI worker's containerd metadata): the leases of the `buildkit` namespace, which
are the GC roots for everything metadata_v2.db references (reference/buildkit-stores.md §5.2)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import CorruptionError
from ..storage import Database

TEMPORARY = "buildkit/lease.temporary"
SUFFIXES = ("-variants", "-view")


@dataclass
class Lease:
    id: str
    labels: set[str] = field(default_factory=set)
    resources: int = 0          # snapshots + content + ingests it holds

    @property
    def temporary(self) -> bool:
        return TEMPORARY in self.labels

    @property
    def record(self) -> str:
        """The record id a BuildKit lease is named after (`<id>`, `<id>-variants`, `<id>-view`)."""
        for s in SUFFIXES:
            if self.id.endswith(s):
                return self.id[:-len(s)]
        return self.id


def leases(db: Database, namespace: bytes = b"buildkit", on_damage=None) -> dict[str, Lease]:
    tree = db.tree
    b = db.root()
    try:
        for name in (b"v1", namespace, b"leases"):
            item = tree.get(b, name)
            if item is None or not item.is_bucket:
                return {}
            b = tree.child(b, item)
    except CorruptionError as e:
        if on_damage is None:
            raise
        on_damage(e)
        return {}
    out: dict[str, Lease] = {}
    for item in tree.items(b, on_error=on_damage):
        if not item.is_bucket:
            continue
        lease = out[item.key.decode("utf-8", "replace")] = Lease(item.key.decode("utf-8", "replace"))
        try:
            lb = tree.child(b, item)
            for sub in tree.items(lb, on_error=on_damage):
                if not sub.is_bucket:
                    continue
                child = tree.child(lb, sub)
                if sub.key == b"labels":
                    lease.labels = {i.key.decode("utf-8", "replace") for i in tree.items(child, on_error=on_damage)}
                else:
                    lease.resources += _count_leaves(tree, child, on_damage)
        except CorruptionError as e:
            if on_damage is None:
                raise
            on_damage(e)
    return out


def _count_leaves(tree, bucket, on_damage) -> int:
    n = 0
    for parent, child, item in tree.walk(bucket, on_error=on_damage):
        if child is None:
            n += 1
    return n
