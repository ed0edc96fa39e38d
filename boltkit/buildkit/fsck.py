"""Structural plus semantic check of one BuildKit store, as one CheckReport."""
from __future__ import annotations

from ..check import CheckReport, check_file
from ..check.problems import Problem
from ..errors import BoltkitError
from ..storage import Database
from .cachecheck import check_cache_store
from .cachedb import TOP_BUCKETS, load_cache_store


def store_kind(db: Database) -> str:
    names = {item.key for item in db.tree.items(db.root(), on_error=lambda e: None)}
    if names & set(TOP_BUCKETS):
        return "cache.db"
    if {b"_main", b"_index"} & names:
        return "metadata_v2.db"
    if b"_records" in names:
        return "history.db"
    if b"v1" in names:
        return "containerd"
    return "unknown"


def check_store(path: str, *, snapshot: bool = False, progress=None) -> CheckReport:
    report = check_file(path, snapshot=snapshot, progress=progress)
    if not report.readable:
        return report
    try:
        with Database(path, snapshot=snapshot) as db:
            kind = store_kind(db)
            if kind != "cache.db":
                report.warnings.append(f"{path}: {kind} store: only structural checks so far "
                                       "(semantic checks exist for cache.db)")
                return report
            damage: list = []
            store = load_cache_store(db, on_damage=damage.append)
            report.problems.extend(check_cache_store(store, str(path)))
    except BoltkitError as e:
        report.problems.append(Problem("B001", f"semantic pass stopped: {e}", file=str(path)))
    return report
