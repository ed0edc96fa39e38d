"""The prune plan written the plain way, over the object decoder (cachedb.CacheStore), key by key with dicts and
sets: the reference the array planner (boltkit/buildkit/prune.py) is tested against. Same changes and the same
kept store; only the order of the changes that follow the file's order of ids may differ.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from boltkit.buildkit.cachedb import CacheStore, id_class, split_result_id
from boltkit.buildkit.graph import cycles, live_keys
from boltkit.buildkit.plan import Change, text_id as _b


@dataclass
class PrunedStore:
    links: dict[str, list[bytes]] = field(default_factory=dict)
    results: dict[str, dict[str, bytes]] = field(default_factory=dict)
    backlinks: dict[str, set[str]] = field(default_factory=dict)
    byresult: dict[str, set[str]] = field(default_factory=dict)


def plan_prune(store: CacheStore, break_cycles: bool = False, records: set[str] | None = None,
               drop_unreachable: bool = False) -> tuple[PrunedStore, list[Change]]:
    """``records``: the record ids of the worker's metadata_v2.db; results whose ref is not among them (or
    whose id is not `<worker>::<ref>`) are released first, as buildkitd does at its next start.
    ``drop_unreachable``: derived keys that no chain of links from a root key reaches (C14: Query can
    never get to them) go too, with their results; BuildKit's own rule keeps them."""
    changes: list[Change] = []
    out = PrunedStore()
    for a in store.anomalies:   # entries of the wrong shape are not carried over
        action = {"C7": "empty-value"}.get(a.code, "drop-entry")
        changes.append(Change(a.code, action, tuple(a.bucket), a.key or b""))
    # results: keep what decodes and names its own key
    for kid, results in store.results.items():
        good = {}
        for r in results:
            parts = split_result_id(r.result_id)
            if r.error:
                changes.append(Change("C4", "drop-result", (b"_result", _b(kid)), _b(r.result_id)))
            elif records is not None and (parts is None or (parts[1] and parts[1] not in records)):
                changes.append(Change("X2" if parts else "C16", "release-result", (b"_result", _b(kid)),
                                      _b(r.result_id)))
            else:
                good[r.result_id] = r.raw
        if good:
            out.results[kid] = good
    # links: drop poison keys, then (optionally) the links inside cycles
    edges: dict[str, list[tuple[str, bytes]]] = {}
    for src, links in store.links.items():
        edges[src] = []
        for ln in links:
            if ln.error or not ln.target:
                changes.append(Change(ln.code or "C9", "drop-link", (b"_links", _b(src)), ln.raw))
            else:
                edges[src].append((ln.target, ln.raw))
    if break_cycles:
        for cyc in cycles({s: [t for t, _ in v] for s, v in edges.items()}):
            members = set(cyc)
            for src in cyc:
                keep = []
                for t, raw in edges.get(src, []):
                    if t in members:
                        changes.append(Change("C15", "drop-link", (b"_links", _b(src)), raw))
                    else:
                        keep.append((t, raw))
                edges[src] = keep
    if drop_unreachable:
        _drop_unreachable(edges, out, changes)
    live = live_keys(out.results.keys(), {s: [t for t, _ in v] for s, v in edges.items()})
    for src, targets in sorted(edges.items()):
        if src not in live:
            changes.append(Change("D2" if not targets else "C12", "drop-key", (b"_links",), _b(src)))
            continue
        kept = []
        for t, raw in targets:
            if t in live:
                kept.append(raw)
                out.backlinks.setdefault(t, set()).add(src)
            else:
                missing = t not in store.links and t not in store.results and t not in store.backlinks
                changes.append(Change("D1" if missing else "D2", "drop-link", (b"_links", _b(src)), raw))
        out.links[src] = kept
    for kid in sorted(out.results):
        if kid not in store.links:
            changes.append(Change("D5", "add-links-bucket", (b"_links",), _b(kid)))
            out.links[kid] = []
        for rid in out.results[kid]:
            out.byresult.setdefault(rid, set()).add(kid)
    # the indexes: report every difference between what is there and what the kept data implies
    for tgt, srcs in sorted(store.backlinks.items()):
        for src in sorted(srcs - out.backlinks.get(tgt, set())):
            changes.append(Change("D4", "drop-backlink", (b"_backlinks", _b(tgt)), _b(src)))
    for tgt, srcs in sorted(out.backlinks.items()):
        for src in sorted(srcs - store.backlinks.get(tgt, set())):
            changes.append(Change("D3", "add-backlink", (b"_backlinks", _b(tgt)), _b(src)))
    for rid, kids in sorted(store.byresult.items()):
        for kid in sorted(kids - out.byresult.get(rid, set())):
            changes.append(Change("C5", "drop-byresult", (b"_byresult", _b(rid)), _b(kid)))
        if not kids and rid not in out.byresult:
            changes.append(Change("C6", "drop-empty-bucket", (b"_byresult",), _b(rid)))
    for rid, kids in sorted(out.byresult.items()):
        for kid in sorted(kids - store.byresult.get(rid, set())):
            changes.append(Change("C5", "add-byresult", (b"_byresult", _b(rid)), _b(kid)))
    return out, changes


def _drop_unreachable(edges: dict, out: PrunedStore, changes: list[Change]) -> None:
    """Derived keys (25-character ids) reachable from no other kind of key by links: their results and
    links go; the liveness rule that follows removes what then leads nowhere."""
    keys = set(edges) | set(out.results) | {t for v in edges.values() for t, _ in v}
    reached = {k for k in keys if id_class(k) != "derived"}
    todo = list(reached)
    while todo:
        for t, _ in edges.get(todo.pop(), ()):
            if t not in reached:
                reached.add(t)
                todo.append(t)
    for k in sorted(keys - reached):
        for rid in sorted(out.results.pop(k, {})):
            changes.append(Change("C14", "drop-result", (b"_result", _b(k)), _b(rid)))
        if edges.pop(k, None) is not None:
            changes.append(Change("C14", "drop-key", (b"_links",), _b(k)))
