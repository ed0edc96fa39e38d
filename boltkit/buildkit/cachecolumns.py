"""cache.db in columns: every id bucket and every level-3 entry as integer arrays.

A BuildKit cache.db holds ~200k ids spread over four buckets, one nested (almost always inline) bucket
per id and a few entries in each. Decoded entry by entry into Python objects that costs ~10 s, far more
than the structural check of the same file. Here the elements come from the structural pass itself
(TreeScan's ``on_leaves``, read a chunk at a time while resident: cacheleaves.py), every string that names
an id is interned to an integer by hashing (storage/strings.py), and link keys in Go's canonical form are
recognised a layout at a time (linkkeys.py); the semantic checks then become set operations on integer
arrays (cachecheck.py). Entries
not in the shape BuildKit writes take the exact slow path of cachedb.py, so the columns say what the object
decoder says, sooner.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..check.problems import Severity
from ..check.scan import TreeScan
from ..storage.strings import Names, byte_strings
from ..errors import CorruptionError
from ..storage import Database
from .cachedb import LAZY, NOT_CANONICAL, TOP_BUCKETS, Anomaly, CacheResult, CacheStore, Link, decode_result
from .cacheleaves import RESULT, CacheLeaves
from .graph import GraphSummary, summarize_arrays

_I64 = np.int64


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
    data: np.ndarray | None = None      # the bytes link_key and result_value point into (None: names.data)

    @property
    def raw_data(self) -> np.ndarray:
        """The bytes ``link_key`` and ``result_value`` are ranges of: the file (still mapped; its pages are
        read again when asked for), or the buffer the names are in."""
        return self.names.data if self.data is None else self.data

    def raw(self, off_len: tuple, i: int) -> bytes:
        o = int(off_len[0][i])
        return self.raw_data[o:o + int(off_len[1][i])].tobytes()

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
        u8 = self.raw_data
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
            m = RESULT.fullmatch(value) if r is None else None
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
    """The columns of what ``leaves`` read during the structural pass (see the module and cacheleaves.py)."""
    r = leaves.finish()
    cols = CacheColumns(names=r["names"], anomalies=r["anomalies"], data=r["data"])
    for top_name in r["by_name"]:
        if top_name in TOP_BUCKETS:
            cols.top.add(top_name)
        else:
            cols.foreign_top.append(top_name)
    cols.links_ids, cols.results_ids = r["links_ids"], r["results_ids"]
    cols.byresult_ids, cols.backlinks_ids = r["byresult_ids"], r["backlinks_ids"]
    cols.link_src = cols.links_ids[r.pop("link_owner")]
    cols.link_tgt = r["link_tgt"]
    cols.link_key = r["link_key"]
    cols.link_errors, cols.link_spelled = r["link_errors"], r["link_spelled"]
    cols.result_kid = cols.results_ids[r.pop("result_owner")]
    cols.result_rid = r["result_rid"]
    cols.result_value, cols.result_errors = r["result_value"], r["result_errors"]
    cols.byresult_rid = cols.byresult_ids[r.pop("byresult_owner")]
    cols.byresult_kid = r["byresult_kid"]
    cols.backlink_tgt = cols.backlinks_ids[r.pop("backlink_owner")]
    cols.backlink_src = r["backlink_src"]
    cols.id_sequences = r["id_sequences"]
    return cols


def primers(cols: CacheColumns) -> dict:
    """For each of the four top-level buckets, its content as ``OBucket.prime`` takes it, from the columns:
    the replay of a start (startup.py) then reads cache.db's id buckets without a page read per key. Only
    for columns of a sound tree without anomalies (every level-2 entry an id bucket, every level-3 entry a
    plain value, empty but in `_result`), the shape the primed buckets assume."""
    names, u8 = cols.names, cols.raw_data
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


def load_cache_store(db: Database, on_damage=None, progress=None) -> CacheStore:
    """Decode every entry of a cache.db into Python objects (the repairs rewrite from these). One bulk pass
    over the tree (``load_cache_columns``); structural damage goes to ``on_damage`` (or is raised) and what it
    hides is left out."""
    return load_cache_columns(db, on_damage=on_damage, progress=progress).to_store()
