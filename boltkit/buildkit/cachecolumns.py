"""cache.db in columns: every id bucket and every level-3 entry as integer arrays.

A BuildKit cache.db holds ~200k ids spread over four buckets, one nested (almost always inline) bucket
per id and a few entries in each. Decoded entry by entry into Python objects that costs ~10 s, far more
than the structural check of the same file. Here the elements come from the structural pass itself
(TreeScan's ``on_leaves``: nothing is read twice), every string that names an id is interned to an
integer by hashing, and link keys in Go's canonical form are recognised a layout at a time; the semantic
checks then become set operations on integer arrays (cachecheck.py). Entries not in the shape BuildKit
writes take the exact slow path of cachedb.py, so the columns say what the object decoder says, sooner.
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..check.gather import Gather
from ..check.problems import Severity
from ..check.scan import TreeScan
from ..errors import CorruptionError
from ..schemas import BUCKET_LEAF_FLAG
from ..storage import Database
from .cachedb import (CANONICAL_LINK_KEY, LAZY, TOP_BUCKETS, Anomaly, CacheResult, CacheStore, Link,
                      decode_link_key, decode_result)

_I64 = np.int64


@dataclass
class Entries:
    """One top-level bucket: its id buckets (names as file ranges) and their level-3 entries."""
    name_off: np.ndarray
    name_len: np.ndarray
    owner: np.ndarray            # per entry: index into the names
    key_off: np.ndarray
    key_len: np.ndarray
    val_off: np.ndarray
    val_len: np.ndarray


@dataclass
class Names:
    """Interned strings: code -> one occurrence in the file. Codes are dense, numbered in order of first
    appearance (ids first as _links bucket names, which the file keeps sorted)."""
    data: np.ndarray              # the file as bytes; a view keeps the mapping alive after the Database closes
    off: np.ndarray
    length: np.ndarray

    def __len__(self) -> int:
        return int(self.off.size)

    def bytes(self, code) -> bytes:
        o = int(self.off[code])
        return self.data[o:o + int(self.length[code])].tobytes()

    def str(self, code) -> str:
        return self.bytes(code).decode("utf-8", "replace")


@dataclass
class CacheColumns:
    """Everything the semantic check needs, as integer codes into ``names``."""
    names: Names
    top: set[bytes] = field(default_factory=set)
    foreign_top: list[bytes] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    links_ids: np.ndarray = None        # codes of the _links/<id> buckets
    results_ids: np.ndarray = None
    byresult_ids: np.ndarray = None     # codes of result ids
    backlinks_ids: np.ndarray = None
    link_src: np.ndarray = None         # per link key
    link_tgt: np.ndarray = None         # -1: no readable target
    link_key: tuple = None              # (offsets, lengths) of the raw link keys
    link_errors: dict[int, Link] = field(default_factory=dict)      # link index -> poison key
    result_kid: np.ndarray = None       # per result
    result_rid: np.ndarray = None
    result_errors: dict[int, CacheResult] = field(default_factory=dict)
    result_value: tuple = None          # (offsets, lengths) of the raw CacheResult values
    byresult_rid: np.ndarray = None     # per _byresult entry
    byresult_kid: np.ndarray = None
    backlink_tgt: np.ndarray = None     # per _backlinks entry
    backlink_src: np.ndarray = None

    def raw(self, off_len: tuple, i: int) -> bytes:
        o = int(off_len[0][i])
        return self.names.data[o:o + int(off_len[1][i])].tobytes()

    def to_store(self) -> CacheStore:
        """The same contents as Python objects, for the repairs that rewrite the store: what the object
        decoder of cachedb.py gives, built from the columns (poison keys and odd results are decoded already)."""
        u8 = self.names.data
        names = [u8[o:o + n].tobytes().decode("utf-8", "replace")
                 for o, n in zip(self.names.off.tolist(), self.names.length.tolist())]

        def raw(off_len):
            return (u8[o:o + n].tobytes() for o, n in zip(off_len[0].tolist(), off_len[1].tolist()))

        s = CacheStore(top=set(self.top), foreign_top=list(self.foreign_top), anomalies=list(self.anomalies))
        for table, ids in ((s.links, self.links_ids), (s.results, self.results_ids)):
            table.update((names[k], []) for k in ids.tolist())
        for table, ids in ((s.byresult, self.byresult_ids), (s.backlinks, self.backlinks_ids)):
            table.update((names[k], set()) for k in ids.tolist())
        errors = self.link_errors
        for i, (src, tgt, key) in enumerate(zip(self.link_src.tolist(), self.link_tgt.tolist(), raw(self.link_key))):
            s.links[names[src]].append(errors.get(i) or Link(names[src], names[tgt], LAZY, key))
        errors = self.result_errors
        for i, (kid, rid, value) in enumerate(zip(self.result_kid.tolist(), self.result_rid.tolist(),
                                                  raw(self.result_value))):
            r = errors.get(i)
            if r is None:
                created = _RESULT.fullmatch(value).group(1).decode()
                r = CacheResult(names[kid], names[rid], created, names[rid], value)
            s.results[names[kid]].append(r)
        for rid, kid in zip(self.byresult_rid.tolist(), self.byresult_kid.tolist()):
            s.byresult[names[rid]].add(names[kid])
        for tgt, src in zip(self.backlink_tgt.tolist(), self.backlink_src.tolist()):
            s.backlinks[names[tgt]].add(names[src])
        return s


class CacheLeaves:
    """Receives the leaf elements of the structural pass (TreeScan's ``on_leaves``) and keeps them, so
    the semantic check reads nothing twice. Stops keeping them as soon as the root bucket shows the file
    is not a cache.db."""

    def __init__(self):
        self.parts: list[tuple] = []
        self.scan = None
        self.wanted = True

    def __call__(self, scan, bucket, flags, ks, klen, ve) -> None:
        if self.scan is None:
            root = np.flatnonzero(bucket == 0)
            names = {bytes(scan.data[int(ks[i]):int(ks[i] + klen[i])]) for i in root}
            self.wanted = not root.size or bool(names & set(TOP_BUCKETS))
        self.scan = scan
        if self.wanted:     # compact: the bulk of a cache.db's memory is these arrays
            self.parts.append((bucket.astype(np.int32), (flags & BUCKET_LEAF_FLAG) != 0, ks,
                               klen.astype(np.int32), (ve - ks - klen).astype(np.int32)))

    def take(self) -> tuple:
        """(bucket, is_bucket, key_start, key_len, value_len) of every element kept, once."""
        parts, self.parts = self.parts, []
        if not parts:
            return np.zeros(0, np.int32), np.zeros(0, bool), np.zeros(0, _I64), np.zeros(0, np.int32), \
                np.zeros(0, np.int32)
        return tuple(np.concatenate(x) for x in zip(*parts))


def load_cache_columns(db: Database, on_damage=None) -> CacheColumns:
    """Read a cache.db into columns with one bulk pass over its tree. Damage (each error the pass finds)
    goes to ``on_damage`` as a CorruptionError, or is raised; the damaged parts are left out."""
    def emit(p):
        if p.severity is Severity.ERROR:
            e = CorruptionError(p.message, pgid=p.pgid, offset=p.offset, path=p.path)
            if on_damage is None:
                raise e
            on_damage(e)

    leaves = CacheLeaves()
    n = db.pager.limit_pages
    TreeScan(db, db.meta, emit, quick=True, refs=np.zeros(n, np.uint8), freed=np.zeros(n, bool),
             on_leaves=leaves).run()
    return columns_from_leaves(leaves)


def columns_from_leaves(leaves: CacheLeaves) -> CacheColumns:
    """Sort the elements of a cache.db's tree into its four buckets and decode them (see the module)."""
    if leaves.scan is None:
        g = Gather(np.zeros(0, np.uint8), 0)
        parent, koff, klen = (np.zeros(1, _I64),) * 3
    else:
        g = leaves.scan.g
        parent, koff, klen = leaves.scan.bucket_table()
    bucket, is_bucket, ks, kl, vlen = leaves.take()
    cols = CacheColumns(names=None)
    u8 = g.u8

    def name(b) -> bytes:
        return u8[int(koff[b]):int(koff[b] + klen[b])].tobytes()

    def key(i) -> bytes:
        return u8[int(ks[i]):int(ks[i] + kl[i])].tobytes()

    for i in np.flatnonzero((bucket == 0) & ~is_bucket):
        cols.anomalies.append(Anomaly("C1", (), key(i), "plain key at the top level"))
    tops = np.flatnonzero(parent == 0)
    tops = tops[tops > 0]
    by_name: dict[bytes, list[int]] = {}
    for t in tops.tolist():
        by_name.setdefault(name(t), []).append(t)
    for top_name in by_name:
        if top_name in TOP_BUCKETS:
            cols.top.add(top_name)
        else:
            cols.foreign_top.append(top_name)

    level = np.zeros(parent.size, np.int8)             # 1: a top-level bucket BuildKit uses, 2: an id bucket
    top_of = np.full(parent.size, -1, _I64)            # id bucket -> index of its top in TOP_BUCKETS
    for j, top_name in enumerate(TOP_BUCKETS):
        level[by_name.get(top_name, [])] = 1
        top_of[by_name.get(top_name, [])] = j
    ids = np.flatnonzero((level[parent] == 1) & (np.arange(parent.size) > 0))
    level[ids] = 2
    top_of[ids] = top_of[parent[ids]]
    lvl = level[bucket]
    for i in np.flatnonzero((lvl == 1) & ~is_bucket):
        cols.anomalies.append(Anomaly("C2", (TOP_BUCKETS[top_of[bucket[i]]],), key(i),
                                      "level-2 entry is a plain value, not a bucket"))
    in_id = lvl == 2
    for i in np.flatnonzero(in_id & is_bucket):
        cols.anomalies.append(Anomaly("C3", (TOP_BUCKETS[top_of[bucket[i]]], name(bucket[i])), key(i),
                                      "level-3 entry is a bucket"))
    for i in np.flatnonzero(in_id & ~is_bucket & (vlen > 0) & (top_of[bucket] != TOP_BUCKETS.index(b"_result"))):
        cols.anomalies.append(Anomaly("C7", (TOP_BUCKETS[top_of[bucket[i]]], name(bucket[i])), key(i),
                                      f"value of {int(vlen[i])} bytes, expected empty"))

    entries = {}
    plain = in_id & ~is_bucket
    for j, top_name in enumerate(TOP_BUCKETS):
        mine = ids[top_of[ids] == j]
        e = np.flatnonzero(plain & (top_of[bucket] == j))
        entries[top_name] = Entries(koff[mine], klen[mine], np.searchsorted(mine, bucket[e]), ks[e], kl[e],
                                    ks[e] + kl[e], vlen[e])
    return _decode(cols, g, *(entries[n] for n in (b"_links", b"_result", b"_byresult", b"_backlinks")))


def _decode(cols: CacheColumns, g: Gather, links: Entries, results: Entries, byresult: Entries,
            backlinks: Entries) -> CacheColumns:
    ids = [(links.name_off, links.name_len), (results.name_off, results.name_len),
           (byresult.name_off, byresult.name_len), (backlinks.name_off, backlinks.name_len)]
    keys = [(results.key_off, results.key_len), (byresult.key_off, byresult.key_len),
            (backlinks.key_off, backlinks.key_len)]
    # link keys are checked on a second core meanwhile: numpy lets go of the interpreter while it works
    with ThreadPoolExecutor(max_workers=1) as pool:
        found = pool.submit(_link_targets, g, links)
        hashed = [string_hashes(g, *r) for r in ids + keys]
        cols.result_errors = _result_errors(g, results)
        has_tgt, tgt_off, tgt_len, cols.link_errors, tgt_hashed = found.result()
    sources = ids + [(tgt_off, tgt_len)] + keys
    codes, cols.names = intern(g, [s[0] for s in sources], [s[1] for s in sources],
                               hashed[:4] + [tgt_hashed] + hashed[4:])
    (cols.links_ids, cols.results_ids, cols.byresult_ids, cols.backlinks_ids, tcodes,
     cols.result_rid, cols.byresult_kid, cols.backlink_src) = codes
    cols.link_src = cols.links_ids[links.owner]
    cols.link_tgt = np.full(links.owner.size, -1, _I64)
    cols.link_tgt[has_tgt] = tcodes
    cols.link_key = (links.key_off, links.key_len)
    cols.result_kid = cols.results_ids[results.owner]
    cols.result_value = (results.val_off, results.val_len)
    cols.byresult_rid = cols.byresult_ids[byresult.owner]
    cols.backlink_tgt = cols.backlinks_ids[backlinks.owner]
    return cols


def _at(u8: np.ndarray, off, length, i) -> bytes:
    o = int(off[i])
    return u8[o:o + int(length[i])].tobytes()


# -- link keys -------------------------------------------------------------------------------------

_DIGIT = np.zeros(256, bool)
_DIGIT[ord("0"):ord("9") + 1] = True
_HEX = _DIGIT.copy()
_HEX[ord("a"):ord("f") + 1] = True
_DIGEST_KINDS = (np.frombuffer(b"sha256:", np.uint8), np.frombuffer(b"random:", np.uint8))
_LAYOUTS_PER_LENGTH = 32          # past that, a length's remaining keys are decoded one by one


def _link_targets(g: Gather, links: Entries):
    """Which link keys have a target, where it is, and the poison keys (C9/C17) with their reason.

    Keys in Go's canonical form are recognised a layout at a time: among the keys of one length, one is
    matched by cachedb's canonical regex and the others are compared with it column by column (literal
    bytes equal, digits where it has digits, hex where it has hex, no '@' in the target); the keys that
    differ start the next layout. Whatever no layout accepts is decoded by ``decode_link_key``, exactly.
    """
    off, length = links.key_off, links.key_len
    at = np.full(off.size, -1, _I64)                 # offset of the '@' inside the key; -1 = slow path
    h1 = np.zeros(off.size, np.uint64)               # the targets' string_hashes, from the rows at hand
    h2 = np.zeros(off.size, np.uint64)
    u8 = g.u8
    usable = np.flatnonzero((length >= 3) & (off + length <= g.size))
    for n_len, group in by_length(length[usable]):
        for idx in _chunks(usable[group]):
            _match_layouts(_rows(u8, off[idx], n_len), idx, at, h1, h2)

    errors: dict[int, Link] = {}
    slow = np.flatnonzero(at < 0)
    for i in slow:
        key = _at(u8, off, length, i)
        src = _at(u8, links.name_off, links.name_len, links.owner[i]).decode("utf-8", "replace")
        link = decode_link_key(src, key)
        if link.error:
            errors[int(i)] = link
        if link.target:
            at[i] = key.index(b"@")
    slow = slow[at[slow] >= 0]
    h1[slow], h2[slow] = string_hashes(g, off[slow] + at[slow] + 1, length[slow] - at[slow] - 1)
    has = at >= 0
    return has, off[has] + at[has] + 1, length[has] - at[has] - 1, errors, (h1[has], h2[has])


_CHUNK = 1 << 16       # rows copied out at a time: keeps the copies small next to the file


def _chunks(idx: np.ndarray):
    return (idx[a:a + _CHUNK] for a in range(0, idx.size, _CHUNK))


def _match_layouts(rows: np.ndarray, idx: np.ndarray, at: np.ndarray, h1: np.ndarray, h2: np.ndarray) -> None:
    """Link keys of one length, as rows: for each canonical one, its '@' offset and its target's hashes."""
    for _ in range(_LAYOUTS_PER_LENGTH):
        if not idx.size:
            return
        m = CANONICAL_LINK_KEY.fullmatch(rows[0].tobytes())
        fits = _fits_layout(rows, m) if m is not None else np.eye(1, idx.size, dtype=bool)[0]
        if m is not None:
            at[idx[fits]] = m.start(5) - 1
            h1[idx[fits]], h2[idx[fits]] = _hash_rows(rows[fits, m.start(5):])
        idx, rows = idx[~fits], rows[~fits]


def _fits_layout(rows: np.ndarray, m) -> np.ndarray:
    """Rows (keys of one length) that have the layout of the canonical key matched by ``m``."""
    rep = rows[0]
    literal = np.ones(rows.shape[1], bool)
    fits = np.ones(rows.shape[0], bool)
    for grp in (1, 2):                                # Input, Output: decimal, no leading zero
        s, e = m.span(grp)
        if s >= 0:
            fits &= _DIGIT[rows[:, s:e]].all(1) & (rows[:, s] != ord("0"))
            literal[s:e] = False
    for grp in (3, 4):                                # Digest, Selector: sha256:/random: and 64 hex
        s, e = m.span(grp)
        if s >= 0:
            kind = rows[:, s:s + 7]
            fits &= (kind == _DIGEST_KINDS[0]).all(1) | (kind == _DIGEST_KINDS[1]).all(1)
            fits &= _HEX[rows[:, s + 7:e]].all(1)
            literal[s:e] = False
    s = m.start(5)
    fits &= (rows[:, s:] != ord("@")).all(1)
    literal[s:] = False
    fits &= (rows[:, literal] == rep[literal]).all(1)
    return fits


# -- results ---------------------------------------------------------------------------------------

_PLAIN = rb'[\x20\x21\x23-\x5b\x5d-\x7e]*'       # JSON string content that needs no decoding
_RESULT = re.compile(rb'\{"CreatedAt":"(' + _PLAIN + rb')","ID":"(' + _PLAIN + rb')"\}')


def _result_errors(g: Gather, results: Entries) -> dict[int, CacheResult]:
    """Results that do not decode, or whose JSON ID differs from their key (C4). The JSON Go writes is
    matched directly; anything else goes through ``decode_result``."""
    data = g.data
    errors: dict[int, CacheResult] = {}
    for i, (ko, kl, vo, vl) in enumerate(zip(results.key_off.tolist(), results.key_len.tolist(),
                                             results.val_off.tolist(), results.val_len.tolist())):
        key = data[ko:ko + kl]
        m = _RESULT.fullmatch(data[vo:vo + vl])
        if m is not None and m.group(2) == key:
            continue
        kid = _at(g.u8, results.name_off, results.name_len, results.owner[i]).decode("utf-8", "replace")
        r = decode_result(kid, bytes(key), bytes(data[vo:vo + vl]))
        if r.error:
            errors[i] = r
    return errors


# -- interning -------------------------------------------------------------------------------------

def intern(g: Gather, offs: list, lens: list, hashes: list | None = None) -> tuple[list[np.ndarray], Names]:
    """Give every distinct byte string among the file ranges one code, the same code across all the
    lists; codes number the distinct strings in the order they first appear in the lists. ``hashes``:
    the ``string_hashes`` of each list, where the caller has them already.

    The first hash groups the strings, the second confirms each group (a disagreement, never seen, makes
    us intern through a dict instead)."""
    off = np.concatenate(offs).astype(_I64) if offs else np.zeros(0, _I64)
    length = np.concatenate(lens).astype(_I64) if lens else np.zeros(0, _I64)
    if hashes is None:
        h1, h2 = string_hashes(g, off, length)
    else:
        h1, h2 = (np.concatenate(x) if x else np.zeros(0, np.uint64) for x in zip(*hashes))
    first, inv = _unique(h1)
    if (h2 != h2[first][inv]).any():
        first, inv = _intern_exactly(g, off, length)
    order = np.argsort(first)           # codes in order of first appearance: sorted runs of bucket keys
    rep_off, rep_len = off[first], length[first]
    rank = np.empty(order.size, _I64)
    rank[order] = np.arange(order.size, dtype=_I64)
    codes = rank[inv]
    bounds = np.cumsum([a.size for a in offs])[:-1]
    return np.split(codes, bounds), Names(g.u8, rep_off[order], rep_len[order])


def string_hashes(g: Gather, off: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent 64-bit hashes of each string; strings of one length are copied out as rows in one
    gather."""
    h1 = np.empty(off.size, np.uint64)
    h2 = np.empty(off.size, np.uint64)
    for n, group in by_length(length):
        for idx in _chunks(group):
            h1[idx], h2[idx] = _hash_rows(_rows(g.u8, off[idx], n))
    return h1, h2


def _rows(u8: np.ndarray, off: np.ndarray, n: int) -> np.ndarray:
    """The n-byte strings at ``off`` as the rows of a (len(off), n) array."""
    if not n:
        return np.zeros((off.size, 0), np.uint8)
    return np.lib.stride_tricks.as_strided(u8, shape=(u8.size - n + 1, n), strides=(1, 1))[off]


def _hash_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``string_hashes`` of strings given as the rows of one (m, n) byte array: zero-padded to whole
    8-byte words and hashed a word column at a time."""
    m, n = rows.shape
    buf = np.zeros((m, -(-n // 8) * 8), np.uint8)
    buf[:, :n] = rows
    a = np.full(m, n * 0x9E3779B97F4A7C15 % 2**64, np.uint64)
    b = ~a
    for col in np.ascontiguousarray(buf.view(np.uint64).T):
        a = (a ^ col) * np.uint64(0x100000001B3)
        x = (b + col) * np.uint64(0xC2B2AE3D27D4EB4F)
        b = x ^ (x >> np.uint64(29))
    return a ^ (a >> np.uint64(31)), b


def _unique(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(h, return_index=True, return_inverse=True) without its stable sort (several times slower
    than the vectorised quicksort): the first index of each distinct value, and each value's group."""
    order = np.argsort(h)
    sh = h[order]
    new = np.empty(h.size, bool)
    new[:1] = True
    np.not_equal(sh[1:], sh[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    inv = np.empty(h.size, _I64)
    inv[order] = np.cumsum(new) - 1
    first = np.minimum.reduceat(order, starts) if h.size else order
    return first, inv


def by_length(length: np.ndarray):
    """(n, indices of the strings of length n) for each length present."""
    key = length.astype(np.uint16) if length.size and length.max() < 2**16 else length    # radix sort
    order = np.argsort(key, kind="stable")
    lengths, starts = np.unique(key[order], return_index=True)
    return zip(lengths.tolist(), np.split(order, starts[1:]))


def _intern_exactly(g: Gather, off, length):
    seen: dict[bytes, int] = {}
    first, inv = [], np.empty(off.size, _I64)
    for i, (o, n) in enumerate(zip(off.tolist(), length.tolist())):
        c = seen.setdefault(bytes(g.data[o:o + n]), len(seen))
        if c == len(first):
            first.append(i)
        inv[i] = c
    return np.array(first, _I64), inv
