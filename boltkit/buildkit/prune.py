"""Offline pruning of cache.db: the plan (what goes and why) and the pruned store it leads to.

The rule is BuildKit's own collection rule (memorycachestorage, emptyBranchWithParents as intended): a
key with no results and no links to a live key goes, and so do its parents' links to it, recursively —
so exactly the keys that are live (have a result, or link to a live key) stay. On top of that the
indexes are made to agree with what stays: backlinks and by-result entries are rebuilt from the links
and results (adding missing ones, D3/C5, dropping stale ones, D4/C5), results without a `_links`
bucket get one back (D5), and poison link keys and undecodable results are dropped (C9/C17, C4).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..storage.gcpause import gc_paused
from .cachedb import TOP_BUCKETS, CacheStore, id_class, split_result_id
from .graph import cycles, live_keys
from .plan import Change, text_id as _b


@dataclass
class PrunedStore:
    """The four buckets as they should be: src -> raw link keys, id -> {result id: raw value}, and the two
    indexes derived from them."""
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


def write_pruned(pruned: PrunedStore, writer, foreign: dict | None = None) -> None:
    """Stream the pruned store into a BoltWriter, buckets and keys in byte order. ``foreign``: top-level
    buckets BuildKit does not use (a salvage's lost+found, say), name -> a function writing their contents."""
    def bucket(name: bytes, children: dict[bytes, dict[bytes, bytes]]) -> None:
        writer.begin_bucket(name)
        for sub in sorted(children):
            writer.begin_bucket(sub)
            for k, v in sorted(children[sub].items()):
                writer.put(k, v)
            writer.end_bucket()
        writer.end_bucket()

    enc = _b
    tops = {
        b"_backlinks": {enc(t): {enc(s): b"" for s in srcs} for t, srcs in pruned.backlinks.items()},
        b"_byresult": {enc(r): {enc(k): b"" for k in kids} for r, kids in pruned.byresult.items()},
        b"_links": {enc(s): {raw: b"" for raw in links} for s, links in pruned.links.items()},
        b"_result": {enc(k): {enc(r): v for r, v in res.items()} for k, res in pruned.results.items()},
    }
    foreign = foreign or {}
    for name in sorted(set(tops) | set(foreign)):
        if name in tops:
            bucket(name, tops[name])
        else:
            writer.begin_bucket(name)
            foreign[name](writer)
            writer.end_bucket()


@dataclass
class PrunePlan:
    """What pruning one cache.db changes, and what it needs to write the result."""
    path: str
    pruned: PrunedStore
    changes: list[Change]
    page_size: int
    taken: set = field(default_factory=set)     # buckets merged into the four (rehome.py), left out elsewhere


def plan_file(path: str, *, break_cycles: bool = False, records: set[str] | None = None, rehome: bool = False,
              drop_unreachable: bool = False, preflight: bool = True, progress=None) -> PrunePlan:
    """Plan the prune of the cache.db at ``path``: refused when it is structurally damaged (salvage first;
    ``preflight=False`` when the caller has checked already), after ``rehome`` when asked.
    ``progress(done, total)``: the check, the read and the plan, a third each."""
    from ..check.checker import progress_part
    from ..repair.preflight import require_sound
    from ..storage import Database
    from .cachecolumns import load_cache_store
    from .rehome import rehome as rehome_buckets
    if preflight:
        require_sound(path, progress=progress_part(progress, 0, 1, 3))
    with gc_paused():       # a plan is millions of small objects without cycles
        with Database(path) as db:
            store = load_cache_store(db, progress=progress_part(progress, 1, 2, 3))
            moved, taken = rehome_buckets(db, store) if rehome else ([], set())
            page_size = db.page_size
        pruned, changes = plan_prune(store, break_cycles=break_cycles, records=records,
                                     drop_unreachable=drop_unreachable)
    if progress is not None:
        progress(3, 3)
    return PrunePlan(path, pruned, moved + changes, page_size, taken)


def apply_prune(plan: PrunePlan, report: dict | None = None) -> str:
    """Write the pruned store beside the original, verify it (structure, and no dangling link or index fault
    left), and swap it in through the one repair primitive (which writes the JSON report of the changes, with
    ``report``'s fields, beside the backup); returns the backup's path."""
    return prepare_prune(plan).commit(lambda done: prune_report(plan, report)).backup


def prune_report(plan: PrunePlan, extra: dict | None = None) -> dict:
    counts: dict[str, int] = {}
    for c in plan.changes:
        counts[c.action] = counts.get(c.action, 0) + 1
    return {"operation": "buildkit prune", "file": plan.path, **(extra or {}), "actions": counts,
            "changes": [c.as_dict() for c in plan.changes]}


def prepare_prune(plan: PrunePlan, *, check_holders: bool = True):
    """The pruned store written beside the original and verified, not yet swapped in (`replace.Prepared`)."""
    from ..check import check_file
    from ..repair.replace import prepare
    from ..repair.rewrite import stream
    from ..storage import Database
    from ..write import BoltWriter
    from .cachecheck import check_cache_db
    path, pruned, taken = plan.path, plan.pruned, plan.taken

    def write(new: str) -> None:
        with Database(path) as src, BoltWriter(new, page_size=plan.page_size) as w:
            # buckets BuildKit does not use are carried over untouched
            root = src.root()
            foreign = {}
            for item in src.tree.items(root):
                if item.is_bucket and item.key not in TOP_BUCKETS:
                    child = src.tree.child(root, item)
                    if (item.key,) in taken:
                        continue
                    foreign[item.key] = lambda writer, child=child: stream(
                        src, child, writer, lambda p, k, is_bucket: not is_bucket or p + (k,) not in taken)
            write_pruned(pruned, w, foreign)

    def verify(new: str) -> str | None:
        ok = check_file(new, revert=False)
        with Database(new) as db:
            left = check_cache_db(db).counts()
        bad = sorted({code for code in left if code in ("D1", "D2", "D3", "D4", "D5", "C4", "C5", "C9", "C12")})
        return None if ok.clean and not bad else f"the pruned store still has {', '.join(bad) or 'structure'} faults"

    return prepare(path, write, verify, check_holders=check_holders)
