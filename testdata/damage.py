"""Damage classes applied to a copy of a valid bbolt file. Each returns a short description.

Used by the tests and the corruption campaign; every function edits only the copy it is given.
"""
from __future__ import annotations

import random
import shutil
import struct
from pathlib import Path

from boltkit.schemas import META_OFFSET, PAGE_HEADER_SIZE, fnv1a64
from boltkit.schemas.layout import META, META_CHECKSUMMED


def copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


def page_size_of(path: Path) -> int:
    return struct.unpack_from("<I", path.read_bytes(), 24)[0]


def write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def zero_page(path: Path, pgid: int) -> str:
    ps = page_size_of(path)
    write_at(path, pgid * ps, bytes(ps))
    return f"zeroed page {pgid}"


def flip_bits(path: Path, offset: int, mask: int = 0xFF) -> str:
    b = path.read_bytes()[offset]
    write_at(path, offset, bytes([b ^ mask]))
    return f"flipped bits 0x{mask:02x} at offset {offset}"


def truncate(path: Path, size: int) -> str:
    with open(path, "r+b") as f:
        f.truncate(size)
    return f"truncated to {size} bytes"


def damage_meta(path: Path, index: int) -> str:
    """Break meta ``index``'s checksum (a torn meta write)."""
    ps = page_size_of(path) if index == 1 else 0
    off = index * ps + META_OFFSET + META.offset_of("txid")
    return flip_bits(path, off, 0x5A) + f" (meta {index} txid)"


def set_meta_field(path: Path, index: int, field: str, value: int) -> str:
    """Rewrite a meta field and fix its checksum, so only the field's meaning is wrong."""
    ps = page_size_of(path)
    base = index * ps + META_OFFSET
    data = bytearray(path.read_bytes()[base:base + META.size])
    struct.pack_into("<Q" if META.dtype[field].itemsize == 8 else "<I", data, META.offset_of(field), value)
    struct.pack_into("<Q", data, META_CHECKSUMMED, fnv1a64(bytes(data[:META_CHECKSUMMED])))
    write_at(path, base, bytes(data))
    return f"meta {index} {field} = {value}"


def random_bytes(path: Path, rng: random.Random, n: int = 8) -> str:
    size = path.stat().st_size
    offs = [rng.randrange(size) for _ in range(n)]
    for off in offs:
        flip_bits(path, off, rng.randrange(1, 256))
    return f"random damage at {offs}"


def header_offset(path: Path, pgid: int, field_offset: int = 0) -> int:
    return pgid * page_size_of(path) + field_offset


__all__ = ["copy", "zero_page", "flip_bits", "truncate", "damage_meta", "set_meta_field", "random_bytes",
           "header_offset", "PAGE_HEADER_SIZE"]
