"""The last rung of the meta ladder: a root bucket rebuilt from the tree pages when no meta can be used.

Pages identify themselves (header id = page number, branch or leaf type). The root bucket's page is one
that no other page references (no branch child, no bucket header), and a root bucket's leaves hold only
buckets. Among such pages the one whose tree reaches the most pages wins; what it does not reach stays for
salvage's lost+found scan. Freed pages of older transactions are roots too (an old root references mostly
the same pages as the new one), so coverage, not position, decides, and the rebuilt meta says it was rebuilt.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CorruptionError
from ..schemas import BUCKET_HEADER, BUCKET_HEADER_SIZE, BUCKET_LEAF_FLAG, PGID_NO_FREELIST, PageFlag
from .freelist import freed_ids
from .pages import Pager

MAX_CANDIDATES = 256


@dataclass(frozen=True)
class RebuiltRoot:
    """What the pages say in place of a meta: the ladder (meta.py) turns it into a Meta marked rebuilt."""
    root: int
    freelist: int
    pgid: int
    note: str


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


def rebuild_root(data, file_size: int, page_size: int) -> RebuiltRoot | None:
    """The best root-bucket candidate; its root is 0 (no tree: every page is an orphan) when the file has tree
    pages but none can be a root bucket, None when it has no tree page at all."""
    n = file_size // page_size
    if n <= 2:
        return None
    ids = np.ndarray((n,), dtype="<u8", buffer=data, offset=0, strides=(page_size,))
    flags = np.ndarray((n,), dtype="<u2", buffer=data, offset=8, strides=(page_size,))
    tree = np.flatnonzero((ids == np.arange(n, dtype=np.uint64)) &
                          ((flags == PageFlag.BRANCH) | (flags == PageFlag.LEAF)))
    tree = tree[tree >= 2].tolist()
    if not tree:
        return None
    pager = Pager(data, file_size, page_size, n)
    children, buckets, only_buckets = _graph(pager, tree)
    referenced = set()
    for c in children.values():
        referenced.update(c)
    for c in buckets.values():
        referenced.update(c)
    known = set(children) | set(buckets)
    # the newest freelist is the freelist page no other freelist lists (the next write frees the old one); what
    # it lists are old roots and pages of earlier transactions, never the root of the last one
    fl_pages = np.flatnonzero((ids == np.arange(n, dtype=np.uint64)) & (flags == PageFlag.FREELIST)).tolist()
    read = {p: freed_ids(data, file_size, page_size, p) for p in fl_pages if p >= 2}
    fl_ids = {p: v for p, v in read.items() if v is not None}
    newest = [p for p in fl_ids if not any(p in v for q, v in fl_ids.items() if q != p)]
    freed = set().union(*(fl_ids[p] for p in newest)) if newest else set()
    candidates = [p for p in tree if p in known and p not in referenced and p not in freed]

    def leaves_of(p: int) -> list[int]:
        out, stack, seen = [], [p], set()
        while stack:
            q = stack.pop()
            if q in seen or q not in known:
                continue
            seen.add(q)
            if q in children:
                stack.extend(children[q])
            else:
                out.append(q)
        return out

    def coverage(p: int) -> int:
        stack, seen = [p], set()
        while stack:
            q = stack.pop()
            if q in seen or q not in known:
                continue
            seen.add(q)
            stack.extend(children.get(q, ()))
            stack.extend(buckets.get(q, ()))
        return len(seen)

    roots = [p for p in candidates if (lv := leaves_of(p)) and all(only_buckets.get(q, False) for q in lv)]
    roots.sort(key=lambda p: -len(children.get(p, ())))
    scored = [(coverage(p), p) for p in roots[:MAX_CANDIDATES]]
    if scored:
        cover, root = max(scored, key=lambda t: (t[0], t[1]))
        note = f"it reaches {cover} of {len(tree)} tree pages; {len(scored) - 1} other candidate(s)"
    else:
        root, note = 0, f"none of the {len(tree)} tree pages can be a root bucket: every page is an orphan"
    freelist = newest[0] if len(newest) == 1 else PGID_NO_FREELIST
    return RebuiltRoot(root, freelist, -(-file_size // page_size), note)
