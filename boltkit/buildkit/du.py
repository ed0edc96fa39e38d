"""An offline `buildctl du -v`: the records of metadata_v2.db with sizes and ages, and the offline reasons
space will not be reclaimed (reference/buildkit-stores.md §3.9). "In use" lives only in a running daemon
and is not shown."""
from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Any

from ..textform import show_bytes
from .metadata import MetadataStore, Record

SKIPPED_BY_DEFAULT_PRUNE = {"internal", "frontend"}


@dataclass
class Usage:
    id: bytes                   # the record's id as stored (rendered only in ``as_dict`` and the CLI)
    kind: str
    record_type: str
    size: int | None            # None: unknown (snapshot.size -1 or absent)
    created: datetime.datetime | None
    last_used: datetime.datetime | None
    usage_count: int
    parents: list[bytes]
    children: int
    description: str
    pinned_by_younger: bool     # a descendant used more recently keeps it (keepDuration pins ancestors)
    mutable: bool = False       # buildctl's Mutable: the snapshot is not committed
    reclaimable: bool | None = True    # buildctl's Reclaimable (= not in use); None: a running daemon decides
    shared: bool | None = False        # buildctl's Shared (only Docker sets it: layers of its images); None: unknown

    def as_dict(self) -> dict:
        """The `cache-record` JSON record: ids as text (printable UTF-8 as it is, anything else 0x-hex)."""
        d = dict(self.__dict__)
        d["id"], d["parents"] = show_bytes(self.id), [show_bytes(p) for p in self.parents]
        for k in ("created", "last_used"):
            d[k] = d[k].isoformat() if d[k] else None
        return d


def _nanos(v) -> int | None:
    """UnixNano as BuildKit stores times; compared as integers (datetime keeps only microseconds)."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _time(v) -> datetime.datetime | None:
    n = _nanos(v)
    return datetime.datetime.fromtimestamp(n / 1e9, datetime.timezone.utc) if n else None


def kind_of(rec: Record) -> str:
    v = rec.values
    if v.get("cache.mergeParents"):
        return "merge"
    if v.get("cache.lowerDiffParent") or v.get("cache.upperDiffParent"):
        return "diff"
    return "layer" if v.get("cache.parent") else "base"


def usage(store: MetadataStore, *, daemon_running: bool = False, docker: bool = False) -> list[Usage]:
    """One row per record, as `buildctl du -v` lists them. What is only known to a running daemon is said
    as far as the files allow: with buildkitd stopped no record is in use (nothing holds a reference across
    a restart), so every record is reclaimable; while it runs that is unknown. Shared is set only by Docker
    (records whose layers its images use), which the BuildKit files do not record: unknown under Docker,
    false for buildkitd. A size not recorded yet is taken from the record's equalMutable partner, as
    BuildKit's DiskUsage does."""
    recs = store.records
    children: dict[bytes, list[bytes]] = {}
    for rid, rec in recs.items():
        for p in rec.parents():
            children.setdefault(p, []).append(rid)
    # newest use anywhere below each record (iterative, cycle-safe)
    newest: dict[bytes, int | None] = {}
    for rid in recs:
        best = None
        seen, todo = set(), list(children.get(rid, []))
        while todo:
            c = todo.pop()
            if c in seen:
                continue
            seen.add(c)
            t = _nanos(recs[c].values.get("cache.lastUsedAt")) or _nanos(recs[c].values.get("cache.createdAt"))
            if t and (best is None or t > best):
                best = t
            todo.extend(children.get(c, []))
        newest[rid] = best
    out = []
    def known_size(v):
        size = v.get("snapshot.size")
        return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None

    for rid, rec in recs.items():
        v = rec.values
        size = known_size(v)
        em = rec.ref("cache.equalMutable")
        partner = recs.get(em) if em is not None else None
        if size is None and partner is not None:
            size = known_size(partner.values)
        last = _time(v.get("cache.lastUsedAt"))
        own = _nanos(v.get("cache.lastUsedAt")) or _nanos(v.get("cache.createdAt"))
        out.append(Usage(
            id=rid, kind=kind_of(rec), record_type=v.get("cache.recordType") or "regular",
            size=size,
            created=_time(v.get("cache.createdAt")), last_used=last,
            usage_count=uses if isinstance(uses := v.get("cache.usageCount"), int) else 0,
            parents=rec.parents(), children=len(children.get(rid, [])),
            description=str(v.get("cache.description") or ""),
            pinned_by_younger=bool(own and (young := newest[rid]) and young > own),
            mutable=v.get("snapshot.committed") is not True,
            reclaimable=None if daemon_running else True,
            shared=None if docker else False))
    return out


