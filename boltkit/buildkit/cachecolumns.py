"""cache.db in columns: every id bucket and every level-3 entry as integer arrays.

A BuildKit cache.db holds ~200k ids spread over four buckets, one nested (almost always inline) bucket
per id and a few entries in each. Decoded entry by entry into Python objects that costs ~10 s, far more
than the structural check of the same file. Here the elements come from the structural pass itself
(TreeScan's ``on_leaves``: nothing is read twice), every string that names an id is interned to an
integer by hashing (storage/strings.py), and link keys in Go's canonical form are recognised a layout at a
time (linkkeys.py); the semantic checks then become set operations on integer arrays (cachecheck.py). Entries
not in the shape BuildKit writes take the exact slow path of cachedb.py, so the columns say what the object
decoder says, sooner.
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..storage.gather import Gather
from ..check.problems import Severity
from ..check.scan import TreeScan
from ..storage.strings import Names, by_length, byte_strings, chunks, intern, rows_at, string_at, string_hashes
from ..errors import CorruptionError
from ..schemas import BUCKET_LEAF_FLAG
from ..storage import Database
from .cachedb import LAZY, NOT_CANONICAL, TOP_BUCKETS, Anomaly, CacheResult, CacheStore, Link, decode_result
from .graph import GraphSummary, summarize_arrays
from .linkkeys import link_targets

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


_UNSET: Any = None     # a column load_cache_columns has not filled yet


@dataclass
class CacheColumns:
    """Everything the semantic check needs, as integer codes into ``names``."""
    names: Names
    top: set[bytes] = field(default_factory=set)
    foreign_top: list[bytes] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    links_ids: np.ndarray = _UNSET     # codes of the _links/<id> buckets
    results_ids: np.ndarray = _UNSET
    byresult_ids: np.ndarray = _UNSET  # codes of result ids
    backlinks_ids: np.ndarray = _UNSET
    link_src: np.ndarray = _UNSET      # per link key
    link_tgt: np.ndarray = _UNSET      # -1: no readable target
    link_key: tuple = _UNSET           # (offsets, lengths) of the raw link keys
    link_errors: dict[int, Link] = field(default_factory=dict)      # link index -> poison key
    link_spelled: np.ndarray = _UNSET  # link indices of the poison keys with zero values spelled out (C9)
    result_kid: np.ndarray = _UNSET    # per result
    result_rid: np.ndarray = _UNSET
    result_errors: dict[int, CacheResult] = field(default_factory=dict)
    result_value: tuple = _UNSET       # (offsets, lengths) of the raw CacheResult values
    byresult_rid: np.ndarray = _UNSET  # per _byresult entry
    byresult_kid: np.ndarray = _UNSET
    backlink_tgt: np.ndarray = _UNSET  # per _backlinks entry
    backlink_src: np.ndarray = _UNSET
    id_sequences: dict = field(default_factory=dict)    # top bucket name -> the sequence of each of its ids
    tree: tuple | None = None           # (meta index, txid) of the tree the columns were read from
    sound: bool = False                 # the pass that read them met no damage: nothing was left out

    def raw(self, off_len: tuple, i: int) -> bytes:
        o = int(off_len[0][i])
        return self.names.data[o:o + int(off_len[1][i])].tobytes()

    def graph_summary(self, top: int = 10) -> GraphSummary:
        """``graph.summarize`` of the link graph: keys with a `_links` bucket or a parent are its nodes."""
        linked = self.link_tgt >= 0
        src, tgt = self.link_src[linked], self.link_tgt[linked]
        has_links = np.zeros(len(self.names), bool)
        has_links[self.links_ids] = True
        is_node = has_links.copy()
        is_node[tgt] = True
        return summarize_arrays(src, tgt, is_node, has_links, self.names.str, int(np.unique(self.result_kid).size),
                                top)

    def to_store(self) -> CacheStore:
        """The same contents as Python objects, for the repairs that rewrite the store: what the object
        decoder of cachedb.py gives, built from the columns (poison keys and odd results are decoded already)."""
        u8 = self.names.data
        names = [b.decode("utf-8", "replace") for b in self.names.all_bytes()]

        def raw(off_len):
            return byte_strings(u8, *off_len)

        s = CacheStore(top=set(self.top), foreign_top=list(self.foreign_top), anomalies=list(self.anomalies))
        s.links.update((names[k], []) for k in self.links_ids.tolist())
        s.results.update((names[k], []) for k in self.results_ids.tolist())
        s.byresult.update((names[k], set()) for k in self.byresult_ids.tolist())
        s.backlinks.update((names[k], set()) for k in self.backlinks_ids.tolist())
        poison = self.link_errors
        spelled = np.zeros(self.link_src.size, bool)
        spelled[self.link_spelled] = True
        for i, (src, tgt, key, bad) in enumerate(zip(self.link_src.tolist(), self.link_tgt.tolist(),
                                                     raw(self.link_key), spelled.tolist())):
            s.links[names[src]].append(poison.get(i) or Link(names[src], names[tgt], LAZY, key,
                                                             NOT_CANONICAL if bad else None))
        odd = self.result_errors
        for i, (kid, rid, value) in enumerate(zip(self.result_kid.tolist(), self.result_rid.tolist(),
                                                  raw(self.result_value))):
            r = odd.get(i)
            m = _RESULT.fullmatch(value) if r is None else None
            if m is not None:
                r = CacheResult(names[kid], names[rid], m.group(1).decode(), names[rid], value)
            elif r is None:     # valid JSON, but not in Go's byte form (order, spaces, escapes): decode it
                r = decode_result(names[kid], names[rid].encode("utf-8", "surrogateescape"), value)
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
        self.reset()

    def reset(self) -> None:
        """Forget what was kept (a read of a live file that did not settle is read again)."""
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


def load_cache_columns(db: Database, on_damage=None, progress=None) -> CacheColumns:
    """Read a cache.db into columns with one bulk pass over its tree. Damage (each error the pass finds)
    goes to ``on_damage`` as a CorruptionError, or is raised; the damaged parts are left out.
    ``progress(done, total)``: pages of the pass."""
    def emit(p):
        if p.severity is Severity.ERROR:
            e = CorruptionError(p.message, pgid=p.pgid, offset=p.offset, path=p.path)
            if on_damage is None:
                raise e
            on_damage(e)

    leaves = CacheLeaves()
    n = db.pager.limit_pages
    damaged: list = []

    def found(p) -> None:
        if p.severity is Severity.ERROR:
            damaged.append(p)
        emit(p)
    TreeScan(db, db.meta, found,
             quick=True, refs=np.zeros(n, np.uint8), freed=np.zeros(n, bool), on_leaves=leaves,
             progress=progress).run()
    cols = columns_from_leaves(leaves)
    cols.tree, cols.sound = (db.meta.index, db.meta.txid), not damaged
    return cols


def columns_from_leaves(leaves: CacheLeaves) -> CacheColumns:
    """Sort the elements of a cache.db's tree into its four buckets and decode them (see the module)."""
    if leaves.scan is None:
        g = Gather(np.zeros(0, np.uint8), 0)
        parent, koff, klen = (np.zeros(1, _I64),) * 3
    else:
        g = leaves.scan.g
        parent, koff, klen = leaves.scan.bucket_table()
    bucket, is_bucket, ks, kl, vlen = leaves.take()
    cols = CacheColumns(names=_UNSET)
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
        found = pool.submit(link_targets, g, links)
        hashed = [string_hashes(g, *r) for r in ids + keys]
        cols.result_errors = _result_errors(g, results)
        has_tgt, tgt_off, tgt_len, cols.link_errors, tgt_hashed, cols.link_spelled = found.result()
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
    for name, e in zip((b"_links", b"_result", b"_byresult", b"_backlinks"), (links, results, byresult, backlinks)):
        at = e.name_off + e.name_len + 8                # the bucket header after the name: root, then sequence
        ok = at + 8 <= g.size
        seq = np.zeros(at.size, np.uint64)
        seq[ok] = rows_at(g.u8, at[ok], 8).copy().view("<u8").ravel()
        cols.id_sequences[name] = seq
    return cols


