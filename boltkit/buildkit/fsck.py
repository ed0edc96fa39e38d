"""Checking BuildKit stores: one store (structural + semantic), or a whole root with cross-store checks
and the replay of buildkitd's next start (startup.py), which decides fsck's verdict."""
from __future__ import annotations

import fcntl
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..check import CheckReport, check_file
from ..check.checker import progress_part
from ..check.problems import Problem, Problems, ProblemTable, Severity
from ..errors import BoltkitError, CorruptionError
from ..storage import Database
from ..storage.strings import byte_strings
from ..storage.gcpause import gc_paused
from ..textform import show_bytes
from .cachecheck import check_cache_columns, unsplittable_result_ids
from .cachecolumns import CacheLeaves, columns_from_leaves, load_cache_columns
from .cachedb import TOP_BUCKETS
from .containerd import (KIND_ACTIVE, BackendSnapshot, Snapshot, backend_snapshots, leases, snapshots,
                         worker_snapshotter)
from .graph import sorted_unique
from .history import check_history, load_history
from .release import name_order
from .metadata import check_metadata_store, load_metadata_store, record_keys
from .rehome import rehome_history
from .root import Root, discover
from .startconfig import StartConfig
from .startup import StartPlan, close_plan, simulate_start


# what an empty store is, by its file name, as `buildkit ls` (root.discover) names it
_KIND_BY_NAME = {"cache.db": "cache.db", "metadata_v2.db": "metadata_v2.db", "history.db": "history.db",
                 "history_c8d.db": "history.db", "containerdmeta.db": "containerd"}


def store_kind(db: Database, name: str | None = None, damage: list[CorruptionError] | None = None) -> str:
    """The store's kind by its top-level buckets; a store with none (BuildKit has not written to it yet)
    is what its file ``name`` says, so `buildkit check` and `buildkit ls` agree on it. A root bucket whose pages
    are damaged is judged by the names that can be read; the damage goes to ``damage`` (raised without it)."""
    names = {item.key for item in db.tree.items(db.root(), on_damage=None if damage is None else damage.append)}
    if not names and name in _KIND_BY_NAME:
        return _KIND_BY_NAME[name]
    if names & set(TOP_BUCKETS):
        return "cache.db"
    if {b"_main", b"_index"} & names:
        return "metadata_v2.db"
    if b"_records" in names or b"_version" in names:     # a salvaged history.db may have lost _records
        return "history.db"
    if b"v1" in names:
        return "containerd"
    return "unknown"


def check_store(path: str, *, snapshot: bool = False, progress=None, columns: dict | None = None) -> CheckReport:
    """The structural check of one store and the semantic checks of its kind. ``columns``: a cache.db's
    CacheColumns are left there under its path, for the checks across a root and the start's replay."""
    leaves = CacheLeaves()        # a cache.db is decoded from what the structural pass reads
    report = check_file(path, snapshot=snapshot, progress=progress, on_leaves=leaves)
    if not report.readable:
        return report
    damage: list[CorruptionError] = []     # what the semantic pass read past: said in the report (B051)
    try:
        with Database(path, snapshot=snapshot) as db:
            kind = store_kind(db, os.path.basename(path), damage)
            if kind == "metadata_v2.db":
                report.problems.extend(check_metadata_store(load_metadata_store(db, on_damage=damage.append),
                                                            str(path)))
                return report
            if kind == "history.db":
                report.problems.extend(check_history(load_history(db, on_damage=damage.append), str(path)))
                found, where = rehome_history(db, on_damage=damage.append)
                report.problems.extend(Problem("H3", "build record outside _records: `buildkit repair` puts it back",
                                               file=str(path), path=p, key=k)
                                       for p, k in sorted(where) if k in found)
                return report
            if kind == "containerd":
                report.warnings.append(f"{path}: containerd store: its leases and snapshots are checked against "
                                       "the worker's records when the whole root is checked (`buildkit check ROOT`)")
                return report
            if kind != "cache.db":
                report.warnings.append(f"{path}: {kind} store: only structural checks (semantic checks exist for "
                                       "cache.db, metadata_v2.db, history.db and, across a root, containerd's stores)")
                return report
            cols = columns_from_leaves(leaves)
            cols.tree = (report.meta_index, report.txid)
            cols.sound = not report.severity_counts()[Severity.ERROR.value]   # whole: nothing left out
            if columns is not None:
                columns[str(path)] = cols
            report.problems.extend(check_cache_columns(cols, str(path)))
    except BoltkitError as e:
        report.problems.append(Problem("B001", f"semantic pass stopped: {e}", file=str(path)))
    finally:
        if damage:
            report.problems.append(semantic_damage(damage, str(path)))
    return report


