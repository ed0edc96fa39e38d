"""The bulk orderings the prune's plan and the columns rest on: interned ids sorted by their bytes a word at a
time (byteorder.py), and hashes grouped by a packed plain sort (strings._unique), each against the plain way."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from boltkit.buildkit.byteorder import byte_order, byte_ranks
from boltkit.storage import strings
from boltkit.storage.strings import Names

# few distinct bytes and shared prefixes: ties that need many words, zero bytes that pad like the end of a string
_STRINGS = st.lists(st.one_of(st.binary(max_size=40),
                              st.builds(lambda p, s: p + s, st.sampled_from([b"", b"w0rker::", b"\0" * 17, b"a" * 30]),
                                        st.binary(max_size=20)),
                              st.just(b"x" * 200)), min_size=1, max_size=40, unique=True)


def names_of(strings_: list[bytes]) -> Names:
    buf = b"".join(strings_)
    offs = np.cumsum([0] + [len(s) for s in strings_[:-1]])
    data = np.frombuffer(buf + bytes(16 - len(buf) % 8), np.uint8)      # whole words, as a mapped file
    return Names(data, np.array(offs, np.int64), np.array([len(s) for s in strings_], np.int64))


@settings(max_examples=200, deadline=None)
@given(strs=_STRINGS, picks=st.lists(st.integers(0, 10**6), max_size=60))
def test_byte_order_is_bytes_order_and_stable(strs, picks):
    names = names_of(strs)
    codes = np.array([p % len(strs) for p in picks], np.int64)
    order = byte_order(names, codes)
    assert order.tolist() == sorted(range(codes.size), key=lambda i: strs[codes[i]])
    ranks = byte_ranks(names, codes)
    assert [(a < b) for a, b in zip(ranks, ranks[1:])] == [strs[a] < strs[b] for a, b in zip(codes, codes[1:])]


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 40), st.integers(2**63, 2**63 + 5)),
                       max_size=300))
def test_unique_groups_like_numpy(values):
    h = np.array(values, np.uint64)
    first, inv = strings._unique(h)
    _, index, inverse = np.unique(h, return_index=True, return_inverse=True)
    assert first.tolist() == index.tolist() and inv.tolist() == inverse.ravel().tolist()