def primers(cols: CacheColumns) -> dict:
    """For each of the four top-level buckets, its content as ``OBucket.prime`` takes it, from the columns:
    the replay of a start (startup.py) then reads cache.db's id buckets without a page read per key. Only
    for columns of a sound tree without anomalies (every level-2 entry an id bucket, every level-3 entry a
    plain value, empty but in `_result`), the shape the primed buckets assume."""
    names, u8 = cols.names, cols.names.data
    text = names.all_bytes()
    code_of = dict(zip(text, range(len(text))))

    def raw(off_len):
        return byte_strings(u8, *off_len)

    tables = {
        b"_links": (cols.links_ids, cols.link_src, raw(cols.link_key), None),
        b"_result": (cols.results_ids, cols.result_kid, [text[c] for c in cols.result_rid.tolist()],
                     raw(cols.result_value)),
        b"_byresult": (cols.byresult_ids, cols.byresult_rid, [text[c] for c in cols.byresult_kid.tolist()], None),
        b"_backlinks": (cols.backlinks_ids, cols.backlink_tgt, [text[c] for c in cols.backlink_src.tolist()], None),
    }
    out = {}
    for name, (ids, owner, keys, values) in tables.items():
        slot = np.full(len(text), -1, _I64)
        slot[ids] = np.arange(ids.size)
        order = np.argsort(slot[owner], kind="stable")
        bounds = np.searchsorted(slot[owner][order], np.arange(ids.size + 1)).tolist()
        out[name] = _primer(code_of, slot.tolist(), bounds, order.tolist(), keys, values,
                            cols.id_sequences[name].tolist())
    return out


