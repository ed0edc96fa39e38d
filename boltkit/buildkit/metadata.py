"""metadata_v2.db (cache/metadata): records in `_main` with `{"value","index"}` envelopes, tombstones,
`_index` keys and `_external` blobs — decoded, and checked against M1–M14 of
reference/buildkit-stores.md §3.8 (M9, M15–M17 need containerdmeta.db and the snapshotter; fsck checks them)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..check.problems import Problem, Severity, adder
from ..errors import CorruptionError
from ..storage import Bucket, Database, Item

TOP = (b"_main", b"_index", b"_external")

# the key catalogue (§3.4): key -> the JSON type of its payload
KEY_TYPES: dict[str, tuple[type, ...]] = {
    "cache.description": (str,), "cache.createdAt": (int,), "cache.lastUsedAt": (int,), "cache.usageCount": (int,),
    "cache.recordType": (str,), "cache.layerType": (str,), "cache.cachePolicy": (int,),
    "cache.equalMutable": (str,), "snapshot.committed": (bool,), "snapshot.size": (int,), "cache.parent": (str,),
    "cache.mergeParents": (list,), "cache.lowerDiffParent": (str,), "cache.upperDiffParent": (str,),
    "cache.diffID": (str,), "cache.blob": (str,), "cache.mediatype": (str,), "cache.blobsize": (int,),
    "cache.layer.urls": (list,), "cache.blobonly": (bool,), "cache.chainID": (str,), "cache.blobChainID": (str,),
    "cache.snapshot": (str,), "cache.imageRefs": (list,), "cache.deleted": (bool,), "git-remote": (str,),
    "git-snapshot": (str,), "cache-dir": (str,), "local.sharedKey": (str,), "http.checksum": (str,),
    "etag": (str,), "http.modtime": (str,),
}
RECORD_TYPES = {"", "regular", "internal", "frontend", "source.local", "source.git.checkout", "exec.cachemount"}
PARENT_KEYS = ("cache.parent", "cache.lowerDiffParent", "cache.upperDiffParent")


@dataclass
class Record:
    id: str                                                      # the bucket name as text, for messages and parents
    values: dict[str, Any] = field(default_factory=dict)        # key -> decoded payload (tombstones left out)
    indexes: dict[str, str] = field(default_factory=dict)       # key -> its index string
    raw: dict[str, bytes] = field(default_factory=dict)         # undecodable values, kept as they are
    tombstones: set[str] = field(default_factory=set)
    nested: list[str] = field(default_factory=list)             # buckets inside the record (BuildKit writes none)
    key: bytes = b""                                             # the bucket name as stored: what a repair drops
    entry_keys: dict[str, bytes] = field(default_factory=dict)   # each value, raw value and nested bucket: its key

    def parents(self) -> list[str]:
        out = [self.values[k] for k in PARENT_KEYS if isinstance(self.values.get(k), str) and self.values[k]]
        mp = self.values.get("cache.mergeParents")
        if isinstance(mp, list):
            out += [p for p in mp if isinstance(p, str)]
        return out


@dataclass
class MetadataStore:
    top: set[bytes] = field(default_factory=set)
    records: dict[str, Record] = field(default_factory=dict)
    index_keys: list[bytes] = field(default_factory=list)
    externals: dict[str, list[str]] = field(default_factory=dict)
    external_keys: dict[str, bytes] = field(default_factory=dict)   # each `_external` bucket: its name as stored
    plain_main: list[bytes] = field(default_factory=list)        # plain values where record buckets belong
    plain_external: list[bytes] = field(default_factory=list)


def _child(db: Database, parent: Bucket, item: Item, on_damage) -> Bucket | None:
    """A sub-bucket opened as tolerantly as the items around it: with ``on_damage``, a bucket whose header or root
    page cannot be read is damage to report and skip (None), like every other reader's walk."""
    try:
        return db.tree.child(parent, item, on_damage)
    except CorruptionError as e:
        if on_damage is None:
            raise
        on_damage(e)
        return None


def record_ids(db: Database, on_damage=None) -> set[str]:
    """Names of the `_main/<id>` record buckets: the refIDs that cache.db results may point at."""
    return {k.decode("utf-8", "replace") for k in record_keys(db, on_damage)}


def record_keys(db: Database, on_damage=None) -> set[bytes]:
    """``record_ids`` as the file's bytes (what a repair compares with cache.db's result ids)."""
    root = db.root()
    main = db.tree.get(root, b"_main")
    if main is None or not main.is_bucket:
        return set()
    bucket = _child(db, root, main, on_damage)
    if bucket is None:
        return set()
    return {it.key for it in db.tree.items(bucket, on_error=on_damage) if it.is_bucket}


