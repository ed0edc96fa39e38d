"""The writer: files it produces read back exactly, check clean, and (with the oracle) satisfy real bbolt,
which can then open them read-write, change them and still pass tx.Check."""
from __future__ import annotations

import os

import numpy as np
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boltkit.check import check_file
from boltkit.cli import main
from boltkit.storage import Database
from boltkit.write import BoltWriter
from boltkit.write.builder import greedy_cuts
from testdata.trees import Bucket, dump_lines, page_sizes, trees, write_tree

from .conftest import corpus_files, corpus_id

import pytest


def export_lines(path) -> list[str]:
    r = CliRunner().invoke(main, ["export", "-e", "hex", str(path)])
    assert r.exit_code == 0, r.output
    return r.output.splitlines()


def write(path, tree, page_size=4096, **kw):
    with BoltWriter(path, page_size=page_size, **kw) as w:
        write_tree(w, tree)
    return path


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tree=trees, page_size=page_sizes)
def test_round_trip_through_our_reader(tmp_path_factory, tree, page_size):
    path = write(tmp_path_factory.mktemp("w") / "t.db", tree, page_size)
    assert export_lines(path) == dump_lines(tree)
    report = check_file(path)
    assert report.clean, [p.line() for p in report.problems[:5]]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tree=trees, page_size=page_sizes, fill=st.sampled_from([0.1, 0.5, 1.0]))
def test_a_bucket_put_whole_is_the_file_written_pair_by_pair(tmp_path_factory, tree, page_size, fill):
    """put_bucket (a prune's 400k id buckets) writes exactly the bytes begin_bucket, put and end_bucket write,
    inline or not, at every page size and fill."""
    d = tmp_path_factory.mktemp("w")
    one_by_one = write(d / "a.db", tree, page_size, fill_percent=fill)
    with BoltWriter(d / "b.db", page_size=page_size, fill_percent=fill) as w:
        write_tree(w, tree, whole_buckets=True)
    assert (d / "b.db").read_bytes() == one_by_one.read_bytes()


def test_a_bucket_put_whole_refuses_what_put_refuses(tmp_path):
    from boltkit.errors import WriteError
    with BoltWriter(tmp_path / "t.db") as w:
        w.put_bucket(b"b", [(b"k", b"v")])
        for name, pairs in ((b"a", [(b"k", b"v")]), (b"c", [(b"k", b"v"), (b"k", b"w")]), (b"d", [(b"", b"v")]),
                            (b"", [])):
            with pytest.raises(WriteError):
                w.put_bucket(name, pairs)


def test_inline_exactly_when_bbolt_would(tmp_path):
    # 16 + (16 + 1 + 1000) = 1033 > 1024: paged; 16 + (16 + 1 + 991) = 1024: inline (quarter of 4096)
    tree = {b"a": Bucket({b"k": b"x" * 991}), b"b": Bucket({b"k": b"x" * 992}),
            b"c": Bucket({b"sub": Bucket()}), b"d": Bucket()}
    path = write(tmp_path / "t.db", tree)
    with Database(path) as db:
        root = db.root()
        inline = {it.key: db.tree.child(root, it).inline for it in db.tree.items(root)}
    assert inline == {b"a": True, b"b": False, b"c": False, b"d": True}


def test_no_freelist_variant(tmp_path):
    path = write(tmp_path / "t.db", {b"a": Bucket({b"k": b"v"})}, freelist=False)
    with Database(path) as db:
        assert not db.meta.has_freelist and db.freelist() is None
    assert check_file(path).clean


def test_refuses_to_overwrite_and_unordered_input(tmp_path):
    path = write(tmp_path / "t.db", {b"a": Bucket()})
    with pytest.raises(FileExistsError):
        BoltWriter(path)
    w = BoltWriter(tmp_path / "u.db")
    w.begin_bucket(b"a")
    w.put(b"b", b"")
    with pytest.raises(ValueError):
        w.put(b"a", b"")
    w.abort()
    assert not os.path.exists(tmp_path / "u.db")


