"""containerd's metadata garbage collection, as buildkitd runs it about 1 s after its start, predicted offline.

The OCI worker keeps its snapshots and content in containerd's metadata store (containerdmeta.db) on top of
one snapshotter (its own snapshots/metadata.db). After buildkitd's start-up GC prunes, `cm.GarbageCollect`
calls containerd's `metadata.(*DB).GarbageCollect` (core/metadata/db.go, gc.go, snapshot.go, as vendored by
BuildKit 73ed6825): everything no lease or other root reaches any more is deleted from containerdmeta.db, and
then, for each snapshotter that lost a snapshot in that pass, the snapshotter's own rows that containerd's
metadata no longer names are removed, children before parents (core/snapshots/storage/bolt.go `Remove`).

This module follows those code paths on plain trees (boltkit.storage.plain) so a caller can feed a state that
is not on disk, such as containerdmeta.db after buildkitd deleted the leases of the records it dropped:

- mark (`scanRoots` + `gc.Tricolor`): roots are the leases that have not expired (`containerd.io/gc.expire`)
  with everything they hold (a `containerd.io/gc.flat` lease holds its objects but not what those reference),
  images that have not expired, containers, ingests whose `expireat` lies ahead, content and snapshots labelled
  `containerd.io/gc.root*`, and sandboxes' reference labels. From there a snapshot reaches its parent and its
  `containerd.io/gc.ref.*` labels, content its labels, an image its target, an ingest its expected digest, a
  container its snapshot; `containerd.io/gc.bref.*` labels and `gc.cond.snapshot` conditions add back edges.
- sweep (`scanAll`, in its order: per namespace leases, snapshots, ingests, content, images): whatever is not
  marked loses its bucket. Parents' `children/<key>` entries are never touched (the sweep only deletes buckets).
- backend (`snapshotter.garbageCollect`, only for snapshotters marked dirty by a snapshot removed in this
  pass): rows of `v1/snapshots` whose name no remaining metadata snapshot carries, pruned depth first from each
  row without a parent; a row with a child row left in `v1/parents` stays (FailedPrecondition); its
  `v1/parents/<parent id><0><id>` entry goes with it. Only the GC marks a snapshotter dirty here: BuildKit's
  snapshotter wrapper forbids `Remove` (snapshot/containerd/snapshotter.go), and each pass resets the marks, so
  an orphan row (one whose metadata snapshot vanished otherwise) waits for a pass that removes a snapshot.

Left out, because they change no bbolt store or never occur in BuildKit: the content store cleanup (files
under content/, scheduled when content or an ingest was removed: `GcPass.content_dirty` says so) and the
snapshotter's directory cleanup; registered collectors (BuildKit registers none); the event publishing. The
snapshotter's own `Remove` also renames a directory; a failure there would roll the row back, and is not
foreseeable offline. Dirty snapshotters are cleaned in parallel goroutines in Go; here in name order.
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..storage import Database
from ..storage.plain import plain_tree as _plain_tree
from .gotime import parse_duration, parse_rfc3339, since, unix_ns, unmarshal_binary

Tree = dict  # dict[bytes, "bytes | Tree"]: a bucket is a dict, a plain value bytes

META_STORE = "containerdmeta.db"
BACKEND_STORE = "snapshots/metadata.db"

# resource types (core/metadata/gc.go); a flat reference is the type with bit 0x20 set
CONTENT, SNAPSHOT, CONTAINER, TASK, IMAGE, LEASE, INGEST = 1, 2, 3, 4, 5, 6, 7
FLAT = 0x20
RESOURCE_MAX = 0x1F

LABEL_ROOT = b"containerd.io/gc.root"
LABEL_EXPIRE = b"containerd.io/gc.expire"
LABEL_FLAT = b"containerd.io/gc.flat"
LABEL_COND_VALUE_USEDAT = b"containerd.io/gc.cond.value-usedat"
COND_USEDAT = b"usedat"

Node = tuple  # (type, namespace, key): containerd's gc.Node; a snapshot's key is b"<snapshotter>/<key>"


def plain_tree(db: Database) -> Tree:
    """A whole store as nested dicts (see boltkit.storage.plain); CorruptionError propagates."""
    return _plain_tree(db)


@dataclass(frozen=True)
class GcRemoval:
    """One bucket or key the pass deletes (a removed bucket is listed once, not its contents)."""
    store: str                          # META_STORE or BACKEND_STORE
    path: tuple[bytes, ...]
    is_bucket: bool
    kind: str           # snapshot, content, ingest, lease, image, backend-snapshot, backend-parent-index
    namespace: bytes | None
    name: bytes                         # snapshot key / digest / ingest ref / lease id / image name / backend key
    snapshotter: str | None = None      # for snapshot and backend removals


@dataclass(frozen=True)
class GcProblem:
    """Something that stops a stage of the pass (``fatal``) or keeps one object (not fatal), as containerd
    would meet it: the metadata pass aborts on an undecodable ingest `expireat`; a snapshotter's cleanup stops
    on an undecodable row; a row with children stays."""
    store: str
    stage: str                          # "mark", "sweep", "backend-walk", "backend-remove"
    code: str                           # see the raise sites below
    path: tuple[bytes, ...]
    fatal: bool
    snapshotter: str | None = None


@dataclass(frozen=True)
class GcPass:
    removals: tuple[GcRemoval, ...]
    problems: tuple[GcProblem, ...] = ()
    dirty_snapshotters: tuple[str, ...] = ()   # snapshotters whose backend cleanup ran (or would have)
    content_dirty: bool = False                # content/ingest removed: containerd then cleans content/ files
    marked: frozenset = field(default_factory=frozenset, repr=False)


def collect(meta: Tree, backends: dict[str, Tree], *, now: datetime | None = None) -> list[GcRemoval]:
    """meta: containerdmeta.db; backends: snapshotter name (e.g. "native", "overlayfs") -> that snapshotter's
    snapshots/metadata.db. Returns what one GarbageCollect pass removes, in the order containerd removes it;
    does not modify its inputs."""
    return list(run(meta, backends, now=now).removals)


def run(meta: Tree, backends: dict[str, Tree], *, now: datetime | None = None) -> GcPass:
    """One GarbageCollect pass with what stopped or limited it (see collect)."""
    now_ns = unix_ns(now if now is not None else datetime.now(timezone.utc))
    problems: list[GcProblem] = []
    marked = _mark(meta, now_ns, problems)
    if marked is None:      # getMarked failed: GarbageCollect returns before its write transaction
        return GcPass((), tuple(problems))
    removals, dirty, content_dirty, ok = _sweep(meta, marked, problems)
    if not ok:              # the Update transaction failed: rolled back, no cleanup scheduled
        return GcPass((), tuple(problems), marked=frozenset(marked))
    out = list(removals)
    removed = {r.path for r in removals}
    for name in sorted(dirty):
        backend = backends.get(name)
        if backend is None:
            problems.append(GcProblem(BACKEND_STORE, "backend-walk", "snapshotter-not-given", (), False, name))
            continue
        out.extend(_backend_gc(meta, removed, name, backend, problems))
    return GcPass(tuple(out), tuple(problems), tuple(sorted(dirty)), content_dirty, frozenset(marked))


# -- reading plain trees the way bbolt's Go API answers -----------------------------------------------


def _bucket(b: Tree | None, *names: bytes) -> Tree | None:
    """Bucket(name)…: None when a step is missing or is a plain value."""
    for name in names:
        if b is None:
            return None
        b = b.get(name)
        if not isinstance(b, dict):
            return None
    return b


def _get(b: Tree | None, key: bytes) -> bytes | None:
    """Get(key): None when missing or a bucket."""
    if b is None:
        return None
    v = b.get(key)
    return v if isinstance(v, bytes) else None


def _buckets(b: Tree | None):
    """ForEach over the sub-buckets (v == nil), in key order."""
    if b is None:
        return
    for k in sorted(b):
        v = b[k]
        if isinstance(v, dict):
            yield k, v


def _keys(b: Tree | None):
    """ForEach over every key, buckets included, in key order."""
    return sorted(b) if b is not None else []


def uvarint(buf: bytes | None) -> int:
    """Go's binary.Uvarint value (0 on an empty, short or overflowing buffer; trailing bytes ignored)."""
    x = shift = 0
    for i, byte in enumerate(buf or b""):
        if i == 10:
            return 0
        if byte < 0x80:
            if i == 9 and byte > 1:
                return 0
            return x | byte << shift
        x |= (byte & 0x7F) << shift
        shift += 7
    return 0


