"""Semantic checks of cache.db: the invariants of reference/buildkit-stores.md §1.5 and the dangling-link
taxonomy of §1.6, each reported as a Problem with its code.

Every check is a set operation over the integer columns of cachecolumns.py (pairs of codes packed into
one int64, membership by sorting), so a 200k-key store is checked in array time; problems come out as
ProblemTables and are built only when listed. D3/D4/D5 are the taxonomy names of C10/C11/C8 (missing
backlink, stale backlink, orphan results); they are reported once, under the D code, since that is the
name a repair acts on.
"""
from __future__ import annotations

import numpy as np

from ..storage.gather import Gather
from ..check.problems import Problem, Problems, ProblemTable, adder
from ..storage import Database
from ..storage.strings import Names, by_length, rows_at
from .cachecolumns import CacheColumns, load_cache_columns
from .cachedb import NOT_CANONICAL, TOP_BUCKETS, split_result_id
from .graph import cycles_of_arrays, live_mask, pair_codes, sorted_unique

_DERIVED = np.zeros(256, bool)                      # the 25 characters of identity.NewID: [0-9a-z]
_DERIVED[ord("0"):ord("9") + 1] = True
_DERIVED[ord("a"):ord("z") + 1] = True
_ROOT_PREFIXES = (b"sha256:", b"random:")


def check_cache_db(db: Database, file: str | None = None, on_damage=None) -> Problems:
    """Decode a cache.db in columns and check it."""
    return check_cache_columns(load_cache_columns(db, on_damage=on_damage), file)


def _member(x: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """x in sorted_set, elementwise (np.isin hashes both sides; one side is sorted already)."""
    if not sorted_set.size:
        return np.zeros(x.size, bool)
    i = np.minimum(np.searchsorted(sorted_set, x), sorted_set.size - 1)
    return sorted_set[i] == x


def check_cache_columns(c: CacheColumns, file: str | None = None) -> Problems:
    out = Problems()
    add = adder(out, file)
    names = c.names
    n = len(names)

    def table(code, rows, make):
        rows = np.asarray(rows)
        out.extend(ProblemTable(code, rows.size, lambda i: make(rows[i])))

    def problem(code, message, path=(), key=None, **details):
        return Problem(code, message, file=file,
                       path=tuple(p if isinstance(p, bytes) else names.bytes(p) for p in path),
                       key=None if key is None else (key if isinstance(key, bytes) else names.bytes(key)),
                       details=details)

    for name in TOP_BUCKETS:
        if name not in c.top:
            add("C1", f"top-level bucket {name.decode()} is missing (buildkitd recreates it empty)")
    for name in c.foreign_top:
        add("C1", "top-level bucket BuildKit does not use", key=name)
    for a in c.anomalies:
        add(a.code, a.message, path=a.bucket, key=a.key)

    # results and their reverse index
    for _, r in sorted(c.result_errors.items()):
        add("C4", r.error, path=(b"_result", r.key_id), key=r.result_id)
    bad_rid = unsplittable_result_ids(names, sorted_unique(c.result_rid))
    table("C16", np.flatnonzero(bad_rid[c.result_rid]),
          lambda i: problem("C16", "result id is not <workerID>::<refID>", (b"_result", c.result_kid[i]),
                            c.result_rid[i]))
    result_pairs = pair_codes(c.result_rid, c.result_kid, n)
    byresult_pairs = pair_codes(c.byresult_rid, c.byresult_kid, n)
    table("C5", np.flatnonzero(~_member(result_pairs, np.sort(byresult_pairs))),
          lambda i: problem("C5", "result has no _byresult entry: Release can never find it",
                            (b"_result", c.result_kid[i]), c.result_rid[i]))
    is_links_id = np.zeros(n, bool)
    is_links_id[c.links_ids] = True
    per_kid = np.bincount(c.result_kid, minlength=n)
    table("D5", np.flatnonzero((per_kid > 0) & ~is_links_id),
          lambda k: problem("D5", f"{per_kid[k]} result(s) but no _links bucket: ReleaseUnreferenced never sees "
                                  "them", (b"_result", k)))
    per_rid = np.bincount(c.byresult_rid, minlength=n)
    table("C6", c.byresult_ids[per_rid[c.byresult_ids] == 0],
          lambda r: problem("C6", "empty _byresult bucket", (b"_byresult", r)))
    stale = sorted_unique(byresult_pairs[~_member(byresult_pairs, np.sort(result_pairs))])
    table("C5", stale, lambda p: problem("C5", "stale _byresult entry: no such result", (b"_byresult", p // n),
                                         p % n))

    # links
    for _, ln in sorted(c.link_errors.items()):
        add(ln.code or "C9", f"poison link key: {ln.error}", path=(b"_links", ln.src), key=ln.raw)
    table("C9", c.link_spelled, lambda i: problem("C9", f"poison link key: {NOT_CANONICAL}",
                                                  (b"_links", c.link_src[i]), c.raw(c.link_key, i)))
    linked = c.link_tgt >= 0
    src, tgt = c.link_src[linked], c.link_tgt[linked]
    found_cycles = cycles_of_arrays(src, tgt, n)     # now, while the least else is held: its peeling is the peak
    link_rows = np.flatnonzero(linked)
    back = sorted_unique(pair_codes(c.backlink_tgt, c.backlink_src, n))
    order = np.argsort(pair_codes(tgt, src, n))            # sorted needles: searches that walk memory forward
    link_pairs = pair_codes(tgt, src, n)[order]
    table("D3", np.sort(link_rows[order[~_member(link_pairs, back)]]),
          lambda i: problem("D3", f"link to {names.str(c.link_tgt[i])} has no _backlinks entry (export misses "
                                  "this parent)", (b"_links", c.link_src[i]), c.raw(c.link_key, i)))
    edges = sorted_unique(link_pairs)                # (target, parent), each once
    stale = back[~_member(back, edges)]
    table("D4", stale, lambda p: problem("D4", f"stale backlink: {names.str(p % n)} has no link to this key",
                                         (b"_backlinks", p // n), p % n))
    del back, order, link_pairs, link_rows, result_pairs, byresult_pairs      # the peak is later: let them go

    e_tgt, e_src = edges // max(n, 1), edges % max(n, 1)
    del edges
    n_parents = np.bincount(e_tgt, minlength=n)
    del e_tgt
    parents_start = np.concatenate([[0], np.cumsum(n_parents)])

    def parents(t):
        return sorted(names.str(x) for x in e_src[parents_start[t]:parents_start[t + 1]])

    has_results = per_kid > 0
    outdeg = np.bincount(src, minlength=n)
    live = live_mask(has_results, src, tgt)
    is_id = is_links_id.copy()
    is_id[c.results_ids] = True
    is_id[c.backlinks_ids] = True
    is_target = n_parents > 0
    d1 = is_target & ~is_id
    d2 = is_target & is_id & ~has_results & (outdeg == 0)
    c12 = is_target & is_id & ~d2 & ~live
    table("D1", np.flatnonzero(d1),
          lambda t: problem("D1", f"hard-dangling: {n_parents[t]} parent(s) link to a key that does not exist",
                            key=t, parents=parents(t)))
    table("D2", np.flatnonzero(d2),
          lambda t: problem("D2", "ghost target: no results, no outgoing links, still linked from "
                                  f"{n_parents[t]} parent(s)", key=t, parents=parents(t)))
    table("C12", np.flatnonzero(c12),
          lambda t: problem("C12", f"dead chain: nothing below this key has a result; {n_parents[t]} parent(s) "
                                   "link to it", key=t, parents=parents(t)))
    targets = np.flatnonzero(is_target)
    table("C14", targets[_root_form(names, targets)],
          lambda t: problem("C14", "a root-form key is a link target", key=t))

    table("C13", np.flatnonzero(is_id & ~has_results & (outdeg == 0) & ~is_target),
          lambda k: problem("C13", "empty branch: no results, no links, nothing links to it", key=k))
    has_backlinks = np.bincount(c.backlink_tgt, minlength=n) > 0
    backlinked = np.flatnonzero(is_id & has_backlinks)
    table("C14", backlinked[_root_form(names, backlinked)],
          lambda k: problem("C14", "a root-form key has backlinks", key=k))
    unreached = np.flatnonzero(is_id & ~is_target & (has_results | (outdeg > 0)))
    table("C14", unreached[derived_ids(names, unreached)],
          lambda k: problem("C14", "derived key that nothing links to: Query can never reach it", key=k))
    del live, outdeg, is_id, is_target, has_results, has_backlinks, backlinked, unreached, targets

    for cyc in found_cycles:
        keys = sorted(names.str(k) for k in cyc)
        if len(cyc) == 1:
            add("C15", "self-loop: the key links to itself", key=keys[0], cycle=keys)
        else:
            add("C15", f"cycle of {len(cyc)} keys", key=keys[0], cycle=keys)
    return out


def unsplittable_result_ids(names: Names, codes: np.ndarray) -> np.ndarray:
    """Per code: a result id that is not `<workerID>::<refID>` (C16). One '::' and no ':::' settles it by
    arrays; the rest (never BuildKit's) are split as Python splits them."""
    n = len(names)
    bad = np.zeros(n, bool)
    u8 = names.data
    doubles = np.zeros(codes.size, np.int64)
    for length, idx in by_length(names.length[codes]):
        if length >= 2:
            colon = rows_at(u8, names.off[codes[idx]], length) == ord(":")
            doubles[idx] = (colon[:, 1:] & colon[:, :-1]).sum(1)
    bad[codes[doubles == 0]] = True
    for x in codes[doubles > 1].tolist():
        bad[x] = split_result_id(names.str(x)) is None
    return bad


def _root_form(names: Names, codes: np.ndarray) -> np.ndarray:
    """Which of ``codes`` are root-form ids: a sha256:/random: digest."""
    first7 = Gather(names.data, names.data.size).prefix8(names.off[codes], np.minimum(names.length[codes], 7))
    root = np.zeros(codes.size, bool)
    for prefix in _ROOT_PREFIXES:
        root |= (first7 == int.from_bytes(prefix + b"\0", "big")) & (names.length[codes] >= 7)
    return root


def derived_ids(names: Names, codes: np.ndarray) -> np.ndarray:
    """Which of ``codes`` are derived ids: 25 characters of [0-9a-z]."""
    out = np.zeros(codes.size, bool)
    is25 = np.flatnonzero(names.length[codes] == 25)
    if is25.size:
        out[is25] = _DERIVED[rows_at(names.data, names.off[codes[is25]], 25)].all(1)
    return out


__all__ = ["check_cache_columns", "check_cache_db"]
