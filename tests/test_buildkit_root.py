"""Root discovery, `buildkit ls` and `buildkit fsck` on copies of real state directories."""
from __future__ import annotations

import json
import os
import shutil

from click.testing import CliRunner

from boltkit.buildkit.fsck import fsck_root
from boltkit.buildkit.root import discover
from boltkit.cli import main
from testdata import damage

from .conftest import CORPUS, corpus_files

SNAP = CORPUS / "daemon1-overlayfs" / "01-after-30-builds"


def copy_root(tmp_path):
    dst = tmp_path / "buildkit"
    shutil.copytree(SNAP, dst)
    return dst


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_discovery_finds_daemon_and_worker_stores(tmp_path):
    root = discover(copy_root(tmp_path))
    kinds = sorted((s.kind, s.worker) for s in root.stores)
    assert kinds == [("cache.db", None), ("containerdmeta.db", "runc-overlayfs"), ("history.db", None),
                     ("metadata_v2.db", "runc-overlayfs"), ("snapshots", "runc-overlayfs")]
    assert [w.worker_id for w in root.workers] == [(SNAP / "runc-overlayfs" / "workerid").read_text()]


def test_ls_lists_every_store(tmp_path):
    r = run("buildkit", "ls", "--json", copy_root(tmp_path))
    recs = [json.loads(x) for x in r.output.splitlines()]
    assert r.exit_code == 0 and len(recs) == 5
    cache = next(x for x in recs if x["kind"] == "cache.db")
    assert (cache["size"], cache["used"], cache["txid"]) == (524288, 83 * 4096, 439)


def test_ls_tells_safeopen_resets_from_repair_backups(tmp_path):
    """An operator cleaning up needs to know which .bak files are the stores buildkitd discarded and which are the
    originals a boltkit repair kept: they are told apart by name."""
    root = copy_root(tmp_path)
    shutil.copyfile(root / "cache.db", root / "cache.db.a1b2c3d4e5f6g7h8i9j0k1l2m.bak")        # SafeOpen's
    shutil.copyfile(root / "cache.db", root / "cache.db.boltkit-20261202T031500Z.bak")          # a repair's
    shutil.copyfile(root / "history.db", root / "history.db.bak")                               # the user's
    found = discover(root)
    assert [p.name for p in found.backups] == ["cache.db.a1b2c3d4e5f6g7h8i9j0k1l2m.bak"]
    assert [p.name for p in found.boltkit_backups] == ["cache.db.boltkit-20261202T031500Z.bak"]
    assert [p.name for p in found.other_backups] == ["history.db.bak"]
    out = run("buildkit", "ls", root).output
    assert ("1 .bak file(s) left by buildkitd's SafeOpen resets (the stores it discarded): "
            "cache.db.a1b2c3d4e5f6g7h8i9j0k1l2m.bak") in out
    assert "1 .bak file(s) kept by boltkit repairs (the originals they replaced): cache.db.boltkit-" in out
    assert "1 .bak file(s) of other origin: history.db.bak" in out


def test_fsck_clean_root_predicts_the_release_of_results_without_records(tmp_path):
    r = run("buildkit", "fsck", copy_root(tmp_path))
    assert r.exit_code == 0, r.output
    assert r.output.count("X2 info") == 20      # listing capped by --max-errors, counts are not
    final = json.loads(run("buildkit", "fsck", "--json", copy_root(tmp_path / "again")).output.splitlines()[-1])
    released = [k for k in final["by_kind"] if k["what"] == "result" and k["why"] == "result-unloadable"]
    assert final["type"] == "prediction" and final["outcome"] == "starts" and final["exit"] == 0
    assert released == [{"store": "cache.db", "what": "result", "why": "result-unloadable", "count": 87}]


def test_fsck_freelist_damage_predicts_a_safeopen_reset(tmp_path):
    root = copy_root(tmp_path)
    damage.zero_page(root / "cache.db", 17)     # the freelist page of the current meta
    r = run("buildkit", "fsck", "--json", root)
    # fsck(8)'s bits ORed: SafeOpen would empty the store, everything in it lost (8), and its freelist damage is an
    # error-level problem left (4): 12, not the larger of the two
    assert r.exit_code == 12
    final = json.loads(r.output.splitlines()[-1])
    assert (final["outcome"], final["resets"], final["exit"]) == ("resets", ["cache.db"], 12)


def test_fsck_exit_bits_say_unreadable_and_problems_apart(tmp_path):
    """A store that is not bbolt at all is the 8 bit alone (its one problem says it cannot be read: the same fact);
    problems in a store that can be read add the 4 bit to it."""
    root = copy_root(tmp_path)
    (root / "history.db").write_bytes(b"not a bolt file" * 300)
    assert run("buildkit", "fsck", root).exit_code == 8
    damage.zero_page(root / "cache.db", 17)
    assert run("buildkit", "fsck", root).exit_code == 12


