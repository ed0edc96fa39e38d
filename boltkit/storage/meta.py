"""The two meta pages: decoding, validation, page-size discovery, and choosing the current one.

bbolt's own validation is magic, version, checksum (Meta.Validate). We also judge whether a meta is
*usable*: a checksum-valid meta whose root or freelist lies beyond its high-water mark, or whose
pages lie beyond the end of the file, would send any reader into garbage, so we do not pick it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import OpenError
from ..schemas import (MAGIC, MAGIC_BE, MAX_PAGE_SIZE, META, META1_PROBE_OFFSETS, META_CHECKSUMMED,
                       META_OFFSET, MIN_PAGE_SIZE, PAGE_HEADER, PGID_NO_FREELIST, VERSION, PageFlag,
                       fnv1a64)


@dataclass
class Meta:
    index: int            # 0 or 1
    offset: int           # byte offset of the meta page in the file
    page_id: int
    page_flags: int
    magic: int
    version: int
    page_size: int
    flags: int
    root: int
    sequence: int
    freelist: int
    pgid: int
    txid: int
    checksum: int
    computed_checksum: int
    errors: list[str] = field(default_factory=list)    # why bbolt itself would reject it
    faults: list[str] = field(default_factory=list)    # why we would not read through it
    bad_root: bool = False                               # its root page is not a tree page
    root_page_fault: str | None = None                   # that fault: the one judged from another page's content

    @property
    def valid(self) -> bool:
        """What bbolt's Meta.Validate accepts."""
        return not self.errors

    @property
    def usable(self) -> bool:
        return not self.errors and not self.faults

    @property
    def has_freelist(self) -> bool:
        return self.freelist != PGID_NO_FREELIST

    def as_dict(self) -> dict:
        return {
            "meta": self.index, "offset": self.offset, "page_id": self.page_id,
            "magic": f"0x{self.magic:08x}", "version": self.version, "page_size": self.page_size,
            "flags": self.flags, "root": self.root, "root_sequence": self.sequence,
            "freelist": None if not self.has_freelist else self.freelist, "hwm": self.pgid,
            "txid": self.txid, "checksum": f"0x{self.checksum:016x}",
            "checksum_ok": self.checksum == self.computed_checksum,
            "valid": self.valid, "usable": self.usable, "errors": self.errors + self.faults,
        }


def decode_meta(data, offset: int, index: int, file_size: int) -> Meta | None:
    """Decode the meta page at ``offset``; None when the file is too short to hold one."""
    end = offset + META_OFFSET + META.size
    if end > file_size:
        return None
    pid, pflags, _, _ = PAGE_HEADER.unpack_from(data, offset)
    fields = META.unpack_from(data, offset + META_OFFSET)
    computed = fnv1a64(data[offset + META_OFFSET:offset + META_OFFSET + META_CHECKSUMMED])
    m = Meta(index, offset, pid, pflags, *fields, computed_checksum=computed)
    if m.magic != MAGIC:
        m.errors.append("invalid magic (not a bbolt meta page)")
    elif m.version != VERSION:
        m.errors.append(f"version mismatch: {m.version}, expected {VERSION}")
    elif m.checksum != computed:
        m.errors.append(f"checksum error: stored 0x{m.checksum:016x}, computed 0x{computed:016x}")
    if not m.errors:
        _judge(m, data, file_size)
    return m


