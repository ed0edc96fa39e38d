"""The GC model (buildkit/gc.py, `buildkit gc`): BuildKit's policy, filters and ranking, and what a GC pass or
a prune does to a real root (the BASE of the start recordings, written by buildkitd)."""
from __future__ import annotations

import datetime
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from boltkit.buildkit.gc import (DiskStat, FilterError, Keep, Rule, default_policy, disk_space, keep_bytes, matches,
                                 parse_filter, ram_in_bytes, rank_scores, worker_policy)
from boltkit.buildkit.startconfig import StartConfig
from boltkit.buildkit.startup import Stage, close_plan, simulate_start, write_start
from boltkit.cli import main
from boltkit.storage import Database

from .test_startup import CONFIG, STARTUP, _unpack

BASE_DU = STARTUP / "_setup" / "base-du.txt"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("gc") / "root"
    _unpack(STARTUP / "01-clean-start" / "before", root)
    return root


# the replays run at a fixed time: the recorded root's ages (and so what a keep duration keeps) stay as they were
NOW = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.timezone.utc)


def _plan(root, **kw):
    kw.setdefault("now", NOW)
    return simulate_start(root, config=StartConfig.load(str(CONFIG)), **kw)


# -- the policy ---------------------------------------------------------------------------------------------

def test_disk_space_units_are_go_units():
    assert ram_in_bytes("5MB") == 5 * 1024 * 1024          # go-units RAMInBytes: binary
    assert ram_in_bytes("60MB") == 62914560
    assert ram_in_bytes("1.5GiB") == int(1.5 * 1024 ** 3)
    assert disk_space("10%", DiskStat(100 * 10**9, 0)) == 10 * 10**9       # 10 GB of 100 GB, rounded up to GB
    assert disk_space("10%", DiskStat(0, 0)) == 2_000_000_000             # no disk stat: defaultCap


def test_policy_of_the_recording_config():
    rules = worker_policy(StartConfig.load(str(CONFIG)), DiskStat(10**12, 10**11))
    assert len(rules) == 4
    assert rules[0].filters == ("type==source.local", "type==exec.cachemount", "type==source.git.checkout")
    assert rules[0].keep_duration == datetime.timedelta(hours=48) and rules[0].max_used_space == 512_000_000
    for r in rules[1:]:
        assert (r.reserved_space, r.max_used_space, r.min_free_space) == (5 << 20, 60 << 20, 0)
    assert [r.all for r in rules] == [False, False, False, True]


def test_default_policy_from_the_disk():
    """DetectDefaultGCCap: 10 % reserved (≤ 10 GB), 80 % max used (≤ 100 GB), 20 % free."""
    rules = default_policy(StartConfig(), DiskStat(50 * 2**30, 10 * 2**30))
    r = rules[2]
    assert r.reserved_space == 6 * 10**9 and r.max_used_space == 41 * 10**9 and r.min_free_space == 11 * 10**9
    assert worker_policy(StartConfig(gc=False), DiskStat(0, 0)) == []


def test_keep_bytes_is_calculate_keep_bytes():
    assert keep_bytes(100, Rule(), DiskStat(0, 0)) == 0
    assert keep_bytes(100, Rule(max_used_space=50, reserved_space=70), DiskStat(0, 0)) == 70
    assert keep_bytes(100, Rule(min_free_space=30), DiskStat(1000, 10)) == 80       # frees the missing 20
    assert keep_bytes(100, Rule(min_free_space=30), DiskStat(1000, 500)) == 100     # enough free: keep all


def test_filters_follow_containerds_syntax():
    fields = {"type": ("regular", True), "description": ("[stage-1 2/3] RUN make", True), "mutable": ("", False),
              "immutable": ("", True), "id": ("abc", True)}
    assert matches((), fields)
    assert matches(("type==regular",), fields)
    assert not matches(("type==source.local",), fields)
    assert matches(("type==source.local", "type==regular"), fields)          # several: any one
    assert not matches(("type==regular,mutable",), fields)                   # commas: all
    assert matches(("immutable,description~=RUN",), fields)
    assert matches(('description~="^\\\\[stage-1"',), fields)
    assert matches(("type!=internal",), fields)
    for bad in ("type==", "==x", "type=regular", "description~=(", "a b"):
        with pytest.raises(FilterError):
            parse_filter(bad)


class _Md:
    def __init__(self, last, count):
        self.v = {"cache.lastUsedAt": last, "cache.usageCount": count}

    def int64(self, k):
        return self.v[k]


class _R:
    def __init__(self, rid, last, count):
        self.id, self.md = rid, _Md(last, count)


