"""The parts of buildkitd.toml that decide what a start does: the OCI worker's GC switch and policy, and the
history retention. Absent settings take BuildKit's defaults (cmd/buildkitd/config, history.NewQueue)."""
from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass, field

from ..errors import ConfigError

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def go_duration(text) -> datetime.timedelta:
    """config.Duration: Go's time.ParseDuration ("1h30m", "20s"), else an integer number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return datetime.timedelta(seconds=int(text))
    s = str(text).strip().strip('"')
    if not s:
        return datetime.timedelta(0)
    if re.fullmatch(r"[+-]?\d+", s):
        return datetime.timedelta(seconds=int(s))
    sign = -1 if s.startswith("-") else 1
    body = s.lstrip("+-")
    if body == "0":
        return datetime.timedelta(0)
    pos, total = 0, 0.0
    for m in _PART.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(body) or not body:
        raise ConfigError(f"invalid duration {text!r}")
    return datetime.timedelta(seconds=sign * total)


@dataclass
class StartConfig:
    gc: bool = True                                          # worker.oci.gc (default on)
    gc_policy: list[dict] = field(default_factory=list)      # worker.oci.gcpolicy, as written
    gc_space: dict = field(default_factory=dict)             # worker.oci reservedSpace / maxUsedSpace / minFreeSpace
    history_max_age: datetime.timedelta = datetime.timedelta(hours=48)
    history_max_entries: int = 50
    source: str | None = None                                # the file it came from

    @classmethod
    def load(cls, path: str) -> "StartConfig":
        try:
            import tomllib  # type: ignore[import-not-found,unused-ignore]  # (Python 3.11+)
        except ImportError as e:        # Python 3.10
            raise ConfigError("reading buildkitd.toml needs Python 3.11 (tomllib)") from e
        from ..errors import OpenError
        from ..storage.source import open_input
        try:        # a FIFO or a device is refused at once, never waited on
            fd = open_input(path, what="a buildkitd.toml")
        except OpenError as e:
            raise ConfigError(str(e)) from None
        try:
            with os.fdopen(fd, "rb") as f:
                doc = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror or e}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        cfg = cls(source=str(path))
        where = f"{path}: buildkitd would refuse it"
        oci = _table(_table(doc, "worker", where), "oci", where, "worker.")
        if "gc" in oci:
            cfg.gc = _typed(oci["gc"], bool, "worker.oci.gc", where)
        policy = _typed(oci.get("gcpolicy", []), list, "worker.oci.gcpolicy", where)
        for i, rule in enumerate(policy):
            _typed(rule, dict, f"worker.oci.gcpolicy[{i}]", where)
        cfg.gc_policy = list(policy)
        cfg.gc_space = {k: oci[k] for k in ("reservedSpace", "maxUsedSpace", "minFreeSpace", "gckeepstorage")
                        if k in oci}
        if "history" in doc:      # a [history] table replaces both defaults, zero where left out
            history = _typed(doc["history"], dict, "history", where)
            age = history.get("maxAge", 0)
            if isinstance(age, bool) or not isinstance(age, (int, float, str)):
                raise ConfigError(f"{where}: history.maxAge is {_kind(age)}, not a duration")
            entries = _typed(history.get("maxEntries", 0), int, "history.maxEntries", where)
            try:
                cfg.history_max_age = go_duration(age)
                if not -_MAX_INT64 <= entries < _MAX_INT64:
                    raise OverflowError
            except (OverflowError, ValueError):
                raise ConfigError(f"{where}: history.maxAge {age!r} or maxEntries {entries} out of range") from None
            cfg.history_max_entries = entries
        return cfg


_MAX_INT64 = 1 << 63
_KINDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
          dict: "a table", datetime.datetime: "a date-time", datetime.date: "a date", datetime.time: "a time"}


def _kind(value) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _typed(value, want: type, name: str, where: str):
    """``value`` when it is of the TOML type buildkitd's struct field has (a bool is no integer), else ConfigError:
    the TOML decoder of buildkitd refuses the file, so no start happens with it."""
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: {name} is {_kind(value)}, not {_KINDS.get(want, want.__name__)}")
    return value


def _table(doc: dict, key: str, where: str, prefix: str = "") -> dict:
    return _typed(doc.get(key, {}), dict, prefix + key, where)