def _judge(m: Meta, data, file_size: int) -> None:
    ps = m.page_size
    if not MIN_PAGE_SIZE <= ps <= MAX_PAGE_SIZE:
        m.faults.append(f"implausible page size {ps}")
        return
    if m.offset != m.index * ps:
        m.faults.append(f"meta {m.index} found at offset {m.offset}, but its page size {ps} puts it at {m.index * ps}")
    if not 2 <= m.root < m.pgid:
        m.faults.append(f"root page {m.root} outside [2, hwm {m.pgid})")
    if m.has_freelist and not 2 <= m.freelist < m.pgid:
        m.faults.append(f"freelist page {m.freelist} outside [2, hwm {m.pgid})")
    if m.pgid * ps > file_size:
        m.faults.append(f"file is truncated: hwm {m.pgid} x page size {ps} = {m.pgid * ps} bytes, "
                        f"file has {file_size}")
    elif m.root * ps + PAGE_HEADER.size <= file_size:
        rid, rflags, _, _ = PAGE_HEADER.unpack_from(data, m.root * ps)
        if rid != m.root or rflags not in (PageFlag.BRANCH, PageFlag.LEAF):
            m.bad_root = True
            m.root_page_fault = (f"root page {m.root} is not a tree page (header id {rid}, "
                                 f"type {PageFlag.name_of(rflags)})")
            m.faults.append(m.root_page_fault)
    if m.page_flags != PageFlag.META:
        m.faults.append(f"meta page flags 0x{m.page_flags:02x}, expected 0x04")


@dataclass
class MetaChoice:
    metas: list[Meta | None]
    page_size: int
    current: Meta
    reason: str


def discover(data, file_size: int, force: int | None = None) -> MetaChoice:
    """Find the page size and pick the current meta the way bbolt does, falling back on damage."""
    if file_size >= 20 and bytes(data[16:20]) == MAGIC_BE:
        raise OpenError("big-endian bbolt file (written on s390x/ppc64/mips); only little-endian files are supported")
    meta0 = decode_meta(data, 0, 0, file_size)
    page_size = None
    meta1 = None
    if meta0 is not None and meta0.valid and MIN_PAGE_SIZE <= meta0.page_size <= MAX_PAGE_SIZE:
        page_size = meta0.page_size
        meta1 = decode_meta(data, page_size, 1, file_size)
    if meta1 is None or not meta1.valid:
        # meta 0 is damaged (or disagrees): probe meta 1 at 1 KiB .. 16 MiB like bbolt's getPageSize
        for off in META1_PROBE_OFFSETS:
            cand = decode_meta(data, off, 1, file_size)
            if cand is None:
                break
            if cand.valid and cand.page_size == off:
                meta1 = cand
                if page_size is None:
                    page_size = off
                break
    if page_size is None:
        if meta0 is None or meta0.magic != MAGIC:
            raise OpenError("not a bbolt database: no valid meta page (no bbolt magic at the start of the file)")
        raise OpenError("both meta pages are invalid: meta 0: " + "; ".join(meta0.errors or meta0.faults)
                        + (("; meta 1: " + "; ".join(meta1.errors)) if meta1 else "; meta 1: not found"))
    metas = [meta0, meta1 if meta1 is not None and meta1.offset == page_size else None]
    if metas[1] is None:
        metas[1] = decode_meta(data, page_size, 1, file_size)
    if force is not None:
        chosen = metas[force]
        if chosen is None or not chosen.valid:
            raise OpenError(f"meta {force} is invalid: " + ("; ".join(chosen.errors) if chosen else "missing"))
        return MetaChoice(metas, page_size, chosen, f"meta {force} chosen by the caller")
    usable = [m for m in metas if m is not None and m.usable]
    if not usable:
        reasons = []
        for i, m in enumerate(metas):
            reasons.append(f"meta {i}: " + ("missing" if m is None else "; ".join(m.errors + m.faults)))
        raise OpenError("both meta pages are unusable: " + "; ".join(reasons))
    best = max(usable, key=lambda m: (m.txid, -m.index))
    other = metas[1 - best.index]
    if other is None or not other.usable:
        why = "the other meta is " + ("missing" if other is None else "unusable: " + "; ".join(other.errors + other.faults))
        reason = f"meta {best.index} (txid {best.txid}): {why}"
    else:
        reason = f"meta {best.index} has the higher txid ({best.txid} > {other.txid})"
    return MetaChoice(metas, page_size, best, reason)
