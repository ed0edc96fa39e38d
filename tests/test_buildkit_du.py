"""`buildkit du`: offline disk usage of cache records with the reasons space is not reclaimed."""
from __future__ import annotations

import json

from click.testing import CliRunner

from boltkit.buildkit.du import usage
from boltkit.buildkit.metadata import load_metadata_store
from boltkit.cli import main
from boltkit.storage import Database
from testdata.buildkit import BASE, LAYER, MERGE, OTHER, clean_metadata_tree, write_store

from .conftest import CORPUS

ROOT = CORPUS / "daemon1-overlayfs" / "04-after-253-builds-sigkill-mid-build"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_kinds_parents_and_pinning(tmp_path):
    path = write_store(tmp_path / "metadata_v2.db", clean_metadata_tree())
    with Database(path) as db:
        rows = {r.id.decode(): r for r in usage(load_metadata_store(db))}
    assert {k: rows[k].kind for k in rows} == {BASE: "base", LAYER: "layer", OTHER: "base", MERGE: "merge"}
    assert rows[MERGE].parents == [LAYER.encode(), OTHER.encode()] and rows[LAYER].children == 1
    assert rows[BASE].pinned_by_younger and not rows[MERGE].pinned_by_younger
    assert rows[BASE].size is None and rows[LAYER].description == "RUN make"


def test_du_of_a_real_root_totals_and_notes():
    r = run("buildkit", "du", "--json", ROOT)
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in r.output.splitlines()]
    rows, summary = recs[:-1], recs[-1]
    # 596 records in metadata_v2.db: 80 pairs are listed once and the next start removes one, as buildctl du
    assert summary["records"] == len(rows) == 596 - 80 - 1
    assert any("80 equal-mutable pair(s) are listed once" in n for n in summary["notes"])
    assert any("1 record(s) the next start removes" in n for n in summary["notes"])
    assert summary["total"] == sum(x["size"] or 0 for x in rows)
    sizes = [x["size"] or 0 for x in rows]
    assert sizes == sorted(sizes, reverse=True)
    assert any("are parents" in n for n in summary["notes"])
    assert any("bolt files are never counted" in n for n in summary["notes"])


def test_filters():
    all_rows = [json.loads(x) for x in run("buildkit", "du", "--json", ROOT).output.splitlines()][:-1]
    types = {x["record_type"] for x in all_rows}
    for t in types:
        only = [json.loads(x) for x in run("buildkit", "du", "--json", "--type", t, ROOT).output.splitlines()][:-1]
        assert only and all(x["record_type"] == t for x in only)
    old = [json.loads(x) for x in run("buildkit", "du", "--json", "--older-than", "1s", ROOT).output.splitlines()]
    assert old[-1]["records"] == len(all_rows)        # everything in the corpus is older than a second
    assert run("buildkit", "du", "--older-than", "soon", ROOT).exit_code == 16


def test_du_of_the_recorded_base_is_buildctl_du(tmp_path):
    """BASE of the start recordings with `buildctl du -v` taken on it by the daemon: the same records, each
    with the size buildctl printed (its kB are 1000 bytes, two decimals), and the same total."""
    import re

    from .test_startup import STARTUP, _unpack
    _unpack(STARTUP / "01-clean-start" / "before", tmp_path / "root")
    text = (STARTUP / "_setup" / "base-du.txt").read_text()
    theirs = {}
    for block in text.split("\n\n"):
        m_id, m_size = re.search(r"^ID:\s+(\S+)", block, re.M), re.search(r"^Size:\s+([\d.]+)(B|kB|MB)", block, re.M)
        if m_id and m_size:
            theirs[m_id.group(1)] = float(m_size.group(1)) * {"B": 1, "kB": 1e3, "MB": 1e6}[m_size.group(2)]
    r = run("buildkit", "du", "--json", tmp_path / "root")
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in r.output.splitlines()]
    ours = {x["id"]: x["size"] for x in recs if x["type"] == "cache-record"}
    assert set(ours) == set(theirs) and len(ours) == 33
    for rid, size in ours.items():
        assert abs(size - theirs[rid]) <= 0.005 * max(theirs[rid], 1000), rid
    total = float(re.search(r"^Total:\s+([\d.]+)MB", text, re.M).group(1)) * 1e6
    assert abs(recs[-1]["total"] - total) < 0.01e6 and recs[-1]["unknown_sizes"] == 0


def test_the_listing_is_chosen_and_ordered_by_the_library():
    """`du --type/--older-than/--sort` are du.select and du.parse_age: a script gets the same listing."""
    import datetime

    from boltkit.buildkit.du import parse_age, select
    with Database(ROOT / "runc-overlayfs" / "metadata_v2.db") as db:
        rows = usage(load_metadata_store(db))
    assert parse_age("48h") == datetime.timedelta(hours=48) and parse_age("7d") == datetime.timedelta(days=7)
    assert parse_age("soon") is None and parse_age("7") is None
    biggest = select(rows)
    assert [r.size or 0 for r in biggest] == sorted((r.size or 0 for r in rows), reverse=True)
    types = {r.record_type for r in rows}
    one = sorted(types)[0]
    assert {r.record_type for r in select(rows, types=(one,))} == {one}
    newest = max(r.last_used or r.created for r in rows)
    now = newest + datetime.timedelta(hours=1)
    assert select(rows, older_than=datetime.timedelta(minutes=30), now=now) == biggest
    assert select(rows, older_than=datetime.timedelta(days=10000), now=now) == []
    lru = select(rows, sort="last-used")
    assert [r.last_used or r.created for r in lru] == sorted(r.last_used or r.created for r in rows)
