"""The problem model: one catalogue of stable codes, and a Problem record every checker emits.

A problem found in a file is data, not an exception: checkers collect and go on. Codes are stable
(users grep for them and suppress them); structural codes start with B.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..chained import Chained
from ..textform import encode_bytes, encode_path, show_bytes


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


# code -> (severity, what it means). bbolt's own `tx.Check` wording is noted where it has one. The structural
# codes (B) are the checker's own; the layers above register theirs (`register`): BuildKit's C, D, M, H and X codes
# live in boltkit/buildkit/codes.py, beside the checks that emit them.
CATALOGUE: dict[str, tuple[Severity, str]] = {
    "B001": (Severity.ERROR, "meta page invalid (magic, version or checksum)"),
    "B002": (Severity.ERROR, "meta page points outside the file (root, freelist, high-water mark, page size)"),
    "B003": (Severity.WARNING, "the two meta pages disagree (page size, txid sequence)"),
    "B004": (Severity.ERROR, "the current meta is not the newest: bbolt falls back and the last transaction is lost"),
    "B005": (Severity.ERROR, "no meta passes bbolt's validation: read through a meta whose checksum fails but whose "
                             "fields agree with the file, or through a root rebuilt from the tree pages"),
    "B006": (Severity.WARNING, "the file ends before the high-water mark (a copy cut short); bbolt still reads it "
                               "while the pages its tree needs are there"),
    "B010": (Severity.ERROR, "freelist page unreadable"),
    "B011": (Severity.ERROR, "page listed twice in the freelist (bbolt: already freed)"),
    "B012": (Severity.ERROR, "freelist lists a meta page"),
    "B013": (Severity.ERROR, "freelist lists a page at or beyond the high-water mark"),
    "B014": (Severity.ERROR, "freelist lists its own page"),
    "B015": (Severity.WARNING, "freelist ids are not sorted"),
    "B016": (Severity.ERROR, "page is both reachable and free (bbolt: reachable freed)"),
    "B020": (Severity.ERROR, "page id out of bounds (bbolt: out of bounds)"),
    "B021": (Severity.ERROR, "page header id differs from its position"),
    "B022": (Severity.ERROR, "tree page is neither branch nor leaf (bbolt: invalid type)"),
    "B023": (Severity.ERROR, "page overflow runs past the high-water mark or the end of the file"),
    "B024": (Severity.ERROR, "page referenced more than once (bbolt: multiple references)"),
    "B025": (Severity.ERROR, "page cycle: a page points back to one of its ancestors"),
    "B026": (Severity.ERROR, "branch page with no elements"),
    "B027": (Severity.ERROR, "element count does not fit in the page"),
    "B030": (Severity.ERROR, "element key or value extends past the end of its page"),
    "B031": (Severity.ERROR, "keys out of order within a page"),
    "B032": (Severity.ERROR, "duplicate key within a page"),
    "B033": (Severity.ERROR, "key outside the range its parent branch assigns"),
    "B034": (Severity.ERROR, "empty key"),
    "B035": (Severity.ERROR, "bucket value has the wrong size for its header"),
    "B036": (Severity.ERROR, "inline bucket page malformed (type, id, overflow, size)"),
    "B037": (Severity.ERROR, "the root bucket holds a plain key (only buckets are allowed there)"),
    "B038": (Severity.WARNING, "leaf element flags carry unknown bits"),
    "B039": (Severity.WARNING, "inline bucket holds a sub-bucket (bbolt never writes this)"),
    "B040": (Severity.ERROR, "page neither reachable nor free (bbolt: unreachable unfreed, one of its errors)"),
    "B050": (Severity.INFO, "revert candidate: what the other meta's tree looks like"),
    "B051": (Severity.WARNING, "a semantic pass (BuildKit's checks of a store) read past damage: what the damage "
                               "hides is not checked, and what refers into it may look missing"),
}



def register(codes: dict[str, tuple[Severity, str]]) -> None:
    """Add a layer's codes to the one catalogue every Problem is judged by. A code means one thing: registering
    it again with another meaning is a programming error, caught at import."""
    for code, entry in codes.items():
        if CATALOGUE.get(code, entry) != entry:
            raise ValueError(f"problem code {code} is registered twice with different meanings")
        CATALOGUE[code] = entry


@dataclass
class Problem:
    code: str
    message: str
    file: str | None = None
    pgid: int | None = None
    offset: int | None = None
    path: tuple[bytes, ...] | None = None
    key: bytes | None = None
    details: dict = field(default_factory=dict)
    severity: Severity = None  # type: ignore[assignment]  # None: the catalogue's, filled in __post_init__

    def __post_init__(self):
        if self.severity is None:
            self.severity = CATALOGUE[self.code][0]

    def location(self) -> str:
        parts = []
        if self.pgid is not None:
            parts.append(f"page {self.pgid}")
        if self.offset is not None:
            parts.append(f"offset {self.offset}")
        if self.path:
            parts.append("bucket " + "/".join(_show(p) for p in self.path))
        if self.key is not None:
            parts.append("key " + _show(self.key))
        return ", ".join(parts)

    def line(self) -> str:
        loc = self.location()
        return f"{self.code} {self.severity.value}: " + (f"{loc}: " if loc else "") + self.message

    def as_dict(self, encoding: str = "auto") -> dict:
        """The `problem` record of docs/json.md: path a list and key a value in ``encoding``."""
        return {
            "type": "problem", "code": self.code, "severity": self.severity.value, "file": self.file,
            "page": self.pgid, "offset": self.offset,
            "path": None if self.path is None else encode_path(self.path, encoding),
            "key": None if self.key is None else encode_bytes(self.key, encoding),
            "message": self.message, "details": self.details,
        }


class ProblemTable:
    """Problems of one code found in bulk, each built only when it is looked at.

    A semantic pass over a 200k-key cache.db can find 100k problems; building an object for each
    would cost more than finding them, when all a user sees is the first hundred and the counts."""
    __slots__ = ("code", "severity", "size", "_make")

    def __init__(self, code: str, size: int, make):
        self.code = code
        self.severity = CATALOGUE[code][0]
        self.size = int(size)
        self._make = make

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> "Problem":
        return self._make(i)


class Problems(Chained):
    """The problems of a report, in the order found: a sequence of Problems and ProblemTables that
    counts without building, and builds each Problem when it is iterated, indexed or sliced."""

    def __init__(self, items=()):
        self._parts: list = []
        self.extend(items)

    def append(self, p: "Problem") -> None:
        if not self._parts or not isinstance(self._parts[-1], list):
            self._parts.append([])
        self._parts[-1].append(p)

    def extend(self, items) -> None:
        if isinstance(items, Problems):
            for part in items._parts:
                self._parts.append(part if isinstance(part, ProblemTable) else list(part))
        elif isinstance(items, ProblemTable):
            if items.size:
                self._parts.append(items)
        else:
            for p in items:
                self.append(p)

    def __repr__(self) -> str:
        return f"Problems({self.counts()})"

    def __getstate__(self) -> dict:
        """Pickled (`fsck --jobs` sends reports between processes), tables are built: their rows read a
        file mapping the other process does not have."""
        return {"_parts": [[part[i] for i in range(len(part))] if isinstance(part, ProblemTable) else part
                           for part in self._parts]}

    def groups(self):
        """The parts as they were added: lists of Problems and ProblemTables (a table is built only when read)."""
        return list(self._parts)

    def select(self, wanted):
        """The problems whose code satisfies ``wanted(code)``; tables of other codes are not built."""
        for part in self._parts:
            if isinstance(part, ProblemTable):
                if wanted(part.code):
                    yield from (part[i] for i in range(part.size))
            else:
                yield from (p for p in part if wanted(p.code))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for part in self._parts:
            if isinstance(part, ProblemTable):
                out[part.code] = out.get(part.code, 0) + part.size
            else:
                for p in part:
                    out[p.code] = out.get(p.code, 0) + 1
        return out

    def severity_counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in Severity}
        for part in self._parts:
            if isinstance(part, ProblemTable):
                out[part.severity.value] += part.size
            else:
                for p in part:
                    out[p.severity.value] += 1
        return out


def adder(out: "list | Problems", file: str | None):
    """``add(code, message, path=(), key=None, severity=None, **details)`` appending Problems to ``out``;
    path elements and the key may be str (BuildKit ids) or bytes."""
    def as_bytes(x):
        return x if isinstance(x, bytes) else x.encode()

    def add(code, message, path=(), key=None, severity=None, **details):
        out.append(Problem(code, message, file=file, path=tuple(as_bytes(p) for p in path),
                           key=None if key is None else as_bytes(key), details=details, severity=severity))
    return add


_show = show_bytes
