"""Putting the id buckets of a salvaged cache.db back where BuildKit looks for them.

A torn cache.db salvages into a tree where some id buckets are not under their top-level bucket: the
root may point at an old page of `_links` (ids at the top level), a top-level bucket may hold an old copy
of another (`_backlinks/_backlinks/<id>`, reported as C3), and orphan leaves land in
`lost+found/page-N/<id>`. BuildKit never looks there, so their links and results are lost to it. Each id
bucket says by its shape which of the four buckets it belongs to (link keys, CacheResult values, result-id
names, plain id lists); a bucket that fits one is merged into it, entry by entry, never overriding what is
already in place. Freed pages (`lost+found/page-N-free`) hold older versions and are left alone.

history.db the same way: build records found outside `_records` go back into it.
"""
from __future__ import annotations

import re

import numpy as np

from ..storage.strings import Names
from ..storage import Database
from ..storage.tree import OnDamage
from .cachecolumns import CacheColumns
from .cachedb import TOP_BUCKETS, decode_link_key, decode_result
from .history import decode_record
from .plan import Change

_FREED = re.compile(rb"^page-\d+-free$")
_LOST_LEAF = re.compile(rb"^page-\d+(-free|-doubtful)?$")     # a salvage label, not an id
_I64 = np.int64
_MAX_DEPTH = 32       # BuildKit's ids sit three levels down, a salvage adds a few: deeper is not theirs


def kind_of(name: bytes, entries: list[tuple[bytes, bytes]]) -> bytes | None:
    """Which top-level bucket an id bucket with these plain entries belongs to, or None when its shape
    says nothing certain (empty, mixed, or not BuildKit's)."""
    if not entries or _LOST_LEAF.match(name) or name in TOP_BUCKETS:
        return None
    text = name.decode("utf-8", "replace")      # for the decoder's messages only
    if all(v for _, v in entries):
        ok = all(decode_result(text, k, v).error is None for k, v in entries)
        return b"_result" if ok else None
    if any(v for _, v in entries):
        return None
    keys = [k for k, _ in entries]
    if all(k.startswith(b"{") and k.count(b"@") == 1 for k in keys):
        return b"_links"
    plain_ids = all(b"@" not in k and not k.startswith(b"{") and b"::" not in k for k in keys)
    if plain_ids:
        return b"_byresult" if b"::" in name else b"_backlinks"
    return None


def rehome_columns(db: Database, cols: CacheColumns) -> tuple[CacheColumns, list[Change], set[tuple[bytes, ...]]]:
    """The columns of ``db`` with the id buckets found away from their top-level bucket merged in, the changes
    that says, and the paths of the buckets taken (to leave out when the rest of a foreign bucket is carried
    over). Only where the columns show buckets out of place (a top-level bucket BuildKit does not use, a
    bucket inside an id bucket: C3) is the tree read again."""
    ops, changes, taken = _find_rehomed(db, cols)
    if not ops:
        return cols, changes, taken
    rows = _Rows(cols)
    for op in ops:
        if op[0] == "merge":
            rows.merge(*op[1:])
        else:
            rows.forget(*op[1:])
    rows.anomalies = [a for a in rows.anomalies if not (a.code == "C3" and (*a.bucket, a.key) in taken)]
    return rows.columns(), changes, taken


