"""The project's own attack campaign: inputs no damage class of damage.py makes.

Each generator writes one file (or directory) and returns a short description. Used by
tests/test_attack.py, which runs every command on them and demands no traceback, no hang and an exit
status from the table of boltkit/cli/app.py.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import socket
import struct
from pathlib import Path

from boltkit.schemas import PAGE_HEADER_SIZE, PageFlag
from boltkit.write import BoltWriter

from . import damage

# meta fields as the file stores them, and values a reader must bound before it uses them
META_FIELDS = ("root", "freelist", "pgid", "txid", "page_size", "version", "flags")
EXTREMES = (0, 1, 2, 0xFFFF, 2**31, 2**32 - 1, 2**63 - 1, 2**63, 2**64 - 1)


def meta_extreme(src: Path, dst: Path, index: int, field: str, value: int) -> str:
    """A checksum-valid meta whose field holds an extreme value (only the meaning is wrong)."""
    damage.copy(src, dst)
    if field in ("page_size", "version", "flags"):
        value &= 0xFFFFFFFF
    return damage.set_meta_field(dst, index, field, value)


def page_header_extreme(src: Path, dst: Path, pgid: int, field: str, value: int) -> str:
    """A page header field (id, flags, count, overflow) set to an extreme value."""
    damage.copy(src, dst)
    ps = damage.page_size_of(dst)
    offset, fmt = {"id": (0, "<Q"), "flags": (8, "<H"), "count": (10, "<H"), "overflow": (12, "<I")}[field]
    mask = {"<Q": 2**64 - 1, "<H": 0xFFFF, "<I": 0xFFFFFFFF}[fmt]
    damage.write_at(dst, pgid * ps + offset, struct.pack(fmt, value & mask))
    return f"page {pgid} {field} = {value & mask}"


def element_extreme(src: Path, dst: Path, pgid: int, index: int, field: str, value: int) -> str:
    """A leaf or branch element's pos / ksize / vsize (or a branch child id) set to an extreme value."""
    damage.copy(src, dst)
    ps = damage.page_size_of(dst)
    raw = dst.read_bytes()
    flags = struct.unpack_from("<H", raw, pgid * ps + 8)[0]
    base = pgid * ps + PAGE_HEADER_SIZE + index * 16
    if flags == PageFlag.LEAF:      # flags u32, pos u32, ksize u32, vsize u32
        offset, fmt = {"pos": (4, "<I"), "ksize": (8, "<I"), "vsize": (12, "<I")}[field]
    else:                           # pos u32, ksize u32, pgid u64
        offset, fmt = {"pos": (0, "<I"), "ksize": (4, "<I"), "vsize": (8, "<Q")}[field]
    mask = 0xFFFFFFFF if fmt == "<I" else 2**64 - 1
    damage.write_at(dst, base + offset, struct.pack(fmt, value & mask))
    return f"page {pgid} element {index} {field} = {value & mask}"


def freelist_count(src: Path, dst: Path, freelist_pgid: int, count: int) -> str:
    """A freelist page whose count uses bbolt's 0xFFFF rule with a huge stored count."""
    damage.copy(src, dst)
    ps = damage.page_size_of(dst)
    damage.write_at(dst, freelist_pgid * ps + 10, struct.pack("<H", 0xFFFF))
    damage.write_at(dst, freelist_pgid * ps + PAGE_HEADER_SIZE, struct.pack("<Q", count))
    return f"freelist count 0xFFFF then {count}"


def deep(dst: Path, depth: int) -> str:
    """Buckets nested ``depth`` levels (bbolt nests without limit), a pair at the bottom."""
    w = BoltWriter(str(dst), sync=False)
    for i in range(depth):
        w.begin_bucket(b"d%05d" % i)
    w.put(b"leaf", b"bottom")
    for _ in range(depth):
        w.end_bucket()
    w.close()
    return f"{depth} nested buckets"


