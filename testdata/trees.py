"""Logical trees (buckets, keys, values, sequences) for writer tests, and their expected dump lines.

A tree is ``{name: value_bytes | Bucket}``; ``dump_lines`` gives exactly what the oracle's `dump` and
`boltkit export -e hex` print for a file holding it (bbolt cursor order: byte order, depth first).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from hypothesis import strategies as st


@dataclass
class Bucket:
    children: dict = field(default_factory=dict)
    sequence: int = 0


def dump_lines(root: dict) -> list[str]:
    out: list[str] = []

    def rec(children: dict, path: list[str]) -> None:
        for name in sorted(children):
            v = children[name]
            if isinstance(v, Bucket):
                p = path + [name.hex()]
                out.append(json.dumps({"type": "bucket", "path": p, "sequence": v.sequence}, separators=(",", ":")))
                rec(v.children, p)
            else:
                out.append(json.dumps({"type": "pair", "path": path, "key": name.hex(), "value": v.hex()},
                                      separators=(",", ":")))
    rec(root, [])
    return out


def write_tree(writer, root: dict, whole_buckets: bool = False) -> None:
    """``root`` into a BoltWriter; ``whole_buckets``: a bucket of plain pairs only goes in with one put_bucket."""
    def rec(children: dict) -> None:
        for name in sorted(children):
            v = children[name]
            if whole_buckets and isinstance(v, Bucket) and not any(isinstance(c, Bucket) for c in v.children.values()):
                writer.put_bucket(name, sorted(v.children.items()), v.sequence)
            elif isinstance(v, Bucket):
                writer.begin_bucket(name, v.sequence)
                rec(v.children)
                writer.end_bucket()
            else:
                writer.put(name, v)
    rec(root)


keys = st.one_of(st.binary(min_size=1, max_size=24), st.text("abcdefgh/:_-0123456789", min_size=1, max_size=40)
                 .map(str.encode))
small_values = st.binary(max_size=200)
values = st.one_of(small_values, small_values, small_values,
                   st.integers(min_value=1000, max_value=300_000).map(lambda n: bytes([n % 251]) * n))
sequences = st.one_of(st.just(0), st.integers(min_value=0, max_value=2**64 - 1))


def buckets(depth: int):
    if depth == 0:
        children = st.dictionaries(keys, values, max_size=40)
    else:
        children = st.dictionaries(keys, st.one_of(values, st.deferred(lambda: buckets(depth - 1))), max_size=25)
    many = st.integers(min_value=0, max_value=3000).map(
        lambda n: {i.to_bytes(4, "big") + b"k": b"v" * (i % 50) for i in range(n)})
    return st.builds(Bucket, st.one_of(children, children, children, many), sequences)


trees = st.dictionaries(keys, buckets(4), max_size=6)
page_sizes = st.sampled_from([1024, 2048, 4096, 8192, 16384, 32768, 65536])


def tree_from_file(path) -> dict:
    """The logical tree of a bbolt file (read with boltkit), as ``{name: bytes | Bucket}``."""
    from boltkit.storage import Database
    root: dict = {}
    with Database(path) as db:
        nodes = {(): root}
        for parent, child, item in db.tree.walk(db.root()):
            if child is None:
                nodes[parent.path][item.key] = db.value(item)
            else:
                b = nodes[parent.path][item.key] = Bucket(sequence=child.sequence)
                nodes[child.path] = b.children
    return root
