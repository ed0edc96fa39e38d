"""The structural checker: one pass over the whole file that reports every fault and never stops.

It does what bbolt's `tx.Check` does (freelist duplicates, reachable-and-free, multiple
references, invalid types, key order against branch separators, unreachable-unfreed pages) and
what it misses: meta bounds, freelist ids 0/1 and beyond the high-water mark, overflow past the
end, empty branches, element bounds, bucket value sizes, and above all the inside of inline
buckets, which bbolt never looks at and which hold ~99 % of BuildKit's cache.db.

The walk is iterative with a per-page reference counter, so cycles are reported, not followed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import CorruptionError, OpenError
from ..storage.live import settled_read
from ..storage import Database, Pager, decode_meta, read_freelist
from ..storage.meta import ChoiceWarning, Meta
from .problems import Problem, Problems, Severity
from .scan import TreeScan

Progress = Callable[[int, int], None]


def progress_part(progress: Progress | None, lo: int, hi: int, total: int) -> Progress | None:
    """A command made of several passes reports one bar: this pass's ``(done, of)`` drawn as the span
    ``lo``..``hi`` of ``total``."""
    if progress is None:
        return None
    return lambda done, of: progress(lo + (hi - lo) * min(done, of) // max(of, 1), total)
LEAK_RUN = 1024     # consecutive leaked pages from which B040 names the run instead of each page


@dataclass
class CheckReport:
    file: str
    problems: Problems = field(default_factory=Problems)
    readable: bool = True
    meta_index: int | None = None
    txid: int | None = None
    hwm: int = 0
    page_size: int = 0
    pages_reachable: int = 0
    buckets: int = 0
    inline_buckets: int = 0
    keys: int = 0
    pairs: int = 0          # plain key/value pairs of the tree (sub-bucket entries not counted)
    revert: dict | None = None
    warnings: list[str] = field(default_factory=list)
    open_error: str | None = None       # why it could not be opened: OpenError.kind (permission, missing, ...)

    @property
    def clean(self) -> bool:
        counts = self.problems.severity_counts()
        return self.readable and not counts[Severity.ERROR.value] and not counts[Severity.WARNING.value]

    def counts(self) -> dict[str, int]:
        return self.problems.counts()

    def severity_counts(self) -> dict[str, int]:
        return self.problems.severity_counts()


def check_file(path: str, *, meta: int | None = None, quick: bool = False, revert: bool = True,
               snapshot: bool = False, progress: Progress | None = None, on_leaves=None) -> CheckReport:
    """Check one file. Never raises for anything found in the file; OpenError only for I/O on the path.
    ``on_leaves``: see TreeScan; it sees the tree of the meta that is checked. A file a writer holds is checked
    again while a commit lands during the check (`storage.live`); Unsettled when that never stops."""
    return settled_read(str(path), lambda: _check_once(path, meta, quick, revert, snapshot, progress, on_leaves))


def _check_once(path, meta, quick, revert, snapshot, progress, on_leaves) -> tuple[CheckReport, bool]:
    report = CheckReport(file=str(path))
    if hasattr(on_leaves, "reset"):
        on_leaves.reset()
    try:
        db = Database(path, meta=meta, snapshot=snapshot)
    except OpenError as e:
        report.readable = False
        report.open_error = e.kind
        report.problems.append(Problem("B001", str(e), file=str(path), details={"open_error": e.kind}))
        return report, True
    settled = True
    try:
        report.warnings = list(db.warnings)
        _check_open(db, report, quick, progress, on_leaves)
        if db.meta.rebuilt and db.meta.root == 0:
            # no usable meta and no page that can be a root bucket: no tree can be read, only orphan pages
            # (salvage still takes those into lost+found)
            report.readable = False
        if revert and meta is None and not report.clean and not db.source.locked_by_writer:
            # the other meta's tree is the one a live writer reuses first: judged only on a file at rest
            report.revert = _revert_candidate(db, quick)
            if report.revert is not None:
                r = report.revert
                verdict = ("would give a clean file" if r["clean"]
                           else f"would still have {r['errors']} error(s)")
                report.problems.append(Problem(
                    "B050", f"reading through meta {r['meta']} (txid {r['txid']}) {verdict}"
                    + (" (bbolt surgery revert-meta-page)" if r["clean"] else ""), file=report.file, details=r))
        settled = db.settled()
    finally:
        db.close()
    return report, settled


def check_database(db: Database, progress: Progress | None = None) -> CheckReport:
    """The structural check of a file already open (``db``, under the meta it was opened with), without the revert
    candidate: for a command that reads the file anyway and wants to know first whether it is sound (salvage)."""
    report = CheckReport(file=db.path)
    report.warnings = list(db.warnings)
    _check_open(db, report, False, progress)
    if db.meta.rebuilt and db.meta.root == 0:
        report.readable = False
    return report


def _check_open(db: Database, report: CheckReport, quick: bool, progress: Progress | None, on_leaves=None) -> None:
    report.meta_index = db.meta.index
    report.txid = db.meta.txid
    report.hwm = db.hwm
    report.page_size = db.page_size
    _check_metas(db, report)
    walker = _Walker(db, db.meta, report, quick, progress, on_leaves)
    walker.run()


def _check_metas(db: Database, report: CheckReport) -> None:
    f = report.file
    for i, m in enumerate(db.metas):
        if m is None:
            report.problems.append(Problem("B001", f"meta {i} is missing (file too short)", file=f, pgid=i))
            continue
        for e in m.errors:
            report.problems.append(Problem("B001", f"meta {i}: {e}", file=f, pgid=i, offset=m.offset))
        for e in m.soft + m.faults:
            if e is m.root_page_fault and m is not db.meta and db.source.locked_by_writer:
                # the older meta's tree is what a live writer reuses first (freed by the current transaction,
                # released when the next begins): its root page holding something else is no damage
                continue
            details = {"span": [m.root, m.root]} if e is m.root_page_fault else {}
            if e is m.root_page_fault and m is not db.meta and db.meta.valid:
                # the same at rest after a writer stopped inside a transaction: it wrote into the pages the
                # current transaction freed. bbolt never reads that meta while the current one is valid; what is
                # lost is only the fallback, so it is said, not counted
                report.problems.append(Problem("B002", f"meta {i} (the fallback): {e}; the pages of its tree have "
                                               "been reused since", file=f, pgid=i, offset=m.offset,
                                               details=details, severity=Severity.INFO))
                continue
            report.problems.append(Problem("B002", f"meta {i}: {e}", file=f, pgid=i, offset=m.offset,
                                           details=details))
    m0, m1 = db.metas
    cur = db.meta
    for w in db.choice.warnings:
        if w.kind == ChoiceWarning.PAGE_SIZE:
            report.problems.append(Problem("B002", w, file=f))
    if db.choice.rung in ("checksum", "rebuilt"):
        report.problems.append(Problem("B005", f"reading through the {db.choice.reason}", file=f,
                                       pgid=cur.index))
    if not cur.rebuilt:
        for note in cur.notes:
            report.problems.append(Problem("B006", f"meta {cur.index}: {note}", file=f, pgid=cur.index))
    if db.choice.older_than_bbolt:
        new = db.choice.bbolt
        assert new is not None              # older_than_bbolt: there is a meta bbolt reads
        report.problems.append(Problem(
            "B004", f"meta {new.index} has the newer txid {new.txid} (bbolt reads it) but is unusable; reading "
            f"{cur.label} (txid {cur.txid}) loses the last transaction", file=f, pgid=new.index))
    if m0 is not None and m1 is not None and m0.usable and m1.usable:
        if m0.page_size != m1.page_size:
            report.problems.append(Problem("B003", f"page sizes differ: meta 0 {m0.page_size}, meta 1 {m1.page_size}",
                                           file=f))
        elif abs(m0.txid - m1.txid) != 1:
            p = Problem("B003", f"txids {m0.txid} and {m1.txid} are not consecutive", file=f)
            if m0.txid == m1.txid:
                p.severity = Severity.INFO
            report.problems.append(p)


class _Walker:
    """One whole-file pass under one meta."""

    def __init__(self, db: Database, meta: Meta, report: CheckReport, quick: bool, progress: Progress | None,
                 on_leaves=None):
        self.db = db
        self.on_leaves = on_leaves
        self.meta = meta
        self.report = report
        self.quick = quick
        self.progress = progress
        self.hwm = meta.pgid
        self.pager = Pager(db.data, db.file_size, db.page_size, self.hwm)
        # per-page maps cover the pages that exist: a meta may claim a high-water mark far past the end of
        # the file (reported as B002), and must not make us allocate for pages that are not there
        self.n = self.pager.limit_pages
        self.refs = np.zeros(self.n, dtype=np.uint8)
        self.freed = np.zeros(self.n, dtype=bool)

    def problem(self, code: str, message: str, **kw) -> None:
        self.report.problems.append(Problem(code, message, file=self.report.file, **kw))

    def run(self) -> None:
        self.refs[:min(2, self.n)] = 1
        self._check_freelist()
        self._walk()
        self._leaked()

    # -- freelist ---------------------------------------------------------------------------------

    def _check_freelist(self) -> None:
        m = self.meta
        if not m.has_freelist:
            return
        try:
            fl = read_freelist(self.pager, m.freelist)
        except CorruptionError as e:
            self.problem("B010", e.message, pgid=e.pgid, offset=e.offset)
            if m.freelist < self.n:
                self.refs[m.freelist] = 1
            return
        assert fl.pgid is not None          # read from a freelist page, so it has one
        own = np.arange(fl.pgid, min(fl.pgid + fl.overflow + 1, self.n))
        self.refs[own] = 1
        ids = fl.ids
        if ids.size == 0:
            return
        if np.any(ids[1:] < ids[:-1]):
            self.problem("B015", "freelist ids are not in ascending order", pgid=fl.pgid)
        uniq, counts = np.unique(ids, return_counts=True)
        for p in uniq[counts > 1][:100].tolist():
            self.problem("B011", "already freed (listed twice in the freelist)", pgid=p)
        for p in uniq[uniq < 2].tolist():
            self.problem("B012", f"freelist lists meta page {p}", pgid=fl.pgid, details={"id": p})
        beyond = uniq[uniq >= self.hwm]
        for p in beyond[:100].tolist():
            self.problem("B013", f"freelist lists page {p}, at or beyond the high-water mark {self.hwm}",
                         pgid=fl.pgid, details={"id": p})
        for p in np.intersect1d(uniq, own.astype(np.uint64)).tolist():
            self.problem("B014", "freelist lists its own page", pgid=p)
        ok = uniq[(uniq >= 2) & (uniq < self.n)].astype(np.int64)
        self.freed[ok] = True

    # -- the tree ---------------------------------------------------------------------------------

    def _walk(self) -> None:
        scan = TreeScan(self.db, self.meta, self.report.problems.append, quick=self.quick, refs=self.refs,
                        freed=self.freed, progress=self.progress, on_leaves=self.on_leaves)
        scan.run()
        self.report.buckets += scan.buckets
        self.report.inline_buckets += scan.inline_buckets
        self.report.keys += scan.keys
        self.report.pairs += scan.pairs
        self.report.pages_reachable = int(np.count_nonzero(self.refs))

    # -- leaks ----------------------------------------------------------------------------------

    def _leaked(self) -> None:
        if not self.meta.has_freelist:
            return  # bbolt rebuilds the free set from reachability: nothing can leak
        leaked = np.flatnonzero((self.refs[2:] == 0) & ~self.freed[2:]) + 2
        if not leaked.size:
            return
        # one problem per page, as bbolt prints them; a long run (a sparse or preallocated tail below the
        # high-water mark: millions of pages) is one problem with its span, so memory follows the findings
        cuts = np.flatnonzero(np.diff(leaked) != 1) + 1
        for run in np.split(leaked, cuts):
            if run.size < LEAK_RUN:
                for p in run.tolist():
                    self.problem("B040", "unreachable unfreed", pgid=p)
            else:
                a, b = int(run[0]), int(run[-1])
                self.problem("B040", f"unreachable unfreed: pages {a}-{b} ({run.size} pages)", pgid=a,
                             details={"span": [a, b]})


@dataclass
class TreeCounts:
    buckets: int
    pairs: int
    bytes: int
    damage: list[Problem]


def count_tree(db: Database, progress: Progress | None = None) -> TreeCounts:
    """A full traversal that only counts (buckets, pairs, key+value bytes): the bulk walk without key checks."""
    problems: list[Problem] = []
    n = db.pager.limit_pages
    scan = TreeScan(db, db.meta, problems.append, quick=True, refs=np.zeros(n, np.uint8), freed=np.zeros(n, bool),
                    progress=progress)
    scan.run()
    return TreeCounts(scan.buckets, scan.pairs, scan.pair_bytes, problems)


def _revert_candidate(db: Database, quick: bool) -> dict | None:
    """Check the tree of the other meta: would `revert-meta-page` give a clean file?"""
    other = db.other_meta
    if other is None or not other.usable:
        return None
    sub = CheckReport(file=db.path)
    _Walker(db, other, sub, quick, None).run()
    errors = sum(p.severity == Severity.ERROR for p in sub.problems)
    warnings = sum(p.severity == Severity.WARNING for p in sub.problems)
    return {"meta": other.index, "txid": other.txid, "clean": errors == 0 and warnings == 0,
            "errors": errors, "warnings": warnings, "codes": sub.counts()}


__all__ = ["check_file", "check_database", "CheckReport", "decode_meta"]