def _put_uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# -- labels (gcContext.sendLabelRefs) ------------------------------------------------------------------


def _named(k: bytes, prefix: bytes) -> bool:
    """The label is the prefix itself or the prefix followed by '.' or '/' (a named reference)."""
    return k == prefix or k[len(prefix):len(prefix) + 1] in (b".", b"/")


def _snapshotter_of(rest: bytes) -> bytes:
    i = rest.find(b"/")
    return rest if i < 0 else rest[:i]


def _h_bref_container(ns, k, v, p=b"containerd.io/gc.bref.container"):
    return (CONTAINER, ns, v) if _named(k, p) else None


def _h_bref_content(ns, k, v, p=b"containerd.io/gc.bref.content"):
    return (CONTENT, ns, v) if _named(k, p) else None


def _h_bref_image(ns, k, v, p=b"containerd.io/gc.bref.image"):
    return (IMAGE, ns, v) if _named(k, p) else None


def _h_bref_snapshot(ns, k, v, p=b"containerd.io/gc.bref.snapshot."):
    return (SNAPSHOT, ns, _snapshotter_of(k[len(p):]) + b"/" + v)


def _h_ref_content(ns, k, v, p=b"containerd.io/gc.ref.content"):
    return (CONTENT, ns, v) if _named(k, p) else None


