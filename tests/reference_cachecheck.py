"""The cache.db checks written the plain way, over the object decoder (cachedb.CacheStore), key by key:
the reference the array implementation (boltkit/buildkit/cachecheck.py) is tested against. Same codes,
same messages, same locations; only the order may differ.
"""
from __future__ import annotations

from typing import Iterable

from boltkit.buildkit.cachedb import (TOP_BUCKETS, Anomaly, CacheStore, decode_link_key, decode_result, id_class,
                                     is_root_form, split_result_id)
from boltkit.buildkit.graph import GraphSummary, components, cycles, live_keys
from boltkit.check.problems import Problem, adder
from boltkit.errors import CorruptionError
from boltkit.schemas import BUCKET_LEAF_FLAG
from boltkit.storage import Database


def check_cache_store(store: CacheStore, file: str | None = None) -> list[Problem]:
    out: list[Problem] = []

    add = adder(out, file)

    for name in TOP_BUCKETS:
        if name not in store.top:
            add("C1", f"top-level bucket {name.decode()} is missing (buildkitd recreates it empty)")
    for name in store.foreign_top:
        add("C1", "top-level bucket BuildKit does not use", key=name)
    for a in store.anomalies:
        add(a.code, a.message, path=a.bucket, key=a.key)

    # results and their reverse index
    for kid, results in store.results.items():
        for r in results:
            if r.error:
                add("C4", r.error, path=(b"_result", kid), key=r.result_id)
            if split_result_id(r.result_id) is None:
                add("C16", "result id is not <workerID>::<refID>", path=(b"_result", kid), key=r.result_id)
            if kid not in store.byresult.get(r.result_id, ()):
                add("C5", "result has no _byresult entry: Release can never find it",
                    path=(b"_result", kid), key=r.result_id)
        if results and kid not in store.links:
            add("D5", f"{len(results)} result(s) but no _links bucket: ReleaseUnreferenced never sees them",
                path=(b"_result", kid))
    for rid, kids in store.byresult.items():
        if not kids:
            add("C6", "empty _byresult bucket", path=(b"_byresult", rid))
        for kid in sorted(kids):
            if not any(r.result_id == rid for r in store.results.get(kid, ())):
                add("C5", "stale _byresult entry: no such result", path=(b"_byresult", rid), key=kid)

    # links
    valid = store.edges()
    targets: dict[str, set[str]] = {}
    for src, links in store.links.items():
        for ln in links:
            if ln.error:
                code = "C17" if ("negative" in ln.error or "not a digest" in ln.error) else "C9"
                add(code, f"poison link key: {ln.error}", path=(b"_links", src), key=ln.raw)
            if not ln.target:
                continue
            targets.setdefault(ln.target, set()).add(src)
            if src not in store.backlinks.get(ln.target, ()):
                add("D3", f"link to {ln.target} has no _backlinks entry (export misses this parent)",
                    path=(b"_links", src), key=ln.raw)
    for tgt, srcs in store.backlinks.items():
        for src in sorted(srcs):
            if src not in targets.get(tgt, ()):
                add("D4", f"stale backlink: {src} has no link to this key", path=(b"_backlinks", tgt), key=src)

    results_of = store.with_results()
    live = live_keys(results_of, valid)
    for tgt, srcs in sorted(targets.items()):
        parents = sorted(srcs)
        if tgt not in store.links and tgt not in store.results and tgt not in store.backlinks:
            add("D1", f"hard-dangling: {len(parents)} parent(s) link to a key that does not exist",
                key=tgt, parents=parents)
        elif tgt not in results_of and not valid.get(tgt):
            add("D2", f"ghost target: no results, no outgoing links, still linked from {len(parents)} parent(s)",
                key=tgt, parents=parents)
        elif tgt not in live:
            add("C12", f"dead chain: nothing below this key has a result; {len(parents)} parent(s) link to it",
                key=tgt, parents=parents)
        if is_root_form(tgt):
            add("C14", "a root-form key is a link target", key=tgt)

    for kid in sorted(store.ids()):
        has_results = kid in results_of
        has_links = bool(valid.get(kid))
        if not has_results and not has_links and kid not in targets:
            add("C13", "empty branch: no results, no links, nothing links to it", key=kid)
        if is_root_form(kid) and store.backlinks.get(kid):
            add("C14", "a root-form key has backlinks", key=kid)
        if id_class(kid) == "derived" and kid not in targets and (has_results or has_links):
            add("C14", "derived key that nothing links to: Query can never reach it", key=kid)

    for cyc in cycles(valid):
        if len(cyc) == 1:
            add("C15", "self-loop: the key links to itself", key=cyc[0], cycle=cyc)
        else:
            add("C15", f"cycle of {len(cyc)} keys", key=cyc[0], cycle=cyc)
    return out


def problem_rows(problems) -> list[tuple]:
    """Problems as sortable rows: what two implementations must agree on. Keys are compared as text:
    this reference decodes link targets lossily (invalid UTF-8 becomes U+FFFD), the array check keeps
    their bytes."""
    return sorted((p.code, p.severity.value, p.path or (), (p.key or b"").decode("utf-8", "replace"), p.message,
                   tuple(sorted((k, repr(v)) for k, v in p.details.items()))) for p in problems)


