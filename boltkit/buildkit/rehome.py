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

from ..storage import Database
from ..storage.tree import OnDamage
from .cachedb import TOP_BUCKETS, CacheStore, decode_link_key, decode_result
from .history import decode_record
from .plan import Change

_FREED = re.compile(rb"^page-\d+-free$")
_LOST_LEAF = re.compile(rb"^page-\d+(-free|-doubtful)?$")     # a salvage label, not an id
_MAX_DEPTH = 32       # BuildKit's ids sit three levels down, a salvage adds a few: deeper is not theirs


def kind_of(name: bytes, entries: list[tuple[bytes, bytes]]) -> bytes | None:
    """Which top-level bucket an id bucket with these plain entries belongs to, or None when its shape
    says nothing certain (empty, mixed, or not BuildKit's)."""
    if not entries or _LOST_LEAF.match(name) or name in TOP_BUCKETS:
        return None
    text = name.decode("utf-8", "replace")
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


def rehome(db: Database, store: CacheStore) -> tuple[list[Change], set[tuple[bytes, ...]]]:
    """Merge id buckets found away from their top-level bucket into ``store``. Returns the changes and
    the paths of the buckets taken (to leave out when the rest of a foreign bucket is carried over).

    The store must be structurally sound (the planners refuse a damaged one first: salvage it): the read is
    strict, so damage raises CorruptionError instead of a plan that acts as if what it hides were not there."""
    tree = db.tree
    changes: list[Change] = []
    taken: set[tuple[bytes, ...]] = set()

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
            _merge(store, kind, name.decode("utf-8", "replace"), plain)
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
        for entry in tree.items(bucket):      # old copies nested in a top (C3)
            if not entry.is_bucket:
                continue
            sub = tree.child(bucket, entry)
            inner = [i for i in tree.items(sub) if i.is_bucket]
            if not inner:
                continue
            hint = entry.key if entry.key in TOP_BUCKETS else None
            for item in inner:
                visit(tree.child(sub, item), "C3", hint)
            name = entry.key.decode("utf-8", "replace")
            store.anomalies = [a for a in store.anomalies
                               if not (a.code == "C3" and a.bucket == (top.key, entry.key)
                                       and (*a.bucket, a.key) in taken)]
            _forget_container(store, top.key, name)
    return changes, taken


def _merge(store: CacheStore, kind: bytes, name: str, entries: list[tuple[bytes, bytes]]) -> None:
    if kind == b"_links":
        have = {ln.raw for ln in store.links.setdefault(name, [])}
        store.links[name].extend(decode_link_key(name, k) for k, _ in entries if k not in have)
    elif kind == b"_result":
        ids = {r.result_id for r in store.results.setdefault(name, [])}
        store.results[name].extend(r for r in (decode_result(name, k, v) for k, v in entries)
                                   if r.result_id not in ids)
    elif kind == b"_byresult":
        store.byresult.setdefault(name, set()).update(k.decode("utf-8", "replace") for k, _ in entries)
    else:
        store.backlinks.setdefault(name, set()).update(k.decode("utf-8", "replace") for k, _ in entries)


def _forget_container(store: CacheStore, top: bytes, name: str) -> None:
    """A level-2 bucket that only held other buckets is a container, not an id: it was decoded as an id
    with no entries, and must not come back as one."""
    tables: dict[bytes, dict] = {b"_links": store.links, b"_result": store.results, b"_byresult": store.byresult,
                                 b"_backlinks": store.backlinks}
    table = tables[top]
    if not table.get(name):
        table.pop(name, None)


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