def test_fsck_tree_damage_in_metadata_predicts_no_start(tmp_path):
    root = copy_root(tmp_path)
    md = root / "runc-overlayfs" / "metadata_v2.db"
    damage.damage_meta(md, 0)
    damage.damage_meta(md, 1)
    r = run("buildkit", "fsck", "--json", root)
    assert r.exit_code == 12        # it will not start (8), and the store's damage is left (4)
    final = json.loads(r.output.splitlines()[-1])
    assert (final["outcome"], final["daemon_exit"], final["store"]) == ("refuses", 1, "runc-overlayfs/metadata_v2.db")


def test_fsck_parallel_gives_the_same_answer(tmp_path):
    root = copy_root(tmp_path)
    a, b = fsck_root(str(root), jobs=1), fsck_root(str(root), jobs=2)
    assert {k: v.counts() for k, v in a.reports.items()} == {k: v.counts() for k, v in b.reports.items()}
    assert (a.plan.outcome, a.plan.changes) == (b.plan.outcome, b.plan.changes)


def test_fsck_parallel_carries_cache_problems_between_processes():
    """The cache.db check's problems are built lazily from the file's mapping; sent back from a worker
    process they must arrive whole (the prune-all snapshot has ghosts and dead chains)."""
    root = [p for p in corpus_files("sound") if "08-after-403" in str(p) and p.name == "cache.db"][0].parent
    a, b = fsck_root(str(root), jobs=1), fsck_root(str(root), jobs=2)
    cache = str(root / "cache.db")
    assert b.reports[cache].counts() == a.reports[cache].counts() == {"C12": 6, "D2": 2}
    assert [p.line() for p in b.reports[cache].problems] == [p.line() for p in a.reports[cache].problems]
    r = run("buildkit", "fsck", "--jobs", "2", root)
    assert r.exit_code == 0 and "D2" in r.output        # warnings BuildKit lives with never fail fsck
    assert run("buildkit", "fsck", "--strict", root).exit_code == 4


def test_fsck_not_a_root(tmp_path):
    r = run("buildkit", "fsck", tmp_path)
    assert r.exit_code == 8 and "no BuildKit stores found" in r.output
    assert run("buildkit", "ls", tmp_path / "nope").exit_code == 8


def test_fsck_results_of_an_unknown_worker_are_released(tmp_path):
    """X1: a changed workerid (another worker directory, a switched snapshotter) orphans every result."""
    root = copy_root(tmp_path)
    wid = root / "runc-overlayfs" / "workerid"
    os.chmod(wid, 0o644)
    wid.write_text("zzzzzzzzzzzzzzzzzzzzzzzzz")
    recs = [json.loads(x) for x in run("buildkit", "fsck", "--json", "--max-errors", "1000", root).output.splitlines()]
    x1 = [r for r in recs if r.get("code") == "X1"]
    assert len(x1) == 193 and not [r for r in recs if r.get("code") == "X2"]
    assert [k["count"] for k in recs[-1]["by_kind"] if k["what"] == "result"] == [193]


def test_fsck_says_when_its_checks_of_a_damaged_metadata_store_read_past_damage(tmp_path):
    """A torn metadata_v2.db under fsck: the BuildKit checks read what they can, and the store's report says that
    they read past damage (B051, located at the first part skipped, each part in its details) instead of judging
    the records left as if the store were whole (the damage the walk met used to be thrown away)."""
    from boltkit.buildkit.fsck import check_store
    from boltkit.buildkit.metadata import load_metadata_store
    from boltkit.storage import Database
    torn = [p for p in corpus_files("torn") if p.name == "daemon1-overlayfs-metadata_v2-slowcopy-during-build-308.db"]
    root = copy_root(tmp_path)
    shutil.copyfile(torn[0], root / "runc-overlayfs" / "metadata_v2.db")
    met: list = []
    with Database(torn[0]) as db:
        load_metadata_store(db, on_damage=met.append)
    assert met
    r = run("buildkit", "fsck", "--json", "--max-errors", "100000", root)
    assert r.exit_code & 8          # buildkitd will not start on it
    b051 = [x for x in map(json.loads, r.output.splitlines()) if x.get("code") == "B051"]
    assert len(b051) == 1 and b051[0]["file"].endswith("runc-overlayfs/metadata_v2.db")
    assert (b051[0]["page"], b051[0]["offset"]) == (met[0].pgid, met[0].offset)
    assert len(b051[0]["details"]["damage"]) == len(met)
    # a whole store gets none
    assert "B051" not in check_store(str(SNAP / "runc-overlayfs" / "metadata_v2.db")).counts()
