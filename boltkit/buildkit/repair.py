"""`buildkit repair ROOT`: the safe fixes for a whole root, planned first and applied through the one repair
primitive (repair/replace.py): every store is prepared and verified before any is swapped in.

The default repair replays the start (startup.py) with fixes for what stops it and applies what the start
does. `--prune` (``plan_root``) first removes what BuildKit itself never does: in metadata_v2.db values that
are not JSON envelopes, index keys without '::' or naming missing records, buckets inside records and externals
of no record; in cache.db `prune` after rehoming (rehome.py), with the results whose records are gone released;
in history.db build records outside `_records` put back. The records the daemon clears are left to the replay.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..check.checker import Progress, progress_part
from ..repair.preflight import require_sound
from ..storage import Database
from .metadata import MetadataStore, index_ref, load_metadata_store
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

    @property
    def drop(self) -> set[tuple[tuple[bytes, ...], bytes]]:
        """The (bucket, key) entries the rewrite leaves out: exactly the changes' own bytes."""
        return {(c.bucket, c.key) for c in self.changes}


def plan_metadata(md_path: str) -> tuple[StorePlan, MetadataStore]:
    """What `--prune` drops from one metadata_v2.db that BuildKit itself never removes; also returns the decoded
    store. Records the daemon clears (deleted, parent or equalMutable gone, and so on down, with their index
    keys, externals and leases) are not planned here: the replayed start that follows (startup.py) clears them
    by BuildKit's own rules, so there is one copy of those rules."""
    plan = StorePlan(md_path)
    with Database(md_path) as db:
        store = load_metadata_store(db)
    for k in store.plain_main:        # values where record buckets belong: BuildKit's Update fails on them
        plan.changes.append(Change("M2", "drop-entry", (b"_main",), k))
    for k in store.plain_external:
        plan.changes.append(Change("M2", "drop-entry", (b"_external",), k))
    for rid in sorted(set(store.externals) - set(store.records)):
        plan.changes.append(Change("M11", "drop-externals", (b"_external",), rid))
    for rid, rec in sorted(store.records.items()):
        for key in sorted(rec.nested):      # buckets inside a record: BuildKit never reads them
            plan.changes.append(Change("M2", "drop-entry", (b"_main", rid), key))
        for key in sorted(rec.raw):
            plan.changes.append(Change("M3", "drop-value", (b"_main", rid), key))
    for k in store.index_keys:
        ref = index_ref(k)
        if ref is None or ref not in store.records:
            plan.changes.append(Change("M10", "drop-index", (b"_index",), k))
    return plan, store


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
        out = [(p.path, c) for p in self.stores for c in p.changes]
        if self.cache is not None:
            out += [(self.cache.path, c) for c in self.cache.changes]
        if self.history_path is not None:
            out += [(self.history_path, c) for c in self.history_changes]
        return out


def plan_root(root: Root, *, config: StartConfig | None = None, progress: Progress | None = None) -> RootPlan:
    """Refuse structurally damaged stores (salvage first), then plan each worker's metadata fixes and the cache.db
    prune that releases the results whose records are gone, or go at the start the repair then applies (the
    start model says which: the prune sees the records as the start leaves them, so the dead chains their
    results held up go too, and the start that follows has nothing left to release). ``progress(done, total)``:
    the stores checked (by size), the start replayed, cache.db's prune planned."""
    sizes = [max(os.path.getsize(s.path), 1) if os.path.exists(s.path) else 1 for s in root.stores]
    total, done = 3 * sum(sizes), 0
    for s, size in zip(root.stores, sizes):
        require_sound(str(s.path), progress=progress_part(progress, done, done + size, total))
        done += size
    plan = RootPlan(root, [])
    start = plan_start_repair(root.path, config=config, progress=progress_part(progress, done, 2 * done, total))
    cleared = {(c.store, c.key) for c in start.changes if c.what == "record" and c.op == "delete-bucket"}
    start.close()
    live: set[bytes] = set()           # record ids as stored: cache.db's result ids name them in bytes
    for w in root.workers:
        md_path = w.dir / "metadata_v2.db"
        md_plan, store = plan_metadata(str(md_path))
        rel = os.path.relpath(md_path, root.path)
        live |= {rec.key for rec in store.records.values() if (rel, rec.key) not in cleared}
        plan.stores.append(md_plan)
    cache = next((s for s in root.stores if s.kind == "cache.db"), None)
    if cache is not None:
        plan.cache = plan_file(str(cache.path), records=live if root.workers else None, rehome=True, preflight=False,
                               progress=progress_part(progress, 2 * done, total, total))
    history = next((s for s in root.stores if s.kind == "history.db"), None)
    if history is not None:
        with Database(str(history.path)) as db:
            plan.history_found, plan.history_where = rehome_history(db)
        plan.history_path = str(history.path)
        plan.history_changes = [Change("H3", "rehome" if k in plan.history_found else "drop-copy", tuple(path), k)
                                for path, k in sorted(plan.history_where)]
    if progress is not None:
        progress(total, total)
    return plan


