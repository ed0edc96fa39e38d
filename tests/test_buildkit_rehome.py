"""A torn cache.db, start to finish: salvage, then prune with --rehome (id buckets the torn tree put in
the wrong place go back where BuildKit looks) and --drop-unreachable (derived keys no root reaches), gives
a store that passes every check, bbolt's included, and that a second prune leaves alone."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from boltkit.buildkit import check_cache_db, load_cache_store
from boltkit.buildkit.rehome import kind_of
from boltkit.cli import main
from boltkit.storage import Database
from testdata.buildkit import S, clean_tree, link_key, result_value, write_store
from testdata.trees import Bucket

from .conftest import corpus_files, corpus_id

TORN_CACHES = [p for p in corpus_files("torn") if "-cache-" in p.name]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def primary_pairs(path) -> set[tuple[str, str, bytes, bytes]]:
    """(top, id, key, value) of the _links and _result entries: what the indexes are rebuilt from."""
    with Database(path) as db:
        s = load_cache_store(db)
    out = {("_links", src, ln.raw, b"") for src, lns in s.links.items() for ln in lns}
    return out | {("_result", kid, r.result_id.encode(), r.raw) for kid, rs in s.results.items() for r in rs}


def pairs_anywhere(path) -> set[tuple[str, bytes, bytes]]:
    """(name of the holding bucket, key, value) of every plain pair of the file, wherever it sits."""
    with Database(path) as db:
        out = set()
        for parent, child, item in db.tree.walk(db.root()):
            if child is None and parent.path:
                out.add((parent.path[-1].decode("utf-8", "replace"), item.key, db.value(item)))
    return out


@pytest.mark.parametrize("path", TORN_CACHES, ids=corpus_id)
def test_torn_cache_db_salvages_and_prunes_to_a_store_that_passes_every_check(tmp_path, oracle, path):
    salvaged = tmp_path / "salvaged.db"
    assert run("salvage", path, "-o", salvaged).exit_code == 0
    plain = tmp_path / "plain.db"
    plain.write_bytes(salvaged.read_bytes())
    fixed = tmp_path / "fixed.db"
    fixed.write_bytes(salvaged.read_bytes())

    r = run("buildkit", "prune", "--rehome", "--drop-unreachable", "--apply", "--json", fixed)
    assert r.exit_code == 0, r.output
    assert run("check", fixed).exit_code == 0
    assert run("buildkit", "check", fixed).exit_code == 0
    assert oracle.check(fixed)[0] == 0
    again = json.loads(run("buildkit", "prune", "--rehome", "--drop-unreachable", "--json", fixed).output
                       .splitlines()[-1])
    assert again["changes"] == 0

    # nothing invented: every link and result kept existed in the salvaged file, in a bucket of that id
    existed = pairs_anywhere(salvaged)
    kept = primary_pairs(fixed)
    assert all((kid, key, value) in existed for _, kid, key, value in kept)
    # and rehoming is what brings them back: without it, BuildKit's rule keeps less
    assert run("buildkit", "prune", "--drop-unreachable", "--apply", plain).exit_code == 0
    assert len(kept) >= len(primary_pairs(plain))


def test_rehoming_recovers_links_and_results_across_the_torn_corpus(tmp_path):
    gained = 0
    for i, path in enumerate(TORN_CACHES):
        salvaged = tmp_path / f"s{i}.db"
        run("salvage", path, "-o", salvaged)
        with_rehome, without = tmp_path / f"a{i}.db", tmp_path / f"b{i}.db"
        with_rehome.write_bytes(salvaged.read_bytes())
        without.write_bytes(salvaged.read_bytes())
        run("buildkit", "prune", "--rehome", "--apply", with_rehome)
        run("buildkit", "prune", "--apply", without)
        gained += len(primary_pairs(with_rehome)) - len(primary_pairs(without))
    assert gained > 500


def test_kind_of_reads_the_shape_of_an_id_bucket():
    w = "w0rker0000000000000000000"
    assert kind_of(b"k" * 25, [(link_key("t" * 25), b"")]) == b"_links"
    assert kind_of(b"k" * 25, [(f"{w}::r".encode(), result_value(f"{w}::r"))]) == b"_result"
    assert kind_of(f"{w}::r".encode(), [(b"k" * 25, b"")]) == b"_byresult"
    assert kind_of(b"k" * 25, [(b"p" * 25, b""), (b"sha256:" + b"1" * 64, b"")]) == b"_backlinks"
    # what says nothing certain stays where it is
    assert kind_of(b"k" * 25, []) is None
    assert kind_of(b"page-12", [(b"p" * 25, b"")]) is None
    assert kind_of(b"_links", [(b"p" * 25, b"")]) is None
    assert kind_of(b"k" * 25, [(b"p" * 25, b""), (link_key("t" * 25), b"")]) is None
    assert kind_of(b"k" * 25, [(f"{w}::r".encode(), b"{not json")]) is None


def test_misplaced_id_buckets_go_back_and_empty_containers_go(tmp_path):
    t = clean_tree()
    child, grand = "child0000000000000000000aa", "grand0000000000000000000bb"
    moved = t[b"_links"].children.pop(child.encode())        # an old copy: _backlinks/_links/<id>
    t[b"_backlinks"].children[b"_links"] = Bucket({child.encode(): moved})
    t[b"lost+found"] = Bucket({b"page-7": Bucket({b"orphan000000000000000000zz": Bucket()})})
    path = write_store(tmp_path / "cache.db", t)
    r = run("buildkit", "prune", "--rehome", "--json", path)
    changes = [json.loads(x) for x in r.output.splitlines()[:-1]]
    assert {"type": "change", "code": "C3", "action": "rehome", "bucket": f"_backlinks/_links/{child}",
            "key": f"_links/{child}"} in changes
    assert run("buildkit", "prune", "--rehome", "--apply", path).exit_code == 0
    with Database(path) as db:
        s = load_cache_store(db)
        assert link_key(grand, selector=S) in {ln.raw for ln in s.links[child]}
        assert "_links" not in s.backlinks
        assert not {p.code for p in check_cache_db(db)} - {"C1"}
        # an empty bucket says nothing about where it belongs: lost+found keeps it
        assert db.tree.get(db.bucket((b"lost+found", b"page-7")), b"orphan000000000000000000zz") is not None


def test_drop_unreachable_removes_derived_keys_no_root_reaches(tmp_path):
    t = clean_tree()
    lonely, below = "lonely0000000000000000000", "below0000000000000000000g"      # derived: 25 of [0-9a-z]
    w = "w0rker0000000000000000000"
    t[b"_links"].children[lonely.encode()] = Bucket({link_key(below): b""})
    t[b"_links"].children[below.encode()] = Bucket()
    t[b"_backlinks"].children[below.encode()] = Bucket({lonely.encode(): b""})
    for kid, rid in ((lonely, f"{w}::lonely"), (below, f"{w}::below")):
        t[b"_result"].children[kid.encode()] = Bucket({rid.encode(): result_value(rid)})
        t[b"_byresult"].children[rid.encode()] = Bucket({kid.encode(): b""})
    path = write_store(tmp_path / "cache.db", t)
    with Database(path) as db:
        assert [p.key for p in check_cache_db(db)] == [lonely.encode()]      # C14: nothing links to it
    assert run("buildkit", "prune", "--apply", path).output.strip().endswith("nothing to prune")
    r = run("buildkit", "prune", "--drop-unreachable", "--apply", path)
    assert r.exit_code == 0, r.output
    with Database(path) as db:
        s = load_cache_store(db)
        assert check_cache_db(db) == []
    assert lonely not in s.links and below not in s.links and below not in s.results
    assert {"child0000000000000000000aa", "grand0000000000000000000bb"} <= set(s.links)      # roots reach them


def torn(name_part: str):
    return next(p for p in corpus_files("torn") if name_part in p.name)


def salvaged_root(tmp_path, cache: str, history: str, metadata: str):
    """A BuildKit root made of salvaged torn copies, as a user would have after `boltkit salvage` of each."""
    root = tmp_path / "root"
    (root / "runc-overlayfs").mkdir(parents=True)
    (root / "runc-overlayfs" / "workerid").write_text("x03o8ykcb5gi9f4j2ygkwwsgx")
    for src, dst in ((cache, root / "cache.db"), (history, root / "history.db"),
                     (metadata, root / "runc-overlayfs" / "metadata_v2.db")):
        assert run("salvage", torn(src), "-o", dst).exit_code == 0
        (dst.parent / (dst.name + ".report.json")).unlink(missing_ok=True)
    return root


@pytest.mark.parametrize("metadata", ["metadata_v2-slowcopy-during-build-308", "metadata_v2-slowcopy-during-build-324",
                                      "metadata_v2-cp-during-build-54"])
def test_salvaged_root_repairs_to_stores_without_errors(tmp_path, oracle, metadata):
    root = salvaged_root(tmp_path, "cache-slowcopy-during-build-354", "history-slowcopy-during-build-223", metadata)
    # (salvage now reads the torn history.db's pages past their damaged elements and keeps _records itself)
    assert run("buildkit", "repair", "--apply", "--prune", root).exit_code == 0
    report = run("buildkit", "fsck", "--json", root)
    summaries = {r["store"]: r for r in map(json.loads, report.output.splitlines()) if r.get("type") == "summary"}
    for store in ("cache.db", "history.db", "runc-overlayfs/metadata_v2.db"):
        assert summaries[store]["problems"]["error"] == 0
        assert oracle.check(root / store)[0] == 0
    # what is left are warnings buildkitd lives with: a mutable parent it commits when loading (M7), index
    # keys of a record the start-up GC removed that its values never named, so Clear leaves them too (M10)
    left = {c for s in summaries.values() for c in s["codes"] if c[0] in "CDMH"}
    assert left <= {"C1", "M1", "M7", "M10"}
    # the build history is back where `buildx history ls` finds it, as much of it as the next start keeps:
    # its retention (default 50 entries / 48 h) drops the rest, and repair applies what the start does
    with Database(root / "history.db") as db:
        records = {it.key for it in db.tree.items(db.bucket((b"_records",)))}
    assert len(records) == 50
    assert json.loads(run("buildkit", "repair", "--json", root).output.splitlines()[-1])["changes"] == 0


def test_rehome_stops_at_a_depth_no_buildkit_store_has(tmp_path):
    """bbolt nests buckets without limit; a foreign bucket 200 levels deep is left alone."""
    t = clean_tree()
    deep = Bucket({b"k" * 25: Bucket({link_key("t" * 25): b""})})
    for i in range(200):
        deep = Bucket({b"level-%d" % i: deep})
    t[b"foreign"] = deep
    path = write_store(tmp_path / "cache.db", t)
    r = run("buildkit", "prune", "--rehome", "--json", path)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.splitlines()[-1])["changes"] == 0
