"""Decoding BuildKit's cache.db (solver/bboltcachestorage): results, links, backlinks, ids.

Layout (reference/buildkit-stores.md §1.1): four top-level buckets, one nested bucket per id, plain
level-3 entries. Everything is decoded into a ``CacheStore`` of plain Python structures, keeping raw
bytes wherever BuildKit matches bytes (link keys, `CreatedAt`), and keeping undecodable entries
with the reason, never dropping them.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ..errors import CorruptionError
from ..schemas import BUCKET_LEAF_FLAG
from ..storage import Database

TOP_BUCKETS = (b"_result", b"_links", b"_byresult", b"_backlinks")
_DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|random:[0-9a-f]{64})$")
_RANDOM_ID = re.compile(r"^[0-9a-z]{25}$")


def id_class(key_id: str) -> str:
    """root (sha256:/random: digest), random-root, derived (25-char id), or other."""
    if key_id.startswith("sha256:"):
        return "root"
    if key_id.startswith("random:"):
        return "random-root"
    if _RANDOM_ID.match(key_id):
        return "derived"
    return "other"


def is_root_form(key_id: str) -> bool:
    return key_id.startswith(("sha256:", "random:"))


def go_json_string(s: str) -> str:
    """A string as Go's encoding/json writes it (HTML-safe escaping)."""
    return (json.dumps(s, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


@dataclass(frozen=True)
class CacheInfoLink:
    input: int = 0
    output: int = 0
    digest: str = ""
    selector: str = ""

    def encode(self) -> bytes:
        """The exact JSON Go marshals (field order, omitempty, no spaces): link keys are matched byte for byte."""
        parts = []
        if self.input:
            parts.append('"Input":%d' % self.input)
        if self.output:
            parts.append('"Output":%d' % self.output)
        if self.digest:
            parts.append('"Digest":' + go_json_string(self.digest))
        if self.selector:
            parts.append('"Selector":' + go_json_string(self.selector))
        return ("{" + ",".join(parts) + "}").encode()


@dataclass
class Link:
    src: str
    target: str
    info: CacheInfoLink | None
    raw: bytes                     # the stored key
    error: str | None = None       # why the key is a poison key (C9/C17), if it is


# Go's canonical CacheInfoLink JSON with digest-valued fields, then '@' and the target: the form every
# healthy key has. A key that fits it is canonical by construction; anything else takes the slow path.
CANONICAL_LINK_KEY = re.compile(
    rb'\{(?:"Input":([1-9][0-9]*))?'
    rb'(?:(?(1),)"Output":([1-9][0-9]*))?'
    rb'(?:(?(1),|(?(2),))"Digest":"((?:sha256|random):[0-9a-f]{64})")?'
    rb'(?:(?(1),|(?(2),|(?(3),)))"Selector":"((?:sha256|random):[0-9a-f]{64})")?'
    rb'\}@([^@]+)')


def decode_link_key(src: str, key: bytes) -> Link:
    """Split a `_links/<src>` key at its single '@' and check it re-encodes byte for byte."""
    m = CANONICAL_LINK_KEY.fullmatch(key)
    if m is not None:
        i, o, d, sel, target = m.groups()
        info = CacheInfoLink(int(i) if i else 0, int(o) if o else 0, d.decode() if d else "",
                             sel.decode() if sel else "")
        return Link(src, target.decode("utf-8", "replace"), info, key)
    return _decode_link_key_slowly(src, key)


def _decode_link_key_slowly(src: str, key: bytes) -> Link:
    text = key.decode("utf-8", "replace")
    if key.count(b"@") != 1:
        return Link(src, "", None, key, f"link key has {key.count(b'@')} '@' (exactly one expected)")
    left, target = text.split("@")
    if not target:
        return Link(src, "", None, key, "link key has an empty target")
    try:
        obj = json.loads(left)
    except ValueError as e:
        return Link(src, target, None, key, f"link JSON does not decode: {e}")
    if not isinstance(obj, dict) or set(obj) - {"Input", "Output", "Digest", "Selector"}:
        return Link(src, target, None, key, "link JSON has unexpected fields")
    try:
        info = CacheInfoLink(int(obj.get("Input", 0)), int(obj.get("Output", 0)), str(obj.get("Digest", "")),
                             str(obj.get("Selector", "")))
    except (TypeError, ValueError):
        return Link(src, target, None, key, "link JSON has fields of the wrong type")
    link = Link(src, target, info, key)
    if info.input < 0 or info.output < 0:
        link.error = "negative Input or Output"
    elif info.digest and not _DIGEST.match(info.digest) or info.selector and not _DIGEST.match(info.selector):
        link.error = "Digest or Selector is not a digest"
    elif info.encode() + b"@" + target.encode() != key:
        link.error = "link JSON is not in Go's canonical form (WalkLinks/HasLink never match it)"
    return link


@dataclass
class CacheResult:
    key_id: str
    result_id: str                 # the level-3 key
    created_at: str | None         # raw RFC3339Nano string, as Go wrote it
    json_id: str | None
    raw: bytes
    error: str | None = None


def decode_result(key_id: str, result_key: bytes, value: bytes) -> CacheResult:
    rid = result_key.decode("utf-8", "replace")
    try:
        obj = json.loads(value)
        if not isinstance(obj, dict) or not isinstance(obj.get("ID"), str) or not isinstance(obj.get("CreatedAt"), str):
            raise ValueError("not a CacheResult object")
    except ValueError as e:
        return CacheResult(key_id, rid, None, None, value, f"does not decode as CacheResult: {e}")
    r = CacheResult(key_id, rid, obj["CreatedAt"], obj["ID"], value)
    if r.json_id != rid:
        r.error = f"JSON ID {r.json_id!r} differs from its key"
    return r


def split_result_id(result_id: str) -> tuple[str, str] | None:
    """`<workerID>::<refID>` (refID may be empty); None when it does not split into exactly two parts."""
    parts = result_id.split("::")
    return (parts[0], parts[1]) if len(parts) == 2 else None


@dataclass
class Anomaly:
    """An entry that does not have the shape BuildKit writes (wrong kind, non-empty value, ...)."""
    code: str
    bucket: tuple[bytes, ...]
    key: bytes | None
    message: str


@dataclass
class CacheStore:
    top: set[bytes] = field(default_factory=set)
    foreign_top: list[bytes] = field(default_factory=list)
    links: dict[str, list[Link]] = field(default_factory=dict)          # src -> its links (bucket may be empty)
    results: dict[str, list[CacheResult]] = field(default_factory=dict)  # id -> results (bucket may be empty)
    byresult: dict[str, set[str]] = field(default_factory=dict)          # result id -> key ids
    backlinks: dict[str, set[str]] = field(default_factory=dict)         # target -> sources
    anomalies: list[Anomaly] = field(default_factory=list)

    def ids(self) -> set[str]:
        return set(self.links) | set(self.results) | set(self.backlinks)

    def edges(self) -> dict[str, list[str]]:
        """src -> targets of every link whose target can be read (poison keys without one are left out)."""
        return {src: [ln.target for ln in links if ln.target] for src, links in self.links.items()}

    def with_results(self) -> set[str]:
        return {k for k, v in self.results.items() if v}


def load_cache_store(db: Database, on_damage=None) -> CacheStore:
    """Decode every entry of a cache.db. Structural damage is skipped through ``on_damage`` (or raised)."""
    store = CacheStore()
    tree = db.tree
    root = db.root()
    for top in tree.items(root, on_error=on_damage):
        if not top.is_bucket:
            store.anomalies.append(Anomaly("C1", (), top.key, "plain key at the top level"))
            continue
        if top.key not in TOP_BUCKETS:
            store.foreign_top.append(top.key)
            continue
        store.top.add(top.key)
        bucket = tree.child(root, top)
        for entry in tree.items(bucket, on_error=on_damage):
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
    for item in db.tree.items(sub, on_error=on_damage):
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