def semantic_damage(damage: list[CorruptionError], file: str) -> Problem:
    """B051: the semantic checks of a store read past damage, so what it hides was not checked and what refers
    into it may look missing. Located at the first damage met; every one is in ``details``."""
    first = damage[0]
    return Problem("B051", f"the semantic checks read past {len(damage)} damaged part(s); what they hide is not "
                           "checked (salvage the store, then check it again)", file=file, pgid=first.pgid,
                   offset=first.offset, path=first.path,
                   details={"damage": [{"page": e.pgid, "offset": e.offset, "message": e.message}
                                       for e in damage]})


@dataclass
class FsckResult:
    root: Root
    reports: dict[str, CheckReport]          # store path -> its report
    cross: Problems                          # X codes: disagreements between stores
    plan: StartPlan | None                   # what buildkitd will do at its next start (startup.py)
    daemon_running: bool

    @property
    def unreadable(self) -> list[str]:
        return [p for p, r in self.reports.items() if not r.readable]

    def problems(self, *, strict: bool = False) -> list[Problem]:
        """The problems that count against the root: errors, and warnings too with ``strict``."""
        counted = {Severity.ERROR, Severity.WARNING} if strict else {Severity.ERROR}
        out = [p for r in self.reports.values() for p in r.problems if p.severity in counted]
        return out + [p for p in self.cross if p.severity in counted]

    def _any_counted(self, strict: bool) -> bool:
        """Whether ``problems`` would have any in a store that could be read (an unreadable store's one problem is
        the 8 bit's fact), counted without building the problems of bulk tables."""
        counted = (Severity.ERROR, Severity.WARNING) if strict else (Severity.ERROR,)
        parts = [r.problems for r in self.reports.values() if r.readable] + [self.cross]
        return any(p.severity_counts()[s.value] for p in parts for s in counted)

    def exit_code(self, *, strict: bool = False) -> int:
        """fsck(8)'s bits, ORed as it ORs the outcomes of several file systems: 8 the daemon will refuse, crash or
        reset a store, or a store cannot be read; 4 it starts but discards data, or error-level problems remain
        in a store that could be read (any problem with ``strict``); both, 12, when both hold (a torn store the
        daemon crashes on); 0 neither. (`--repair` adds bit 1.)"""
        plan = self.plan.exit_class if self.plan is not None else 0
        code = 8 if self.unreadable or plan & 8 else 0
        if plan & 4 or self._any_counted(strict):
            code |= 4
        return code

    @property
    def status(self) -> str:
        code = self.exit_code()
        return "unreadable" if code & 8 else "problems" if code & 4 else "clean"


def daemon_holds_lock(root: Root) -> bool:
    if root.lock is None:
        return False
    try:
        fd = os.open(root.lock, os.O_RDONLY | os.O_NONBLOCK)    # a FIFO must not block us
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _check_one(args, columns: dict | None = None, progress=None) -> CheckReport:
    path, snapshot = args
    return check_store(path, snapshot=snapshot, columns=columns, progress=progress)


def fsck_root(path: str, *, jobs: int = 1, snapshot: bool = False, config: StartConfig | None = None,
              simulate: bool = True, progress=None) -> FsckResult:
    """Every store checked, the checks across stores, and (``simulate``) the replay of the next start.
    ``progress(done, total)``: bytes of the stores checked, then as much again for the replay."""
    with gc_paused():
        return _fsck_root(path, jobs, snapshot, config, simulate, progress)


def _fsck_root(path, jobs, snapshot, config, simulate, progress) -> FsckResult:
    root = discover(path)
    todo = [(str(s.path), snapshot) for s in root.stores]
    sizes = []
    for p, _ in todo:
        try:
            sizes.append(max(os.path.getsize(p), 1))
        except OSError:
            sizes.append(1)
    checked, total = sum(sizes), 2 * sum(sizes) if simulate else sum(sizes)
    columns: dict = {}          # cache.db decoded once, for its check, the checks across stores and the replay
    if jobs > 1 and len(todo) > 1:
        # never more workers than stores (nor than cores): -j 100000 forked a process per job asked for
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo), os.cpu_count() or 1)) as pool:
            reports = dict(zip((t[0] for t in todo), pool.map(_check_one, todo)))
    else:
        reports, done = {}, 0
        for t, size in zip(todo, sizes):
            reports[t[0]] = _check_one(t, columns, progress_part(progress, done, done + size, total))
            done += size
    if progress is not None:
        progress(checked, total)
    result = FsckResult(root, reports, Problems(), None, daemon_holds_lock(root))
    _cross_checks(result, snapshot, columns)
    if simulate:
        cache = str(root.path / "cache.db")
        shared = {"cache.db": columns[cache]} if cache in columns and not snapshot else None
        result.plan = simulate_start(root.path, config=config, columns=shared,
                                     progress=progress_part(progress, checked, total, total))
        close_plan(result.plan)
    if progress is not None:
        progress(total, total)
    return result


