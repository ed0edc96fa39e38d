"""The GC model against real GC runs of buildkitd (tests/data/gc, recorded as shared/startup records starts):
`buildctl prune` with each kind of option and the automatic start-up GC with explicit and default policies.
For each run the replay must remove exactly the records the daemon removed, stamp exactly the parents it
stamped, and leave every store as the daemon left it, entry for entry."""
from __future__ import annotations

import datetime
import json
import os
import subprocess
from pathlib import Path

import pytest

from boltkit.buildkit import gc as gc_model
from boltkit.buildkit.gc import DiskStat, FilterError, Rule, parse_filter, walk_usage
from boltkit.buildkit.gotime import time_of
from boltkit.buildkit.startconfig import StartConfig, go_duration
from boltkit.buildkit.startup import Stage, close_plan, simulate_start, write_start
from boltkit.errors import BoltkitError
from boltkit.storage import Database

from .conftest import ROOT
from .test_startup import STORES, _dump, _unpack

DATA = ROOT / "tests" / "data" / "gc"
ALL_RUNS = sorted(p.name for p in DATA.glob("[0-9][0-9]-*"))


def _builds(name: str) -> bool:
    return any(c["argv"][:2] == ["buildctl", "build"]
               for c in json.loads((DATA / name / "case.json").read_text())["commands"])


# An idle daemon: everything it holds is in the files. The runs with a build in flight (13, 23) show what only
# a running build knows (its references, its new records) and are checked for what the files do decide.
RUNS = [n for n in ALL_RUNS if not _builds(n)]
LIVE = [n for n in ALL_RUNS if _builds(n)]
MB = 1e6        # buildctl prune's --keep-storage & co. are in MB of 10^6 bytes


def _rule(argv: list[str]) -> Rule:
    """client.WithKeepOpt(keep-duration, keep-storage-min, keep-storage, free-storage) and the rest."""
    kw: dict = {"filters": [], "all": False}
    args = iter(argv[2:])
    for a in args:
        if a == "--all":
            kw["all"] = True
        elif a == "--filter":
            kw["filters"].append(next(args))
        elif a == "--keep-duration":
            kw["keep_duration"] = go_duration(next(args))
        elif a == "--keep-storage":
            kw["max_used_space"] = int(float(next(args)) * MB)
        elif a == "--keep-storage-min":
            kw["reserved_space"] = int(float(next(args)) * MB)
        elif a == "--free-storage":
            kw["min_free_space"] = int(float(next(args)) * MB)
    kw["filters"] = tuple(kw["filters"])
    return Rule(**kw)


def _at(text: str) -> datetime.datetime:
    when = time_of(text)
    assert when is not None, text
    return when


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("gc-runs")
    for name in ALL_RUNS:
        for side in ("before", "after"):
            _unpack(DATA / name / side, base / name / side)
    return base


def _replay(runs: Path, name: str, monkeypatch):
    """The run's start (and prune) replayed at the time the daemon ran it, with the snapshot directories'
    usage as the daemon measured it (the directories themselves are not kept: snapshot-sizes.json)."""
    case = json.loads((DATA / name / "case.json").read_text())
    sizes = json.loads((DATA / name / "snapshot-sizes.json").read_text())["before"]
    monkeypatch.setattr(gc_model, "walk_usage", lambda path: sizes[path.name]["fs_usage"] if path.name in sizes
                        else None)
    prunes = [c for c in case["commands"] if c["argv"][:2] == ["buildctl", "prune"]]
    rule = _rule(prunes[0]["argv"]) if prunes else None
    now = _at(prunes[0]["started_at"] if prunes else case["daemon"]["daemon_started_at"])
    rejected = rule is not None and any(_bad(f) for f in rule.filters)
    plan = simulate_start(runs / name / "before", config=StartConfig.load(str(DATA / name / case["config"])),
                          now=now, prune=None if rejected else rule, disk=_disk(case))
    return case, rule, rejected, plan


