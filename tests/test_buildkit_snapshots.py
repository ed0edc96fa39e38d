"""M9 and M17: metadata_v2.db records against the snapshots of containerdmeta.db (and the snapshotter's own
snapshots/metadata.db), on copies of a real state directory with exactly one defect planted each time."""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter

import pytest
from click.testing import CliRunner

from boltkit.buildkit.containerd import (KIND_ACTIVE, KIND_COMMITTED, KIND_VIEW, backend_snapshots, snapshots,
                                         snapshotters, worker_snapshotter)
from boltkit.buildkit.fsck import fsck_root
from boltkit.buildkit.metadata import load_metadata_store
from boltkit.check import check_file
from boltkit.cli import main
from boltkit.repair.rewrite import rewrite
from boltkit.storage import Database
from testdata.buildkit import write_store
from testdata.trees import tree_from_file

from .conftest import CORPUS

SNAP = CORPUS / "daemon1-overlayfs" / "01-after-30-builds"
WORKER = "runc-overlayfs"
SNAPSHOTS = (b"v1", b"buildkit", b"snapshots", b"overlayfs")


def make_root(tmp_path):
    root = tmp_path / "buildkit"
    shutil.copytree(SNAP, root)
    for d, _, files in os.walk(root):      # the corpus is read-only; the copies get rewritten
        os.chmod(d, 0o755)
        for f in files:
            os.chmod(os.path.join(d, f), 0o644)
    return root


def records(root):
    with Database(root / WORKER / "metadata_v2.db") as db:
        return load_metadata_store(db).records


def mutable_ids(recs) -> list[bytes]:
    """Uncommitted records that are no merge/diff and not the immutable half of an equalMutable pair."""
    return sorted(rid for rid, r in recs.items()
                  if r.values.get("snapshot.committed") is not True and not r.values.get("cache.equalMutable")
                  and not r.values.get("cache.mergeParents"))


def snapshot_of(rec) -> bytes:
    return rec.ref("cache.snapshot") or rec.id


def drop(path, victim: tuple[bytes, ...]) -> None:
    """Rewrite the bolt file at ``path`` without the entry at ``victim`` (a bucket or a key, with all below it)."""
    tmp = str(path) + ".new"
    assert rewrite(str(path), tmp, lambda p, key, is_bucket: p + (key,) != victim) == 1
    os.replace(tmp, path)


def edit(path, change) -> None:
    """Rewrite the bolt file at ``path`` after ``change(tree)`` modified its logical tree."""
    tree = tree_from_file(path)
    change(tree)
    tmp = str(path) + ".new"
    write_store(tmp, tree)
    os.replace(tmp, path)


def at(tree: dict, path: tuple[bytes, ...]):
    node = tree[path[0]]
    for name in path[1:]:
        node = node.children[name]
    return node


def cross(root) -> list:
    return fsck_root(str(root)).cross


def cli_codes(root) -> tuple[int, list[dict]]:
    r = CliRunner().invoke(main, ["buildkit", "fsck", "--json", "--max-errors", "1000", str(root)])
    recs = [json.loads(x) for x in r.output.splitlines()]
    return r.exit_code, [x for x in recs if x.get("code") in ("M9", "M17")]


# -- the decoders, on the real files ------------------------------------------------------------------------------

def test_decoders_read_the_real_snapshot_stores():
    w = SNAP / WORKER
    with Database(w / "containerdmeta.db") as db:
        assert snapshotters(db) == ["overlayfs"]
        snaps = snapshots(db, "overlayfs")
        assert snapshots(db, "native") == {}
    with Database(w / "snapshots" / "metadata.db") as db:
        rows = backend_snapshots(db)
    assert len(snaps) == len(rows) == 179
    # every containerd snapshot names one backend row, and both stores agree on the parents
    assert {s.name for s in snaps.values()} == set(rows)
    for s in snaps.values():
        assert rows[s.name].parent == (snaps[s.parent].name if s.parent else b"")
        # (containerd's GC deletes a snapshot without its entry in the parent's children/, so some are stale)
        assert all(snaps[c].parent == s.key for c in s.children if c in snaps)
    assert Counter(r.kind for r in rows.values()) == {KIND_COMMITTED: 89, KIND_VIEW: 65, KIND_ACTIVE: 25}
    assert sorted(r.id for r in rows.values()) == sorted(set(r.id for r in rows.values()))   # ids are unique
    # the active ones are exactly the snapshots of the mutable records
    recs = records(SNAP)
    active = {s.key for s in snaps.values() if rows[s.name].kind == KIND_ACTIVE}
    assert active == set(mutable_ids(recs)) and len(active) == 25


def test_worker_snapshotter_names():
    assert worker_snapshotter("runc-overlayfs") == "overlayfs"
    assert worker_snapshotter("runc-fuse-overlayfs") == "fuse-overlayfs"
    assert worker_snapshotter("containerd-native") == "native"
    assert worker_snapshotter("buildkit") is None and worker_snapshotter("runc-") is None


# -- the clean root -----------------------------------------------------------------------------------------------

def test_clean_root_reports_neither(tmp_path):
    """25 mutable records with their active snapshots, 73 layer records whose snapshot exists (all with the right
    parent), and 25 equalMutable records (12 of them layers) whose snapshot does not exist yet: no M9, no M17."""
    root = make_root(tmp_path)
    assert not [p for p in cross(root) if p.code in ("M9", "M17")]
    status, found = cli_codes(root)
    assert status == 0 and found == []


# -- M9 -----------------------------------------------------------------------------------------------------------

