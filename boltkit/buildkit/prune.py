"""Offline pruning of cache.db: the plan (what goes and why) and the pruned store it leads to.

The rule is BuildKit's own collection rule (memorycachestorage, emptyBranchWithParents as intended): a
key with no results and no links to a live key goes, and so do its parents' links to it, recursively —
so exactly the keys that are live (have a result, or link to a live key) stay. On top of that the
indexes are made to agree with what stays: backlinks and by-result entries are rebuilt from the links
and results (adding missing ones, D3/C5, dropping stale ones, D4/C5), results without a `_links`
bucket get one back (D5), and poison link keys and undecodable results are dropped (C9/C17, C4).

The plan is made on the columns of cachecolumns.py, those the structural check's own pass decoded:
liveness is ``graph.live_mask``, the index differences are sorted pair codes as in cachecheck.py, and
the changes are ``ChangeTable`` rows built when they are listed (a dry run of a fleet-size store shows
the counts and twenty rows of 300k). Ids stay codes into the file's bytes from the read to the writer,
so an id that is not UTF-8 is planned and written as the bytes it is.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..storage.gcpause import gc_paused
from ..storage.strings import byte_strings
from .byteorder import byte_order, byte_ranks
from .cachecheck import derived_ids, unsplittable_result_ids
from .cachecolumns import CacheColumns
from .cachedb import TOP_BUCKETS
from .graph import cycles, cycles_of_arrays, live_mask, pair_codes, sorted_unique
from .plan import Change, Changes, ChangeTable

_I64 = np.int64


@dataclass
class PrunedStore:
    """The four buckets as they should be, in the file's bytes: src -> raw link keys, id -> {result id: raw
    value}, and the two indexes derived from them."""
    links: dict[bytes, list[bytes]] = field(default_factory=dict)
    results: dict[bytes, dict[bytes, bytes]] = field(default_factory=dict)
    backlinks: dict[bytes, set[bytes]] = field(default_factory=dict)
    byresult: dict[bytes, set[bytes]] = field(default_factory=dict)


@dataclass
class PrunedColumns:
    """What the prune keeps, over the columns it was planned on; ``store()`` builds it as bytes for the writer."""
    cols: CacheColumns
    link_rows: np.ndarray                    # the link keys kept
    link_ids: np.ndarray                     # the `_links` buckets written: live keys, and keys given one (D5)
    result_rows: np.ndarray                  # the results kept
    backlinks: tuple[np.ndarray, np.ndarray]  # (target, source) codes, each pair once
    byresult: tuple[np.ndarray, np.ndarray]   # (result id, key) codes, each pair once

    def store(self) -> PrunedStore:
        c = self.cols
        text = c.names.all_bytes()           # every name once, in one gather, not a slice of the map per use
        u8 = c.raw_data                      # the file the raw link keys and values are ranges of
        out = PrunedStore()
        out.links.update((text[k], []) for k in self.link_ids.tolist())
        link_keys = byte_strings(u8, c.link_key[0][self.link_rows], c.link_key[1][self.link_rows])
        for src, key in zip(c.link_src[self.link_rows].tolist(), link_keys):
            out.links[text[src]].append(key)
        values = byte_strings(u8, c.result_value[0][self.result_rows], c.result_value[1][self.result_rows])
        for kid, rid, value in zip(c.result_kid[self.result_rows].tolist(), c.result_rid[self.result_rows].tolist(),
                                   values):
            out.results.setdefault(text[kid], {})[text[rid]] = value
        for table, (a, b) in ((out.backlinks, self.backlinks), (out.byresult, self.byresult)):
            for x, y in zip(a.tolist(), b.tolist()):
                table.setdefault(text[x], set()).add(text[y])
        return out


def _in_file_order(ids: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Rows by their bucket's place in ``ids`` (the order the id buckets were read in), then as read."""
    slot = np.full(n, -1, _I64)
    slot[ids] = np.arange(ids.size)
    return np.argsort(slot[owner], kind="stable")


def _mask(n: int, idx) -> np.ndarray:
    m = np.zeros(n, bool)
    m[np.asarray(list(idx) if isinstance(idx, (set, dict)) else idx, _I64)] = True
    return m


def _cached(order, make_row):
    """``make_row`` over the entries in the order ``order()`` gives, computed when the first row is built."""
    state: list = []

    def make(i: int) -> Change:
        if not state:
            state.append(order())
        return make_row(int(state[0][i]))
    return make


