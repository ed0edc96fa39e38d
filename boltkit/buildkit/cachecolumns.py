"""cache.db in columns: every id bucket and every level-3 entry, read in bulk off the mapped file.

A BuildKit cache.db holds ~200k ids spread over four buckets, one nested (almost always inline) bucket
per id and a few entries in each. Decoded entry by entry into Python objects that costs ~10 s, far more
than the structural check of the same file. Here the element tables of all inline buckets are gathered
at once, every string that names an id is interned to an integer, and link keys in Go's canonical form
are recognised by array operations; the semantic checks then become set operations on integer arrays
(cachecheck.py). Entries not in the shape BuildKit writes take the exact slow path of cachedb.py, so the
columns say the same as the object decoder, only sooner.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..check.gather import Gather
from ..errors import CorruptionError
from ..schemas import BRANCH_ELEMENT, BUCKET_HEADER, BUCKET_HEADER_SIZE, BUCKET_LEAF_FLAG, LEAF_ELEMENT, PAGE_HEADER, PageFlag
from ..storage import Database
from .cachedb import _CANONICAL, TOP_BUCKETS, Anomaly, CacheResult, Link, decode_link_key, decode_result

_I64 = np.int64


@dataclass
class Entries:
    """One top-level bucket: its id buckets (names as file ranges) and their level-3 entries."""
    name_off: np.ndarray
    name_len: np.ndarray
    owner: np.ndarray            # per entry: index into the names
    key_off: np.ndarray
    key_len: np.ndarray
    val_off: np.ndarray
    val_len: np.ndarray


@dataclass
class Names:
    """Interned strings: code -> one occurrence in the file. Codes are dense, numbered in order of first
    appearance (ids first as _links bucket names, which the file keeps sorted)."""
    data: np.ndarray              # the file as bytes; a view keeps the mapping alive after the Database closes
    off: np.ndarray
    length: np.ndarray

    def __len__(self) -> int:
        return int(self.off.size)

    def bytes(self, code) -> bytes:
        o = int(self.off[code])
        return self.data[o:o + int(self.length[code])].tobytes()

    def str(self, code) -> str:
        return self.bytes(code).decode("utf-8", "replace")


@dataclass
class CacheColumns:
    """Everything the semantic check needs, as integer codes into ``names``."""
    names: Names
    top: set[bytes] = field(default_factory=set)
    foreign_top: list[bytes] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    links_ids: np.ndarray = None        # codes of the _links/<id> buckets
    results_ids: np.ndarray = None
    byresult_ids: np.ndarray = None     # codes of result ids
    backlinks_ids: np.ndarray = None
    link_src: np.ndarray = None         # per link key
    link_tgt: np.ndarray = None         # -1: no readable target
    link_key: tuple = None              # (offsets, lengths) of the raw link keys
    link_errors: dict[int, Link] = field(default_factory=dict)      # link index -> poison key
    result_kid: np.ndarray = None       # per result
    result_rid: np.ndarray = None
    result_errors: dict[int, CacheResult] = field(default_factory=dict)
    byresult_rid: np.ndarray = None     # per _byresult entry
    byresult_kid: np.ndarray = None
    backlink_tgt: np.ndarray = None     # per _backlinks entry
    backlink_src: np.ndarray = None

    def raw(self, off_len: tuple, i: int) -> bytes:
        o = int(off_len[0][i])
        return self.names.data[o:o + int(off_len[1][i])].tobytes()


def load_cache_columns(db: Database, on_damage=None) -> CacheColumns:
    """Read a cache.db into columns. Structural damage is skipped through ``on_damage`` (or raised)."""
    g = Gather(db.data, db.file_size)
    tree = db.tree
    root = db.root()
    cols = CacheColumns(names=None)
    tops: dict[bytes, Entries] = {}
    for top in tree.items(root, on_error=on_damage):
        if not top.is_bucket:
            cols.anomalies.append(Anomaly("C1", (), top.key, "plain key at the top level"))
        elif top.key not in TOP_BUCKETS:
            cols.foreign_top.append(top.key)
        else:
            cols.top.add(top.key)
            try:
                tops[top.key] = _read_top(db, g, tree.child(root, top), top.key, cols.anomalies, on_damage)
            except CorruptionError as e:
                if on_damage is None:
                    raise
                on_damage(e)
    empty = np.zeros(0, _I64)
    for name in TOP_BUCKETS:
        tops.setdefault(name, Entries(*([empty] * 7)))
    links, results, byresult, backlinks = (tops[n] for n in (b"_links", b"_result", b"_byresult", b"_backlinks"))

    has_tgt, tgt_off, tgt_len, cols.link_errors = _link_targets(db, g, links)
    cols.result_errors = _result_errors(db, results)
    sources = [
        (links.name_off, links.name_len), (results.name_off, results.name_len),
        (byresult.name_off, byresult.name_len), (backlinks.name_off, backlinks.name_len),
        (tgt_off, tgt_len), (results.key_off, results.key_len), (byresult.key_off, byresult.key_len),
        (backlinks.key_off, backlinks.key_len),
    ]
    codes, cols.names = intern(g, [s[0] for s in sources], [s[1] for s in sources])
    (cols.links_ids, cols.results_ids, cols.byresult_ids, cols.backlinks_ids, tcodes,
     cols.result_rid, cols.byresult_kid, cols.backlink_src) = codes
    cols.link_src = cols.links_ids[links.owner]
    cols.link_tgt = np.full(links.owner.size, -1, _I64)
    cols.link_tgt[has_tgt] = tcodes
    cols.link_key = (links.key_off, links.key_len)
    cols.result_kid = cols.results_ids[results.owner]
    cols.byresult_rid = cols.byresult_ids[byresult.owner]
    cols.backlink_tgt = cols.backlinks_ids[backlinks.owner]
    return cols


def _at(db: Database, off, length, i) -> bytes:
    o = int(off[i])
    return bytes(db.data[o:o + int(length[i])])


def _read_top(db: Database, g: Gather, bucket, top: bytes, anomalies: list, on_damage) -> Entries:
    """The id buckets of one top-level bucket and their plain entries; entries of the wrong shape become
    anomalies (C2 plain level-2 value, C3 level-3 bucket, C7 non-empty value where BuildKit stores none)."""
    tree = db.tree
    flags, ks, ke, ve = _leaf_entries(db, g, bucket, on_damage)
    for i in np.flatnonzero((flags & BUCKET_LEAF_FLAG) == 0):
        anomalies.append(Anomaly("C2", (top,), _at(db, ks, ke - ks, i), "level-2 entry is a plain value, not a bucket"))
    sub = np.flatnonzero(flags & BUCKET_LEAF_FLAG)
    ks, ke, ve = ks[sub], ke[sub], ve[sub]

    def damage(i, message, offset):
        e = CorruptionError(message, offset=int(offset), path=(top, _at(db, ks, ke - ks, i)))
        if on_damage is None:
            raise e
        on_damage(e)

    vlen = ve - ke
    for i in np.flatnonzero(vlen < BUCKET_HEADER_SIZE):
        damage(i, f"bucket value of {int(vlen[i])} bytes is shorter than a bucket header", ke[i])
    ok = np.flatnonzero(vlen >= BUCKET_HEADER_SIZE)
    hdr = g.records(BUCKET_HEADER.dtype, ke[ok])
    inline = ok[hdr["root"] == 0]
    paged = ok[hdr["root"] != 0]

    # inline buckets: the fake leaf page right after the bucket header
    page = ke[inline] + BUCKET_HEADER_SIZE
    room = ve[inline] - page
    for i in inline[room < PAGE_HEADER.size]:
        damage(i, f"inline bucket value too short for a page header ({int(ve[i] - ke[i] - BUCKET_HEADER_SIZE)} bytes)",
               ke[i] + BUCKET_HEADER_SIZE)
    keep = room >= PAGE_HEADER.size
    inline, page, room = inline[keep], page[keep], room[keep]
    ph = g.records(PAGE_HEADER.dtype, page)
    count = ph["count"].astype(_I64)
    for i in inline[ph["flags"] != PageFlag.LEAF]:
        damage(i, "inline bucket page is not a leaf", ke[i] + BUCKET_HEADER_SIZE + 8)
    for i in inline[(ph["flags"] == PageFlag.LEAF) & (PAGE_HEADER.size + count * LEAF_ELEMENT.size > room)]:
        damage(i, "elements do not fit in the inline bucket page", ke[i] + BUCKET_HEADER_SIZE + 10)
    keep = (ph["flags"] == PageFlag.LEAF) & (PAGE_HEADER.size + count * LEAF_ELEMENT.size <= room)
    inline, page, count = inline[keep], page[keep], count[keep]

    total = int(count.sum())
    owner = np.repeat(inline, count)
    first = np.repeat(page + PAGE_HEADER.size - (np.cumsum(count) - count) * LEAF_ELEMENT.size, count)
    eoff = first + np.arange(total, dtype=_I64) * LEAF_ELEMENT.size
    el = g.records(LEAF_ELEMENT.dtype, eoff)
    eks = eoff + el["pos"]
    eke = eks + el["ksize"]
    eve = eke + el["vsize"]
    efl = el["flags"].astype(_I64)
    broken = np.unique(owner[eve > ve[owner]])
    for i in broken:
        damage(i, "inline bucket element: key/value extends past the end of its page", ke[i])
    if broken.size:
        good = ~np.isin(owner, broken)
        owner, eks, eke, eve, efl = owner[good], eks[good], eke[good], eve[good], efl[good]

    extra, opened = [], [inline]          # ids that exist, even where their entries are damaged
    for i in paged:
        x = _paged_entries(db, g, tree, top, i, ks, ke, on_damage)
        if x is not None:
            opened.append(np.array([i], _I64))
            extra.append(x)
    present = np.sort(np.concatenate(opened))
    if extra:
        owner, efl, eks, eke, eve = (np.concatenate([a] + [x[j] for x in extra])
                                     for j, a in enumerate((owner, efl, eks, eke, eve)))

    # level-3 shape: buckets (C3) and non-empty values where BuildKit writes none (C7)
    for j in np.flatnonzero(efl & BUCKET_LEAF_FLAG):
        anomalies.append(Anomaly("C3", (top, _at(db, ks, ke - ks, owner[j])), _at(db, eks, eke - eks, j),
                                 "level-3 entry is a bucket"))
    plain = (efl & BUCKET_LEAF_FLAG) == 0
    if top != b"_result":
        for j in np.flatnonzero(plain & (eve > eke)):
            anomalies.append(Anomaly("C7", (top, _at(db, ks, ke - ks, owner[j])), _at(db, eks, eke - eks, j),
                                     f"value of {int(eve[j] - eke[j])} bytes, expected empty"))
    owner, eks, eke, eve = owner[plain], eks[plain], eke[plain], eve[plain]

    # renumber owners to positions among the ids that exist, in key order
    return Entries(ks[present], (ke - ks)[present], np.searchsorted(present, owner), eks, eke - eks, eke, eve - eke)


def _leaf_entries(db: Database, g: Gather, bucket, on_damage):
    """(flags, key_start, key_end, value_end) of every leaf element of a paged bucket, the tree read a
    level at a time: one gather per level instead of Python per page. Damaged pages (the page reader's
    own checks, repeated references) are reported through ``on_damage`` and skipped with their subtree."""
    pager = db.pager
    if bucket.inline:
        try:
            return pager.leaf_arrays(bucket.node)
        except CorruptionError as e:
            if on_damage is None:
                raise
            on_damage(e)
            return (np.zeros(0, _I64),) * 4
    ps = pager.page_size
    seen = np.zeros(pager.limit_pages, bool)
    leaves = []
    level = np.array([bucket.root], _I64)

    def damage(pgid, e=None):
        if e is None:
            try:
                pager.node(int(pgid))
                e = CorruptionError(f"page {int(pgid)} is referenced again (cycle or shared subtree)", pgid=int(pgid))
            except CorruptionError as err:
                e = err
        e.path = bucket.path
        if on_damage is None:
            raise e
        on_damage(e)

    while level.size:
        inside = (level >= 2) & (level < pager.limit_pages)
        hdr = g.records(PAGE_HEADER.dtype, np.where(inside, level, 0) * ps)
        good = inside & (hdr["id"] == level) & ((hdr["flags"] == PageFlag.LEAF) | (hdr["flags"] == PageFlag.BRANCH))
        good &= level + hdr["overflow"] < pager.limit_pages
        good &= PAGE_HEADER.size + hdr["count"].astype(_I64) * LEAF_ELEMENT.size <= (hdr["overflow"] + 1) * ps
        first = np.zeros(level.size, bool)
        first[np.unique(level, return_index=True)[1]] = True
        good &= first & ~seen[np.where(inside, level, 0)]
        for pgid in level[~good]:
            damage(pgid)
        level, hdr = level[good], hdr[good]
        seen[level] = True
        count = hdr["count"].astype(_I64)
        end = (level + hdr["overflow"] + 1) * ps
        is_leaf = hdr["flags"] == PageFlag.LEAF
        owner = np.repeat(np.arange(level.size), count)
        eoff = np.repeat(level * ps + PAGE_HEADER.size - (np.cumsum(count) - count) * LEAF_ELEMENT.size, count) \
            + np.arange(owner.size, dtype=_I64) * LEAF_ELEMENT.size
        leaf_el = is_leaf[owner]
        el = g.records(LEAF_ELEMENT.dtype, eoff[leaf_el])
        lks = eoff[leaf_el] + el["pos"]
        lke = lks + el["ksize"]
        lve = lke + el["vsize"]
        lown = owner[leaf_el]
        br = g.records(BRANCH_ELEMENT.dtype, eoff[~leaf_el])
        bown = owner[~leaf_el]
        bke = eoff[~leaf_el] + br["pos"] + br["ksize"]
        broken = np.zeros(level.size, bool)
        broken[lown[lve > end[lown]]] = True
        broken[bown[bke > end[bown]]] = True
        broken |= ~is_leaf & (count == 0)
        for i in np.flatnonzero(broken):
            node = pager.node(int(level[i]))
            try:
                (pager.leaf_elements if node.is_leaf else pager.branch_elements)(node)
                e = CorruptionError("branch page with no elements", pgid=node.pgid, offset=node.base + 10)
            except CorruptionError as err:
                e = err
            damage(level[i], e)
        keep = ~broken[lown]
        leaves.append((el["flags"][keep].astype(_I64), lks[keep], lke[keep], lve[keep]))
        level = br["pgid"][~broken[bown]].astype(_I64)
    return tuple(np.concatenate(x) for x in zip(*leaves))


def _paged_entries(db: Database, g: Gather, tree, top: bytes, i, ks, ke, on_damage):
    """An id bucket big enough to have pages of its own (rare), read through the tree; None if it cannot
    be opened."""
    root, seq = BUCKET_HEADER.unpack_from(db.data, int(ke[i]))
    try:
        b = tree.bucket_at((top, _at(db, ks, ke - ks, i)), root, seq)
    except CorruptionError as e:
        if on_damage is None:
            raise
        on_damage(e)
        return None
    flags, eks, eke, eve = _leaf_entries(db, g, b, on_damage)
    return np.full(flags.size, i, _I64), flags, eks, eke, eve


# -- link keys -------------------------------------------------------------------------------------

_DIGIT = np.zeros(256, bool)
_DIGIT[ord("0"):ord("9") + 1] = True
_HEX = _DIGIT.copy()
_HEX[ord("a"):ord("f") + 1] = True
_SHAPE = np.arange(256, dtype=np.uint8)          # digits and lowercase hex fold into one byte: a layout
_SHAPE[_HEX] = ord("0")
_DIGEST_KINDS = (np.frombuffer(b"sha256:", np.uint8), np.frombuffer(b"random:", np.uint8))
_ROUNDS = 8


def _link_targets(db: Database, g: Gather, links: Entries):
    """Which link keys have a target, where it is, and the poison keys (C9/C17) with their reason.

    Keys in Go's canonical form are recognised a layout at a time: keys of one length and one digit/hex
    shape share a layout; one of them is matched by cachedb's canonical regex and the rest are compared
    with it column by column (literal bytes equal, digits where it has digits, hex where it has hex, no '@'
    in the target). Whatever no layout accepts is decoded by ``decode_link_key``, exactly.
    """
    off, length = links.key_off, links.key_len
    n = off.size
    at = np.full(n, -1, _I64)                        # offset of the '@' inside the key; -1 = slow path
    u8 = g.u8
    todo = np.flatnonzero((length >= 3) & (off + length <= g.size))
    for _ in range(_ROUNDS):
        if not todo.size:
            break
        shape = length[todo].astype(np.uint64)
        for k in range(3):
            w = g.prefix8(off[todo] + 8 * k, length[todo] - 8 * k)
            folded = _SHAPE[w.astype(">u8").view(np.uint8)].view(">u8").astype(np.uint64)
            shape = (shape ^ folded) * np.uint64(0x100000001B3)
        order = np.argsort(shape, kind="stable")
        _, starts = np.unique(shape[order], return_index=True)
        left = []
        for idx in np.split(todo[order], starts[1:]):
            n_len = int(length[idx[0]])
            o = int(off[idx[0]])
            m = _CANONICAL.fullmatch(bytes(db.data[o:o + n_len]))
            if m is None:
                left.append(idx[1:])
                continue
            rows = np.lib.stride_tricks.as_strided(u8, shape=(u8.size - n_len + 1, n_len), strides=(1, 1))[off[idx]]
            fits = _fits_layout(rows, m)
            at[idx[fits]] = m.start(5) - 1
            left.append(idx[~fits])
        todo = np.concatenate(left) if left else todo[:0]

    errors: dict[int, Link] = {}
    slow = np.flatnonzero(at < 0)
    for i in slow:
        o = int(off[i])
        key = bytes(db.data[o:o + int(length[i])])
        src = _at(db, links.name_off, links.name_len, links.owner[i]).decode("utf-8", "replace")
        link = decode_link_key(src, key)
        if link.error:
            errors[int(i)] = link
        if link.target:
            at[i] = key.index(b"@")
    has = at >= 0
    return has, off[has] + at[has] + 1, length[has] - at[has] - 1, errors


def _fits_layout(rows: np.ndarray, m) -> np.ndarray:
    """Rows (keys of one length) that have the layout of the canonical key matched by ``m``."""
    rep = rows[0]
    literal = np.ones(rows.shape[1], bool)
    fits = np.ones(rows.shape[0], bool)
    for grp in (1, 2):                                # Input, Output: decimal, no leading zero
        s, e = m.span(grp)
        if s >= 0:
            fits &= _DIGIT[rows[:, s:e]].all(1) & (rows[:, s] != ord("0"))
            literal[s:e] = False
    for grp in (3, 4):                                # Digest, Selector: sha256:/random: and 64 hex
        s, e = m.span(grp)
        if s >= 0:
            kind = rows[:, s:s + 7]
            fits &= (kind == _DIGEST_KINDS[0]).all(1) | (kind == _DIGEST_KINDS[1]).all(1)
            fits &= _HEX[rows[:, s + 7:e]].all(1)
            literal[s:e] = False
    s = m.start(5)
    fits &= (rows[:, s:] != ord("@")).all(1)
    literal[s:] = False
    fits &= (rows[:, literal] == rep[literal]).all(1)
    return fits


# -- results ---------------------------------------------------------------------------------------

_PLAIN = rb'[\x20\x21\x23-\x5b\x5d-\x7e]*'       # JSON string content that needs no decoding
_RESULT = re.compile(rb'\{"CreatedAt":"' + _PLAIN + rb'","ID":"(' + _PLAIN + rb')"\}')


def _result_errors(db: Database, results: Entries) -> dict[int, CacheResult]:
    """Results that do not decode, or whose JSON ID differs from their key (C4). The JSON Go writes is
    matched directly; anything else goes through ``decode_result``."""
    data = db.data
    errors: dict[int, CacheResult] = {}
    for i, (ko, kl, vo, vl) in enumerate(zip(results.key_off.tolist(), results.key_len.tolist(),
                                             results.val_off.tolist(), results.val_len.tolist())):
        key = data[ko:ko + kl]
        m = _RESULT.fullmatch(data[vo:vo + vl])
        if m is not None and m.group(1) == key:
            continue
        kid = _at(db, results.name_off, results.name_len, results.owner[i]).decode("utf-8", "replace")
        r = decode_result(kid, bytes(key), bytes(data[vo:vo + vl]))
        if r.error:
            errors[i] = r
    return errors


# -- interning -------------------------------------------------------------------------------------

def intern(g: Gather, offs: list, lens: list) -> tuple[list[np.ndarray], Names]:
    """Give every distinct byte string among the file ranges one code, the same code across all the
    lists; codes number the distinct strings in the order they first appear in the lists.

    Strings of one length are copied out as rows in one gather and hashed a word column at a time with
    two independent 64-bit hashes; the first groups them, the second confirms each group (a disagreement,
    never seen, makes us intern through a dict instead)."""
    off = np.concatenate(offs).astype(_I64) if offs else np.zeros(0, _I64)
    length = np.concatenate(lens).astype(_I64) if lens else np.zeros(0, _I64)
    h1 = np.empty(off.size, np.uint64)
    h2 = np.empty(off.size, np.uint64)
    for n, idx in _by_length(length):
        a = np.full(idx.size, n * 0x9E3779B97F4A7C15 % 2**64, np.uint64)
        b = ~a
        for col in _words(g, off[idx], n, -(-n // 8)).T:
            a = (a ^ col) * np.uint64(0x100000001B3)
            x = (b + col) * np.uint64(0xC2B2AE3D27D4EB4F)
            b = x ^ (x >> np.uint64(29))
        h1[idx] = a ^ (a >> np.uint64(31))
        h2[idx] = b
    _, first, inv = np.unique(h1, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    if (h2 != h2[first][inv]).any():
        first, inv = _intern_exactly(g, off, length)
    order = np.argsort(first)           # codes in order of first appearance: sorted runs of bucket keys
    rep_off, rep_len = off[first], length[first]
    rank = np.empty(order.size, _I64)
    rank[order] = np.arange(order.size, dtype=_I64)
    codes = rank[inv]
    bounds = np.cumsum([a.size for a in offs])[:-1]
    return np.split(codes, bounds), Names(g.u8, rep_off[order], rep_len[order])


def _by_length(length: np.ndarray):
    """(n, indices of the strings of length n) for each length present."""
    key = length.astype(np.uint16) if length.size and length.max() < 2**16 else length    # radix sort
    order = np.argsort(key, kind="stable")
    lengths, starts = np.unique(key[order], return_index=True)
    return zip(lengths.tolist(), np.split(order, starts[1:]))


def _words(g: Gather, off: np.ndarray, n: int, words: int) -> np.ndarray:
    """The strings of length ``n`` at ``off`` as rows of ``words`` big-endian u64, zero-padded."""
    buf = np.zeros((off.size, words * 8), np.uint8)
    if n:
        u8 = g.u8
        keep = min(n, words * 8)
        buf[:, :keep] = np.lib.stride_tricks.as_strided(u8, shape=(u8.size - n + 1, n), strides=(1, 1))[off][:, :keep]
    return buf.view(">u8")


def _intern_exactly(g: Gather, off, length):
    seen: dict[bytes, int] = {}
    first, inv = [], np.empty(off.size, _I64)
    for i, (o, n) in enumerate(zip(off.tolist(), length.tolist())):
        c = seen.setdefault(bytes(g.data[o:o + n]), len(seen))
        if c == len(first):
            first.append(i)
        inv[i] = c
    return np.array(first, _I64), inv