def _h_ref_image(ns, k, v, p=b"containerd.io/gc.ref.image"):
    return (IMAGE, ns, v) if _named(k, p) else None


def _h_ref_snapshot(ns, k, v, p=b"containerd.io/gc.ref.snapshot."):
    return (SNAPSHOT, ns, _snapshotter_of(k[len(p):]) + b"/" + v)


# startGCContext's handler list, in its order (unsorted: the sort only happens when collectors are registered,
# and BuildKit registers none); each is (prefix, role, function)
_HANDLERS = (
    (b"containerd.io/gc.bref.container", "bref", _h_bref_container),
    (b"containerd.io/gc.bref.content", "bref", _h_bref_content),
    (b"containerd.io/gc.bref.image", "bref", _h_bref_image),
    (b"containerd.io/gc.bref.snapshot.", "bref", _h_bref_snapshot),
    (b"containerd.io/gc.ref.content", "fn", _h_ref_content),
    (b"containerd.io/gc.ref.image", "fn", _h_ref_image),
    (b"containerd.io/gc.ref.snapshot.", "fn", _h_ref_snapshot),
    (LABEL_ROOT, "root", None),
    (b"containerd.io/gc.cond.snapshot", "cond", None),
    (LABEL_COND_VALUE_USEDAT, "condval", None),
)


def _conditions(ns: bytes, k: bytes, v: bytes, now_ns: int):
    """The snapshot a `containerd.io/gc.cond.snapshot[.<snapshotter>]` label conditions, with one predicate per
    understood condition (`usedat<D` / `usedat>D`: time since the snapshot's used-at value vs duration D)."""
    rest = k[len(b"containerd.io/gc.cond.snapshot"):].lstrip(b"./")
    snapshotter = _snapshotter_of(rest)
    conds, sep, key = v.partition(b"|")
    if not sep:
        return
    target = (SNAPSHOT, ns, snapshotter + b"/" + key)
    for c in conds.split(b","):
        pos = min((i for i in (c.find(ch) for ch in (b"!", b"<", b">", b"=")) if i >= 0), default=-1)
        if pos < 0:
            continue
        name, op, val = c[:pos], c[pos:pos + 1], c[pos + 1:]
        if val[:1] == b"=":
            op += b"="
            val = val[1:]
        if name != COND_USEDAT or op not in (b"<", b">"):
            continue
        d = parse_duration(val)
        if d is None:
            continue
        if op == b"<":
            yield target, (lambda t, d=d: since(now_ns, t) < d)
        else:
            yield target, (lambda t, d=d: since(now_ns, t) > d)


