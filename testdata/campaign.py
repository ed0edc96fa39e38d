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
             "inline": [], "branch_children": {}, "leaf_pairs": [], "leaf_counts": {}}
        for pg in s["branches"]:
            node = db.pager.node(pg)
            s["branch_children"][pg] = [(i, c) for i, (_, _, c) in enumerate(db.pager.branch_elements(node))]
        for pg in s["leaves"]:
            node = db.pager.node(pg)
            elems = db.pager.leaf_elements(node)
            if node.overflow == 0:
                s["leaf_counts"][pg] = len(elems)
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


def _set_meta_ps(p: Path, index: int, ps: int, base_ps: int) -> None:
    from boltkit.schemas import META_OFFSET, fnv1a64
    from boltkit.schemas.layout import META, META_CHECKSUMMED
    base = index * base_ps + META_OFFSET
    data = bytearray(p.read_bytes()[base:base + META.size])
    struct.pack_into("<I", data, META.offset_of("page_size"), ps)
    struct.pack_into("<Q", data, META_CHECKSUMMED, fnv1a64(bytes(data[:META_CHECKSUMMED])))
    damage.write_at(p, base, bytes(data))


def salvage_cases(path: Path, rng: random.Random) -> list[Case]:
    """The damage classes of the meta-ladder and element-recovery issue, aimed at one valid file: metas that lie
    (checksums, page sizes, overwritten, zeroed), leaves with one bad element or a header that lies, a copy cut
    inside its last used page, and pages swapped whole."""
    s = _survey(path)
    ps = s["ps"]
    cases: list[Case] = []

    def add(name, fn):
        cases.append((name, fn))
    add("both checksums", lambda p: damage.damage_meta(p, 1) + damage.damage_meta(p, 0))
    add("pages 0-1 zeroed", lambda p: damage.write_at(p, 0, bytes(2 * ps)) or "pages 0-1 zeroed")
    add("first 64 KiB zeroed", lambda p: damage.write_at(p, 0, bytes(min(64 << 10, s["size"]))) or "64 KiB zeroed")
    bogus = rng.choice([12288, 4097, 3000]) if ps == 4096 else ps * 3
    add("page size not 2^n (meta 0)", lambda p, v=bogus: _set_meta_ps(p, 0, v, ps) or f"meta 0 page size {v}")
    add("page size not 2^n (both)", lambda p, v=bogus: _set_meta_ps(p, 1, v, ps) or _set_meta_ps(p, 0, v, ps)
        or f"both page sizes {v}")
    wrong = ps // 2 if ps > 512 else ps * 2
    add("wrong page size (meta 0)", lambda p, v=wrong: _set_meta_ps(p, 0, v, ps) or f"meta 0 page size {v}")
    add("wrong page size (both)", lambda p, v=wrong: _set_meta_ps(p, 1, v, ps) or _set_meta_ps(p, 0, v, ps)
        or f"both page sizes {v}")
    victim = rng.choice([0, 1])
    add("meta overwritten", lambda p, v=victim: damage.write_at(p, v * ps, bytes(rng.randrange(256) for _ in range(ps)))
        or f"meta {v} overwritten")
    leaves = [pg for pg in s["leaves"] if pg in s["leaf_counts"] and s["leaf_counts"][pg] >= 4]
    if leaves:
        pg = rng.choice(leaves)
        n = s["leaf_counts"][pg]

        def bad_element(p, pg=pg, n=n):
            i = rng.randrange(n)
            field = rng.choice([4, 8, 12])        # pos, ksize, vsize
            damage.write_at(p, pg * ps + PAGE_HEADER_SIZE + i * ELEMENT_SIZE + field, struct.pack("<I", 0x7FFF0000))
            return f"page {pg} element {i} field {field} out of bounds"
        add("one bad element", bad_element)
        add("lying count", lambda p, pg=pg: damage.write_at(p, pg * ps + 10, struct.pack("<H", 0xFFFF)) or
            f"page {pg} count 65535")
        add("lying overflow", lambda p, pg=pg: damage.write_at(p, pg * ps + 12, struct.pack("<I", 0xFFFFFFFF)) or
            f"page {pg} overflow 2^32-1")
        add("header bit flips", lambda p, pg=pg: [damage.flip_bits(p, pg * ps + rng.choice([8, 10, 11, 12]),
                                                                  1 << rng.randrange(8)) for _ in range(5)] and
            f"page {pg}: 5 header bits")
    # a torn `cp`: the copy ends inside the last page the tree uses (bbolt reads the rest of it as zeros)
    used = min(s["size"], s["hwm"] * ps)
    add("cut inside the last page", lambda p, cut=rng.randrange(1, ps): damage.truncate(p, used - cut))
    single = [pg for pg in s["leaves"] if pg in s["leaf_counts"]]
    if len(single) >= 2:
        a, b = rng.sample(single, 2)

        def swap(p, a=a, b=b):
            raw = p.read_bytes()
            pa, pb = raw[a * ps:(a + 1) * ps], raw[b * ps:(b + 1) * ps]
            damage.write_at(p, a * ps, pb)
            damage.write_at(p, b * ps, pa)
            return f"pages {a} and {b} swapped"
        add("two leaves swapped", swap)
        if s["branches"]:
            br = rng.choice([q for q in s["branches"] if q not in (a,)] or s["branches"])
            add("leaf and branch swapped", lambda p, a=a, br=br: swap(p, a, br))
    return cases