@dataclass
class Totals:
    """The summary `buildctl du` prints: Shared and Private (when anything is shared), Reclaimable, Total;
    sizes not recorded count as 0, as there."""
    records: int
    total: int
    reclaimable: int | None     # None: unknown (buildkitd running)
    shared: int | None          # None: unknown (Docker)
    unknown_sizes: int


def totals(rows: list[Usage]) -> Totals:
    total = sum(r.size or 0 for r in rows)
    reclaimable = None if any(r.reclaimable is None for r in rows) else sum(r.size or 0 for r in rows if r.reclaimable)
    shared = None if any(r.shared is None for r in rows) else sum(r.size or 0 for r in rows if r.shared)
    return Totals(len(rows), total, reclaimable, shared, sum(r.size is None for r in rows))


def explain(rows: list[Usage], bolt_bytes: int = 0, bak_bytes: int = 0) -> list[str]:
    """Why space stays after a prune, as far as the files can tell."""
    out = []
    with_children = [r for r in rows if r.children]
    if with_children:
        size = sum(r.size or 0 for r in with_children)
        out.append(f"{len(with_children)} record(s) ({size} bytes) are parents: prune can remove them only after "
                   "all their descendants")
    skipped = [r for r in rows if r.record_type in SKIPPED_BY_DEFAULT_PRUNE]
    if skipped:
        out.append(f"{len(skipped)} record(s) ({sum(r.size or 0 for r in skipped)} bytes) are of type internal or "
                   "frontend: `buildctl prune` skips them unless --all")
    pinned = [r for r in rows if r.pinned_by_younger]
    if pinned:
        out.append(f"{len(pinned)} record(s) have a descendant used more recently: a keep-duration prune keeps "
                   "them as long as that descendant")
    unknown = [r for r in rows if r.size is None]
    if unknown:
        out.append(f"{len(unknown)} record(s) have no recorded size and none could be measured here (buildkitd "
                   "measures the snapshot the next time `buildctl du` asks; its directory is not on disk here): "
                   "counted as 0")
    if bolt_bytes:
        out.append(f"{bolt_bytes} bytes of bolt files are never counted by du and never shrink after a prune "
                   "(`boltkit compact` gives the space back)")
    if bak_bytes:
        out.append(f"{bak_bytes} bytes of .bak files (SafeOpen resets' discarded stores, repairs' kept originals) "
                   "are never read or counted by buildkitd")
    return out


@dataclass
class StartedUsage:
    """One worker's DiskUsage once the daemon has started."""
    rows: dict[bytes, Any]          # gc.UsageInfo of each listed record
    removed: set[bytes]             # records the start removes
    halves: set[bytes]              # immutable halves of pairs, listed through their mutable half


def usage_after_start(root, config=None, now=None, progress=None) -> tuple[dict[str, StartedUsage], list[str]]:
    """DiskUsage of each worker as the daemon will list it once started (gc.disk_usage on the start
    model), per metadata_v2.db path; and notes. Empty when the start would not get that far (the listing
    then comes from the files alone). ``progress(done, total)``: the start's releases."""
    from .gc import disk_usage
    from .startup import Outcome, close_plan, simulate_start
    plan = simulate_start(root, config=config, now=now, progress=progress)
    try:
        if plan.outcome not in (Outcome.STARTS, Outcome.RESETS):
            return {}, [f"buildkitd would not start ({plan.outcome.value}): sizes and the record list are "
                        "read from the files alone"]
        model = plan._models[-1]
        out = {}
        for w in model.workers:
            if w.md is not None:
                infos = {u.id: u for u in disk_usage(model, w)}
                halves = {rid for rid in w.records if rid not in infos}
                out[str(w.dir / "metadata_v2.db")] = StartedUsage(infos, set(w.cleared), halves)
        return out, []
    finally:
        close_plan(plan)


