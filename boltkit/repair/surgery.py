"""Surgery: small, exact edits of a copy — revert the meta, abandon or rebuild the freelist, drop an element,
clear a leaf. Like `bbolt surgery`, the source is copied to the output first and only the copy is edited;
unlike it, each edit is checked afterwards and refused (the output removed) when it would leave a file
bbolt cannot open or use.
"""
from __future__ import annotations

import os
import shutil

import numpy as np

from ..check import Severity, check_file
from ..errors import OutputExists, Refused
from ..schemas import (FREELIST_COUNT_SENTINEL, META, META_CHECKSUMMED, PAGE_HEADER, PAGE_HEADER_SIZE,
                       PGID_NO_FREELIST, PageFlag, fnv1a64)
from ..storage import Database
from ..storage.pagemap import reachable_pages
from ..write import Run
from ..write.destination import output_error
from ..write.encode import encode_branch, encode_leaf


def _copy(src: str, dst: str) -> None:
    if os.path.exists(dst):
        raise OutputExists(f"{dst} already exists; refusing to overwrite it")
    with Database(src):     # a readable bbolt file, not a FIFO or a text file: refused before anything is written
        pass
    try:
        shutil.copyfile(src, dst)
    except BaseException as e:      # a full disk, a file size limit, a signal: no partial copy is left behind
        if os.path.exists(dst):
            os.unlink(dst)
        if isinstance(e, OSError):
            raise output_error(dst, e) from None
        raise


def _discard_on_failure(dst: str, edit) -> None:
    """Run ``edit()`` on the copy; if it fails the copy goes, so a refused edit leaves nothing behind."""
    try:
        edit()
    except BaseException:
        if os.path.exists(dst):
            os.unlink(dst)
        raise


def _verify(dst: str, what: str) -> None:
    """The output must check clean; otherwise it goes."""
    report = check_file(dst, revert=False)
    bad = [p for p in report.problems if p.severity != Severity.INFO]
    if not report.readable or bad:
        os.unlink(dst)
        lines = "; ".join(p.line() for p in bad[:3]) or "unreadable"
        raise Refused(f"{what} would leave a broken file ({lines}); nothing written")


def _write_meta(f, offset: int, fields: dict, page_id: int) -> None:
    body = bytearray(META.build(**fields))
    body[META_CHECKSUMMED:] = fnv1a64(bytes(body[:META_CHECKSUMMED])).to_bytes(8, "little")
    f.seek(offset)
    f.write(PAGE_HEADER.struct.pack(page_id, PageFlag.META, 0, 0) + bytes(body))


def _meta_fields(m) -> dict:
    return dict(magic=m.magic, version=m.version, page_size=m.page_size, flags=m.flags, root=m.root,
                sequence=m.sequence, freelist=m.freelist, pgid=m.pgid, txid=m.txid, checksum=0)


def revert_meta(src: str, dst: str) -> str:
    """Make the older meta current again (the previous transaction's tree), as `bbolt surgery revert-meta-page`."""
    with Database(src) as db:
        metas = [m for m in db.metas if m is not None and m.valid]
        if len(metas) < 2:
            raise Refused("only one meta page is valid: there is nothing to revert to")
        newest = max(metas, key=lambda m: m.txid)      # what bbolt uses, whatever boltkit read through
        older = db.metas[1 - newest.index]
        fields = _meta_fields(older)
        newer, ps = newest.index, db.page_size
    _copy(src, dst)
    with open(dst, "r+b") as f:
        _write_meta(f, newer * ps, fields, newer)
    _verify(dst, "reverting to the older meta")
    return f"meta {newer} now repeats meta {1 - newer} (txid {fields['txid']})"


def freelist_abandon(src: str, dst: str) -> str:
    """Both metas stop naming a freelist; bbolt rebuilds it from the tree at the next read-write open
    (and panics there if the tree has any fault, so a faulty tree is refused)."""
    _copy(src, dst)

    def edit():
        with Database(dst, lock=False) as db:
            metas = [(m.index, m.offset, _meta_fields(m)) for m in db.metas if m is not None and m.valid]
        with open(dst, "r+b") as f:
            for index, offset, fields in metas:
                fields["freelist"] = PGID_NO_FREELIST
                _write_meta(f, offset, fields, index)
        _verify(dst, "abandoning the freelist")
    _discard_on_failure(dst, edit)
    return "the freelist was abandoned in both meta pages; bbolt rebuilds it at the next read-write open"


def freelist_rebuild(src: str, dst: str) -> str:
    """A new freelist = every page below the high-water mark the tree does not use, written past the old
    high-water mark, and committed as a new transaction in the other meta slot (the old meta stays)."""
    _copy(src, dst)
    def rebuild() -> None:
        _rebuild_in_place(dst)
        _verify(dst, "rebuilding the freelist")
    _discard_on_failure(dst, rebuild)
    return "the freelist was rebuilt"


def _rebuild_in_place(path: str) -> None:
    with Database(path, lock=False) as db:
        meta = db.meta
        reached = set(reachable_pages(db, meta))
        spans: set[int] = set()
        for pgid in reached:
            _, _, _, overflow = db.pager.header(pgid)
            spans.update(range(pgid, pgid + overflow + 1))
        free = [p for p in range(2, meta.pgid) if p not in spans]
        ps = db.page_size
        fields = _meta_fields(meta)
        slot = 1 - meta.index
    n = len(free)
    body = np.array(free, dtype="<u8").tobytes()
    if n >= FREELIST_COUNT_SENTINEL:
        header_count, body = FREELIST_COUNT_SENTINEL, np.array([n], "<u8").tobytes() + body
    else:
        header_count = n
    pages = (PAGE_HEADER_SIZE + len(body)) // ps + 1
    at = fields["pgid"]
    with open(path, "r+b") as f:
        f.seek(at * ps)
        f.write(PAGE_HEADER.struct.pack(at, PageFlag.FREELIST, header_count, pages - 1) + body)
        f.write(bytes(pages * ps - PAGE_HEADER_SIZE - len(body)))
        f.flush()
        os.fsync(f.fileno())
        fields.update(freelist=at, pgid=at + pages, txid=fields["txid"] + 1)
        _write_meta(f, slot * ps, fields, slot)
        f.flush()
        os.fsync(f.fileno())


def drop_element(src: str, dst: str, pgid: int, index: int) -> str:
    """Remove element ``index`` from branch or leaf page ``pgid``, repacked as bbolt writes pages; pages it
    orphans (a dropped child subtree, a paged sub-bucket) go back to a rebuilt freelist."""
    with Database(src) as db:
        node = db.pager.node(pgid)
        if node.is_branch:
            elems = db.pager.branch_elements(node)
            if not 0 <= index < len(elems):
                raise Refused(f"page {pgid} has {len(elems)} elements; no element {index}")
            if len(elems) == 1:
                raise Refused(f"page {pgid} is a branch with one element: dropping it leaves an empty branch, "
                              "which crashes bbolt; drop the parent's element instead")
            entries = [(db.data[s:e], c) for i, (s, e, c) in enumerate(elems) if i != index]
            page = encode_branch(entries, pgid, db.page_size)
        else:
            flags, ks, ke, ve = db.pager.leaf_arrays(node)
            if not 0 <= index < len(flags):
                raise Refused(f"page {pgid} has {len(flags)} elements; no element {index}")
            keep = np.arange(len(flags)) != index
            page = encode_leaf([Run(db.data, flags[keep], ks[keep], ke[keep], ve[keep])], pgid, db.page_size)
        if len(page) > (node.overflow + 1) * db.page_size:
            raise Refused("the repacked page does not fit its old span")
        has_freelist, ps = db.meta.has_freelist, db.page_size
    _replace_page(src, dst, pgid * ps, page, has_freelist, f"dropping element {index} of page {pgid}")
    return f"element {index} of page {pgid} was dropped"


def clear_page(src: str, dst: str, pgid: int) -> str:
    """Empty leaf page ``pgid`` (every key and sub-bucket on it goes); refused for branches."""
    with Database(src) as db:
        node = db.pager.node(pgid)
        if node.is_branch:
            raise Refused(f"page {pgid} is a branch: clearing it leaves an empty branch, which crashes bbolt; "
                          "drop the parent's element that points at it instead")
        page = encode_leaf([], pgid, db.page_size)
        has_freelist, ps = db.meta.has_freelist, db.page_size
    _replace_page(src, dst, pgid * ps, page, has_freelist, f"clearing page {pgid}")
    return f"page {pgid} was cleared"


def _replace_page(src: str, dst: str, offset: int, page: bytes, has_freelist: bool, what: str) -> None:
    """Copy, write the new page, give the pages it orphans back to a rebuilt freelist, verify."""
    _copy(src, dst)
    with open(dst, "r+b") as f:
        f.seek(offset)
        f.write(page)
    if has_freelist:
        _rebuild_in_place(dst)
    _verify(dst, what)


__all__ = ["Refused", "revert_meta", "freelist_abandon", "freelist_rebuild", "drop_element", "clear_page"]
