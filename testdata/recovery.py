"""Measuring a salvage: how many of the original pairs came back, and whether any pair was invented.

A pair counts as recovered when it is back at its bucket path, or (key and value) under lost+found.
Pairs "on intact leaves" are those whose leaf page (for inline buckets: the leaf holding the bucket) has
the same bytes in the damaged file as in the original: the ones a salvage has every chance to find.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from boltkit.storage import Database

LOST = b"lost+found"


def pairs_with_pages(path: Path) -> dict[tuple, int]:
    """(bucket path, key, value) -> the leaf page that holds it."""
    out = {}
    with Database(path) as db:
        for parent, child, item in db.tree.walk(db.root()):
            if child is None:
                out[(parent.path, item.key, db.value(item))] = item.node.owner
    return out


def pairs_of(path: Path) -> set[tuple]:
    with Database(path) as db:
        return {(p.path, it.key, db.value(it)) for p, c, it in db.tree.walk(db.root(), on_error=lambda e: None)
                if c is None}


@dataclass
class Recovery:
    original: int
    on_intact_leaves: int
    recovered: int
    recovered_on_intact: int
    invented: int          # pairs in the main namespace that the original file never held

    @property
    def share_intact(self) -> float:
        return self.recovered_on_intact / self.on_intact_leaves if self.on_intact_leaves else 1.0


def measure(original: Path, damaged: Path, rescued: Path | None) -> Recovery:
    orig = pairs_with_pages(original)
    ps = int.from_bytes(original.read_bytes()[24:28], "little")
    a, b = original.read_bytes(), damaged.read_bytes()

    def intact(pg: int) -> bool:
        return a[pg * ps:(pg + 1) * ps] == b[pg * ps:(pg + 1) * ps]
    intact_pairs = {k for k, pg in orig.items() if intact(pg)}
    got = pairs_of(rescued) if rescued is not None else set()
    main = {p for p in got if not p[0] or p[0][0] != LOST}
    lost = {(k, v) for path, k, v in got if path and path[0] == LOST}
    back = {p for p in orig if p in main or (p[1], p[2]) in lost}
    # anything the original had at some point is not invented; we can only know the final state, so a pair in
    # the main namespace absent from the original counts as invented unless the older meta's tree had it
    older = set()
    try:
        with Database(original, meta=0) as d0, Database(original, meta=1) as d1:
            for db in (d0, d1):
                older |= {(p.path, it.key, db.value(it)) for p, c, it in db.tree.walk(db.root(), on_error=lambda e: None)
                          if c is None}
    except Exception:
        pass
    invented = {p for p in main if p not in orig and p not in older}
    return Recovery(len(orig), len(intact_pairs), len(back), len(back & intact_pairs), len(invented))