def rank(candidates):
    """sortDeleteRecords, transcribed loop for loop from manager.go (the reference rank_scores must equal): the
    rank of last use plus the rank of use count, each scaled to 1; lowest first.
    A record never used ranks first on the first axis."""
    def last(r):
        return r.md.int64("cache.lastUsedAt") if r.md.int64("cache.usageCount") is not None else None

    def count(r):
        return r.md.int64("cache.usageCount") or 0
    by_last = sorted(candidates, key=lambda r: (last(r) is not None, last(r) or 0))
    last_index, max_last, val = {}, 1.0, None
    for r in by_last:
        v = last(r)
        if v is not None and (val is None or v > val):
            val = v
            max_last += 1
        last_index[r.id] = max_last
    by_count = sorted(candidates, key=count)
    count_index, max_count, seen = {}, 1.0, 0
    for r in by_count:
        if count(r) != seen:
            seen = count(r)
            max_count += 1
        count_index[r.id] = max_count
    scored = [(r, last_index[r.id] / max_last + count_index[r.id] / max_count) for r in candidates]
    scored.sort(key=lambda x: x[1])
    return scored


def _order(recs):
    used = np.array([r.md.v["cache.usageCount"] is not None and r.md.v["cache.lastUsedAt"] is not None
                     for r in recs])
    last = np.array([(r.md.v["cache.lastUsedAt"] or 0) if r.md.v["cache.usageCount"] is not None else 0
                     for r in recs], np.int64)
    count = np.array([r.md.v["cache.usageCount"] or 0 for r in recs], np.int64)
    score = rank_scores(used, last, count)
    return [recs[i].id for i in np.argsort(score, kind="stable")], score


def test_rank_is_sort_delete_records():
    """Least recently and least often used first; both axes count distinct values, a never-used record
    ranks first on the time axis."""
    recs = [_R(b"new-often", 300, 9), _R(b"old-rare", 100, 1), _R(b"mid", 200, 1), _R(b"never", None, None)]
    order, _ = _order(recs)
    assert order == [r.id for r, _ in rank(recs)]
    assert order[0] == b"never" and order[-1] == b"new-often" and order.index(b"old-rare") < order.index(b"mid")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 6)), st.one_of(st.none(), st.integers(0, 4))),
                min_size=1, max_size=30))
def test_array_rank_equals_the_loops_of_manager_go(keys):
    """The GC's array rank picks what sortDeleteRecords' loops pick, ties included: same order, same scores."""
    recs = [_R(b"%03d" % i, last, count) for i, (last, count) in enumerate(keys)]
    order, score = _order(recs)
    ref = rank(recs)
    assert order == [r.id for r, _ in ref]
    assert sorted(score.tolist()) == [x for _, x in ref]


# -- on a root buildkitd wrote ------------------------------------------------------------------------------

def test_total_is_buildctl_du_total(base):
    """The GC pass's total equals `buildctl du`'s Total for the same root (54.31MB), pairs counted once."""
    total = float(re.search(r"^Total:\s+([\d.]+)MB", BASE_DU.read_text(), re.M).group(1)) * 1e6
    plan = _plan(base)
    try:
        (stage, res), = plan.gc
        assert stage is Stage.STARTUP_GC
        assert abs(res.total_before - total) < 0.01e6
        assert res.removed == [] and res.unknown_sizes == 0
        reasons = {k.id: k.reason for k in res.kept}
        assert len(reasons) == 51
        assert sum(1 for r in reasons.values() if r is Keep.PAIR) == 18      # 18 immutable records with a partner
        assert all(r in (Keep.PAIR, Keep.PARENT, Keep.BUDGET) for r in reasons.values())
    finally:
        close_plan(plan)


def test_prune_everything_empties_the_root(base, tmp_path):
    """`buildctl prune`: every record goes, children before parents; their results are released from
    cache.db, their leases go and containerd's GC takes the snapshots."""
    plan = _plan(base, prune=Rule())
    try:
        res = [r for s, r in plan.gc if s is Stage.PRUNE][0]
        assert res.kept == [] and len(res.removed) == 33
        assert sum(r.partner is not None for r in res.removed) == 18
        order = [r.id for r in res.removed]
        kinds = {(c.store, c.why.value) for c in plan.changes if c.stage in (Stage.PRUNE, Stage.LATER_RELEASE,
                                                                                 Stage.CONTAINERD_GC)}
        assert ("runc-native/metadata_v2.db", "gc-policy") in kinds
        assert ("cache.db", "result-of-cleared-record") in kinds or ("cache.db", "result-unloadable") in kinds
        out = tmp_path / "after"
        write_start(plan, out)
    finally:
        close_plan(plan)
    with Database(str(out / "runc-native" / "metadata_v2.db")) as db:
        assert list(db.tree.items(db.bucket([b"_main"]))) == []
    with Database(str(out / "cache.db")) as db:
        assert list(db.tree.items(db.bucket([b"_byresult"]))) == []
    assert len(order) == len(set(order))


