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


LAZY = object()       # a Link's info, not decoded until asked for: canonical by construction, from the columns


class Link:
    """One `_links/<src>` key: its target, its CacheInfoLink (None when the JSON does not decode), the raw key,
    and why it is a poison key, if it is: ``error`` says it in words, ``code`` as the problem it is (C17 for
    fields out of range, C9 for any other key BuildKit never matches), so no reader sorts them by the words."""
    __slots__ = ("src", "target", "_info", "raw", "error", "code")

    def __init__(self, src: str, target: str, info, raw: bytes, error: str | None = None, code: str | None = None):
        self.src, self.target, self._info, self.raw, self.error = src, target, info, raw, error
        self.code = code or ("C9" if error else None)

    @property
    def info(self) -> CacheInfoLink | None:
        if self._info is LAZY:
            self._info = decode_link_key(self.src, self.raw).info
        return self._info

    def __eq__(self, other) -> bool:
        return isinstance(other, Link) and (self.src, self.target, self.raw, self.error) == \
            (other.src, other.target, other.raw, other.error)

    def __repr__(self) -> str:
        return f"Link({self.src!r}, {self.target!r}, {self.raw!r}, error={self.error!r})"


# Go's canonical CacheInfoLink JSON with digest-valued fields, then '@' and the target: the form every
# healthy key has. A key that fits it is canonical by construction; anything else takes the slow path.
CANONICAL_LINK_KEY = re.compile(
    rb'\{(?:"Input":([1-9][0-9]*))?'
    rb'(?:(?(1),)"Output":([1-9][0-9]*))?'
    rb'(?:(?(1),|(?(2),))"Digest":"((?:sha256|random):[0-9a-f]{64})")?'
    rb'(?:(?(1),|(?(2),|(?(3),)))"Selector":"((?:sha256|random):[0-9a-f]{64})")?'
    rb'\}@([^@]+)')

NOT_CANONICAL = "link JSON is not in Go's canonical form (WalkLinks/HasLink never match it)"
# The same fields in the same order, but zero values may be written out ("Input":0, "Digest":""): JSON that
# decodes to a valid link, yet not the bytes Go writes, so BuildKit never matches it. Another tool writing
# the keys, or a hand edit, gives these by the hundred thousand; a key that fits this and not the canonical
# form is a poison key (C9, NOT_CANONICAL) by construction, as the slow path would find.
SPELLED_OUT_LINK_KEY = re.compile(
    rb'\{(?P<i>"Input":(?P<I>0|[1-9][0-9]*))?'
    rb'(?P<o>(?(i),)"Output":(?P<O>0|[1-9][0-9]*))?'
    rb'(?P<d>(?(i),|(?(o),))"Digest":"(?P<D>(?:sha256|random):[0-9a-f]{64})?")?'
    rb'(?P<s>(?(i),|(?(o),|(?(d),)))"Selector":"(?P<S>(?:sha256|random):[0-9a-f]{64})?")?'
    rb'\}@(?P<T>[^@]+)')


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
        link.error, link.code = "negative Input or Output", "C17"
    elif info.digest and not _DIGEST.match(info.digest) or info.selector and not _DIGEST.match(info.selector):
        link.error, link.code = "Digest or Selector is not a digest", "C17"
    elif info.encode() + b"@" + target.encode() != key:
        link.error, link.code = NOT_CANONICAL, "C9"
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
