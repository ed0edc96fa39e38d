"""cache.db read a chunk of the structural pass at a time, while the chunk's pages are resident.

The structural pass (TreeScan) hands every batch of leaf elements it reads to ``on_leaves``. A reader
that kept the elements' file ranges to go back to the bytes later made the pass keep the whole file
mapped (RSS = the file) and then faulted it through again; here everything that needs the bytes is done
while they are at hand: the element is placed in the bucket it belongs to (a top-level bucket, an id
bucket, one of its entries), the strings that name ids are hashed and interned (storage/strings.py
``Interner``: each distinct string copied out once), link keys are matched against their layouts
(linkkeys.py) and results against the JSON Go writes. What is kept is codes, hashes and file offsets,
and the pass lets the pages go as it does for a plain check. Entries not in the shape BuildKit writes
(poison keys, odd results, anomalies) are copied out as bytes and decoded at the end, exactly.

The bucket an element sits in is known when its chunk arrives: the pass goes a tree level at a time and
numbers a bucket when its parent's leaf is read, before any of the bucket's own leaves (``buckets_since``).
"""
from __future__ import annotations

import re

import numpy as np

from ..schemas import BUCKET_LEAF_FLAG
from ..storage.strings import Interner, by_length, chunks, rows_at
from .cachedb import TOP_BUCKETS, Anomaly, CacheResult, Link, decode_result
from .linkkeys import link_layouts, slow_link

_I64 = np.int64
_LINKS, _RESULT_TOP, _BYRESULT, _BACKLINKS = (TOP_BUCKETS.index(n) for n in
                                               (b"_links", b"_result", b"_byresult", b"_backlinks"))
# the lists the strings are interned in, in the order codes are numbered (as cachecolumns always had them):
# the id bucket names of each top-level bucket, link targets, then the keys of _result, _byresult, _backlinks
ID_LIST = {_LINKS: 0, _RESULT_TOP: 1, _BYRESULT: 2, _BACKLINKS: 3}
TARGETS, RESULT_KEYS, BYRESULT_KEYS, BACKLINK_KEYS = 4, 5, 6, 7

_PLAIN = rb'[\x20\x21\x23-\x5b\x5d-\x7e]*'       # JSON string content that needs no decoding
RESULT = re.compile(rb'\{"CreatedAt":"(' + _PLAIN + rb')","ID":"(' + _PLAIN + rb')"\}')


_BYTES_A_STRING = 700      # of a cache.db's file a distinct id takes in BuildKit-like stores: the table's size


class _Column:
    """An integer column appended to a chunk at a time."""

    def __init__(self, dtype):
        self.parts: list[np.ndarray] = []
        self.dtype = dtype
        self.size = 0

    def add(self, a) -> None:
        a = np.asarray(a, self.dtype)
        self.parts.append(a)
        self.size += a.size

    def take(self) -> np.ndarray:
        out = np.concatenate(self.parts) if self.parts else np.zeros(0, self.dtype)
        self.parts = [out]
        return out