def check_root(path: str, *, snapshot: bool = False) -> FsckResult:
    """Every store of a root checked, each report carrying the cross-store problems that name its file
    (what `buildkit check ROOT` lists, store by store), and the replay of the next start for the verdict."""
    result = fsck_root(path, snapshot=snapshot)
    for part in result.cross.groups():
        if isinstance(part, ProblemTable):      # one file per table: the store its rows are about
            if part.size:
                result.reports[str(part[0].file)].problems.extend(part)
        else:
            for p in part:
                result.reports[str(p.file)].problems.append(p)     # a cross-store problem names its store
    result.cross = Problems()
    return result


def _cross_checks(result: FsckResult, snapshot: bool, columns: dict) -> None:
    _lease_checks(result, snapshot)
    _result_checks(result, snapshot, columns)


def _sound(result: FsckResult, path) -> bool:
    """Whether a store's contents can be set against another's: readable and structurally whole. A damaged
    tree would make the records around the damage look missing, and buildkitd crashes on it first anyway.
    Leaked pages (B040, an error to bbolt's check) leave the tree whole."""
    rep = result.reports.get(str(path))
    return rep is not None and rep.readable and not any(
        p.severity is Severity.ERROR for p in rep.problems.select(lambda code: code.startswith("B") and code != "B040"))


def _lease_checks(result: FsckResult, snapshot: bool) -> None:
    """M15/M16: each worker's records and the leases of its containerdmeta.db `buildkit` namespace;
    M9/M17 (`_snapshot_checks`): the same records and that namespace's snapshots."""
    for w in result.root.workers:
        md, cm = w.dir / "metadata_v2.db", w.dir / "containerdmeta.db"
        if not cm.is_file() or not _sound(result, md) or not _sound(result, cm):
            continue
        damage: list[CorruptionError] = []
        with Database(str(md), snapshot=snapshot) as db:
            store = load_metadata_store(db, on_damage=damage.append)
        with Database(str(cm), snapshot=snapshot) as db:
            held = leases(db, on_damage=damage.append)
        if damage:
            continue    # (both checked whole) a part read past would look missing: the stores' B051 says it
        f = str(cm)
        for lid, lease in sorted(held.items()):
            if not lease.temporary and lease.record not in store.records:
                result.cross.append(Problem("M16", f"lease {show_bytes(lid)} belongs to no record of {w.dir.name}/"
                                                   f"metadata_v2.db and holds {lease.resources} resource(s): never "
                                                   "collected", file=f, path=(b"v1", b"buildkit", b"leases"), key=lid))
        for rid, rec in sorted(store.records.items()):
            if rid not in held and not rec.values.get("cache.equalMutable") and not rec.values.get("cache.deleted"):
                result.cross.append(Problem("M15", "record has no lease: containerd's GC may delete its data",
                                            file=str(md), path=(b"_main",), key=rid))
        _snapshot_checks(result, w, store, snapshot)


def _snapshot_id(rec) -> bytes:
    """getSnapshotID: `cache.snapshot`, or the record id for old records without it (§3.4)."""
    sid = rec.ref("cache.snapshot")
    return sid if sid is not None else rec.id


def _is_mutable(rec) -> bool:
    """Whether buildkitd's getRecord treats the record as mutable and so Stats its snapshot at start (§3.4, §3.7):
    `mutable = !snapshot.committed`, except that merges and diffs are forced immutable (the v0.10.{0,1} #2740
    kludge; a `cache.parent` makes it a layer whatever else is set), a record with `cache.equalMutable` is loaded
    through its mutable target instead, and a record marked `cache.deleted` is removed before the check (M14)."""
    v = rec.values
    if v.get("snapshot.committed") is True or v.get("cache.equalMutable") or v.get("cache.deleted") is True:
        return False
    if not v.get("cache.parent") and (v.get("cache.mergeParents") or v.get("cache.lowerDiffParent")
                                      or v.get("cache.upperDiffParent")):
        return False
    return True


