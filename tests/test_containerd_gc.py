"""containerd's metadata GC model (boltkit.buildkit.containerd_gc) against the 27 real starts, the sound corpus
root with containerd stores, and small stores built to exercise the rules the real data does not reach."""
from __future__ import annotations

import copy
import gzip
import json
import shutil
import tempfile
from datetime import datetime, timedelta, timezone
from functools import lru_cache

import pytest

from boltkit.buildkit.containerd_gc import BACKEND_STORE, META_STORE, collect, plain_tree, run
from boltkit.errors import CorruptionError
from boltkit.storage import Database

from .conftest import CORPUS

STARTUP = CORPUS.parent / "startup"
CASES = sorted(p.name for p in STARTUP.glob("[0-9][0-9]-*")) if STARTUP.is_dir() else []
META = "runc-native/containerdmeta.db"
BACKEND = "runc-native/snapshots/metadata.db"
SOUND_ROOT = CORPUS / "daemon1-overlayfs" / "01-after-30-builds" / "runc-overlayfs"
# the start the runs were made at is irrelevant to these stores (no lease or ingest carries an expiry), but pin it
NOW = datetime(2026, 12, 1, 20, 0, tzinfo=timezone.utc)


@lru_cache(maxsize=None)
def _tree(path: str):
    """A store as a plain tree, gunzipping a `.gz` copy first."""
    if not path.endswith(".gz"):
        with Database(path) as db:
            return plain_tree(db)
    with tempfile.NamedTemporaryFile(suffix=".db") as f:
        with gzip.open(path) as g:
            shutil.copyfileobj(g, f)
        f.flush()
        with Database(f.name) as db:
            return plain_tree(db)


def _stores(case: str, side: str = "before"):
    d = STARTUP / case / side
    return copy.deepcopy(_tree(str(d / (META + ".gz")))), copy.deepcopy(_tree(str(d / (BACKEND + ".gz"))))


def _case(case: str) -> dict:
    return json.loads((STARTUP / case / "case.json").read_text())


def _element(s: str) -> bytes:
    return bytes.fromhex(s[4:]) if s.startswith("hex:") else s.encode()


def _removed(info: dict, store: str) -> set[tuple[bytes, ...]]:
    return {tuple(_element(e) for e in p) for p in info["changes"].get(store, {}).get("removed", [])}


def _entries(removal, tree) -> set[tuple[bytes, ...]]:
    """case.json's listing of one removal: the bucket's path and every path inside it."""
    node = tree
    for name in removal.path:
        node = node[name]
    out = {removal.path}
    stack = [(removal.path, node)] if isinstance(node, dict) else []
    while stack:
        path, b = stack.pop()
        for k, v in b.items():
            out.add(path + (k,))
            if isinstance(v, dict):
                stack.append((path + (k,), v))
    return out


def _delete(tree, path) -> None:
    node = tree
    for name in path[:-1]:
        node = node[name]
    del node[path[-1]]


def _check_order(removals) -> None:
    """What containerd's code fixes about the order: the metadata sweep first, in scanAll order (by namespace;
    leases, snapshots, ingests, content, images; keys ascending within each); then each backend row after every
    row below it, its v1/parents entry just before it."""
    meta = [r for r in removals if r.store == META_STORE]
    assert removals[:len(meta)] == meta
    rank = {"lease": 0, "snapshot": 1, "ingest": 2, "content": 3, "image": 4}
    keys = [(r.namespace, rank[r.kind], r.path) for r in meta]
    assert keys == sorted(keys)
    backend = removals[len(meta):]
    for i, r in enumerate(backend):
        if r.kind == "backend-parent-index":
            assert backend[i + 1].kind == "backend-snapshot" and backend[i + 1].name == r.name
            assert r.path[1] == b"parents" and not r.is_bucket


