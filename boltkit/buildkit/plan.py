"""One change an offline cache.db repair makes (prune, rehome): its own module, so that the planners that
produce changes and the ones that combine them import it without importing each other."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Change:
    code: str           # the problem code it repairs
    action: str         # drop-key, drop-link, drop-result, add-backlink, drop-backlink, add-byresult, ...
    bucket: str
    key: str

    def as_dict(self) -> dict:
        return {"code": self.code, "action": self.action, "bucket": self.bucket, "key": self.key}