class _Labels:
    """sendLabelRefs with the callbacks a call site passes (fn, bref, root, cond, condval): a handler whose
    kind of callback is absent is skipped, the root handler fires ``root`` when that is given."""

    def __init__(self, now_ns: int):
        self.now_ns = now_ns

    def send(self, ns: bytes, bkt: Tree | None, *, fn=None, bref=None, root=None, cond=None, condval=None):
        labels = _bucket(bkt, b"labels")
        if labels is None:
            return
        keys = sorted(labels)
        for prefix, role, handler in _HANDLERS:
            if (role == "bref" and bref is None) or (role == "fn" and fn is None) or \
                    (role == "cond" and cond is None) or (role == "condval" and condval is None):
                continue
            for k in keys[bisect_left(keys, prefix):]:
                if not k.startswith(prefix):
                    break
                v = labels[k] if isinstance(labels[k], bytes) else b""     # string(nil) for a sub-bucket
                if role in ("fn", "bref"):
                    assert handler is not None          # every fn and bref role has its function
                    node = handler(ns, k, v)
                    if node is not None:
                        (fn if role == "fn" else bref)(node)
                elif role == "cond":
                    for target, pred in _conditions(ns, k, v, self.now_ns):
                        cond(target, pred)
                elif role == "condval":
                    t = parse_rfc3339(v)
                    if t is not None:
                        condval(t)
                elif root is not None:
                    root()


# -- mark ----------------------------------------------------------------------------------------------