@pytest.mark.parametrize("case", CASES)
def test_real_start(case):
    """Where the daemon started: containerdmeta.db as buildkitd left it before the GC (BEFORE minus the leases
    the start deleted) gives exactly the snapshot, content and backend removals the start made. Where it refused
    or crashed the GC never ran; the stores BEFORE are a fixed point all the same."""
    info = _case(case)
    meta, backend = _stores(case)
    observed_meta = _removed(info, META)
    observed_backend = _removed(info, BACKEND)
    if info["started"]:
        leases = {p for p in observed_meta if len(p) == 4 and p[2] == b"leases"}
        for p in leases:
            _delete(meta, p)
        observed_meta = {p for p in observed_meta if p[:4] not in leases}
    else:
        assert not observed_meta and not observed_backend
    given = copy.deepcopy((meta, backend))
    removals = collect(meta, {"native": backend}, now=NOW)
    assert (meta, backend) == given, "collect modified its input"
    got_meta = set().union(*(_entries(r, meta) for r in removals if r.store == META_STORE))
    got_backend = set().union(*(_entries(r, backend) for r in removals if r.store == BACKEND_STORE))
    assert got_meta == observed_meta
    assert got_backend == observed_backend
    _check_order(removals)
    # the listing convention: a removed bucket once, never anything inside it as well
    paths = [r.path for r in removals]
    assert len(paths) == len(set(paths))
    assert not any(p[:len(q)] == q for p in paths for q in paths if p != q)


@pytest.mark.parametrize("case", [c for c in CASES if not c.startswith("22-")])
def test_before_is_a_fixed_point(case):
    """With every lease in place (BEFORE, before buildkitd deleted any) nothing is collectable: the base state was
    taken after its GC had run. Case 22's plant is itself a deleted lease, so its BEFORE is not."""
    meta, backend = _stores(case)
    assert collect(meta, {"native": backend}, now=NOW) == []


def test_case_23_orphan_backend_row_waits_for_a_dirty_pass():
    """23's start left the backend row of the snapshot deleted from containerdmeta.db, because nothing of the
    native snapshotter was removed in that pass. The next pass that does remove one also collects it."""
    meta, backend = _stores("23-cdmeta-snapshot-deleted", "after")
    assert collect(meta, {"native": backend}, now=NOW) == []
    orphan = b"buildkit/48/vcvrqnrmok4v1vhg8nn99ienq"
    assert orphan in backend[b"v1"][b"snapshots"]
    leaf = next(k for k, s in meta[b"v1"][b"buildkit"][b"snapshots"][b"native"].items()
                if not any(o.get(b"parent") == k for o in meta[b"v1"][b"buildkit"][b"snapshots"][b"native"].values())
                and (b"snapshots" in meta[b"v1"][b"buildkit"][b"leases"].get(k, {})))
    _delete(meta, (b"v1", b"buildkit", b"leases", leaf))
    names = {r.name for r in collect(meta, {"native": backend}, now=NOW) if r.kind == "backend-snapshot"}
    assert orphan in names


def test_sound_corpus_root():
    """daemon1 after 30 builds (overlayfs; real leases, flat leases, content with gc.ref labels, two namespaces) was
    copied after a clean stop, not after a GC: buildkitd only collects after a prune. The pass finds the garbage
    the builds left: `<id>-view` snapshots whose view lease is gone, and the buildkit namespace's copies of
    exported blobs no lease holds. Checked here without the model: nothing removed is held by a lease, is a kept
    snapshot's parent, or is named by a kept object's labels; the state after the pass is a fixed point."""
    meta = _tree(str(SOUND_ROOT / "containerdmeta.db"))
    backend = _tree(str(SOUND_ROOT / "snapshots" / "metadata.db"))
    result = run(meta, {"overlayfs": backend}, now=NOW)
    assert result.problems == ()
    removals = list(result.removals)
    _check_order(removals)
    assert removals, "the copy holds garbage (see docstring)"
    v1 = meta[b"v1"]
    removed = {(r.namespace, r.kind, r.name) for r in removals if r.store == META_STORE}
    for ns, nbkt in v1.items():
        if not isinstance(nbkt, dict):
            continue
        for lease in nbkt.get(b"leases", {}).values():
            for digest in lease.get(b"content", {}):
                assert (ns, "content", digest) not in removed
            for key in lease.get(b"snapshots", {}).get(b"overlayfs", {}):
                assert (ns, "snapshot", key) not in removed
        snaps = nbkt.get(b"snapshots", {}).get(b"overlayfs", {})
        kept = [(k, s) for k, s in snaps.items() if (ns, "snapshot", k) not in removed]
        blobs = nbkt.get(b"content", {}).get(b"blob", {})
        kept += [(k, b) for k, b in blobs.items() if (ns, "content", k) not in removed]
        for _, obj in kept:
            assert (ns, "snapshot", obj.get(b"parent")) not in removed
            for label, value in obj.get(b"labels", {}).items():
                if label.startswith(b"containerd.io/gc.ref.content"):
                    assert (ns, "content", value) not in removed
    for r in removals:
        if r.kind == "snapshot":
            assert r.name.endswith(b"-view") and r.name not in v1[r.namespace][b"leases"]
    assert {r.kind for r in removals} == {"snapshot", "content", "backend-snapshot", "backend-parent-index"}
    # apply and run again: nothing left to collect
    after_meta, after_backend = copy.deepcopy(meta), copy.deepcopy(backend)
    for r in removals:
        _delete(after_meta if r.store == META_STORE else after_backend, r.path)
    named = {s[b"name"] for s in after_meta[b"v1"][b"buildkit"][b"snapshots"][b"overlayfs"].values()}
    assert all(r.name not in named for r in removals if r.kind == "backend-snapshot")
    assert collect(after_meta, {"overlayfs": after_backend}, now=NOW) == []