def _primer(code_of, slot, bounds, order, keys, values, sequences):
    def children(key: bytes):
        code = code_of.get(key)
        i = -1 if code is None else slot[code]
        if i < 0:
            return None
        rows = order[bounds[i]:bounds[i + 1]]
        if values is None:
            return sequences[i], dict.fromkeys([keys[j] for j in rows], b"")
        return sequences[i], {keys[j]: values[j] for j in rows}
    return children


_PLAIN = rb'[\x20\x21\x23-\x5b\x5d-\x7e]*'       # JSON string content that needs no decoding
_RESULT = re.compile(rb'\{"CreatedAt":"(' + _PLAIN + rb')","ID":"(' + _PLAIN + rb')"\}')


def _result_errors(g: Gather, results: Entries) -> dict[int, CacheResult]:
    """Results that do not decode, or whose JSON ID differs from their key (C4). The JSON Go writes is
    matched directly; anything else goes through ``decode_result``."""
    data = g.data
    errors: dict[int, CacheResult] = {}
    odd = np.flatnonzero(~_in_go_form(g, results))
    for i, ko, kl, vo, vl in zip(odd.tolist(), results.key_off[odd].tolist(), results.key_len[odd].tolist(),
                                 results.val_off[odd].tolist(), results.val_len[odd].tolist()):
        key = data[ko:ko + kl]
        m = _RESULT.fullmatch(data[vo:vo + vl])
        if m is not None and m.group(2) == key:
            continue
        kid = string_at(g.u8, results.name_off, results.name_len, results.owner[i]).decode("utf-8", "replace")
        r = decode_result(kid, bytes(key), bytes(data[vo:vo + vl]))
        if r.error:
            errors[i] = r
    return errors


_PLAIN_BYTE = np.zeros(256, bool)               # the bytes of _PLAIN
_PLAIN_BYTE[[0x20, 0x21]] = True
_PLAIN_BYTE[0x23:0x5c] = True
_PLAIN_BYTE[0x5d:0x7f] = True
_CREATED, _ID, _END = (np.frombuffer(b, np.uint8) for b in (b'{"CreatedAt":"', b'","ID":"', b'"}'))


def _in_go_form(g: Gather, results: Entries) -> np.ndarray:
    """Per result: its value is the JSON Go writes naming its own key (what ``_RESULT`` matches with the key as
    its ID), decided a (value length, key length) group at a time on rows of bytes. False only means "look
    closer": those go through the regex and ``decode_result``."""
    kl, vl = results.key_len.astype(_I64), results.val_len.astype(_I64)
    fixed = _CREATED.size + _ID.size + _END.size
    ok = (vl - kl >= fixed) & (results.val_off + vl <= g.size) & (results.key_off + kl <= g.size)
    out = np.zeros(kl.size, bool)
    idx = np.flatnonzero(ok)
    for pair, group in by_length(vl[idx] * (1 << 32) + kl[idx]):
        v_len, k_len = pair >> 32, pair & 0xFFFFFFFF
        for rows in chunks(idx[group]):
            v = rows_at(g.u8, results.val_off[rows], v_len)
            k = rows_at(g.u8, results.key_off[rows], k_len)
            c = v_len - fixed - k_len                  # the CreatedAt string's length
            at = _CREATED.size + c
            fits = (v[:, :_CREATED.size] == _CREATED).all(1) & _PLAIN_BYTE[v[:, _CREATED.size:at]].all(1)
            fits &= (v[:, at:at + _ID.size] == _ID).all(1) & (v[:, at + _ID.size:v_len - _END.size] == k).all(1)
            fits &= _PLAIN_BYTE[k].all(1) & (v[:, v_len - _END.size:] == _END).all(1)
            out[rows] = fits
    return out


def load_cache_store(db: Database, on_damage=None, progress=None) -> CacheStore:
    """Decode every entry of a cache.db into Python objects (the repairs rewrite from these). One bulk pass
    over the tree (``load_cache_columns``); structural damage goes to ``on_damage`` (or is raised) and what it
    hides is left out."""
    return load_cache_columns(db, on_damage=on_damage, progress=progress).to_store()