def _disk(case: dict) -> DiskStat:
    """The file system the daemon saw (statvfs as the driver took it), not the one the test runs on."""
    for c in case["commands"]:
        if "disk" in c:
            return DiskStat(c["disk"]["total_bytes"], c["disk"]["free_before_bytes"])
    pre = case["notes"].get("pre") if isinstance(case.get("notes"), dict) else None
    if pre and "total_bytes" in pre:
        return DiskStat(pre["total_bytes"], pre["free_bytes"])
    return DiskStat(270_553_174_016, 233_000_000_000)     # the recording machine's disk, for caps that use it


def _removed(plan, stage: Stage) -> set[str]:
    out = set()
    for s, res in plan.gc:
        if s is stage:
            for r in res.removed:
                out.add(r.id.decode())
                if r.partner is not None:
                    out.add(r.partner.decode())
    return out


def test_every_run_is_here():
    assert len(RUNS) >= 20 and len(LIVE) == 2
    kinds = {tuple(a for a in c["argv"] if a.startswith("--")) for name in ALL_RUNS
             for c in json.loads((DATA / name / "case.json").read_text())["commands"]}
    for option in ("--all", "--keep-duration", "--filter", "--keep-storage", "--keep-storage-min"):
        assert any(option in k for k in kinds), option


@pytest.mark.parametrize("name", RUNS)
def test_removals_and_stamps_are_the_daemons(runs, name, monkeypatch):
    case, rule, rejected, plan = _replay(runs, name, monkeypatch)
    try:
        if rejected:
            # containerd's parser rejects the filter: buildkitd fails the prune and removes nothing
            assert case["removed"] == [] and not [s for s, _ in plan.gc if s is Stage.PRUNE]
            assert all(c["rc"] != 0 for c in case["commands"] if c["argv"][:2] == ["buildctl", "prune"])
            return
        stage = Stage.PRUNE if rule is not None else Stage.STARTUP_GC
        assert _removed(plan, stage) == {r["id"] for r in case["removed"]}
        left = {r["id"] for r in case["kept"]}
        stamped = {c.path[-1].decode() for c in plan.changes if c.why.value == "last-used-stamped"
                   and c.stage is stage and c.path[-1].decode() in left}
        assert stamped == set(case["changed_fields"])
    finally:
        close_plan(plan)


def _bad(text: str) -> bool:
    try:
        parse_filter(text)
    except FilterError:
        return True
    return False


@pytest.mark.parametrize("name", RUNS)
def test_stores_after_the_run(runs, name, monkeypatch, tmp_path):
    """Every bucket, key, value and sequence of every store as the daemon left it; lastUsedAt is a time of
    the daemon's own clock (the stamp's value), so it alone is left out."""
    case, rule, rejected, plan = _replay(runs, name, monkeypatch)
    try:
        write_start(plan, tmp_path / "out")
    finally:
        close_plan(plan)
    for store in STORES:
        ours, theirs = _dump(tmp_path / "out" / store), _dump(runs / name / "after" / store)
        assert ours is not None and theirs is not None, store
        for d in (ours, theirs):
            for k in [k for k in d if k[-1] == b"cache.lastUsedAt"]:
                del d[k]
        missing, extra = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
        differ = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
        assert (missing, extra, differ) == ([], [], []), store


def test_walk_usage_counts_blocks_of_each_inode_once(tmp_path):
    """continuity's fs.DiskUsage: 512-byte blocks of every inode, hard links once; `du -s -B1` agrees."""
    d = tmp_path / "snap"
    (d / "sub").mkdir(parents=True)
    (d / "a").write_bytes(b"x" * 10000)
    (d / "sub" / "b").write_bytes(b"y" * 5000)
    os.link(d / "a", d / "sub" / "a-link")
    os.symlink("a", d / "l")
    expected = int(subprocess.run(["du", "-s", "-B1", str(d)], capture_output=True, text=True, check=True)
                   .stdout.split()[0])
    assert walk_usage(d) == expected
    assert walk_usage(tmp_path / "missing") is None


@pytest.mark.parametrize("name", [n for n in RUNS if any(
    "--keep-storage" in c["argv"] for c in json.loads((DATA / n / "case.json").read_text())["commands"])])
