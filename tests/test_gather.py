"""The bulk gathers (storage/gather.py) against a byte-at-a-time reading of the same buffer: 16-byte records at any
offset (aligned ones through the 16-byte view, unaligned ones through the view with an item at every byte), and
the 8-byte big-endian key prefixes, including offsets in the buffer's last bytes and lengths past its end."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boltkit.schemas import BRANCH_ELEMENT, BUCKET_HEADER, LEAF_ELEMENT, PAGE_HEADER
from boltkit.storage.gather import Gather, compare_keys

LAYOUTS = [PAGE_HEADER, BRANCH_ELEMENT, LEAF_ELEMENT, BUCKET_HEADER]


def _buffer(seed: int, size: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(16, 5000), n=st.integers(1, 300),
       aligned=st.booleans(), layout=st.sampled_from(LAYOUTS))
def test_records_are_the_bytes_at_each_offset(seed, size, n, aligned, layout):
    data = _buffer(seed, size)
    rng = np.random.default_rng(seed + 1)
    off = rng.integers(0, size - 15, n).astype(np.int64)
    if aligned:
        off &= ~15
    got = Gather(data, size).records(layout.dtype, off)
    assert got.dtype == layout.dtype and got.shape == (n,)
    for i, o in enumerate(off.tolist()):
        want = layout.unpack_from(data, o)
        assert tuple(int(x) for x in got[i].tolist()) == want


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(1, 3000), n=st.integers(1, 300))
def test_prefix8_is_the_first_bytes_big_endian(seed, size, n):
    data = _buffer(seed, size)
    rng = np.random.default_rng(seed + 2)
    off = rng.integers(0, size, n).astype(np.int64)
    if n > 2:
        off[:2] = [size - 1, max(size - 8, 0)]      # the last item's neighbourhood, every time
    length = rng.integers(0, 20, n).astype(np.int64)
    got = Gather(data, size).prefix8(off, length)
    for i, (o, ln) in enumerate(zip(off.tolist(), length.tolist())):
        head = data[o:o + min(ln, 8)]
        assert int(got[i]) == int.from_bytes(head.ljust(8, b"\0"), "big")


def _neighbours(keys: list[bytes], pad: int):
    """The keys back to back in one buffer (then ``pad`` bytes of 0xff), and each neighbour pair's order by
    Python's bytes comparison: (gather, offsets, lengths, left indices, right indices, -1/0/1 per pair)."""
    data = b"".join(keys) + b"\xff" * pad
    off = np.cumsum([0] + [len(k) for k in keys[:-1]]).astype(np.int64)
    ln = np.array([len(k) for k in keys], np.int64)
    a, b = np.arange(len(keys) - 1), np.arange(1, len(keys))
    want = [(x > y) - (x < y) for x, y in zip(keys[:-1], keys[1:])]
    return Gather(data, len(data)), off, ln, a, b, want


@settings(max_examples=80, deadline=None)
@given(stem=st.binary(min_size=0, max_size=70),
       tails=st.lists(st.tuples(st.booleans(), st.binary(min_size=0, max_size=50)), min_size=2, max_size=40),
       pad=st.sampled_from([0, 8, 64]))
def test_compare_keys_is_bytes_order(stem, tails, pad):
    """Keys sharing a long prefix (the 32-byte rounds), some ending inside a block, some in the buffer's last
    bytes (pad 0: the 8-byte rounds)."""
    keys = [(stem if whole else stem[:len(t) % (len(stem) + 1)]) + t for whole, t in tails]
    g, off, ln, a, b, want = _neighbours(keys, pad)     # bytes after the last key must not count
    assert compare_keys(g, off[a], ln[a], off[b], ln[b]).tolist() == want
    first = g.prefix8(off, ln)
    assert compare_keys(g, off[a], ln[a], off[b], ln[b], first[a], first[b]).tolist() == want


@pytest.mark.parametrize("seed", range(6))
def test_compare_keys_on_long_shared_prefixes(seed):
    """Thousands of keys sharing prefixes of 0-80 bytes and differing at any byte after: every word of the
    32-byte blocks decides some pair."""
    rng = np.random.default_rng(seed)
    stems = [rng.integers(0, 256, rng.integers(0, 81), dtype=np.uint8).tobytes() for _ in range(8)]
    keys = []
    for _ in range(3000):
        stem = stems[rng.integers(0, len(stems))]
        tail = rng.integers(0, 3, rng.integers(0, 40), dtype=np.uint8).tobytes()     # few values: long ties
        keys.append(stem[:rng.integers(0, len(stem) + 1)] + tail if rng.random() < 0.2 else stem + tail)
    g, off, ln, a, b, want = _neighbours(keys, 64)
    assert compare_keys(g, off[a], ln[a], off[b], ln[b]).tolist() == want
