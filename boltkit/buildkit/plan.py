"""One change an offline cache.db or metadata repair makes (prune, rehome, `buildkit repair --prune`): its own
module, so that the planners that produce changes and the ones that combine them import it without importing
each other.

The bucket and the key are the bytes of the file: the writer leaves out or adds exactly those, and only the
report renders them as text (printable UTF-8 as it is, anything else as 0x-hex)."""
from __future__ import annotations

from dataclasses import dataclass

from ..textform import show_bytes, show_path


@dataclass
class Change:
    code: str                   # the problem code it repairs
    action: str                 # drop-key, drop-link, drop-result, add-backlink, drop-backlink, add-byresult, ...
    bucket: tuple[bytes, ...]   # the bucket the entry is in
    key: bytes                  # the entry (a bucket for drop-key, drop-record, ...)

    def as_dict(self) -> dict:
        return {"code": self.code, "action": self.action, "bucket": show_path(self.bucket), "key": show_bytes(self.key)}


def text_id(name: str) -> bytes:
    """The bytes of an id the cache model keeps as text (CacheStore decodes ids it reads as UTF-8)."""
    return name.encode("utf-8", "surrogateescape")
