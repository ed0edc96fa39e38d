"""ReleaseUnreferenced of a whole cache.db, computed on its columns (cachecolumns.py) instead of a bucket
operation at a time.

At a start with no worker (or one that lost its records) buildkitd releases every result of cache.db:
some 60k releases of a BuildKit-sized store, each a transaction of ~14 bucket operations, which replayed on
an Overlay cost seconds of Python. Yet a release is simple set arithmetic: the walk of `_links` meets the
unloadable results in the order (key id, result id); each release deletes the result from every key its
`_byresult` bucket names (a key whose `_result` bucket is gone is skipped, and then the `_byresult` bucket
stays), and ``emptyBranchWithParents`` climbs from a key left with no results and no links. The releases
are array passes here; only the climb, which is rare and sequential by nature, runs in Python, and only for
the keys it empties. The outcome is the release journal as columns (``ReleaseJournal``): the same
mutations, in the same order, as the key-by-key replay in startup.py makes, their Mutation objects built only
when someone reads them.

What the columns cannot decide is left to that replay (``release_on_columns`` returns None): a cycle the
climb would run round forever, or a link key without exactly one '@' (its error rolls the release back).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..storage.overlay import Mutation
from ..storage.strings import rows_at
from .graph import sorted_unique

_I64 = np.int64
TOPS = (b"_result", b"_links", b"_byresult", b"_backlinks")
R, L, B, K = range(4)                      # index into TOPS
OPS = ("delete", "delete-bucket")
WHATS = ("result", "byresult", "link", "links", "backlinks", "results")
W_RESULT, W_BYRESULT, W_LINK, W_LINKS, W_BACKLINKS, W_RESULTS = range(6)
_NUL = 0


class Undecidable(Exception):
    """The columns cannot say what the walk does: replay it key by key."""


class ReleaseJournal(Sequence):
    """The mutations of one ReleaseUnreferenced pass, as columns: ``op`` (index into OPS), ``top`` (into
    TOPS), ``bucket`` (the id bucket's name code; -1: the operation is on the top-level bucket), ``key`` (a
    name code; -1: the link key ``link``), ``what`` (into WHATS), ``why`` (into ``reasons``), ``subject``
    (a name code). Every mutation is a delete or a delete-bucket and happens in ``stage``."""

    def __init__(self, names, link_key: tuple, columns: dict, reasons: Sequence, stage: Any, raw_data=None):
        self.names, self.link_key, self.reasons, self.stage = names, link_key, tuple(reasons), stage
        self.raw_data = names.data if raw_data is None else raw_data    # the bytes link_key points into
        self.op, self.top, self.bucket, self.key = (columns[c] for c in ("op", "top", "bucket", "key"))
        self.link, self.what, self.why, self.subject = (columns[c] for c in ("link", "what", "why", "subject"))

    def __len__(self) -> int:
        return int(self.op.size)

    def _bytes(self, code: int) -> bytes:
        return self.names.bytes(code)

    def fields(self, i: int) -> tuple:
        """(op, path, key, what, why, subject) of mutation ``i``."""
        top, bucket, key = TOPS[self.top[i]], int(self.bucket[i]), int(self.key[i])
        path = (top,) if bucket < 0 else (top, self._bytes(bucket))
        if key >= 0:
            raw = self._bytes(key)
        else:
            o = int(self.link_key[0][self.link[i]])
            raw = self.raw_data[o:o + int(self.link_key[1][self.link[i]])].tobytes()
        return OPS[self.op[i]], path, raw, WHATS[self.what[i]], self.reasons[self.why[i]], \
            self._bytes(int(self.subject[i]))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        op, path, key, what, why, subject = self.fields(i)
        return Mutation(op, path, key, None, (what, why, subject, self.stage))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def counts(self) -> Counter:
        """(op, what, why) -> how many, without building the mutations."""
        packed = (self.op.astype(_I64) * len(WHATS) + self.what) * len(self.reasons) + self.why
        values, n = np.unique(packed, return_counts=True)
        out: Counter = Counter()
        for v, c in zip(values.tolist(), n.tolist()):
            rest, why = divmod(v, len(self.reasons))
            op, what = divmod(rest, len(WHATS))
            out[OPS[op], WHATS[what], self.reasons[why]] = c
        return out


def name_order(cols) -> tuple[np.ndarray, bool]:
    """(a rank per name code in byte order, whether those names are all ASCII) of the names the release
    orders by (the keys and ids of results and of `_byresult` entries; -1 for the others), worked out once
    and kept with the columns. Byte order is Go's bytes.Compare and Python's bytes ordering; for ASCII names
    it is also the order of their text."""
    got = cols.__dict__.get("_name_order")
    if got is None:
        codes = sorted_unique(np.concatenate([cols.result_kid, cols.result_rid, cols.byresult_kid,
                                              cols.byresult_rid]).astype(_I64))
        got = cols.__dict__["_name_order"] = _byte_rank(cols.names, codes)
    return got


def _byte_rank(names, codes: np.ndarray) -> tuple[np.ndarray, bool]:
    rank = np.full(len(names), -1, _I64)
    if not codes.size:
        return rank, True
    off, length, u8 = names.off[codes].astype(_I64), names.length[codes].astype(_I64), names.data
    width = int(length.max())
    # numpy's fixed-width byte strings pad with NUL and ignore trailing NULs: exact unless a name ends in one
    nonempty = length > 0
    if width <= 256 and not (u8[(off + length - 1)[nonempty]] == _NUL).any():
        fixed = np.zeros(codes.size, f"S{max(width, 1)}")
        for m in sorted_unique(length).tolist():
            idx = np.flatnonzero(length == m)
            if m:
                fixed[idx] = rows_at(u8, off[idx], m).view(f"S{m}").ravel()
        order = np.argsort(fixed, kind="stable")
        ascii = not (fixed.view(np.uint8) >= 0x80).any()
    else:
        text = [names.bytes(c) for c in codes.tolist()]
        order = np.array(sorted(range(codes.size), key=text.__getitem__), _I64)
        ascii = all(b.isascii() for b in text)
    rank[codes[order]] = np.arange(codes.size, dtype=_I64)
    return rank, ascii


def _groups(keys: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, bounds): the indices of ``keys`` sorted by key (stable), and where each key value 0..n-1
    starts among them."""
    order = np.argsort(keys, kind="stable")
    return order, np.searchsorted(keys[order], np.arange(n + 1))


