"""The start's ReleaseUnreferenced from columns, on cache.db buckets primed from the same columns
(startup.py's fast path, and fsck handing the columns of its own check to the replay), against the
key-by-key walk it stands in for. The stores are BuildKit-like and sit in a root with no worker, so every
result is released and emptyBranchWithParents climbs every chain: the same changes in the same order, and
the same stores written."""
from __future__ import annotations

import datetime
import hashlib
import random
from collections import Counter

import pytest

from boltkit.buildkit import startup
from boltkit.buildkit.fsck import fsck_root
from boltkit.buildkit.startup import close_plan, simulate_start, write_start
from boltkit.buildkit.cachedb import CacheInfoLink
from boltkit.storage import Database
from boltkit.write import BoltWriter

NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)


def _write_cache_db(root, tops) -> None:
    """root/cache.db with the four top-level buckets of ``tops``: {top: {id: {key: value}}}."""
    with BoltWriter(str(root / "cache.db")) as w:
        for name in sorted(tops):
            w.begin_bucket(name)
            for sub in sorted(tops[name]):
                w.begin_bucket(sub)
                for k in sorted(tops[name][sub]):
                    w.put(k, tops[name][sub][k])
                w.end_bucket()
            w.end_bucket()


def _root(oracle, tmp_path, *flags):
    root = tmp_path / "root"
    root.mkdir()
    oracle.run("gen", "-seed", 7, "-profile", "buildkit", "-scale", 2, *flags, root / "cache.db")
    return root


