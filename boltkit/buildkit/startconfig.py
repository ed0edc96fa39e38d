"""The parts of buildkitd.toml that decide what a start does: the OCI worker's GC switch and policy, and the
history retention. Absent settings take BuildKit's defaults (cmd/buildkitd/config, history.NewQueue)."""
from __future__ import annotations

import datetime
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
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        cfg = cls(source=str(path))
        oci = doc.get("worker", {}).get("oci", {})
        if isinstance(oci.get("gc"), bool):
            cfg.gc = oci["gc"]
        cfg.gc_policy = list(oci.get("gcpolicy", []) or [])
        cfg.gc_space = {k: oci[k] for k in ("reservedSpace", "maxUsedSpace", "minFreeSpace", "gckeepstorage")
                        if k in oci}
        history = doc.get("history")
        if isinstance(history, dict):      # a [history] table replaces both defaults, zero where left out
            cfg.history_max_age = go_duration(history.get("maxAge", 0))
            cfg.history_max_entries = int(history.get("maxEntries", 0))
        return cfg
