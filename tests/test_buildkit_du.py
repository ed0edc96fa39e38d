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
        rows = {r.id: r for r in usage(load_metadata_store(db))}
    assert {k: rows[k].kind for k in rows} == {BASE: "base", LAYER: "layer", OTHER: "base", MERGE: "merge"}
    assert rows[MERGE].parents == [LAYER, OTHER] and rows[LAYER].children == 1
    assert rows[BASE].pinned_by_younger and not rows[MERGE].pinned_by_younger
    assert rows[BASE].size is None and rows[LAYER].description == "RUN make"


def test_du_of_a_real_root_totals_and_notes():
    r = run("buildkit", "du", "--json", ROOT)
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in r.output.splitlines()]
    rows, summary = recs[:-1], recs[-1]
    assert summary["records"] == len(rows) == 596
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