def _find_rehomed(db: Database, cols: CacheColumns) -> tuple[list[tuple], list[Change], set[tuple[bytes, ...]]]:
    """What to merge where, in the order found: ("merge", top, id, entries) and ("forget", top, id) for a level-2
    bucket that only held other buckets (a container, decoded as an id with no entries: it must not stay one)."""
    tree = db.tree
    ops: list[tuple] = []
    changes: list[Change] = []
    taken: set[tuple[bytes, ...]] = set()
    nested: dict[bytes, list[bytes]] = {}
    for a in cols.anomalies:
        if a.code == "C3" and len(a.bucket) == 2 and a.bucket[1] not in nested.setdefault(a.bucket[0], []):
            nested[a.bucket[0]].append(a.bucket[1])
    if not cols.foreign_top and not nested:
        return ops, changes, taken

    def visit(bucket, code: str, hint: bytes | None = None) -> bool:
        """Take what fits from ``bucket``'s subtree; True when nothing of it is left (taken, or a container
        all of whose buckets were taken). ``hint``: the container is named after a top-level bucket (an
        old copy of it), so an empty id bucket in it belongs there."""
        if len(bucket.path) > _MAX_DEPTH:
            return False
        plain, subs = [], []
        for item in tree.items(bucket):
            if item.is_bucket:
                subs.append(item)
            else:
                plain.append((item.key, db.value(item)))
        name = bucket.path[-1]
        inner = name if name in TOP_BUCKETS else None
        gone = [not _FREED.match(item.key) and visit(tree.child(bucket, item), code, inner) for item in subs]
        if not all(gone):
            return False
        kind = kind_of(name, plain)
        if kind is None and not plain and not subs and hint is not None and name not in TOP_BUCKETS \
                and not _LOST_LEAF.match(name):
            kind = hint
        if kind is not None:
            ops.append(("merge", kind, name, plain))
            changes.append(Change(code, "rehome", bucket.path, kind + b"/" + name))
        elif plain or not subs:
            return False
        taken.add(bucket.path)          # merged, or emptied by what was merged
        return True

    root = db.root()
    for top in tree.items(root):
        if not top.is_bucket:
            continue
        bucket = tree.child(root, top)
        if top.key not in TOP_BUCKETS:
            visit(bucket, "C1")
            continue
        for key in sorted(nested.get(top.key, ())):      # old copies nested in a top (C3)
            entry = tree.get(bucket, key)
            if entry is None or not entry.is_bucket:
                continue
            sub = tree.child(bucket, entry)
            inner = [i for i in tree.items(sub) if i.is_bucket]
            if not inner:
                continue
            hint = entry.key if entry.key in TOP_BUCKETS else None
            for item in inner:
                visit(tree.child(sub, item), "C3", hint)
            ops.append(("forget", top.key, entry.key))
    return ops, changes, taken


