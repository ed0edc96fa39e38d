"""Serialising nodes the way every bbolt writer lays them out (node.write / WriteInodeToPage).

Header, element array, then keys and values packed in element order with no gaps; ``pos`` is
relative to each element; the tail of the last page is zero.
"""
from __future__ import annotations

from ..schemas import (BRANCH_ELEMENT, BUCKET_HEADER, ELEMENT_SIZE, LEAF_ELEMENT, MAX_ELEMENTS, PAGE_HEADER,
                       PAGE_HEADER_SIZE, PageFlag)

LeafEntry = tuple[bytes, bytes, int]      # key, value, flags
BranchEntry = tuple[bytes, int]           # first key of the child, child page id


def leaf_size(entries: list[LeafEntry]) -> int:
    return PAGE_HEADER_SIZE + sum(ELEMENT_SIZE + len(k) + len(v) for k, v, _ in entries)


def encode_leaf(entries: list[LeafEntry], pgid: int, page_size: int | None) -> bytes:
    """A leaf page (``page_size`` given: padded to whole pages with the overflow count set) or,
    with ``page_size=None``, the exact bytes of an inline bucket's page."""
    n = len(entries)
    if n >= MAX_ELEMENTS:
        raise ValueError(f"{n} elements in one page (bbolt allows fewer than {MAX_ELEMENTS})")
    elems = bytearray()
    data = bytearray()
    data_start = PAGE_HEADER_SIZE + ELEMENT_SIZE * n
    pack = LEAF_ELEMENT.struct.pack
    for i, (k, v, flags) in enumerate(entries):
        pos = data_start + len(data) - (PAGE_HEADER_SIZE + ELEMENT_SIZE * i)
        elems += pack(flags, pos, len(k), len(v))
        data += k
        data += v
    return _finish(PageFlag.LEAF, pgid, n, bytes(elems), bytes(data), page_size)


def encode_branch(entries: list[BranchEntry], pgid: int, page_size: int) -> bytes:
    n = len(entries)
    if n >= MAX_ELEMENTS:
        raise ValueError(f"{n} elements in one page (bbolt allows fewer than {MAX_ELEMENTS})")
    elems = bytearray()
    data = bytearray()
    data_start = PAGE_HEADER_SIZE + ELEMENT_SIZE * n
    pack = BRANCH_ELEMENT.struct.pack
    for i, (k, child) in enumerate(entries):
        if child == pgid:
            raise ValueError(f"branch page {pgid} would point to itself")
        pos = data_start + len(data) - (PAGE_HEADER_SIZE + ELEMENT_SIZE * i)
        elems += pack(pos, len(k), child)
        data += k
    return _finish(PageFlag.BRANCH, pgid, n, bytes(elems), bytes(data), page_size)


def _finish(flags: int, pgid: int, count: int, elems: bytes, data: bytes, page_size: int | None) -> bytes:
    size = PAGE_HEADER_SIZE + len(elems) + len(data)
    if page_size is None:
        return PAGE_HEADER.struct.pack(pgid, flags, count, 0) + elems + data
    pages = -(-size // page_size)
    header = PAGE_HEADER.struct.pack(pgid, flags, count, pages - 1)
    return header + elems + data + bytes(pages * page_size - size)


def pages_for(size: int, page_size: int) -> int:
    return -(-size // page_size)


def bucket_value(root: int, sequence: int, inline_page: bytes = b"") -> bytes:
    return BUCKET_HEADER.struct.pack(root, sequence) + inline_page
