"""Bucket statistics with the meaning of bbolt's BucketStats (`bbolt stats`), gathered in one walk."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Iterator

from ..schemas import ELEMENT_SIZE, PAGE_HEADER_SIZE
from .database import Database
from .pages import Node
from .tree import Bucket


@dataclass
class BucketStats:
    branch_pages: int = 0
    branch_overflow: int = 0
    leaf_pages: int = 0
    leaf_overflow: int = 0
    keys: int = 0              # leaf elements, sub-bucket entries included (bbolt's KeyN)
    depth: int = 0             # B+tree levels, a sub-bucket's depth added to its parent's (bbolt's Depth)
    branch_alloc: int = 0
    branch_inuse: int = 0
    leaf_alloc: int = 0
    leaf_inuse: int = 0
    buckets: int = 0
    inline_buckets: int = 0
    inline_inuse: int = 0

    def add(self, other: "BucketStats") -> None:
        for f in fields(self):
            if f.name == "depth":
                self.depth = max(self.depth, other.depth)
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class DatabaseStats:
    total: BucketStats
    by_top_bucket: dict[bytes, BucketStats]
    errors: list


def gather_stats(db: Database) -> DatabaseStats:
    """Aggregate over every top-level bucket and its descendants, like `bbolt stats` with no prefix.

    Depth is bbolt's: a bucket's own B+tree levels plus the deepest of its sub-buckets' depths (found in
    its paged leaves; bbolt does not look inside inline buckets), so a top-level bucket two levels deep
    holding one-level buckets has depth 3; the total takes the deepest top-level bucket."""
    per_top: dict[bytes, BucketStats] = {}
    errors: list = []
    ps = db.page_size
    own_depth: dict[tuple, int] = {}
    children: dict[tuple, list] = {}

    def on_page(bucket: Bucket, node: Node, depth: int, elems: list) -> None:
        if not bucket.path:
            return
        own_depth[bucket.path] = max(own_depth.get(bucket.path, 0), depth + 1)
        s = per_top.setdefault(bucket.path[0], BucketStats())
        used = _used(node, elems)
        if node.inline:
            s.inline_inuse += used
            return
        if node.is_leaf:
            s.leaf_pages += 1
            s.leaf_overflow += node.overflow
            s.leaf_alloc += (node.overflow + 1) * ps
            s.leaf_inuse += used
        else:
            s.branch_pages += 1
            s.branch_overflow += node.overflow
            s.branch_alloc += (node.overflow + 1) * ps
            s.branch_inuse += used

    root = db.root()
    order: list[tuple] = []
    for parent, child, _item in db.tree.walk(root, on_damage=errors.append, on_page=on_page):
        if parent.path:
            per_top[parent.path[0]].keys += 1
        if child is not None:
            s = per_top.setdefault(child.path[0], BucketStats())
            s.buckets += 1
            if child.inline:
                s.inline_buckets += 1
            order.append(child.path)
            if parent.path and not parent.inline:
                children.setdefault(parent.path, []).append(child.path)
    nested: dict[tuple, int] = {}
    for path in reversed(order):   # children come after their parent in walk order
        nested[path] = own_depth.get(path, 1) + max((nested[c] for c in children.get(path, ())), default=0)
    for path in order:
        if len(path) == 1:
            per_top[path[0]].depth = nested[path]
    total = BucketStats()
    for s in per_top.values():
        total.add(s)
    return DatabaseStats(total, per_top, errors)


def _used(node: Node, elems: list) -> int:
    """Bytes in use: header, element table, and the packed keys and values up to the last one."""
    used = PAGE_HEADER_SIZE + ELEMENT_SIZE * node.count
    if elems:
        last_end = elems[-1][-1] if node.is_leaf else elems[-1][1]
        first_data = node.base + PAGE_HEADER_SIZE + ELEMENT_SIZE * node.count
        used += max(last_end - first_data, 0)
    return used


@dataclass
class BucketCount:
    """One bucket as `boltkit tree` shows it: its plain keys and its direct sub-buckets."""
    bucket: Bucket
    keys: int = 0
    buckets: int = 0


def child_counts(db: Database, path=(), damage: list | None = None) -> Iterator[BucketCount]:
    """The buckets directly under ``path``, each with its own counts, one at a time (`boltkit buckets` streams
    them); with a ``damage`` list a bucket or page that cannot be read is damage, and the counts say what could
    be read."""
    for child in db.buckets(path, damage=damage):
        c = BucketCount(child)
        for it in db.tree.items(child, on_damage=None if damage is None else damage.append):
            if it.is_bucket:
                c.buckets += 1
            else:
                c.keys += 1
        yield c


def bucket_counts(db: Database, damage: list | None = None) -> list[BucketCount]:
    """Every bucket below the root in walk order (a parent before its children), with its counts; with a
    ``damage`` list the walk reads past damage (Database.walk) and the counts say what could be read."""
    counts: dict[tuple[bytes, ...], BucketCount] = {}
    for parent, child, _ in db.walk(damage=damage):
        if child is not None:
            counts[child.path] = BucketCount(child)
            if parent.path:
                counts[parent.path].buckets += 1
        elif parent.path:
            counts[parent.path].keys += 1
    return list(counts.values())
