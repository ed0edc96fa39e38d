"""Surgery: every edit yields a file boltkit and real bbolt accept (and bbolt can keep writing to), the
source is never touched, and edits that would break the file are refused with the reason."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from boltkit.check import check_file
from boltkit.cli import main
from boltkit.storage import Database
from testdata import damage

from .conftest import CORPUS


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def keys_of(path):
    with Database(path) as db:
        return {(p.path, it.key) for p, c, it in db.tree.walk(db.root()) if c is None}


@pytest.mark.parametrize("args", [["revert-meta"], ["freelist", "abandon"], ["freelist", "rebuild"],
                                  ["drop-element", "--page", "52", "--index", "1"],
                                  ["clear-page", "--page", "52"]])
def test_edit_gives_a_file_bbolt_accepts_and_keeps_using(tmp_path, oracle, example_db, args):
    src = damage.copy(example_db, tmp_path / "src.db")
    before = src.read_bytes()
    if args == ["freelist", "rebuild"]:       # rebuilding is for files without a stored freelist
        assert run("surgery", "freelist", "abandon", src, "-o", tmp_path / "nofl.db").exit_code == 0
        src = tmp_path / "nofl.db"
        before = src.read_bytes()
    out = tmp_path / "out.db"
    cmd = ["surgery", *args[:2], src, "-o", out, *args[2:]] if args[0] == "freelist" else \
        ["surgery", args[0], src, "-o", out, *args[1:]]
    r = run(*cmd)
    assert r.exit_code == 0, r.output
    assert src.read_bytes() == before
    assert json.loads((tmp_path / "out.db.report.json").read_text())["result"] == r.output.strip()
    assert check_file(out).clean and oracle.check(out)[0] == 0
    assert oracle.run("mutate", "-seed", 3, out, check=False).returncode == 0


def test_drop_element_removes_exactly_that_bucket(tmp_path, example_db):
    out = tmp_path / "out.db"
    assert run("surgery", "drop-element", example_db, "-o", out, "--page", "52", "--index", "1").exit_code == 0
    gone = keys_of(example_db) - keys_of(out)
    assert gone and all(p[0] == b"_byresult" for p, _ in gone)
    assert keys_of(out) == {k for k in keys_of(example_db) if k[0][:1] != (b"_byresult",)}


def test_revert_meta_brings_back_the_previous_transaction(tmp_path, example_db):
    out = tmp_path / "out.db"
    assert run("surgery", "revert-meta", example_db, "-o", out).exit_code == 0
    with Database(out) as db:
        assert db.meta.txid == 438 and db.meta.root == 24


def test_refusals(tmp_path, example_db):
    r = run("surgery", "clear-page", example_db, "-o", tmp_path / "a.db", "--page", "9")
    assert r.exit_code == 8 and "is a branch" in r.output and not (tmp_path / "a.db").exists()
    r = run("surgery", "drop-element", example_db, "-o", tmp_path / "b.db", "--page", "52", "--index", "9")
    assert r.exit_code == 8 and "no element 9" in r.output
    broken = damage.copy(example_db, tmp_path / "broken.db")
    damage.zero_page(broken, 24)        # the root of the older tree: reverting to it would break the file
    r = run("surgery", "revert-meta", broken, "-o", tmp_path / "c.db")
    assert r.exit_code == 8 and "would leave a broken file" in r.output and not (tmp_path / "c.db").exists()
    r = run("surgery", "freelist", "abandon", example_db, "-o", example_db)
    assert r.exit_code == 8 and "already exists" in r.output


def test_revert_repairs_the_torn_meta_of_the_corpus(tmp_path, oracle):
    torn = CORPUS / "torn-copies" / "daemon4-overlayfs-metadata_v2-cp-during-build-54.db"
    out = tmp_path / "out.db"
    assert run("surgery", "revert-meta", torn, "-o", out).exit_code == 0
    assert check_file(out).clean and oracle.check(out)[0] == 0