class _Rows:
    """The columns as rows of bytes, to merge rehomed buckets into and turn back into columns: only for a
    store with buckets out of place (a salvaged one), so plain Python."""

    def __init__(self, c: CacheColumns):
        text = c.names.bytes
        self.anomalies = list(c.anomalies)
        self.top, self.foreign_top = set(c.top), list(c.foreign_top)
        self.ids: dict[bytes, dict[bytes, int]] = {}        # top -> id -> its bucket's sequence
        for top, codes in ((b"_links", c.links_ids), (b"_result", c.results_ids), (b"_byresult", c.byresult_ids),
                           (b"_backlinks", c.backlinks_ids)):
            seq = c.id_sequences.get(top, np.zeros(codes.size, np.uint64)).tolist()
            self.ids[top] = {text(k): s for k, s in zip(codes.tolist(), seq)}
        spelled = set(c.link_spelled.tolist())
        self.links = []         # (src, raw key, target or None, poison Link or None, spelled out)
        for i, (src, tgt) in enumerate(zip(c.link_src.tolist(), c.link_tgt.tolist())):
            self.links.append((text(src), c.raw(c.link_key, i), text(tgt) if tgt >= 0 else None,
                               c.link_errors.get(i), i in spelled))
        self.results = [(text(k), text(r), c.raw(c.result_value, i), c.result_errors.get(i))
                        for i, (k, r) in enumerate(zip(c.result_kid.tolist(), c.result_rid.tolist()))]
        self.pairs = {b"_byresult": [(text(r), text(k)) for r, k in zip(c.byresult_rid.tolist(),
                                                                       c.byresult_kid.tolist())],
                      b"_backlinks": [(text(t), text(s)) for t, s in zip(c.backlink_tgt.tolist(),
                                                                        c.backlink_src.tolist())]}

    def merge(self, kind: bytes, name: bytes, entries: list[tuple[bytes, bytes]]) -> None:
        """Entry by entry, never overriding what is in place."""
        self.ids[kind].setdefault(name, 0)
        label = name.decode("utf-8", "replace")         # for the decoders' messages only
        if kind == b"_links":
            have = {raw for src, raw, *_ in self.links if src == name}
            for k, _ in entries:
                if k not in have:
                    have.add(k)
                    ln = decode_link_key(label, k)
                    target = k[k.index(b"@") + 1:] if ln.target else None
                    self.links.append((name, k, target, ln if ln.error else None, False))
        elif kind == b"_result":
            have = {rid for kid, rid, *_ in self.results if kid == name}
            for k, v in entries:
                if k not in have:
                    have.add(k)
                    r = decode_result(label, k, v)
                    self.results.append((name, k, v, r if r.error else None))
        else:
            have = {b for a, b in self.pairs[kind] if a == name}
            for k, _ in entries:
                if k not in have:
                    have.add(k)
                    self.pairs[kind].append((name, k))

    def forget(self, top: bytes, name: bytes) -> None:
        if top == b"_links":
            used = any(src == name for src, *_ in self.links)
        elif top == b"_result":
            used = any(kid == name for kid, *_ in self.results)
        else:
            used = any(a == name for a, _ in self.pairs[top])
        if not used:
            self.ids[top].pop(name, None)

    def columns(self) -> CacheColumns:
        """Back into columns: every string interned into one buffer of its own."""
        buf = bytearray()
        code: dict[bytes, int] = {}
        offs: list[int] = []
        lens: list[int] = []

        def intern(b: bytes) -> int:
            k = code.get(b)
            if k is None:
                k = code[b] = len(offs)
                offs.append(len(buf))
                lens.append(len(b))
                buf.extend(b)
            return k
        tops = (b"_links", b"_result", b"_byresult", b"_backlinks")
        ids = [np.array([intern(k) for k in self.ids[t]], _I64) for t in tops]
        nothing = np.zeros(0, _I64)
        c = CacheColumns(names=Names(np.zeros(0, np.uint8), nothing, nothing), top=self.top,
                         foreign_top=self.foreign_top, anomalies=self.anomalies)      # the names come last
        c.links_ids, c.results_ids, c.byresult_ids, c.backlinks_ids = ids
        c.id_sequences = {t: np.array(list(self.ids[t].values()), np.uint64) for t in tops}
        c.link_src = np.array([intern(r[0]) for r in self.links], _I64)
        c.link_tgt = np.array([-1 if r[2] is None else intern(r[2]) for r in self.links], _I64)
        c.link_errors = {i: r[3] for i, r in enumerate(self.links) if r[3] is not None}
        c.link_spelled = np.array([i for i, r in enumerate(self.links) if r[4]], _I64)
        c.result_kid = np.array([intern(r[0]) for r in self.results], _I64)
        c.result_rid = np.array([intern(r[1]) for r in self.results], _I64)
        c.result_errors = {i: r[3] for i, r in enumerate(self.results) if r[3] is not None}
        c.byresult_rid, c.byresult_kid = (np.array([intern(p[j]) for p in self.pairs[b"_byresult"]], _I64)
                                          for j in (0, 1))
        c.backlink_tgt, c.backlink_src = (np.array([intern(p[j]) for p in self.pairs[b"_backlinks"]], _I64)
                                          for j in (0, 1))
        c.link_key = _append(buf, [r[1] for r in self.links])
        c.result_value = _append(buf, [r[2] for r in self.results])
        buf.extend(bytes(16 - len(buf) % 8))     # whole 8-byte words, as a mapped file has (Gather.prefix8)
        data = np.frombuffer(bytes(buf), np.uint8)
        c.names = Names(data, np.array(offs, _I64), np.array(lens, _I64))
        return c