def _table(order, counts: dict, make_row) -> ChangeTable:
    """A table of the entries ``make_row`` builds, in the order ``order()`` gives. With two actions in it, the
    counts list first the one its first row has: a plan's summary names the actions as they first come."""
    make = _cached(order, make_row)
    if len({action for (_, action), v in counts.items() if v}) > 1:
        first = make(0).action
        counts = dict(sorted(counts.items(), key=lambda kv: kv[0][1] != first))
    return ChangeTable(sum(counts.values()), counts, make)


def _pair_order(names, a: np.ndarray, b: np.ndarray):
    """The order that sorts pairs (a[i], b[i]) by the bytes of a, then of b."""
    def order():
        both = byte_ranks(names, np.concatenate([a, b]))
        return np.lexsort((both[a.size:], both[:a.size]))
    return order


def plan_prune(cols: CacheColumns, break_cycles: bool = False, records: set[bytes] | None = None,
               drop_unreachable: bool = False) -> tuple[PrunedColumns, Changes]:
    """``records``: the record ids (bytes) of the worker's metadata_v2.db; results whose ref is not among them
    (or whose id is not `<worker>::<ref>`) are released first, as buildkitd does at its next start.
    ``drop_unreachable``: derived keys that no chain of links from a root key reaches (C14: Query can
    never get to them) go too, with their results; BuildKit's own rule keeps them."""
    c = cols
    names = c.names
    text = names.bytes
    n = len(names)
    changes = Changes()
    changes.add([Change(a.code, "empty-value" if a.code == "C7" else "drop-entry", tuple(a.bucket), a.key or b"")
                 for a in c.anomalies])     # entries of the wrong shape are not carried over

    # results: keep what decodes and names its own key (and, with records, what a record holds)
    n_res = c.result_kid.size
    res_order = _in_file_order(c.results_ids, c.result_kid, n)
    code = np.zeros(n_res, np.int8)                      # 0 kept, 1 C4, 2 C16, 3 X2
    code[list(c.result_errors)] = 1
    if records is not None and n_res:
        rids = sorted_unique(c.result_rid)
        bad = unsplittable_result_ids(names, rids)
        gone = np.zeros(n, bool)
        for r in rids[~bad[rids]].tolist():
            ref = text(r).split(b"::")[1]
            gone[r] = bool(ref) and ref not in records
        code[(code == 0) & bad[c.result_rid]] = 2
        code[(code == 0) & gone[c.result_rid]] = 3
    dropped = res_order[code[res_order] > 0]
    what = (("", ""), ("C4", "drop-result"), ("C16", "release-result"), ("X2", "release-result"))
    counts: dict = {}
    for k in code[dropped].tolist() if len(c.result_errors) or records is not None else []:
        counts[what[k]] = counts.get(what[k], 0) + 1

    def result_change(i: int) -> Change:
        row = int(dropped[i])
        kind, action = what[code[row]]
        return Change(kind, action, (b"_result", text(c.result_kid[row])), text(c.result_rid[row]))
    changes.add(ChangeTable(dropped.size, counts, result_change))
    good = code == 0

    # links: drop poison keys, then (optionally) the links inside cycles
    link_order = _in_file_order(c.links_ids, c.link_src, n)
    poison = c.link_tgt < 0
    poison[c.link_spelled] = True
    poison[list(c.link_errors)] = True
    bad_rows = link_order[poison[link_order]]
    link_code = {i: ln.code or "C9" for i, ln in c.link_errors.items()}
    counts = {}
    for i in bad_rows.tolist() if link_code else []:
        counts[(link_code.get(i, "C9"), "drop-link")] = counts.get((link_code.get(i, "C9"), "drop-link"), 0) + 1
    if not link_code:
        counts = {("C9", "drop-link"): bad_rows.size}

    def poison_change(i: int) -> Change:
        row = int(bad_rows[i])
        return Change(link_code.get(row, "C9"), "drop-link", (b"_links", text(c.link_src[row])),
                      c.raw(c.link_key, row))
    changes.add(ChangeTable(bad_rows.size, counts, poison_change))
    edge = ~poison                                       # the links that are edges of the key graph
    is_links_id = _mask(n, c.links_ids)
    if break_cycles:
        changes.add(_break_cycles(c, n, edge, link_order))

    has_results = np.bincount(c.result_kid[good], minlength=n) > 0
    in_edges = is_links_id.copy()                        # the keys whose links take part (all, until C14)
    if drop_unreachable:
        changes.add(_drop_unreachable(c, n, edge, good, in_edges))
        has_results = np.bincount(c.result_kid[good], minlength=n) > 0
    edge &= in_edges[c.link_src]
    src, tgt = c.link_src[edge], c.link_tgt[edge]
    live = live_mask(has_results, src, tgt)

    # keys that are not live go; the links of live keys to keys that are not live go
    is_id = is_links_id.copy()
    is_id[c.results_ids] = True
    is_id[c.backlinks_ids] = True
    dead_keys = np.flatnonzero(in_edges & ~live)
    outdeg = np.bincount(src, minlength=n)
    dead_links = np.flatnonzero(edge & live[c.link_src] & ~live[np.maximum(c.link_tgt, 0)])
    changes.add(_key_table(c, dead_keys, outdeg, dead_links, is_id, link_order))
    kept = np.flatnonzero(edge & live[c.link_src] & live[np.maximum(c.link_tgt, 0)])

    # results without a `_links` bucket get one back
    kids = sorted_unique(c.result_kid[good])
    orphans = kids[~is_links_id[kids]]
    changes.add(_table(lambda: byte_order(names, orphans), {("D5", "add-links-bucket"): orphans.size},
                              lambda j: Change("D5", "add-links-bucket", (b"_links",), text(orphans[j]))))
    link_ids = np.concatenate([c.links_ids[live[c.links_ids] & in_edges[c.links_ids]], orphans])

    # the indexes: every difference between what is there and what the kept data implies
    out_back = sorted_unique(pair_codes(c.link_tgt[kept], c.link_src[kept], n))
    have_back = sorted_unique(pair_codes(c.backlink_tgt, c.backlink_src, n))
    changes.add(_pairs_table(names, n, have_back[~_member(have_back, out_back)], "D4", "drop-backlink",
                             b"_backlinks"))
    changes.add(_pairs_table(names, n, out_back[~_member(out_back, have_back)], "D3", "add-backlink", b"_backlinks"))
    out_by = sorted_unique(pair_codes(c.result_rid[good], c.result_kid[good], n))
    have_by = sorted_unique(pair_codes(c.byresult_rid, c.byresult_kid, n))
    stale = have_by[~_member(have_by, out_by)]
    out_rids = np.zeros(n, bool)
    out_rids[c.result_rid[good]] = True
    empty = c.byresult_ids[(np.bincount(c.byresult_rid, minlength=n)[c.byresult_ids] == 0)
                           & ~out_rids[c.byresult_ids]]
    changes.add(_byresult_drops(names, n, stale, empty))
    changes.add(_pairs_table(names, n, out_by[~_member(out_by, have_by)], "C5", "add-byresult", b"_byresult"))
    pruned = PrunedColumns(c, kept, link_ids, np.flatnonzero(good), (out_back // max(n, 1), out_back % max(n, 1)),
                           (out_by // max(n, 1), out_by % max(n, 1)))
    return pruned, changes


def _member(x: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if not sorted_set.size:
        return np.zeros(x.size, bool)
    i = np.minimum(np.searchsorted(sorted_set, x), sorted_set.size - 1)
    return sorted_set[i] == x


def _pairs_table(names, n: int, pairs: np.ndarray, code: str, action: str, top: bytes) -> ChangeTable:
    """One change per (bucket id, key id) pair, sorted by the bytes of the id, then of the key."""
    a, b = pairs // max(n, 1), pairs % max(n, 1)
    return _table(_pair_order(names, a, b), {(code, action): pairs.size},
                         lambda j: Change(code, action, (top, names.bytes(a[j])), names.bytes(b[j])))


def _byresult_drops(names, n: int, stale: np.ndarray, empty: np.ndarray) -> ChangeTable:
    """Stale `_byresult` entries (C5) and empty `_byresult` buckets that no kept result fills (C6), by result
    id, then key."""
    a = np.concatenate([stale // max(n, 1), empty])
    b = np.concatenate([stale % max(n, 1), np.full(empty.size, -1, _I64)])

    def order():
        ra = byte_ranks(names, a)
        rb = np.full(b.size, -1, _I64)
        has = b >= 0
        rb[has] = byte_ranks(names, b[has])
        return np.lexsort((rb, ra))

    def make(j: int) -> Change:
        if b[j] < 0:
            return Change("C6", "drop-empty-bucket", (b"_byresult",), names.bytes(a[j]))
        return Change("C5", "drop-byresult", (b"_byresult", names.bytes(a[j])), names.bytes(b[j]))
    return _table(order, {("C5", "drop-byresult"): stale.size, ("C6", "drop-empty-bucket"): empty.size}, make)


def _key_table(c: CacheColumns, dead_keys: np.ndarray, outdeg: np.ndarray, dead_links: np.ndarray,
               is_id: np.ndarray, link_order: np.ndarray) -> ChangeTable:
    """The keys that are not live (D2 without links left, C12 a dead chain) and the links of live keys to
    keys that are not (D1 to a key that does not exist, D2 to one that does): by key, then as read."""
    names = c.names
    text = names.bytes
    n_dead = dead_keys.size
    owner = np.concatenate([dead_keys, c.link_src[dead_links]])
    place = np.empty(c.link_src.size, _I64)
    place[link_order] = np.arange(link_order.size)
    within = np.concatenate([np.full(n_dead, -1, _I64), place[dead_links]])
    key_code = np.where(outdeg[dead_keys] == 0, "D2", "C12")
    missing = ~is_id[c.link_tgt[dead_links]]
    counts = {("C12", "drop-key"): int((key_code == "C12").sum()), ("D2", "drop-key"): int((key_code == "D2").sum()),
              ("D1", "drop-link"): int(missing.sum()), ("D2", "drop-link"): int((~missing).sum())}

    def order():
        return np.lexsort((within, byte_ranks(names, owner)))

    def make(j: int) -> Change:
        if j < n_dead:
            return Change(str(key_code[j]), "drop-key", (b"_links",), text(dead_keys[j]))
        row = int(dead_links[j - n_dead])
        return Change("D1" if missing[j - n_dead] else "D2", "drop-link", (b"_links", text(c.link_src[row])),
                      c.raw(c.link_key, row))
    return _table(order, counts, make)


def _break_cycles(c: CacheColumns, n: int, edge: np.ndarray, link_order: np.ndarray) -> list[Change]:
    """The links inside every cycle of the key graph (C15), cycle by cycle, each cycle's keys in byte order."""
    found = cycles_of_arrays(c.link_src[edge], c.link_tgt[edge], n)
    if len(found) > 1:      # cycles in the order a walk of the keys in file order meets them
        graph: dict[int, list[int]] = {k: [] for k in c.links_ids.tolist()}
        rows = link_order[edge[link_order]]
        for s, t in zip(c.link_src[rows].tolist(), c.link_tgt[rows].tolist()):
            graph[s].append(t)
        found = cycles(graph)
    out = []
    text = c.names.bytes
    rows_of: dict[int, list[int]] = {}
    for row in link_order[edge[link_order]].tolist():
        rows_of.setdefault(int(c.link_src[row]), []).append(row)
    for cyc in found:
        members = np.array(cyc, _I64)
        members = members[byte_order(c.names, members)]
        inside = set(cyc)
        for s in members.tolist():
            for row in rows_of.get(s, ()):
                if int(c.link_tgt[row]) in inside:
                    out.append(Change("C15", "drop-link", (b"_links", text(s)), c.raw(c.link_key, row)))
                    edge[row] = False
    return out


def _drop_unreachable(c: CacheColumns, n: int, edge: np.ndarray, good: np.ndarray, in_edges: np.ndarray) -> ChangeTable:
    """Derived keys (25-character ids) reachable from no other kind of key by links: their results and
    links go; the liveness rule that follows removes what then leads nowhere. ``good``, ``edge`` and
    ``in_edges`` lose what goes."""
    names = c.names
    src, tgt = c.link_src[edge], c.link_tgt[edge]
    is_key = in_edges.copy()
    is_key[c.result_kid[good]] = True
    is_key[tgt] = True
    keys = np.flatnonzero(is_key)
    reached = np.zeros(n, bool)
    reached[keys[~derived_ids(names, keys)]] = True
    order = np.argsort(src, kind="stable")
    starts = np.searchsorted(src[order], np.arange(n + 1))
    frontier = np.flatnonzero(reached)
    while frontier.size:
        lo, hi = starts[frontier], starts[frontier + 1]
        count = hi - lo
        nxt = tgt[order[np.repeat(lo - (np.cumsum(count) - count), count) + np.arange(int(count.sum()))]]
        nxt = np.unique(nxt)
        frontier = nxt[~reached[nxt]]
        reached[frontier] = True
    gone = is_key & ~reached
    res_rows = np.flatnonzero(good & gone[c.result_kid])
    key_rows = np.flatnonzero(gone & in_edges)
    good[res_rows] = False
    in_edges[key_rows] = False
    owner = np.concatenate([c.result_kid[res_rows], key_rows])
    sub = np.concatenate([c.result_rid[res_rows], np.full(key_rows.size, -1, _I64)])
    n_res = res_rows.size

    def order_fn():
        rs = np.full(sub.size, n, _I64)           # a key's own drop-key after its results
        if n_res:
            rs[:n_res] = byte_ranks(names, sub[:n_res])
        return np.lexsort((rs, byte_ranks(names, owner)))

    def make(j: int) -> Change:
        if j < n_res:
            return Change("C14", "drop-result", (b"_result", names.bytes(owner[j])), names.bytes(sub[j]))
        return Change("C14", "drop-key", (b"_links",), names.bytes(owner[j]))
    return _table(order_fn, {("C14", "drop-result"): n_res, ("C14", "drop-key"): key_rows.size}, make)


def write_pruned(pruned: PrunedStore, writer, foreign: dict | None = None) -> None:
    """Stream the pruned store into a BoltWriter, buckets and keys in byte order. ``foreign``: top-level
    buckets BuildKit does not use (a salvage's lost+found, say), name -> a function writing their contents."""
    def bucket(name: bytes, children: dict[bytes, dict[bytes, bytes]]) -> None:
        writer.begin_bucket(name)
        for sub in sorted(children):
            writer.put_bucket(sub, sorted(children[sub].items()))
        writer.end_bucket()

    tops = {
        b"_backlinks": {t: dict.fromkeys(srcs, b"") for t, srcs in pruned.backlinks.items()},
        b"_byresult": {r: dict.fromkeys(kids, b"") for r, kids in pruned.byresult.items()},
        b"_links": {s: dict.fromkeys(links, b"") for s, links in pruned.links.items()},
        b"_result": pruned.results,
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
    kept: PrunedColumns
    changes: Changes
    page_size: int
    taken: set = field(default_factory=set)     # buckets merged into the four (rehome.py), left out elsewhere

    @property
    def pruned(self) -> PrunedStore:
        """The store to write, as bytes (built when asked: a dry run never needs it)."""
        return self.kept.store()


def plan_file(path: str, *, break_cycles: bool = False, records: set[bytes] | None = None, rehome: bool = False,
              drop_unreachable: bool = False, preflight: bool = True, progress=None) -> PrunePlan:
    """Plan the prune of the cache.db at ``path``: refused when it is structurally damaged (salvage first;
    ``preflight=False`` when the caller has checked already), after ``rehome`` when asked. With the
    preflight, the check's own pass over the tree is the read the plan is made from.
    ``progress(done, total)``: the check (and read), then the plan."""
    from ..check.checker import progress_part
    from ..repair.preflight import require_sound
    from ..storage import Database
    from .cachecolumns import CacheLeaves, columns_from_leaves, load_cache_columns
    from .rehome import rehome_columns
    with gc_paused():       # a plan is millions of small objects without cycles
        if preflight:
            leaves = CacheLeaves()
            require_sound(path, progress=progress_part(progress, 0, 2, 3), on_leaves=leaves)
            cols = columns_from_leaves(leaves)
        with Database(path) as db:
            if not preflight:
                cols = load_cache_columns(db, progress=progress_part(progress, 0, 2, 3))
            moved: list[Change] = []
            taken: set[tuple[bytes, ...]] = set()
            if rehome:
                cols, moved, taken = rehome_columns(db, cols)
            page_size = db.page_size
        kept, changes = plan_prune(cols, break_cycles=break_cycles, records=records,
                                   drop_unreachable=drop_unreachable)
    if progress is not None:
        progress(3, 3)
    return PrunePlan(path, kept, Changes([moved, changes]), page_size, taken)


def apply_prune(plan: PrunePlan, report: dict | None = None) -> str:
    """Write the pruned store beside the original, verify it (structure, and no dangling link or index fault
    left), and swap it in through the one repair primitive (which writes the JSON report of the changes, with
    ``report``'s fields, beside the backup); returns the backup's path."""
    return prepare_prune(plan).commit(lambda done: prune_report(plan, report)).backup


def prune_report(plan: PrunePlan, extra: dict | None = None) -> dict:
    return {"operation": "buildkit prune", "file": plan.path, **(extra or {}), "actions": plan.changes.actions(),
            "changes": (c.as_dict() for c in plan.changes)}     # written as they are made (replace.write_report)


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
