"""The one repair primitive (repair/replace.py) as users meet it: unique temp and backup names, stale temps of a
killed run cleared, owner/mode kept, symlinked stores repaired at their target, the report written by the library,
locks found up to the BuildKit root, a whole root refused before any write, held sources refused unless
--snapshot."""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from boltkit.check import check_file
from boltkit.cli import main
from boltkit.repair import replace as rp
from boltkit.repair.salvage import salvage_in_place

from .conftest import corpus_files
from .test_buildkit_prune import planted_store

TORN = next(p for p in corpus_files("torn") if "cache-cp-during-build-73" in p.name)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def torn_copy(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(TORN.read_bytes())
    return path


def leftovers(d):
    return sorted(p.name for p in d.iterdir() if ".boltkit-new" in p.name)


def hold(path, mode=fcntl.LOCK_EX):
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, mode)
    return fd


def test_two_repairs_in_one_utc_second_get_two_backups(tmp_path, monkeypatch):
    path = planted_store(tmp_path)
    frozen = datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return frozen
    monkeypatch.setattr(rp.datetime, "datetime", Frozen)
    assert run("buildkit", "prune", "--apply", path).exit_code == 0
    path.write_bytes((tmp_path / "cache.db.boltkit-20261201T120000Z.bak").read_bytes())   # damage it again
    r = run("buildkit", "prune", "--apply", path)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.glob("*.bak")) == ["cache.db.boltkit-20261201T120000Z-2.bak",
                                                               "cache.db.boltkit-20261201T120000Z.bak"]
    assert sorted(p.name for p in tmp_path.glob("*.report.json")) == [
        "cache.db.boltkit-20261201T120000Z-2.report.json", "cache.db.boltkit-20261201T120000Z.report.json"]


def test_stale_temps_of_a_killed_run_are_cleared_and_a_live_runs_are_not(tmp_path):
    path = torn_copy(tmp_path / "cache.db")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        for name in ("cache.db.boltkit-new", f"cache.db.boltkit-new-{dead.pid}-0badc0de",
                     f"cache.db.boltkit-new-{sleeper.pid}-0123abcd"):
            (tmp_path / name).write_bytes(b"half written")
        r = run("salvage", "--in-place", path)
        assert r.exit_code == 0, r.output
        assert leftovers(tmp_path) == [f"cache.db.boltkit-new-{sleeper.pid}-0123abcd"]
    finally:
        sleeper.kill()
        sleeper.wait()
    assert check_file(str(path)).clean


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another owner needs root")
def test_owner_group_and_mode_survive_an_in_place_repair(tmp_path):
    path = planted_store(tmp_path)
    os.chown(path, 1234, 2345)
    os.chmod(path, 0o640)
    assert run("buildkit", "prune", "--apply", path).exit_code == 0
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 2345, 0o640)
    torn = torn_copy(tmp_path / "s" / "cache.db")
    os.chown(torn, 1234, 2345)
    os.chmod(torn, 0o600)
    assert run("salvage", "--in-place", torn).exit_code == 0
    st = os.stat(torn)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 2345, 0o600)


def test_a_symlinked_store_is_repaired_at_its_target(tmp_path):
    target = torn_copy(tmp_path / "real" / "cache.db")
    link = tmp_path / "root" / "cache.db"
    link.parent.mkdir()
    link.symlink_to(target)
    r = run("salvage", "--in-place", link)
    assert r.exit_code == 0, r.output
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert check_file(str(target)).clean
    backup = next((tmp_path / "real").glob("cache.db.boltkit-*.bak"))
    assert not backup.is_symlink() and backup.read_bytes() == TORN.read_bytes()
    report = json.loads(next((tmp_path / "real").glob("cache.db.boltkit-*.report.json")).read_text())
    assert report["store"] == str(link) and report["target"] == str(target) and report["backup"] == str(backup)
    assert sorted(p.name for p in link.parent.iterdir()) == ["cache.db"]


def test_a_library_caller_gets_the_report(tmp_path):
    from boltkit.buildkit.prune import apply_prune, plan_file
    path = torn_copy(tmp_path / "a" / "cache.db")
    result, done = salvage_in_place(str(path))
    assert done is not None and json.loads(open(done.report).read())["backup"] == done.backup
    assert result.report_path == done.report
    pruned = planted_store(tmp_path)
    plan = plan_file(str(pruned))
    backup = apply_prune(plan)
    rec = json.loads(open(rp.report_beside(backup)).read())
    assert rec["backup"] == backup and len(rec["changes"]) == len(plan.changes) > 0
    out = tmp_path / "out.db"
    from boltkit.repair import salvage
    salvage(str(TORN), str(out))
    assert json.loads((tmp_path / "out.db.report.json").read_text())["dst"] == str(out)


def test_a_worker_store_honours_its_roots_buildkitd_lock(tmp_path):
    root = tmp_path / "buildkit"
    store = torn_copy(root / "runc-overlayfs" / "metadata_v2.db")
    (root / "buildkitd.lock").write_text("")
    fd = hold(root / "buildkitd.lock")
    try:
        r = run("salvage", "--in-place", store)
    finally:
        os.close(fd)
    assert r.exit_code == 8 and "buildkitd.lock is locked by another process" in r.output
    assert store.read_bytes() == TORN.read_bytes() and sorted(os.listdir(store.parent)) == ["metadata_v2.db"]
    assert run("salvage", "--in-place", store).exit_code == 0


