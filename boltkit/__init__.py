"""boltkit: inspect, check and repair bbolt database files (BuildKit's cache.db and friends) from Python.

This module is the library's public face: a small set of typed names a script can build on, each a thin name
over the layer that does the work (storage reads, check judges, repair writes, buildkit decodes and models).
What is not listed in ``__all__`` is internal and may change between releases; docs/api.md shows every name at
work on real stores.

    import boltkit
    with boltkit.open("cache.db") as db:
        for bucket in db.buckets():
            print(bucket.path)

Reading never writes to the file. Damage a read meets raises ``CorruptionError``, or, where a method takes a
``damage`` list, is appended to it (page, offset, bucket path) while the read goes on past it.
"""
from __future__ import annotations

__version__ = "0.1.0"

import importlib
import os
from typing import TYPE_CHECKING

# the reading and checking layers, which every command needs, at once (and `check` must be imported before the
# function of that name below is defined: a later first import of the subpackage would rebind `boltkit.check`)
from .check import CheckReport, Problem, Severity
from .check import check_file as _check_file
from .errors import BoltkitError, CorruptionError, InUse, NotFound, OpenError, OutputError, WrongStore
from .storage import Bucket, Database, Item

if TYPE_CHECKING:       # the names below are imported when first used (``__getattr__``): `import boltkit.cli` for
    # `boltkit check` must not pay for the BuildKit layer, the writer and salvage
    from .buildkit.cachedb import CacheResult, CacheStore
    from .buildkit.fsck import FsckResult
    from .buildkit.graph import GraphSummary
    from .buildkit.history import HistoryRecord
    from .buildkit.metadata import Record
    from .buildkit.root import Store
    from .buildkit.rootview import BuildKitRoot
    from .buildkit.startconfig import StartConfig
    from .buildkit.startup import Change as StartChange
    from .buildkit.startup import Outcome, StartPlan
    from .repair import CompactResult, SalvageResult

# public name -> (module, its name there): the names the TYPE_CHECKING block imports
_LAZY = {
    "CacheResult": ("buildkit.cachedb", "CacheResult"), "CacheStore": ("buildkit.cachedb", "CacheStore"),
    "FsckResult": ("buildkit.fsck", "FsckResult"), "GraphSummary": ("buildkit.graph", "GraphSummary"),
    "HistoryRecord": ("buildkit.history", "HistoryRecord"), "Record": ("buildkit.metadata", "Record"),
    "Store": ("buildkit.root", "Store"), "BuildKitRoot": ("buildkit.rootview", "BuildKitRoot"),
    "StartConfig": ("buildkit.startconfig", "StartConfig"), "StartChange": ("buildkit.startup", "Change"),
    "Outcome": ("buildkit.startup", "Outcome"), "StartPlan": ("buildkit.startup", "StartPlan"),
    "CompactResult": ("repair", "CompactResult"), "SalvageResult": ("repair", "SalvageResult"),
}


def __getattr__(name: str):
    """A public name's first use imports its module (PEP 562) and keeps the name here, so later uses are plain
    attribute reads."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def open(path: str | os.PathLike, *, meta: int | None = None, snapshot: bool = False) -> Database:  # noqa: A001
    """Open a bbolt file read-only (use it as a context manager). ``meta`` forces meta page 0 or 1 (the older
    tree, the revert candidate); ``snapshot`` reads a consistent copy of a file a writer holds. OpenError when it
    is not a bbolt file at all; a damaged file still opens, and its reads report what they skip."""
    return Database(str(path), meta=meta, snapshot=snapshot)


def check(path: str | os.PathLike, *, meta: int | None = None, quick: bool = False) -> CheckReport:
    """The structural check of ``boltkit check``: never raises for what it finds in the file; the problems are
    ``report.problems`` (code, severity, page, bucket path, message), ``report.clean`` says whether any counts."""
    return _check_file(str(path), meta=meta, quick=quick)


def compact(src: str | os.PathLike, dst: str | os.PathLike, *, page_size: int | None = None,
            fill_percent: float = 1.0) -> CompactResult:
    """A dense copy of a sound file into the new file ``dst`` (which must not exist), one bbolt accepts."""
    from .repair import compact as compact_file
    return compact_file(str(src), str(dst), page_size=page_size, fill_percent=fill_percent)


def salvage(src: str | os.PathLike, dst: str | os.PathLike, *, lost_found: bool = True,
            report: str | bool = True) -> SalvageResult:
    """Everything recoverable from a damaged file into the new file ``dst``, orphans under ``lost+found``; the
    JSON report beside ``dst`` (``report=False``: none). Refused, leaving no ``dst``, when it would lose pairs
    a tolerant read of ``src`` gives."""
    from .repair import salvage as salvage_file
    return salvage_file(str(src), str(dst), lost_found=lost_found, report=report)


def open_root(path: str | os.PathLike) -> BuildKitRoot:
    """A BuildKit state directory (buildkitd's ``--root``, or a Docker data root): its stores, records, cache
    results, key graph, the replay of its next start, fsck."""
    from .buildkit.rootview import BuildKitRoot
    return BuildKitRoot(path)


__all__ = [
    "__version__",
    # files
    "open", "Database", "Bucket", "Item",
    "check", "CheckReport", "Problem", "Severity",
    "compact", "CompactResult", "salvage", "SalvageResult",
    # BuildKit
    "open_root", "BuildKitRoot", "Store", "Record", "CacheStore", "CacheResult", "GraphSummary", "HistoryRecord",
    "StartPlan", "StartChange", "Outcome", "StartConfig", "FsckResult",
    # errors
    "BoltkitError", "OpenError", "CorruptionError", "NotFound", "InUse", "OutputError", "WrongStore",
]
