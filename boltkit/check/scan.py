"""The whole-tree pass, level by level, in bulk.

Instead of visiting pages one at a time, each step takes the whole frontier — every page (or
inline bucket page) at the next depth — and reads headers, element tables, keys and bucket headers
for all of it with a handful of numpy gathers. Python runs per level and per *problem*, never per
key, which is what lets a pure-Python checker keep pace with bbolt's `tx.Check` while also checking
element bounds, inline buckets and key order. Breadth-first order cannot loop: a page is entered
once (a per-page reference map), and a second reference is reported as a cycle when the page is an
ancestor of the referrer, else as a multiple reference.

The reading itself (the frontier, a level's nodes, their elements as offsets, the 16-byte gathers) is
storage's (storage/levels.py, storage/gather.py); what is here is the judging done at each step of it.
"""
from __future__ import annotations

from bisect import bisect_left

import numpy as np

from ..schemas import (BRANCH_ELEMENT, BUCKET_HEADER, BUCKET_HEADER_SIZE, BUCKET_LEAF_FLAG, ELEMENT_SIZE,
                       LEAF_ELEMENT, PAGE_HEADER, PAGE_HEADER_SIZE, PageFlag)
from ..storage.pages import Pager, pages_in
from ..storage.gather import Gather, compare_keys
from ..storage.levels import (I64, NONE, STEP_WINDOWS, WINDOW_SHIFT, Frontier, Inline, Nodes, as_i64, chunks, expand,
                              rechunk, spans)
from .problems import Problem

ENTERED, SPANNED = 1, 2     # page reference map: entered as a node / covered by another page's overflow