def _mark(meta: Tree, now_ns: int, problems: list[GcProblem]) -> set | None:
    """getMarked: the reachable nodes (types with the flat bit stripped); None when scanRoots fails."""
    v1 = _bucket(meta, b"v1")
    if v1 is None:
        return set()
    labels = _Labels(now_ns)
    roots: list[Node] = []
    back: dict[Node, list[Node]] = {}
    conditionals: dict[Node, tuple[list, list]] = {}   # snapshot -> (references, used-at values)

    def bref(n: Node, ref: Node) -> None:
        back.setdefault(n, []).append(ref)

    def add_cond(n: Node, target: Node, pred) -> None:
        refs, _ = conditionals.setdefault(target, ([], []))
        refs.append(lambda t: bref(n, target) if pred(t) else None)

    def add_cond_val(n: Node, t: int) -> None:
        conditionals.setdefault(n, ([], []))[1].append(t)

    for ns, nbkt in _buckets(v1):
        for lid, lease in _buckets(_bucket(nbkt, b"leases")):
            flat = False
            lbl = _bucket(lease, b"labels")
            if lbl is not None:
                exp = _get(lbl, LABEL_EXPIRE)
                if exp is not None:
                    t = parse_rfc3339(exp)
                    if t is not None and now_ns > t:
                        continue                    # expired: neither the lease nor what it holds is a root
                flat = _get(lbl, LABEL_FLAT) is not None
            roots.append((LEASE, ns, lid))
            f = FLAT if flat else 0
            roots.extend((CONTENT | f, ns, k) for k in _keys(_bucket(lease, b"content")))
            for ss, sbkt in _buckets(_bucket(lease, b"snapshots")):
                roots.extend((SNAPSHOT | f, ns, ss + b"/" + k) for k in _keys(sbkt))
            roots.extend((INGEST, ns, k) for k in _keys(_bucket(lease, b"ingests")))
            roots.extend((IMAGE | f, ns, k) for k in _keys(_bucket(lease, b"images")))

        for name, ibkt in _buckets(_bucket(nbkt, b"images")):
            me = (IMAGE, ns, name)
            if not _image_expired(ibkt, now_ns):
                roots.append(me)
                labels.send(ns, ibkt, cond=lambda n, p, me=me: add_cond(me, n, p))
            else:
                labels.send(ns, ibkt, bref=lambda n, me=me: bref(n, me), cond=lambda n, p, me=me: add_cond(me, n, p))

        content = _bucket(nbkt, b"content")
        for ref, ingest in _buckets(_bucket(content, b"ingests")):
            raw = _get(ingest, b"expireat")
            if raw is None:
                continue
            ea = unmarshal_binary(raw)
            if ea is None:
                problems.append(GcProblem(META_STORE, "mark", "ingest-expireat-undecodable",
                                          (b"v1", ns, b"content", b"ingests", ref, b"expireat"), True))
                return None
            if not now_ns > ea:
                roots.append((INGEST, ns, ref))
        for dgst, blob in _buckets(_bucket(content, b"blob")):
            me = (CONTENT, ns, dgst)
            labels.send(ns, blob, bref=lambda n, me=me: bref(n, me), root=lambda me=me: roots.append(me),
                        cond=lambda n, p, me=me: add_cond(me, n, p))

        for cid, cbkt in _buckets(_bucket(nbkt, b"containers")):
            me = (CONTAINER, ns, cid)
            roots.append(me)
            labels.send(ns, cbkt, bref=lambda n, me=me: bref(n, me))

        for ss, ssbkt in _buckets(_bucket(nbkt, b"snapshots")):
            for key, sbkt in _buckets(ssbkt):
                me = (SNAPSHOT, ns, ss + b"/" + key)
                labels.send(ns, sbkt, bref=lambda n, me=me: bref(n, me), root=lambda me=me: roots.append(me),
                            condval=lambda t, me=me: add_cond_val(me, t))

        for _, sbbkt in _buckets(_bucket(nbkt, b"sandboxes")):
            labels.send(ns, sbbkt, fn=roots.append)

    for refs, values in conditionals.values():
        if refs and values:
            for r in refs:
                for t in values:
                    r(t)

    def references(node: Node) -> list[Node]:
        out = list(back.get(node, ()))
        typ, ns, key = node
        fn = out.append
        if typ == CONTENT:
            bkt = _bucket(v1, ns, b"content", b"blob", key)
            if bkt is not None:
                labels.send(ns, bkt, fn=fn)
        elif typ in (SNAPSHOT, SNAPSHOT | FLAT):
            ss, _, name = key.partition(b"/")
            bkt = _bucket(v1, ns, b"snapshots", ss, name)
            if bkt is not None:
                parent = _get(bkt, b"parent")
                if parent:
                    fn((typ, ns, ss + b"/" + parent))
                if typ == SNAPSHOT:
                    labels.send(ns, bkt, fn=fn)
        elif typ in (IMAGE, IMAGE | FLAT):
            bkt = _bucket(v1, ns, b"images", key)
            if bkt is not None:
                target = _bucket(bkt, b"target")
                if target is not None:
                    fn((CONTENT | (typ & FLAT), ns, _get(target, b"digest") or b""))
                if typ == IMAGE:
                    labels.send(ns, bkt, fn=fn)
        elif typ == INGEST:
            bkt = _bucket(v1, ns, b"content", b"ingests", key)
            expected = _get(bkt, b"expected")
            if expected:
                fn((CONTENT, ns, expected))
        elif typ == CONTAINER:
            bkt = _bucket(v1, ns, b"containers", key)
            if bkt is not None:
                snapshotter = _get(bkt, b"snapshotter")
                if snapshotter:
                    fn((SNAPSHOT, ns, snapshotter + b"/" + (_get(bkt, b"snapshotKey") or b"")))
                labels.send(ns, bkt, fn=fn)
        return out

    # gc.Tricolor
    seen = set(roots)
    grays = list(roots)
    reachable: set = set()
    while grays:
        node = grays.pop()
        for target in references(node):
            if target not in seen:
                seen.add(target)
                grays.append(target)
        reachable.add((node[0] & RESOURCE_MAX, node[1], node[2]))
    return reachable