class CacheLeaves:
    """The ``on_leaves`` reader of a cache.db (see the module). Stops reading as soon as the root bucket
    shows the file is not a cache.db."""

    keeps_pages = False        # TreeScan: every byte needed is read during the call; pages may be released

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """Forget what was read (a read of a live file that did not settle is read again)."""
        self.scan = None
        self.wanted = True
        self.strings = Interner()
        self.seen = 1                                   # buckets placed (bucket 0: the root)
        self.level = np.zeros(1024, np.int8)            # per bucket: 1 a top-level bucket BuildKit uses, 2 an id
        self.top_of = np.full(1024, -1, np.int8)        # per bucket (levels 1, 2): index into TOP_BUCKETS
        self.id_index = np.full(1024, -1, np.int32)     # per id bucket: its index among its top's ids
        self.by_name: dict[bytes, list[int]] = {}       # top-level bucket name -> its buckets
        self.pending: tuple | None = None       # the last chunk's id bucket entries: (key start, code, sequence)
        self.ids = [_Column(np.int32) for _ in TOP_BUCKETS]         # per top: its ids' provisional codes
        self.sequences = [_Column(np.uint64) for _ in TOP_BUCKETS]
        self.c1: list[bytes] = []
        self.c2: list[tuple] = []                       # (top, key)
        self.c3: list[tuple] = []                       # (top, id bucket, key)
        self.c7: list[tuple] = []                       # (top, id bucket, key, value length)
        self.cols = {name: _Column(dt) for name, dt in (
            ("link_owner", np.int32), ("link_off", _I64), ("link_len", np.int32), ("link_tgt", np.int32),
            ("link_spelled", _I64), ("result_owner", np.int32), ("result_rid", np.int32), ("result_voff", _I64),
            ("result_vlen", np.int32), ("byresult_owner", np.int32), ("byresult_kid", np.int32),
            ("backlink_owner", np.int32), ("backlink_src", np.int32))}
        self.slow_links: list[tuple] = []               # (link index, owner, key)
        self.odd_results: list[tuple] = []              # (result index, owner, key, value)

    # -- the pass ---------------------------------------------------------------------------------

    def __call__(self, scan, bucket, flags, ks, klen, ve) -> None:
        if self.scan is None:
            root = np.flatnonzero(bucket == 0)
            names = {bytes(scan.data[int(ks[i]):int(ks[i] + klen[i])]) for i in root}
            self.wanted = not root.size or bool(names & set(TOP_BUCKETS))
            self.strings = Interner(scan.g.size // _BYTES_A_STRING)
        self.scan = scan
        self._place(scan)
        self.pending = None
        if not self.wanted:
            return
        u8, size = scan.g.u8, scan.g.size
        b = np.asarray(bucket, _I64)
        ks, klen = np.asarray(ks, _I64), np.asarray(klen, _I64)
        vlen = np.asarray(ve, _I64) - ks - klen
        is_bucket = (flags & BUCKET_LEAF_FLAG) != 0
        lvl, top = self.level[b], self.top_of[b]

        def key(i) -> bytes:
            return u8[int(ks[i]):int(ks[i] + klen[i])].tobytes()

        self.c1 += [key(i) for i in np.flatnonzero((b == 0) & ~is_bucket).tolist()]
        one = lvl == 1
        self.c2 += [(int(top[i]), key(i)) for i in np.flatnonzero(one & ~is_bucket).tolist()]
        ids = np.flatnonzero(one & is_bucket)             # id buckets, numbered by the pass after this call
        if ids.size:
            at = ks[ids] + klen[ids] + 8                   # the bucket header after the name: root, then sequence
            ok = at + 8 <= size
            seq = np.zeros(ids.size, np.uint64)
            seq[ok] = rows_at(u8, at[ok], 8).copy().view("<u8").ravel()
            self.pending = (ks[ids], self.strings.add(u8, ks[ids], klen[ids]), seq)
        two = lvl == 2
        for i in np.flatnonzero(two & is_bucket).tolist():
            self.c3.append((int(top[i]), int(b[i]), key(i)))
        plain = two & ~is_bucket
        for i in np.flatnonzero(plain & (vlen > 0) & (top != _RESULT_TOP)).tolist():
            self.c7.append((int(top[i]), int(b[i]), key(i), int(vlen[i])))
        for j, read in ((_LINKS, self._links), (_RESULT_TOP, self._results), (_BYRESULT, self._pairs),
                        (_BACKLINKS, self._pairs)):
            e = np.flatnonzero(plain & (top == j))
            if e.size:
                read(j, u8, size, self.id_index[b[e]].astype(_I64), ks[e], klen[e], vlen[e])

    def _place(self, scan) -> None:
        """Place the buckets the pass has numbered since the last call: top-level ones by name, id buckets
        under their top (their names were interned from the last chunk, while it was resident)."""
        nb = scan.nbuckets
        if nb == self.seen:
            return
        parent, koff, klen = scan.buckets_since(self.seen)
        new = np.arange(self.seen, nb, dtype=_I64)
        if nb > self.level.size:
            cap = max(2 * self.level.size, nb)
            self.level = _resized(self.level, cap, 0)
            self.top_of = _resized(self.top_of, cap, -1)
            self.id_index = _resized(self.id_index, cap, -1)
        self.seen = nb
        for k in np.flatnonzero(parent == 0).tolist():
            o = int(koff[k])
            name = scan.g.u8[o:o + int(klen[k])].tobytes()
            self.by_name.setdefault(name, []).append(int(new[k]))
            if name in TOP_BUCKETS:
                self.level[new[k]], self.top_of[new[k]] = 1, TOP_BUCKETS.index(name)
        under = np.flatnonzero(self.level[np.maximum(parent, 0)] == 1)
        pending = self.pending
        if not under.size:
            return
        b = new[under]
        self.level[b] = 2
        self.top_of[b] = tops = self.top_of[parent[under]]
        codes, seq = self._names(scan, koff[under], klen[under], pending)
        for j in np.unique(tops).tolist():
            mine = np.flatnonzero(tops == j)
            first = self.ids[j].size
            self.id_index[b[mine]] = first + np.arange(mine.size)
            self.strings.place(codes[mine], Interner.where(ID_LIST[j], first + np.arange(mine.size)))
            self.ids[j].add(codes[mine])
            self.sequences[j].add(seq[mine])

    def _names(self, scan, koff, klen, pending) -> tuple[np.ndarray, np.ndarray]:
        """Codes and sequences of id buckets, from the entries of the last chunk that named them (any the
        chunk did not have, never seen, are read from the file)."""
        codes = np.full(koff.size, -1, _I64)
        seq = np.zeros(koff.size, np.uint64)
        if pending is not None:
            starts, pcodes, pseq = pending
            order = np.argsort(starts, kind="stable")
            at = np.minimum(np.searchsorted(starts[order], koff), max(starts.size - 1, 0))
            hit = starts[order][at] == koff
            codes[hit], seq[hit] = pcodes[order][at][hit], pseq[order][at][hit]
        miss = np.flatnonzero(codes < 0)
        if miss.size:
            g = scan.g
            codes[miss] = self.strings.add(g.u8, koff[miss], klen[miss])
            at = koff[miss] + klen[miss] + 8
            ok = at + 8 <= g.size
            seq[miss[ok]] = rows_at(g.u8, at[ok], 8).copy().view("<u8").ravel()
        return codes, seq

    def _links(self, j, u8, size, owner, ks, klen, vlen) -> None:
        c = self.cols
        first = c["link_owner"].size
        pos = first + np.arange(ks.size)
        at, h1, h2, spelled = link_layouts(u8, size, ks, klen)
        fast = np.flatnonzero(at >= 0)
        tgt = np.full(ks.size, -1, _I64)
        t_off = ks[fast] + at[fast] + 1
        tgt[fast] = self.strings.add(u8, t_off, klen[fast] - at[fast] - 1, Interner.where(TARGETS, pos[fast]),
                                     (h1[fast], h2[fast]))
        for i in np.flatnonzero(at < 0).tolist():
            self.slow_links.append((int(pos[i]), int(owner[i]), u8[int(ks[i]):int(ks[i] + klen[i])].tobytes()))
        c["link_owner"].add(owner)
        c["link_off"].add(ks)
        c["link_len"].add(klen)
        c["link_tgt"].add(tgt)
        c["link_spelled"].add(pos[spelled])

    def _results(self, j, u8, size, owner, ks, klen, vlen) -> None:
        c = self.cols
        pos = c["result_owner"].size + np.arange(ks.size)
        c["result_owner"].add(owner)
        c["result_rid"].add(self.strings.add(u8, ks, klen, Interner.where(RESULT_KEYS, pos)))
        voff = ks + klen
        c["result_voff"].add(voff)
        c["result_vlen"].add(vlen)
        for i in np.flatnonzero(~in_go_form(u8, size, ks, klen, voff, vlen)).tolist():
            key = u8[int(ks[i]):int(voff[i])].tobytes()
            value = u8[int(voff[i]):int(voff[i] + vlen[i])].tobytes()
            m = RESULT.fullmatch(value)
            if m is None or m.group(2) != key:
                self.odd_results.append((int(pos[i]), int(owner[i]), key, value))

    def _pairs(self, j, u8, size, owner, ks, klen, vlen) -> None:
        prefix, keys = ("byresult", BYRESULT_KEYS) if j == _BYRESULT else ("backlink", BACKLINK_KEYS)
        own, kid = self.cols[prefix + "_owner"], self.cols[prefix + ("_kid" if j == _BYRESULT else "_src")]
        pos = own.size + np.arange(ks.size)
        own.add(owner)
        kid.add(self.strings.add(u8, ks, klen, Interner.where(keys, pos)))

    # -- the end ----------------------------------------------------------------------------------

    def finish(self) -> dict:
        """Everything read, as the columns take it: codes final, poison keys, odd results and anomalies
        decoded (see ``cachecolumns.columns_from_leaves``)."""
        if self.scan is not None:
            self._place(self.scan)
        ids = [x.take() for x in self.ids]
        c = {k: v.take() for k, v in self.cols.items()}
        self.ids, self.cols = [], {}        # each column once: popped below as it is made final

        def id_name(top: int, b: int) -> bytes:
            return self.strings.bytes(int(ids[top][self.id_index[b]]))

        def id_text(top: int, owner: int) -> str:
            return self.strings.bytes(int(ids[top][owner])).decode("utf-8", "replace")

        link_errors: dict[int, Link] = {}
        targets: list[bytes] = []
        with_target: list[int] = []
        for i, owner, key in self.slow_links:
            poison, at = slow_link(id_text(_LINKS, owner), key)
            if poison is not None:
                link_errors[i] = poison
            if at >= 0:
                targets.append(key[at + 1:])
                with_target.append(i)
        tgt = c.pop("link_tgt").astype(_I64)
        if targets:
            tgt[with_target] = self.strings.add_bytes(targets, Interner.where(TARGETS, with_target))
        result_errors: dict[int, CacheResult] = {}
        for i, owner, key, value in self.odd_results:
            r = decode_result(id_text(_RESULT_TOP, owner), key, value)
            if r.error:
                result_errors[i] = r
        anomalies = [Anomaly("C1", (), k, "plain key at the top level") for k in self.c1]
        anomalies += [Anomaly("C2", (TOP_BUCKETS[t],), k, "level-2 entry is a plain value, not a bucket")
                      for t, k in self.c2]
        anomalies += [Anomaly("C3", (TOP_BUCKETS[t], id_name(t, b)), k, "level-3 entry is a bucket")
                      for t, b, k in self.c3]
        anomalies += [Anomaly("C7", (TOP_BUCKETS[t], id_name(t, b)), k, f"value of {n} bytes, expected empty")
                      for t, b, k, n in self.c7]
        rank, names = self.strings.finish()
        self.strings = Interner()           # the table and the per-string arrays go before the columns are made

        def final(codes: np.ndarray) -> np.ndarray:
            return rank[codes]
        has = tgt >= 0
        tgt[has] = rank[tgt[has]]
        out = dict(
            names=names, anomalies=anomalies, by_name=self.by_name,
            links_ids=final(ids[_LINKS]), results_ids=final(ids[_RESULT_TOP]), byresult_ids=final(ids[_BYRESULT]),
            backlinks_ids=final(ids[_BACKLINKS]),
            link_owner=c.pop("link_owner"), link_tgt=tgt, link_key=(c.pop("link_off"), c.pop("link_len")),
            link_errors=link_errors, link_spelled=c.pop("link_spelled"),
            result_owner=c.pop("result_owner"), result_rid=final(c.pop("result_rid")),
            result_value=(c.pop("result_voff"), c.pop("result_vlen")), result_errors=result_errors,
            byresult_owner=c.pop("byresult_owner"), byresult_kid=final(c.pop("byresult_kid")),
            backlink_owner=c.pop("backlink_owner"), backlink_src=final(c.pop("backlink_src")),
            id_sequences={TOP_BUCKETS[j]: self.sequences[j].take() for j in (_LINKS, _RESULT_TOP, _BYRESULT,
                                                                            _BACKLINKS)},
            data=self.scan.g.u8 if self.scan is not None else np.zeros(8, np.uint8))
        self.reset()            # what was kept to get here (and the pass itself) can go before the checks run
        return out


def _resized(a: np.ndarray, n: int, fill) -> np.ndarray:
    out = np.full(n, fill, a.dtype)
    out[:a.size] = a
    return out


_PLAIN_BYTE = np.zeros(256, bool)               # the bytes of _PLAIN
_PLAIN_BYTE[[0x20, 0x21]] = True
_PLAIN_BYTE[0x23:0x5c] = True
_PLAIN_BYTE[0x5d:0x7f] = True
_CREATED, _ID, _END = (np.frombuffer(b, np.uint8) for b in (b'{"CreatedAt":"', b'","ID":"', b'"}'))


def in_go_form(u8: np.ndarray, size: int, key_off, key_len, val_off, val_len) -> np.ndarray:
    """Per result: its value is the JSON Go writes naming its own key (what ``RESULT`` matches with the key as
    its ID), decided a (value length, key length) group at a time on rows of bytes. False only means "look
    closer": those go through the regex and ``decode_result``."""
    kl, vl = np.asarray(key_len, _I64), np.asarray(val_len, _I64)
    fixed = _CREATED.size + _ID.size + _END.size
    ok = (vl - kl >= fixed) & (val_off + vl <= size) & (key_off + kl <= size)
    out = np.zeros(kl.size, bool)
    idx = np.flatnonzero(ok)
    for pair, group in by_length(vl[idx] * (1 << 32) + kl[idx]):
        v_len, k_len = pair >> 32, pair & 0xFFFFFFFF
        for rows in chunks(idx[group], v_len + k_len):
            v = rows_at(u8, val_off[rows], v_len)
            k = rows_at(u8, key_off[rows], k_len)
            c = v_len - fixed - k_len                  # the CreatedAt string's length
            at = _CREATED.size + c
            fits = (v[:, :_CREATED.size] == _CREATED).all(1) & _PLAIN_BYTE[v[:, _CREATED.size:at]].all(1)
            fits &= (v[:, at:at + _ID.size] == _ID).all(1) & (v[:, at + _ID.size:v_len - _END.size] == k).all(1)
            fits &= _PLAIN_BYTE[k].all(1) & (v[:, v_len - _END.size:] == _END).all(1)
            out[rows] = fits
    return out
