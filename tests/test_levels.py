"""The bulk tree readers' slicing and key-order walk (storage/levels.py), and that the structural pass's slicing
(which bounds its memory) changes nothing it finds."""
from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest

from boltkit.check import check_file
from boltkit.check.scan import TreeScan
from boltkit.errors import CorruptionError
from boltkit.schemas import PAGE_HEADER
from boltkit.storage import Database
from boltkit.storage.gather import Gather
from boltkit.storage.levels import WINDOW_SHIFT, Inline, leaves_in_key_order, rechunk, release_windows, spans
from boltkit.write import BoltWriter

from .conftest import corpus_files


def test_spans_bound_entries_and_windows():
    rng = np.random.default_rng(1)
    off = np.sort(rng.integers(0, 1 << 30, 20000)) & ~4095     # sparse pages of a 1 GiB file
    got = list(spans(off, 8192, 64))
    assert got[0][0] == 0 and got[-1][1] == off.size
    assert all(b == c for (_, b), (c, _) in zip(got, got[1:]))
    for a, b in got:
        w = off[a:b] >> WINDOW_SHIFT
        assert 0 < b - a <= 8192 and np.unique(w).size <= 64
    dense = np.arange(8192) * 4096                                 # 8192 pages in a row: 512 windows, one slice
    assert list(spans(dense, 8192, 512)) == [(0, 8192)]
    assert list(spans(dense[:0], 8192, 512)) == []


def test_rechunk_is_the_concatenation_in_slices():
    rng = np.random.default_rng(2)
    sizes = rng.integers(0, 300, 40)
    parts = [Inline(*(rng.integers(0, 1 << 20, n) for _ in range(5))) for n in sizes]
    whole = Inline.concat(list(parts))
    got = list(rechunk(parts, 100))
    assert not parts                                                 # used up as it went
    assert [g.vs.size for g in got] == [100] * (int(sizes.sum()) // 100) + ([int(sizes.sum()) % 100]
                                                                           if sizes.sum() % 100 else [])
    for field in ("vs", "ve", "owner", "bucket", "hidden"):
        assert np.array_equal(np.concatenate([getattr(g, field) for g in got]), getattr(whole, field))


def _big(path, n=20000):
    with BoltWriter(str(path), page_size=1024) as w:
        w.begin_bucket(b"b")
        for i in range(n):
            w.put(b"k%08d" % i, b"v" * (i % 50))
        w.end_bucket()
    return path


def test_leaves_in_key_order_are_the_tree_walks(tmp_path):
    path = _big(tmp_path / "big.db")
    with Database(str(path)) as db:
        bucket = db.bucket([b"b"])
        want = [node.pgid for node, _ in db.tree.leaves(bucket)]
        assert len(want) > 100
        got = leaves_in_key_order(db.pager, Gather(db.data, db.file_size), bucket.root,
                                  np.zeros(db.pager.limit_pages, bool))
        assert got.pgid.tolist() == want
        assert np.all(got.base == got.pgid * 1024) and int(got.count.sum()) == 20000


def test_leaves_in_key_order_refuse_a_page_reached_twice_or_lying(tmp_path):
    path = _big(tmp_path / "big.db")
    with Database(str(path)) as db:
        root = db.bucket([b"b"]).root
        first_leaf = next(iter(db.tree.leaves(db.bucket([b"b"]))))[0].pgid
    bad = tmp_path / "twice.db"
    shutil.copy(path, bad)
    with open(bad, "r+b") as f:         # the root branch's second child pointer names its first child
        f.seek(root * 1024 + 16)
        first = f.read(16)
        f.seek(root * 1024 + 32 + 8)
        f.write(first[8:16])
    with Database(str(bad)) as db:
        with pytest.raises(CorruptionError, match="referenced again"):
            leaves_in_key_order(db.pager, Gather(db.data, db.file_size), root, np.zeros(db.pager.limit_pages, bool))
    typed = tmp_path / "type.db"
    shutil.copy(path, typed)
    with open(typed, "r+b") as f:       # a leaf that says it is a freelist page
        f.seek(first_leaf * 1024 + PAGE_HEADER.offset_of("flags"))
        f.write(b"\x10\x00")
    with Database(str(typed)) as db:
        with pytest.raises(CorruptionError, match="invalid type") as e:
            leaves_in_key_order(db.pager, Gather(db.data, db.file_size), root, np.zeros(db.pager.limit_pages, bool))
        assert e.value.pgid == first_leaf


@pytest.mark.parametrize("path", corpus_files("torn")[:6], ids=lambda p: p.parent.name + "/" + p.name)
def test_the_pass_finds_the_same_in_any_slicing(path, monkeypatch):
    """Slices of one 64 KiB window each (the memory bound at its tightest) find the problems the default slices
    find: the slicing bounds memory, it decides nothing. (Of two references to one page, which one enters it
    and which one is reported, with its stack and bucket, follows the order of the level's references, so
    those are compared by page.)"""
    def found():
        return Counter((p.code, p.pgid) if p.code in ("B024", "B025") else (p.code, p.pgid, p.path, p.message)
                       for p in check_file(path, revert=False).problems)
    default = found()
    monkeypatch.setattr(TreeScan, "CHUNK_WINDOWS", 1)
    assert found() == default


@pytest.mark.parametrize("seed", range(20))
def test_release_windows_covers_exactly_the_windows_touched(seed):
    """One call per run of touched 64 KiB windows: the calls' windows are the ranges' windows, no two calls
    touch or overlap, and they come in file order."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    start = rng.integers(0, 1 << 24, n) if seed % 2 else np.sort(rng.integers(0, 1 << 22, n))
    end = start + rng.integers(0, 1 << 18, n)
    calls: list[tuple[int, int]] = []
    release_windows(lambda a, b: calls.append((a, b)), start.astype(np.int64), end.astype(np.int64))
    want = set()
    for s, e in zip(start.tolist(), end.tolist()):
        want.update(range(s >> WINDOW_SHIFT, -(-e >> WINDOW_SHIFT)))
    got = set()
    for a, b in calls:
        assert a % (1 << WINDOW_SHIFT) == 0 and b % (1 << WINDOW_SHIFT) == 0 and b > a
        got.update(range(a >> WINDOW_SHIFT, b >> WINDOW_SHIFT))
    assert all(b < c for (_, b), (c, _) in zip(calls, calls[1:]))
    assert got == want


@pytest.mark.parametrize("seed", range(20))
def test_nodes_hold_is_the_per_element_bounds_test(seed):
    """TreeScan._nodes_hold (a node at a time, by reduceat) says yes exactly when no element's data starts
    inside its node's element table or ends past its node: the per-element test of _drop_bad_elements."""
    from boltkit.storage.levels import Nodes, expand
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    count = rng.integers(0, 6, n) * (rng.random(n) < 0.8)
    base = np.cumsum(rng.integers(200, 400, n)) * 16
    end = base + 4096
    z = np.zeros(n, np.int64)
    nodes = Nodes(z + 5, z + 5, base, end, z + 2, count.astype(np.int64), z, z - 1, z, z - 1, z, z - 1, z - 1)
    node, local, off = expand(nodes)
    table_end = base[node] + 16 + count[node] * 16
    ks = table_end + rng.integers(-3 if seed % 3 == 0 else 0, 100, node.size)
    ve = ks + rng.integers(0, 4200 if seed % 4 == 0 else 3000, node.size)
    ve = np.minimum(ve, end[node] + (1 if seed % 5 == 0 else 0))
    bad = (ve > end[node]) | (ks < table_end)
    assert TreeScan._nodes_hold(nodes, ks, ve) == (not bad.any())
