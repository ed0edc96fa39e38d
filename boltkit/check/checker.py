"""The structural checker: one pass over the whole file that reports every fault and never stops.

It does what bbolt's `tx.Check` does (freelist duplicates, reachable-and-free, multiple
references, invalid types, key order against branch separators, unreachable-unfreed pages) and
what it misses: meta bounds, freelist ids 0/1 and beyond the high-water mark, overflow past the
end, empty branches, element bounds, bucket value sizes, and above all the inside of inline
buckets, which bbolt never looks at and which hold ~99 % of BuildKit's cache.db.

The walk is iterative with a per-page reference counter, so cycles are reported, not followed.
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import CorruptionError, OpenError
from ..schemas import (BUCKET_HEADER, BUCKET_HEADER_SIZE, BUCKET_LEAF_FLAG, ELEMENT_SIZE, PAGE_HEADER,
                       PAGE_HEADER_SIZE, PageFlag)
from ..storage import Database, Node, Pager, decode_meta, read_freelist
from ..storage.meta import Meta
from .problems import Problem, Severity

Progress = Callable[[int, int], None]


@dataclass
class CheckReport:
    file: str
    problems: list[Problem] = field(default_factory=list)
    readable: bool = True
    meta_index: int | None = None
    txid: int | None = None
    hwm: int = 0
    page_size: int = 0
    pages_reachable: int = 0
    buckets: int = 0
    inline_buckets: int = 0
    keys: int = 0
    revert: dict | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.readable and not any(p.severity != Severity.INFO for p in self.problems)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.problems:
            out[p.code] = out.get(p.code, 0) + 1
        return out

    def severity_counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in Severity}
        for p in self.problems:
            out[p.severity.value] += 1
        return out


def check_file(path: str, *, meta: int | None = None, quick: bool = False, revert: bool = True,
               snapshot: bool = False, progress: Progress | None = None) -> CheckReport:
    """Check one file. Never raises for anything found in the file; OpenError only for I/O on the path."""
    report = CheckReport(file=str(path))
    try:
        db = Database(path, meta=meta, snapshot=snapshot)
    except OpenError as e:
        report.readable = False
        _unreadable_problems(report, str(path), str(e))
        return report
    try:
        report.warnings = list(db.warnings)
        _check_open(db, report, quick, progress)
        if revert and meta is None and not report.clean:
            report.revert = _revert_candidate(db, quick)
            if report.revert is not None:
                r = report.revert
                verdict = ("would give a clean file" if r["clean"]
                           else f"would still have {r['errors']} error(s)")
                report.problems.append(Problem(
                    "B050", f"reading through meta {r['meta']} (txid {r['txid']}) {verdict}"
                    + (" (bbolt surgery revert-meta-page)" if r["clean"] else ""), file=report.file, details=r))
    finally:
        db.close()
    return report


def _unreadable_problems(report: CheckReport, path: str, message: str) -> None:
    report.problems.append(Problem("B001", message, file=path))


def _check_open(db: Database, report: CheckReport, quick: bool, progress: Progress | None) -> None:
    report.meta_index = db.meta.index
    report.txid = db.meta.txid
    report.hwm = db.hwm
    report.page_size = db.page_size
    _check_metas(db, report)
    walker = _Walker(db, db.meta, report, quick, progress)
    walker.run()


def _check_metas(db: Database, report: CheckReport) -> None:
    f = report.file
    for i, m in enumerate(db.metas):
        if m is None:
            report.problems.append(Problem("B001", f"meta {i} is missing (file too short)", file=f, pgid=i))
            continue
        for e in m.errors:
            report.problems.append(Problem("B001", f"meta {i}: {e}", file=f, pgid=i, offset=m.offset))
        for e in m.faults:
            details = {"span": [m.root, m.root]} if m.bad_root and "root page" in e else {}
            report.problems.append(Problem("B002", f"meta {i}: {e}", file=f, pgid=i, offset=m.offset,
                                           details=details))
    m0, m1 = db.metas
    cur = db.meta
    other = db.metas[1 - cur.index]
    if other is not None and other.valid and other.txid > cur.txid and db.choice.reason.find("chosen by") < 0:
        report.problems.append(Problem(
            "B004", f"meta {other.index} has the newer txid {other.txid} but is unusable; reading meta "
            f"{cur.index} (txid {cur.txid}) loses the last transaction", file=f, pgid=other.index))
    if m0 is not None and m1 is not None and m0.usable and m1.usable:
        if m0.page_size != m1.page_size:
            report.problems.append(Problem("B003", f"page sizes differ: meta 0 {m0.page_size}, meta 1 {m1.page_size}",
                                           file=f))
        elif abs(m0.txid - m1.txid) != 1:
            report.problems.append(Problem("B003", f"txids {m0.txid} and {m1.txid} are not consecutive", file=f,
                                           severity=Severity.INFO if m0.txid == m1.txid else None))


class _Walker:
    """One whole-file pass under one meta."""

    MAX_PER_PAGE = 5   # element-level problems reported per page before summarising

    def __init__(self, db: Database, meta: Meta, report: CheckReport, quick: bool, progress: Progress | None):
        self.db = db
        self.meta = meta
        self.report = report
        self.quick = quick
        self.progress = progress
        self.data = db.data
        self.ps = db.page_size
        self.hwm = meta.pgid
        self.limit = min(self.hwm, db.file_size // self.ps)
        self.pager = Pager(db.data, db.file_size, self.ps, self.hwm)
        self.refs = np.zeros(self.hwm, dtype=np.uint8)
        self.hidden: Problem | None = None   # set while walking a subtree bbolt cannot find by key
        self.freed = np.zeros(self.hwm, dtype=bool)

    def problem(self, code: str, message: str, **kw) -> None:
        self.report.problems.append(Problem(code, message, file=self.report.file, **kw))

    def run(self) -> None:
        self.refs[:min(2, self.hwm)] = 1
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
            if m.freelist < self.hwm:
                self.refs[m.freelist] = 1
            return
        own = np.arange(fl.pgid, min(fl.pgid + fl.overflow + 1, self.hwm))
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
        ok = uniq[(uniq >= 2) & (uniq < self.hwm)].astype(np.int64)
        self.freed[ok] = True

    # -- the tree ---------------------------------------------------------------------------------

    def _walk(self) -> None:
        # frame: (pgid, lower bound, upper bound, bucket path, ancestor pages, hidden-subtree problem)
        stack: list[tuple] = [(self.meta.root, None, None, (), (), None)]
        done = 0
        while stack:
            pgid, lo, hi, path, anc, hidden = stack.pop()
            self.hidden = hidden
            self._visit(pgid, lo, hi, path, anc, stack)
            done += 1
            if self.progress is not None and done % 1024 == 0:
                self.progress(done, self.hwm)
        self.report.pages_reachable = int(np.count_nonzero(self.refs))

    def _visit(self, pgid: int, lo, hi, path, anc, stack) -> None:
        stack_text = list(anc) + [pgid]
        if pgid < 2 or pgid >= self.hwm:
            self.problem("B020", f"out of bounds: high-water mark is {self.hwm} (stack: {stack_text})",
                         pgid=pgid, path=path, details={"stack": stack_text})
            return
        if pgid >= self.limit:
            self.problem("B023", f"beyond the end of the file ({self.db.file_size} bytes)",
                         pgid=pgid, path=path, details={"stack": stack_text})
            return
        if self.refs[pgid]:
            if pgid in anc:
                self.problem("B025", f"cycle: the page is its own ancestor (stack: {stack_text})",
                             pgid=pgid, path=path, details={"stack": stack_text})
            else:
                self.problem("B024", f"multiple references (stack: {stack_text})",
                             pgid=pgid, path=path, details={"stack": stack_text})
            return
        off = pgid * self.ps
        hid, flags, count, overflow = PAGE_HEADER.unpack_from(self.data, off)
        span_last = pgid + overflow
        if span_last >= self.limit:
            where = "high-water mark" if span_last >= self.hwm else "end of the file"
            self.problem("B023", f"overflow {overflow} runs past the {where}", pgid=pgid,
                         offset=off + 12, path=path)
            span_last = self.limit - 1
        span = self.refs[pgid:span_last + 1]
        if span_last > pgid:
            again = np.flatnonzero(span[1:])
            for i in again.tolist():
                self.problem("B024", f"multiple references (overflow of page {pgid})",
                             pgid=pgid + 1 + i, path=path)
        span[:] = 1
        if self.hidden is not None:
            self.hidden.details["pages"].extend(range(pgid, span_last + 1))
        if self.freed[pgid]:
            self.problem("B016", "reachable freed", pgid=pgid, path=path)
        span_ids = [pgid, span_last]
        if hid != pgid:
            self.problem("B021", f"header says id {hid} (stack: {stack_text})", pgid=pgid, offset=off,
                         path=path, details={"stack": stack_text, "span": span_ids})
            return
        if flags not in (PageFlag.BRANCH, PageFlag.LEAF):
            self.problem("B022", f"invalid type: {PageFlag.name_of(flags)} (stack: {stack_text})",
                         pgid=pgid, offset=off + 8, path=path, details={"stack": stack_text, "span": span_ids})
            return
        node = Node(pgid, flags, count, overflow, off, off + (span_last - pgid + 1) * self.ps, pgid)
        if off + PAGE_HEADER_SIZE + count * ELEMENT_SIZE > node.end:
            self.problem("B027", f"{count} elements do not fit in {span_last - pgid + 1} page(s)",
                         pgid=pgid, offset=off + 10, path=path)
            return
        if flags == PageFlag.BRANCH:
            self._branch(node, lo, hi, path, anc, stack)
        else:
            self._leaf(node, lo, hi, path, anc, stack)

    def _branch(self, node: Node, lo, hi, path, anc, stack) -> None:
        if node.count == 0:
            self.problem("B026", "branch page with no elements", pgid=node.pgid,
                         offset=node.base + 10, path=path)
            return
        try:
            elems = self.pager.branch_elements(node)
        except CorruptionError as e:
            self.problem("B030", e.message, pgid=node.pgid, offset=e.offset, path=path)
            return
        keys = [self.data[s:e] for s, e, _ in elems]
        if not self.quick:
            self._keys(node, keys, lo, hi, path)
        anc2 = anc + (node.pgid,)
        n = len(elems)
        for i in range(n - 1, -1, -1):
            stack.append((elems[i][2], keys[i], keys[i + 1] if i + 1 < n else hi, path, anc2, self.hidden))

    def _leaf(self, node: Node, lo, hi, path, anc, stack) -> list | None:
        try:
            elems = self.pager.leaf_elements(node)
        except CorruptionError as e:
            self.problem("B030", e.message, pgid=node.owner, offset=e.offset, path=path)
            return None
        self.report.keys += len(elems)
        disordered = False
        if not self.quick:
            keys = [self.data[s:e] for _, s, e, _ in elems]
            disordered = self._keys(node, keys, lo, hi, path)
        anc2 = anc + (node.pgid or node.owner,)
        children = []
        for i, (flags, ks, ke, ve) in enumerate(elems):
            if flags & ~BUCKET_LEAF_FLAG:
                self.problem("B038", f"element {i} flags 0x{flags:x}", pgid=node.owner, path=path,
                             key=self.data[ks:ke])
            if not flags & BUCKET_LEAF_FLAG:
                if not path:
                    self.problem("B037", f"element {i} of the root bucket is a plain key", pgid=node.owner,
                                 path=path, key=self.data[ks:ke])
                continue
            key = self.data[ks:ke]
            child_path = path + (key,)
            vlen = ve - ke
            if node.inline:
                self.problem("B039", "inline bucket holds a sub-bucket entry (not followed)", pgid=node.owner,
                             path=path, key=key)
                continue
            if vlen < BUCKET_HEADER_SIZE:
                self.problem("B035", f"bucket value of {vlen} bytes is shorter than a bucket header",
                             pgid=node.owner, offset=ke, path=path, key=key)
                continue
            root, _seq = BUCKET_HEADER.unpack_from(self.data, ke)
            self.report.buckets += 1
            if root == 0:
                self.report.inline_buckets += 1
                self._inline(ke, ve, node.owner, child_path, anc2, stack)
            else:
                hidden = self.hidden
                if disordered and bisect_left(keys, key) != i:
                    self.problem("B031", f"sub-bucket in element {i} cannot be found by a key lookup (keys out of "
                                 f"order): bbolt does not see its pages", pgid=root, path=path, key=key,
                                 details={"leaf": node.owner, "pages": []})
                    hidden = self.report.problems[-1]
                if vlen != BUCKET_HEADER_SIZE:
                    self.problem("B035", f"paged bucket value is {vlen} bytes, expected {BUCKET_HEADER_SIZE}",
                                 pgid=node.owner, offset=ke, path=path, key=key)
                children.append((root, None, None, child_path, anc2, hidden))
        stack.extend(reversed(children))
        return elems

    def _inline(self, vs: int, ve: int, owner: int, path, anc, stack) -> None:
        start = vs + BUCKET_HEADER_SIZE
        vlen = ve - vs
        if vlen < BUCKET_HEADER_SIZE + PAGE_HEADER_SIZE:
            self.problem("B035", f"inline bucket value of {vlen} bytes has no room for its page header",
                         pgid=owner, offset=vs, path=path)
            return
        hid, flags, count, overflow = PAGE_HEADER.unpack_from(self.data, start)
        if flags != PageFlag.LEAF:
            self.problem("B036", f"inline bucket page has type {PageFlag.name_of(flags)}, expected leaf",
                         pgid=owner, offset=start + 8, path=path)
            return
        if hid != 0 or overflow != 0:
            self.problem("B036", f"inline bucket page header id {hid}, overflow {overflow} (expected 0, 0)",
                         pgid=owner, offset=start, path=path)
        node = Node(0, flags, count, overflow, start, ve, owner)
        if start + PAGE_HEADER_SIZE + count * ELEMENT_SIZE > ve:
            self.problem("B027", f"inline bucket claims {count} elements in a {vlen}-byte value", pgid=owner,
                         offset=start + 10, path=path)
            return
        before = len(self.report.problems)
        elems = self._leaf(node, None, None, path, anc, stack)
        if elems is not None and len(self.report.problems) == before and not self.quick:
            used = PAGE_HEADER_SIZE + count * ELEMENT_SIZE + sum(v - k for _, k, _, v in elems)
            if BUCKET_HEADER_SIZE + used != vlen:
                self.problem("B036", f"inline bucket value is {vlen} bytes, its page uses {BUCKET_HEADER_SIZE + used}",
                             pgid=owner, offset=vs, path=path)

    def _keys(self, node: Node, keys: list, lo, hi, path) -> bool:
        """Strictly increasing, non-empty, and inside [lo, hi) given by the parent branch.
        Returns whether the page's own keys are out of order."""
        if not keys:
            return False
        kind = "branch" if node.is_branch else "leaf"
        where = dict(pgid=node.owner, path=path)
        disordered = keys != sorted(set(keys))
        if disordered:
            reported = 0
            for i in range(1, len(keys)):
                if keys[i] <= keys[i - 1]:
                    code = "B032" if keys[i] == keys[i - 1] else "B031"
                    rel = "=" if code == "B032" else "<"
                    self.problem(code, f"key[{i}] on {kind} page {node.pgid or node.owner} needs to be > (found {rel}) "
                                 "than the previous element", key=keys[i], **where)
                    reported += 1
                    if reported >= self.MAX_PER_PAGE:
                        break
        if not keys[0]:
            self.problem("B034", f"empty key on {kind} page", **where)
        if lo is not None and keys[0] < lo:
            self.problem("B033", f"the first key on {kind} page {node.pgid} needs to be >= the key in the ancestor",
                         key=keys[0], **where)
        if hi is not None and keys[-1] >= hi:
            self.problem("B033", f"the last key on {kind} page {node.pgid} needs to be < the key of the next element "
                         "in the ancestor", key=keys[-1], **where)
        return disordered

    # -- leaks ----------------------------------------------------------------------------------

    def _leaked(self) -> None:
        if not self.meta.has_freelist:
            return  # bbolt rebuilds the free set from reachability: nothing can leak
        leaked = np.flatnonzero((self.refs[2:] == 0) & ~self.freed[2:]) + 2
        for p in leaked.tolist():
            self.problem("B040", "unreachable unfreed", pgid=p)


def _revert_candidate(db: Database, quick: bool) -> dict | None:
    """Check the tree of the other meta: would `revert-meta-page` give a clean file?"""
    other = db.metas[1 - db.meta.index]
    if other is None or not other.usable:
        return None
    sub = CheckReport(file=db.path)
    _Walker(db, other, sub, quick, None).run()
    errors = sum(p.severity == Severity.ERROR for p in sub.problems)
    warnings = sum(p.severity == Severity.WARNING for p in sub.problems)
    return {"meta": other.index, "txid": other.txid, "clean": errors == 0 and warnings == 0,
            "errors": errors, "warnings": warnings, "codes": sub.counts()}


__all__ = ["check_file", "CheckReport", "decode_meta"]
