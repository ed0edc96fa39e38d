"""Offline pruning of cache.db: the result equals BuildKit's collection rule (checked against an
independent implementation), every output verifies, the original is kept, and a second run is a no-op."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections import Counter
from dataclasses import astuple

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boltkit.buildkit import check_cache_db, load_cache_columns, load_cache_store
from boltkit.check import check_file
from boltkit.cli import main
from boltkit.storage import Database
from testdata.buildkit import WORKER, clean_tree, result_value, write_store
from testdata.trees import Bucket

from .conftest import CORPUS, corpus_files
from .reference_cachecheck import load_cache_store as load_plainly
from .reference_prune import plan_prune as reference_plan
from .test_buildkit_cache import (GRAND, cache_trees, plant_dead_chain, plant_hard_dangling, plant_missing_backlink,
                                  plant_orphan_results, plant_stale_backlink)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def reference_rule(store):
    """BuildKit's rule, written independently: repeatedly delete keys that have no results and no link to an
    existing key, and every link to a deleted or non-existent key. Returns the surviving (src, target) links."""
    results = {k for k, v in store.results.items() if any(r.error is None for r in v)}
    links = {(src, ln.target) for src, lns in store.links.items() for ln in lns if ln.error is None and ln.target}
    keys = set(store.links) | results
    while True:
        links = {(s, t) for s, t in links if s in keys and t in keys}
        doomed = {k for k in keys if k not in results and not any(s == k for s, _ in links)}
        if not doomed:
            return links, keys
        keys -= doomed


def pruned_links(path):
    with Database(path) as db:
        store = load_cache_store(db)
    return {(src, ln.target) for src, lns in store.links.items() for ln in lns}, set(store.links)


def planted_store(tmp_path):
    t = clean_tree()
    for plant in (plant_dead_chain, plant_hard_dangling, plant_missing_backlink, plant_stale_backlink):
        plant(t)
    return write_store(tmp_path / "cache.db", t)


def test_dry_run_lists_changes_and_touches_nothing(tmp_path):
    path = planted_store(tmp_path)
    before = path.read_bytes()
    r = run("buildkit", "prune", "--json", path)
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in r.output.splitlines()]
    codes = {c["code"] for c in recs[:-1]}
    assert codes == {"C12", "D1", "D2", "D3", "D4"} and recs[-1]["applied"] is False
    assert path.read_bytes() == before and not list(tmp_path.glob("*.bak"))


def test_apply_matches_buildkits_rule_verifies_and_keeps_a_backup(tmp_path, oracle):
    path = planted_store(tmp_path)
    original = path.read_bytes()
    with Database(path) as db:
        expected_links, expected_keys = reference_rule(load_cache_store(db))
    r = run("buildkit", "prune", "--apply", path)
    assert r.exit_code == 0, r.output
    assert "the original is kept as" in r.output
    backups = list(tmp_path.glob("cache.db.boltkit-*.bak"))
    assert len(backups) == 1 and backups[0].read_bytes() == original
    links, keys = pruned_links(path)
    assert links == expected_links and keys == expected_keys
    assert check_file(path).clean and oracle.check(path)[0] == 0
    with Database(path) as db:
        assert check_cache_db(db) == []
    second = run("buildkit", "prune", "--apply", path)
    assert second.exit_code == 0 and second.output.strip().endswith("nothing to prune")
    assert len(list(tmp_path.glob("*.bak"))) == 1


def test_orphan_results_get_their_links_bucket_back(tmp_path):
    t = clean_tree()
    plant_orphan_results(t)
    path = write_store(tmp_path / "cache.db", t)
    assert run("buildkit", "prune", "--apply", path).exit_code == 0
    _, keys = pruned_links(path)
    assert GRAND in keys


def test_ghosts_of_a_real_store_are_pruned_like_the_rule_says(tmp_path):
    src = [p for p in corpus_files("sound") if "06-after-303" in str(p) and p.name == "cache.db"][0]
    path = tmp_path / "cache.db"
    shutil.copyfile(src, path)
    with Database(path) as db:
        expected_links, expected_keys = reference_rule(load_cache_store(db))
    assert run("buildkit", "prune", "--apply", path).exit_code == 0
    assert pruned_links(path) == (expected_links, expected_keys)
    with Database(path) as db:
        left = {p.code for p in check_cache_db(db)}
    assert not left & {"D1", "D2", "D3", "D4", "D5", "C12"}


def test_refuses_while_the_file_is_held(tmp_path):
    path = planted_store(tmp_path)
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        r = run("buildkit", "prune", "--apply", path)
    finally:
        os.close(fd)
    assert r.exit_code == 8 and "locked by another process" in r.output
    assert not list(tmp_path.glob("*.bak")) and not (tmp_path / "cache.db.boltkit-new").exists()


def test_refuses_structurally_damaged_input(tmp_path):
    torn = [p for p in corpus_files("torn") if p.name == "daemon4-cache-cp-during-build-136.db"][0]
    r = run("buildkit", "prune", "--apply", torn)
    assert r.exit_code == 8 and "salvage it first" in r.output


def test_release_missing_drops_results_without_records_then_collapses(tmp_path):
    src = corpus_files("sound")[0].parent
    path = tmp_path / "cache.db"
    shutil.copyfile(src / "cache.db", path)
    md = src / "runc-overlayfs" / "metadata_v2.db"
    with Database(path) as db:
        before = sum(len(v) for v in load_cache_store(db).results.values())
    r = run("buildkit", "prune", "--json", "--release-missing", md, path)
    recs = [json.loads(x) for x in r.output.splitlines()]
    released = [c for c in recs[:-1] if c["action"] == "release-result"]
    assert len(released) == 87       # what `buildkit fsck` predicts buildkitd releases at its next start
    assert run("buildkit", "prune", "--apply", "--release-missing", md, path).exit_code == 0
    with Database(path) as db:
        store = load_cache_store(db)
        assert check_cache_db(db) == []
    assert sum(len(v) for v in store.results.values()) == before - 87


def test_salvaged_torn_cache_db_prunes_to_a_store_buildkit_can_use(tmp_path, oracle):
    """salvage then prune: the torn copy becomes a cache.db that bbolt opens and that has no dangling links or
    index faults; lost+found rides along untouched (BuildKit ignores foreign top-level buckets); a report of
    every change sits beside the backup."""
    torn = [p for p in corpus_files("torn") if p.name == "daemon1-cache-slowcopy-during-build-354.db"][0]
    out = tmp_path / "cache.db"
    assert run("salvage", torn, "-o", out).exit_code == 0
    with Database(out) as db:
        lost = sum(1 for p, c, it in db.tree.walk(db.root()) if c is None and p.path[:1] == (b"lost+found",))
    r = run("buildkit", "prune", "--apply", "--json", out)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.splitlines()[-1])
    report = json.loads(open(summary["report"]).read())
    assert len(report["changes"]) == summary["changes"] > 0
    with Database(out) as db:
        left = {p.code for p in check_cache_db(db)}
        kept = sum(1 for p, c, it in db.tree.walk(db.root()) if c is None and p.path[:1] == (b"lost+found",))
    assert not left & {"D1", "D2", "D3", "D4", "D5", "C3", "C4", "C5", "C7", "C9", "C12"}
    assert kept == lost > 0
    assert check_file(out).clean and oracle.check(out)[0] == 0


def test_corpus_store_with_planted_defects_prunes_like_the_rule(tmp_path, oracle):
    """A real cache.db (120 builds) with dangling links, a ghost and a missing backlink planted: the pruned
    store equals what BuildKit's own rule leaves (independent implementation above)."""
    from testdata.buildkit import link_key
    from testdata.trees import Bucket, tree_from_file
    src = [p for p in corpus_files("sound") if "02-after-120" in str(p) and p.name == "cache.db"][0]
    t = tree_from_file(src)
    links, backlinks = t[b"_links"].children, t[b"_backlinks"].children
    some = [k for k in sorted(links) if links[k].children][:3]
    links[some[0]].children[link_key("nowhere00000000000000000ee")] = b""             # D1
    ghost = b"ghost0000000000000000000dd"
    links[some[1]].children[link_key(ghost.decode())] = b""                          # D2
    backlinks[ghost] = Bucket({some[1]: b""})
    target = next(k for k in links[some[2]].children)                                # D3
    tgt = target.decode().rsplit("@", 1)[1].encode()
    if tgt in backlinks:
        backlinks[tgt].children.pop(some[2], None)
    path = write_store(tmp_path / "cache.db", t)
    with Database(path) as db:
        expected = reference_rule(load_cache_store(db))
    r = run("buildkit", "prune", "--apply", path)
    assert r.exit_code == 0, r.output
    assert pruned_links(path) == expected
    with Database(path) as db:
        assert not {p.code for p in check_cache_db(db)} & {"D1", "D2", "D3", "D4", "D5", "C12"}
    assert oracle.check(path)[0] == 0


