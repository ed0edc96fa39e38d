"""The corruption campaign: every damage class of the checker issue, aimed at real structures of a file.

``damage_cases(path, rng)`` looks at a valid file (through boltkit's own reader, as a harness) and
returns named functions, each of which damages a copy in one specific way. ``go_pages(output)``
extracts the page ids from the oracle's `tx.Check` output so the tests can demand that boltkit
reports at the same pages.
"""
from __future__ import annotations

import random
import re
import struct
from pathlib import Path
from typing import Callable

from boltkit.schemas import BUCKET_HEADER, BUCKET_LEAF_FLAG, ELEMENT_SIZE, PAGE_HEADER_SIZE, PageFlag
from boltkit.storage import Database
from boltkit.storage.pagemap import page_map

from . import damage

Case = tuple[str, Callable[[Path], str]]


def _survey(path: Path) -> dict:
    with Database(path) as db:
        infos, _ = page_map(db)
        ps, hwm = db.page_size, db.hwm
        fl = db.freelist()
        s = {"ps": ps, "hwm": hwm, "size": db.file_size,
             "branches": [p.pgid for p in infos if p.kind == "branch"],
             "leaves": [p.pgid for p in infos if p.kind == "leaf"],
             "free": [p.pgid for p in infos if p.kind in ("free", "pending")],
             "freelist": None if fl is None else (fl.pgid, fl.overflow, len(fl.ids), fl.raw_count),
             "inline": [], "branch_children": {}, "leaf_pairs": []}
        for pg in s["branches"]:
            node = db.pager.node(pg)
            s["branch_children"][pg] = [(i, c) for i, (_, _, c) in enumerate(db.pager.branch_elements(node))]
        for pg in s["leaves"]:
            node = db.pager.node(pg)
            elems = db.pager.leaf_elements(node)
            for i, (flags, ks, ke, ve) in enumerate(elems):
                if flags & BUCKET_LEAF_FLAG and ve - ke >= 32 and BUCKET_HEADER.unpack_from(db.data, ke)[0] == 0:
                    s["inline"].append(ke + BUCKET_HEADER.size)     # offset of the inline page header
            for i in range(len(elems) - 1):
                (_, a0, a1, _), (_, b0, b1, _) = elems[i], elems[i + 1]
                if a1 - a0 == b1 - b0 and a1 > a0:
                    s["leaf_pairs"].append((a0, b0, a1 - a0))
    return s


def damage_cases(path: Path, rng: random.Random) -> list[Case]:
    s = _survey(path)
    ps, hwm = s["ps"], s["hwm"]
    tree_pages = s["branches"] + s["leaves"]
    cases: list[Case] = []

    def add(name, fn):
        cases.append((name, fn))

    if tree_pages:
        pg = rng.choice(tree_pages)
        add("zeroed page", lambda p, pg=pg: damage.zero_page(p, pg))
        flags = rng.choice([0x00, 0x04, 0x10, 0x08, 0x03])
        add("page flags", lambda p, pg=pg, f=flags: damage.write_at(p, pg * ps + 8, struct.pack("<H", f)) or
            f"page {pg} flags -> 0x{f:02x}")
        fld = rng.choice([0, 10, 12])
        add("header bits", lambda p, pg=pg, o=fld: damage.flip_bits(p, pg * ps + o, rng.randrange(1, 256)))
    if s["leaves"]:
        pg = rng.choice(s["leaves"])
        add("element bits", lambda p, pg=pg: damage.flip_bits(p, pg * ps + PAGE_HEADER_SIZE + rng.randrange(4, 16),
                                                                rng.choice([0x80, 0xFF, 0x10])))
    if s["leaf_pairs"]:
        a, b, n = rng.choice(s["leaf_pairs"])

        def swap(p, a=a, b=b, n=n):
            raw = p.read_bytes()
            ka, kb = raw[a:a + n], raw[b:b + n]
            damage.write_at(p, a, kb)
            damage.write_at(p, b, ka)
            return f"swapped keys at {a} and {b}"
        add("swapped keys", swap)
    if s["freelist"] is not None:
        fpg, fov, n, raw_count = s["freelist"]
        reachable = rng.choice(tree_pages) if tree_pages else 3
        if raw_count != 0xFFFF and PAGE_HEADER_SIZE + 8 * (n + 1) <= (fov + 1) * ps:
            for label, pid in (("freelist duplicate", None), ("freelist reachable", reachable),
                               ("freelist own page", fpg), ("freelist beyond hwm", hwm + 5),
                               ("freelist meta page", 1)):
                def add_id(p, pid=pid, label=label):
                    ids = list(struct.unpack_from(f"<{n}Q", p.read_bytes(), fpg * ps + PAGE_HEADER_SIZE))
                    new = ids[0] if pid is None and ids else (pid if pid is not None else 3)
                    ids = sorted(ids + [new])
                    damage.write_at(p, fpg * ps + 10, struct.pack("<H", n + 1))
                    damage.write_at(p, fpg * ps + PAGE_HEADER_SIZE, struct.pack(f"<{n + 1}Q", *ids))
                    return f"{label}: added {new}"
                add(label, add_id)
    add("truncated", lambda p: damage.truncate(p, rng.randrange(2 * ps, max(hwm * ps, 2 * ps + 1))))
    add("meta 0", lambda p: damage.damage_meta(p, 0))
    add("meta 1", lambda p: damage.damage_meta(p, 1))
    add("both metas", lambda p: damage.damage_meta(p, 0) + damage.damage_meta(p, 1))
    branches = [(pg, ch) for pg, ch in s["branch_children"].items() if ch]
    if branches:
        pg, children = rng.choice(branches)
        i, _ = rng.choice(children)
        off = pg * ps + PAGE_HEADER_SIZE + i * ELEMENT_SIZE + 8
        target = rng.choice([pg] + tree_pages)
        add("child to live page", lambda p, off=off, t=target: damage.write_at(p, off, struct.pack("<Q", t)) or
            f"child pointer -> live page {t}")
        far = rng.choice([hwm + 1000, 99_999_999, s["size"] // ps + 1])
        add("child beyond EOF", lambda p, off=off, t=far: damage.write_at(p, off, struct.pack("<Q", t)) or
            f"child pointer -> {t}")
    if s["inline"]:
        at = rng.choice(s["inline"])
        add("inline count", lambda p, at=at: damage.write_at(p, at + 10, struct.pack("<H", 500)) or "inline count 500")
        add("inline flags", lambda p, at=at: damage.write_at(p, at + 8, struct.pack("<H", PageFlag.BRANCH)) or
            "inline flags branch")
    return cases


_PAGE = re.compile(r"page (\d+)")


def go_pages(output: str) -> set[int]:
    """Page ids named by the oracle's check (including `invalid page type: N` panics)."""
    pages = {int(m) for m in _PAGE.findall(output)}
    pages |= {int(m) for m in re.findall(r"invalid page type: (\d+)", output)}
    pages |= {int(m) for m in re.findall(r"Page expected to be: (\d+)", output)}
    return pages
