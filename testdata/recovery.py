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
    return {k: v[0] for k, v in pairs_with_places(path).items()}


def pairs_with_places(path: Path) -> dict[tuple, tuple[int, list[tuple[int, int]]]]:
    """(bucket path, key, value) -> (the leaf page that holds it, the byte ranges that make its element: the
    element record and the key and value; for a pair inside an inline bucket, the bucket's element too)."""
    out = {}
    with Database(path) as db:
        index: dict[int, dict[int, int]] = {}

        def element(node, ks):
            key = (node.base, node.end)
            if key not in index:
                index[key] = {e[1]: i for i, e in enumerate(db.pager.leaf_elements(node))}
            i = index[key][ks]
            return (node.base + 16 + i * 16, node.base + 32 + i * 16)
        holder = {}
        for parent, child, item in db.tree.walk(db.root()):
            ks = item.value_start - len(item.key)
            ranges = [element(item.node, ks), (ks, item.value_end)]
            if child is not None:
                holder[child.path] = ranges
                continue
            ranges += holder.get(parent.path, []) if item.node.inline else []
            out[(parent.path, item.key, db.value(item))] = (item.node.owner, ranges)
    return out


def pairs_of(path: Path) -> set[tuple]:
    with Database(path) as db:
        return {(p.path, it.key, db.value(it)) for p, c, it in db.tree.walk(db.root(), on_damage=lambda e: None)
                if c is None}


@dataclass
class Recovery:
    original: int
    on_intact_leaves: int
    recovered: int
    recovered_on_intact: int
    invented: int          # pairs in the main namespace that the original file never held
    wellformed_on_damaged: int = 0     # pairs on damaged leaves whose element, key and value are intact
    recovered_wellformed: int = 0
    resurrected: int = 0   # live pairs whose key the original's newest state no longer has, but an older one had:
    #                        keys the last transaction deleted, back to life (invisible to `invented`)

    @property
    def share_intact(self) -> float:
        return self.recovered_on_intact / self.on_intact_leaves if self.on_intact_leaves else 1.0

    @property
    def share_wellformed(self) -> float:
        return self.recovered_wellformed / self.wellformed_on_damaged if self.wellformed_on_damaged else 1.0


def measure(original: Path, damaged: Path, rescued: Path | None) -> Recovery:
    places = pairs_with_places(original)
    orig = {k: v[0] for k, v in places.items()}
    ps = int.from_bytes(original.read_bytes()[24:28], "little")
    a, b = original.read_bytes(), damaged.read_bytes()
    elsewhere = {b[q * ps:(q + 1) * ps] for q in range(len(b) // ps)}

    def intact(pg: int) -> bool:
        # the same bytes at its place, or moved whole to another page's place (swapped pages)
        page = a[pg * ps:(pg + 1) * ps]
        return page == b[pg * ps:(pg + 1) * ps] or page in elsewhere
    intact_pairs = {k for k, pg in orig.items() if intact(pg)}
    wellformed = {k for k, (pg, ranges) in places.items() if k not in intact_pairs
                  and all(a[x:y] == b[x:y] for x, y in ranges)}
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
                older |= {(p.path, it.key, db.value(it))
                          for p, c, it in db.tree.walk(db.root(), on_damage=lambda e: None) if c is None}
    except Exception:
        pass
    invented = {p for p in main if p not in orig and p not in older}
    # a key may be live in the newest state, or, when the damage tore the newest meta, in the transaction before
    # it: to bbolt a torn meta is a commit that never happened, so that earlier state is as good a truth
    live_keys = {(path, k) for path, k, _ in orig}
    try:
        with Database(original, meta=0) as d0, Database(original, meta=1) as d1:
            whole = [d for d in (d0, d1) if a[d.meta.offset:d.meta.offset + 80] == b[d.meta.offset:d.meta.offset + 80]]
            if whole and max(d.meta.txid for d in whole) < max(d0.meta.txid, d1.meta.txid):
                db = max(whole, key=lambda d: d.meta.txid)
                live_keys |= {(p.path, it.key) for p, c, it in db.tree.walk(db.root(), on_damage=lambda e: None)
                              if c is None}
    except Exception:
        pass
    resurrected = {p for p in main if p in older and (p[0], p[1]) not in live_keys}
    return Recovery(len(orig), len(intact_pairs), len(back), len(back & intact_pairs), len(invented),
                    len(wellformed), len(back & wellformed), len(resurrected))