def load_metadata_store(db: Database, on_damage=None) -> MetadataStore:
    store = MetadataStore()
    tree = db.tree
    root = db.root()
    for top in tree.items(root, on_error=on_damage):
        store.top.add(top.key)
        if not top.is_bucket or top.key not in TOP:
            continue
        bucket = _child(db, root, top, on_damage)
        if bucket is None:
            continue
        for entry in tree.items(bucket, on_error=on_damage):
            name = entry.key.decode("utf-8", "replace")
            if top.key == b"_index":
                store.index_keys.append(entry.key)
                continue
            if not entry.is_bucket:
                (store.plain_main if top.key == b"_main" else store.plain_external).append(entry.key)
                continue
            sub = _child(db, bucket, entry, on_damage)
            if sub is None:
                continue
            if top.key == b"_external":
                store.externals[name] = [it.key.decode("utf-8", "replace")
                                         for it in tree.items(sub, on_error=on_damage)]
                store.external_keys[name] = entry.key
                continue
            rec = store.records[name] = Record(name, key=entry.key)
            for it in tree.items(sub, on_error=on_damage):
                key = it.key.decode("utf-8", "replace")
                rec.entry_keys[key] = it.key
                if it.is_bucket:
                    rec.nested.append(key)
                    continue
                value = db.value(it)
                if not value:
                    rec.tombstones.add(key)
                    continue
                try:
                    env = json.loads(value)
                    if not isinstance(env, dict) or set(env) - {"value", "index"}:
                        raise ValueError("not a {\"value\",\"index\"} envelope")
                except ValueError:
                    rec.raw[key] = value
                    continue
                rec.values[key] = env.get("value")
                if env.get("index"):
                    rec.indexes[key] = env["index"]
    return store


def check_metadata_store(store: MetadataStore, file: str | None = None) -> list[Problem]:
    out: list[Problem] = []

    add = adder(out, file)

    for name in sorted(store.top - set(TOP)):
        add("M1", "top-level entry BuildKit does not use", key=name)
    for k in store.plain_main:
        add("M2", "plain value where a record bucket belongs (Update fails on this id)", path=(b"_main",), key=k)
    for k in store.plain_external:
        add("M2", "plain value where an external bucket belongs", path=(b"_external",), key=k)
    recs = store.records
    for rid, rec in sorted(recs.items()):
        path = (b"_main", rid)
        for key in rec.nested:
            add("M2", "a bucket inside a record, where BuildKit writes values only", path=path, key=key)
        for key in sorted(rec.raw):
            add("M3", "value is not a {\"value\",\"index\"} JSON envelope: buildkitd refuses to start", path=path,
                key=key)
        for key, val in sorted(rec.values.items()):
            want = KEY_TYPES.get(key)
            # (JSON true is no number: bool is an int subclass in Python, not in Go)
            if want is not None and val is not None and (not isinstance(val, want)
                                                         or isinstance(val, bool) and bool not in want):
                add("M3", f"payload of type {type(val).__name__}, expected {want[0].__name__}: BuildKit reads a "
                    "zero value", path=path, key=key)
        for p in rec.parents():
            if p not in recs:
                add("M4", f"parent {p} does not exist: the record and its descendants are cleared at next start",
                    path=path, key=p)
        kinds = [k for k in ("cache.parent", "cache.mergeParents", "cache.lowerDiffParent")
                 if rec.values.get(k)]
        if len(kinds) > 1:
            add("M6", f"more than one parent kind ({', '.join(kinds)})", path=path)
        mp = rec.values.get("cache.mergeParents")
        if isinstance(mp, list) and mp and len(mp) < 2:
            add("M6", "a merge with fewer than two parents", path=path)
        for p in rec.parents():
            pv = recs[p].values if p in recs else None
            if pv is not None and pv.get("snapshot.committed") is not True and not pv.get("cache.equalMutable"):
                add("M7", f"parent {p} is mutable: loading this record commits it (or fails while it is held)",
                    path=path, key=p)
        _chain_ids(rec, recs, add, path)
        em = rec.values.get("cache.equalMutable")
        if isinstance(em, str) and em and em not in recs:
            add("M8", f"equalMutable target {em} does not exist", path=path)
        _ranges(rec, add, path)
        if rec.values.get("cache.deleted") is True:
            if isinstance(em, str) and em:
                # getRecord takes the equalMutable branch before it looks at the flag (startup case 05)
                add("M14", "marked deleted, but it has an equalMutable: buildkitd ignores the flag and keeps it",
                    path=path)
            else:
                add("M14", "marked deleted: removed at next start", path=path)
    for cyc in _parent_cycles(recs):
        add("M5", f"parent cycle ({' -> '.join(cyc)}): buildkitd recurses until its stack overflows at start",
            path=(b"_main", cyc[0]), cycle=cyc)
    wanted = {f"{ix}::{rid}".encode() for rid, rec in recs.items() for ix in rec.indexes.values()}
    have = set(store.index_keys)
    for k in store.index_keys:
        text = k.decode("utf-8", "replace")
        if "::" not in text:
            add("M10", "index key without '::': Search over this prefix never advances (hang)", path=(b"_index",),
                key=k, severity=Severity.ERROR)
        elif text.rsplit("::", 1)[1] not in recs:
            add("M10", "index entry of a missing record", path=(b"_index",), key=k)
    for k in sorted(wanted - have):
        add("M10", "value's index has no _index entry: reuse lookups miss this record", path=(b"_index",), key=k)
    for rid in sorted(store.externals):
        if rid not in recs:
            add("M11", "externals of a record that does not exist", path=(b"_external", rid))
    return out


