"""Interned ids in the byte order of their strings, in bulk.

A prune lists its changes sorted by id bytes, as BuildKit's buckets are (and as a writer needs them); the
ids are integer codes into ``Names`` (check/strings.py), numbered in order of appearance, not of bytes.
Sorting 300k of them as Python bytes objects costs more than the rest of the plan, so here the strings are
compared as big-endian 64-bit words, a column at a time (``np.lexsort``), shorter strings first on a tie:
exactly ``bytes`` order. Only the words some string of the set reaches are read.
"""
from __future__ import annotations

import numpy as np

from ..storage.gather import Gather
from ..storage.strings import Names

_MAX_WORDS = 16        # strings longer than 128 bytes (never an id BuildKit writes): sorted as Python bytes


def byte_order(names: Names, codes: np.ndarray) -> np.ndarray:
    """The permutation that sorts ``codes`` by the bytes of their strings (stable for equal codes).
    ``names.data`` is read in whole 8-byte words (a mapped file is; a buffer of its own must be padded).

    Sorted on the first word, then only the runs still tied are sorted on the next word, and so on: ids
    that differ early (BuildKit's random and digest ids) cost one pass; a shared prefix (result ids start
    with the worker's id) a pass per word of it."""
    codes = np.asarray(codes, np.int64)
    m = codes.size
    if m < 2:
        return np.arange(m)
    off, length = names.off[codes].astype(np.int64), names.length[codes].astype(np.int64)
    if int(length.max()) > 8 * _MAX_WORDS:
        strings = [names.bytes(c) for c in codes.tolist()]
        return np.array(sorted(range(m), key=strings.__getitem__), np.int64)
    g = Gather(names.data, names.data.size)
    order = np.argsort(g.prefix8(off, length), kind="stable")
    key = g.prefix8(off[order], length[order])
    group = _runs(key)                                 # per position in ``order``: its run of equal prefixes
    k = 1
    while True:
        tied = _tied(group)
        if not tied.size:
            return order
        idx = order[tied]
        if k >= _MAX_WORDS or int(length[idx].max()) <= 8 * k:
            # equal up to the end of the shorter string: the shorter comes first
            order[tied] = idx[np.lexsort((length[idx], group[tied]))]
            return order
        word = g.prefix8(off[idx] + 8 * k, length[idx] - 8 * k)
        sub = np.lexsort((word, group[tied]))
        order[tied] = idx[sub]
        # the tied runs split where the new word differs: renumber them, apart from every other run
        word, grp = word[sub], group[tied][sub]
        split = np.ones(tied.size, bool)
        split[1:] = (word[1:] != word[:-1]) | (grp[1:] != grp[:-1])
        group[tied] = group.max() + 1 + np.cumsum(split)
        k += 1


def _runs(key: np.ndarray) -> np.ndarray:
    """Run numbers of a sorted key: equal neighbours share one."""
    new = np.ones(key.size, bool)
    new[1:] = key[1:] != key[:-1]
    return np.cumsum(new)


def _tied(group: np.ndarray) -> np.ndarray:
    """Positions whose run has more than one member."""
    same = group[1:] == group[:-1]
    tied = np.zeros(group.size, bool)
    tied[1:] |= same
    tied[:-1] |= same
    return np.flatnonzero(tied)


def byte_ranks(names: Names, codes: np.ndarray) -> np.ndarray:
    """Per element of ``codes``, the place of its string among the distinct strings of ``codes`` in byte
    order: sortable as integers, so pairs of ids sort as ``rank_a * n + rank_b``."""
    codes = np.asarray(codes, np.int64)
    unique, inverse = np.unique(codes, return_inverse=True)
    rank = np.empty(unique.size, np.int64)
    rank[byte_order(names, unique)] = np.arange(unique.size)
    return rank[inverse]
