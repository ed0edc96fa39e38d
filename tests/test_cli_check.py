"""`boltkit check` through the CLI: fsck exit codes, one line per problem, JSON, caps."""
from __future__ import annotations

import json

from click.testing import CliRunner

from boltkit.cli import main
from testdata import damage

from .conftest import CORPUS

TORN = CORPUS / "torn-copies"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_clean_file_prints_ok_and_exits_0(example_db):
    r = run("check", example_db)
    assert r.exit_code == 0
    assert r.output == f"{example_db}: OK (83 pages, 720 buckets (710 inline), 1586 keys, meta 1, txid 439)\n"


def test_problems_exit_4_with_one_line_each_and_a_summary():
    path = TORN / "daemon4-cache-cp-during-build-73.db"
    r = run("check", path)
    assert r.exit_code == 4
    lines = r.output.splitlines()
    assert lines[0] == f"{path}: B040 error: page 2: unreachable unfreed"
    assert lines[-1] == f"{path}: 53 error(s), 0 warning(s) [B040 x53, B050 x1]"
    assert f"{path}: B050 info: reading through meta 0 (txid 866) would still have 0 error(s)" not in r.output


def test_max_errors_caps_the_listing_not_the_counts():
    path = TORN / "daemon1-cache-slowcopy-during-build-376.db"
    r = run("check", "--max-errors", "2", path)
    lines = r.output.splitlines()
    assert len(lines) == 4
    assert lines[2] == f"{path}: ... 216 more problem(s) not listed (--max-errors 2)"
    assert "217 error(s), 0 warning(s)" in lines[3]    # 188 unreachable unfreed: bbolt counts them as errors


def test_json_records_then_summary():
    path = TORN / "daemon1-overlayfs-metadata_v2-slowcopy-during-build-308.db"
    r = run("check", "--json", path)
    assert r.exit_code == 4
    recs = [json.loads(line) for line in r.output.splitlines()]
    summary = recs[-1]
    problems = recs[:-1]
    assert summary["type"] == "summary" and not summary["clean"]
    assert summary["problems"]["error"] == sum(p["severity"] == "error" for p in problems) > 20
    assert {"code", "severity", "page", "offset", "path", "key", "message", "details"} <= set(problems[0])
    assert any(p["code"] == "B021" and p["page"] == 8 and "516" in p["message"] for p in problems)


def test_revert_candidate_is_named(tmp_path, example_db):
    db = damage.copy(example_db, tmp_path / "c.db")
    damage.zero_page(db, 45)     # the _links root page of the current tree (meta 1)
    r = run("check", "--json", db)
    summary = json.loads(r.output.splitlines()[-1])
    assert summary["revert"]["meta"] == 0
    assert any(json.loads(line).get("code") == "B021" for line in r.output.splitlines()[:-1])


def test_forced_meta_checks_that_tree(example_db):
    r = run("check", "--meta", "0", example_db)
    assert r.exit_code == 0 and "meta 0, txid 438" in r.output


def test_unreadable_exits_8(tmp_path, example_db):
    both = damage.copy(example_db, tmp_path / "both.db")
    damage.zero_page(both, 1)
    damage.zero_page(both, 0)
    damage.truncate(both, 2 * 4096 + 100)     # nothing left that identifies itself
    r = run("check", both)
    assert r.exit_code == 8
    assert "cannot be read" in r.output and "B001" in r.output
    assert run("check", tmp_path / "nope.db").exit_code == 8


def test_statuses_across_files_combine_as_bits_like_fsck(tmp_path, example_db):
    """fsck(8) ORs its codes: problems in one file (4) and another unreadable (8) exit 12, so a script learns
    both; each alone keeps its own code."""
    torn = TORN / "daemon4-cache-cp-during-build-73.db"
    assert run("check", example_db, torn, tmp_path / "nope.db").exit_code == 12
    assert run("check", example_db, torn).exit_code == 4
    assert run("check", example_db, tmp_path / "nope.db").exit_code == 8