def _image_expired(ibkt: Tree, now_ns: int) -> bool:
    exp = _get(_bucket(ibkt, b"labels"), LABEL_EXPIRE)
    if exp is None:
        return False
    t = parse_rfc3339(exp)
    return t is not None and now_ns > t


# -- sweep ---------------------------------------------------------------------------------------------


def _sweep(meta: Tree, marked: set, problems: list[GcProblem]):
    """scanAll + remove inside GarbageCollect's write transaction: (removals, dirty snapshotters, content
    dirty, ok). bbolt's ForEach keeps walking the pages it started on, so deleting the bucket just visited
    never skips the next one; the sweep sees the tree as it was."""
    v1 = _bucket(meta, b"v1")
    removals: list[GcRemoval] = []
    dirty: set[str] = set()
    content_dirty = False
    deleted: set[tuple[bytes, ...]] = set()
    if v1 is None:
        return removals, dirty, content_dirty, True

    def delete(path: tuple[bytes, ...], kind: str, ns: bytes, name: bytes, snapshotter: str | None = None) -> bool:
        parent = _bucket(meta, *path[:-1])
        if path in deleted or parent is None or not isinstance(parent.get(path[-1]), dict):
            problems.append(GcProblem(META_STORE, "sweep", "delete-bucket-failed", path, True))
            return False      # DeleteBucket's error fails the transaction
        deleted.add(path)
        removals.append(GcRemoval(META_STORE, path, True, kind, ns, name, snapshotter))
        return True

    for ns, nbkt in _buckets(v1):
        for lid, _ in _buckets(_bucket(nbkt, b"leases")):
            if (LEASE, ns, lid) not in marked and not delete((b"v1", ns, b"leases", lid), "lease", ns, lid):
                return removals, dirty, content_dirty, False
        for sk, ssbkt in _buckets(_bucket(nbkt, b"snapshots")):
            for k, _ in _buckets(ssbkt):
                key = sk + b"/" + k
                if (SNAPSHOT, ns, key) in marked:
                    continue
                idx = key.find(b"/")
                if idx > 0:
                    dirty.add(key[:idx].decode("utf-8", "surrogateescape"))
                ss, _, name = key.partition(b"/")
                if _bucket(nbkt, b"snapshots", ss) is not None:
                    if not delete((b"v1", ns, b"snapshots", ss, name), "snapshot", ns, name,
                                  ss.decode("utf-8", "surrogateescape")):
                        return removals, dirty, content_dirty, False
        content = _bucket(nbkt, b"content")
        for ref, _ in _buckets(_bucket(content, b"ingests")):
            if (INGEST, ns, ref) not in marked:
                content_dirty = True
                if not delete((b"v1", ns, b"content", b"ingests", ref), "ingest", ns, ref):
                    return removals, dirty, content_dirty, False
        for dgst, _ in _buckets(_bucket(content, b"blob")):
            if (CONTENT, ns, dgst) not in marked:
                content_dirty = True
                if not delete((b"v1", ns, b"content", b"blob", dgst), "content", ns, dgst):
                    return removals, dirty, content_dirty, False
        for name, _ in _buckets(_bucket(nbkt, b"images")):
            if (IMAGE, ns, name) not in marked and not delete((b"v1", ns, b"images", name), "image", ns, name):
                return removals, dirty, content_dirty, False
    return removals, dirty, content_dirty, True


# -- the snapshotter's own rows ------------------------------------------------------------------------


@dataclass
class _TreeNode:
    name: bytes = b""
    remove: bool = False
    children: list = field(default_factory=list)


def _row_readable(row: Tree) -> bool:
    """storage.readSnapshot fails only on a createdat/updatedat that time.UnmarshalBinary rejects."""
    for k in (b"createdat", b"updatedat"):
        v = _get(row, k)
        if v is not None and unmarshal_binary(v) is None:
            return False
    return True


