"""Salvage: everything recoverable from a damaged file, into a new file bbolt accepts.

Sources, in order of trust: the tree of the current meta (every intact part of it), then, when that
tree is damaged, the tree of the other meta (what the last transaction had not yet overwritten), then a linear scan of every leaf
page that neither tree reaches (orphans, kept under ``lost+found/page-<id>`` with their provenance).
A pair is only ever copied from an element that is in the file; the first source that has a key wins.
The input is only read; the output is written beside it, then checked.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..check import check_file
from ..errors import CorruptionError, OpenError
from ..schemas import BUCKET_LEAF_FLAG, PageFlag
from ..storage import Database, Item, Pager, Tree
from ..storage import Bucket as TreeBucket
from ..storage.pagemap import written_headers
from ..write import BoltWriter
from .replace import NotVerified, Replaced, check_report_path, replace_file, write_report

LOST_FOUND = b"lost+found"

WARNING = ("Salvaged data deserves review: pairs come from every intact part of the file, including the previous "
           "transaction and pages no tree reaches (lost+found), so a value may be older than the one that was lost.")


@dataclass
class _Bucket:
    sequence: int = 0
    values: dict = field(default_factory=dict)     # key -> bytes | _Bucket


@dataclass
class SalvageResult:
    src: str
    dst: str
    pairs: dict[str, int]           # source -> pairs taken from it
    buckets: int
    damage: list[str]
    orphan_pages: list[int]
    clean: bool                     # the new file checks clean
    report_path: str | None = None  # where the JSON report was written

    def report(self) -> dict:
        return {"src": self.src, "dst": self.dst, "pairs": self.pairs, "buckets": self.buckets,
                "damage": self.damage, "orphan_pages": self.orphan_pages, "output_clean": self.clean,
                "warning": WARNING}


class _Collector:
    def __init__(self, db: Database):
        self.db = db
        self.root = _Bucket()
        self.pairs: dict[str, int] = {}
        self.buckets = 0
        self.damage: list[str] = []
        self.reached: set[int] = set()
        self._last: dict[tuple, _Bucket] = {}

    def bucket(self, path) -> _Bucket | None:
        path = tuple(path)
        b = self._last.get(path)        # pairs come bucket by bucket: don't walk a deep path for each of them
        if b is not None:
            return b
        b = self.root
        for name in path:
            nxt = b.values.get(name)
            if nxt is None:
                nxt = b.values[name] = _Bucket()
                self.buckets += 1
            if not isinstance(nxt, _Bucket):
                # a plain key already holds this name in a more trusted source
                self.damage.append(f"{'/'.join(map(repr, path))}: a bucket and a key share a name; the key was "
                                   "kept, the bucket's pairs went to lost+found/name-conflicts")
                return None
            b = nxt
        self._last = {path: b}
        return b

    def put(self, path, key: bytes, value: bytes, source: str) -> None:
        b = self.bucket(path)
        if b is None:      # the path runs through a plain key: keep the pair, under lost+found
            b = self.bucket((LOST_FOUND, b"name-conflicts") + tuple(path))
        if b is not None and key and key not in b.values:
            b.values[key] = value
            self.pairs[source] = self.pairs.get(source, 0) + 1

    def tree(self, tree: Tree, root_page: int, source: str) -> None:
        """Walk one tree. Pairs whose place is doubtful stay, but out of the live namespace: pages whose keys
        are out of order (a key was overwritten, its value may now sit under another key), pages whose keys
        fall outside the range their parent branch gives them (a child pointer was redirected), and
        everything below such pages, sub-buckets included."""
        data = self.db.data
        suspect: dict[int, int] = {}             # page -> the page where the doubt started
        expected: dict[int, tuple] = {}          # child page -> (lo, hi) from its parent branch
        suspect_paths: dict[tuple, int] = {}

        def doubt(page: int, origin: int, why: str) -> None:
            if page not in suspect:
                suspect[page] = origin
                if page == origin:
                    self.damage.append(f"{source}: page {page}: {why}; its pairs go to lost+found")

        def on_page(bucket, node, depth, elems):
            if node.pgid:
                self.reached.update(range(node.pgid, node.pgid + node.overflow + 1))
            key_of = (lambda e: data[e[1]:e[2]]) if node.is_leaf else (lambda e: data[e[0]:e[1]])
            keys = [key_of(e) for e in elems]
            page = node.pgid or node.owner
            if len(keys) > 1 and keys != sorted(set(keys)):
                doubt(page, page, "keys out of order")
            lo, hi = expected.get(node.pgid, (None, None))
            if keys and ((lo is not None and keys[0] < lo) or (hi is not None and keys[-1] >= hi)):
                doubt(page, page, "keys outside the range of its parent branch")
            if node.is_branch:
                for i, (_, _, child) in enumerate(elems):
                    expected[child] = (keys[i], keys[i + 1] if i + 1 < len(keys) else hi)
                    if page in suspect:
                        doubt(child, suspect[page], "")

        def on_error(e: CorruptionError):
            self.damage.append(f"{source}: {e}")
        try:
            root = tree.bucket_at((), root_page, 0)
        except CorruptionError as e:
            on_error(e)
            return

        def aside(path: tuple, page: int) -> tuple | None:
            """Where a pair of bucket ``path`` on ``page`` goes: None for its own path."""
            if page in suspect:
                return (LOST_FOUND, f"page-{suspect[page]}-doubtful".encode()) + path
            if not suspect_paths:       # the common case; the prefix scan is quadratic in the nesting depth
                return None
            for i in range(len(path), 0, -1):
                if path[:i] in suspect_paths:
                    return (LOST_FOUND, f"page-{suspect_paths[path[:i]]}-doubtful".encode()) + path
            return None

        for parent, child, item in tree.walk(root, on_error=on_error, on_page=on_page):
            page = item.node.owner
            if child is not None:
                where = aside(parent.path, page)
                if where is not None:
                    suspect_paths[child.path] = suspect.get(page, suspect_paths.get(parent.path, page))
                    continue
                if child.root and page in suspect:
                    continue
                b = self.bucket(child.path)
                if b is not None and b.sequence == 0:
                    b.sequence = child.sequence
                continue
            path = aside(parent.path, page) or parent.path or (LOST_FOUND, b"root-bucket-keys")
            self.put(path, item.key, data[item.value_start:item.value_end], source)

    def orphans(self, pager: Pager, free: set[int]) -> list[int]:
        """Leaf pages no tree reached: their plain pairs (and inline buckets' pairs) go to lost+found."""
        found = []
        tree = Tree(pager)
        data = self.db.data
        # candidates in bulk: written pages (holes and zero pages skipped) whose header says "leaf <own id>"
        pg, pid, flags, count, _ = written_headers(self.db, 2, pager.limit_pages)
        leaf = (pid == pg.astype(np.uint64)) & (flags == PageFlag.LEAF) & (count > 0)
        for pgid in pg[leaf].tolist():
            if pgid in self.reached:
                continue
            try:
                pid, flags, count, overflow = pager.header(pgid)
                if pid != pgid or flags != PageFlag.LEAF or count == 0:
                    continue
                node = pager.node(pgid)
                elems = pager.leaf_elements(node)
            except CorruptionError:
                continue
            label = f"page-{pgid}" + ("-free" if pgid in free else "")
            base = (LOST_FOUND, label.encode())
            taken = 0
            for flags_, ks, ke, ve in elems:
                key = data[ks:ke]
                if not flags_ & BUCKET_LEAF_FLAG:
                    self.put(base, key, data[ke:ve], "lost+found")
                    taken += 1
                    continue
                try:      # an inline bucket carries its own pairs
                    parent = TreeBucket(base, pgid, 0, node)
                    child = tree.child(parent, Item(key, flags_, ke, ve, node))
                    if child.inline:
                        for it in tree.items(child):
                            if not it.is_bucket:
                                self.put(child.path, it.key, data[it.value_start:it.value_end], "lost+found")
                                taken += 1
                except CorruptionError:
                    pass
            if taken:
                found.append(pgid)
            self.reached.update(range(pgid, pgid + overflow + 1))
        return found


def _write(writer: BoltWriter, bucket: _Bucket) -> None:
    """Depth-first in key order, with an explicit stack (no recursion limit on deep trees)."""
    stack = [iter(sorted(bucket.values.items()))]
    while stack:
        nxt = next(stack[-1], None)
        if nxt is None:
            stack.pop()
            if stack:
                writer.end_bucket()
            continue
        key, value = nxt
        if isinstance(value, _Bucket):
            writer.begin_bucket(key, value.sequence)
            stack.append(iter(sorted(value.values.items())))
        else:
            writer.put(key, value)


def _open_any(src: str, snapshot: bool = False) -> Database:
    """The current meta if it is usable; else any meta whose checksum holds (a truncated file still has
    its metas: the tree is read as far as the file goes)."""
    try:
        return Database(src, snapshot=snapshot, refuse_held=True)
    except OpenError as first:
        opened = []
        for m in (0, 1):
            try:
                opened.append(Database(src, meta=m, snapshot=snapshot, refuse_held=True))
            except OpenError:
                pass
        if opened:
            best = max(opened, key=lambda d: d.meta.txid)
            for d in opened:
                if d is not best:
                    d.close()
            return best
        raise OpenError(f"{first}; salvage needs at least one readable meta page") from None


def salvage(src: str, dst: str, *, lost_found: bool = True, page_size: int | None = None, snapshot: bool = False,
            report: str | bool = True) -> SalvageResult:
    """Salvage ``src`` into the new file ``dst`` and write the JSON report (to ``report`` when it is a path, beside
    ``dst`` as `DST.report.json` when True, none when False). A source a writer holds is refused (InUse) unless
    ``snapshot``: then a consistent copy of it is read."""
    if os.path.exists(dst):
        raise FileExistsError(f"{dst} already exists; refusing to overwrite it")
    report_path = (dst + ".report.json") if report is True else (report or None)
    if report_path is not None:
        check_report_path(report_path)
    db = _open_any(src, snapshot)
    with db:
        col = _Collector(db)
        col.tree(db.tree, db.meta.root, f"meta {db.meta.index} (txid {db.meta.txid})")
        other = db.metas[1 - db.meta.index]
        # the previous transaction fills gaps only where the current tree is damaged: on an intact tree it
        # would bring back keys the last transaction deleted
        if col.damage and other is not None and other.valid and other.root * db.page_size < db.file_size:
            pager = Pager(db.data, db.file_size, db.page_size, max(other.pgid, db.hwm))
            col.tree(Tree(pager), other.root, f"meta {other.index} (txid {other.txid})")
        orphan_pages: list[int] = []
        if lost_found:
            free: set[int] = set()
            try:
                fl = db.freelist()
                if fl is not None:
                    free = set(fl.ids.tolist())
            except CorruptionError:
                pass
            hwm = max([m.pgid for m in db.metas if m is not None and m.valid] + [db.hwm])
            pager = Pager(db.data, db.file_size, db.page_size, hwm)
            orphan_pages = col.orphans(pager, free)
        root = col.root
        writer = BoltWriter(dst, page_size=page_size or db.page_size)
        try:
            _write(writer, root)
            writer.close()
        except BaseException:
            writer.abort()
            raise
    checked = check_file(dst, revert=False)
    result = SalvageResult(src, dst, col.pairs, col.buckets, col.damage, orphan_pages, checked.clean)
    if report_path is not None:
        result.report_path = write_report(report_path, result.report())
    return result


def salvage_in_place(src: str, *, lost_found: bool = True,
                     report_path: str | None = None) -> tuple[SalvageResult, Replaced | None]:
    """Salvage ``src`` into a new file beside it and, when that checks clean, swap it in through the one repair
    primitive (`replace.replace_file`: refused while a process holds ``src`` or its BuildKit root; the original
    kept as a unique backup; owner, mode and a symlink kept). The report goes beside the backup (or to
    ``report_path``). Returns the result and the replacement (None when the new file did not check clean: ``src``
    is untouched, the attempt is kept as ``result.dst`` with its report beside it)."""
    box: list[SalvageResult] = []

    def write(tmp: str) -> None:
        box.append(salvage(src, tmp, lost_found=lost_found, report=False))

    def verify(tmp: str) -> str | None:
        return None if box[-1].clean else "the salvaged file does not check clean"

    try:
        done = replace_file(src, write, verify, report_path=report_path,
                            report=lambda d: dict(box[-1].report(), dst=d.path, in_place=True))
    except NotVerified as e:
        result = box[-1]
        result.dst = e.attempt or result.dst
        result.report_path = write_report(report_path or result.dst + ".report.json", result.report())
        return result, None
    result = box[-1]
    result.dst = src
    result.report_path = done.report
    return result, done
