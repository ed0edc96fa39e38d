"""history.db (solver/llbsolver/history): build records, protobuf-encoded BuildHistoryRecord values.

Only the protobuf wire format is decoded (no generated code): the fields a user asks about — ref, frontend,
created/completed, pinned, step counts, error, generation — and every other field is kept as raw numbered
bytes, never dropped.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from ..storage import Database
from .gotime import parse_rfc3339

# BuildHistoryRecord field numbers (api/services/control/control.proto)
FIELDS = {1: "ref", 2: "frontend", 5: "error", 6: "created_at", 7: "completed_at", 12: "generation", 14: "pinned",
          15: "num_cached_steps", 16: "num_total_steps", 17: "num_completed_steps", 19: "num_warnings"}


class WireError(ValueError):
    pass


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise WireError("truncated or oversized varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def fields(buf: bytes):
    """(field number, wire type, value) for each field of one message: ints for varints, bytes otherwise."""
    i = 0
    while i < len(buf):
        tag, i = _varint(buf, i)
        num, wt = tag >> 3, tag & 7
        v: int | bytes
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise WireError(f"field {num}: length {n} runs past the message")
            v, i = buf[i:i + n], i + n
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise WireError(f"field {num}: unsupported wire type {wt}")
        if i > len(buf):
            raise WireError(f"field {num} runs past the message")
        yield num, wt, v


def _timestamp(buf: bytes) -> str | None:
    secs = nanos = 0
    for num, wt, v in fields(buf):
        if num in (1, 2) and wt != 0:
            raise WireError(f"timestamp field {num}: wire type {wt}, not a varint")
        if num == 1:
            secs = v - (1 << 64) if v >= 1 << 63 else v      # int64, two's complement on the wire
        elif num == 2:
            nanos = v
    if not 0 <= nanos < 10**9:
        raise WireError(f"timestamp nanos {nanos} out of range")
    try:
        t = datetime.datetime.fromtimestamp(secs, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise WireError(f"timestamp seconds {secs} out of range") from None
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{nanos:09d}".rstrip("0") if nanos else "") + "Z"


@dataclass
class HistoryRecord:
    key: str
    ref: str | None = None
    frontend: str | None = None
    created_at: str | None = None
    completed_at: str | None = None
    pinned: bool = False
    generation: int = 0
    num_cached_steps: int = 0
    num_total_steps: int = 0
    num_completed_steps: int = 0
    num_warnings: int = 0
    error: str | None = None                         # google.rpc.Status message
    other: dict[int, list[bytes | int]] = field(default_factory=dict)
    decode_error: str | None = None

    @property
    def duration(self) -> float | None:
        """Seconds from creation to completion, None while either time is unknown (a build still running, or a
        record without times)."""
        if not self.created_at or not self.completed_at:
            return None
        start, end = parse_rfc3339(self.created_at.encode()), parse_rfc3339(self.completed_at.encode())
        return None if start is None or end is None else (end - start) / 1e9

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "other"}
        d["other_fields"] = sorted(self.other)
        return d


def decode_record(key: bytes, value: bytes) -> HistoryRecord:
    rec = HistoryRecord(key.decode("utf-8", "replace"))
    try:
        for num, wt, v in fields(value):
            name = FIELDS.get(num)
            if name in ("ref", "frontend", "created_at", "completed_at", "error") and wt != 2:
                raise WireError(f"field {num} ({name}): wire type {wt}, not length-delimited")
            if name in ("ref", "frontend"):
                setattr(rec, name, v.decode("utf-8", "replace"))
            elif name in ("created_at", "completed_at"):
                setattr(rec, name, _timestamp(v))
            elif name == "pinned":
                rec.pinned = bool(v)
            elif name == "error":
                msg = [x for n, w, x in fields(v) if n == 2 and w == 2]
                rec.error = msg[0].decode("utf-8", "replace") if msg else "(error without message)"
            elif name is not None and wt == 0:
                setattr(rec, name, v)
            else:
                rec.other.setdefault(num, []).append(v)
    except WireError as e:
        rec.decode_error = str(e)
    return rec


def load_history(db: Database, on_damage=None) -> list[HistoryRecord]:
    root = db.root()
    item = db.tree.get(root, b"_records")
    if item is None or not item.is_bucket:
        return []
    bucket = db.tree.open(root, item, on_damage)
    if bucket is None:
        return []
    return [decode_record(it.key, db.value(it)) for it in db.tree.items(bucket, on_damage=on_damage)
            if not it.is_bucket]


def check_history(records: list[HistoryRecord], file: str | None = None) -> list:
    from ..check.problems import Problem
    out = []
    for r in records:
        path, key = (b"_records",), r.key.encode()
        if r.decode_error:
            out.append(Problem("H1", f"record does not decode as BuildHistoryRecord: {r.decode_error}", file=file,
                               path=path, key=key))
        elif r.ref != r.key:
            out.append(Problem("H2", f"record's Ref {r.ref!r} differs from its key", file=file, path=path, key=key))
    return out
