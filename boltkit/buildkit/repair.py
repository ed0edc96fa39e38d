"""`buildkit repair ROOT`: the safe fixes for a whole root, planned first and applied through the one repair
primitive (repair/replace.py): every store is prepared and verified before any is swapped in.

metadata_v2.db: drop values that are not JSON envelopes (buildkitd refuses to start on them; a missing key
reads as unset), index keys without '::' or naming missing records, buckets inside records and externals of no
record, and records marked deleted, left without a parent or whose equalMutable target is gone while their own
snapshot is too (as buildkitd clears them, descendants included) together with their index keys, externals and —
in containerdmeta.db — their leases (`<id>`, `<id>-variants`, `<id>-view`), so nothing they held leaks.
cache.db: `prune` after rehoming (rehome.py), with the results whose records are gone released. history.db:
build records outside `_records` put back.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..repair.preflight import require_sound
from ..storage import Database
from .containerd import SUFFIXES, snapshots, worker_snapshotter
from .metadata import load_metadata_store
from .prune import Change, PrunePlan, plan_file, prepare_prune, prune_report
from .rehome import prepare_history, rehome_history
from .root import Root, discover
from .startconfig import StartConfig
from .startup import Cause, Fix, StartPlan, close_plan, simulate_start
from .startup import Change as StartChange


@dataclass
class StorePlan:
    path: str
    changes: list[Change] = field(default_factory=list)
    drop: set[tuple] = field(default_factory=set)     # (path tuple, key) entries to leave out


def plan_metadata(md_path: str, snapshots: set[str] | None = None) -> tuple[StorePlan, set[str]]:
    """What to drop from one metadata_v2.db; also returns the ids of the records that stay. ``snapshots``:
    the snapshot keys of the worker's containerdmeta.db (None: it has none, so no snapshot exists)."""
    plan = StorePlan(md_path)
    with Database(md_path) as db:
        store = load_metadata_store(db)
    # the flag is ignored on a record with an equalMutable (getRecord takes that branch first)
    deleted = {rid for rid, rec in store.records.items() if rec.values.get("cache.deleted") is True
               and not rec.values.get("cache.equalMutable")}
    orphaned: set[str] = set()
    # an equalMutable that names no record: buildkitd clears the key when the record's own snapshot exists,
    # and removes the record when it does not (§3.7)
    for rid, rec in sorted(store.records.items()):
        em = rec.values.get("cache.equalMutable")
        if isinstance(em, str) and em and em not in store.records:
            if snapshots is not None and rec.values.get("cache.snapshot", rid) in snapshots:
                plan.changes.append(Change("M8", "drop-value", f"_main/{rid}", "cache.equalMutable"))
                plan.drop.add(((b"_main", rid.encode()), b"cache.equalMutable"))
            else:
                orphaned.add(rid)
    # buildkitd clears a record whose parent fails to load, and so on down: do the same, so no record is left
    # pointing at one that is gone
    gone = deleted | orphaned
    while True:
        more = {rid for rid, rec in store.records.items() if rid not in gone
                and any(p in gone or p not in store.records for p in rec.parents())}
        if not more:
            break
        gone |= more
    for rid in sorted(gone):
        plan.changes.append(Change("M14" if rid in deleted else "M8" if rid in orphaned else "M4", "drop-record",
                                   "_main", rid))
        plan.drop.add(((b"_main",), rid.encode()))
        if rid in store.externals:
            plan.changes.append(Change("M14", "drop-externals", "_external", rid))
            plan.drop.add(((b"_external",), rid.encode()))
    for k in store.plain_main:        # values where record buckets belong: BuildKit's Update fails on them
        plan.changes.append(Change("M2", "drop-entry", "_main", k.decode("utf-8", "replace")))
        plan.drop.add(((b"_main",), k))
    for k in store.plain_external:
        plan.changes.append(Change("M2", "drop-entry", "_external", k.decode("utf-8", "replace")))
        plan.drop.add(((b"_external",), k))
    for rid in sorted(set(store.externals) - set(store.records)):
        plan.changes.append(Change("M11", "drop-externals", "_external", rid))
        plan.drop.add(((b"_external",), rid.encode()))
    for rid, rec in sorted(store.records.items()):
        if rid in gone:
            continue
        for key in sorted(rec.nested):      # buckets inside a record: BuildKit never reads them
            plan.changes.append(Change("M2", "drop-entry", f"_main/{rid}", key))
            plan.drop.add(((b"_main", rid.encode()), key.encode()))
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


def apply_plan(plan: StorePlan, report: dict | None = None) -> str:
    """Write the store without the dropped entries beside it, verify, and swap it in (the one repair primitive,
    which writes the report of its changes); returns the backup."""
    return prepare_plan(plan).commit(_store_report(plan.path, plan.changes, report)).backup


