"""The last rung of the meta ladder: a root bucket rebuilt from the tree pages when no meta can be used.

Pages identify themselves (header id = page number, branch or leaf type). A committed bbolt state is a
(root, freelist) pair that partitions the file: the pages the root's tree reaches and the pages its freelist
lists (with the freelist's own pages) are disjoint, and together they are every tree page of the file. Freed
pages of older transactions hold older roots, whose trees look just as good by size; but an older state's
pair no longer partitions the file (its freelist lists pages the newer transactions took, its tree misses
the pages they added), and its root is referenced by nothing only if the freed pages are counted too.

So every freelist page that identifies itself proposes a state: its free set; as roots, the pages no page
outside that free set references whose leaves hold only buckets (a root bucket's). Each (freelist, root) is
scored by its misfit (tree pages both reached and listed free, plus tree pages neither reached nor listed
free); the least misfit wins, then the freelist witness (a freelist that lists the other state's root while
the other's does not list this one's is the later transaction), then the tree that reaches more pages. The
two states adjacent to a lost meta (transactions N and N-1) often both fit perfectly: txids are stored only
in the metas, so nothing in the pages orders them beyond the witness and the high-water mark (pages past the
older state's, which only the newer one explains). What the chosen tree does not reach stays for salvage's
lost+found scan, and the rebuilt meta says it was rebuilt.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CorruptionError
from ..schemas import BUCKET_HEADER, BUCKET_HEADER_SIZE, BUCKET_LEAF_FLAG, PGID_NO_FREELIST, PageFlag
from .freelist import read_freelist
from .pages import Pager

MAX_CANDIDATES = 256        # roots scored per freelist (the ones with the most branch children first)
MAX_FREELISTS = 64          # freelist pages proposing a state (the ones listing the most ids first)


@dataclass(frozen=True)
class RebuiltRoot:
    """What the pages say in place of a meta: the ladder (meta.py) turns it into a Meta marked rebuilt."""
    root: int
    freelist: int
    pgid: int
    note: str
    tied: int | None = None     # the root of a state as fit as this one that nothing in the file orders against it


def unordered_tie(ranked: list[State]) -> State | None:
    """A state that fits the file exactly as well as the best one (``ranked[0]``, from ``states``), that no
    equally fit state witnesses as older, and that neither witnesses the best nor is witnessed by it (each
    freelist lists the other's root: a transaction reused a page its predecessor had freed). Then the pages
    say only that the two are transactions N and N-1, not which is which. An equally fit state some other one
    witnesses as older (N-2) is no rival: it is neither's successor."""
    if not ranked:
        return None
    best = ranked[0]
    ties = [t for t in ranked[1:] if t.misfit == best.misfit]
    for s in ties:
        if not s.witnesses_newer_than(best) and not any(t.witnesses_newer_than(s) for t in [best] + ties if t is not s):
            return s
    return None


@dataclass(frozen=True)
class State:
    """A committed state the pages propose: a root bucket page and the freelist page that goes with it."""
    root: int
    freelist: int | None            # None: judged without a freelist (a file that stores none)
    free: frozenset[int]            # what that freelist lists, with its own pages
    pages: frozenset[int]           # the tree pages the root's tree reaches (sub-buckets included)
    conflicts: int                  # tree pages reached that the freelist lists as free
    unexplained: int                # tree pages neither reached nor listed free

    @property
    def misfit(self) -> int:
        return self.conflicts + self.unexplained

    def witnesses_newer_than(self, other: State) -> bool:
        """This freelist lists the other state's root (a later transaction freed it), and not the reverse."""
        return (self.freelist is not None and other.root in self.free and self.root != other.root
                and (other.freelist is None or self.root not in other.free))


def _graph(pager: Pager, pages: list[int]) -> tuple[dict[int, list[int]], dict[int, list[int]], dict[int, bool]]:
    """Per tree page: its branch children, its sub-bucket roots, and (leaves) whether it holds only buckets."""
    data = pager.data
    children: dict[int, list[int]] = {}
    buckets: dict[int, list[int]] = {}
    only_buckets: dict[int, bool] = {}
    for p in pages:
        try:
            node, _ = pager.node_lenient(p)
            if node.is_branch:
                elems, _ = pager.branch_elements_lenient(node)
                children[p] = [c for _, _, c in elems]
            else:
                elems, _ = pager.leaf_elements_lenient(node)
                roots = []
                for flags, _ks, ke, ve in elems:
                    if flags & BUCKET_LEAF_FLAG and ve - ke >= BUCKET_HEADER_SIZE:
                        r = BUCKET_HEADER.unpack_from(data, ke)[0]
                        if r:
                            roots.append(r)
                buckets[p] = roots
                only_buckets[p] = bool(elems) and all(f & BUCKET_LEAF_FLAG for f, _, _, _ in elems)
        except CorruptionError:
            continue
    return children, buckets, only_buckets


def states(data, file_size: int, page_size: int) -> list[State]:
    """Every state the pages propose, best first (least misfit, then the witness, then the larger tree)."""
    n = file_size // page_size
    if n <= 2:
        return []
    ids = np.ndarray((n,), dtype="<u8", buffer=data, offset=0, strides=(page_size,))
    flags = np.ndarray((n,), dtype="<u2", buffer=data, offset=8, strides=(page_size,))
    own = ids == np.arange(n, dtype=np.uint64)
    tree_arr = np.flatnonzero(own & ((flags == PageFlag.BRANCH) | (flags == PageFlag.LEAF)))
    tree = tree_arr[tree_arr >= 2].tolist()
    if not tree:
        return []
    pager = Pager(data, file_size, page_size, n)
    children, buckets, only_buckets = _graph(pager, tree)
    known = set(children) | set(buckets)
    referrers: dict[int, list[int]] = {}
    for table in (children, buckets):
        for p, refs in table.items():
            for c in refs:
                referrers.setdefault(c, []).append(p)
    tree_set = frozenset(tree)

    freelists: list[tuple[int | None, frozenset[int]]] = []
    for p in np.flatnonzero(own & (flags == PageFlag.FREELIST)).tolist():
        if p < 2:
            continue
        try:
            fl = read_freelist(pager, p)
        except CorruptionError:
            continue
        freelists.append((p, frozenset(fl.ids.tolist()) | frozenset(fl.pages)))
    freelists.sort(key=lambda t: -len(t[1]))
    freelists = freelists[:MAX_FREELISTS] + [(None, frozenset())]

    reach_cache: dict[int, frozenset[int]] = {}
    rootlike_cache: dict[int, bool] = {}

    def reach(p: int) -> frozenset[int]:
        if p not in reach_cache:
            stack, seen = [p], set()
            while stack:
                q = stack.pop()
                if q in seen or q not in known:
                    continue
                seen.add(q)
                stack.extend(children.get(q, ()))
                stack.extend(buckets.get(q, ()))
            reach_cache[p] = frozenset(seen)
        return reach_cache[p]

    def rootlike(p: int) -> bool:
        """A root bucket's page: its leaves (reached through branches only) hold only buckets."""
        if p not in rootlike_cache:
            stack, seen, ok, leaves = [p], set(), True, 0
            while stack and ok:
                q = stack.pop()
                if q in seen or q not in known:
                    continue
                seen.add(q)
                if q in children:
                    stack.extend(children[q])
                else:
                    leaves += 1
                    ok = only_buckets.get(q, False)
            rootlike_cache[p] = ok and leaves > 0
        return rootlike_cache[p]

    found: dict[int, State] = {}
    for fpg, free in freelists:
        cands = [p for p in tree if p in known and p not in free and all(q in free for q in referrers.get(p, ()))
                 and rootlike(p)]
        cands.sort(key=lambda p: -len(children.get(p, ())))
        for r in cands[:MAX_CANDIDATES]:
            pages = reach(r)
            s = State(r, fpg, free, pages, len(pages & free), len(tree_set - pages - free))
            old = found.get(r)
            if old is None or (s.misfit, s.freelist is None) < (old.misfit, old.freelist is None):
                found[r] = s
    ranked = sorted(found.values(), key=lambda s: (s.misfit, -len(s.pages), -s.root))
    if len(ranked) > 1:
        ties = [s for s in ranked if s.misfit == ranked[0].misfit]
        newest = [s for s in ties if not any(t.witnesses_newer_than(s) for t in ties if t is not s)]
        if newest and newest[0] is not ranked[0]:
            ranked.remove(newest[0])
            ranked.insert(0, newest[0])
    return ranked


def newer_state(data, file_size: int, page_size: int, root: int, hwm: int) -> State | None:
    """A state later than the meta whose root page and high-water mark are ``root`` and ``hwm``, when the other
    meta slot is lost: one that fits the file as well as the best state does, whose freelist lists ``root``
    (the later transaction freed it), and whose tree reaches pages at or past ``hwm`` (pages only a later
    transaction can have written). None when the pages do not show one: a state that fits as well within the
    old high-water mark could as well be the transaction before that meta's."""
    ranked = states(data, file_size, page_size)
    if not ranked:
        return None
    best = ranked[0].misfit
    for s in ranked:
        if s.misfit > best:
            break
        if s.root != root and root in s.free and s.pages and max(s.pages) >= hwm:
            return s
    return None


def rebuild_root(data, file_size: int, page_size: int) -> RebuiltRoot | None:
    """The best state's root and freelist; its root is 0 (no tree: every page is an orphan) when the file has
    tree pages but none can be a root bucket, None when it has no tree page at all."""
    n = file_size // page_size
    if n <= 2:
        return None
    ids = np.ndarray((n,), dtype="<u8", buffer=data, offset=0, strides=(page_size,))
    flags = np.ndarray((n,), dtype="<u2", buffer=data, offset=8, strides=(page_size,))
    tree = np.flatnonzero((ids == np.arange(n, dtype=np.uint64)) &
                          ((flags == PageFlag.BRANCH) | (flags == PageFlag.LEAF)))
    tree_pages = int((tree >= 2).sum())
    if not tree_pages:
        return None
    ranked = states(data, file_size, page_size)
    if ranked:
        best = ranked[0]
        root, freelist = best.root, best.freelist if best.freelist is not None else PGID_NO_FREELIST
        with_fl = f", with freelist page {best.freelist}" if best.freelist is not None else ", with no freelist"
        note = (f"it reaches {len(best.pages)} of {tree_pages} tree pages{with_fl}; {best.conflicts} reached "
                f"page(s) listed free, {best.unexplained} tree page(s) neither reached nor free; "
                f"{len(ranked) - 1} other candidate(s)")
        tie = unordered_tie(ranked)
        if tie is not None:
            note += f"; root page {tie.root} fits as well and nothing orders the two"
        tied = None if tie is None else tie.root
    else:
        root, freelist, tied = 0, PGID_NO_FREELIST, None
        note = f"none of the {tree_pages} tree pages can be a root bucket: every page is an orphan"
    return RebuiltRoot(root, freelist, -(-file_size // page_size), note, tied)