def test_keep_duration_keeps_the_parents_it_stamps(base):
    """A prune with a keep duration removes the old leaves; each parent whose last child goes is stamped as
    used now (updateLastUsed) and so stays, with the reason said."""
    at = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.timezone.utc)
    plan = _plan(base, prune=Rule(keep_duration=datetime.timedelta(hours=1)), now=at)
    try:
        res = [r for s, r in plan.gc if s is Stage.PRUNE][0]
        stamped = [k for k in res.kept if k.stamped]
        assert res.removed and stamped
        assert all(k.reason in (Keep.RECENT, Keep.PARENT) for k in res.kept)
        at_ns = int(at.timestamp()) * 10**9
        assert all(at_ns <= k.last_used < at_ns + 10**9 for k in stamped)        # now, a tick apart each
        writes = [c for c in plan.changes if c.why.value == "last-used-stamped"]
        assert {c.path[-1] for c in writes} == {k.id for k in stamped}
    finally:
        close_plan(plan)


def test_byte_budget_removes_in_rank_order_until_under(base):
    plan = _plan(base, prune=Rule(max_used_space=30 * 10**6))
    try:
        res = [r for s, r in plan.gc if s is Stage.PRUNE][0]
        assert res.removed and res.total_after < 30 * 10**6
        assert res.total_after + (res.removed[-1].size or 0) >= 30 * 10**6     # one fewer would not do
        assert all(k.reason in (Keep.BUDGET, Keep.PARENT, Keep.PAIR) for k in res.kept)
    finally:
        close_plan(plan)


def test_a_filter_keeps_what_it_does_not_match(base):
    plan = _plan(base, prune=Rule(filters=("type==source.local",)))
    try:
        res = [r for s, r in plan.gc if s is Stage.PRUNE][0]
        assert {r.record_type for r in res.removed} == {"source.local"}
        assert {k.reason for k in res.kept if k.record_type == "regular"} <= {Keep.FILTER, Keep.PARENT, Keep.PAIR}
    finally:
        close_plan(plan)


def test_gc_cli(base):
    r = CliRunner().invoke(main, ["buildkit", "gc", "--config", str(CONFIG), "--at", "2026-12-02T12:00:00Z",
                                  str(base)], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    assert "The next GC pass removes 0 record(s)" in r.output and "under-budget" in r.output
    assert max(len(line) for line in r.output.splitlines()) <= 80 or "Rules" in r.output
    table = r.output[r.output.index("Why the rest stays"):]
    assert max(len(line) for line in table.splitlines()) <= 80
    r = CliRunner().invoke(main, ["buildkit", "gc", "--json", "--keep-duration", "1h", "--at",
                                  "2026-12-02T12:00:00Z", str(base)])
    assert r.exit_code == 0, r.output
    recs = [json.loads(line) for line in r.output.splitlines()]
    kinds = {x["type"] for x in recs}
    assert {"gc-removed", "gc-kept", "gc-pass"} <= kinds
    summary = [x for x in recs if x["type"] == "gc-pass"][0]
    assert summary["stage"] == "prune" and summary["removed"] == sum(x["type"] == "gc-removed" for x in recs)
    assert any(x["type"] == "gc-kept" and x["stamped"] for x in recs)
    r = CliRunner().invoke(main, ["buildkit", "gc", "--filter", "type==", str(base)])
    assert r.exit_code == 16 and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["buildkit", "gc", "--at", "yesterday", str(base)])
    assert r.exit_code == 16
    r = CliRunner().invoke(main, ["buildkit", "gc", str(base / "nope")])
    assert r.exit_code == 8


def test_every_record_of_a_corpus_root_gets_its_reason_in_80_columns():
    from .conftest import CORPUS
    root = CORPUS / "daemon1-overlayfs" / "04-after-253-builds-sigkill-mid-build"
    r = CliRunner().invoke(main, ["buildkit", "gc", "--list", str(root)], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    assert max(len(line) for line in r.output.splitlines()) <= 80
    j = CliRunner().invoke(main, ["buildkit", "gc", "--json", str(root)])
    recs = [json.loads(x) for x in j.output.splitlines()]
    kept = [x for x in recs if x["type"] == "gc-kept"]
    summary = [x for x in recs if x["type"] == "gc-pass"][0]
    assert len(kept) == summary["kept"] > 500 and all(x["reason"] for x in kept)
    assert r.output.count("\n") > len(kept)          # --list: a row for every one


def test_gc_never_writes_to_the_root(base):
    before = {p: p.read_bytes() for p in base.rglob("*.db")}
    r = CliRunner().invoke(main, ["buildkit", "gc", "--all", str(base)])
    assert r.exit_code == 0, r.output
    assert {p: p.read_bytes() for p in base.rglob("*.db")} == before
