"""Go's readings of time values, as containerd's garbage collector applies them to labels and keys.

A lease or image expires, an ingest stays a root, a conditional snapshot reference holds, by what Go's
`time.Parse(time.RFC3339, …)`, `time.Time.UnmarshalBinary` and `time.ParseDuration` accept. A value Go rejects
changes the outcome (an expiry label Go cannot parse keeps the lease forever; an `expireat` it cannot decode
aborts the whole collection), so these follow Go's rules, not Python's. Times are integer nanoseconds since
the Unix epoch, which covers every year Go can represent without Python's datetime range.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

NS = 1_000_000_000
# Go's internal seconds (since 1 Jan year 1) minus Unix seconds (time.unixToInternal)
_UNIX_TO_INTERNAL = 62_135_596_800
_INT64_MAX = (1 << 63) - 1
_INT64_MIN = -(1 << 63)


def unix_ns(dt: datetime) -> int:
    """A Python datetime as Unix nanoseconds (a naive one is taken as UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * NS + delta.microseconds * 1000


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (any year, year 0 included)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _days_in(month: int, year: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


# time.Parse(time.RFC3339, v): the fast path (format_rfc3339.go) and, when it fails, the generic layout parser,
# which also takes a one-digit hour, a comma before the fraction, a zone hour of 24 and minute of 60.
_RFC3339 = re.compile(rb"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{1,2}):([0-9]{2}):([0-9]{2})"
                      rb"(?:[.,]([0-9]+))?(Z|[+-][0-9]{2}:[0-9]{2})")


def parse_rfc3339(value: bytes) -> int | None:
    """Unix nanoseconds of an RFC 3339 label value as Go's time.Parse reads it; None where Go returns an error."""
    m = _RFC3339.fullmatch(value)
    if m is None:
        return None
    year, month, day, hour, minute, sec = (int(m.group(i)) for i in range(1, 7))
    if not (1 <= month <= 12 and 1 <= day <= _days_in(month, year) and hour <= 23 and minute <= 59 and sec <= 59):
        return None
    frac = m.group(7) or b""
    nsec = int((frac[:9] or b"0").ljust(9, b"0"))
    offset = 0
    zone = m.group(8)
    if zone != b"Z":
        zh, zm = int(zone[1:3]), int(zone[4:6])
        if zh > 24 or zm > 60:
            return None
        offset = (zh * 60 + zm) * 60 * (-1 if zone[:1] == b"-" else 1)
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + sec - offset
    return seconds * NS + nsec


def time_of(text: str) -> datetime | None:
    """An RFC 3339 time as a UTC datetime (microseconds kept), None where Go's parser refuses it."""
    from datetime import timedelta
    ns = parse_rfc3339(text.encode())
    if ns is None:
        return None
    return datetime.fromtimestamp(ns // 10**9, timezone.utc) + timedelta(microseconds=ns % 10**9 // 1000)


def unmarshal_binary(value: bytes) -> int | None:
    """Unix nanoseconds of a `time.Time.MarshalBinary` value (containerd's createdat, updatedat, expireat);
    None where Go's UnmarshalBinary returns an error (no data, unknown version, wrong length)."""
    if not value or value[0] not in (1, 2):
        return None
    if len(value) != (16 if value[0] == 2 else 15):
        return None
    sec = int.from_bytes(value[1:9], "big", signed=True)
    nsec = int.from_bytes(value[9:13], "big", signed=True)
    return (sec - _UNIX_TO_INTERNAL) * NS + nsec


_UNITS = {b"ns": 1, b"us": 1000, "µs".encode(): 1000, "μs".encode(): 1000, b"ms": 1_000_000,
          b"s": NS, b"m": 60 * NS, b"h": 3600 * NS}
_DURATION_PART = re.compile(rb"([0-9]*)(?:\.([0-9]*))?([^0-9.]+)")


def parse_duration(value: bytes) -> int | None:
    """Nanoseconds of a Go duration string ("1h30m", "-1.5h", "300ms", "0"); None where time.ParseDuration
    returns an error (no unit, unknown unit, no digits, beyond int64)."""
    s = value
    neg = False
    if s[:1] in (b"-", b"+"):
        neg = s[:1] == b"-"
        s = s[1:]
    if s == b"0":
        return 0
    if not s:
        return None
    total = 0
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            return None
        whole, frac, unit = m.group(1), m.group(2), m.group(3)   # the unit runs to the next digit or '.'
        if not whole and not frac:
            return None
        scale = _UNITS.get(unit)
        if scale is None:
            return None
        v = int(whole or b"0")
        if v > (1 << 63) // scale:
            return None
        v *= scale
        if frac:     # Go scales the fraction in float64
            v += int(float(int(frac)) * (scale / 10.0 ** len(frac)))
            if v > 1 << 63:
                return None
        total += v
        if total > 1 << 63:
            return None
        pos = m.end()
    if not neg and total > _INT64_MAX:
        return None
    return -total if neg else total


def since(now_ns: int, then_ns: int) -> int:
    """time.Since(then) at ``now``: a Duration, saturated at int64's ends like Time.Sub."""
    return max(_INT64_MIN, min(_INT64_MAX, now_ns - then_ns))
