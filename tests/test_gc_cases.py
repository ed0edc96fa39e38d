"""The recorded garbage-collection runs of tests/data/gc (real buildkitd, see its CASES.md) are complete and agree
with themselves: what case.json says was removed is what the stores before and after show, the du and prune
figures buildctl printed are the sums of the records it listed, and the sizes measured on disk belong to records
that exist. The GC model's tests compare against these cases; this file makes sure the ground truth holds first."""
from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import pytest

from boltkit.buildkit.metadata import load_metadata_store
from boltkit.storage import Database

GC = Path(__file__).parent / "data" / "gc"
CASES = sorted(p.name for p in GC.glob("[0-9][0-9]-*"))
STORES = ["cache.db", "history.db", "runc-native/metadata_v2.db", "runc-native/containerdmeta.db",
          "runc-native/snapshots/metadata.db"]
FILES = ["case.json", "buildkitd.toml", "daemon.log.gz", "snapshot-sizes.json", "du-v-before.txt",
         "du-before.json", "du-v-after.txt", "du-after.json"]
UNITS = ["B", "kB", "MB", "GB", "TB", "PB", "EB"]


def go_bytes(n: int) -> str:
    """tonistiigi/units Bytes with "%.2f", as buildctl prints sizes: decimal units, whole bytes below 1 kB."""
    if n < 1000:
        return "%dB" % n
    i, base = 0, 1
    while n >= base * 1000:
        i, base = i + 1, base * 1000
    return "%.2f%s" % (n / base, UNITS[i])


def _unpack(case: str, side: str, dst: Path) -> Path:
    out = dst / case / side
    for f in (GC / case / side).rglob("*"):
        if f.is_file():
            target = out / f.relative_to(GC / case / side)
            target.parent.mkdir(parents=True, exist_ok=True)
            if f.suffix == ".gz":
                with gzip.open(f) as a, open(target.with_suffix(""), "wb") as b:
                    shutil.copyfileobj(a, b)
            else:
                shutil.copyfile(f, target)
    return out


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("gc")
    return {(c, s): _unpack(c, s, base) for c in CASES for s in ("before", "after")}


def _records(root: Path) -> dict:
    with Database(str(root / "runc-native" / "metadata_v2.db")) as db:
        return {rid.decode(): rec.values for rid, rec in load_metadata_store(db).records.items()}   # ids: ASCII


def _case(name: str) -> dict:
    return json.loads((GC / name / "case.json").read_text())


def _totals(text: str) -> dict:
    return dict(re.findall(r"^(Reclaimable|Total|Shared|Private):\s+([0-9.]+[kMGTPE]?B)$", text, re.M))


def _verbose(text: str) -> list[dict]:
    """printVerbose blocks (du -v, prune -v): one dict per record, keys as buildctl prints them."""
    out = []
    for block in text.split("\n\n"):
        kv = dict(re.findall(r"^([A-Z][A-Za-z ]*):\t+(.*)$", block, re.M))
        if "ID" in kv:
            out.append(kv)
    return out


def test_the_data_set_is_here_and_small():
    assert len(CASES) >= 11
    assert (GC / "CASES.md").is_file() and (GC / "README.md").is_file()
    size = sum(f.stat().st_size for f in GC.rglob("*") if f.is_file())
    assert size < 5_000_000, size


@pytest.mark.parametrize("name", CASES)
def test_case_is_complete(name):
    d = GC / name
    for f in FILES:
        assert (d / f).is_file(), f
    for side in ("before", "after"):
        for store in STORES:
            assert (d / side / (store + ".gz")).is_file(), (side, store)
        assert (d / side / "runc-native" / "workerid").read_text().strip()
    log = gzip.open(d / "daemon.log.gz").read().decode()
    assert "running server on" in log
    case = _case(name)
    assert case["daemon"]["ready_seconds"] is not None and not case["daemon"]["sigkilled"]
    assert case["daemon_log"]["gc_cleaned_up_bytes"] == [int(b) for b in re.findall(r"gc cleaned up (\d+) bytes", log)]
    assert set(case["store_changes"]) == set(STORES)
    for i, cmd in enumerate(case["commands"], 1):
        text = (d / ("cmd%d.txt" % i)).read_text()
        assert text.startswith("$ buildctl ") and ("# rc=%d " % cmd["rc"]) in text


@pytest.mark.parametrize("name", CASES)
def test_removed_and_kept_are_what_the_stores_show(roots, name):
    case = _case(name)
    before, after = _records(roots[name, "before"]), _records(roots[name, "after"])
    removed = {r["id"] for r in case["removed"]}
    kept = {r["id"] for r in case["kept"]}
    assert removed == set(before) - set(after)
    assert kept == set(before) & set(after)
    assert set(case["added"]) == set(after) - set(before)
    for r in case["removed"]:
        rec = before[r["id"]]
        assert r["recordType"] == (rec.get("cache.recordType") or "regular")
        assert r["lastUsedAt"] == rec.get("cache.lastUsedAt")
        assert r["mutable"] == (not rec.get("snapshot.committed", False))


