"""Every on-disk layout fact of bbolt, written once.

Each structure is a field table; the construct schema (declarative, checked decoding for
diagnostics and the writer), the numpy dtype (bulk reads straight off the mapped file) and the
``struct`` format (single hot-path reads) are all derived from the same table, so an offset or a
size can never disagree between the readers and the writer.

bbolt casts Go structs over the file, so integers are in the writer's byte order; every machine
that runs BuildKit in practice is little-endian and we read little-endian only (big-endian files
are recognised by their magic and refused with a clear message).
"""
from __future__ import annotations

import struct
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import construct as cs

_KINDS = {      # construct's type (by name: construct is imported when a schema is first used), dtype, struct
    "u16": ("Int16ul", "<u2", "H"),
    "u32": ("Int32ul", "<u4", "I"),
    "u64": ("Int64ul", "<u8", "Q"),
}


class Layout:
    """One fixed-size on-disk structure, with its three derived views."""

    def __init__(self, name: str, fields: tuple[tuple[str, str], ...]):
        self.name = name
        self.fields = fields
        self.names = tuple(n for n, _ in fields)
        self.dtype = np.dtype([(n, _KINDS[k][1]) for n, k in fields])
        self.struct = struct.Struct("<" + "".join(_KINDS[k][2] for _, k in fields))
        self.size = self.struct.size
        assert self.size == self.dtype.itemsize

    @cached_property
    def schema(self):
        """The construct schema, built on first use: the bulk readers never need it, and importing construct
        (with hashlib, pdb and inspect behind it) was a tenth of a `check`'s interpreter start."""
        import construct as cs
        schema = cs.Struct(*[(n / getattr(cs, _KINDS[k][0])) for n, k in self.fields])
        assert schema.sizeof() == self.size
        return schema

    def offset_of(self, field: str) -> int:
        fields = self.dtype.fields
        assert fields is not None        # a structured dtype, built from the field table
        return fields[field][1]

    def parse(self, data, offset: int = 0) -> cs.Container:
        """Checked decoding through construct (diagnostics, single structures)."""
        return self.schema.parse(bytes(data[offset:offset + self.size]))

    def build(self, **values) -> bytes:
        return self.schema.build(values)

    def unpack_from(self, data, offset: int = 0) -> tuple:
        return self.struct.unpack_from(data, offset)


# Every page starts with this header (page.go: type page struct).
PAGE_HEADER = Layout("page header", (
    ("id", "u64"),        # the page's own id; 0 inside inline buckets
    ("flags", "u16"),     # page type, see PageFlag
    ("count", "u16"),     # elements, or freelist ids (0xFFFF = count stored in the first id slot)
    ("overflow", "u32"),  # additional contiguous pages covered by this page
))

# The meta struct that follows the page header on pages 0 and 1 (db.go: type meta struct).
META = Layout("meta", (
    ("magic", "u32"),
    ("version", "u32"),
    ("page_size", "u32"),
    ("flags", "u32"),
    ("root", "u64"),       # root bucket's root page (the root bucket is never inline)
    ("sequence", "u64"),   # root bucket's sequence
    ("freelist", "u64"),   # freelist page, or PGID_NO_FREELIST
    ("pgid", "u64"),       # high-water mark: pages [0, pgid) are in use
    ("txid", "u64"),
    ("checksum", "u64"),   # FNV-1a 64 of the meta bytes before this field
))

# Branch page element: pos is relative to the element's own offset.
BRANCH_ELEMENT = Layout("branch element", (
    ("pos", "u32"),
    ("ksize", "u32"),
    ("pgid", "u64"),
))

# Leaf page element: pos is relative to the element's own offset; the value follows the key.
LEAF_ELEMENT = Layout("leaf element", (
    ("flags", "u32"),     # BUCKET_LEAF_FLAG when the value is a bucket header
    ("pos", "u32"),
    ("ksize", "u32"),
    ("vsize", "u32"),
))

# The value of a bucket entry starts with this header; root 0 means an inline page follows.
BUCKET_HEADER = Layout("bucket header", (
    ("root", "u64"),
    ("sequence", "u64"),
))

PAGE_HEADER_SIZE = PAGE_HEADER.size
ELEMENT_SIZE = LEAF_ELEMENT.size
assert ELEMENT_SIZE == BRANCH_ELEMENT.size
META_OFFSET = PAGE_HEADER_SIZE                     # meta struct inside pages 0 and 1
META_CHECKSUMMED = META.offset_of("checksum")      # bytes of the meta struct the checksum covers
BUCKET_HEADER_SIZE = BUCKET_HEADER.size
FREELIST_U64 = np.dtype("<u8")                     # freelist ids