def test_a_large_plan_is_summarised_and_listed_on_request():
    """More changes than fit a screen: counts by kind and the first rows; --list every row; --json every
    record. (The corpus root pruned after 403 builds has 535 changes to make.)"""
    from boltkit.cli.buildkit import PLAN_ROWS
    path = CORPUS / "daemon1-overlayfs" / "08-after-403-builds-prune-all" / "cache.db"
    summary, full, as_json = (run("buildkit", "prune", *flags, path) for flags in ((), ("--list",), ("--json",)))
    assert summary.exit_code == full.exit_code == as_json.exit_code == 0
    records = [json.loads(x) for x in as_json.output.splitlines()]
    changes, plan = records[:-1], records[-1]
    assert len(changes) == plan["changes"] > PLAN_ROWS
    rows = [ln for ln in full.output.splitlines() if ln.split()[:1] in (["C12"], ["D4"], ["D2"], ["C5"])]
    assert len(rows) == len(changes)
    assert f"The first {PLAN_ROWS} of {len(changes)} changes (--list shows every one)" in summary.output
    for action, n in plan["actions"].items():      # the counts by kind, each once
        assert any(ln.split()[1:] == [action, str(n)] for ln in summary.output.splitlines()), action
    listed = summary.output.split("--list shows every one):")[1]
    assert sum(1 for c in changes[:PLAN_ROWS] if c["key"][:40] in listed) == PLAN_ROWS
    assert changes[PLAN_ROWS]["key"] not in listed
    assert summary.output.splitlines()[-1] == full.output.splitlines()[-1]      # the same plan, said the same way


