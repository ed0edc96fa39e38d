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


def _root(oracle, tmp_path, *flags):
    root = tmp_path / "root"
    root.mkdir()
    oracle.run("gen", "-seed", 7, "-profile", "buildkit", "-scale", 2, *flags, root / "cache.db")
    return root


def _chains(tmp_path, seed: int, spelled: float = 0.0, n: int = 150):
    """A root whose cache.db is a random DAG of keys (roots, then derived keys linked from earlier ones),
    results on some of them (a few shared by two keys), some derived keys without results: releasing
    every result empties leaves, whose removal empties their parents, up the chains."""
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
            rid = "w0rker::" + "".join(rng.choice(alphabet) for _ in range(25))
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
    root.mkdir()
    with BoltWriter(str(root / "cache.db")) as w:
        for name in sorted(tops):
            w.begin_bucket(name)
            for sub in sorted(tops[name]):
                w.begin_bucket(sub)
                for k in sorted(tops[name][sub]):
                    w.put(k, tops[name][sub][k])
                w.end_bucket()
            w.end_bucket()
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
        write_start(plan, out)
        return _changes(plan), getattr(plan.overlays["cache.db"], "columns", None)
    finally:
        close_plan(plan)


def _fast_and_slow(root, tmp_path, monkeypatch):
    fast, cols = _replay(root, tmp_path / "fast")
    assert cols is not False, "the fast path was not taken"
    with monkeypatch.context() as m:
        m.setattr(startup._Model, "_release_order", lambda self, ov: None)
        slow, _ = _replay(root, tmp_path / "slow")
    assert fast == slow
    assert _dump(tmp_path / "fast" / "cache.db") == _dump(tmp_path / "slow" / "cache.db")
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