def release_order(cols, unloadable: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """The result id codes ReleaseUnreferenced releases, in the order its walk meets them: `_links` keys in
    byte order, each key's results in byte order, each result once. ``unloadable``: per name code."""
    walked = np.zeros(len(cols.names), bool)
    walked[cols.links_ids] = True
    rows = np.flatnonzero(walked[cols.result_kid] & unloadable[cols.result_rid])
    kid, rid = cols.result_kid[rows], cols.result_rid[rows]
    order = np.lexsort((rank[rid], rank[kid]))
    rid = rid[order]
    by_rid = np.argsort(rid, kind="stable")
    s = rid[by_rid]
    first = by_rid[np.r_[True, s[1:] != s[:-1]]] if s.size else by_rid
    return rid[np.sort(first)]


def release_on_columns(cols, why_of: np.ndarray, reasons: Sequence, empty_why: int, stage: Any,
                       rank: np.ndarray | None = None) -> ReleaseJournal | None:
    """ReleaseUnreferenced on a store whose columns are all it holds (a sound tree, no anomaly, no odd
    result or link key) and that nothing has changed yet. ``why_of``: per name code, the index into
    ``reasons`` of why that result is released, -1 for a result that stays; ``empty_why``: the index of
    emptyBranchWithParents' reason. None when the columns cannot decide (see the module)."""
    try:
        return _release(cols, why_of, reasons, empty_why, stage, name_order(cols)[0] if rank is None else rank)
    except (Undecidable, RecursionError):
        return None


def _release(cols, why_of, reasons, empty_why, stage, rank) -> ReleaseJournal:
    n = len(cols.names)
    released = release_order(cols, why_of >= 0, rank)
    step = np.full(n, -1, _I64)             # result id code -> its place in the release order
    step[released] = np.arange(released.size)

    # the pairs (result, key) of the released results' `_byresult` buckets, in the order release() meets them
    e = np.flatnonzero(step[cols.byresult_rid] >= 0)
    p_rid, p_kid = cols.byresult_rid[e], cols.byresult_kid[e]
    o = np.lexsort((rank[p_kid], step[p_rid]))
    p_rid, p_kid = p_rid[o], p_kid[o]
    npairs = p_rid.size
    has_r = np.zeros(n, bool)               # the key has a `_result` bucket (a key without one is skipped)
    has_r[cols.results_ids] = True
    row_keys = np.sort(cols.result_kid.astype(_I64) * n + cols.result_rid)
    pk = p_kid.astype(_I64) * n + p_rid
    at = np.searchsorted(row_keys, pk)
    holds = (at < row_keys.size) & (row_keys[np.minimum(at, max(row_keys.size - 1, 0))] == pk) if row_keys.size \
        else np.zeros(npairs, bool)         # the key's `_result` bucket holds this result: it is deleted
    holds &= has_r[p_kid]

    # each key's results left after each pair: the pairs where a key is left with none may empty it
    left = np.bincount(cols.result_kid, minlength=n).astype(_I64)
    by_kid = np.argsort(p_kid, kind="stable")
    done = np.zeros(npairs, _I64)
    if npairs:
        sk = p_kid[by_kid]
        c = np.cumsum(holds[by_kid])
        starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
        base = np.repeat(c[starts] - holds[by_kid][starts], np.diff(np.r_[starts, npairs]))
        done[by_kid] = c - base
    empty_after = has_r[p_kid] & (left[p_kid] - done == 0)
    zero_at = np.full(n, np.iinfo(_I64).max, _I64)      # the pair after which a key has no result left
    zero_at[left == 0] = -1
    cand = np.flatnonzero(empty_after & holds)
    np.minimum.at(zero_at, p_kid[cand], cand)

    climb = _Climb(cols, zero_at, has_r, empty_why)
    cand = np.flatnonzero(empty_after)
    n_links = np.bincount(cols.link_src, minlength=n)[p_kid[cand]]
    for p, kid, linked in zip(cand.tolist(), p_kid[cand].tolist(), n_links.tolist()):
        if linked and kid not in climb.links:
            continue        # it keeps the links it had: not empty (only a climb takes links away)
        climb.at(p, kid)

    # pairs on a key whose `_result` bucket the climb removed before them are skipped whole
    gone_at = np.full(n, np.iinfo(_I64).max, _I64)
    if climb.r_gone:
        gone_at[list(climb.r_gone)] = list(climb.r_gone.values())
    live = has_r[p_kid] & (np.arange(npairs) <= gone_at[p_kid])
    # `_byresult/<result>` goes with its last key, unless a key was skipped (it stays in the bucket then)
    last = np.r_[p_rid[1:] != p_rid[:-1], True] if npairs else np.zeros(0, bool)
    skipped = np.zeros(n, bool)
    skipped[p_rid[~live]] = True
    bucket_goes = last & ~skipped[p_rid]

    pairs = np.arange(npairs, dtype=_I64)
    why = why_of[p_rid]
    parts = [  # (pair, slot, op, top, bucket, key, link, what, why, subject) for each kind of row
        _rows(pairs, 0, holds & live, 0, R, p_kid, p_rid, W_RESULT, why, p_rid),
        _rows(pairs, 1, live, 0, B, p_rid, p_kid, W_BYRESULT, why, p_rid),
        _rows(pairs, 2, bucket_goes & live, 1, B, -1, p_rid, W_BYRESULT, why, p_rid),
    ]
    if climb.rows:
        t = np.array(climb.rows, _I64).T
        parts.append(dict(pair=t[0], slot=3 + np.arange(t.shape[1]), op=t[1], top=t[2], bucket=t[3], key=t[4],
                          link=t[5], what=t[6], why=t[7], subject=t[8]))
    columns = {k: np.concatenate([np.asarray(p[k], _I64) for p in parts]) for k in parts[0]}
    order = np.lexsort((columns["slot"], columns["pair"]))
    small = {"op": np.int8, "top": np.int8, "what": np.int8, "why": np.int16}
    out = {k: v[order].astype(small.get(k, _I64)) for k, v in columns.items() if k not in ("pair", "slot")}
    return ReleaseJournal(cols.names, cols.link_key, out, reasons, stage, _raw_data(cols))


def _rows(pairs, slot, mask, op, top, bucket, key, what, why, subject) -> dict:
    def pick(x):
        return x[mask] if isinstance(x, np.ndarray) else np.full(int(mask.sum()), x, _I64)
    return dict(pair=pairs[mask], slot=np.full(int(mask.sum()), slot, _I64), op=pick(op), top=pick(top),
                bucket=pick(bucket), key=pick(key), link=np.full(int(mask.sum()), -1, _I64), what=pick(what),
                why=pick(why), subject=pick(subject))


class _Climb:
    """emptyBranchWithParents, run on the link graph of the columns for the keys a release may empty: the
    state of each bucket it reads is made from the columns the first time it is read, then kept."""

    def __init__(self, cols, zero_at, has_r, empty_why: int):
        self.cols, self.zero_at, self.has_r, self.why = cols, zero_at, has_r, empty_why
        n = len(cols.names)
        self.has_l = np.zeros(n, bool)
        self.has_l[cols.links_ids] = True
        self.has_k = np.zeros(n, bool)
        self.has_k[cols.backlinks_ids] = True
        self.l_order, self.l_bounds = _groups(cols.link_src, n)
        self.k_order, self.k_bounds = _groups(cols.backlink_tgt, n)
        self.links: dict[int, dict[int, int]] = {}     # key -> {link index: target code} still there
        self.l_gone: set[int] = set()
        self.k_gone: set[int] = set()
        self.r_gone: dict[int, int] = {}                # key -> the pair whose climb removed its `_result` bucket
        self.rows: list[tuple] = []                     # (pair, op, top, bucket, key, link, what, why, subject)
        self.stack: set[int] = set()
        self.pair = 0

    def _raw(self, i: int) -> bytes:
        off, length = self.cols.link_key
        o = int(off[i])
        return _raw_data(self.cols)[o:o + int(length[i])].tobytes()

    def _links(self, kid: int) -> dict[int, int] | None:
        if kid in self.l_gone or not self.has_l[kid]:
            return None
        got = self.links.get(kid)
        if got is None:
            idx = self.l_order[self.l_bounds[kid]:self.l_bounds[kid + 1]]
            got = self.links[kid] = dict(zip(idx.tolist(), self.cols.link_tgt[idx].tolist()))
        return got

    def _r_empty(self, kid: int) -> bool | None:
        """None: no `_result` bucket; else whether it is empty now."""
        if not self.has_r[kid] or kid in self.r_gone:
            return None
        return bool(self.zero_at[kid] <= self.pair)

    def at(self, pair: int, kid: int) -> None:
        self.pair = pair
        self.empty_branch(kid)

    def emit(self, op, top, bucket, key, link, what, subject) -> None:
        self.rows.append((self.pair, op, top, bucket, key, link, what, self.why, subject))

    def empty_branch(self, kid: int) -> None:
        empty = self._r_empty(kid)
        if not empty:
            return
        links = self._links(kid)
        if links:
            return
        if kid in self.stack:
            raise Undecidable("the climb runs round a cycle of links")
        self.stack.add(kid)
        if self.has_k[kid] and kid not in self.k_gone:
            idx = self.k_order[self.k_bounds[kid]:self.k_bounds[kid + 1]]
            names = self.cols.names
            for parent in sorted(self.cols.backlink_src[idx].tolist(), key=names.bytes):
                sub = self._links(parent)
                if sub is not None:
                    keys = sorted((self._raw(i), i) for i in sub)
                    if any(raw.count(b"@") != 1 for raw, _ in keys):
                        raise Undecidable("a link key without exactly one '@': the release is rolled back")
                    for _, i in keys:
                        if sub[i] == kid:
                            del sub[i]
                            self.emit(0, L, parent, -1, i, W_LINK, kid)
                    if not sub and self._r_empty(parent) is not False:     # no `_result` bucket, or empty
                        self.l_gone.add(parent)
                        self.emit(1, L, -1, parent, -1, W_LINKS, parent)
                self.empty_branch(parent)
            self.k_gone.add(kid)
            self.emit(1, K, -1, kid, -1, W_BACKLINKS, kid)
        if self._links(kid) is not None:
            self.l_gone.add(kid)
            self.emit(1, L, -1, kid, -1, W_LINKS, kid)
        self.r_gone[kid] = self.pair
        self.emit(1, R, -1, kid, -1, W_RESULTS, kid)
        self.stack.discard(kid)


def _raw_data(cols) -> np.ndarray:
    """The bytes the columns' raw link keys are ranges of (``CacheColumns.raw_data``; the names' buffer for
    columns that keep everything there)."""
    data = getattr(cols, "raw_data", None)
    return cols.names.data if data is None else data