def test_ids_that_are_not_utf8_are_planned_and_written_as_their_bytes(tmp_path, oracle):
    """Ids are bytes from the read to the writer: two ids that differ only in bytes that are not UTF-8 stay two
    keys (the live one kept under its own name, the dead one dropped), and an index entry under such an id goes.
    (Decoded with "replace", both ids were one key: the dead one was never planned and the live one was
    written under U+FFFD's bytes, a renamed key that verified.)"""
    from boltkit.buildkit.cachedb import CacheInfoLink
    from .test_buildkit_cache import CHILD
    live, dead, gone = (bytes([b]) + b"odd" + b"0" * 21 for b in (0xFF, 0xFE, 0xFD))
    rid = f"{WORKER}::ref9".encode()
    t = clean_tree()
    t[b"_links"].children[live] = Bucket({CacheInfoLink(0, 0, "sha256:" + "ab" * 32).encode() + b"@" + GRAND.encode():
                                          b""})
    t[b"_backlinks"].children[GRAND.encode()].children[live] = b""
    t[b"_result"].children[live] = Bucket({rid: result_value(rid.decode())})
    t[b"_byresult"].children[rid] = Bucket({live: b""})
    t[b"_links"].children[dead] = Bucket()
    t[b"_backlinks"].children[gone] = Bucket({CHILD.encode(): b""})
    path = write_store(tmp_path / "cache.db", t)
    r = run("buildkit", "prune", "--json", path)
    assert r.exit_code == 0, r.output
    planned = [json.loads(x) for x in r.output.splitlines()[:-1]]
    assert planned == [
        {"type": "change", "code": "D2", "action": "drop-key", "bucket": "_links", "key": "0x" + dead.hex()},
        {"type": "change", "code": "D4", "action": "drop-backlink", "bucket": "_backlinks/0x" + gone.hex(),
         "key": CHILD}]
    assert run("buildkit", "prune", "--apply", path).exit_code == 0
    with Database(path) as db:
        assert check_cache_db(db) == []
        links = {i.key for i in db.items((b"_links",))}
        assert live in links and dead not in links
        assert [i.key for i in db.items((b"_result", live))] == [rid]
        assert [i.key for i in db.items((b"_byresult", rid))] == [live]
        assert gone not in {i.key for i in db.items((b"_backlinks",))}
    assert oracle.check(path)[0] == 0
    assert run("buildkit", "prune", path).output.strip().endswith("nothing to prune")


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(tree=cache_trees(), break_cycles=st.booleans(), drop_unreachable=st.booleans(),
       records=st.sampled_from([None, set(), {"ref1"}, {"ref1", "ref2"}]), dangling=st.booleans())