class TreeScan:
    """One whole-tree pass under one meta; problems go to ``emit``; counts are kept on the object."""

    MAX_KEY_PROBLEMS_PER_PAGE = 5

    def __init__(self, db, meta, emit, *, quick: bool = False, refs: np.ndarray, freed: np.ndarray,
                 progress=None, on_leaves=None):
        self.db = db
        # on_leaves(scan, bucket, flags, key_start, key_len, value_end): every batch of leaf elements the
        # pass reads (damaged nodes already dropped), for readers that want the whole file's contents in
        # arrays without a second pass (the BuildKit cache.db check); the pages read are kept mapped for it
        # unless it says it reads all it needs during the call (``on_leaves.keeps_pages = False``)
        self.on_leaves = on_leaves
        self._keep_pages = on_leaves is not None and getattr(on_leaves, "keeps_pages", True)
        self.data = db.data
        self.meta = meta
        self.emit = emit
        self.quick = quick
        self.progress = progress
        self.ps = db.page_size
        self.hwm = meta.pgid
        self.limit = min(self.hwm, pages_in(db.file_size, self.ps))
        self.g = Gather(db.data, db.file_size)
        self.pager = Pager(db.data, db.file_size, self.ps, self.hwm)
        self.refs = refs
        self.freed = freed
        self.parent_of = np.full(self.limit, NONE, I64)
        # what is kept for a whole level or the whole pass is kept in 32-bit columns where the file allows it
        # (3.6M buckets at 1 GB): offsets under 4 GiB, and ids (pages, buckets: each needs 16 bytes of the file)
        # under 2^31; the steps work in 64 bits
        self._off_t = np.dtype(np.uint32) if db.file_size < 1 << 32 else np.dtype(I64)
        self._id_t = np.dtype(np.int32) if db.file_size >> 4 < 1 << 31 else np.dtype(I64)
        # bucket table: parent bucket, name offset, name length (bucket 0 = the root bucket)
        self._b_parent = [np.array([NONE], self._id_t)]
        self._b_koff = [np.zeros(1, self._off_t)]
        self._b_klen = [np.zeros(1, np.uint32)]
        self._b_cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.nbuckets = 1
        self.hidden: list[Problem] = []
        # the key range each node's parent gives it, as copies of the separator keys: the nodes of a level
        # read the keys of the level before from here (``_keys``), the next level's are gathered into
        # ``_next_keys`` as the branches are read (see _bound_keys)
        self._keys = _key_store([])
        self._next_keys: list[np.ndarray] = []
        self._next_size = 0
        # what the pass found
        self.buckets = 0
        self.inline_buckets = 0
        self.keys = 0          # leaf elements (sub-bucket entries included), as bbolt's KeyN
        self.pairs = 0         # plain key/value pairs
        self.pair_bytes = 0
        self.pages = 0

    # -- reporting helpers ------------------------------------------------------------------------

    def bucket_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per bucket id (0 = the root bucket): its parent bucket, and its name's offset and length."""
        if self._b_cache is None or len(self._b_cache[0]) < self.nbuckets:
            self._b_cache = (np.concatenate(self._b_parent).astype(I64), np.concatenate(self._b_koff).astype(I64),
                             np.concatenate(self._b_klen).astype(I64))
        return self._b_cache

    def buckets_since(self, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``bucket_table`` of the buckets numbered ``start`` and up: an ``on_leaves`` reader follows the table
        as the pass grows it (a bucket is numbered when its parent's leaf is read, after that leaf's
        ``on_leaves`` call and before any leaf of its own)."""
        parts: list[int] = []
        n = self.nbuckets
        for i in range(len(self._b_parent) - 1, -1, -1):
            if n <= start:
                break
            n -= self._b_parent[i].size
            parts.append(i)
        cut = start - n
        return tuple(np.concatenate([c[i] for i in reversed(parts)])[cut:].astype(I64)      # type: ignore[return-value]
                     if parts else np.zeros(0, I64) for c in (self._b_parent, self._b_koff, self._b_klen))

    def path(self, b: int) -> tuple[bytes, ...]:
        parent, koff, klen = self.bucket_table()
        out = []
        b = int(b)
        while b > 0:
            o = int(koff[b])
            out.append(self.data[o:o + int(klen[b])])
            b = int(parent[b])
        return tuple(reversed(out))

    def stack(self, pg: int, parent: int) -> list[int]:
        chain = [int(pg)]
        p = int(parent)
        seen = 0
        while p != NONE and seen <= self.hwm:
            chain.append(p)
            p = int(self.parent_of[p]) if 0 <= p < self.limit else NONE
            seen += 1
        return list(reversed(chain))

    def problem(self, code, message, *, bucket=None, pgid=None, **kw) -> Problem:
        p = Problem(code, message, file=self.db.path, pgid=None if pgid is None else int(pgid),
                    path=None if bucket is None else self.path(bucket), **kw)
        self.emit(p)
        return p

    def key(self, off, length) -> bytes:
        return self.data[int(off):int(off) + int(length)]

    # -- the pass ---------------------------------------------------------------------------------

    def run(self) -> None:
        if not 0 <= self.meta.root < 1 << 63:     # a checksum-valid meta (--meta N) may still name any page
            self.problem("B020", f"out of bounds: high-water mark is {self.hwm} (stack: [{self.meta.root}])",
                         pgid=self.meta.root, bucket=0, details={"stack": [self.meta.root]})
            return
        f = Frontier.root(self.meta.root)
        inl: list[Inline] = []
        while f.pg.size or inl:
            fronts: list[Frontier] = []
            inls: list[Inline] = []
            f = f.take(np.argsort(f.pg, kind="stable"))    # file order: sequential reads
            for a, b in spans(f.pg * self.ps, self.CHUNK_PAGES, self.CHUNK_WINDOWS):
                self._process(self._enter_pages(f.take(slice(a, b))), fronts, inls)
            for part in rechunk(inl, self.CHUNK_ELEMENTS):
                for a, b in spans(part.vs, self.CHUNK_ELEMENTS, self.CHUNK_WINDOWS):
                    self._process(self._enter_inline(part.take(slice(a, b))), fronts, inls)
            f = Frontier.concat(fronts)
            inl = inls
            self._keys, self._next_keys, self._next_size = _key_store(self._next_keys), [], 0
            if self.progress is not None:
                self.progress(self.pages, self.hwm)

    def _process(self, nodes: "Nodes", fronts: list, inls: list) -> None:
        for chunk in chunks(nodes, self.CHUNK_ELEMENTS):
            fc, ic = self._elements(chunk)
            fronts.append(fc)
            if ic is not None:
                inls.append(ic)
        if nodes.pgid.size and not self._keep_pages:   # nodes are in file order, and the pages holding
            # them are done with (unless a reader of the leaves goes back to their keys); whole windows, since
            # the kernel mapped the neighbours of the first and last page too (left mapped, they added up to
            # 100s of MiB over the chunks of a 1 GB file)
            window = (1 << WINDOW_SHIFT) - 1
            lo, hi = (int(nodes.base.min()) - BUCKET_HEADER_SIZE) & ~window, (int(nodes.end.max()) + window) & ~window
            self.db.source.release(lo, hi)

    CHUNK_PAGES = 1 << 13
    CHUNK_ELEMENTS = 1 << 16
    # at most this many windows of the file a chunk (levels.WINDOW_SHIFT): the kernel maps a whole window
    # around each page touched (fault-around, or a large folio of the page cache), so a chunk of sparse pages
    # (one level's pages spread over the file) would hold up to 512x its pages in RSS until it is released
    CHUNK_WINDOWS = STEP_WINDOWS

    # -- entering pages ---------------------------------------------------------------------------

    def _enter_pages(self, f: Frontier) -> Nodes:
        hwm, ps = self.hwm, self.ps
        bad = (f.pg < 2) | (f.pg >= hwm)
        for i in np.flatnonzero(bad).tolist():
            st = self.stack(f.pg[i], f.parent[i])
            self.problem("B020", f"out of bounds: high-water mark is {hwm} (stack: {st})", pgid=f.pg[i],
                         bucket=f.bucket[i], details={"stack": st})
        f = f.take(~bad)
        eof = f.pg >= self.limit
        for i in np.flatnonzero(eof).tolist():
            st = self.stack(f.pg[i], f.parent[i])
            self.problem("B023", f"beyond the end of the file ({self.db.file_size} bytes)", pgid=f.pg[i],
                         bucket=f.bucket[i], details={"stack": st})
        f = f.take(~eof)
        first = np.zeros(f.pg.size, bool)
        first[np.unique(f.pg, return_index=True)[1]] = True
        state = self.refs[f.pg]
        dup = ~first | (state == ENTERED)
        # a page some other page's overflow span already covers: name the clash, but still enter the page,
        # since a damaged overflow count is the likelier liar than a page reached from its parent
        for i in np.flatnonzero(~dup & (state == SPANNED)).tolist():
            st = self.stack(f.pg[i], f.parent[i])
            self.problem("B024", f"multiple references: also inside another page's overflow (stack: {st})",
                         pgid=f.pg[i], bucket=f.bucket[i], details={"stack": st})
        for i in np.flatnonzero(dup).tolist():
            at, parent = int(f.pg[i]), int(f.parent[i])
            st = self.stack(at, parent)
            if at in st[:-1]:
                self.problem("B025", f"cycle: the page is its own ancestor (stack: {st})", pgid=at,
                             bucket=f.bucket[i], details={"stack": st})
            else:
                self.problem("B024", f"multiple references (stack: {st})", pgid=at, bucket=f.bucket[i],
                             details={"stack": st})
        f = f.take(~dup)
        pg = f.pg
        self.refs[pg] = ENTERED
        self.parent_of[pg] = f.parent
        self.pages += int(pg.size)
        base = pg * ps
        h = self.g.records(PAGE_HEADER.dtype, base)
        hid = h["id"].astype(I64)
        flags = h["flags"].astype(I64)
        count = h["count"].astype(I64)
        overflow = h["overflow"].astype(I64)
        last = pg + overflow
        over = last >= self.limit
        for i in np.flatnonzero(over).tolist():
            where = "high-water mark" if last[i] >= hwm else "end of the file"
            self.problem("B023", f"overflow {int(overflow[i])} runs past the {where}", pgid=pg[i],
                         offset=int(base[i]) + 12, bucket=f.bucket[i])
        last = np.where(over, self.limit - 1, last)
        for i in np.flatnonzero(last > pg).tolist():
            p, q = int(pg[i]), int(last[i])
            span = self.refs[p + 1:q + 1]
            for j in np.flatnonzero(span).tolist():
                self.problem("B024", f"multiple references (overflow of page {p})", pgid=p + 1 + j,
                             bucket=f.bucket[i])
            span[span == 0] = SPANNED
            self.pages += q - p
        for i in np.flatnonzero(f.hidden >= 0).tolist():
            self.hidden[int(f.hidden[i])].details["pages"].extend(range(int(pg[i]), int(last[i]) + 1))
        for i in np.flatnonzero(self.freed[pg]).tolist():
            self.problem("B016", "reachable freed", pgid=pg[i], bucket=f.bucket[i])
        idbad = hid != pg
        tbad = ~idbad & (flags != PageFlag.BRANCH) & (flags != PageFlag.LEAF)
        for i in np.flatnonzero(idbad | tbad).tolist():
            st = self.stack(pg[i], f.parent[i])
            details: dict[str, object] = {"stack": st, "span": [int(pg[i]), int(last[i])]}
            if idbad[i]:
                details["id"] = int(hid[i])
                self.problem("B021", f"header says id {int(hid[i])} (stack: {st})", pgid=pg[i], offset=int(base[i]),
                             bucket=f.bucket[i], details=details)
            else:
                self.problem("B022", f"invalid type: {PageFlag.name_of(int(flags[i]))} (stack: {st})", pgid=pg[i],
                             offset=int(base[i]) + 8, bucket=f.bucket[i], details=details)
        end = np.minimum((last + 1) * ps, self.db.file_size)
        cbad = ~(idbad | tbad) & (base + PAGE_HEADER_SIZE + count * ELEMENT_SIZE > end)
        for i in np.flatnonzero(cbad).tolist():
            self.problem("B027", f"{int(count[i])} elements do not fit in {int(last[i] - pg[i]) + 1} page(s)",
                         pgid=pg[i], offset=int(base[i]) + 10, bucket=f.bucket[i])
        ok = ~(idbad | tbad | cbad)
        # a header that lies (id, type, count) is read past where the elements tell the truth, as the tolerant
        # readers do (Pager.node_lenient): the page's good elements are checked and followed like any others
        for i in np.flatnonzero(~ok).tolist():
            got = self._recover(int(pg[i]))
            if got is not None:
                base[i], end[i], flags[i], count[i] = got
                ok[i] = True
        neg = np.full(int(ok.sum()), NONE, I64)
        return Nodes(pg[ok], pg[ok], base[ok], end[ok], flags[ok], count[ok], f.bucket[ok], f.lo_off[ok],
                     f.lo_len[ok], f.hi_off[ok], f.hi_len[ok], f.hidden[ok], neg)

    def _recover(self, pgid: int):
        """(base, end, flags, count) of a page whose header lies, when its element table chains up."""
        try:
            node, _ = self.pager.node_lenient(pgid)
        except Exception:      # noqa: BLE001 - nothing to recover: the problem is already reported
            return None
        n, good = self.pager._chain_count(node.base, node.end, node.is_leaf, node.count)
        if good <= 0 or good < n // 2:
            return None
        return node.base, node.end, node.flags, n

    def _enter_inline(self, inl: Inline) -> Nodes:
        vs, ve = as_i64(inl.vs), as_i64(inl.ve)
        vlen = ve - vs
        short = vlen < BUCKET_HEADER_SIZE + PAGE_HEADER_SIZE
        for i in np.flatnonzero(short).tolist():
            self.problem("B035", f"inline bucket value of {int(vlen[i])} bytes has no room for its page header",
                         pgid=inl.owner[i], offset=int(vs[i]), bucket=inl.bucket[i])
        keep = ~short
        vs, ve, vlen, owner, bucket, hidden = vs[keep], ve[keep], vlen[keep], as_i64(inl.owner[keep]), \
            as_i64(inl.bucket[keep]), as_i64(inl.hidden[keep])
        base = vs + BUCKET_HEADER_SIZE
        h = self.g.records(PAGE_HEADER.dtype, base)
        flags = h["flags"].astype(I64)
        count = h["count"].astype(I64)
        tbad = flags != PageFlag.LEAF
        for i in np.flatnonzero(tbad).tolist():
            self.problem("B036", f"inline bucket page has type {PageFlag.name_of(int(flags[i]))}, expected leaf",
                         pgid=owner[i], offset=int(base[i]) + 8, bucket=bucket[i])
        odd = ~tbad & ((h["id"] != 0) | (h["overflow"] != 0))
        for i in np.flatnonzero(odd).tolist():
            self.problem("B036", f"inline bucket page header id {int(h['id'][i])}, overflow {int(h['overflow'][i])} "
                         "(expected 0, 0)", pgid=owner[i], offset=int(base[i]), bucket=bucket[i])
        cbad = ~tbad & (base + PAGE_HEADER_SIZE + count * ELEMENT_SIZE > ve)
        for i in np.flatnonzero(cbad).tolist():
            self.problem("B027", f"inline bucket claims {int(count[i])} elements in a {int(vlen[i])}-byte value",
                         pgid=owner[i], offset=int(base[i]) + 10, bucket=bucket[i])
        ok = ~(tbad | cbad)
        n = int(ok.sum())
        neg = np.full(n, NONE, I64)
        zero = np.zeros(n, I64)
        return Nodes(zero, owner[ok], base[ok], ve[ok], flags[ok], count[ok], bucket[ok], neg, zero, neg, zero,
                     hidden[ok], vs[ok])

    # -- elements ---------------------------------------------------------------------------------

    def _drop_bad_elements(self, nodes: Nodes, node, local, off, key_start, end_of_key, inline_msg: bool):
        """Elements whose data runs past their node's end (or into its element table, or that have an empty
        key): report the first per node and drop just those elements; the rest of the page is read."""
        if self._nodes_hold(nodes, key_start, end_of_key):
            return None
        table_end = nodes.base[node] + PAGE_HEADER_SIZE + nodes.count[node] * ELEMENT_SIZE
        bad = (end_of_key > nodes.end[node]) | (key_start < table_end)
        if not bad.any():
            return None
        bad_nodes, first, counts = np.unique(node[bad], return_index=True, return_counts=True)
        idx = np.flatnonzero(bad)[first]
        for n_, e, c in zip(bad_nodes.tolist(), idx.tolist(), counts.tolist()):
            what = "inline bucket element" if nodes.pgid[n_] == 0 and inline_msg else "element"
            more = f" ({c} bad elements, the other {int(nodes.count[n_]) - c} read)" if c > 1 else ""
            self.problem("B030", f"{what} {int(local[e])}: key/value extends past the end of its page{more}",
                         pgid=nodes.owner[n_], offset=int(off[e]), bucket=nodes.bucket[n_])
        return ~bad

    @staticmethod
    def _nodes_hold(nodes: Nodes, key_start, end_of_key) -> bool:
        """Whether every element's data lies within its node, past the element table: the test of
        _drop_bad_elements a node at a time (its elements' nearest start and farthest end), which a sound level
        passes without an array op per element. Elements must be those of ``expand(nodes)``, in order."""
        count = nodes.count
        full = np.flatnonzero(count)
        if not full.size:
            return True
        first = (np.cumsum(count) - count)[full]
        table_end = nodes.base[full] + PAGE_HEADER_SIZE + count[full] * ELEMENT_SIZE
        return bool((np.maximum.reduceat(end_of_key, first) <= nodes.end[full]).all()
                    and (np.minimum.reduceat(key_start, first) >= table_end).all())

    def _elements(self, nodes: Nodes):
        is_branch = nodes.flags == PageFlag.BRANCH
        b_nodes = nodes.take(is_branch)
        l_nodes = nodes.take(~is_branch)
        frontier = [self._branches(b_nodes)]
        f2, inl = self._leaves(l_nodes)
        frontier.append(f2)
        return Frontier.concat(frontier), inl

    def _branches(self, nodes: Nodes) -> Frontier:
        empty = nodes.count == 0
        for i in np.flatnonzero(empty).tolist():
            self.problem("B026", "branch page with no elements", pgid=nodes.pgid[i], offset=int(nodes.base[i]) + 10,
                         bucket=nodes.bucket[i])
        nodes = nodes.take(~empty)
        node, local, off = expand(nodes)
        r = self.g.records(BRANCH_ELEMENT.dtype, off)
        ks = off + r["pos"].astype(I64)
        klen = r["ksize"].astype(I64)
        keep = self._drop_bad_elements(nodes, node, local, off, ks, ks + klen, inline_msg=False)
        if keep is not None:
            node, local, off, ks, klen, r = node[keep], local[keep], off[keep], ks[keep], klen[keep], r[keep]
        if not self.quick:
            self._check_keys(nodes, node, local, ks, klen)
        # child i gets [key i, key i+1); the last child inherits the node's upper bound
        n = node.size
        last_of_node = np.ones(n, bool)
        last_of_node[:-1] = node[1:] != node[:-1]
        nxt = np.minimum(np.arange(n) + 1, max(n - 1, 0))
        lo_off, lo_len = ks, klen
        hi_off = np.where(last_of_node, nodes.hi_off[node], ks[nxt] if n else ks)
        hi_len = np.where(last_of_node, nodes.hi_len[node], klen[nxt] if n else klen)
        if not self.quick:      # the children's bounds, as copies (the children's level never reads this page)
            lo_off, hi_off = self._bound_keys(ks, klen, last_of_node, nxt, nodes.hi_off[node], nodes.hi_len[node])
        return Frontier(r["pgid"].astype(I64), nodes.pgid[node], nodes.bucket[node], lo_off, lo_len, hi_off, hi_len,
                        nodes.hidden[node])

    def _bound_keys(self, ks, klen, last_of_node, nxt, up_off, up_len):
        """Where the children's bounds are in the next level's key store: every separator key of these
        branches copied there (child i's lower bound, and child i-1's upper one), and the upper bound a last
        child inherits copied from this level's store (-1, unbounded, stays -1). When the children's keys are
        checked, their parents' pages (elsewhere in the file) are not read again: they used to be, and to keep
        memory bounded their 64 KiB windows were released in thousands of calls a pass, and refaulted."""
        n = ks.size
        lo = self._copy_keys(self.g.u8, ks, klen)
        up = np.flatnonzero(last_of_node & (up_off >= 0))
        hi = np.full(n, NONE, I64)
        inner = ~last_of_node
        hi[inner] = lo[nxt[inner]] if n else lo[inner]
        hi[up] = self._copy_keys(self._keys.u8, up_off[up], up_len[up])
        return lo, hi

    def _copy_keys(self, u8: np.ndarray, off: np.ndarray, length: np.ndarray) -> np.ndarray:
        """Append the keys at ``off`` (``length`` bytes each) of ``u8`` to the next level's store; their offsets
        there."""
        length = as_i64(length)
        starts = np.cumsum(length) - length
        total = int(length.sum())
        if total:
            self._next_keys.append(u8[np.repeat(as_i64(off) - starts, length) + np.arange(total, dtype=I64)])
        at = self._next_size + starts
        self._next_size += total
        return at

    def _leaves(self, nodes: Nodes):
        node, local, off = expand(nodes)
        r = self.g.records(LEAF_ELEMENT.dtype, off)
        ks = off + r["pos"].astype(I64)
        klen = r["ksize"].astype(I64)
        ke = ks + klen
        ve = ke + r["vsize"].astype(I64)
        keep = self._drop_bad_elements(nodes, node, local, off, ks, ve, inline_msg=True)
        if keep is not None:
            node, local, off, ks, klen, ke, ve, r = (node[keep], local[keep], off[keep], ks[keep], klen[keep],
                                                     ke[keep], ve[keep], r[keep])
        flags = r["flags"].astype(I64)
        if self.on_leaves is not None:
            self.on_leaves(self, nodes.bucket[node], flags, ks, klen, ve)
        self.keys += int(node.size)
        flagged = np.zeros(nodes.pgid.size, bool)    # nodes that got an element-level problem
        disordered = np.zeros(nodes.pgid.size, bool)
        if not self.quick:
            disordered = self._check_keys(nodes, node, local, ks, klen, flagged)
        for e in np.flatnonzero(flags & ~BUCKET_LEAF_FLAG).tolist():
            n_ = node[e]
            flagged[n_] = True
            self.problem("B038", f"element {int(local[e])} flags 0x{int(flags[e]):x}", pgid=nodes.owner[n_],
                         bucket=nodes.bucket[n_], key=self.key(ks[e], klen[e]))
        # what concerns sub-bucket entries is worked out on those alone (a flat file's leaves hold none, a
        # BuildKit store's inline buckets none), in element order, so the problems come out in the same order
        bi = np.flatnonzero(flags & BUCKET_LEAF_FLAG)
        root_nodes = nodes.bucket == 0
        root_plain = np.zeros(0, I64)
        if root_nodes.any():
            root_plain = np.flatnonzero(root_nodes[node] & ((flags & BUCKET_LEAF_FLAG) == 0))
        for e in root_plain.tolist():
            n_ = node[e]
            flagged[n_] = True
            self.problem("B037", f"element {int(local[e])} of the root bucket is a plain key", pgid=nodes.owner[n_],
                         bucket=0, key=self.key(ks[e], klen[e]))
        self.pairs += int(node.size - bi.size)
        self.pair_bytes += int((ve - ks).sum()) - int((ve[bi] - ks[bi]).sum())
        in_inline = nodes.pgid[node[bi]] == 0
        for e in bi[in_inline].tolist():
            n_ = node[e]
            flagged[n_] = True
            self.problem("B039", "inline bucket holds a sub-bucket entry (not followed)", pgid=nodes.owner[n_],
                         bucket=nodes.bucket[n_], key=self.key(ks[e], klen[e]))
        vlen = np.zeros(node.size, I64)        # a value's length, where it is a sub-bucket's
        vlen[bi] = ve[bi] - ke[bi]
        paged = bi[~in_inline]
        short = paged[vlen[paged] < BUCKET_HEADER_SIZE]
        for e in short.tolist():
            n_ = node[e]
            flagged[n_] = True
            self.problem("B035", f"bucket value of {int(vlen[e])} bytes is shorter than a bucket header",
                         pgid=nodes.owner[n_], offset=int(ke[e]), bucket=nodes.bucket[n_], key=self.key(ks[e], klen[e]))
        sub = paged[vlen[paged] >= BUCKET_HEADER_SIZE]
        f_out = Frontier.empty()
        inl = None
        if sub.size:
            hdr = self.g.records(BUCKET_HEADER.dtype, ke[sub])
            root = hdr["root"].astype(np.uint64)
            ids = self.nbuckets + np.arange(sub.size, dtype=I64)
            self._b_parent.append(nodes.bucket[node[sub]].astype(self._id_t))
            self._b_koff.append(ks[sub].astype(self._off_t))
            self._b_klen.append(klen[sub].astype(np.uint32))
            self.nbuckets += int(sub.size)
            self.buckets += int(sub.size)
            hidden = nodes.hidden[node[sub]].copy()
            inline = root == 0
            self.inline_buckets += int(inline.sum())
            wrong = ~inline & (vlen[sub] != BUCKET_HEADER_SIZE)
            for j in np.flatnonzero(wrong).tolist():
                e = sub[j]
                self.problem("B035", f"paged bucket value is {int(vlen[e])} bytes, expected {BUCKET_HEADER_SIZE}",
                             pgid=nodes.owner[node[e]], offset=int(ke[e]), bucket=nodes.bucket[node[e]],
                             key=self.key(ks[e], klen[e]))
            if disordered.any():
                self._unfindable(nodes, node, local, ks, klen, sub, root, inline, hidden, disordered)
            paged = ~inline
            roots = root[paged].astype(I64) if root.size else root.astype(I64)
            roots = np.where(root[paged] > np.uint64(2 ** 62), I64(2 ** 62), roots)   # absurd ids stay out of range
            neg = np.full(int(paged.sum()), NONE, I64)
            zero = np.zeros(int(paged.sum()), I64)
            f_out = Frontier(roots, nodes.owner[node[sub[paged]]], ids[paged], neg, zero, neg, zero, hidden[paged])
            ii = sub[inline]
            inl = Inline(ke[ii].astype(self._off_t), ve[ii].astype(self._off_t),
                         nodes.owner[node[ii]].astype(self._id_t), ids[inline].astype(self._id_t),
                         hidden[inline].astype(np.int32))
        if not self.quick:
            self._inline_sizes(nodes, node, ks, ve, flagged)
        return f_out, inl

    def _unfindable(self, nodes, node, local, ks, klen, sub, root, inline, hidden, disordered) -> None:
        """Sub-buckets in disordered leaves that a key lookup cannot reach: bbolt never sees their pages."""
        for j in np.flatnonzero(~inline & disordered[node[sub]]).tolist():
            e = sub[j]
            n_ = node[e]
            sel = np.flatnonzero(node == n_)
            keys = [self.key(ks[x], klen[x]) for x in sel.tolist()]
            i = int(local[e])
            at = int(np.searchsorted(sel, e))      # its place among the node's elements kept (not always all)
            key = keys[at]
            if bisect_left(keys, key) != at:
                p = self.problem("B031", f"sub-bucket in element {i} cannot be found by a key lookup (keys out of "
                                 "order): bbolt does not see its pages", pgid=int(root[j]), bucket=nodes.bucket[n_],
                                 key=key, details={"leaf": int(nodes.owner[n_]), "pages": []})
                self.hidden.append(p)
                hidden[j] = len(self.hidden) - 1

    def _inline_sizes(self, nodes: Nodes, node, ks, ve, flagged) -> None:
        """bbolt sizes an inline value exactly: header + page header + elements + keys and values."""
        inline_nodes = np.flatnonzero((nodes.pgid == 0) & ~flagged)
        if not inline_nodes.size:
            return
        data_bytes = np.bincount(node, weights=(ve - ks), minlength=nodes.pgid.size).astype(I64)
        used = PAGE_HEADER_SIZE + nodes.count * ELEMENT_SIZE + data_bytes
        vlen = nodes.end - nodes.vs
        bad = inline_nodes[BUCKET_HEADER_SIZE + used[inline_nodes] != vlen[inline_nodes]]
        for n_ in bad.tolist():
            self.problem("B036", f"inline bucket value is {int(vlen[n_])} bytes, its page uses "
                         f"{BUCKET_HEADER_SIZE + int(used[n_])}", pgid=nodes.owner[n_], offset=int(nodes.vs[n_]),
                         bucket=nodes.bucket[n_])

    def _check_keys(self, nodes: Nodes, node, local, ks, klen, flagged=None) -> np.ndarray:
        """Keys strictly increasing within each node, non-empty, and inside the parent's [lo, hi).
        Returns the per-node "out of order" flags."""
        nn = nodes.pgid.size
        disordered = np.zeros(nn, bool)
        if node.size == 0:
            return disordered
        same = node[1:] == node[:-1]
        pairs = np.flatnonzero(same)
        if pairs.size:
            first = self.g.prefix8(ks, klen)       # each key's first 8 bytes, shared by both of its pairs
            c = compare_keys(self.g, ks[pairs], klen[pairs], ks[pairs + 1], klen[pairs + 1],
                             first[pairs], first[pairs + 1])
            disordered[np.unique(node[pairs[c >= 0]])] = True
        firsts = np.flatnonzero(local == 0)
        lasts = np.ones(node.size, bool)
        lasts[:-1] = ~same
        lasts = np.flatnonzero(lasts)
        for n_ in np.flatnonzero(disordered).tolist():
            self._report_disorder(nodes, n_, np.flatnonzero(node == n_), ks, klen)
        empty = firsts[klen[firsts] == 0]
        for e in empty.tolist():
            n_ = node[e]
            self.problem("B034", f"empty key on {self._kind(nodes, n_)} page", pgid=nodes.owner[n_],
                         bucket=nodes.bucket[n_])
        lo_set = firsts[nodes.lo_off[node[firsts]] >= 0]
        if lo_set.size:
            n_ = node[lo_set]
            c = compare_keys(self.g, ks[lo_set], klen[lo_set], nodes.lo_off[n_], nodes.lo_len[n_], gb=self._keys)
            for e in lo_set[c < 0].tolist():
                m = node[e]
                self.problem("B033", f"the first key on {self._kind(nodes, m)} page {int(nodes.pgid[m])} needs to be "
                             ">= the key in the ancestor", pgid=nodes.owner[m], bucket=nodes.bucket[m],
                             key=self.key(ks[e], klen[e]))
        hi_set = lasts[nodes.hi_off[node[lasts]] >= 0]
        if hi_set.size:
            n_ = node[hi_set]
            c = compare_keys(self.g, ks[hi_set], klen[hi_set], nodes.hi_off[n_], nodes.hi_len[n_], gb=self._keys)
            for e in hi_set[c >= 0].tolist():
                m = node[e]
                self.problem("B033", f"the last key on {self._kind(nodes, m)} page {int(nodes.pgid[m])} needs to be < "
                             "the key of the next element in the ancestor", pgid=nodes.owner[m],
                             bucket=nodes.bucket[m], key=self.key(ks[e], klen[e]))
        if flagged is not None:
            flagged |= disordered
            flagged[node[empty]] = True
        return disordered

    @staticmethod
    def _kind(nodes: Nodes, n_: int) -> str:
        return "branch" if nodes.flags[n_] == PageFlag.BRANCH else "leaf"

    def _report_disorder(self, nodes: Nodes, n_: int, sel: np.ndarray, ks, klen) -> None:
        keys = [self.key(ks[x], klen[x]) for x in sel.tolist()]
        kind = self._kind(nodes, n_)
        reported = 0
        for i in range(1, len(keys)):
            if keys[i] <= keys[i - 1]:
                code = "B032" if keys[i] == keys[i - 1] else "B031"
                rel = "=" if code == "B032" else "<"
                self.problem(code, f"key[{i}] on {kind} page {int(nodes.pgid[n_] or nodes.owner[n_])} needs to be > "
                             f"(found {rel}) than the previous element", pgid=nodes.owner[n_],
                             bucket=nodes.bucket[n_], key=keys[i])
                reported += 1
                if reported >= self.MAX_KEY_PROBLEMS_PER_PAGE:
                    break


def _key_store(parts: list[np.ndarray]) -> Gather:
    """A level's separator keys, copied, as one buffer to gather from (zero-padded: a block read of the last key
    stays inside it)."""
    buf = np.concatenate(parts + [np.zeros(64, np.uint8)])
    return Gather(buf, buf.size)