def _backend_gc(meta: Tree, removed: set, name: str, backend: Tree, problems: list[GcProblem]) -> list[GcRemoval]:
    """snapshotter.garbageCollect for one snapshotter, after the sweep committed."""
    sname = name.encode("utf-8", "surrogateescape")
    seen: set[bytes] = set()
    for ns, nbkt in _buckets(_bucket(meta, b"v1")):
        for key, sbkt in _buckets(_bucket(nbkt, b"snapshots", sname)):
            if (b"v1", ns, b"snapshots", sname, key) in removed:
                continue
            bkey = _get(sbkt, b"name")
            if bkey:
                seen.add(bkey)

    v1 = _bucket(backend, b"v1")
    rows = _bucket(v1, b"snapshots")
    if rows is None:
        code = "backend-no-v1" if v1 is None else "backend-no-snapshots-bucket"
        problems.append(GcProblem(BACKEND_STORE, "backend-walk", code, (b"v1",), True, name))
        return []
    # walkTree over storage.WalkInfo (one read transaction; an unreadable row fails the whole walk)
    roots: list[_TreeNode] = []
    nodes: dict[bytes, _TreeNode] = {}
    for rname, row in _buckets(rows):
        if not _row_readable(row):
            problems.append(GcProblem(BACKEND_STORE, "backend-walk", "row-timestamp-undecodable",
                                      (b"v1", b"snapshots", rname), True, name))
            return []
        node = nodes.setdefault(rname, _TreeNode())
        node.name, node.remove = rname, rname not in seen
        parent = _get(row, b"parent") or b""
        if not parent:
            roots.append(node)
        else:
            nodes.setdefault(parent, _TreeNode()).children.append(node)

    parents_bkt = _bucket(v1, b"parents")
    index = sorted(parents_bkt) if parents_bkt is not None else None
    gone: set[bytes] = set()
    out: list[GcRemoval] = []

    def remove(rname: bytes) -> bool:
        """storage.Remove in its own transaction; False stops the whole cleanup (an error other than
        FailedPrecondition)."""
        row = rows.get(rname) if rname not in gone else None
        if not isinstance(row, dict):
            problems.append(GcProblem(BACKEND_STORE, "backend-remove", "row-not-found",
                                      (b"v1", b"snapshots", rname), True, name))
            return False
        if not _row_readable(row):
            problems.append(GcProblem(BACKEND_STORE, "backend-remove", "row-timestamp-undecodable",
                                      (b"v1", b"snapshots", rname), True, name))
            return False
        rid = uvarint(_get(row, b"id"))
        entry = None
        if index is not None:
            i = bisect_left(index, _put_uvarint(rid) + b"\x00")
            first = index[i] if i < len(index) else None
            if uvarint(first) == rid:
                problems.append(GcProblem(BACKEND_STORE, "backend-remove", "has-children",
                                          (b"v1", b"snapshots", rname), False, name))
                return True
            parent = _get(row, b"parent") or b""
            if parent:
                prow = rows.get(parent) if parent not in gone else None
                if not isinstance(prow, dict):
                    problems.append(GcProblem(BACKEND_STORE, "backend-remove", "parent-not-found",
                                              (b"v1", b"snapshots", rname), True, name))
                    return False
                entry = _put_uvarint(uvarint(_get(prow, b"id"))) + b"\x00" + _put_uvarint(rid)
                j = bisect_left(index, entry)
                if j < len(index) and index[j] == entry:
                    del index[j]
                    out.append(GcRemoval(BACKEND_STORE, (b"v1", b"parents", entry), False,
                                         "backend-parent-index", None, rname, name))
        gone.add(rname)
        out.append(GcRemoval(BACKEND_STORE, (b"v1", b"snapshots", rname), True, "backend-snapshot", None, rname,
                             name))
        return True

    # pruneBranch: children (in walk order) before their parent, depth first, without Python recursion
    for root in roots:
        stack = [(root, iter(root.children))]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is not None:
                stack.append((child, iter(child.children)))
                continue
            stack.pop()
            if node.remove and not remove(node.name):
                return out
    return out