def as_started(rows: list[Usage], started: StartedUsage) -> tuple[list[Usage], int, int]:
    """The rows `buildctl du` shows on the started daemon: a pair once (its mutable half, with the
    pair's size), without the records the start removes, sizes measured where not recorded, Reclaimable
    = not in use. Returns the rows, how many records the start removes and how many pair halves fold."""
    out, gone, folded = [], 0, 0
    for r in rows:
        rid = r.id
        info = started.rows.get(rid)
        if info is None:
            if rid in started.halves:
                folded += 1
            else:
                gone += 1
            continue
        r.size = info.size
        r.reclaimable = not info.in_use
        out.append(r)
    return out, gone, folded


@dataclass
class Listing:
    """What `buildkit du` shows: the rows selected and ordered, their totals, and the notes that explain them."""
    rows: list[Usage]
    totals: Totals
    notes: list[str]


def listing(stores: list[tuple[str, list[Usage]]], *, started: dict[str, StartedUsage] | None = None,
            start_notes: list[str] | tuple = (), types: tuple[str, ...] = (),
            older_than: datetime.timedelta | None = None, sort: str = "size", now: datetime.datetime | None = None,
            bolt_bytes: int = 0, bak_bytes: int = 0) -> Listing:
    """The listing of the ``stores`` read (metadata_v2.db path, its rows): each as the started daemon lists it
    where ``started`` has it (`as_started`), then selected and ordered (`select`), with buildctl's totals and the
    notes: the start's, why space stays (`explain`), pairs listed once, records the start removes."""
    rows, removed, pairs = [], 0, 0
    for path, these in stores:
        if started is not None and path in started:
            these, gone, folded = as_started(these, started[path])
            removed += gone
            pairs += folded
        rows += these
    rows = select(rows, types=types, older_than=older_than, sort=sort, now=now)
    notes = list(start_notes) + explain(rows, bolt_bytes, bak_bytes)
    if pairs:
        notes.append(f"{pairs} equal-mutable pair(s) are listed once, through their mutable half, as buildctl du "
                     "lists them")
    if removed:
        notes.append(f"{removed} record(s) the next start removes are not listed "
                     "(`boltkit buildkit simulate-start` says why)")
    return Listing(rows, totals(rows), notes)


def root_file_bytes(root) -> tuple[int, int]:
    """The bytes of a root's bolt files (du never counts them) and of its .bak files (SafeOpen's resets, boltkit's
    repairs, others)."""
    import os
    baks = root.backups + root.boltkit_backups + root.other_backups
    return sum(os.path.getsize(s.path) for s in root.stores), sum(os.path.getsize(p) for p in baks)


SORT_KEYS = ("size", "created", "last-used", "usage")
_EPOCH = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)


def parse_age(text: str) -> datetime.timedelta | None:
    """An age as `du --older-than` takes it: a number and s, m, h or d (48h, 7d); None when it is not one."""
    m = re.fullmatch(r"(\d+)([smhd])", text)
    if not m:
        return None
    try:
        return datetime.timedelta(seconds=int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)])
    except OverflowError:           # older than the calendar: nothing is that old
        return datetime.timedelta.max


def select(rows: list[Usage], *, types: tuple[str, ...] = (), older_than: datetime.timedelta | None = None,
           sort: str = "size", now: datetime.datetime | None = None) -> list[Usage]:
    """The records `du` lists: of ``types`` only (all when empty), last used (or created) longer ago than
    ``older_than``, ordered by ``sort`` (biggest, oldest, least recently used or most used first)."""
    if types:
        rows = [r for r in rows if r.record_type in types]
    if older_than is not None:
        try:
            limit = (now or datetime.datetime.now(datetime.timezone.utc)) - older_than
        except OverflowError:       # before year 1: nothing was used that long ago
            return []
        rows = [r for r in rows if (when := r.last_used or r.created) is not None and when < limit]
    key = {"size": lambda r: -(r.size or 0), "created": lambda r: r.created or _EPOCH,
           "last-used": lambda r: r.last_used or r.created or _EPOCH, "usage": lambda r: -r.usage_count}[sort]
    return sorted(rows, key=key)
