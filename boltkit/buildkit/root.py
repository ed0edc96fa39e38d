"""Finding BuildKit's bolt files under a state directory.

A root is buildkitd's `--root` (`/var/lib/buildkit`, rootless `~/.local/share/buildkit`, a buildx state
volume) or Docker's `<data-root>/buildkit`. Daemon-level stores sit at the top; each worker directory
(`runc-<snapshotter>`, `containerd-<snapshotter>`, or the root itself for Docker's graphdriver worker)
holds `metadata_v2.db`, its `workerid`, and for the OCI worker `containerdmeta.db` and the snapshotter's
`snapshots/metadata.db` (reference/buildkit-stores.md §0).
"""
from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BoltkitError, OpenError
from ..storage import Database

DAEMON_STORES = ("cache.db", "history.db", "history_c8d.db", "cache-debug.db", "snapshots.db")
WORKER_STORES = ("metadata_v2.db", "containerdmeta.db", "snapshots/metadata.db")


@dataclass
class Store:
    path: Path
    kind: str                    # cache.db, history.db, metadata_v2.db, containerdmeta.db, snapshots, ...
    worker: str | None = None    # worker directory name, for worker stores


@dataclass
class Worker:
    dir: Path
    worker_id: str | None        # contents of <dir>/workerid


@dataclass
class Root:
    path: Path
    stores: list[Store] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    lock: Path | None = None
    backups: list[Path] = field(default_factory=list)   # <store>.<id>.bak files SafeOpen's resets left behind
    boltkit_backups: list[Path] = field(default_factory=list)   # <store>.boltkit-<stamp>.bak: boltkit's repairs
    other_backups: list[Path] = field(default_factory=list)     # any other *.bak (a user's own copies)
    docker_root: Path | None = None    # the Docker data root given, whose buildkit/ directory this is
    skipped: list[Path] = field(default_factory=list)   # bolt-looking files (*.db) that are none of the stores


# SafeOpen renames a store it cannot open to dbPath + "." + identity.NewID() + ".bak": NewID is 25 base-36 digits
_SAFEOPEN_BACKUP = re.compile(r"\.[0-9a-z]{25}\.bak$")
_BOLTKIT_BACKUP = re.compile(r"\.boltkit-[^.]+\.bak$")     # repair/replace.py's and simulate-start's


def backup_kind(name: str) -> str:
    """Who left a *.bak file: "safeopen" (buildkitd reset the store), "boltkit" (a repair's backup of the
    original), or "other". Told apart by name, since an operator deciding what to delete needs to know which
    are the daemon's discarded stores and which are the copies a repair kept."""
    if _BOLTKIT_BACKUP.search(name):
        return "boltkit"
    if _SAFEOPEN_BACKUP.search(name):
        return "safeopen"
    return "other"


# Docker's own directories that hold no BuildKit store and can hold millions of files (layers, containers)
_DOCKER_BULK = {"overlay2", "vfs", "btrfs", "zfs", "aufs", "fuse-overlayfs", "containers", "image", "tmp",
                "plugins", "runtimes"}
_SCAN_DEPTH = 3


def discover(root: str | os.PathLike) -> Root:
    """The stores under ``root``. A Docker data root (``/var/lib/docker``: no store of its own, a ``buildkit/``
    directory that has them) means its ``buildkit/`` directory; what else looks like a bolt file and is no
    store is listed in ``skipped``, so a report can say what it did not look at."""
    base = Path(root)
    if not base.is_dir():
        raise OpenError(f"{root}: not a directory", kind="missing" if not base.exists() else "not-a-file")
    inner = base / "buildkit"
    if not _holds_stores(base) and inner.is_dir() and _holds_stores(inner):
        found = _discover(inner)
        found.docker_root = base
        found.skipped = sorted(set(_bolt_files(base, skip={inner} | {base / d for d in _DOCKER_BULK}))
                               | set(found.skipped))
        return found
    return _discover(base)


def _holds_stores(d: Path) -> bool:
    return any((d / n).is_file() for n in DAEMON_STORES + ("metadata_v2.db",))


def _bolt_files(base: Path, skip: set[Path]) -> list[Path]:
    """*.db files down to a few levels below ``base``, outside ``skip`` (bounded: never a walk of layers)."""
    out, todo = [], [(base, 0)]
    while todo:
        d, depth = todo.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            p = Path(e.path)
            if e.is_dir(follow_symlinks=False):
                if depth + 1 < _SCAN_DEPTH and p not in skip:
                    todo.append((p, depth + 1))
            elif e.name.endswith(".db") and e.is_file(follow_symlinks=False):
                out.append(p)
    return out


def _discover(base: Path) -> Root:
    found = Root(base)
    lock = base / "buildkitd.lock"
    found.lock = lock if lock.exists() else None
    for name in DAEMON_STORES:
        p = base / name
        if p.is_file():
            found.stores.append(Store(p, "snapshots" if name == "snapshots.db" else name))
    candidates = [base] + sorted(d for d in base.iterdir() if d.is_dir())
    for d in candidates:
        if not (d / "metadata_v2.db").is_file():
            continue
        wid_file = d / "workerid"
        wid = wid_file.read_text(errors="replace").strip() if wid_file.is_file() else None
        found.workers.append(Worker(d, wid))
        for name in WORKER_STORES:
            p = d / name
            if p.is_file():
                kind = "snapshots" if name.startswith("snapshots/") else name
                found.stores.append(Store(p, kind, d.name))
    for p in sorted(p for p in base.rglob("*.bak") if p.is_file()):
        kind = backup_kind(p.name)
        (found.backups if kind == "safeopen" else found.boltkit_backups if kind == "boltkit"
         else found.other_backups).append(p)
    taken = {s.path for s in found.stores}
    found.skipped = sorted(p for p in _bolt_files(base, skip=set()) if p not in taken)
    return found


@dataclass
class StoreUsage:
    """What `buildkit ls` shows of one store: its size on disk and how much of it bbolt uses (the high-water
    mark: the file never shrinks below it), the last transaction, or why it could not be read."""
    store: Store
    relpath: str
    worker_id: str | None
    size: int
    modified: datetime.datetime
    used: int | None = None
    txid: int | None = None
    error: str | None = None


def store_usage(root: Root) -> list[StoreUsage]:
    """Every store of ``root`` with its size, use and last transaction; an unreadable one says why."""
    out = []
    for s in root.stores:
        st = os.stat(s.path)
        u = StoreUsage(s, str(s.path.relative_to(root.path)),
                       next((w.worker_id for w in root.workers if w.dir.name == s.worker), None), st.st_size,
                       datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc))
        try:
            with Database(str(s.path)) as db:
                u.used, u.txid = db.hwm * db.page_size, db.meta.txid
        except BoltkitError as e:
            u.error = str(e)
        out.append(u)
    return out
