"""The reading commands through click's CliRunner: exit codes and what users see."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from boltkit.cli import main
from testdata import damage


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_info_names_current_meta_and_sizes(example_db):
    r = run("info", example_db)
    assert r.exit_code == 0
    assert "page size:    4096" in r.output
    assert "current meta: 1: meta 1 has the higher txid (439 > 438)" in r.output
    assert "freelist:     page 17 (+0 overflow), 8 free or pending pages" in r.output


def test_info_json(example_db):
    info = json.loads(run("info", "--json", example_db).output)
    assert (info["page_size"], info["hwm"], info["txid"], info["current_meta"]) == (4096, 83, 439, 1)
    assert [m["txid"] for m in info["metas"]] == [438, 439]
    assert info["freelist"] == {"page": 17, "overflow": 0, "ids": 8}


def test_forced_meta_reads_the_older_tree(example_db):
    info = json.loads(run("info", "--json", "--meta", "0", example_db).output)
    assert info["current_meta"] == 0 and info["root"] == 24


def test_buckets_lists_buildkit_top_level(example_db):
    r = run("buckets", "--json", example_db)
    names = [json.loads(line)["path"][-1] for line in r.output.splitlines()]
    assert names == ["_backlinks", "_byresult", "_links", "_result"]


def test_keys_and_get_round_trip(example_db):
    r = run("keys", example_db, "_result")
    first = r.output.splitlines()[0]
    assert first.endswith("/")
    sub = first[:-1]
    key = run("keys", example_db, "_result", sub).output.splitlines()[0]
    value = run("get", "--encoding", "raw", example_db, "_result", sub, key).stdout_bytes
    assert value.startswith(b"{") and b"CreatedAt" in value
    hexargs = [s.encode().hex() for s in ("_result", sub, key)]
    assert run("get", "--hex", "--encoding", "raw", example_db, *hexargs).stdout_bytes == value


def test_get_missing_key_is_one_clear_line(example_db):
    r = run("get", example_db, "_result", "nope")
    assert r.exit_code == 8
    assert r.output.strip() == "Error: key not found: nope in _result"


def test_tree_counts(example_db):
    rows = [json.loads(line) for line in run("tree", "--json", example_db).output.splitlines()]
    top = {r["path"][0]: r for r in rows if len(r["path"]) == 1}
    assert top["_links"]["buckets"] == 239
    assert sum(r["keys"] for r in rows) == 866
    assert sum(r["inline"] for r in rows) == 710


def test_stats_matches_manifest_counts(example_db):
    st = json.loads(run("stats", "--json", example_db).output.splitlines()[0])
    assert st["type"] == "stats" and st["path"] == []
    assert st["buckets"] == 720 and st["inline_buckets"] == 710
    assert st["keys"] == 1582      # bbolt's KeyN counts sub-bucket entries too


def test_export_count_and_lines(example_db):
    counts = json.loads(run("export", "--count", example_db).output)
    assert counts == {"type": "count", "buckets": 720, "pairs": 866, "bytes": 90941}
    lines = run("export", example_db).output.splitlines()
    assert len(lines) == 720 + 866
    assert json.loads(lines[0]) == {"type": "bucket", "path": ["_backlinks"], "sequence": 0}


def test_export_subtree_hex(example_db):
    lines = run("export", "-e", "hex", example_db, "_links").output.splitlines()
    recs = [json.loads(x) for x in lines]
    assert all(r["path"][0] == b"_links".hex() for r in recs)
    assert all(r["type"] == "bucket" or r["value"] == "" for r in recs)


def test_pages_accounts_for_every_page(example_db):
    rows = [json.loads(line) for line in run("pages", "--json", example_db).output.splitlines()]
    assert [r["id"] for r in rows] == list(range(83))
    kinds = {r["page_type"] for r in rows}
    assert {"meta", "freelist", "branch", "leaf"} <= kinds
    assert sum(r["page_type"] in ("free", "pending") for r in rows) == 8
    assert "leaked" not in kinds


def test_pages_shows_a_huge_value_as_one_row(tmp_path):
    """A 40 MB value spans ~10k overflow pages: one row for its leaf, one `A-B` row for the span, so the
    listing stays a screen long and every page is still accounted for."""
    from boltkit.write import BoltWriter
    path = tmp_path / "big.db"
    w = BoltWriter(str(path), page_size=4096)
    w.begin_bucket(b"b", 0)
    w.put(b"huge", bytes(40 << 20))
    w.put(b"small", b"x")
    w.end_bucket()
    w.close()
    rows = [json.loads(line) for line in run("pages", "--json", path).output.splitlines()]
    spans = [r for r in rows if r["page_type"] == "overflow"]
    assert len(spans) == 1 and spans[0]["run"] >= (40 << 20) // 4096
    leaf = next(r for r in rows if r["id"] == spans[0]["of"])
    assert leaf["page_type"] == "leaf" and leaf["overflow"] == spans[0]["run"]
    covered = sorted(i for r in rows for i in range(r["id"], r["id"] + r.get("run", 1)))
    assert covered == list(range(len(covered))) and len(rows) < 10
    table = run("pages", path).output
    assert f"{spans[0]['id']}-{spans[0]['id'] + spans[0]['run'] - 1}" in table and len(table.splitlines()) < 15


def test_page_decodes_elements(example_db):
    r = run("page", example_db, "0", "52")
    assert r.exit_code == 0
    assert "page 0: meta" in r.output and "txid: 438" in r.output
    assert "page 52: leaf, 4 item(s)" in r.output and "_links = bucket root=45" in r.output
    assert "|" in run("page", "--hex", example_db, "52").output


@pytest.mark.parametrize("command", ["info", "pages", "tree", "stats", "export", "buckets"])
def test_bad_inputs_give_one_line_and_nonzero_exit(tmp_path, example_db, command):
    missing = tmp_path / "missing.db"
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    text = tmp_path / "text.db"
    text.write_bytes(b"hello, this is not a database\n" * 500)
    truncated = damage.copy(example_db, tmp_path / "truncated.db")
    damage.truncate(truncated, 5000)
    zeros = tmp_path / "zeros.db"
    zeros.write_bytes(bytes(64 << 10))
    expected = {
        missing: "no such file",
        empty: "file is empty",
        text: "not a bbolt database",
        zeros: "not a bbolt database",
    }
    for path, words in expected.items():
        r = run(command, path)
        assert r.exit_code == 8, (path, r.output)
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], (path, r.output)
    # a file cut before its root page: what can be shown is, and the exit status says the tree is lost
    r = run(command, truncated)
    assert r.exit_code == 1 and r.exception is None or isinstance(r.exception, SystemExit), r.output
    assert "file is truncated" in r.output and "Error: " in r.output


def test_directory_is_refused(tmp_path):
    r = run("info", tmp_path)
    assert r.exit_code == 8 and "is a directory" in r.output


def test_reading_never_writes(tmp_path, example_db):
    db = damage.copy(example_db, tmp_path / "c.db")
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    for cmd in ("info", "pages", "tree", "stats", "export"):
        run(cmd, db)
    run("export", "--snapshot", db)
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before


def test_keys_and_buckets_read_past_damage_like_export():
    """One tolerant walk for every reader: on a torn copy whose _links bucket has a damaged leaf, `keys` and
    `buckets` list every entry `export` finds, say what they skipped on stderr and exit 1 (they printed nothing
    and exited 8 when they read strictly)."""
    from .conftest import corpus_files
    torn = [p for p in corpus_files("torn") if p.name == "daemon4-cache-cp-during-build-136.db"][0]
    exported = {tuple(r["path"]) for r in map(json.loads, run("export", torn, "_links").stdout.splitlines())
                if r["type"] == "bucket"}
    assert len(exported) == 375
    keys = run("keys", "--json", torn, "_links")
    assert keys.exit_code == 1 and "damage: page 258" in keys.stderr
    assert {("_links", r["key"]) for r in map(json.loads, keys.stdout.splitlines()) if r["bucket"]} == exported
    listed = run("buckets", "--json", torn, "_links")
    assert listed.exit_code == 1 and "damage: page 258" in listed.stderr
    assert {tuple(r["path"]) for r in map(json.loads, listed.stdout.splitlines())} == exported
