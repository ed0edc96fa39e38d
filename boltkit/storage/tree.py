"""The bucket tree: nested, inline and paged buckets, ordered iteration, seek and get.

Traversal is iterative (an explicit stack, never Python recursion) and remembers every page it
has entered, so a page cycle written by a torn commit ends in an error instead of a hang or a stack
overflow (`bbolt stats` overflows its stack on such files). Callers choose what damage does: raise
(``on_damage=None``) or report it and skip just the damaged subtree (tolerant reads of torn files).

This is the one tolerant walk: every reader of a bucket's contents (the inspect commands, the BuildKit decoders,
salvage, stats) goes through ``items``/``open``/``walk`` and gets damage the same way, as ``on_damage`` calls with
one record type, CorruptionError (what was skipped, and where: page, offset, bucket path). No reader drops a
record: it returns it to its caller or turns it into a problem, a flag, a refusal.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Callable, Iterator

from ..errors import CorruptionError
from ..schemas import BUCKET_HEADER, BUCKET_HEADER_SIZE, BUCKET_LEAF_FLAG
from .pages import Node, Pager

OnDamage = Callable[[CorruptionError], None]      # receives each damage record a tolerant read skips
OnPage = Callable[[Node, int, list], None]


@dataclass(slots=True)
class Bucket:
    path: tuple[bytes, ...]
    root: int            # root page id; 0 = inline
    sequence: int
    node: Node           # root node (a real page, or the inline page inside the parent's leaf)

    @property
    def inline(self) -> bool:
        return self.root == 0


@dataclass(slots=True)
class Item:
    key: bytes
    flags: int
    value_start: int
    value_end: int
    node: Node           # the leaf holding it

    @property
    def is_bucket(self) -> bool:
        return bool(self.flags & BUCKET_LEAF_FLAG)


class Tree:
    def __init__(self, pager: Pager):
        self.pager = pager
        self.data = pager.data

    # -- opening buckets ------------------------------------------------------------------------

    def bucket_at(self, path: tuple[bytes, ...], root: int, sequence: int,
                  on_damage: OnDamage | None = None) -> Bucket:
        if on_damage is None:
            return Bucket(path, root, sequence, self.pager.node(root))
        node, problems = self.pager.node_lenient(root)
        for p in problems:
            p.path = path
            on_damage(p)
        return Bucket(path, root, sequence, node)

    def child(self, parent: Bucket, item: Item, on_damage: OnDamage | None = None) -> Bucket:
        """Open the bucket stored in a leaf item (which must carry the bucket flag). With ``on_damage``, a root
        page whose header lies is read past where its elements allow (Pager.node_lenient)."""
        path = parent.path + (item.key,)
        vs, ve = item.value_start, item.value_end
        if ve - vs < BUCKET_HEADER_SIZE:
            raise CorruptionError(f"bucket value of {ve - vs} bytes is shorter than a bucket header",
                                  pgid=item.node.owner, offset=vs, path=path)
        root, seq = BUCKET_HEADER.unpack_from(self.data, vs)
        problems: list[CorruptionError] = []
        try:
            if on_damage is None:
                node = (self.pager.inline_node(vs + BUCKET_HEADER_SIZE, ve, item.node.owner) if root == 0
                        else self.pager.node(root))
            elif root == 0:
                node, problems = self.pager.inline_node_lenient(vs + BUCKET_HEADER_SIZE, ve, item.node.owner)
            else:
                node, problems = self.pager.node_lenient(root)
        except CorruptionError as e:
            e.path = path
            raise
        for p in problems:          # only the lenient reads (on_damage given) return problems
            p.path = path
            assert on_damage is not None
            on_damage(p)
        return Bucket(path, root, seq, node)

    def open(self, parent: Bucket, item: Item, on_damage: OnDamage | None = None) -> Bucket | None:
        """``child`` as tolerantly as the items around it: with ``on_damage``, a bucket whose header or root page
        cannot be read at all is one damage record, and None (its contents are what the damage hides); without,
        the CorruptionError is raised."""
        try:
            return self.child(parent, item, on_damage)
        except CorruptionError as e:
            if on_damage is None:
                raise
            on_damage(e)
            return None

    # -- ordered iteration ----------------------------------------------------------------------

    def leaves(self, bucket: Bucket, start_key: bytes | None = None, on_damage: OnDamage | None = None,
               visited: set[int] | None = None, on_page: OnPage | None = None,
               decode: Callable[[Node], list] | None = None) -> Iterator[tuple[Node, list]]:
        """Leaf nodes of ``bucket`` in key order with their element tables, from ``start_key`` on.

        ``on_page(node, depth, elements)`` sees every node entered, branches included. ``decode`` replaces
        Pager.leaf_elements for the leaves (bulk readers decode many leaves at once themselves).
        With ``on_damage``, damage is reported and read past: a page whose header lies or that holds bad
        elements still yields every element bounded by the page; only what cannot be read at all is skipped.
        """
        pager, data = self.pager, self.data
        if visited is None:
            visited = set()
        seeking = start_key is not None
        lenient = on_damage is not None

        def report(problems):
            for p in problems:
                if p.path is None:
                    p.path = bucket.path
                on_damage(p)
        stack: list[Iterator] = [iter((bucket.node,))]
        trail: list[int] = []   # pages on the current descent, for error context
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
                if trail:
                    trail.pop()
                continue
            try:
                if isinstance(item, Node):
                    node = item
                else:
                    if item in visited:
                        raise CorruptionError(f"page {item} is referenced again (cycle or shared subtree)", pgid=item)
                    if lenient:
                        node, problems = pager.node_lenient(item)
                        report(problems)
                    else:
                        node = pager.node(item)
                if node.pgid:
                    visited.add(node.pgid)
                if node.is_leaf:
                    if decode is not None:
                        elems = decode(node)
                    elif lenient:
                        elems, problems = pager.leaf_elements_lenient(node)
                        report(problems)
                    else:
                        elems = pager.leaf_elements(node)
                    if on_page is not None:
                        on_page(node, len(trail), elems)
                    seeking = False
                    yield node, elems
                    continue
                if lenient:
                    elems, problems = pager.branch_elements_lenient(node)
                    report(problems)
                else:
                    elems = pager.branch_elements(node)
                if on_page is not None:
                    on_page(node, len(trail), elems)
                if not elems:
                    raise CorruptionError("branch page with no elements", pgid=node.pgid, offset=node.base + 10)
                children = [c for _, _, c in elems]
                if seeking:
                    keys = [data[s:e] for s, e, _ in elems]
                    i = max(bisect_right(keys, start_key) - 1, 0)
                    children = children[i:]
                stack.append(iter(children))
                trail.append(node.pgid)
            except CorruptionError as e:
                if e.path is None:
                    e.path = bucket.path
                if on_damage is None:
                    raise
                on_damage(e)

    def items(self, bucket: Bucket, start_key: bytes | None = None, on_damage: OnDamage | None = None,
              visited: set[int] | None = None, on_page: OnPage | None = None) -> Iterator[Item]:
        data = self.data
        for node, elems in self.leaves(bucket, start_key, on_damage, visited, on_page):
            if start_key is not None:
                keys = [data[s:e] for _, s, e, _ in elems]
                elems = elems[bisect_left(keys, start_key):]
                start_key = None
            for flags, ks, ke, ve in elems:
                yield Item(data[ks:ke], flags, ke, ve, node)

    def get(self, bucket: Bucket, key: bytes) -> Item | None:
        for item in self.items(bucket, start_key=key):
            return item if item.key == key else None
        return None

    # -- whole-tree walk ------------------------------------------------------------------------

    def walk(self, root: Bucket, on_damage: OnDamage | None = None,
             on_page: Callable[[Bucket, Node, int, list], None] | None = None
             ) -> Iterator[tuple[Bucket, Bucket | None, Item]]:
        """Depth-first over every bucket and key, in bbolt cursor order.

        ``on_page(bucket, node, depth, elements)`` sees every node entered, with its bucket.
        Yields ``(bucket, None, item)`` for a plain pair of ``bucket`` and ``(bucket, child, item)``
        for a sub-bucket entry, before the child's own contents.
        """
        visited: set[int] = set()
        stack = [(root, self.items(root, on_damage=on_damage, visited=visited, on_page=_bind(on_page, root)))]
        while stack:
            bucket, it = stack[-1]
            item = next(it, None)
            if item is None:
                stack.pop()
                continue
            if not item.is_bucket:
                yield bucket, None, item
                continue
            try:
                child = self.child(bucket, item, on_damage)
                if child.root:
                    if child.root in visited:
                        raise CorruptionError(f"bucket root page {child.root} is referenced again",
                                              pgid=child.root, path=child.path)
            except CorruptionError as e:
                if on_damage is None:
                    raise
                on_damage(e)
                continue
            yield bucket, child, item
            stack.append((child, self.items(child, on_damage=on_damage, visited=visited,
                                            on_page=_bind(on_page, child))))


def _bind(on_page, bucket: Bucket) -> OnPage | None:
    if on_page is None:
        return None
    return lambda node, depth, elems: on_page(bucket, node, depth, elems)