def _snapshot_checks(result: FsckResult, w, store, snapshot: bool) -> None:
    """M9/M17: a worker's records and the snapshots of its containerdmeta.db `buildkit` namespace, under the
    snapshotter the worker directory is named after; M9 also looks for the backend row in the snapshotter's
    snapshots/metadata.db when that file is there and readable (containerd's Stat needs both, §5.2, §5.3)."""
    name = worker_snapshotter(w.dir.name)
    if name is None:
        return
    cm, md = w.dir / "containerdmeta.db", w.dir / "metadata_v2.db"
    damage: list = []
    with Database(str(cm), snapshot=snapshot) as db:
        snaps: dict[bytes, Snapshot] = snapshots(db, name, on_damage=damage.append)
    if damage:
        return      # a damaged subtree would look like missing snapshots; the store's own report names the damage
    backend: dict[bytes, BackendSnapshot] | None = None
    be = w.dir / "snapshots" / "metadata.db"
    if result.reports.get(str(be)) is not None and result.reports[str(be)].readable:
        damage = []
        with Database(str(be), snapshot=snapshot) as db:
            backend = backend_snapshots(db, on_damage=damage.append)
        if damage:
            backend = None
    where = f"containerdmeta.db v1/buildkit/snapshots/{name}"
    bucket = (b"v1", b"buildkit", b"snapshots", name.encode())
    recs = store.records
    for rid, rec in sorted(recs.items()):
        if _is_mutable(rec):
            # getRecord Stats the record id (New made it the snapshot key, so it equals `cache.snapshot`)
            s = snaps.get(rid)
            row = None if s is None or backend is None else backend.get(s.name or b"")
            shown = rec.name
            if s is None:
                result.cross.append(Problem(
                    "M9", f"mutable record's snapshot {shown} is not in {where}: buildkitd removes the record (and "
                          "its leases) at its next start", file=str(md), path=(b"_main",), key=rid,
                    details={"snapshot": shown, "snapshotter": name}))
            elif backend is not None and row is None:
                backend_name = show_bytes(s.name) if s.name is not None else None
                result.cross.append(Problem(
                    "M9", f"mutable record's snapshot {shown} names backend row {backend_name or '(none)'}, which "
                          f"snapshots/metadata.db does not have: Stat fails, so buildkitd removes the record at its "
                          "next start", file=str(md), path=(b"_main",), key=rid,
                    details={"snapshot": shown, "snapshotter": name, "backend": backend_name}))
            elif row is not None and row.kind is not None and row.kind != KIND_ACTIVE:
                result.cross.append(Problem(
                    "M9", f"mutable record's snapshot {shown} is {row.kind_name}, not active: buildkitd keeps the "
                          "record but cannot mount it as a writable layer", file=str(md), path=(b"_main",),
                    key=rid, details={"snapshot": shown, "snapshotter": name, "kind": row.kind_name}))
        parent = rec.ref("cache.parent")
        if parent is None or parent not in recs or rec.values.get("cache.deleted") is True:
            continue        # not a layer, or its parent is missing (M4), or it goes at the next start (M14)
        sid = _snapshot_id(rec)
        s = snaps.get(sid)
        if s is None:
            continue        # not created yet (equalMutable, blob-only) or missing (M9, M15)
        want = _snapshot_id(recs[parent])
        if s.parent != want:
            t = {"record": rec.name, "parent_record": show_bytes(parent), "snapshot_parent": show_bytes(s.parent),
                 "expected": show_bytes(want)}
            result.cross.append(Problem(
                "M17", f"snapshot {show_bytes(sid)} of layer record {t['record']} has parent "
                       f"{t['snapshot_parent'] or '(none)'}, but its parent record {t['parent_record']} has snapshot "
                       f"{t['expected']}", file=str(cm), path=bucket + (sid,), key=b"parent", details=t))