def test_usage_error_exits_16():
    assert run("check").exit_code == 16
    assert run("check", "--max-errors", "x", "f").exit_code == 16


def test_quick_skips_element_checks():
    path = TORN / "daemon4-cache-cp-during-build-136.db"
    full = json.loads(run("check", "--json", path).output.splitlines()[-1])
    quick = json.loads(run("check", "--json", "--quick", path).output.splitlines()[-1])
    assert "B033" in full["codes"] and "B033" not in quick["codes"]
    assert quick["codes"]["B025"] == full["codes"]["B025"]


def test_map_draws_every_page_with_damage_in_red(tmp_path):
    import xml.etree.ElementTree as ET
    path = TORN / "daemon4-cache-cp-during-build-136.db"
    svg = tmp_path / "map.svg"
    r = run("check", "--map", svg, path)
    assert r.exit_code == 4
    root = ET.parse(svg).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    cells = [(g.find(ns + "title").text, g.find(ns + "rect")) for g in root.iter(ns + "g")
             if g.find(ns + "title") is not None]
    used = [(t, r) for t, r in cells if "past the high-water mark" not in t]
    assert len(used) == 266                      # one per page below the high-water mark
    assert len(cells) == path.stat().st_size // 4096        # and the rest of the file after them
    red = {t.split(":")[0] for t, r in used if r.get("fill") == "#e31a1c"}
    assert "page 225" in red and "page 122" in red    # the B033 and cycle pages of the MANIFEST
    assert run("check", "--map", svg, path, path).exit_code == 16


def test_absurd_high_water_mark_is_reported_not_allocated(tmp_path, example_db):
    """A checksum-valid meta claiming 2**40 pages: reported (B002), and even read through with --meta, nothing
    sized by that claim is allocated."""
    db = damage.copy(example_db, tmp_path / "c.db")
    damage.set_meta_field(db, 1, "pgid", 2 ** 40)
    r = run("check", db)     # bbolt reads meta 1 (its tree is in the file): so do we, with the claim reported
    assert r.exit_code == 4 and "B006" in r.output and "B004" not in r.output
    r = run("check", "--meta", "1", db)
    assert r.exit_code == 4 and r.exception is None or isinstance(r.exception, SystemExit)
    assert "B006" in r.output
    assert run("pages", "--meta", "1", "--json", db).exit_code == 0
    assert run("export", "--count", "--meta", "1", db).exit_code == 0


def test_what_bbolt_calls_errors_are_errors(oracle, oracle_files, tmp_path):
    """etcd's corrupted-snapshot fixture, rebuilt: a freelist id overwritten by its neighbour, so one page is
    listed twice and another is neither reachable nor free. bbolt: "page A: already freed", "page B:
    unreachable unfreed", "2 errors found"; boltkit must count the same two errors."""
    import shutil
    import struct

    from boltkit.storage import Database
    path = tmp_path / "snapshot.db"
    shutil.copy(oracle_files("deletes", 3), path)
    with Database(str(path)) as db:
        fl, ps = db.freelist(), db.page_size
        first, second = int(fl.ids[0]), int(fl.ids[1])
    assert len(fl.ids) < 0xFFFF
    damage.write_at(path, fl.pgid * ps + 16 + 8, struct.pack("<Q", first))
    status, said = oracle.check(path)
    assert f"page {first}: already freed" in said and f"page {second}: unreachable unfreed" in said
    assert "2 errors found" in said
    r = run("check", "--json", path)
    recs = [json.loads(x) for x in r.output.splitlines()]
    errors = {(p["code"], p["page"]) for p in recs if p["type"] == "problem" and p["severity"] == "error"}
    assert errors == {("B011", first), ("B040", second)}
    assert recs[-1]["problems"]["error"] == 2 and r.exit_code == 4