def test_plain_tree_raises_on_damage():
    path = STARTUP / "21-md-leaf-zeroed" / "before" / "runc-native" / "metadata_v2.db.gz"
    with pytest.raises(CorruptionError):
        _tree(str(path))


# -- small stores for the rules the real runs do not reach ----------------------------------------------


def _tb(t: datetime) -> bytes:
    """time.Time.MarshalBinary (version 1, UTC)."""
    sec = int((t - datetime(1, 1, 1, tzinfo=timezone.utc)).total_seconds())
    return b"\x01" + sec.to_bytes(8, "big") + (t.microsecond * 1000).to_bytes(4, "big") + b"\xff\xff"


def _uv(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


class Root:
    """A containerdmeta.db and one native snapshots/metadata.db, built the way containerd lays them out."""

    def __init__(self):
        self.ns = {}
        self.meta = {b"v1": {b"version": b"\x08", b"buildkit": self.ns}}
        self.rows = {}
        self.parents = {}
        self.backend = {b"v1": {b"snapshots": self.rows, b"parents": self.parents}}
        self.seq = 0

    def snapshot(self, key: str, parent: str = "", labels=None, backend: bool = True):
        snaps = self.ns.setdefault(b"snapshots", {}).setdefault(b"native", {})
        self.seq += 1
        name = f"buildkit/{self.seq}/{key}".encode()
        s = {b"createdat": _tb(NOW), b"updatedat": _tb(NOW), b"name": name}
        if parent:
            s[b"parent"] = parent.encode()
            snaps[parent.encode()].setdefault(b"children", {})[key.encode()] = b""
        if labels:
            s[b"labels"] = {k.encode(): v.encode() for k, v in labels.items()}
        snaps[key.encode()] = s
        if backend:
            self.row(name, self.seq, snaps[parent.encode()][b"name"] if parent else b"")
        return name

    def row(self, name: bytes, rid: int, parent: bytes = b""):
        r = {b"id": _uv(rid), b"kind": b"\x03", b"createdat": _tb(NOW), b"updatedat": _tb(NOW)}
        if parent:
            r[b"parent"] = parent
            self.parents[_uv(_rid(self.rows[parent])) + b"\x00" + _uv(rid)] = name
        self.rows[name] = r

    def blob(self, digest: str, labels=None):
        b = {b"size": b"\x02"}
        if labels:
            b[b"labels"] = {k.encode(): v.encode() for k, v in labels.items()}
        self.ns.setdefault(b"content", {}).setdefault(b"blob", {})[digest.encode()] = b

    def lease(self, lid: str, snapshots=(), content=(), labels=None, flat: bool = True):
        lab = {b"containerd.io/gc.flat": b"2026-12-01T19:00:00Z"} if flat else {}
        lab.update({k.encode(): v.encode() for k, v in (labels or {}).items()})
        lease = {b"createdat": _tb(NOW), b"labels": lab}
        if snapshots:
            lease[b"snapshots"] = {b"native": {s.encode(): b"" for s in snapshots}}
        if content:
            lease[b"content"] = {c.encode(): b"" for c in content}
        self.ns.setdefault(b"leases", {})[lid.encode()] = lease

    def removed(self, now=NOW):
        return [(r.kind, r.name) for r in collect(self.meta, {"native": self.backend}, now=now)]


def _rid(row) -> int:
    n = shift = 0
    for b in row[b"id"]:
        n |= (b & 0x7F) << shift
        shift += 7
    return n


def test_unleased_chain_goes_child_first_in_both_stores():
    r = Root()
    a = r.snapshot("a")
    b = r.snapshot("b", "a")
    c = r.snapshot("c", "b")
    r.snapshot("keep", "a")
    r.lease("keep", snapshots=["keep"])
    assert r.removed() == [("snapshot", b"b"), ("snapshot", b"c"),
                           ("backend-parent-index", c), ("backend-snapshot", c),
                           ("backend-parent-index", b), ("backend-snapshot", b)]
    assert a in r.rows   # untouched: the kept snapshot's parent


def test_backend_row_with_a_child_row_stays():
    """A row containerd's metadata no longer names, whose child row it still names, fails with FailedPrecondition
    and stays; the pass goes on."""
    r = Root()
    r.snapshot("base")
    r.snapshot("top", "base")
    r.snapshot("gone")
    r.lease("top", snapshots=["top"])
    del r.ns[b"snapshots"][b"native"][b"base"]      # metadata lost the parent; the backend still has it
    result = run(r.meta, {"native": r.backend}, now=NOW)
    assert [(x.kind, x.name) for x in result.removals] == [("snapshot", b"gone"),
                                                          ("backend-snapshot", b"buildkit/3/gone")]
    assert [(p.code, p.fatal) for p in result.problems] == [("has-children", False)]


def test_backend_untouched_unless_the_snapshotter_lost_a_snapshot():
    """An orphan row (case 23) stays while no metadata snapshot of its snapshotter is removed; another
    snapshotter's removal does not make it dirty."""
    r = Root()
    r.snapshot("a")
    r.lease("a", snapshots=["a"])
    r.row(b"buildkit/9/orphan", 9)
    assert r.removed() == []
    r.ns[b"snapshots"][b"other"] = {b"x": {b"name": b"buildkit/1/x"}}
    assert [(x.kind, x.snapshotter) for x in collect(r.meta, {"native": r.backend}, now=NOW)] == \
        [("snapshot", "other")]
    del r.ns[b"snapshots"][b"other"]
    r.snapshot("b")
    # rows in walk (key) order: buildkit/2/b before buildkit/9/orphan, both without a parent
    assert r.removed() == [("snapshot", b"b"), ("backend-snapshot", b"buildkit/2/b"),
                           ("backend-snapshot", b"buildkit/9/orphan")]


def test_multibyte_ids_in_the_parent_index():
    r = Root()
    r.seq = 199
    r.snapshot("p")                  # id 200: varint c8 01
    r.snapshot("q", "p")             # id 201
    r.lease("p", snapshots=["p"])
    removed = collect(r.meta, {"native": r.backend}, now=NOW)
    assert [x.path for x in removed if x.kind == "backend-parent-index"] == \
        [(b"v1", b"parents", b"\xc8\x01\x00\xc9\x01")]


def test_lease_expiry():
    r = Root()
    r.snapshot("old")
    r.snapshot("new")
    r.snapshot("bad")
    r.lease("old", snapshots=["old"], labels={"containerd.io/gc.expire": "2026-12-01T19:59:59Z"})
    r.lease("new", snapshots=["new"], labels={"containerd.io/gc.expire": "2026-12-01T20:00:01Z"})
    r.lease("bad", snapshots=["bad"], labels={"containerd.io/gc.expire": "tomorrow"})   # Go ignores it
    assert [k for k in r.removed() if k[0] != "backend-snapshot"] == [("lease", b"old"), ("snapshot", b"old")]
    # now=None is the wall clock, later than all three
    assert [k for k in r.removed(now=None) if k[0] == "lease"] == [("lease", b"new"), ("lease", b"old")]


def test_flat_lease_holds_its_objects_not_their_references():
    r = Root()
    r.blob("sha256:cfg")
    r.blob("sha256:manifest", labels={"containerd.io/gc.ref.content.config": "sha256:cfg",
                                      "containerd.io/gc.ref.contentx": "sha256:unnamed"})
    r.blob("sha256:unnamed")
    r.snapshot("base")
    r.snapshot("top", "base", labels={"containerd.io/gc.ref.content.l0": "sha256:layer"})
    r.blob("sha256:layer")
    r.lease("m", content=["sha256:manifest"], snapshots=["top"])
    # flat: the lease holds the manifest and the snapshot chain (parents are followed), not labels
    assert r.removed() == [("content", b"sha256:cfg"), ("content", b"sha256:layer"), ("content", b"sha256:unnamed")]
    r.lease("m", content=["sha256:manifest"], snapshots=["top"], flat=False)
    # `gc.ref.contentx` is not a named reference (a '.' or '/' must follow the prefix)
    assert r.removed() == [("content", b"sha256:unnamed")]


def test_root_labels_and_back_references():
    r = Root()
    r.blob("sha256:rooted", labels={"containerd.io/gc.root": "2026-01-01T00:00:00Z"})
    r.blob("sha256:child", labels={"containerd.io/gc.bref.content": "sha256:rooted"})
    r.snapshot("s", labels={"containerd.io/gc.root": ""})
    r.snapshot("t", labels={"containerd.io/gc.bref.snapshot.native/x": "s"})
    r.blob("sha256:loose")
    assert r.removed() == [("content", b"sha256:loose")]


def test_ingests_and_images():
    r = Root()
    ingests = r.ns.setdefault(b"content", {}).setdefault(b"ingests", {})
    ingests[b"ahead"] = {b"expireat": _tb(NOW + timedelta(hours=1)), b"expected": b"sha256:exp"}
    ingests[b"past"] = {b"expireat": _tb(NOW - timedelta(hours=1))}
    ingests[b"never"] = {}
    r.blob("sha256:exp")
    r.blob("sha256:target")
    r.ns[b"images"] = {b"img": {b"target": {b"digest": b"sha256:target"}},
                       b"expired": {b"labels": {b"containerd.io/gc.expire": b"2020-01-01T00:00:00Z"}}}
    result = run(r.meta, {"native": r.backend}, now=NOW)
    assert [(x.kind, x.name) for x in result.removals] == [("ingest", b"never"), ("ingest", b"past"),
                                                          ("image", b"expired")]
    assert result.content_dirty
    ingests[b"broken"] = {b"expireat": b"\x07"}
    result = run(r.meta, {"native": r.backend}, now=NOW)
    assert result.removals == () and [(p.code, p.fatal) for p in result.problems] == \
        [("ingest-expireat-undecodable", True)]


def test_conditional_snapshot_reference():
    """An image's `gc.cond.snapshot` keeps a snapshot while its `gc.cond.value-usedat` satisfies the condition."""
    r = Root()
    r.ns[b"images"] = {b"img": {b"labels": {b"containerd.io/gc.cond.snapshot.native": b"usedat<1h|s"}}}
    r.snapshot("s", labels={"containerd.io/gc.cond.value-usedat": "2026-12-01T19:30:00Z"})
    assert r.removed() == []
    assert [k for k in r.removed(now=NOW + timedelta(hours=1))][:1] == [("snapshot", b"s")]


def test_undecodable_backend_row_stops_that_snapshotter_only():
    r = Root()
    r.snapshot("a")
    r.rows[b"buildkit/1/a"][b"createdat"] = b"junk"
    result = run(r.meta, {"native": r.backend}, now=NOW)
    assert [(x.kind, x.name) for x in result.removals] == [("snapshot", b"a")]
    assert [(p.code, p.fatal) for p in result.problems] == [("row-timestamp-undecodable", True)]
