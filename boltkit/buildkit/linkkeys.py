"""Link keys of cache.db recognised in bulk.

Every healthy `_links/<id>` key is Go's canonical CacheInfoLink JSON, '@', and the target id. Among the
keys of one length, one is matched by cachedb's canonical regex and the others are compared with it
column by column (literal bytes equal, digits where it has digits, hex where it has hex, no '@' in the
target); the keys that differ start the next layout. A representative that is not canonical but has
every field in order with zero values spelled out (``SPELLED_OUT_LINK_KEY``: what another tool or a hand
edit writes) starts a layout the same way, whose keys are poison keys (C9) by construction. Whatever no
layout accepts is decoded by ``decode_link_key``, exactly, one at a time.
"""
from __future__ import annotations

import numpy as np

from ..storage.strings import by_length, chunks, hash_rows, rows_at
from .cachedb import CANONICAL_LINK_KEY, SPELLED_OUT_LINK_KEY, Link, decode_link_key

_I64 = np.int64
_DIGIT = np.zeros(256, bool)
_DIGIT[ord("0"):ord("9") + 1] = True
_HEX = _DIGIT.copy()
_HEX[ord("a"):ord("f") + 1] = True
_DIGEST_KINDS = (np.frombuffer(b"sha256:", np.uint8), np.frombuffer(b"random:", np.uint8))
_LAYOUTS_PER_LENGTH = 32          # past that, a length's remaining keys are decoded one by one


def link_layouts(u8: np.ndarray, size: int, off: np.ndarray, length: np.ndarray) -> tuple:
    """Of the link keys at the file ranges ``off``, ``length`` (one chunk of the structural pass, its pages
    resident): the offset of the '@' before each one's target (-1: in no layout, or not wholly in the file;
    ``slow_link`` decides those), the targets' hashes (``hash_rows``) from the rows at hand, and which keys are in a
    spelled-out layout (C9, ``NOT_CANONICAL``)."""
    at = np.full(off.size, -1, _I64)
    spelled = np.zeros(off.size, bool)
    h1 = np.zeros(off.size, np.uint64)
    h2 = np.zeros(off.size, np.uint64)
    usable = np.flatnonzero((length >= 3) & (off + length <= size))
    for n_len, group in by_length(length[usable]):
        for idx in chunks(usable[group], n_len):
            _match_layouts(rows_at(u8, off[idx], n_len), idx, at, h1, h2, spelled)
    return at, h1, h2, spelled


def slow_link(src: str, key: bytes) -> tuple[Link | None, int]:
    """A link key no layout took, decoded exactly: the poison key (None: it is not one) and the offset of
    the '@' before its target (-1: it has none)."""
    link = decode_link_key(src, key)
    return (link if link.error else None), (key.index(b"@") if link.target else -1)


def _match_layouts(rows: np.ndarray, idx: np.ndarray, at: np.ndarray, h1: np.ndarray, h2: np.ndarray,
                   spelled: np.ndarray) -> None:
    """Link keys of one length, as rows: for each one in a canonical or spelled-out layout, its '@' offset
    and its target's hashes (and, spelled out, its flag)."""
    for _ in range(_LAYOUTS_PER_LENGTH):
        if not idx.size:
            return
        rep = rows[0].tobytes()
        m = CANONICAL_LINK_KEY.fullmatch(rep)
        spans: list[tuple[int, int]] | None
        if m is not None:
            spans, zero_ok = [m.span(g) for g in (1, 2, 3, 4, 5)], False
        else:
            m = SPELLED_OUT_LINK_KEY.fullmatch(rep)
            spans, zero_ok = ([m.span(g) for g in "IODST"], True) if m is not None else (None, False)
        fits = _fits_layout(rows, spans, zero_ok) if spans else np.eye(1, idx.size, dtype=bool)[0]
        if spans:
            t = spans[4][0]
            at[idx[fits]] = t - 1
            h1[idx[fits]], h2[idx[fits]] = hash_rows(rows[fits, t:])
            if zero_ok:       # a row of a spelled-out layout may still be canonical: no "0", no "" written
                assert m is not None
                empty = any(m.group(p) is not None and m.group(v) is None for p, v in (("d", "D"), ("s", "S")))
                wrong = np.full(idx.size, empty)
                for s, e in spans[:2]:
                    if e - s == 1:
                        wrong |= rows[:, s] == ord("0")
                spelled[idx[fits & wrong]] = True
        idx, rows = idx[~fits], rows[~fits]


def _fits_layout(rows: np.ndarray, spans: list, zero_ok: bool) -> np.ndarray:
    """Rows (keys of one length) that have the layout of the key whose value spans (Input, Output, Digest,
    Selector, target) are ``spans``; ``zero_ok``: a lone '0' is a valid Input or Output (spelled out)."""
    rep = rows[0]
    literal = np.ones(rows.shape[1], bool)
    fits = np.ones(rows.shape[0], bool)
    for s, e in spans[:2]:                            # Input, Output: decimal, no leading zero
        if s >= 0:
            fits &= _DIGIT[rows[:, s:e]].all(1)
            if not (zero_ok and e - s == 1):
                fits &= rows[:, s] != ord("0")
            literal[s:e] = False
    for s, e in spans[2:4]:                           # Digest, Selector: sha256:/random: and 64 hex
        if s >= 0:
            kind = rows[:, s:s + 7]
            fits &= (kind == _DIGEST_KINDS[0]).all(1) | (kind == _DIGEST_KINDS[1]).all(1)
            fits &= _HEX[rows[:, s + 7:e]].all(1)
            literal[s:e] = False
    s = spans[4][0]
    fits &= (rows[:, s:] != ord("@")).all(1)
    literal[s:] = False
    fits &= (rows[:, literal] == rep[literal]).all(1)
    return fits