def test_the_array_plan_agrees_with_the_plain_reference_on_random_stores(tmp_path_factory, tree, break_cycles,
                                                                         drop_unreachable, records, dangling):
    """The columnar plan (liveness by arrays, index differences as sorted pairs, lazy tables) makes the changes
    the dict-and-set planner makes, in the same order wherever that order is sorted, and keeps the same store;
    its counts and its actions' order (the summary's) are those of the rows."""
    from boltkit.buildkit.prune import plan_prune
    from boltkit.buildkit.plan import text_id
    from testdata.buildkit import link_key
    if dangling and tree.get(b"_links") is not None and tree[b"_links"].children:   # live keys linking nowhere (D1)
        for src in [k for k, v in tree[b"_links"].children.items() if isinstance(v, Bucket)][:2]:
            tree[b"_links"].children[src].children[link_key("nowhere00000000000000000ee")] = b""
            if b"_result" in tree:
                rid = f"{WORKER}::ref1"
                tree[b"_result"].children[src] = Bucket({rid.encode(): result_value(rid)})
    path = write_store(tmp_path_factory.mktemp("prune") / "cache.db", tree)
    with Database(path) as db:
        ref_out, ref_changes = reference_plan(load_plainly(db), break_cycles, records, drop_unreachable)
        kept, changes = plan_prune(load_cache_columns(db), break_cycles,
                                   None if records is None else {r.encode() for r in records}, drop_unreachable)
        rows = list(changes)
        store = kept.store()
    same_plan(rows, ref_changes)
    assert changes.counts() == Counter((c.code, c.action) for c in rows)
    assert list(changes.actions()) == list(dict.fromkeys(c.action for c in rows))
    assert len(changes) == len(rows) and changes[len(rows) // 2:] == rows[len(rows) // 2:]
    assert store.links == {text_id(k): v for k, v in ref_out.links.items()}
    assert store.results == {text_id(k): {text_id(r): v for r, v in res.items()} for k, res in ref_out.results.items()}
    assert store.backlinks == {text_id(k): {text_id(s) for s in v} for k, v in ref_out.backlinks.items()}
    assert store.byresult == {text_id(k): {text_id(s) for s in v} for k, v in ref_out.byresult.items()}


@pytest.mark.parametrize("flags", [(False, False, False), (True, True, True)], ids=["plain", "all-options"])
def test_the_array_plan_agrees_with_the_plain_reference_on_real_and_planted_stores(tmp_path, flags):
    """The same agreement on the corpus's cache.db stores (ghosts and dead chains BuildKit left) and on a store
    with every kind of dangling link and stale index planted, with and without every option."""
    from boltkit.buildkit.prune import plan_prune
    break_cycles, drop_unreachable, release = flags
    for path in [p for p in corpus_files("sound") if p.name == "cache.db"] + [planted_store(tmp_path)]:
        md = path.parent / "runc-overlayfs" / "metadata_v2.db"
        records = None
        if release and md.exists():
            from boltkit.buildkit.metadata import record_keys
            with Database(md) as mdb:
                records = record_keys(mdb)
        with Database(path) as db:
            _, expected = reference_plan(load_plainly(db), break_cycles,
                                         None if records is None else {r.decode() for r in records}, drop_unreachable)
            _, changes = plan_prune(load_cache_columns(db), break_cycles, records, drop_unreachable)
        same_plan(list(changes), expected)


IN_FILE_ORDER = {"C1", "C2", "C3", "C7", "C4", "C16", "X2", "C9", "C17", "C15"}     # the rest is sorted by id


def same_plan(rows, expected) -> None:
    """The same changes; in the same order where the plan sorts them (the rest follow the order the ids were
    read in, which differs between the two readers)."""
    assert sorted(map(astuple, rows)) == sorted(map(astuple, expected))
    assert [c for c in rows if c.code not in IN_FILE_ORDER] == [c for c in expected if c.code not in IN_FILE_ORDER]