def test_a_budget_prune_removes_in_the_daemons_order(runs, name, monkeypatch):
    """Under a byte budget one record goes at a time, in sortDeleteRecords' order, re-ranked after each; the
    daemon reports them in that order, with the total it printed."""
    case, rule, rejected, plan = _replay(runs, name, monkeypatch)
    try:
        res = [r for s, r in plan.gc if s is Stage.PRUNE][0]
        report = case["prune_reports"][0]
        assert [r.id.decode() for r in res.removed] == report["reported_ids"]
        assert f"{res.reclaimed / 1e6:.2f}MB" == report["total"]
    finally:
        close_plan(plan)


@pytest.mark.parametrize("name", RUNS)
def test_du_lists_what_buildctl_du_lists(runs, name, monkeypatch):
    """`buildkit du` on the stopped root before the run: the ids, sizes and in-use flags of `buildctl du
    --format '{{json .}}'` taken on the started daemon (before the prune; for the automatic-GC runs, after
    the start-up GC, which `buildkit du` replays as part of the start)."""
    from click.testing import CliRunner

    from boltkit.cli import main
    case = json.loads((DATA / name / "case.json").read_text())
    sizes = json.loads((DATA / name / "snapshot-sizes.json").read_text())["before"]
    monkeypatch.setattr(gc_model, "walk_usage", lambda path: sizes[path.name]["fs_usage"] if path.name in sizes
                        else None)
    automatic = not [c for c in case["commands"] if c["argv"][:2] == ["buildctl", "prune"]]
    theirs = json.loads((DATA / name / ("du-after.json" if automatic else "du-before.json")).read_text()) or []
    prunes = [c for c in case["commands"] if c["argv"][:2] == ["buildctl", "prune"]]
    at = prunes[0]["started_at"] if prunes else case["daemon"]["daemon_started_at"]
    r = CliRunner().invoke(main, ["buildkit", "du", "--json", "--config", str(DATA / name / case["config"]),
                                  "--at", at, str(runs / name / "before")])
    assert r.exit_code == 0, r.output
    ours = [json.loads(x) for x in r.output.splitlines()]
    assert {x["id"]: (x["size"], not x["reclaimable"]) for x in ours if x["type"] == "cache-record"} == \
        {x["id"]: (x["size"], x["inUse"]) for x in theirs}


def test_a_prune_during_a_build_keeps_only_what_the_build_holds(runs, monkeypatch):
    """13: a prune while a build runs. The files cannot show the build's references: the replay removes all
    the daemon removed, and beyond that only records the build held (in use in `buildctl du` during the
    build) or that are the mutable halves of records it held."""
    name = "13-in-use-during-build"
    case, rule, rejected, plan = _replay(runs, name, monkeypatch)
    try:
        ours = _removed(plan, Stage.PRUNE)
    finally:
        close_plan(plan)
    listing = (DATA / name / "cmd3.txt").read_text()
    assert listing.startswith("$ buildctl du --format")
    during = json.loads(listing.split("--- stdout\n")[1].split("--- stderr")[0])
    in_use = {x["id"] for x in during if x["inUse"]}
    halves = set()
    with Database(str(runs / name / "after" / "runc-native" / "metadata_v2.db")) as db:
        for rid in in_use:
            try:
                raw = db.get([b"_main", rid.encode()], b"cache.equalMutable")
            except BoltkitError:
                continue
            if raw:
                halves.add(json.loads(raw)["value"])
    theirs = {r["id"] for r in case["removed"]}
    assert theirs <= ours
    assert ours - theirs == {r["id"] for r in case["kept"]}
    assert ours - theirs <= in_use | halves


def test_the_start_up_gc_before_a_build_is_a_no_op(runs, monkeypatch):
    """23: before the build the cache is under the 60 MiB cap, and the daemon's start-up GC removed nothing
    (the GC the build then requests waits for the once-a-minute throttle: a running daemon's business)."""
    case, rule, rejected, plan = _replay(runs, "23-gc-after-build-throttled", monkeypatch)
    try:
        (stage, res), = plan.gc
        assert stage is Stage.STARTUP_GC and res.removed == []
        assert res.total_before == case["du_before"]["sum_size"] < 60 * 2**20
    finally:
        close_plan(plan)