def written_stores(plan: RootPlan) -> list[str]:
    """Every store `apply_root` would write."""
    return [p.path for p in plan.stores if p.changes] + \
        ([plan.cache.path] if plan.cache is not None and plan.cache.changes else []) + \
        ([plan.history_path] if plan.history_changes and plan.history_path is not None else [])


def apply_root(plan: RootPlan, progress: Progress | None = None) -> list[tuple[str, str]]:
    """Apply a root plan: refused before any write when the root's lock or any store it writes is held; then every
    store is written beside itself and verified, and only when all verified are they swapped in, each with a
    report of its own changes beside its backup. Returns (store, backup) pairs, as `apply_start_repair` does.
    ``progress(done, total)``: the stores written and verified."""
    from ..repair.replace import refuse_if_held, signals_deferred
    stores = written_stores(plan)
    refuse_if_held(stores + ([str(plan.root.lock)] if plan.root.lock is not None else []))
    extra = {"root": str(plan.root.path)}
    prepared: list = []

    def step() -> None:
        if progress is not None:
            progress(len(prepared), len(stores))
    try:
        for p in plan.stores:
            if p.changes:
                prepared.append((p.path, prepare_plan(p), _store_report(p.path, p.changes, extra)))
                step()
        if plan.cache is not None and plan.cache.changes:
            prepared.append((plan.cache.path, prepare_prune(plan.cache), prune_report(plan.cache, extra)))
            step()
        if plan.history_changes and plan.history_path is not None:
            prepared.append((plan.history_path,
                             prepare_history(plan.history_path, plan.history_found, plan.history_where),
                             _store_report(plan.history_path, plan.history_changes, extra)))
            step()
    except BaseException:
        for _, pr, _ in prepared:
            pr.discard()
        raise
    done = []
    with signals_deferred():           # every store swapped, or none: a signal waits for the last swap
        for i, (store, pr, record) in enumerate(prepared):
            try:
                done.append((store, pr.commit(dict(record, stores=stores)).backup))
            except BaseException:
                for _, later, _ in prepared[i + 1:]:
                    later.discard()
                raise
    return done


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
    def changes(self) -> Sequence[StartChange]:
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
            if self.start.cause is Cause.LINK_CYCLE:
                return (f"buildkitd would still not start: {self.start.message}; the cycle runs round stale "
                        "backlinks (D4): boltkit buildkit prune --apply cache.db drops them")
            return f"buildkitd would still not start: {self.start.message}"
        if self.start.resets:
            return (f"SafeOpen would reset {', '.join(self.start.resets)}: salvage it first instead of losing "
                    "everything in it (boltkit salvage --in-place, or boltkit buildkit fsck --repair)")
        return None

    def close(self) -> None:
        close_plan(self.start)


def plan_start_repair(root: str | os.PathLike, *, config: StartConfig | None = None, start_only: bool = False,
                      now=None, progress: Progress | None = None) -> StartRepair:
    """The default repair's plan: fixes until the replayed start no longer refuses or crashes (or a cause
    only salvage can fix), then the start's own changes. ``start_only``: no fixes, exactly what a start does.
    ``progress(done, total)``: the results the replayed start releases (of the last replay, when a fix needs
    another)."""
    fixes: list[Fix] = []
    found = discover(root)
    while True:
        plan = simulate_start(found.path, config=config, now=now, fixes=tuple(fixes), until_stable=not start_only,
                              progress=progress)
        if plan.starts or start_only or plan.cause not in (Cause.BAD_VALUE, Cause.PARENT_CYCLE) \
                or len(fixes) > 10000:
            return StartRepair(found.path, tuple(fixes), plan, start_only)
        worker = os.path.dirname(plan.store or "") or "."
        fixes.append(Fix(worker, plan.cause, plan.cause_records, plan.cause_key))
        close_plan(plan)


def apply_start_repair(rep: StartRepair, report: dict | None = None,
                       progress: Progress | None = None) -> list[tuple[str, str]]:
    """Write every store the repair changes beside itself and verify it; only when all verified are they swapped
    in (the one repair primitive, each with a report of its own beside its backup). Returns (store, backup) pairs.
    Every store, and the root's lock, is checked for holders before the first write, so a root is never half
    repaired. ``progress(done, total)``: the stores written, then each verified (by its check's pages)."""
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

    def verifier(i: int):
        def verify(new: str) -> str | None:    # the second half of the store's share: its check
            share = progress_part(progress, 1000 * i + 500, 1000 * i + 1000, 1000 * len(changed))
            checked = check_file(new, revert=False, progress=share)
            return None if checked.clean else (checked.problems[0].message if checked.problems else "not clean")
        return verify

    def writer(i: int, ov):
        def write(new: str) -> None:
            write_overlay(ov, new)
            if progress is not None:
                progress(1000 * i + 500, 1000 * len(changed))
        return write
    prepared = []
    try:
        for i, (rel, ov) in enumerate(changed):
            prepared.append((rel, prepare(str(rep.root / rel), writer(i, ov), verifier(i))))
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

