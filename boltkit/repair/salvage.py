"""Salvage: everything recoverable from a damaged file, into a new file bbolt accepts.

Sources, in order of trust: the tree of the current meta (every intact part of it), then, when that
tree is damaged, the tree of the other meta (what the last transaction had not yet overwritten), then a linear
scan of every leaf page that neither tree reaches (orphans, kept under ``lost+found/page-<id>`` with their provenance).
A pair is only ever copied from an element that is in the file; the first source that has a key wins.
The input is only read; the output is written beside it, then checked.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..check import check_file
from ..check.checker import Progress, progress_part
from ..errors import CorruptionError, OutputExists, SalvageRefused
from ..schemas import BUCKET_LEAF_FLAG, PageFlag
from ..storage import Database, Item, Pager, Tree
from ..storage import Bucket as TreeBucket
from ..storage.meta import newer_meta
from ..storage.pagemap import written_headers
from ..storage.pages import pages_in
from ..storage.rebuild import newer_state
from ..write import BoltWriter
from ..write.destination import output_error
from .compact import _Copier
from .preflight import intact_tree
from .replace import NotVerified, Replaced, check_report_path, replace_file, write_report

LOST_FOUND = b"lost+found"
BIG_VALUE = 1 << 16         # values from this size on are kept as views of the map, not copies

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
    input_pairs: int = 0            # distinct pairs a tolerant read of the input gives (the floor)
    output_pairs: int = 0           # pairs the written file holds, counted by reading it back
    report_path: str | None = None  # where the JSON report was written

    def report(self) -> dict:
        return {"src": self.src, "dst": self.dst, "pairs": self.pairs, "buckets": self.buckets,
                "damage": self.damage, "orphan_pages": self.orphan_pages, "output_clean": self.clean,
                "input_pairs": self.input_pairs, "output_pairs": self.output_pairs, "warning": WARNING}


class _Holes:
    """Key ranges of the live tree that damage hid, per bucket path: the only places where an older tree's pairs
    may come back to life. Elsewhere a key the older tree has and the live tree lacks was deleted since. A range
    damage made unreadable may take any pair (what it held is unknown); a range read but doubtful (its pairs
    went to lost+found) takes only the pairs it was seen to hold, now placed by the older tree."""

    def __init__(self) -> None:
        self.ranges: dict[tuple, list[tuple]] = {}
        self.everywhere = False          # damage whose place is not known: every gap may be one
        self.doubtful: set[tuple[bytes, bytes]] = set()     # (key, value) of the pairs put aside as doubtful

    def add(self, path: tuple, lo: bytes | None, hi: bytes | None, doubt: bool = False) -> None:
        self.ranges.setdefault(path, []).append((lo, hi, doubt))

    def covers(self, path: tuple, key: bytes, value: bytes | None = None) -> bool:
        """Whether ``key`` of bucket ``path`` (or the name of a bucket ``path`` runs through) falls in a range
        that may take it: an unreadable one, or a doubtful one that held this very pair (``value``)."""
        if self.everywhere:
            return True
        seen = value is not None and (key, value) in self.doubtful
        return any(not doubt or seen for doubt in self._in(path, key)) or any(
            not doubt or seen for i in range(len(path)) for doubt in self._in(path[:i], path[i]))

    def _in(self, path: tuple, key: bytes):
        return (doubt for lo, hi, doubt in self.ranges.get(path, ())
                if (lo is None or lo <= key) and (hi is None or key < hi))


class _Collector:
    def __init__(self, db: Database):
        self.db = db
        self.root = _Bucket()
        self.pairs: dict[str, int] = {}
        self.buckets = 0
        self.damage: list[str] = []
        self.reached: set[int] = set()
        self.tolerant_pairs = 0
        self._cache: dict[tuple, _Bucket] = {(): self.root}
        self._view = memoryview(db.data)
        self.progress: Progress | None = None     # (pages reached, pages in the file), every few hundred pages
        self._ticks = 0

    def tick(self) -> None:
        """One more page visited: progress, as pages reached by the walks and the orphan scan so far."""
        self._ticks += 1
        if self.progress is not None and not self._ticks & 255:
            total = self.db.pager.limit_pages
            self.progress(min(len(self.reached), total), total)

    def value(self, start: int, end: int):
        """A value to keep: a copy when small, a view of the map when big (a 400 MB value is held once, by the
        map, until the writer has written it: `release`)."""
        return self._view[start:end] if end - start >= BIG_VALUE else self.db.data[start:end]

    def release(self) -> None:
        """Drop every value (views of the map among them) once written, so that the map can be closed."""
        self.root = _Bucket()
        self._cache = {(): self.root}
        self._view.release()

    def bucket(self, path) -> _Bucket | None:
        """The bucket at ``path``, made on the way. Looked up whole first: walking the path from the root on
        every pair would make salvage quadratic in nesting depth."""
        b = self._cache.get(path)
        if b is not None:
            return b
        parent = self._cache.get(path[:-1]) if path else None
        if parent is not None:
            nxt = parent.values.get(path[-1])
            if nxt is None:
                nxt = parent.values[path[-1]] = _Bucket()
                self.buckets += 1
            if isinstance(nxt, _Bucket):
                self._cache[path] = nxt
                return nxt
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
        self._cache[tuple(path)] = b
        return b

    def put(self, path, key: bytes, value: bytes, source: str) -> None:
        b = self.bucket(path)
        if b is None:      # the path runs through a plain key: keep the pair, under lost+found
            b = self.bucket((LOST_FOUND, b"name-conflicts") + tuple(path))
        if b is not None and key and key not in b.values:
            b.values[key] = value
            self.pairs[source] = self.pairs.get(source, 0) + 1

    def tree(self, tree: Tree, root_page: int, source: str, tally: bool = False, gaps_to: bytes | None = None,
             holes: _Holes | None = None, fill: _Holes | None = None) -> None:
        """Walk one tree. Pairs whose place is doubtful stay, but out of the live namespace: pages whose keys
        are out of order (a key was overwritten, its value may now sit under another key), pages whose keys
        fall outside the range their parent branch gives them (a child pointer was redirected), and
        everything below such pages, sub-buckets included. With ``gaps_to``, the tree is an older state than
        the one already collected: a pair whose key the live namespace lacks was deleted since, and goes to
        lost+found/``gaps_to`` instead of coming back to life, unless it falls where ``fill`` says damage hid
        the live tree's own pairs. ``holes`` collects those places for this tree: the key range a damaged or
        doubtful page's parent gave it, the whole bucket for a bucket's root page."""
        data = self.db.data
        suspect: dict[int, int] = {}             # page -> the page where the doubt started
        expected: dict[int, tuple] = {}          # child page -> (lo, hi) from its parent branch
        suspect_paths: dict[tuple, int] = {}
        page_bucket: dict[int, tuple] = {}       # a page a branch or a bucket header names -> its bucket's path

        def hole(page: int | None, path: tuple | None = None, doubt: bool = False) -> None:
            if holes is None:
                return
            if page == root_page:
                holes.add((), None, None, doubt)
            elif page in page_bucket:
                lo, hi = expected.get(page, (None, None))
                holes.add(page_bucket[page], lo, hi, doubt)
            elif path is not None:
                holes.add(tuple(path), None, None, doubt)
            else:
                holes.everywhere = True

        def doubt(page: int, origin: int, why: str) -> None:
            if page not in suspect:
                suspect[page] = origin
                if page == origin:
                    self.damage.append(f"{source}: page {page}: {why}; its pairs go to lost+found")
                    hole(page, doubt=True)

        placed: dict[int, tuple] = {}            # leaf page -> the bucket its pairs went to
        listed: set[int] = set()                  # pages a branch or a bucket header already names

        def on_page(bucket, node, depth, elems):
            self.tick()
            if node.pgid:
                at = node.base // self.db.page_size      # where it sits (a swapped page is not at its id)
                self.reached.update(range(at, at + node.overflow + 1))
                if node.is_leaf:
                    placed[node.pgid] = bucket.path
            key_of = (lambda e: data[e[1]:e[2]]) if node.is_leaf else (lambda e: data[e[0]:e[1]])
            keys = [key_of(e) for e in elems]
            page = node.pgid or node.owner
            # a page two references name (a redirected child pointer: two branch elements, or a branch element
            # and a sub-bucket's header): which one is right is not known, so its pairs leave the live
            # namespace, also when the first reference already put them there
            if node.is_branch:
                named = [child for _, _, child in elems]
                for child in named:
                    page_bucket.setdefault(child, bucket.path)
            else:
                roots = [(data[ks:ke], root) for flags, ks, ke, ve in elems if flags & BUCKET_LEAF_FLAG
                         and ve - ke >= 8 and (root := int.from_bytes(data[ke:ke + 8], "little"))]
                for name, root in roots:
                    page_bucket.setdefault(root, bucket.path + (name,))
                named = [root for _, root in roots]
            for child in named:
                if child in listed:
                    doubt(child, child, "named by two pages")
                    if child in placed:
                        self._move_aside(child, placed.pop(child), source, holes)
                listed.add(child)
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

        def on_damage(e: CorruptionError):
            self.damage.append(f"{source}: {e}")
            if not e.whole:     # a page found at another's place hides nothing: its keys are still range-checked
                hole(e.pgid, e.path)
        try:
            root = tree.bucket_at((), root_page, 0, on_damage)
        except CorruptionError as e:
            on_damage(e)
            return
        seen: dict[tuple, set] = {}       # the tolerant read's distinct pairs per bucket: salvage's floor

        def aside(path: tuple, page: int) -> tuple | None:
            """Where a pair of bucket ``path`` on ``page`` goes: None for its own path."""
            if page in suspect:
                return (LOST_FOUND, f"page-{suspect[page]}-doubtful".encode()) + path
            origin = suspect_paths.get(path)     # every bucket below a doubtful one has its own entry
            if origin is not None:
                return (LOST_FOUND, f"page-{origin}-doubtful".encode()) + path
            return None

        for parent, child, item in tree.walk(root, on_damage=on_damage, on_page=on_page):
            page = item.node.owner
            if child is not None:
                where = aside(parent.path, page)
                if where is not None:
                    suspect_paths[child.path] = suspect.get(page, suspect_paths.get(parent.path, page))
                    continue
                if child.root and page in suspect:
                    continue
                if gaps_to is not None and (fill is None or not fill.covers(parent.path, child.path[-1])):
                    continue
                b = self.bucket(child.path)
                if b is not None and b.sequence == 0:
                    b.sequence = child.sequence
                continue
            if tally:
                seen.setdefault(parent.path, set()).add(item.key)
            path = aside(parent.path, page) or parent.path or (LOST_FOUND, b"root-bucket-keys")
            value = self.value(item.value_start, item.value_end)
            if holes is not None and path != parent.path:
                holes.doubtful.add((item.key, bytes(value)))
            if gaps_to is not None and path == parent.path:
                live = self._cache.get(path)
                if live is not None and item.key in live.values:
                    continue
                if fill is None or not fill.covers(path, item.key, bytes(value)):
                    path = (LOST_FOUND, gaps_to) + path
            self.put(path, item.key, value, source)
        if tally:
            self.tolerant_pairs += sum(len(k) for k in seen.values())

    def _move_aside(self, page: int, path: tuple, source: str, holes: _Holes | None) -> None:
        """Move the plain pairs of leaf ``page``, already put at ``path``, to lost+found/page-N-doubtful."""
        live = self._cache.get(path)
        if live is None:
            return
        try:
            node, _ = self.db.pager.node_lenient(page)
            elems, _ = self.db.pager.leaf_elements_lenient(node)
        except CorruptionError:
            return
        data = self.db.data
        target = (LOST_FOUND, f"page-{page}-doubtful".encode()) + tuple(path)
        for flags, ks, ke, ve in elems:
            key = data[ks:ke]
            if not flags & BUCKET_LEAF_FLAG and key in live.values and bytes(live.values[key]) == data[ke:ve]:
                value = live.values.pop(key)
                self.pairs[source] = self.pairs.get(source, 0) - 1
                if holes is not None:
                    holes.doubtful.add((key, bytes(value)))
                self.put(target, key, value, source)

    def agree_with(self, tree: Tree, root_page: int, label: str, mine: tuple[str, str], theirs: str) -> int:
        """Collect the tree at ``root_page`` (``label``) apart, then keep live only what it and the collected state
        agree on (``keep_agreed``; ``mine``: (lost+found name, source) for this state's own pairs, ``theirs``: the
        lost+found name for the other's). Returns the pairs that left the live namespace."""
        other = _Collector(self.db)
        other.tree(tree, root_page, label)
        self.damage.extend(other.damage)
        self.reached |= other.reached
        return self.keep_agreed(other.root, (mine[0].encode(), mine[1]), (theirs.encode(), label))

    def keep_agreed(self, other: _Bucket, mine: tuple[bytes, str], theirs: tuple[bytes, str]) -> int:
        """Two states nothing in the file orders (both metas torn, txids garbled apart, the same high-water mark,
        freelists that each list the other's root): either may be the later one, so the live namespace keeps
        only what both agree on. A pair only the collected state has, or whose value differs, moves to
        lost+found/``mine[0]``; one only ``other`` has, or its differing version, goes to lost+found/``theirs[0]``;
        a bucket left empty that ``other`` lacks goes. Deleted keys never come back live, added ones wait in
        lost+found. Returns the pairs that left the live namespace."""
        moved = 0

        def split(b: _Bucket, o: _Bucket | None, path: tuple) -> None:
            nonlocal moved
            for name, v in list(b.values.items()):
                if not path and name == LOST_FOUND:
                    continue
                t = o.values.get(name) if o is not None else None
                if isinstance(v, _Bucket):
                    split(v, t if isinstance(t, _Bucket) else None, path + (name,))
                    if not v.values and not isinstance(t, _Bucket):
                        del b.values[name]
                        self._cache.pop(path + (name,), None)
                    continue
                if isinstance(t, _Bucket) or t is None or bytes(t) != bytes(v):
                    del b.values[name]
                    self.pairs[mine[1]] = self.pairs.get(mine[1], 0) - 1
                    self.put((LOST_FOUND, mine[0]) + path, name, v, mine[1] + ", order unknown")
                    moved += 1
            for name, t in (o.values.items() if o is not None else ()):
                v = b.values.get(name)
                if not path and name == LOST_FOUND and isinstance(t, _Bucket):
                    graft(t, (LOST_FOUND,))          # the other tree's own doubtful pages
                elif isinstance(t, _Bucket):
                    if not isinstance(v, _Bucket):
                        graft(t, (LOST_FOUND, theirs[0]) + path + (name,))
                elif v is None or isinstance(v, _Bucket) or bytes(v) != bytes(t):
                    self.put((LOST_FOUND, theirs[0]) + path, name, t, theirs[1] + ", order unknown")

        def graft(t: _Bucket, path: tuple) -> None:
            for name, x in t.values.items():
                if isinstance(x, _Bucket):
                    graft(x, path + (name,))
                else:
                    self.put(path, name, x, theirs[1] + ", order unknown")

        split(self.root, other, ())
        return moved

    def _orphan_damage(self, e: CorruptionError) -> None:
        """Damage inside an orphan leaf's inline bucket: what it hides is not recovered, and the report says so."""
        self.damage.append(f"lost+found: {e}")

    def orphans(self, pager: Pager, free: set[int] | None, include_freed: bool) -> list[int]:
        """Leaf pages no tree reached: their plain pairs (and inline buckets' pairs) go to lost+found. A freed
        page (``free`` None: every unreached page may be one) gives only keys the recovered tree lacks, unless
        ``include_freed``."""
        found = []
        tree = Tree(pager)
        data = self.db.data
        known = None if include_freed else _key_index(self.root)
        # candidates in bulk: written pages (holes and zero pages skipped) whose header says "leaf <own id>"
        pg, pid, flags, count, _ = written_headers(self.db, 2, pager.limit_pages)
        leaf = (pid == pg.astype(np.uint64)) & (flags == PageFlag.LEAF) & (count > 0)
        for pgid in pg[leaf].tolist():
            self.tick()
            if pgid in self.reached:
                continue
            try:
                hid, hflags, hcount, _ = pager.header(pgid)
                if hid != pgid or hflags != PageFlag.LEAF or hcount == 0:
                    continue
                node, _ = pager.node_lenient(pgid)
                elems, _ = pager.leaf_elements_lenient(node)
            except CorruptionError:
                continue
            freed = free is None or pgid in free
            label = f"page-{pgid}" + ("-free" if freed and free is not None else "")
            base = (LOST_FOUND, label.encode())
            keep = (lambda k: True) if known is None or not freed else (lambda k: k not in known)
            taken = 0
            for flags_, ks, ke, ve in elems:
                key = data[ks:ke]
                if not flags_ & BUCKET_LEAF_FLAG:
                    if keep(key):
                        self.put(base, key, self.value(ke, ve), "lost+found")
                        taken += 1
                    continue
                try:      # an inline bucket carries its own pairs
                    parent = TreeBucket(base, pgid, 0, node)
                    child = tree.child(parent, Item(key, flags_, ke, ve, node), self._orphan_damage)
                    if child.inline:
                        for it in tree.items(child, on_damage=self._orphan_damage):
                            if not it.is_bucket and keep(it.key):
                                self.put(child.path, it.key, self.value(it.value_start, it.value_end),
                                         "lost+found")
                                taken += 1
                except CorruptionError as e:
                    self._orphan_damage(e)
            if taken:
                found.append(pgid)
            self.reached.update(range(pgid, pgid + node.overflow + 1))
        return found


# shares of one salvage's progress bar: the check of the source, the copy or the collection, the check of the output
# (the tolerant path: the walks and the orphan scan, then the writing, then the check of the output)
_CHECKED, _COLLECTED, _COPIED, _TOTAL = 350, 700, 800, 1000


def _copy_sound(db: Database, writer: BoltWriter, pages: int, progress: Progress | None) -> tuple[int, int]:
    """Copy the live tree of a sound ``db`` (see `preflight.intact_tree`) into ``writer``: runs of leaf elements and
    inline buckets as they are, as `compact` does. Returns (buckets, pairs) copied."""
    copier = _Copier(db, writer, progress, pages)
    copier.run()
    return copier.buckets, copier.pairs


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


def _key_index(bucket: _Bucket) -> set[bytes]:
    """Every key of the recovered tree, at any depth (for the freed-pages rule)."""
    keys: set[bytes] = set()
    stack = [bucket]
    while stack:
        b = stack.pop()
        for k, v in b.values.items():
            keys.add(k)
            if isinstance(v, _Bucket):
                stack.append(v)
    return keys


def salvage(src: str, dst: str, *, lost_found: bool = True, include_freed: bool = False,
            page_size: int | None = None, snapshot: bool = False, report: str | bool = True,
            progress: Progress | None = None) -> SalvageResult:
    """Salvage ``src`` into the new file ``dst``. Raises SalvageRefused (and leaves no ``dst``) when the
    output would hold fewer pairs than the tolerant read of ``src``, or nothing from a damaged file.

    Freed pages (the freelist's, or every unreached page of a file that stores none) hold old versions of
    keys: for a BuildKit store a resurrected record is worse than a lost one (it names snapshots that were
    removed). So lost+found is only scanned when the live tree is damaged, and a freed page gives only keys
    the recovered tree does not have anywhere; ``include_freed`` takes every freed pair.

    The JSON report goes to ``report`` when it is a path, beside ``dst`` as `DST.report.json` when True, nowhere
    when False. A source a writer holds is refused (InUse) unless ``snapshot``: then a consistent copy is read.
    ``progress(done, total)``: the work so far, in shares of the whole (check, copy or collection, verification)."""
    if os.path.exists(dst):
        raise OutputExists(f"{dst} already exists; refusing to overwrite it")
    report_path = (dst + ".report.json") if report is True else (report or None)
    if report_path is not None:
        check_report_path(report_path)
    db = Database(src, snapshot=snapshot, refuse_held=True, zero_past_end=False)
    try:
        sound = None if lost_found and include_freed else intact_tree(db, progress_part(progress, 0, _CHECKED, _TOTAL))
        if sound is not None:
            buckets, pairs = _salvage_sound(db, dst, page_size or db.page_size, sound.pages_reachable,
                                            progress_part(progress, _CHECKED, _COPIED, _TOTAL))
            primary = f"{db.meta.label} (txid {db.meta.txid})"
    except BaseException:
        db.close()
        raise
    if sound is not None:
        db.close()
        return _verified(SalvageResult(src, dst, {primary: pairs} if pairs else {}, buckets, [], [], False,
                                       sound.pairs), report_path, progress)
    with db:
        col = _Collector(db)
        col.progress = progress_part(progress, _CHECKED, _COLLECTED, _TOTAL)
        col.damage.extend(db.choice.warnings)
        # a meta slot holding no meta at all (overwritten, zeroed) may have held the newest transaction: when
        # the pages show a state later than the meta read (its tree reaches past that meta's high-water mark),
        # its tree goes first; otherwise its pages are unreached, not freed, and go to lost+found like those
        # of a damaged tree
        meta_lost = any(m is None or not (m.valid or m.consistent) for m in db.metas)
        later = (newer_state(db.data, db.file_size, db.page_size, db.meta.root, db.meta.pgid)
                 if meta_lost and not db.meta.rebuilt else None)
        if later is not None:
            col.damage.append(f"meta slot lost: the pages hold a later state than {db.meta.label} (txid "
                              f"{db.meta.txid}): root page {later.root}, freelist page {later.freelist}, whose tree "
                              f"reaches past its high-water mark {db.meta.pgid}; its pairs come first")
            col.tree(Tree(Pager(db.data, db.file_size, db.page_size, pages_in(db.file_size, db.page_size))),
                     later.root, f"later state (root page {later.root})")
        primary = f"{db.meta.label} (txid {db.meta.txid})"
        # the other meta's tree, and which transaction is the later: bbolt writes a transaction's pages, syncs,
        # then its meta, so a meta whose checksum failed but whose fields agree with the file names a whole tree,
        # and the file's witnesses (newer_meta) can say it is the later one
        others = [m for m in db.metas if m is not None and m is not db.meta and (m.valid or m.consistent)
                  and 2 <= m.root < pages_in(db.file_size, db.page_size)]
        other = others[0] if others else None
        witness = newer_meta(other, db.meta, db.data, db.file_size) if other is not None and not other.valid \
            else None
        other_later = other is not None and later is None and not db.meta.rebuilt and (
            witness is other if not other.valid else other.txid > db.meta.txid)
        unknown = other is not None and not other.valid and witness is None
        holes = _Holes()
        if other is not None and other_later:
            # the later state is live, the earlier one only fills where damage hid the later one's pairs: a key
            # only the earlier tree has was deleted by the later transaction, and waits in lost+found
            label = f"meta {other.index} (txid {other.txid})"
            col.damage.append(f"{label} is the later transaction ({'; '.join(other.errors + other.faults)}), and "
                              f"its tree is read first; {primary}'s pairs fill in only where damage hid its own, "
                              f"the rest go to lost+found/txid-{other.txid}-deleted-since")
            col.tree(Tree(Pager(db.data, db.file_size, db.page_size, max(other.pgid, db.hwm))), other.root, label,
                     holes=holes)
            col.tree(db.tree, db.meta.root, primary, tally=True,
                     gaps_to=f"txid-{other.txid}-deleted-since".encode(), fill=holes)
            other = None
        else:
            # a meta read past its lying checksum or page size still names an intact tree; an older transaction
            # than bbolt's, or a rebuilt root, leaves the newest pages unreached: those are for lost+found
            col.tree(db.tree, db.meta.root, primary, tally=True,
                     gaps_to=None if later is None else f"txid-{db.meta.txid}-deleted-since".encode(), holes=holes)
            tied = db.meta.tied_root if db.meta.rebuilt else None
            if tied is not None:
                # no meta, and two states fit the file alike with nothing to order them: either may be the later
                # transaction (a key only one has may have been deleted since), so as for two torn metas only
                # what both agree on stays live
                moved = col.agree_with(Tree(Pager(db.data, db.file_size, db.page_size,
                                                  pages_in(db.file_size, db.page_size))), tied, f"root page {tied}",
                                       (f"root-page-{db.meta.root}-order-unknown", primary),
                                       f"root-page-{tied}-order-unknown")
                col.damage.append(f"rebuilt root page {db.meta.root} and root page {tied}: both fit the file, and "
                                  "nothing in it says which is the later transaction; only the pairs both trees agree "
                                  f"on stay live ({moved} of {primary}'s went to lost+found/root-page-"
                                  f"{db.meta.root}-order-unknown, the other's to lost+found/root-page-{tied}"
                                  "-order-unknown)")
        live_damaged = (len(col.damage) > len(db.choice.warnings) or meta_lost
                        or db.choice.rung in ("older", "broken", "rebuilt"))
        if other is not None and (unknown or live_damaged):
            pager = Pager(db.data, db.file_size, db.page_size, max(other.pgid, db.hwm))
            label = f"meta {other.index} (txid {other.txid})"
            if unknown and not db.meta.valid and not live_damaged:
                # neither meta passes its checksum and nothing in the file orders them: either may be the later
                moved = col.agree_with(Tree(pager), other.root, label,
                                       (f"meta-{db.meta.index}-order-unknown", primary),
                                       f"meta-{other.index}-order-unknown")
                col.damage.append(f"meta {db.meta.index} and meta {other.index}: both torn, and nothing in the "
                                  "file says which is the later transaction; only the pairs both trees agree on "
                                  f"stay live ({moved} of {primary}'s went to lost+found/meta-"
                                  f"{db.meta.index}-order-unknown, the other's to lost+found/meta-{other.index}"
                                  "-order-unknown)")
            else:
                # the other tree fills in only where damage hid the live tree's pairs: elsewhere a key it has and
                # the live tree lacks was deleted by a later transaction (or, unordered, may have been)
                gaps = (f"meta-{other.index}-order-unknown" if unknown else f"txid-{db.meta.txid}-deleted-since")
                col.tree(Tree(pager), other.root, label, gaps_to=gaps.encode(), fill=holes if live_damaged else None)
        orphan_pages: list[int] = []
        if lost_found and (live_damaged or include_freed):
            free: set[int] | None = set()
            try:
                fl = db.freelist()
                if fl is None:
                    free = None          # no freelist stored: any unreached page may be a freed one
                else:
                    free = set(fl.ids.tolist())
            except CorruptionError:
                free = None
            hwm = max([m.pgid for m in db.metas if m is not None and m.valid] + [db.hwm])
            pager = Pager(db.data, db.file_size, db.page_size, hwm)
            orphan_pages = col.orphans(pager, free, include_freed)
        expected = col.tolerant_pairs
        empty_ok = not live_damaged and expected == 0
        if not col.pairs and not col.buckets and not empty_ok:
            raise SalvageRefused(f"nothing readable in {src}: no pair and no bucket could be recovered "
                                 f"({'; '.join(col.damage[:3]) or 'no tree'}); nothing was written")
        if progress is not None:
            progress(_COLLECTED, _TOTAL)
        try:
            _write_file(dst, page_size or db.page_size, lambda w: _write(w, col.root))
        finally:
            col.release()
    return _verified(SalvageResult(src, dst, col.pairs, col.buckets, col.damage, orphan_pages, False, expected),
                     report_path, progress)


def _salvage_sound(db: Database, dst: str, page_size: int, pages: int,
                   progress: Progress | None) -> tuple[int, int]:
    """Write the live tree of a sound ``db`` to ``dst`` in bulk (`_copy_sound`); (buckets, pairs) written."""
    return _write_file(dst, page_size, lambda w: _copy_sound(db, w, pages or db.pager.limit_pages, progress))


def _write_file(dst: str, page_size: int, fill):
    """``fill(writer)`` into a new file ``dst``, closed when it returns; on any failure the partial file goes,
    and an OSError (a full disk, a file size limit) is said of the file being written."""
    writer = BoltWriter(dst, page_size=page_size)
    try:
        out = fill(writer)
        writer.close()
    except BaseException as e:
        writer.abort()
        if isinstance(e, OSError):
            raise output_error(dst, e) from None
        raise
    return out


def _verified(result: SalvageResult, report_path: str | None, progress: Progress | None) -> SalvageResult:
    """The written file read back, before anyone may swap it in: its check and its pair count, refused (and
    removed) when it holds fewer pairs than the tolerant read of the source (``result.input_pairs``)."""
    checked = check_file(result.dst, revert=False, progress=progress_part(progress, _COPIED, _TOTAL, _TOTAL))
    result.output_pairs, result.clean = checked.pairs, checked.clean
    if result.output_pairs < result.input_pairs:
        os.unlink(result.dst)
        raise SalvageRefused(f"the salvaged file would hold {result.output_pairs} pairs, fewer than the "
                             f"{result.input_pairs} that a tolerant read of {result.src} gives; nothing was written")
    if report_path is not None:
        result.report_path = write_report(report_path, result.report())
    return result


def salvage_in_place(src: str, *, lost_found: bool = True, include_freed: bool = False,
                     report_path: str | None = None,
                     progress: Progress | None = None) -> tuple[SalvageResult, Replaced | None]:
    """Salvage ``src`` into a new file beside it and, when that checks clean, swap it in through the one repair
    primitive (`replace.replace_file`: refused while a process holds ``src`` or its BuildKit root; the original
    kept as a unique backup; owner, mode and a symlink kept). The report goes beside the backup (or to
    ``report_path``). Returns the result and the replacement (None when the new file did not check clean: ``src``
    is untouched, the attempt is kept as ``result.dst`` with its report beside it). SalvageRefused (nothing
    swapped) when the new file would hold fewer pairs than the tolerant read of ``src``. ``progress`` as for
    `salvage`."""
    box: list[SalvageResult] = []

    def write(tmp: str) -> None:
        box.append(salvage(src, tmp, lost_found=lost_found, include_freed=include_freed, report=False,
                           progress=progress))

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