def huge_value(dst: Path, size: int, text: bool = False) -> bytes:
    """One bucket with a value of ``size`` bytes between two small pairs; returns the value."""
    unit = b"0123456789abcdef" if text else random.Random(size).randbytes(1 << 16)
    value = (unit * (size // len(unit) + 1))[:size]
    w = BoltWriter(str(dst), sync=False)
    w.begin_bucket(b"big")
    w.put(b"a", b"small")
    w.put(b"huge", value)
    w.put(b"z", b"after")
    w.end_bucket()
    w.close()
    return value


def sparse(src: Path, dst: Path, size: int) -> str:
    """A sound file stretched to ``size`` bytes by a hole, with both metas' high-water mark covering it."""
    damage.copy(src, dst)
    ps = damage.page_size_of(dst)
    for index in (0, 1):
        damage.set_meta_field(dst, index, "pgid", size // ps)
    with open(dst, "r+b") as f:
        f.truncate(size)
    return f"sparse to {size} bytes, hwm {size // ps}"


def result_not_go_form(src: Path, dst: Path) -> str:
    """A copy of a cache.db whose `_result` values are valid JSON but not in Go's byte form: fields in the
    other order, Python's spaces, a \\u escape. bbolt and BuildKit's decoder read them as before."""
    from boltkit.storage import Database
    changed = [0]

    def edit(path, value: bytes) -> bytes:
        if path[:1] != (b"_result",) or not value.startswith(b"{"):
            return value
        obj = json.loads(value)
        style = changed[0] % 3
        changed[0] += 1
        if style == 0:
            return json.dumps({"ID": obj["ID"], "CreatedAt": obj["CreatedAt"]}, separators=(",", ":")).encode()
        if style == 1:
            return json.dumps(obj).encode()
        rid = obj["ID"]
        return ('{"CreatedAt":"%s","ID":"\\u%04x%s"}' % (obj["CreatedAt"], ord(rid[0]), rid[1:])).encode()

    def copy(db, w, bucket):
        for item in db.tree.items(bucket):
            if item.is_bucket:
                child = db.tree.child(bucket, item)
                w.begin_bucket(item.key, child.sequence)
                copy(db, w, child)
                w.end_bucket()
            else:
                w.put(item.key, edit(bucket.path, bytes(db.value(item))))

    with Database(str(src)) as db:
        w = BoltWriter(str(dst), page_size=db.page_size, sync=False)
        copy(db, w, db.root())
        w.close()
    return f"{changed[0]} _result values in another JSON form"


def swap_pages(path: Path, a: int, b: int) -> str:
    """Two pages exchanged in place, each keeping its own header (a write that landed at the wrong offset)."""
    ps = damage.page_size_of(path)
    raw = path.read_bytes()
    pa, pb = raw[a * ps:(a + 1) * ps], raw[b * ps:(b + 1) * ps]
    damage.write_at(path, a * ps, pb)
    damage.write_at(path, b * ps, pa)
    return f"pages {a} and {b} swapped"


def stale_page(path: Path, dst_pgid: int, src_pgid: int) -> str:
    """Page ``dst_pgid`` overwritten by a copy of ``src_pgid`` with its id rewritten to match: a page from another
    moment, self-consistent, in the wrong place (what a torn copy of a live file shows)."""
    ps = damage.page_size_of(path)
    page = bytearray(path.read_bytes()[src_pgid * ps:(src_pgid + 1) * ps])
    struct.pack_into("<Q", page, 0, dst_pgid)
    damage.write_at(path, dst_pgid * ps, bytes(page))
    return f"page {dst_pgid} replaced by page {src_pgid}'s contents"


def damage_store(path: Path, rng: random.Random) -> str:
    """One random damage, from damage.py's classes and this module's, applied to the store at ``path``."""
    from .campaign import _survey
    s = _survey(path)
    tree = s["branches"] + s["leaves"]
    kinds = ["bytes", "meta", "truncate", "zero"] + (["swap", "stale", "header", "element"] if len(tree) > 1 else [])
    kind = rng.choice(kinds)
    if kind == "bytes":
        return damage.random_bytes(path, rng, rng.choice([4, 32]))
    if kind == "meta":
        return damage.set_meta_field(path, rng.randrange(2), rng.choice(META_FIELDS[:4]), rng.choice(EXTREMES))
    if kind == "truncate":
        return damage.truncate(path, rng.randrange(s["ps"] * 2, max(s["size"], s["ps"] * 2 + 1)))
    if kind == "zero":
        return damage.zero_page(path, rng.choice(tree or [2]))
    a, b = rng.sample(tree, 2)
    if kind == "swap":
        return swap_pages(path, a, b)
    if kind == "stale":
        return stale_page(path, a, b)
    tmp = path.with_name(path.name + ".attack")
    if kind == "header":
        what = page_header_extreme(path, tmp, a, rng.choice(["count", "overflow", "flags"]), rng.choice(EXTREMES))
    else:
        what = element_extreme(path, tmp, a, 0, rng.choice(["pos", "ksize", "vsize"]), rng.choice(EXTREMES))
    os.replace(tmp, path)
    return what


def fifo(dst: Path) -> str:
    os.mkfifo(dst)
    return "a FIFO nobody writes to"


def unix_socket(dst: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(dst))
    return s


def copy_root(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst
