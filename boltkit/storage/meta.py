"""The two meta pages and the meta ladder: which tree a reader goes through, and why.

bbolt's own validation is magic, version, checksum (Meta.Validate), and it reads the valid meta with
the higher txid, whatever its high-water mark says about the file's length. We read the same meta
whenever the pages its tree starts from are in the file, and otherwise step down a ladder, saying on
every rung what was given up:

1. bbolt's choice: the valid meta with the higher txid, when its root page is a tree page in the file.
2. the other valid meta: an older transaction than bbolt reads (``older_than_bbolt``: damage).
3. a meta whose checksum fails but whose fields agree with the file (magic, version, a power-of-two page
   size where the meta sits, root and freelist inside the file and of the right page types, txid order):
   a torn meta write usually leaves every field but the checksum intact.
4. a valid meta whose root page is lost (cut off, overwritten): read as it is, its tree reported as damage.
5. no meta at all: the root is rebuilt from the tree pages (``rebuild``).

A page size is only trusted when it is a power of two in [512, 65536]; when no meta gives one, it is
probed from pages that identify themselves (their header id is their page number).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import OpenError
from ..schemas import (MAGIC, MAGIC_BE, META, META_CHECKSUMMED, META_OFFSET, PAGE_HEADER, PAGE_HEADER_SIZE,
                       PGID_NO_FREELIST, VERSION, PageFlag, fnv1a64)
from ..schemas import META1_PROBE_OFFSETS  # noqa: F401 - bbolt's own probe, for buildkit.startup's model of Open
from .freelist import freed_ids
from .rebuild import rebuild_root

# bbolt writes 4 KiB pages on most systems, 16/64 KiB on arm64 and ppc64le; 512 is its tested minimum
TRUSTED_PAGE_SIZES = tuple(512 << i for i in range(8))


def trusted_page_size(ps: int) -> bool:
    return ps in TRUSTED_PAGE_SIZES


@dataclass
class Meta:
    index: int | None     # 0 or 1; None for a meta rebuilt from the tree pages
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
    notes: list[str] = field(default_factory=list)     # what is odd but does not stop a reader (hwm past EOF)
    soft: list[str] = field(default_factory=list)      # fields that lie but are read past (the page size)
    bad_root: bool = False                               # its root page is not a tree page
    root_page_fault: str | None = None                   # that fault: the one judged from another page's content
    rebuilt: bool = False
    tied_root: int | None = None     # rebuilt: another root as fit that nothing orders against this one

    @property
    def slot(self) -> int:
        """0 or 1: the meta page this was read from (every meta but a rebuilt one has its slot)."""
        assert self.index is not None
        return self.index

    @property
    def valid(self) -> bool:
        """What bbolt's Meta.Validate accepts."""
        return not self.errors

    @property
    def checksum_ok(self) -> bool:
        return self.checksum == self.computed_checksum

    @property
    def usable(self) -> bool:
        """Valid for bbolt, and its tree can be entered."""
        return not self.errors and not self.faults and not self.soft

    @property
    def consistent(self) -> bool:
        """Every field agrees with the file; only the checksum may have failed (rung 3 of the ladder)."""
        return not self.faults and self.magic == MAGIC and self.version == VERSION

    @property
    def has_freelist(self) -> bool:
        return self.freelist != PGID_NO_FREELIST

    @property
    def label(self) -> str:
        return "rebuilt root" if self.rebuilt else f"meta {self.index}"

    def as_dict(self) -> dict:
        return {
            "meta": self.index, "offset": self.offset, "page_id": self.page_id,
            "magic": f"0x{self.magic:08x}", "version": self.version, "page_size": self.page_size,
            "flags": self.flags, "root": self.root, "root_sequence": self.sequence,
            "freelist": None if not self.has_freelist else self.freelist, "hwm": self.pgid,
            "txid": self.txid, "checksum": f"0x{self.checksum:016x}",
            "checksum_ok": self.checksum_ok, "valid": self.valid, "usable": self.usable,
            "consistent": self.consistent, "rebuilt": self.rebuilt,
            "errors": self.errors + self.soft + self.faults, "notes": self.notes,
        }


def decode_meta(data, offset: int, index: int, file_size: int, page_size: int | None = None) -> Meta | None:
    """Decode the meta page at ``offset``; None when the file is too short to hold one. ``page_size`` is the
    file's page size as the ladder found it (default: the meta's own, when trusted)."""
    end = offset + META_OFFSET + META.size
    if end > file_size:
        return None
    pid, pflags, _, _ = PAGE_HEADER.unpack_from(data, offset)
    fields = META.unpack_from(data, offset + META_OFFSET)
    computed = fnv1a64(data[offset + META_OFFSET:offset + META_OFFSET + META_CHECKSUMMED])
    m = Meta(index, offset, pid, pflags, *fields, computed_checksum=computed)  # type: ignore[misc]
    if m.magic != MAGIC:
        m.errors.append("invalid magic (not a bbolt meta page)")
    elif m.version != VERSION:
        m.errors.append(f"version mismatch: {m.version}, expected {VERSION}")
    elif m.checksum != computed:
        m.errors.append(f"checksum error: stored 0x{m.checksum:016x}, computed 0x{computed:016x}")
    if m.magic == MAGIC and m.version == VERSION:
        _judge(m, data, file_size, page_size)
    return m


def _judge(m: Meta, data, file_size: int, file_ps: int | None) -> None:
    """Faults: what keeps a reader out of this meta's tree. The high-water mark past the end of the file is
    only a note: bbolt reads such a file as long as the pages its tree needs are there."""
    ps = m.page_size
    if file_ps is None:
        if not trusted_page_size(ps):
            m.faults.append(f"page size {ps} is not a power of two in [512, 65536]")
            return
    elif ps != file_ps:
        # the field lies (every other field is judged at the file's page size): never trusted, read past
        m.soft.append(f"page size {ps}" + (" is not a power of two in [512, 65536]" if not trusted_page_size(ps)
                                            else "") + f", but the file's pages are {file_ps} bytes")
        ps = file_ps
    if m.offset != m.slot * ps:
        m.faults.append(f"meta {m.index} found at offset {m.offset}, but its page size {ps} puts it at {m.slot * ps}")
    if not 2 <= m.root < m.pgid:
        m.faults.append(f"root page {m.root} outside [2, hwm {m.pgid})")
    if m.has_freelist and not 2 <= m.freelist < m.pgid:
        m.faults.append(f"freelist page {m.freelist} outside [2, hwm {m.pgid})")
    if m.pgid * ps > file_size:
        m.notes.append(f"high-water mark {m.pgid} x page size {ps} = {m.pgid * ps} bytes, the file has {file_size}: "
                       "the file was cut short")
    if 2 <= m.root < m.pgid:
        if m.root * ps + PAGE_HEADER_SIZE > file_size:
            m.faults.append(f"root page {m.root} is beyond the end of the file ({file_size} bytes): "
                            "the file is truncated")
        else:
            rid, rflags, _, _ = PAGE_HEADER.unpack_from(data, m.root * ps)
            if rid != m.root or rflags not in (PageFlag.BRANCH, PageFlag.LEAF):
                m.bad_root = True
                m.root_page_fault = (f"root page {m.root} is not a tree page (header id {rid}, "
                                     f"type {PageFlag.name_of(rflags)})")
                m.faults.append(m.root_page_fault)
    if m.has_freelist and 2 <= m.freelist < m.pgid:
        if m.freelist * ps + PAGE_HEADER_SIZE > file_size:
            m.notes.append(f"freelist page {m.freelist} is beyond the end of the file")
        elif not m.checksum_ok:
            fid, fflags, _, _ = PAGE_HEADER.unpack_from(data, m.freelist * ps)
            if fid != m.freelist or fflags != PageFlag.FREELIST:
                m.faults.append(f"freelist page {m.freelist} is not a freelist page (header id {fid}, "
                                f"type {PageFlag.name_of(fflags)})")
    if m.page_flags != PageFlag.META:
        m.faults.append(f"meta page flags 0x{m.page_flags:02x}, expected 0x04")


class ChoiceWarning(str):
    """One warning of the meta choice: the text a user reads, and its ``kind`` a caller tests (the checker turns
    the page-size one into B002) instead of reading the text. Still a str for whoever only shows it."""

    PAGE_SIZE = "page-size"        # the page size is not meta 0's: probed from the other meta or the pages
    FORCED = "forced"              # a meta forced by the caller that bbolt would reject
    READ_THROUGH = "read-through"  # reading through a meta bbolt rejects, or a rebuilt root
    kind: str

    def __new__(cls, kind: str, text: str) -> ChoiceWarning:
        self = super().__new__(cls, text)
        self.kind = kind
        return self

    def __reduce__(self):       # pickled into fsck's worker processes with the report
        return (ChoiceWarning, (self.kind, str(self)))


@dataclass
class MetaChoice:
    metas: list[Meta | None]
    page_size: int
    current: Meta
    reason: str
    rung: str = "bbolt"                  # bbolt | older | checksum | broken | rebuilt | forced
    bbolt: Meta | None = None            # the meta bbolt itself would read (None: bbolt cannot open the file)
    warnings: list[ChoiceWarning] = field(default_factory=list)
    page_size_source: str = "meta 0"

    @property
    def older_than_bbolt(self) -> bool:
        """We read an older transaction than bbolt would: damage, never a silent success."""
        return (self.rung != "forced" and self.bbolt is not None and self.current is not self.bbolt
                and self.current.txid < self.bbolt.txid)

    @property
    def damaged(self) -> bool:
        """Reading through this choice gives up something bbolt would read, or reads what bbolt cannot."""
        return self.rung in ("older", "checksum", "broken", "rebuilt")


def _metas_at(data, file_size: int, ps: int) -> list[Meta | None]:
    return [decode_meta(data, 0, 0, file_size, ps), decode_meta(data, ps, 1, file_size, ps)]


def probe_page_size(data, file_size: int) -> int | None:
    """The page size at which the most pages identify themselves (header id = page number, a page type).
    One strided view per candidate: a look at every page header, no per-page Python."""
    best, best_n = None, 0
    for ps in TRUSTED_PAGE_SIZES:
        n = file_size // ps
        if n <= 2:
            continue
        ids = np.ndarray((n,), dtype="<u8", buffer=data, offset=0, strides=(ps,))
        flags = np.ndarray((n,), dtype="<u2", buffer=data, offset=8, strides=(ps,))
        pages = np.arange(n, dtype=np.uint64)
        ok = (ids == pages) & np.isin(flags, (PageFlag.BRANCH, PageFlag.LEAF, PageFlag.FREELIST))
        ok[:2] = False
        hits = int(ok.sum())
        # a smaller size sees every page of a larger one at twice the id, so it never wins by aliasing; ties
        # (a file of a single page) go to the larger size
        if hits >= best_n and hits > 0:
            best, best_n = ps, hits
    return best


def _root_at(data, file_size: int, m: Meta, ps: int) -> bool:
    """Meta ``m``'s root page identifies itself at page size ``ps`` (a meta whose page size field lies)."""
    off = m.root * ps
    if not 2 <= m.root or off + PAGE_HEADER_SIZE > file_size:
        return False
    rid, rflags, _, _ = PAGE_HEADER.unpack_from(data, off)
    return rid == m.root and rflags in (PageFlag.BRANCH, PageFlag.LEAF)


def _candidate_sizes(data, file_size: int) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    m0 = decode_meta(data, 0, 0, file_size)
    if m0 is not None and m0.magic == MAGIC and m0.version == VERSION and trusted_page_size(m0.page_size):
        out.append((m0.page_size, "meta 0"))
    for ps in TRUSTED_PAGE_SIZES:         # meta 1 sits at one page size from the start: it names its own
        cand = decode_meta(data, ps, 1, file_size)
        if cand is None:
            break
        if cand.magic == MAGIC and cand.version == VERSION and all(ps != p for p, _ in out) and \
                (cand.page_size == ps or _root_at(data, file_size, cand, ps)):
            out.append((ps, "meta 1"))
    return out


def discover(data, file_size: int, force: int | None = None) -> MetaChoice:
    """Find the page size and walk the meta ladder (see the module docstring)."""
    if file_size >= 20 and bytes(data[16:20]) == MAGIC_BE:
        raise OpenError("big-endian bbolt file (written on s390x/ppc64/mips); only little-endian files are supported")
    warnings: list[ChoiceWarning] = []
    cands = _candidate_sizes(data, file_size)
    scored: list = []
    for ps, source in cands:
        metas = _metas_at(data, file_size, ps)
        score = (sum(m is not None and m.usable for m in metas), sum(m is not None and m.consistent for m in metas),
                 sum(m is not None and m.valid for m in metas))
        scored.append((score, -len(scored), ps, source, metas))
    if scored:
        score, _, page_size, ps_source, metas = max(scored)
        if score[:2] == (0, 0):
            probed = probe_page_size(data, file_size)
            if probed is not None and probed != page_size:
                page_size, ps_source, metas = probed, "probed from the pages", _metas_at(data, file_size, probed)
    else:
        page_size = probe_page_size(data, file_size)
        if page_size is None:
            m0 = decode_meta(data, 0, 0, file_size)
            if m0 is None or m0.magic != MAGIC:
                raise OpenError("not a bbolt database: no valid meta page (no bbolt magic at the start of the file) "
                                "and no page that identifies itself")
            raise OpenError("no usable meta page and no page that identifies itself: meta 0: "
                            + "; ".join(m0.errors + m0.soft + m0.faults))
        ps_source = "probed from the pages"
        metas = _metas_at(data, file_size, page_size)
    if ps_source != "meta 0":
        m0 = decode_meta(data, 0, 0, file_size)
        said = f"meta 0 says {m0.page_size}" if m0 is not None and m0.magic == MAGIC else "meta 0 has no bbolt magic"
        warnings.append(ChoiceWarning(ChoiceWarning.PAGE_SIZE, f"page size {page_size} {ps_source} ({said})"))

    valid = [m for m in metas if m is not None and m.valid]
    bbolt = max(valid, key=lambda m: (m.txid, -m.slot)) if valid else None
    if force is not None:
        chosen = metas[force]
        if chosen is None or not (chosen.valid or chosen.consistent):
            raise OpenError(f"meta {force} is invalid: " + ("; ".join(chosen.errors + chosen.soft + chosen.faults)
                                                            if chosen else "missing"))
        if not chosen.valid:
            warnings.append(ChoiceWarning(ChoiceWarning.FORCED,
                                          f"meta {force}: {'; '.join(chosen.errors)}; its fields agree with the file"))
        return MetaChoice(metas, page_size, chosen, f"meta {force} chosen by the caller", "forced", bbolt, warnings,
                          ps_source)
    usable = [m for m in metas if m is not None and m.usable]
    if bbolt is not None and not bbolt.usable and bbolt.consistent:
        # bbolt's choice, whose page size field lies: its tree is the newest transaction, at the file's page size
        reason = f"meta {bbolt.index} (txid {bbolt.txid}): " + "; ".join(bbolt.soft) + "; read at the file's page size"
        warnings.append(ChoiceWarning(ChoiceWarning.READ_THROUGH, f"reading through {reason}"))
        return MetaChoice(metas, page_size, bbolt, reason, "checksum", bbolt, warnings, ps_source)
    if usable:
        best = max(usable, key=lambda m: (m.txid, -m.slot))
        other = metas[1 - best.slot]
        if bbolt is not None and best is not bbolt:
            reason = (f"meta {best.index} (txid {best.txid}): meta {bbolt.index} has the newer txid {bbolt.txid}, "
                      f"which bbolt reads, but it is unusable: " + "; ".join(bbolt.faults))
            return MetaChoice(metas, page_size, best, reason, "older", bbolt, warnings, ps_source)
        if other is None or not other.usable:
            why = "the other meta is " + ("missing" if other is None
                                          else "unusable: " + "; ".join(other.errors + other.soft + other.faults))
            reason = f"meta {best.index} (txid {best.txid}): {why}"
        else:
            reason = f"meta {best.index} has the higher txid ({best.txid} > {other.txid})"
        return MetaChoice(metas, page_size, best, reason, "bbolt", bbolt, warnings, ps_source)
    consistent = [m for m in metas if m is not None and m.consistent and _txid_in_order(m, metas)]
    if consistent:
        best = max(consistent, key=lambda m: (m.txid, -m.slot))
        if len(consistent) == 2:       # txids that failed their checksum are no witness: the file is
            best = newer_meta(consistent[0], consistent[1], data, file_size) or best
        reason = (f"meta {best.index} (txid {best.txid}): {'; '.join(best.errors + best.soft)}, but every other "
                  "field agrees with the file; no meta passes bbolt's validation")
        warnings.append(ChoiceWarning(ChoiceWarning.READ_THROUGH, f"reading through {reason}"))
        return MetaChoice(metas, page_size, best, reason, "checksum", bbolt, warnings, ps_source)
    # a meta bbolt would read, but whose root page is lost (a truncated file): its tree is damage to report,
    # and the pages it no longer reaches are orphans for salvage. Better than a root rebuilt from the tree
    # pages, which would as likely be a freed root of an older transaction, bringing deleted keys back.
    located = [m for m in metas if m is not None and m.valid and m.page_size == page_size
               and m.offset == m.slot * page_size]
    if located:
        best = max(located, key=lambda m: (m.txid, -m.slot))
        reason = f"meta {best.index} (txid {best.txid}), whose tree cannot be entered: " + "; ".join(best.faults)
        warnings.append(ChoiceWarning(ChoiceWarning.READ_THROUGH, f"reading through {reason}"))
        return MetaChoice(metas, page_size, best, reason, "broken", bbolt, warnings, ps_source)
    found = rebuild_root(data, file_size, page_size)
    if found is None:
        reasons = [f"meta {i}: " + ("missing" if m is None else "; ".join(m.errors + m.soft + m.faults))
                   for i, m in enumerate(metas)]
        raise OpenError("both meta pages are unusable and no root bucket could be rebuilt from the tree pages: "
                        + "; ".join(reasons))
    rebuilt = Meta(None, -1, -1, PageFlag.META, MAGIC, VERSION, page_size, 0, found.root, 0, found.freelist,
                   found.pgid, 0, 0, 0, rebuilt=True, tied_root=found.tied)
    rebuilt.errors.append("rebuilt from the tree pages: no meta page could be used")
    rebuilt.notes.append(found.note)
    reasons = [f"meta {i}: " + ("missing" if m is None else "; ".join(m.errors + m.soft + m.faults))
               for i, m in enumerate(metas)]
    reason = (f"root rebuilt from the tree pages (root page {rebuilt.root}, {rebuilt.notes[0]}): no usable meta ("
              + "; ".join(reasons) + ")")
    warnings.append(ChoiceWarning(ChoiceWarning.READ_THROUGH, f"reading through the {reason}"))
    return MetaChoice(metas, page_size, rebuilt, reason, "rebuilt", bbolt, warnings, ps_source)


def newer_by_freelist(a: Meta, b: Meta, data, file_size: int) -> bool:
    """Meta ``a`` is a later transaction than ``b``: a's freelist lists b's root page and not the reverse. Every
    write rewrites the root bucket's page, so the transaction after b frees b's root; but b's freelist may list
    a's root too (a page free then, reused since), and then the freelists are no witness."""
    if not a.has_freelist or a.root == b.root:
        return False
    ids = freed_ids(data, file_size, a.page_size, a.freelist)
    if ids is None or b.root not in ids:
        return False
    back = freed_ids(data, file_size, b.page_size, b.freelist) if b.has_freelist else None
    return back is None or a.root not in back


def newer_meta(a: Meta, b: Meta, data, file_size: int) -> Meta | None:
    """The later transaction of ``a`` and ``b`` by what the file witnesses, not by their txids (which a torn
    meta write may have garbled): the freelist (``newer_by_freelist``), then the high-water mark, which bbolt
    only ever raises (a transaction allocates past it when no freed page fits; nothing lowers it), then txids
    one apart: bbolt writes transaction N into slot N % 2, so the two metas of a file always hold consecutive
    txids, and a garbled txid landing next to the other's by chance is negligible (the same trust
    ``_txid_in_order`` gives one torn meta). None when none of these tells."""
    if newer_by_freelist(a, b, data, file_size):
        return a
    if newer_by_freelist(b, a, data, file_size):
        return b
    if a.pgid != b.pgid:
        return a if a.pgid > b.pgid else b
    if abs(a.txid - b.txid) == 1:
        return a if a.txid > b.txid else b
    return None


def _txid_in_order(m: Meta, metas: list[Meta | None]) -> bool:
    """A meta whose checksum failed is believed only if its txid sits next to the other meta's (a flipped txid
    is the commonest torn-meta damage)."""
    if m.valid:
        return True
    other = metas[1 - m.slot]
    if other is None or not other.valid:     # its txid is no better witness than ours
        return True
    return abs(m.txid - other.txid) == 1
