"""Finding BuildKit's bolt files under a state directory.

A root is buildkitd's `--root` (`/var/lib/buildkit`, rootless `~/.local/share/buildkit`, a buildx state
volume) or Docker's `<data-root>/buildkit`. Daemon-level stores sit at the top; each worker directory
(`runc-<snapshotter>`, `containerd-<snapshotter>`, or the root itself for Docker's graphdriver worker)
holds `metadata_v2.db`, its `workerid`, and for the OCI worker `containerdmeta.db` and the snapshotter's
`snapshots/metadata.db` (reference/buildkit-stores.md §0).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

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
    backups: list[Path] = field(default_factory=list)   # *.bak files SafeOpen left behind


def discover(root: str | os.PathLike) -> Root:
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
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
    found.backups = sorted(p for p in base.rglob("*.bak") if p.is_file())
    return found