def _result_checks(result: FsckResult, snapshot: bool, columns: dict) -> None:
    """Results in cache.db whose worker or record is gone: buildkitd releases them at its next start (D6)."""
    root = result.root
    cache = next((s for s in root.stores if s.kind == "cache.db"), None)
    if cache is None or not result.reports[str(cache.path)].readable:
        return
    workers = {w.worker_id: w for w in root.workers if w.worker_id}
    records: dict[str, set[bytes] | None] = {}      # worker id -> its record ids, as stored
    for wid, w in workers.items():
        md = w.dir / "metadata_v2.db"
        if not _sound(result, md):
            records[wid] = None
            continue
        damage: list[CorruptionError] = []
        try:
            with Database(str(md), snapshot=snapshot) as db:
                records[wid] = record_keys(db, on_damage=damage.append)
        except BoltkitError:
            records[wid] = None      # unreadable: reported on its own line, no guesses here
        if damage:
            records[wid] = None      # records behind the damage would look gone: no X2 from a partial read
    cols = columns.get(str(cache.path))
    if cols is None or not cols.sound:
        # a damaged tree, read as the check's own pass leaves it out: the damage met is the very damage that
        # store's structural problems list, and a result behind it is not judged (X1/X2 are about results there)
        met: list[CorruptionError] = []
        with Database(str(cache.path), snapshot=snapshot) as db:
            cols = load_cache_columns(db, on_damage=met.append)
    f = str(cache.path)
    names = cols.names
    rids = sorted_unique(cols.result_rid)
    kind = np.zeros(len(names), np.int8)     # per result id code: 1 X1, 2 X2, 0 neither
    ok = rids[~unsplittable_result_ids(names, rids)[rids]]    # the others are C16, the cache.db check's
    if not workers:
        kind[ok] = 1
    else:
        for r, raw in zip(ok.tolist(), byte_strings(names.data, names.off[ok], names.length[ok])):
            parts = raw.split(b"::")
            if len(parts) != 2:     # the names changed under a live read since they were classified: the
                continue            # unsettled run is retried, and judges nothing here meanwhile
            wid_b, ref = parts       # the refID as the record's bytes
            wid = wid_b.decode("utf-8", "replace")     # (a worker id is read from a text file)
            if wid not in workers:
                kind[r] = 1
            elif ref and (held := records.get(wid)) is not None and ref not in held:
                kind[r] = 2
    flagged = np.flatnonzero(kind)
    if not flagged.size:
        return
    kids, rids, str_of = _result_rows(cols, flagged)
    text = _Text(str_of)

    def make(code, kid, rid):
        wid, _, ref = text[rid].partition("::")
        if code == "X1":
            return Problem("X1", f"result of worker {wid}, which this root does not have: released at next start",
                           file=f, path=(b"_result", names.bytes(kid)), key=names.bytes(rid))
        return Problem("X2", f"record {ref} is missing from {workers[wid].dir.name}/metadata_v2.db: released at "
                             "next start", file=f, path=(b"_result", names.bytes(kid)), key=names.bytes(rid))

    codes = kind[rids]
    bounds = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1], True]).tolist()
    for a, b in zip(bounds, bounds[1:]):        # runs of one code, in the order of (key id, result id)
        code = "X1" if codes[a] == 1 else "X2"
        result.cross.extend(ProblemTable(code, b - a, lambda i, a=a, code=code: make(code, int(kids[a + i]),
                                                                                      int(rids[a + i]))))


class _Text(dict):
    """Name code -> its text, decoded when first asked for."""

    def __init__(self, str_of):
        super().__init__()
        self.str_of = str_of

    def __missing__(self, code):
        self[code] = got = self.str_of(code)
        return got


def _result_rows(cols, flagged: np.ndarray) -> tuple[np.ndarray, np.ndarray, object]:
    """The (key, result) code pairs of the ``flagged`` results, each pair of texts once, in text order (as
    the keys are listed), and code -> text. ASCII names are ordered by their bytes on arrays; others
    (whose decoded text may differ from their bytes) through their text."""
    names = cols.names
    hit = np.zeros(len(names), bool)
    hit[flagged] = True
    at = np.flatnonzero(hit[cols.result_rid])
    kid, rid = cols.result_kid[at], cols.result_rid[at]
    rank, ascii = name_order(cols)
    if ascii:
        o = np.lexsort((rank[rid], rank[kid]))
        kid, rid = kid[o], rid[o]
        keep = np.r_[True, (kid[1:] != kid[:-1]) | (rid[1:] != rid[:-1])]
        return kid[keep], rid[keep], names.str
    text = {c: names.str(c) for c in set(kid.tolist()) | set(rid.tolist())}
    pairs: dict = {}        # (key id, result id) as text, each once -> their codes
    for k, r in zip(kid.tolist(), rid.tolist()):
        pairs.setdefault((text[k], text[r]), (k, r))
    rows = np.array([pairs[t] for t in sorted(pairs)], np.int64).reshape(-1, 2)
    return rows[:, 0], rows[:, 1], text.__getitem__