def _append(buf: bytearray, strings: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Append ``strings`` to ``buf``; their (offsets, lengths) there, as the columns keep raw keys and values."""
    offs = []
    for b in strings:
        offs.append(len(buf))
        buf.extend(b)
    return np.array(offs, _I64), np.array([len(b) for b in strings], _I64)


def rehome_history(db: Database, on_damage: OnDamage | None = None
                   ) -> tuple[dict[bytes, bytes], set[tuple[tuple, bytes]]]:
    """Build records a torn history.db left outside `_records` (a salvage puts them in lost+found): pairs
    whose value decodes as a BuildHistoryRecord naming its own key. Returns the records `_records` lacks,
    and where each taken pair sits (exact copies of records in place are taken too: they add nothing).

    Strict by default (a repair plans on a sound store); with ``on_damage`` (fsck's H3 on a torn store) the
    walk reads past damage and reports each part it skips there."""
    tree = db.tree
    root = db.root()
    have: dict[bytes, bytes] = {}
    item = tree.get(root, b"_records")
    if item is not None and item.is_bucket:
        records = tree.open(root, item, on_damage)
        if records is not None:
            have = {it.key: db.value(it) for it in tree.items(records, on_damage=on_damage) if not it.is_bucket}
    found: dict[bytes, bytes] = {}
    where: set[tuple[tuple, bytes]] = set()
    for parent, child, it in tree.walk(root, on_damage=on_damage):
        path = parent.path
        if child is not None or not path or path[0] in (b"_records", b"_version") or any(map(_FREED.match, path)):
            continue
        value = db.value(it)
        rec = decode_record(it.key, value)
        if rec.decode_error is not None or rec.ref is None or rec.ref.encode() != it.key:
            continue
        if have.get(it.key, value) != value or found.get(it.key, value) != value:
            continue          # a different version of a record: not ours to choose, it stays where it is
        if it.key not in have:
            found[it.key] = value
        where.add((path, it.key))
    return found, where


def apply_history(path: str, found: dict[bytes, bytes], where: set[tuple[tuple, bytes]],
                  report: dict | None = None) -> str:
    """Write the history.db with ``found`` merged into `_records` and the taken pairs left out elsewhere,
    verify it, and swap it in (the one repair primitive, which writes the report); returns the backup's path."""
    return prepare_history(path, found, where).commit(report or {"operation": "history rehome"}).backup


def prepare_history(path: str, found: dict[bytes, bytes], where: set[tuple[tuple, bytes]], *,
                    check_holders: bool = True):
    """The repaired history.db written beside the original and verified, not yet swapped in."""
    from ..check import check_file
    from ..repair.replace import prepare
    from ..repair.rewrite import stream
    from ..write import BoltWriter
    from .history import check_history, load_history

    def write(new: str) -> None:
        with Database(path) as src, BoltWriter(new, page_size=src.page_size) as w:
            tree, root = src.tree, src.root()
            tops = {it.key: it for it in tree.items(root) if it.is_bucket}
            for name in sorted(set(tops) | {b"_records"}):
                child = tree.child(root, tops[name]) if name in tops else None
                w.begin_bucket(name, child.sequence if child is not None else 0)
                if name == b"_records":
                    records = dict(found)
                    if child is not None:
                        records.update({it.key: src.value(it) for it in tree.items(child) if not it.is_bucket})
                    for k in sorted(records):
                        w.put(k, records[k])
                elif child is not None:
                    stream(src, child, w, lambda p, k, is_bucket: is_bucket or (p, k) not in where)
                w.end_bucket()

    def verify(new: str) -> str | None:
        with Database(new) as db:
            bad = check_history(load_history(db), new)
        return None if check_file(new, revert=False).clean and not bad else "history records still misplaced"

    return prepare(path, write, verify, check_holders=check_holders)