def test_m9_mutable_record_whose_snapshot_is_gone_from_containerdmeta(tmp_path):
    root = make_root(tmp_path)
    victim = mutable_ids(records(root))[0]
    drop(root / WORKER / "containerdmeta.db", SNAPSHOTS + (victim,))
    assert check_file(root / WORKER / "containerdmeta.db").clean
    found = [p for p in cross(root) if p.code in ("M9", "M17")]
    assert [(p.code, p.key) for p in found] == [("M9", victim)]
    assert found[0].severity.value == "warning" and "removes the record" in found[0].message
    assert found[0].file.endswith("metadata_v2.db") and found[0].details["snapshotter"] == "overlayfs"
    status, cli = cli_codes(root)
    assert status == 4 and [(x["code"], x["key"]) for x in cli] == [("M9", victim.decode())]


def test_m9_backend_row_missing_from_the_snapshotter(tmp_path):
    """containerd's Stat reads the backend row too: without it the record goes just the same."""
    root = make_root(tmp_path)
    victim = mutable_ids(records(root))[-1]
    with Database(root / WORKER / "containerdmeta.db") as db:
        name = snapshots(db, "overlayfs")[victim].name
    drop(root / WORKER / "snapshots" / "metadata.db", (b"v1", b"snapshots", name))
    found = [p for p in cross(root) if p.code in ("M9", "M17")]
    assert [(p.code, p.key) for p in found] == [("M9", victim)]
    assert name.decode() in found[0].message and found[0].details["backend"] == name.decode()
    assert [(x["code"], x["key"]) for x in cli_codes(root)[1]] == [("M9", victim.decode())]


def test_m9_mutable_record_whose_snapshot_is_committed(tmp_path):
    root = make_root(tmp_path)
    victim = mutable_ids(records(root))[1]
    with Database(root / WORKER / "containerdmeta.db") as db:
        name = snapshots(db, "overlayfs")[victim].name
    edit(root / WORKER / "snapshots" / "metadata.db",
         lambda t: at(t, (b"v1", b"snapshots", name)).children.__setitem__(b"kind", bytes([KIND_COMMITTED])))
    found = [p for p in cross(root) if p.code in ("M9", "M17")]
    assert [(p.code, p.key) for p in found] == [("M9", victim)]
    assert "committed, not active" in found[0].message


@pytest.mark.parametrize("kind", ["cache.mergeParents", "cache.equalMutable"])
def test_m9_leaves_merges_and_equal_mutable_records_without_committed_alone(tmp_path, kind):
    """BuildKit forces merges and diffs immutable (#2740), and loads a record with `cache.equalMutable` through its
    mutable target: without `snapshot.committed`, such a record whose snapshot does not exist is still no M9."""
    root = make_root(tmp_path)
    recs = records(root)
    rid = sorted(rid for rid, r in recs.items() if r.values.get(kind) and r.values.get("snapshot.committed") is True)[0]
    with Database(root / WORKER / "containerdmeta.db") as db:
        assert snapshot_of(recs[rid]) not in snapshots(db, "overlayfs")
    drop(root / WORKER / "metadata_v2.db", (b"_main", rid, b"snapshot.committed"))
    assert records(root)[rid].values.get("snapshot.committed") is None
    assert not [p for p in cross(root) if p.code in ("M9", "M17")]


def test_m9_every_mutable_record_when_the_snapshotter_bucket_is_gone(tmp_path):
    """containerdmeta.db without the worker's snapshotter bucket (e.g. another snapshotter's database)."""
    root = make_root(tmp_path)
    drop(root / WORKER / "containerdmeta.db", SNAPSHOTS)
    found = [p for p in cross(root) if p.code in ("M9", "M17")]
    assert sorted(p.key for p in found if p.code == "M9") == mutable_ids(records(root))
    assert all(p.code == "M9" for p in found)


# -- M17 ----------------------------------------------------------------------------------------------------------

def layer_with_snapshot(root) -> tuple[bytes, bytes, bytes]:
    """(record, its snapshot, the snapshot of another record that is not its parent) for a committed layer record
    whose parent is itself a layer."""
    recs = records(root)
    with Database(root / WORKER / "containerdmeta.db") as db:
        snaps = snapshots(db, "overlayfs")
    for rid, r in sorted(recs.items()):
        p = r.ref("cache.parent")
        if p and r.values.get("snapshot.committed") is True and snapshot_of(r) in snaps \
                and recs[p].ref("cache.parent"):
            grand = snapshot_of(recs[recs[p].ref("cache.parent")])
            assert snaps[snapshot_of(r)].parent == snapshot_of(recs[p]) != grand
            return rid, snapshot_of(r), grand
    pytest.fail("the corpus root has no layer on a layer")


@pytest.mark.parametrize("wrong", ["grandparent", "none"])
def test_m17_snapshot_parent_is_not_the_parent_records_snapshot(tmp_path, wrong):
    root = make_root(tmp_path)
    rid, sid, grand = layer_with_snapshot(root)
    cm = root / WORKER / "containerdmeta.db"
    if wrong == "grandparent":
        edit(cm, lambda t: at(t, SNAPSHOTS + (sid,)).children.__setitem__(b"parent", grand))
    else:
        drop(cm, SNAPSHOTS + (sid, b"parent"))
    assert check_file(cm).clean
    found = [p for p in cross(root) if p.code in ("M9", "M17")]
    assert [(p.code, p.path[-1], p.key) for p in found] == [("M17", sid, b"parent")]
    p = found[0]
    # details are JSON: the ids as text (these are ASCII)
    assert p.severity.value == "warning" and p.details["record"] == rid.decode() \
        and p.file.endswith("containerdmeta.db")
    assert p.details["snapshot_parent"] == (grand.decode() if wrong == "grandparent" else "")
    status, cli = cli_codes(root)
    assert status == 0 and [(x["code"], x["details"]["record"]) for x in cli] == [("M17", rid.decode())]