@pytest.mark.parametrize("path", corpus_files("sound"), ids=corpus_id)
def test_compact_corpus_store_identical_dump_and_clean(tmp_path, path):
    out = tmp_path / "c.db"
    r = CliRunner().invoke(main, ["compact", str(path), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"{path} (") and "smaller (" in r.output and "gain" not in r.output
    assert out.stat().st_mode & 0o7777 == path.stat().st_mode & 0o7777    # the source's mode, not 0600
    assert export_lines(out) == export_lines(path)
    assert check_file(out).clean


def test_compact_refuses_existing_output_and_damaged_source(tmp_path, example_db):
    out = tmp_path / "c.db"
    out.write_bytes(b"keep me")
    r = CliRunner().invoke(main, ["compact", str(example_db), "-o", str(out)])
    assert r.exit_code == 8 and "already exists" in r.output and out.read_bytes() == b"keep me"
    torn = [p for p in corpus_files("torn") if p.name == "daemon4-cache-cp-during-build-136.db"][0]
    r = CliRunner().invoke(main, ["compact", str(torn), "-o", str(tmp_path / "d.db")])
    assert r.exit_code == 8 and r.output.startswith("Error: ") and not (tmp_path / "d.db").exists()


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(tree=trees, page_size=page_sizes, freelist=st.booleans(), seed=st.integers(1, 1000))
def test_bbolt_accepts_and_keeps_using_what_we_write(tmp_path_factory, oracle, tree, page_size, freelist, seed):
    """Real bbolt: tx.Check is clean, its dump equals the input tree, and it can open the file read-write,
    add and delete keys and buckets, commit, and still pass tx.Check."""
    path = write(tmp_path_factory.mktemp("b") / "t.db", tree, page_size, freelist=freelist)
    status, out = oracle.check(path)
    assert status == 0, out
    assert oracle.dump(path).decode().splitlines() == dump_lines(tree)
    if tree:
        proc = oracle.run("mutate", "-seed", seed, path, check=False)
        assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
        assert check_file(path).clean


@pytest.mark.parametrize("fill", [1.0, 0.1])
def test_huge_values_streamed_from_where_they_lie_give_the_same_file(tmp_path, monkeypatch, oracle, fill):
    """A pair too big to share a page is written alone, straight from its value (a view of the source map), and a
    copied run's big stretches are handed to the file as views: the file is byte for byte the one the copying
    path writes, and bbolt accepts it (fill 0.1: the threshold is below the inline limit)."""
    from boltkit.write import builder, encode
    rng = __import__("random").Random(7)
    big = [rng.randbytes(n) for n in ((1 << 20) - 40, 1 << 20, (1 << 20) + 4093, 3 << 20)]

    def fill_in(w):
        w.begin_bucket(b"a")
        w.put(b"k0", b"small")
        for i, v in enumerate(big):
            w.put(b"k%d" % (2 * i + 1), memoryview(v))
            w.put(b"k%d" % (2 * i + 2), b"x" * (i * 700))
        w.begin_bucket(b"nested")
        w.put(b"only", big[3])
        w.end_bucket()
        w.end_bucket()
        w.begin_bucket(b"b")
        w.put(b"first", big[1])
        w.end_bucket()

    def build(name):
        with BoltWriter(str(tmp_path / name), fill_percent=fill, sync=False) as w:
            fill_in(w)
        return tmp_path / name
    alone = []
    monkeypatch.setattr(builder, "encode_alone", lambda *a: alone.append(a[0]) or encode.encode_alone(*a))
    streamed = build("streamed.db")
    assert alone == [b"k3", b"k5", b"k7", b"only", b"first"]      # the streamed path was taken (k1 is under 1 MiB)
    for mod in (builder, encode):
        monkeypatch.setattr(mod, "LARGE", 1 << 62)
    copied = build("copied.db")
    assert streamed.read_bytes() == copied.read_bytes()
    assert oracle.check(streamed)[0] == 0
    # a compact of it copies runs with big stretches: again the same bytes as the copying path's compact
    r1 = CliRunner().invoke(main, ["compact", "--fill-percent", str(fill), str(streamed), "-o",
                                   str(tmp_path / "c-copied.db")])
    monkeypatch.undo()
    r2 = CliRunner().invoke(main, ["compact", "--fill-percent", str(fill), str(streamed), "-o",
                                   str(tmp_path / "c-streamed.db")])
    assert r1.exit_code == r2.exit_code == 0, (r1.output, r2.output)
    assert (tmp_path / "c-copied.db").read_bytes() == (tmp_path / "c-streamed.db").read_bytes()
    assert export_lines(tmp_path / "c-streamed.db") == export_lines(streamed)


def _greedy_cuts_page_by_page(cum, room, final):
    """The greedy cut as the builder made it before: a searchsorted a page."""
    cuts, a, n = [], 0, len(cum) - 1
    while a < n:
        b = max(int(np.searchsorted(cum, cum[a] + room, side="right")) - 1, a + 1)
        if b >= n and not final:
            break
        b = min(b, n)
        cuts.append((a, b))
        a = b
    return cuts


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(16, 5000), min_size=0, max_size=400), room=st.integers(16, 4096),
       final=st.booleans())
def test_greedy_cuts_are_the_page_by_page_cuts(sizes, room, final):
    cum = np.concatenate([[0], np.cumsum(np.array(sizes, np.int64))]).astype(np.int64)
    assert greedy_cuts(cum, room, final) == _greedy_cuts_page_by_page(cum, room, final)
