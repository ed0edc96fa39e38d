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

import os

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
from .check import CheckReport, Problem, Severity
from .check import check_file as _check_file
from .errors import BoltkitError, CorruptionError, InUse, NotFound, OpenError, OutputError, WrongStore
from .repair import CompactResult, SalvageResult
from .repair import compact as _compact
from .repair import salvage as _salvage
from .storage import Bucket, Database, Item


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
    return _compact(str(src), str(dst), page_size=page_size, fill_percent=fill_percent)


def salvage(src: str | os.PathLike, dst: str | os.PathLike, *, lost_found: bool = True,
            report: str | bool = True) -> SalvageResult:
    """Everything recoverable from a damaged file into the new file ``dst``, orphans under ``lost+found``; the
    JSON report beside ``dst`` (``report=False``: none). Refused, leaving no ``dst``, when it would lose pairs
    a tolerant read of ``src`` gives."""
    return _salvage(str(src), str(dst), lost_found=lost_found, report=report)


def open_root(path: str | os.PathLike) -> BuildKitRoot:
    """A BuildKit state directory (buildkitd's ``--root``, or a Docker data root): its stores, records, cache
    results, key graph, the replay of its next start, fsck."""
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