def prepare_plan(plan: StorePlan, *, check_holders: bool = True):
    """The store without the dropped entries, written beside it and verified, not yet swapped in."""
    from ..check import check_file
    from ..repair.replace import prepare
    from ..repair.rewrite import rewrite

    def verify(new: str) -> str | None:
        return None if check_file(new, revert=False).clean else "the rewritten store does not check clean"
    return prepare(plan.path, lambda new: rewrite(plan.path, new, lambda path, key, is_bucket:
                                                  (path, key) not in plan.drop), verify, check_holders=check_holders)


def _store_report(path: str, changes, extra: dict | None = None) -> dict:
    return {"operation": "buildkit repair", **(extra or {}), "changes": [c.as_dict() for c in changes]}


@dataclass
class RootPlan:
    """Every change `buildkit repair` would make under one root, store by store."""
    root: Root
    stores: list[StorePlan]                     # metadata_v2.db and containerdmeta.db rewrites
    cache: PrunePlan | None = None
    history_path: str | None = None
    history_found: dict = field(default_factory=dict)  # build records to put back into _records
    history_where: set = field(default_factory=set)
    history_changes: list[Change] = field(default_factory=list)

    @property
    def changes(self) -> list[tuple[str, Change]]:
        return [(p.path, c) for p in self.stores for c in p.changes] + \
            [(self.cache.path, c) for c in (self.cache.changes if self.cache else [])] + \
            [(self.history_path, c) for c in self.history_changes]


def plan_root(root: Root) -> RootPlan:
    """Refuse structurally damaged stores (salvage first), then plan each worker's metadata and lease fixes and
    the cache.db prune that releases results whose records are gone."""
    for s in root.stores:
        require_sound(str(s.path))
    plan = RootPlan(root, [])
    live: set[str] = set()
    for w in root.workers:
        md_plan, records = plan_metadata(str(w.dir / "metadata_v2.db"), _snapshot_keys(w))
        live |= records
        plan.stores.append(md_plan)
        gone = {c.key for c in md_plan.changes if c.action == "drop-record"}
        if gone and (w.dir / "containerdmeta.db").is_file():
            plan.stores.append(plan_leases(str(w.dir / "containerdmeta.db"), gone))
    cache = next((s for s in root.stores if s.kind == "cache.db"), None)
    if cache is not None:
        plan.cache = plan_file(str(cache.path), records=live if root.workers else None, rehome=True, preflight=False)
    history = next((s for s in root.stores if s.kind == "history.db"), None)
    if history is not None:
        with Database(str(history.path)) as db:
            plan.history_found, plan.history_where = rehome_history(db)
        plan.history_path = str(history.path)
        plan.history_changes = [Change("H3", "rehome" if k in plan.history_found else "drop-copy",
                                       "/".join(p.decode("utf-8", "replace") for p in path), k.decode("utf-8", "replace"))
                                for path, k in sorted(plan.history_where)]
    return plan


def _snapshot_keys(worker) -> set[str] | None:
    cm = worker.dir / "containerdmeta.db"
    name = worker_snapshotter(worker.dir.name)
    if not cm.is_file() or name is None:
        return None
    with Database(str(cm)) as db:
        return set(snapshots(db, name))


def written_stores(plan: RootPlan) -> list[str]:
    """Every store `apply_root` would write."""
    return [p.path for p in plan.stores if p.changes] + \
        ([plan.cache.path] if plan.cache is not None and plan.cache.changes else []) + \
        ([plan.history_path] if plan.history_changes else [])


def apply_root(plan: RootPlan) -> list[str]:
    """Apply a root plan: refused before any write when the root's lock or any store it writes is held; then every
    store is written beside itself and verified, and only when all verified are they swapped in, each with a
    report of its own changes beside its backup. Returns the backups made."""
    from ..repair.replace import refuse_if_held, signals_deferred
    stores = written_stores(plan)
    refuse_if_held(stores + ([str(plan.root.lock)] if plan.root.lock is not None else []))
    extra = {"root": str(plan.root.path)}
    prepared = []
    try:
        for p in plan.stores:
            if p.changes:
                prepared.append((prepare_plan(p), _store_report(p.path, p.changes, extra)))
        if plan.cache is not None and plan.cache.changes:
            prepared.append((prepare_prune(plan.cache), prune_report(plan.cache, extra)))
        if plan.history_changes:
            prepared.append((prepare_history(plan.history_path, plan.history_found, plan.history_where),
                             _store_report(plan.history_path, plan.history_changes, extra)))
    except BaseException:
        for pr, _ in prepared:
            pr.discard()
        raise
    backups = []
    with signals_deferred():           # every store swapped, or none: a signal waits for the last swap
        for i, (pr, record) in enumerate(prepared):
            try:
                backups.append(pr.commit(dict(record, stores=stores)).backup)
            except BaseException:
                for later, _ in prepared[i + 1:]:
                    later.discard()
                raise
    return backups


