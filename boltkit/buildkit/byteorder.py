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
    """The permutation that sorts ``codes`` by the bytes of their strings (stable for equal codes)."""
    codes = np.asarray(codes, np.int64)
    if codes.size < 2:
        return np.arange(codes.size)
    off, length = names.off[codes].astype(np.int64), names.length[codes].astype(np.int64)
    words = -(-int(length.max()) // 8)
    if words > _MAX_WORDS:
        strings = [names.bytes(c) for c in codes.tolist()]
        return np.array(sorted(range(codes.size), key=strings.__getitem__), np.int64)
    g = Gather(names.data, names.data.size)
    keys = [length]             # least significant first (lexsort is stable): length, the last word, ...
    keys += [g.prefix8(off + 8 * k, length - 8 * k) for k in reversed(range(words))]
    return np.lexsort(keys)


def byte_ranks(names: Names, codes: np.ndarray) -> np.ndarray:
    """Per element of ``codes``, the place of its string among the distinct strings of ``codes`` in byte
    order: sortable as integers, so pairs of ids sort as ``rank_a * n + rank_b``."""
    codes = np.asarray(codes, np.int64)
    unique, inverse = np.unique(codes, return_inverse=True)
    rank = np.empty(unique.size, np.int64)
    rank[byte_order(names, unique)] = np.arange(unique.size)
    return rank[inverse]
