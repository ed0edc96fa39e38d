"""Link keys of cache.db recognised in bulk.

Every healthy `_links/<id>` key is Go's canonical CacheInfoLink JSON, '@', and the target id. Among the
keys of one length, one is matched by cachedb's canonical regex and the others are compared with it
column by column (literal bytes equal, digits where it has digits, hex where it has hex, no '@' in the
target); the keys that differ start the next layout. Whatever no layout accepts is decoded by
``decode_link_key``, exactly, one at a time.
"""
from __future__ import annotations

import numpy as np

from ..check.gather import Gather
from ..check.strings import by_length, chunks, hash_rows, rows_at, string_at, string_hashes
from .cachedb import CANONICAL_LINK_KEY, Link, decode_link_key

_I64 = np.int64
_DIGIT = np.zeros(256, bool)
_DIGIT[ord("0"):ord("9") + 1] = True
_HEX = _DIGIT.copy()
_HEX[ord("a"):ord("f") + 1] = True
_DIGEST_KINDS = (np.frombuffer(b"sha256:", np.uint8), np.frombuffer(b"random:", np.uint8))
_LAYOUTS_PER_LENGTH = 32          # past that, a length's remaining keys are decoded one by one


def link_targets(g: Gather, links) -> tuple:
    """Of the link keys of ``links`` (cachecolumns.Entries): which have a target, the targets as file ranges
    with their ``string_hashes``, and the poison keys (C9/C17) by index, with their reason."""
    off, length = links.key_off, links.key_len
    at = np.full(off.size, -1, _I64)                 # offset of the '@' inside the key; -1 = slow path
    h1 = np.zeros(off.size, np.uint64)               # the targets' string_hashes, from the rows at hand
    h2 = np.zeros(off.size, np.uint64)
    u8 = g.u8
    usable = np.flatnonzero((length >= 3) & (off + length <= g.size))
    for n_len, group in by_length(length[usable]):
        for idx in chunks(usable[group]):
            _match_layouts(rows_at(u8, off[idx], n_len), idx, at, h1, h2)

    errors: dict[int, Link] = {}
    slow = np.flatnonzero(at < 0)
    for i in slow:
        key = string_at(u8, off, length, i)
        src = string_at(u8, links.name_off, links.name_len, links.owner[i]).decode("utf-8", "replace")
        link = decode_link_key(src, key)
        if link.error:
            errors[int(i)] = link
        if link.target:
            at[i] = key.index(b"@")
    slow = slow[at[slow] >= 0]
    h1[slow], h2[slow] = string_hashes(g, off[slow] + at[slow] + 1, length[slow] - at[slow] - 1)
    has = at >= 0
    return has, off[has] + at[has] + 1, length[has] - at[has] - 1, errors, (h1[has], h2[has])


def _match_layouts(rows: np.ndarray, idx: np.ndarray, at: np.ndarray, h1: np.ndarray, h2: np.ndarray) -> None:
    """Link keys of one length, as rows: for each canonical one, its '@' offset and its target's hashes."""
    for _ in range(_LAYOUTS_PER_LENGTH):
        if not idx.size:
            return
        m = CANONICAL_LINK_KEY.fullmatch(rows[0].tobytes())
        fits = _fits_layout(rows, m) if m is not None else np.eye(1, idx.size, dtype=bool)[0]
        if m is not None:
            at[idx[fits]] = m.start(5) - 1
            h1[idx[fits]], h2[idx[fits]] = hash_rows(rows[fits, m.start(5):])
        idx, rows = idx[~fits], rows[~fits]


def _fits_layout(rows: np.ndarray, m) -> np.ndarray:
    """Rows (keys of one length) that have the layout of the canonical key matched by ``m``."""
    rep = rows[0]
    literal = np.ones(rows.shape[1], bool)
    fits = np.ones(rows.shape[0], bool)
    for grp in (1, 2):                                # Input, Output: decimal, no leading zero
        s, e = m.span(grp)
        if s >= 0:
            fits &= _DIGIT[rows[:, s:e]].all(1) & (rows[:, s] != ord("0"))
            literal[s:e] = False
    for grp in (3, 4):                                # Digest, Selector: sha256:/random: and 64 hex
        s, e = m.span(grp)
        if s >= 0:
            kind = rows[:, s:s + 7]
            fits &= (kind == _DIGEST_KINDS[0]).all(1) | (kind == _DIGEST_KINDS[1]).all(1)
            fits &= _HEX[rows[:, s + 7:e]].all(1)
            literal[s:e] = False
    s = m.start(5)
    fits &= (rows[:, s:] != ord("@")).all(1)
    literal[s:] = False
    fits &= (rows[:, literal] == rep[literal]).all(1)
    return fits
