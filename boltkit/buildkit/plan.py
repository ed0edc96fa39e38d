"""One change an offline cache.db or metadata repair makes (prune, rehome, `buildkit repair --prune`): its own
module, so that the planners that produce changes and the ones that combine them import it without importing
each other.

The bucket and the key are the bytes of the file: the writer leaves out or adds exactly those, and only the
report renders them as text (printable UTF-8 as it is, anything else as 0x-hex)."""
from __future__ import annotations

from dataclasses import dataclass

from ..chained import Chained
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


class ChangeTable:
    """Changes found in bulk, each built only when it is looked at (as check's ``ProblemTable``): a prune of a
    fleet-size cache.db plans 300k changes, and a dry run shows their counts and the first twenty.

    ``counts``: (code, action) -> how many of the rows are of it, known without building any;
    ``make(i)``: the i-th Change, in the plan's order (the first call may sort the rows)."""
    __slots__ = ("size", "counts", "_make")

    def __init__(self, size: int, counts: dict[tuple[str, str], int], make):
        self.size = int(size)
        self.counts = {k: int(v) for k, v in counts.items() if v}
        self._make = make

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Change:
        return self._make(i)


class Changes(Chained):
    """The changes of a plan in order: lists of Changes and ChangeTables, counted without building a row;
    iterating, indexing or slicing builds the rows asked for."""

    def __init__(self, parts=()):
        self._parts: list = []
        for part in parts:
            self.add(part)

    def add(self, part) -> None:
        """Append a list of Changes, a ChangeTable or another Changes."""
        if isinstance(part, Changes):
            self._parts.extend(part._parts)
        elif isinstance(part, ChangeTable):
            if part.size:
                self._parts.append(part)
        elif part:
            self._parts.append(list(part))

    def __repr__(self) -> str:
        return f"Changes({self.counts()})"

    def counts(self) -> dict[tuple[str, str], int]:
        """(code, action) -> number of changes, without building the rows of tables."""
        out: dict[tuple[str, str], int] = {}
        for part in self._parts:
            items = part.counts.items() if isinstance(part, ChangeTable) else \
                (((c.code, c.action), 1) for c in part)
            for k, n in items:
                out[k] = out.get(k, 0) + n
        return out

    def actions(self) -> dict[str, int]:
        """action -> number of changes, in the order the actions first appear."""
        out: dict[str, int] = {}
        for (_, action), n in self.counts().items():
            out[action] = out.get(action, 0) + n
        return out