def test_a_fifo_lock_refuses_without_hanging(tmp_path):
    root = tmp_path / "buildkit"
    store = torn_copy(root / "metadata_v2.db")
    os.mkfifo(root / "buildkitd.lock")
    r = run("salvage", "--in-place", store)
    assert r.exit_code == 8 and "not a regular file" in r.output
    assert store.read_bytes() == TORN.read_bytes()


def test_a_whole_root_is_refused_before_any_store_is_written(tmp_path):
    from testdata.buildkit import OTHER, clean_metadata_tree, env, write_store
    root = tmp_path / "buildkit"
    worker = root / "runc-overlayfs"
    worker.mkdir(parents=True)
    (worker / "workerid").write_text("x03o8ykcb5gi9f4j2ygkwwsgx")
    t = clean_metadata_tree()
    t[b"_main"].children[OTHER.encode()].children[b"cache.deleted"] = env(True)
    t[b"_index"].children[b"cache-dir:nocolons"] = b""     # what only --prune drops (M10)
    write_store(worker / "metadata_v2.db", t)
    planted_store(root)
    r = run("buildkit", "repair", "--json", root)
    planned = {json.loads(x)["store"] for x in r.output.splitlines()[:-1]} & {"runc-overlayfs/metadata_v2.db",
                                                                               "cache.db"}
    assert len(planned) == 2, r.output
    before = {p: p.read_bytes() for p in root.rglob("*.db")}
    from boltkit.buildkit.repair import apply_root, plan_root
    from boltkit.buildkit.root import discover
    from boltkit.errors import InUse
    tidy = plan_root(discover(root))                # the prune/rehome plan (`--prune`, fsck --repair)
    assert {os.path.relpath(p, root) for p, _ in tidy.changes} == {"runc-overlayfs/metadata_v2.db", "cache.db"}
    fd = hold(root / "cache.db")                # cache.db held, metadata_v2.db free
    try:
        r = run("buildkit", "repair", "--apply", root)
        with pytest.raises(InUse, match="cache.db is locked"):
            apply_root(tidy)
    finally:
        os.close(fd)
    assert r.exit_code == 8 and "cache.db is locked" in r.output
    assert {p: p.read_bytes() for p in root.rglob("*.db")} == before
    assert not list(root.rglob("*.bak")) and not list(root.rglob("*.boltkit-new*"))
    r = run("buildkit", "repair", "--apply", "--json", root)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.splitlines()[-1])
    changed = {os.path.relpath(json.loads(open(p).read())["store"], root) for p in summary["reports"]}
    assert changed == planned and len(summary["backups"]) == len(planned)


@pytest.mark.parametrize("args", [["compact", "{src}", "-o", "{out}"], ["salvage", "{src}", "-o", "{out}"],
                                  ["surgery", "freelist", "rebuild", "{src}", "-o", "{out}"]])
def test_a_source_held_by_a_writer_is_refused_unless_snapshot(tmp_path, args):
    src = tmp_path / "src.db"
    shutil.copyfile(next(p for p in corpus_files("sound") if p.name == "cache.db"), src)
    fd = hold(src)
    try:
        fill = [a.format(src=src, out=tmp_path / "out.db") for a in args]
        r = run(*fill)
        assert r.exit_code == 8 and "--snapshot" in r.output and not (tmp_path / "out.db").exists()
        r = run(*fill, "--snapshot")
        assert r.exit_code == 0, r.output
    finally:
        os.close(fd)
    assert check_file(str(tmp_path / "out.db")).clean
    assert not [p for p in os.listdir(os.environ.get("TMPDIR", "/tmp")) if p.startswith("boltkit-snapshot-")
                and os.stat(os.path.join(os.environ.get("TMPDIR", "/tmp"), p)).st_mtime > os.stat(src).st_mtime]


def test_a_report_streams_its_lists_an_item_per_line(tmp_path):
    """A prune's report lists 300k changes: they are written as a generator yields them, one per line (grep and
    jq -c see one change a line), and the file is the JSON the fields stand for, whatever their Python types."""
    class Row:
        def as_dict(self):
            return {"key": b"\xff\x00id"}
    made = []

    def changes():
        for i in range(3):
            made.append(i)
            yield {"code": "D2", "key": b"k%d" % i, "path": (b"_links", b"x")}
    record = {"operation": "buildkit prune", "changes": changes(), "empty": [], "row": Row(), "nested": {"a": [1]},
              "codes": ("D2", "D4"), "count": 3}
    path = rp.write_report(str(tmp_path / "r.json"), record)
    text = open(path).read()
    assert json.loads(text) == {"operation": "buildkit prune", "changes": [
        {"code": "D2", "key": f"k{i}", "path": ["_links", "x"]} for i in range(3)], "empty": [],
        "row": {"key": "\\xff\x00id"}, "nested": {"a": [1]}, "codes": ["D2", "D4"], "count": 3}
    assert made == [0, 1, 2]
    lines = text.splitlines()
    assert [json.loads(line.rstrip(",")) for line in lines if line.startswith('  {"code"')] == \
        json.loads(text)["changes"]