def _chains(tmp_path, seed: int, spelled: float = 0.0, n: int = 150, result_id=None):
    """A root whose cache.db is a random DAG of keys (roots, then derived keys linked from earlier ones),
    results on some of them (a few shared by two keys), some derived keys without results: releasing
    every result empties leaves, whose removal empties their parents, up the chains. ``result_id(rng)``:
    the ids of the results (default: of a worker the root does not have)."""
    rng = random.Random(seed)
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    derived = sorted({"".join(rng.choice(alphabet) for _ in range(25)) for _ in range(n)})
    roots = ["sha256:" + hashlib.sha256(b"%d" % i).hexdigest() for i in range(n // 6)]
    keys = roots + derived
    links = {k: set() for k in keys}
    back: dict = {}
    for i, t in enumerate(derived):
        for p in rng.sample(keys[:len(roots) + i], min(rng.choice((1, 1, 2, 3)), len(roots) + i)):
            digest = "sha256:" + hashlib.sha256(f"{p}{t}".encode()).hexdigest()
            if rng.random() < spelled:
                raw = '{"Input":0,"Output":0,"Digest":"%s","Selector":""}@%s' % (digest, t)
            else:
                raw = CacheInfoLink(rng.choice((0, 0, 1)), 0, digest).encode().decode() + "@" + t
            links[p].add(raw.encode())
            back.setdefault(t, set()).add(p)
    results: dict = {}
    byresult: dict = {}
    for k in keys:
        for _ in range(rng.choice((0, 0, 1, 1, 2))):
            rid = result_id(rng) if result_id else "w0rker::" + "".join(rng.choice(alphabet) for _ in range(25))
            kids = [k] + ([rng.choice(keys)] if rng.random() < 0.1 else [])
            for kid in kids:
                results.setdefault(kid, {})[rid.encode()] = b'{"CreatedAt":"2026-11-30T10:00:00.5Z","ID":"%s"}' % \
                    rid.encode()
                byresult.setdefault(rid, set()).add(kid)
    tops = {
        b"_backlinks": {t.encode(): {p.encode(): b"" for p in ps} for t, ps in back.items()},
        b"_byresult": {r.encode(): {k.encode(): b"" for k in ks} for r, ks in byresult.items()},
        b"_links": {k.encode(): {raw: b"" for raw in v} for k, v in links.items()},
        b"_result": {k.encode(): v for k, v in results.items()},
    }
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    _write_cache_db(root, tops)
    return root


def _changes(plan):
    return [(c.store, c.op, c.path, c.key, c.value, c.what, c.why, c.subject, c.stage) for c in plan.changes]


def _dump(path):
    with Database(str(path)) as db:
        def walk(bucket):
            out = []
            for item in db.tree.items(bucket):
                if item.is_bucket:
                    child = db.tree.child(bucket, item)
                    out.append((item.key, child.sequence, walk(child)))
                else:
                    out.append((item.key, bytes(db.value(item))))
            return out
        return walk(db.root())


def _replay(root, out, **kw):
    plan = simulate_start(root, now=NOW, **kw)
    try:
        ov = plan.overlays["cache.db"]
        in_bulk = any(not isinstance(p, list) for p in ov.journal.parts())
        changes = _changes(plan)        # read before write_start applies the bulk to the buckets
        write_start(plan, out)
        assert _changes(plan) == changes
        return changes, getattr(ov, "columns", None), in_bulk
    finally:
        close_plan(plan)


def _fast_and_slow(root, tmp_path, monkeypatch, **kw):
    """The three ways of replaying the release: on the columns in bulk (release.py), release by release in
    the order the columns give, key by key as the walk reads them. The same changes, the same stores."""
    fast, cols, in_bulk = _replay(root, tmp_path / "fast", **kw)
    assert cols is not False and in_bulk, "the bulk path was not taken"
    with monkeypatch.context() as m:
        m.setattr(startup._Model, "_release_bulk", lambda self, ov, cols: None)
        ordered, _, in_bulk = _replay(root, tmp_path / "ordered", **kw)
        assert not in_bulk
    with monkeypatch.context() as m:
        m.setattr(startup._Model, "_columns", lambda self, ov: None)
        slow, _, in_bulk = _replay(root, tmp_path / "slow", **kw)
        assert not in_bulk
    assert fast == ordered == slow
    assert _dump(tmp_path / "fast" / "cache.db") == _dump(tmp_path / "ordered" / "cache.db") == \
        _dump(tmp_path / "slow" / "cache.db")
    return fast, cols


@pytest.mark.parametrize("seed,spelled", [(1, 0.0), (2, 0.0), (3, 0.4)])
def test_primed_release_climbs_the_chains_as_the_walk_does(tmp_path, monkeypatch, seed, spelled):
    fast, cols = _fast_and_slow(_chains(tmp_path, seed, spelled), tmp_path, monkeypatch)
    what = Counter(c[5] for c in fast)
    assert what["result"] > 50 and what["link"] > 20 and what["links"] > 20 and what["backlinks"] > 20, what
    assert bool(cols.link_spelled.size) == bool(spelled)   # spelled-out link keys no longer force the slow walk


@pytest.mark.parametrize("flags", [(), ("-non-canonical", "0.3", "-roots", "3")], ids=["canonical", "spelled-out"])
def test_primed_release_equals_the_walk_on_generated_stores(oracle, tmp_path, monkeypatch, flags):
    fast, cols = _fast_and_slow(_root(oracle, tmp_path, *flags), tmp_path, monkeypatch)
    assert len(fast) > 200


def test_fsck_hands_its_columns_to_the_replay(oracle, tmp_path, monkeypatch):
    """fsck decodes cache.db once: the replay and the checks across stores use the check's columns, and
    what they find is what they find reading the file themselves."""
    root = _root(oracle, tmp_path, "-non-canonical", "0.2")
    alone = simulate_start(root, now=NOW)
    expected = _changes(alone)
    close_plan(alone)
    from boltkit.buildkit import cachecolumns
    loads = []
    real = cachecolumns.load_cache_columns
    counting = lambda *a, **k: loads.append(1) or real(*a, **k)     # noqa: E731
    monkeypatch.setattr(cachecolumns, "load_cache_columns", counting)
    monkeypatch.setattr("boltkit.buildkit.fsck.load_cache_columns", counting)
    real_sim = startup.simulate_start
    monkeypatch.setattr("boltkit.buildkit.fsck.simulate_start", lambda *a, **k: real_sim(*a, now=NOW, **k))
    result = fsck_root(str(root))
    assert not loads, "cache.db was decoded again"
    assert _changes(result.plan) == expected
    x1 = [p for p in result.cross if p.code == "X1"]
    assert len(x1) == len({(c[2][1], c[3]) for c in expected if c[5] == "result"}) > 0
    assert result.exit_code() == 4         # the spelled-out keys are C9 errors; the releases are routine


def _worker_root(tmp_path, seed: int, dangling: float = 0.0):
    """The chains of ``_chains`` in a root with the worker of a real start (shared/startup case 03, whose
    start clears a record whose parent is missing and that record's descendants): results of that worker's
    records stay, results of the records the start clears go (RESULT_OF_CLEARED_RECORD), results of refs it
    does not have or of another worker go (RESULT_UNLOADABLE)."""
    import gzip
    import shutil

    from boltkit.buildkit.metadata import record_ids
    from .conftest import CORPUS
    src = CORPUS.parent / "startup" / "03-parent-missing" / "before" / "runc-native"
    worker = tmp_path / "root" / "runc-native"
    (worker / "snapshots").mkdir(parents=True)
    for f in src.rglob("*"):
        if f.is_file():
            out = worker / f.relative_to(src)
            if f.suffix == ".gz":
                with gzip.open(f) as a, open(out.with_suffix(""), "wb") as b:
                    shutil.copyfileobj(a, b)
            else:
                shutil.copyfile(f, out)
    wid = (worker / "workerid").read_text().strip()
    with Database(str(worker / "metadata_v2.db")) as db:
        records = sorted(record_ids(db))

    def result_id(rng):
        roll = rng.random()
        if roll < 0.5:
            return f"{wid}::{rng.choice(records)}"
        return (f"{wid}::" if roll < 0.8 else "elsewhere::") + "".join(rng.choice("0123456789abcdef")
                                                                        for _ in range(25))
    root = _chains(tmp_path, seed, n=120, result_id=result_id)
    if dangling:
        _add_dangling_byresult(root / "cache.db", seed, dangling)
    return root


def _add_dangling_byresult(path, seed: int, share: float) -> None:
    """Rewrite the store with some `_byresult` buckets naming, besides their keys, a key whose `_result`
    bucket does not hold the result (D-codes: a torn write). The release then deletes the entry while the
    key's `_result` bucket is there and skips it once the climb removed that bucket (the `_byresult` bucket
    then stays)."""
    rng = random.Random(seed)
    with Database(str(path)) as db:
        def walk(bucket):
            out = {}
            for item in db.tree.items(bucket):
                out[item.key] = walk(db.tree.child(bucket, item)) if item.is_bucket else bytes(db.value(item))
            return out
        tops = walk(db.root())
    kids = sorted(tops[b"_result"])
    for rid in sorted(tops[b"_byresult"]):
        if rng.random() < share:
            tops[b"_byresult"][rid][rng.choice(kids)] = b""
    path.unlink()
    with BoltWriter(str(path)) as w:
        def emit(d):
            for k in sorted(d):
                if isinstance(d[k], dict):
                    w.begin_bucket(k)
                    emit(d[k])
                    w.end_bucket()
                else:
                    w.put(k, d[k])
        emit(tops)


@pytest.mark.parametrize("seed,dangling", [(4, 0.0), (5, 0.3), (6, 0.6)])
def test_bulk_release_with_a_worker_releases_only_what_the_walk_releases(tmp_path, monkeypatch, seed, dangling):
    """A root with a worker: only some results go, for two reasons, some of them shared between keys,
    some `_byresult` buckets naming keys that do not hold them; the bulk pass, the release by release
    replay and the key by key walk agree change for change and on the stores they leave, over starts
    replayed until one changes nothing."""
    root = _worker_root(tmp_path, seed, dangling)
    fast, _ = _fast_and_slow(root, tmp_path, monkeypatch, until_stable=True)
    released = Counter(c[6].value for c in fast if c[5] == "result")
    assert released["result-unloadable"] > 10 and released["result-of-cleared-record"] > 0, released
    kept = [c for c in fast if c[5] == "record"]
    assert kept, "the start clears no record"
    with Database(str(root / "cache.db")) as db:
        before = sum(1 for b in db.tree.items(db.tree.child(db.root(), db.tree.get(db.root(), b"_result")))
                     for _ in db.tree.items(db.tree.child(db.tree.child(db.root(), db.tree.get(db.root(),
                                                                                                b"_result")), b)))
    assert 0 < released.total() < before, "every result or none released"
    rids = {c[7] for c in fast if c[5] == "result"}
    emptied = {c[3] for c in fast if c[5] == "byresult" and c[1] == "delete-bucket"}
    # a dangling entry on a key the climb emptied is skipped, and its result's `_byresult` bucket stays
    assert (emptied < rids) if dangling else (emptied == rids)


def test_journal_takes_a_bulk_and_applies_it_when_read(tmp_path):
    """Overlay.defer: the bulk is journaled at once, in place among the single mutations, and the buckets
    show it only once read; a rollback past it undoes it."""
    from boltkit.storage.overlay import Mutation, Overlay
    path = tmp_path / "s.db"
    with BoltWriter(str(path)) as w:
        w.begin_bucket(b"a")
        for k in (b"1", b"2", b"3"):
            w.put(k, b"v" + k)
        w.end_bucket()
    with Database(str(path)) as db:
        ov = Overlay(db)
        mark = ov.savepoint()
        ov.bucket(b"a").put(b"4", b"v4", "first")
        bulk = [Mutation("delete", (b"a",), b"1", None, "bulk"), Mutation("delete-bucket", (), b"a", None, "bulk")]
        ov.defer(bulk)
        assert ov._pending and [m.why for m in ov.journal] == ["first", "bulk", "bulk"] and len(ov.journal) == 3
        assert ov.bucket(b"a") is None and not ov._pending      # read: applied
        ov.root.put(b"x", b"y", "after")
        assert [m.why for m in ov.journal] == ["first", "bulk", "bulk", "after"]
        ov.rollback(mark)
        assert len(ov.journal) == 0 and not ov.changed
        assert dict(ov.bucket(b"a").items()) == {b"1": b"v1", b"2": b"v2", b"3": b"v3"}
        assert ov.root.get(b"x") is None


def test_the_climb_leaves_a_cycle_to_the_walk():
    """Backlinks that run round a cycle of keys with no links: emptyBranchWithParents would recurse for
    ever, so the columns do not decide it."""
    from types import SimpleNamespace

    import numpy as np

    from boltkit.buildkit.release import release_on_columns
    from boltkit.storage.strings import Names
    text = [b"a", b"b", b"r"]
    data = np.frombuffer(b"".join(text), np.uint8)
    names = Names(data, np.array([0, 1, 2]), np.array([1, 1, 1]))
    i64 = lambda *x: np.array(x, np.int64)        # noqa: E731
    cols = SimpleNamespace(names=names, links_ids=i64(0, 1), link_src=i64(), link_tgt=i64(),
                           link_key=(i64(), i64()), results_ids=i64(0, 1), result_kid=i64(0), result_rid=i64(2),
                           byresult_ids=i64(2), byresult_rid=i64(2), byresult_kid=i64(0),
                           backlinks_ids=i64(0, 1), backlink_tgt=i64(0, 1), backlink_src=i64(1, 0))
    why = i64(-1, -1, 0)
    assert release_on_columns(cols, why, ("gone", "empty"), 1, "stage") is None
    cols.backlink_src = i64(1, 1)       # b's backlinks name b itself: still a cycle
    assert release_on_columns(cols, why, ("gone", "empty"), 1, "stage") is None
    cols.backlinks_ids, cols.backlink_tgt, cols.backlink_src = i64(0), i64(0), i64(1)     # a chain: decided
    journal = release_on_columns(cols, why, ("gone", "empty"), 1, "stage")
    assert [(m.op, m.path, m.key, m.why[0]) for m in journal] == [
        ("delete", (b"_result", b"a"), b"r", "result"), ("delete", (b"_byresult", b"r"), b"a", "byresult"),
        ("delete-bucket", (b"_byresult",), b"r", "byresult"), ("delete-bucket", (b"_links",), b"b", "links"),
        ("delete-bucket", (b"_result",), b"b", "results"), ("delete-bucket", (b"_backlinks",), b"a", "backlinks"),
        ("delete-bucket", (b"_links",), b"a", "links"), ("delete-bucket", (b"_result",), b"a", "results")]


def test_a_climb_round_stale_backlinks_crashes_the_daemon_not_boltkit(tmp_path):
    """Two keys emptied together whose stale backlinks name each other: emptyBranchWithParents recurses
    until Go's stack overflows. The replay says so (a crash at the release, exit 8, a hint at prune), where
    the key-by-key walk used to die of Python's own recursion limit with a traceback."""
    from click.testing import CliRunner

    from boltkit.buildkit.startup import Cause, Outcome, Stage
    from boltkit.cli import main
    root = tmp_path / "root"
    root.mkdir()
    tops = {b"_backlinks": {b"a": {b"b": b""}, b"b": {b"a": b""}}, b"_byresult": {b"w::r": {b"a": b""}},
            b"_links": {b"a": {}, b"b": {}},
            b"_result": {b"a": {b"w::r": b'{"CreatedAt":"2026-11-30T10:00:00.5Z","ID":"w::r"}'}, b"b": {}}}
    _write_cache_db(root, tops)
    plan = simulate_start(root, now=NOW)
    close_plan(plan)
    assert (plan.outcome, plan.stage, plan.store, plan.cause) == (Outcome.CRASHES, Stage.RELEASE, "cache.db",
                                                                  Cause.LINK_CYCLE)
    assert plan.cause_records == (b"a", b"b") and "a -> b -> a" in plan.message
    assert not [c for c in plan.changes if c.store == "cache.db"]     # the crash is inside the release
    r = CliRunner().invoke(main, ["buildkit", "fsck", str(root)])
    assert r.exit_code == 8, r.output
    assert "stack overflow" in r.output
    r = CliRunner().invoke(main, ["buildkit", "repair", str(root)])
    assert r.exit_code == 8 and "prune --apply" in r.output, r.output