# -- the default repair: what stops the start, then what the start would do --------------------------------
#
# The start is replayed (startup.py) with fixes for what stops it: a value that does not decode is dropped,
# the records of a parent cycle are cleared. The replay's own changes then follow, so the repaired root is
# what buildkitd would leave after a start, and its next start changes nothing. Damage the daemon would
# crash on, or a store bbolt cannot open, is salvage's job (`fsck --repair` salvages first).

@dataclass
class StartRepair:
    root: Path
    fixes: tuple[Fix, ...]
    start: StartPlan                 # the replay with the fixes applied
    start_only: bool

    @property
    def changes(self) -> list[StartChange]:
        return self.start.changes

    @property
    def blocked(self) -> str | None:
        """Why the repair cannot be applied (None when it can)."""
        if self.start.unreadable:
            return (f"{', '.join(self.start.unreadable)} cannot be read by this user: nothing is repaired "
                    "(run as the user buildkitd runs as)")
        if not self.start.starts:
            if self.start.cause in (Cause.DAMAGE, Cause.OPEN):
                return (f"{self.start.store} is damaged where buildkitd reads it ({self.start.message}): salvage it "
                        f"first (boltkit salvage --in-place {self.start.store}, or boltkit buildkit fsck --repair)")
            return f"buildkitd would still not start: {self.start.message}"
        if self.start.resets:
            return (f"SafeOpen would reset {', '.join(self.start.resets)}: salvage it first instead of losing "
                    "everything in it (boltkit salvage --in-place, or boltkit buildkit fsck --repair)")
        return None

    def close(self) -> None:
        close_plan(self.start)


def plan_start_repair(root: str | os.PathLike, *, config: StartConfig | None = None, start_only: bool = False,
                      now=None) -> StartRepair:
    """The default repair's plan: fixes until the replayed start no longer refuses or crashes (or a cause
    only salvage can fix), then the start's own changes. ``start_only``: no fixes, exactly what a start does."""
    fixes: list[Fix] = []
    found = discover(root)
    while True:
        plan = simulate_start(found.path, config=config, now=now, fixes=tuple(fixes), until_stable=not start_only)
        if plan.starts or start_only or plan.cause not in (Cause.BAD_VALUE, Cause.PARENT_CYCLE) \
                or len(fixes) > 10000:
            return StartRepair(found.path, tuple(fixes), plan, start_only)
        worker = os.path.dirname(plan.store) or "."
        fixes.append(Fix(worker, plan.cause, plan.cause_records, plan.cause_key))
        close_plan(plan)


def apply_start_repair(rep: StartRepair, report: dict | None = None) -> list[tuple[str, str]]:
    """Write every store the repair changes beside itself and verify it; only when all verified are they swapped
    in (the one repair primitive, each with a report of its own beside its backup). Returns (store, backup) pairs.
    Every store, and the root's lock, is checked for holders before the first write, so a root is never half
    repaired."""
    from ..check import check_file
    from ..errors import BoltkitError
    from ..repair.apply import write_overlay
    from ..repair.replace import prepare, refuse_if_held, signals_deferred
    why = rep.blocked
    if why is not None:
        raise BoltkitError(why)
    # a store the root does not have is created by buildkitd itself: nothing to write for it
    changed = [(rel, ov) for rel, ov in rep.start.overlays.items() if ov.changed and (rep.root / rel).exists()]
    lock = rep.root / "buildkitd.lock"
    refuse_if_held([str(rep.root / rel) for rel, _ in changed] + ([str(lock)] if os.path.lexists(lock) else []))

    def verify(new: str) -> str | None:
        checked = check_file(new, revert=False)
        return None if checked.clean else (checked.problems[0].message if checked.problems else "not clean")
    prepared = []
    try:
        for rel, ov in changed:
            prepared.append((rel, prepare(str(rep.root / rel), lambda new, ov=ov: write_overlay(ov, new), verify)))
    except BaseException:
        for _, pr in prepared:
            pr.discard()
        raise
    finally:
        rep.close()
    by_store: dict[str, list[StartChange]] = {}
    for c in rep.changes:
        by_store.setdefault(c.store, []).append(c)
    done = []
    with signals_deferred():           # every store swapped, or none: a signal waits for the last swap
        for i, (rel, pr) in enumerate(prepared):
            record = {"operation": "buildkit repair", "root": str(rep.root), **(report or {}),
                      "changes": [c.as_dict() for c in by_store.get(rel, [])]}
            try:
                done.append((rel, pr.commit(record).backup))
            except BaseException:
                for _, later in prepared[i + 1:]:
                    later.discard()
                raise
    return done