@pytest.mark.parametrize("name", CASES)
def test_du_figures_are_the_sums_of_the_records(roots, name):
    case = _case(name)
    for side in ("before", "after"):
        text = (GC / name / ("du-v-%s.txt" % side)).read_text()
        listed = json.loads((GC / name / ("du-%s.json" % side)).read_text()) or []
        totals = _totals(text)
        total = sum(e["size"] for e in listed if e["size"] > 0)
        reclaimable = sum(e["size"] for e in listed if e["size"] > 0 and not e["inUse"])
        assert totals["Total"] == go_bytes(total)
        assert totals["Reclaimable"] == go_bytes(reclaimable)
        assert case["du_%s" % side]["sum_size"] == total
        # the verbose listing and the JSON one are the same records
        assert sorted(b["ID"] for b in _verbose(text)) == sorted(e["id"] for e in listed)
        # every du entry is a record of the store the daemon had then; equal pairs are listed once
        ids = set(_records(roots[name, side if side == "after" else "before"]))
        if side == "before" and case["removed"] and not case["commands"]:
            continue  # the start-up GC had already removed some when du ran
        assert {e["id"] for e in listed} <= ids | {r["id"] for r in case["removed"]}


@pytest.mark.parametrize("name", CASES)
def test_prune_reports_name_removed_records(name):
    case = _case(name)
    removed = {r["id"] for r in case["removed"]}
    prunes = [i for i, c in enumerate(case["commands"], 1) if c["argv"][1] == "prune"]
    assert len(prunes) == len(case["prune_reports"])
    for i, rep in zip(prunes, case["prune_reports"]):
        assert rep["argv"] == case["commands"][i - 1]["argv"]
        if rep["rc"] != 0:
            assert rep["total"] is None and not rep["reported_ids"]
            continue
        assert set(rep["reported_ids"]) <= removed
        out = (GC / name / ("cmd%d.txt" % i)).read_text().split("--- stdout\n", 1)[1].split("--- stderr")[0]
        blocks = _verbose(out)
        assert [b["ID"] for b in blocks] == rep["reported_ids"]
        # the Total: line is the sum of the sizes buildctl was sent; each listed size is rounded, the total is not
        assert _totals(out)["Total"] == rep["total"]


@pytest.mark.parametrize("name", CASES)
def test_snapshot_sizes_belong_to_records(roots, name):
    case = _case(name)
    sizes = json.loads((GC / name / "snapshot-sizes.json").read_text())
    removed = {r["id"] for r in case["removed"]}
    before, after = _records(roots[name, "before"]), _records(roots[name, "after"])
    for side, recs in (("before", before), ("after", after)):
        for n, e in sizes[side].items():
            assert isinstance(e["du_sb"], int) and isinstance(e["fs_usage"], int) and e["fs_usage"] % 512 == 0
            assert e["record"] in recs, (side, n)
            snap = recs[e["record"]]
            if snap.get("snapshot.committed") and isinstance(snap.get("snapshot.size"), int):
                # a committed record's size is the native snapshotter's usage of its directory, plus its layer
                # blob where an export made one (cache.blobsize; no compression variants here)
                assert snap["snapshot.size"] == e["fs_usage"] + (snap.get("cache.blobsize") or 0), (side, n)
    gone = {n for n in sizes["before"] if n not in sizes["after"]}
    assert gone == set(case["snapshot_dirs_removed"])
    assert {sizes["before"][n]["record"] for n in gone} <= removed


@pytest.mark.parametrize("name", [c for c in CASES if (GC / c / "daemon-trace.log.gz").is_file()])
def test_the_trace_rerun_removed_the_same_records(name):
    """A second identical run at trace level removed the same records: the GC is reproducible on this BASE, and
    the trace gives the order the daemon removed them in (the normal log does not)."""
    trace = gzip.open(GC / name / "daemon-trace.log.gz").read().decode()
    order = re.findall(r'msg="removed cache record" id=(\S+)', trace)
    assert len(order) == len(set(order))
    assert set(order) == {r["id"] for r in _case(name)["removed"]}
    assert re.findall(r"gc cleaned up (\d+) bytes", trace) == [str(b) for b in
                                                               _case(name)["daemon_log"]["gc_cleaned_up_bytes"]]


@pytest.mark.parametrize("name", CASES)
def test_du_sizes_are_the_measured_directories(roots, name):
    """What buildctl du says a record weighs is the native snapshotter's usage of that record's directory, as
    measured on disk before the daemon started (plus the layer blob an export made): the sizes an offline du must
    reproduce."""
    listed = json.loads((GC / name / "du-before.json").read_text()) or []
    sizes = json.loads((GC / name / "snapshot-sizes.json").read_text())["before"]
    by_record = {e["record"]: e for e in sizes.values()}
    recs = _records(roots[name, "before"])
    assert listed
    for e in listed:
        blob = recs[e["id"]].get("cache.blobsize") or 0
        assert e["size"] == by_record[e["id"]]["fs_usage"] + blob, e["id"]
