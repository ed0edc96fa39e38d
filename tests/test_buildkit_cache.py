"""cache.db semantics: decoders, the graph, and one test per problem code on a store that carries
exactly that defect (the clean store reports nothing)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boltkit.buildkit import check_cache_db, decode_link_key, load_cache_columns, load_cache_store
from boltkit.buildkit.cachedb import CacheInfoLink, id_class, split_result_id
from boltkit.buildkit.graph import cycles, cycles_of_arrays, live_keys, live_mask
from boltkit.cli import main
from boltkit.storage import Database
from testdata.buildkit import D, S, WORKER, clean_tree, link_key, result_value, write_store
from testdata.trees import Bucket

from .conftest import corpus_files, corpus_id
from .reference_cachecheck import check_cache_store, problem_rows
from .reference_cachecheck import load_cache_store as load_plainly

CHILD, GRAND = "child0000000000000000000aa", "grand0000000000000000000bb"
ROOT1 = "sha256:" + "11" * 32


def codes_of(tmp_path, tree) -> dict[str, int]:
    path = write_store(tmp_path / "cache.db", tree)
    with Database(path) as db:
        problems = check_cache_db(db, str(path))
        # every defect doubles as a differential test: the array checks say what the plain ones say
        assert problem_rows(problems) == problem_rows(check_cache_store(load_plainly(db), str(path)))
    out: dict[str, int] = {}
    for p in problems:
        out[p.code] = out.get(p.code, 0) + 1
    return out


def test_clean_store_reports_nothing(tmp_path):
    assert codes_of(tmp_path, clean_tree()) == {}


def lb(t, top, name):
    return t[top].children[name.encode()]


DEFECTS = {
    "C1": lambda t: t.update({b"_extra": Bucket()}),
    "C2": lambda t: t[b"_links"].children.update({b"plainvalue0000000000000000": b"x"}),
    "C3": lambda t: lb(t, b"_backlinks", CHILD).children.update({b"nested": Bucket()}),
    "C4": lambda t: lb(t, b"_result", GRAND).children.update({f"{WORKER}::ref3".encode(): b"{not json"}),
    "C5": lambda t: t[b"_byresult"].children.pop(f"{WORKER}::ref3".encode()),
    "C6": lambda t: t[b"_byresult"].children.update({f"{WORKER}::gone".encode(): Bucket()}),
    "C7": lambda t: lb(t, b"_backlinks", CHILD).children.update({ROOT1.encode(): b"junk"}),
    "C9": lambda t: lb(t, b"_links", GRAND).children.update({b'{"Digest":"x"}@a@b': b""}),
    "C16": lambda t: (lb(t, b"_result", GRAND).children.update({b"noseparator": result_value("noseparator")}),
                      t[b"_byresult"].children.update({b"noseparator": Bucket({GRAND.encode(): b""})})),
    "C17": lambda t: (lb(t, b"_links", GRAND).children.update({link_key(CHILD, digest="md5:1"): b""}),
                      lb(t, b"_backlinks", CHILD).children.update({GRAND.encode(): b""})),
}


def plant_dead_chain(t):
    # a new derived key between GRAND and a ghost: GRAND -> dead -> ghost, neither with results
    dead, ghost = "dead00000000000000000000cc", "ghost0000000000000000000dd"
    lb(t, b"_links", GRAND).children[link_key(dead)] = b""
    t[b"_links"].children[dead.encode()] = Bucket({link_key(ghost): b""})
    t[b"_backlinks"].children[dead.encode()] = Bucket({GRAND.encode(): b""})
    t[b"_backlinks"].children[ghost.encode()] = Bucket({dead.encode(): b""})


def plant_hard_dangling(t):
    lb(t, b"_links", GRAND).children[link_key("nowhere00000000000000000ee")] = b""


def plant_ghost(t):
    ghost = "ghost0000000000000000000dd"
    lb(t, b"_links", GRAND).children[link_key(ghost)] = b""
    t[b"_backlinks"].children[ghost.encode()] = Bucket({GRAND.encode(): b""})


def plant_missing_backlink(t):
    del lb(t, b"_backlinks", GRAND).children[CHILD.encode()]


def plant_stale_backlink(t):
    lb(t, b"_backlinks", GRAND).children[("sha256:" + "99" * 32).encode()] = b""


def plant_orphan_results(t):
    del t[b"_links"].children[GRAND.encode()]


def plant_empty_branch(t):
    t[b"_links"].children[b"lonely000000000000000000ff"] = Bucket()


def plant_root_target(t):
    lb(t, b"_links", CHILD).children[link_key(ROOT1)] = b""
    t[b"_backlinks"].children[ROOT1.encode()] = Bucket({CHILD.encode(): b""})


def plant_self_loop(t):
    lb(t, b"_links", GRAND).children[link_key(GRAND)] = b""
    t[b"_backlinks"].children.setdefault(GRAND.encode(), Bucket()).children[GRAND.encode()] = b""


def plant_cycle(t):
    lb(t, b"_links", GRAND).children[link_key(CHILD, input=2)] = b""
    lb(t, b"_backlinks", CHILD).children[GRAND.encode()] = b""


def plant_non_canonical(t):
    lb(t, b"_links", GRAND).children[b'{"Digest": "%s"}@%s' % (S.encode(), CHILD.encode())] = b""
    lb(t, b"_backlinks", CHILD).children[GRAND.encode()] = b""


PLANTED = {
    "C12": plant_dead_chain, "D1": plant_hard_dangling, "D2": plant_ghost, "D3": plant_missing_backlink,
    "D4": plant_stale_backlink, "D5": plant_orphan_results, "C13": plant_empty_branch, "C14": plant_root_target,
    "C15": plant_self_loop,
}


@pytest.mark.parametrize("code", sorted(DEFECTS) + sorted(PLANTED))
def test_each_code_is_reported_for_its_defect(tmp_path, code):
    t = clean_tree()
    (DEFECTS.get(code) or PLANTED[code])(t)
    found = codes_of(tmp_path, t)
    assert code in found, found


def test_cycle_between_two_keys(tmp_path):
    t = clean_tree()
    plant_cycle(t)
    assert codes_of(tmp_path, t) == {"C15": 1}


def test_non_canonical_link_json_is_a_poison_key(tmp_path):
    t = clean_tree()
    plant_non_canonical(t)
    assert codes_of(tmp_path, t)["C9"] == 1


def spelled_out(i: int, o: int, d: str, s: str, fields: str = "IODS") -> bytes:
    """A CacheInfoLink written with the fields of ``fields`` always present, zero values included."""
    parts = {"I": '"Input":%d' % i, "O": '"Output":%d' % o, "D": '"Digest":"%s"' % d, "S": '"Selector":"%s"' % s}
    return ("{" + ",".join(parts[f] for f in fields) + "}").encode()


def test_spelled_out_link_keys_are_poison_keys_in_bulk_and_canonical_neighbours_are_not(tmp_path):
    """Keys of one length where spelled-out and canonical ones share a layout: every spelled-out one is a
    C9, no canonical one is, and each still links to its target (the array pass says what the plain one says)."""
    t = clean_tree()
    links = lb(t, b"_links", GRAND)
    spelled, canonical = set(), set()
    for n in range(60):
        tgt = f"t{n:024d}"
        t[b"_backlinks"].children.setdefault(tgt.encode(), Bucket()).children[GRAND.encode()] = b""
        i, o = n % 3, (n // 3) % 2
        sel = S if n % 5 == 0 else ""
        for fields in ("IODS", "IOD", "OD", "ID", "DS"):
            key = spelled_out(i, o, D, sel, fields) + b"@" + tgt.encode()
            info = CacheInfoLink(i * ("I" in fields), o * ("O" in fields), D, sel * ("S" in fields))
            (canonical if key == info.encode() + b"@" + tgt.encode() else spelled).add(key)
            links.children[key] = b""
    path = write_store(tmp_path / "cache.db", t)
    with Database(path) as db:
        problems = check_cache_db(db, str(path))
        assert problem_rows(problems) == problem_rows(check_cache_store(load_plainly(db), str(path)))
        same_store(load_cache_store(db), load_plainly(db))
    poison = {p.key for p in problems if p.code == "C9"}
    assert spelled <= poison and not poison & canonical and len(canonical) >= 20
    assert not [p for p in problems if p.code in ("D1", "D3", "D4")]


def test_link_keys_round_trip_like_go():
    info = CacheInfoLink(1, 2, "sha256:" + "0" * 64, "sha256:" + "f" * 64)
    key = info.encode() + b"@k3m"
    assert key == ('{"Input":1,"Output":2,"Digest":"sha256:%s","Selector":"sha256:%s"}@k3m'
                   % ("0" * 64, "f" * 64)).encode()
    link = decode_link_key("src", key)
    assert link.error is None and link.info == info and link.target == "k3m"
    assert CacheInfoLink(digest="a<b").encode() == b'{"Digest":"a\\u003cb"}'


def test_id_classes_and_result_ids():
    assert id_class("sha256:" + "1" * 64) == "root"
    assert id_class("random:" + "1" * 64) == "random-root"
    assert id_class("07kqnj6no2r1s1p9ndwpo1qr8") == "derived"
    assert split_result_id("w::r") == ("w", "r") and split_result_id("w::") == ("w", "")
    assert split_result_id("a::b::c") is None


@pytest.mark.parametrize("path", [p for p in corpus_files("sound") if p.name == "cache.db"], ids=corpus_id)
def test_corpus_cache_db_decodes_completely(path):
    """Every entry of the real stores is decoded (none left over), and every link and result re-encodes
    byte for byte."""
    from boltkit.check import count_tree
    with Database(path) as db:
        store = load_cache_store(db)
        pairs = count_tree(db).pairs
    decoded = sum(len(v) for m in (store.links, store.results, store.byresult, store.backlinks) for v in m.values())
    assert decoded == pairs > 0
    assert all(ln.error is None for v in store.links.values() for ln in v)
    assert all(r.error is None for v in store.results.values() for r in v)
    assert not store.anomalies
    with Database(path) as db:
        problems = check_cache_db(db)
    # only the garbage BuildKit's own collection leaves behind after prunes (ghost targets and dead chains)
    assert {p.code for p in problems} <= {"D2", "C12"}


def test_ghosts_appear_after_prunes_in_the_corpus():
    path = [p for p in corpus_files("sound") if "08-after-403" in str(p) and p.name == "cache.db"][0]
    r = CliRunner().invoke(main, ["buildkit", "check", "--json", str(path)])
    assert r.exit_code == 4
    recs = [json.loads(x) for x in r.output.splitlines()]
    assert recs[-1]["codes"] == {"C12": 6, "D2": 2}


def brute_cycles(links):
    nodes = set(links) | {t for v in links.values() for t in v}
    reach = {n: set() for n in nodes}
    for n in nodes:
        todo = list(links.get(n, ()))
        while todo:
            m = todo.pop()
            if m not in reach[n]:
                reach[n].add(m)
                todo.extend(links.get(m, ()))
    comps = set()
    for n in nodes:
        if n in reach[n]:
            comps.add(frozenset(m for m in nodes if m in reach[n] and n in reach[m]) | {n})
    return sorted(sorted(c) for c in comps)


@pytest.mark.parametrize("seed", range(40))
def test_cycles_and_liveness_match_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randrange(2, 12)
    names = [f"k{i}" for i in range(n)]
    links = {a: sorted({rng.choice(names) for _ in range(rng.randrange(0, 3))}) for a in names}
    assert sorted(cycles(links)) == brute_cycles(links)
    with_results = set(rng.sample(names, rng.randrange(0, n)))
    expect = {a for a in names if a in with_results or any(
        t in with_results for t in brute_reach(links, a))}
    assert live_keys(with_results, links) == expect
    # the array versions, on the same graph numbered
    src = np.array([names.index(a) for a in names for _ in links[a]], dtype=np.int64)
    tgt = np.array([names.index(t) for a in names for t in links[a]], dtype=np.int64)
    assert sorted(sorted(names[i] for i in c) for c in cycles_of_arrays(src, tgt, n)) == brute_cycles(links)
    has = np.array([a in with_results for a in names])
    assert {names[i] for i in np.flatnonzero(live_mask(has, src, tgt))} == expect


def brute_reach(links, a):
    seen, todo = set(), list(links.get(a, ()))
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(links.get(m, ()))
    return seen


def test_buildkit_check_cli_clean_and_other_stores(tmp_path, example_db):
    r = CliRunner().invoke(main, ["buildkit", "check", str(example_db)])
    assert r.exit_code == 0 and r.output.endswith("txid 439)\n")
    other = [p for p in corpus_files("sound") if p.name == "containerdmeta.db"][0]
    r = CliRunner().invoke(main, ["buildkit", "check", str(other)])
    assert r.exit_code == 0 and "checked against the worker's records when the whole root is checked" in r.stderr


def test_buildkit_check_of_a_root_lists_every_store_with_the_checks_across_them():
    root = corpus_files("sound")[0].parent            # 01-after-30-builds: it has containerd's stores too
    r = CliRunner().invoke(main, ["buildkit", "check", "--json", "--max-errors", "0", str(root)])
    assert r.exit_code == 0, r.output            # X2 is info: results buildkitd releases by itself
    summaries = {Path(s["file"]).relative_to(root).as_posix(): s
                 for s in map(json.loads, r.stdout.splitlines()) if s.get("type") == "summary"}
    assert set(summaries) == {"cache.db", "history.db", "runc-overlayfs/metadata_v2.db",
                              "runc-overlayfs/containerdmeta.db", "runc-overlayfs/snapshots/metadata.db"}
    assert summaries["cache.db"]["codes"] == {"X2": 87}       # what `buildkit fsck` predicts it releases


def brute_paths(links, node):
    """Distinct root-to-node paths by enumeration (acyclic graphs only)."""
    parents = {}
    for s, ts in links.items():
        for t in ts:
            parents.setdefault(t, []).append(s)

    def count(n):
        ps = parents.get(n)
        return sum(count(p) for p in ps) if ps else 1
    return count(node)


@pytest.mark.parametrize("seed", range(30))
def test_path_counts_match_enumeration_on_random_dags(seed):
    from boltkit.buildkit.graph import summarize
    rng = random.Random(seed)
    n = rng.randrange(2, 14)
    names = [f"k{i:02d}" for i in range(n)]
    links = {a: sorted({names[j] for j in range(i + 1, n) if rng.random() < 0.35}) for i, a in enumerate(names)}
    s = summarize(links, [], top=n)
    assert dict(s.paths) == {k: brute_paths(links, k) for k in names}
    assert s.cycles == [] and s.max_paths == max(brute_paths(links, k) for k in names)


@pytest.mark.parametrize("seed", range(30))
def test_graph_summary_agrees_with_the_plain_reference_on_random_graphs_with_cycles(seed):
    from boltkit.buildkit.graph import summarize
    from .reference_cachecheck import summarize_plainly
    rng = random.Random(seed)
    names = [f"k{i:02d}" for i in range(rng.randrange(2, 40))]
    links = {a: [rng.choice(names) for _ in range(rng.randrange(0, 4))] for a in rng.sample(names, len(names) // 2 + 1)}
    with_results = rng.sample(names, len(names) // 3)
    for top in (3, 100):
        a, b = summarize(links, with_results, top), summarize_plainly(links, with_results, top)
        b.cycles = sorted(b.cycles)
        assert a == b


def test_planted_cycles_and_self_loops_are_all_found():
    from boltkit.buildkit.graph import summarize
    rng = random.Random(7)
    names = [f"k{i:03d}" for i in range(200)]
    links = {a: sorted({names[j] for j in range(i + 1, 200) if rng.random() < 0.02}) for i, a in enumerate(names)}
    planted = [["k010", "k050", "k120"], ["k150"], ["k060", "k061"]]
    for cyc in planted:
        for a, b in zip(cyc, cyc[1:] + cyc[:1]):
            links[a].append(b)
    found = summarize(links, []).cycles
    for cyc in planted:
        assert any(set(cyc) <= set(c) for c in found), (cyc, found)
    assert all(set(c) & {k for cyc in planted for k in cyc} for c in found)


def test_graph_cli_summary_dot_and_json(tmp_path):
    t = clean_tree()
    plant_cycle(t)
    plant_ghost(t)
    path = write_store(tmp_path / "cache.db", t)
    dot = tmp_path / "g.dot"
    r = CliRunner().invoke(main, ["buildkit", "graph", str(path), "--dot", str(dot)])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("keys: 5, links: 5, roots: 2, keys with results: 3, depth: 2, most root-to-key paths: 2")
    assert "cycles and self-loops: 1" in r.output
    text = dot.read_text()
    assert text.startswith("digraph cache {") and "D2" in text and "[color=red]" in text
    summary = json.loads(CliRunner().invoke(main, ["buildkit", "graph", "--json", str(path)]).output)
    assert summary["cycles"] == [[CHILD, GRAND]] and summary["problems"]["ghost0000000000000000000dd"] == "D2"
    assert summary["type"] == "graph" and (summary["keys"], summary["links"]) == (5, 5)
    assert summary["risk"]["level"] == "high" and summary["risk"]["cycles"] == 1


# -- the array checks against the plain reference, on random stores and on every corpus cache.db ---------

_IDS = st.sampled_from(["k" * 25, "a1b2c3d4e5f6g7h8i9j0k1l2m", "zzzzzzzzzzzzzzzzzzzzzzzzz", "sha256:" + "11" * 32,
                        "random:" + "22" * 32, "short", "UPPERCASE0000000000000000", "x" * 130, "k" * 24 + "é"])
_DIGESTS = st.sampled_from([D, S, "random:" + "ef" * 32, "sha256:" + "AB" * 32, "md5:1", "sha256:" + "ab" * 31, ""])
_LINK_KEYS = st.one_of(
    st.builds(lambda t, i, o, d, s: CacheInfoLink(i, o, d, s).encode() + b"@" + t.encode(),
              _IDS, st.integers(0, 10**20), st.integers(0, 12), _DIGESTS, _DIGESTS),
    st.builds(lambda t, j: j + b"@" + t.encode(), _IDS,
              st.sampled_from([b'{"Input":01}', b'{"Digest": "x"}', b"{}", b'{"Output":1,"Input":1}', b"not json",
                               b'{"Input":-1}', b'{"Input":1}@x', b""])),
    st.builds(lambda t, i, o, d, s, f: spelled_out(i, o, d, s, f) + b"@" + t.encode(), _IDS, st.integers(0, 12),
              st.integers(0, 3), _DIGESTS, _DIGESTS, st.sampled_from(["IODS", "IO", "IS", "DS", "OD", "I", "S"])),
    st.binary(max_size=40))
_RESULT_IDS = st.sampled_from([f"{WORKER}::ref1", f"{WORKER}::ref2", "noseparator", "a::b::c", f"{WORKER}::"])
_RESULT_VALUES = st.one_of(st.builds(result_value, _RESULT_IDS), st.sampled_from([b"{not json", b"[]", b'{"ID":1}',
                                                                                   b'{"CreatedAt":"x","ID":"a\\u0041"}']))


@st.composite
def cache_trees(draw):
    t = {name: Bucket() for name in draw(st.sets(st.sampled_from(TOP), min_size=2))}
    for name, b in t.items():
        for kid in draw(st.lists(_IDS, max_size=6)):
            sub = b.children.setdefault(kid.encode(), Bucket())
            if name == b"_links":
                keys = draw(st.lists(_LINK_KEYS, max_size=4))
                if draw(st.integers(0, 9)) == 0:           # big enough for pages of its own
                    keys += [link_key(f"{i:025d}") for i in range(300)]
                sub.children.update({k: b"" for k in keys if k})
            elif name == b"_result":
                sub.children.update({draw(_RESULT_IDS).encode(): draw(_RESULT_VALUES)
                                     for _ in range(draw(st.integers(0, 3)))})
            else:
                sub.children.update({k.encode(): draw(st.sampled_from([b"", b"", b"junk"]))
                                     for k in draw(st.lists(_IDS | _RESULT_IDS, max_size=4))})
        if draw(st.integers(0, 7)) == 0:
            b.children[b"plain"] = b"value"
    return t


TOP = [b"_links", b"_result", b"_byresult", b"_backlinks", b"_foreign"]


def same_store(a, b) -> None:
    """Two CacheStores hold the same entries (lists compared as multisets: the decoders read in different
    orders)."""
    assert (a.top, sorted(a.foreign_top)) == (b.top, sorted(b.foreign_top))
    assert sorted((x.code, x.bucket, x.key or b"", x.message) for x in a.anomalies) == \
        sorted((x.code, x.bucket, x.key or b"", x.message) for x in b.anomalies)
    assert {k: sorted(v, key=lambda ln: ln.raw) for k, v in a.links.items()} == \
        {k: sorted(v, key=lambda ln: ln.raw) for k, v in b.links.items()}
    assert {k: sorted((r.result_id, r.raw, r.created_at, r.error) for r in v) for k, v in a.results.items()} == \
        {k: sorted((r.result_id, r.raw, r.created_at, r.error) for r in v) for k, v in b.results.items()}
    assert (a.byresult, a.backlinks) == (b.byresult, b.backlinks)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(tree=cache_trees())
def test_array_checks_agree_with_the_plain_reference_on_random_stores(tmp_path_factory, tree):
    path = write_store(tmp_path_factory.mktemp("rand") / "cache.db", tree)
    with Database(path) as db:
        assert problem_rows(check_cache_db(db)) == problem_rows(check_cache_store(load_plainly(db)))
        same_store(load_cache_store(db), load_plainly(db))


@pytest.mark.parametrize("path", [p for p in corpus_files("sound") if p.name == "cache.db"], ids=corpus_id)
def test_array_checks_agree_with_the_plain_reference_on_the_corpus(path):
    with Database(path) as db:
        assert problem_rows(check_cache_db(db)) == problem_rows(check_cache_store(load_plainly(db)))
        same_store(load_cache_store(db), load_plainly(db))


@pytest.mark.parametrize("path", [p for p in corpus_files("torn") if "cache" in p.name], ids=corpus_id)
def test_torn_cache_db_is_checked_from_what_the_structural_pass_can_read(path):
    """On a torn store the array check sees exactly the elements the structural pass kept (damaged nodes
    dropped, first reference wins), so it may differ from the page-by-page reader there. Where BuildKit's
    top-level buckets survived, their ids are decoded; where none did, the file is not taken for a cache.db."""
    r = CliRunner().invoke(main, ["buildkit", "check", "--json", "--max-errors", "0", str(path)])
    summary = json.loads(r.output.splitlines()[-1])
    assert r.exit_code in (4, 8) and summary["type"] == "summary"
    with Database(path) as db:
        cols = load_cache_columns(db, on_damage=lambda e: None)
    reached = cols.links_ids.size + cols.results_ids.size + cols.byresult_ids.size + cols.backlinks_ids.size
    semantic = {c for c in summary["codes"] if c[0] in "CD"}
    assert (reached > 0 and semantic) if cols.top else not semantic


def test_problems_outlive_their_database_without_holding_its_lock(tmp_path):
    """Problem tables read names from the mapping after the Database is closed; the flock must still go
    with the close, or a repair in the same process would find the file 'locked by another process'."""
    from boltkit.repair.replace import holder_check
    t = clean_tree()
    plant_hard_dangling(t)
    path = write_store(tmp_path / "cache.db", t)
    with Database(path) as db:
        problems = check_cache_db(db)
    holder_check(str(path))
    d1 = [p for p in problems if p.code == "D1"]
    assert len(d1) == 1 and d1[0].key == b"nowhere00000000000000000ee"