def _ranges(rec: Record, add, path) -> None:
    v = rec.values
    if isinstance(v.get("snapshot.size"), int) and v["snapshot.size"] < -1:
        add("M12", f"snapshot.size {v['snapshot.size']} < -1", path=path)
    if isinstance(v.get("cache.blobsize"), int) and v["cache.blobsize"] < 0:
        add("M12", "negative cache.blobsize", path=path)
    if v.get("cache.cachePolicy") not in (None, 0, 1):
        add("M12", f"cache.cachePolicy {v['cache.cachePolicy']!r} not 0 or 1", path=path)
    if "cache.createdAt" in v and not (isinstance(v["cache.createdAt"], int) and v["cache.createdAt"] > 0):
        add("M12", "cache.createdAt not a positive time: the record is re-initialised at every load", path=path)
    if v.get("cache.blob") and not all(v.get(k) for k in ("cache.diffID", "cache.mediatype")):
        add("M12", "cache.blob set without cache.diffID and cache.mediatype", path=path)
    if isinstance(v.get("cache.recordType"), str) and v["cache.recordType"] not in RECORD_TYPES:
        add("M12", f"unknown cache.recordType {v['cache.recordType']!r}", path=path)


def _sha(text: str) -> str:
    import hashlib
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _chain_ids(rec: Record, recs: dict[str, Record], add, path) -> None:
    """M13: chainID/blobChainID as cache/blobs.go computes them for base layers and layers (OCI ChainID)."""
    v = rec.values
    diff, blob = v.get("cache.diffID"), v.get("cache.blob")
    if not isinstance(diff, str) or not diff or kind_is_composite(v):
        return
    parent = recs.get(v["cache.parent"]) if isinstance(v.get("cache.parent"), str) else None
    if v.get("cache.parent") and parent is None:
        return      # M4 already
    pv = parent.values if parent else {}
    want_chain = _sha(f"{pv['cache.chainID']} {diff}") if parent and pv.get("cache.chainID") else \
        (diff if not parent else None)
    own_blob = _sha(f"{blob} {diff}") if isinstance(blob, str) and blob else None
    want_blob = (_sha(f"{pv['cache.blobChainID']} {own_blob}") if parent and pv.get("cache.blobChainID") and own_blob
                 else (own_blob if not parent else None))
    if want_chain and v.get("cache.chainID") and v["cache.chainID"] != want_chain:
        add("M13", "cache.chainID does not follow from diffID and the parent's chainID", path=path)
    if want_blob and v.get("cache.blobChainID") and v["cache.blobChainID"] != want_blob:
        add("M13", "cache.blobChainID does not follow from blob, diffID and the parent's blobChainID", path=path)


def kind_is_composite(v: dict) -> bool:
    return bool(v.get("cache.mergeParents") or v.get("cache.lowerDiffParent") or v.get("cache.upperDiffParent"))


def _parent_cycles(recs: dict[str, Record]) -> list[list[str]]:
    from .graph import cycles
    edges = {rid: [p for p in rec.parents() if p in recs] for rid, rec in recs.items()}
    for rid, rec in recs.items():
        em = rec.values.get("cache.equalMutable")
        if isinstance(em, str) and em in recs:
            edges[rid].append(em)
    return cycles(edges)
