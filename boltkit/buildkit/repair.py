"""`buildkit repair ROOT`: the safe fixes for a whole root, planned first and applied store by store through
the safe-replace protocol.

metadata_v2.db: drop values that are not JSON envelopes (buildkitd refuses to start on them; a missing key
reads as unset), index keys without '::' or naming missing records, and records marked deleted or left without
a parent (as buildkitd clears them, descendants included) together with their index keys, externals and — in
containerdmeta.db — their leases (`<id>`, `<id>-variants`, `<id>-view`),
so nothing they held leaks. cache.db: `prune` with the results whose records are gone released.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..storage import Database
from .containerd import SUFFIXES
from .metadata import load_metadata_store
from .prune import Change


@dataclass
class StorePlan:
    path: str
    changes: list[Change] = field(default_factory=list)
    drop: set[tuple] = field(default_factory=set)     # (path tuple, key) entries to leave out


def plan_metadata(md_path: str) -> tuple[StorePlan, set[str]]:
    """What to drop from one metadata_v2.db; also returns the ids of the records that go."""
    plan = StorePlan(md_path)
    with Database(md_path) as db:
        store = load_metadata_store(db)
    deleted = {rid for rid, rec in store.records.items() if rec.values.get("cache.deleted") is True}
    # buildkitd clears a record whose parent fails to load, and so on down: do the same, so no record is left
    # pointing at one that is gone
    gone = set(deleted)
    while True:
        more = {rid for rid, rec in store.records.items() if rid not in gone
                and any(p in gone or p not in store.records for p in rec.parents())}
        if not more:
            break
        gone |= more
    for rid in sorted(gone):
        plan.changes.append(Change("M14" if rid in deleted else "M4", "drop-record", "_main", rid))
        plan.drop.add(((b"_main",), rid.encode()))
        if rid in store.externals:
            plan.changes.append(Change("M14", "drop-externals", "_external", rid))
            plan.drop.add(((b"_external",), rid.encode()))
    for rid, rec in sorted(store.records.items()):
        if rid in gone:
            continue
        for key in sorted(rec.raw):
            plan.changes.append(Change("M3", "drop-value", f"_main/{rid}", key))
            plan.drop.add(((b"_main", rid.encode()), key.encode()))
    live = set(store.records) - gone
    for k in store.index_keys:
        text = k.decode("utf-8", "replace")
        if "::" not in text:
            plan.changes.append(Change("M10", "drop-index", "_index", text))
        elif text.rsplit("::", 1)[1] not in live:
            plan.changes.append(Change("M14" if text.rsplit("::", 1)[1] in gone else "M10", "drop-index", "_index",
                                       text))
        else:
            continue
        plan.drop.add(((b"_index",), k))
    return plan, live


def plan_leases(cm_path: str, gone: set[str]) -> StorePlan:
    plan = StorePlan(cm_path)
    names = {g + s for g in gone for s in ("",) + SUFFIXES}
    with Database(cm_path) as db:
        from .containerd import leases
        held = leases(db)
    for lid in sorted(names & set(held)):
        plan.changes.append(Change("M14", "drop-lease", "v1/buildkit/leases", lid))
        plan.drop.add(((b"v1", b"buildkit", b"leases"), lid.encode()))
    return plan


def apply_plan(plan: StorePlan) -> str:
    """Write the store without the dropped entries beside it, verify, and swap it in; returns the backup."""
    from ..check import check_file
    from ..errors import BoltkitError
    from ..repair.replace import holder_check, replace
    from ..repair.rewrite import rewrite
    holder_check(plan.path)
    new = plan.path + ".boltkit-new"
    if os.path.exists(new):
        raise BoltkitError(f"{new} exists (an interrupted run?); remove it first")
    rewrite(plan.path, new, lambda path, key, is_bucket: (path, key) not in plan.drop)
    if not check_file(new, revert=False).clean:
        raise BoltkitError(f"the repaired {plan.path} did not verify; it is untouched, the attempt is in {new}")
    return replace(plan.path, new)