def load_cache_store(db: Database, on_damage=None) -> CacheStore:
    """The object decoder written the plain way: every bucket opened and every entry decoded one at a time
    through the page-by-page tree reader (the product builds the same objects from its columns)."""
    store = CacheStore()
    tree = db.tree
    root = db.root()
    for top in tree.items(root, on_damage=on_damage):
        if not top.is_bucket:
            store.anomalies.append(Anomaly("C1", (), top.key, "plain key at the top level"))
            continue
        if top.key not in TOP_BUCKETS:
            store.foreign_top.append(top.key)
            continue
        store.top.add(top.key)
        bucket = tree.child(root, top)
        for entry in tree.items(bucket, on_damage=on_damage):
            name = entry.key.decode("utf-8", "replace")
            if not entry.is_bucket:
                store.anomalies.append(Anomaly("C2", (top.key,), entry.key, "level-2 entry is a plain value, "
                                                                             "not a bucket"))
                continue
            try:
                sub = tree.child(bucket, entry)
            except CorruptionError as e:
                if on_damage is None:
                    raise
                on_damage(e)
                continue
            _load_level3(store, db, top.key, name, sub, on_damage)
    return store


def _entries(db: Database, sub, on_damage):
    """(is_bucket, key, value) of one id's bucket; the ~99 % that are inline are decoded in one step."""
    data = db.data
    if sub.inline:
        try:
            elems = db.pager.leaf_elements(sub.node)
        except CorruptionError as e:
            if on_damage is None:
                raise
            on_damage(e)
            return
        for flags, ks, ke, ve in elems:
            yield flags & BUCKET_LEAF_FLAG, data[ks:ke], data[ke:ve]
        return
    for item in db.tree.items(sub, on_damage=on_damage):
        yield item.is_bucket, item.key, db.value(item)


def _load_level3(store: CacheStore, db: Database, top: bytes, name: str, sub, on_damage) -> None:
    if top == b"_links":
        store.links.setdefault(name, [])
    elif top == b"_result":
        store.results.setdefault(name, [])
    elif top == b"_byresult":
        store.byresult.setdefault(name, set())
    else:
        store.backlinks.setdefault(name, set())
    for is_bucket, key, value in _entries(db, sub, on_damage):
        if is_bucket:
            store.anomalies.append(Anomaly("C3", (top, name.encode()), key, "level-3 entry is a bucket"))
            continue
        text = key.decode("utf-8", "replace")
        if top == b"_result":
            store.results[name].append(decode_result(name, key, value))
            continue
        if value:
            store.anomalies.append(Anomaly("C7", (top, name.encode()), key, f"value of {len(value)} bytes, "
                                                                            "expected empty"))
        if top == b"_links":
            store.links[name].append(decode_link_key(name, key))
        elif top == b"_byresult":
            store.byresult[name].add(text)
        else:
            store.backlinks[name].add(text)


def summarize_plainly(links: dict[str, list[str]], with_results: Iterable[str], top: int = 10) -> GraphSummary:
    """The graph summary computed over dicts, one key at a time (Tarjan, then sources first): the reference
    for the array version."""
    comps = components(links)
    comp_of = {k: i for i, c in enumerate(comps) for k in c}
    parents: dict[str, set[str]] = {}
    edges = 0
    for src, ts in links.items():
        for t in ts:
            edges += 1
            parents.setdefault(t, set()).add(src)
    cpreds: dict[int, set[int]] = {}
    for t, ps in parents.items():
        ct = comp_of[t]
        for p in ps:
            if comp_of[p] != ct:
                cpreds.setdefault(ct, set()).add(comp_of[p])
    paths: dict[int, int] = {}
    depth: dict[int, int] = {}
    for ci in reversed(range(len(comps))):          # sources first
        preds = cpreds.get(ci)
        paths[ci] = sum(paths[p] for p in preds) if preds else 1
        depth[ci] = 1 + max((depth[p] for p in preds), default=-1) if preds else 0
    nodes = [k for c in comps for k in c]
    per_key_paths = sorted(((k, paths[comp_of[k]]) for k in nodes), key=lambda x: (-x[1], x[0]))
    fan_out = sorted(((k, len(v)) for k, v in links.items() if v), key=lambda x: (-x[1], x[0]))
    fan_in = sorted(((k, len(v)) for k, v in parents.items()), key=lambda x: (-x[1], x[0]))
    return GraphSummary(
        nodes=len(nodes), edges=edges, roots=sorted(k for k in nodes if k not in parents),
        with_results=len(set(with_results)), cycles=cycles(links), fan_out=fan_out[:top], fan_in=fan_in[:top],
        depth=max(depth.values(), default=0), paths=per_key_paths[:top],
        max_paths=per_key_paths[0][1] if per_key_paths else 0, total_paths=sum(n for _, n in per_key_paths))
