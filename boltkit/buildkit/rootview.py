"""A BuildKit state directory opened for reading: the public face's one object for a root.

A script that asks "which records does this worker hold, which cache results point at them, what will the next
start do" should not need to know which store holds what, how each is decoded, or which opened file the start's
replay keeps. ``BuildKitRoot`` answers each question with one call over the decoders and models that the
commands use (root.py, metadata.py, cachecolumns.py, history.py, graph.py, startup.py, fsck.py): nothing here
decodes or judges on its own. Every call opens the store it reads and closes it again; nothing is written.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import CorruptionError, NotFound
from ..storage import Database
from .cachecolumns import load_cache_columns
from .cachedb import CacheResult, CacheStore
from .fsck import FsckResult, fsck_root
from .graph import GraphSummary
from .history import HistoryRecord, load_history
from .metadata import Record, load_metadata_store
from .root import Root, Store, discover
from .startconfig import StartConfig
from .startup import StartPlan, close_plan, simulate_start


class BuildKitRoot:
    """The stores under a buildkitd ``--root`` (or a Docker data root, whose ``buildkit/`` directory is meant).

    ``damage``: where a method reads a store, a list given as ``damage`` receives every structural fault met
    (CorruptionError: page, offset, bucket path) and the read goes on past it; without one, damage raises."""

    def __init__(self, path: str | os.PathLike):
        self.layout: Root = discover(path)

    @property
    def path(self) -> Path:
        return self.layout.path

    @property
    def stores(self) -> list[Store]:
        """Every store found: its path, its kind (cache.db, metadata_v2.db, ...) and, for worker stores, the
        worker directory."""
        return list(self.layout.stores)

    @property
    def workers(self) -> list[str]:
        """The worker directories (each holds a metadata_v2.db), in the order buildkitd's layout lists them."""
        return [w.dir.name for w in self.layout.workers]

    def store(self, kind: str, worker: str | None = None) -> Store:
        """The store of ``kind``; for a worker store, of ``worker`` (by default the only, or first, worker)."""
        for s in self.layout.stores:
            if s.kind == kind and (worker is None or s.worker == worker):
                return s
        raise NotFound(f"{self.layout.path}: no {kind}" + (f" for worker {worker}" if worker else ""))

    def records(self, worker: str | None = None, *,
                damage: list[CorruptionError] | None = None) -> dict[bytes, Record]:
        """The cache records of a worker's metadata_v2.db by id (the bucket name's bytes): decoded values, index
        keys, undecodable values kept raw, parents (`Record.parents`)."""
        with Database(str(self.store("metadata_v2.db", worker).path)) as db:
            return load_metadata_store(db, on_damage=None if damage is None else damage.append).records

    def cache(self, *, damage: list[CorruptionError] | None = None) -> CacheStore:
        """cache.db decoded: the results by key, the links between keys (with their decoded link keys), and the
        two indexes (_byresult, _backlinks)."""
        with Database(str(self.store("cache.db").path)) as db:
            return load_cache_columns(db, on_damage=None if damage is None else damage.append).to_store()

    def results(self, *, damage: list[CorruptionError] | None = None) -> dict[str, list[CacheResult]]:
        """cache.db's results: cache key -> the results stored under it (result id `<worker>::<record id>`,
        creation time)."""
        return self.cache(damage=damage).results

    def key_graph(self, *, top: int = 10, damage: list[CorruptionError] | None = None) -> GraphSummary:
        """The shape of cache.db's key graph (what `buildkit graph` prints): keys, links, roots, cycles, fan-out
        and fan-in, depth, and the root-to-key path count pre-v0.25 cache exports are exponential in."""
        with Database(str(self.store("cache.db").path)) as db:
            return load_cache_columns(db, on_damage=None if damage is None else damage.append).graph_summary(top)

    def history(self, *, damage: list[CorruptionError] | None = None) -> list[HistoryRecord]:
        """history.db's build records: ref, times, steps, pinned, error."""
        with Database(str(self.store("history.db").path)) as db:
            return load_history(db, on_damage=None if damage is None else damage.append)

    def simulate_start(self, *, config: StartConfig | str | None = None) -> StartPlan:
        """What buildkitd will do at its next start, replayed offline (startup.py): the outcome (starts, refuses,
        crashes, resets a store), where it stops and why, and every change it makes. ``config``: a
        `StartConfig`, or the path of a buildkitd.toml. The stores are released before returning; to write them
        as the daemon leaves them, use `boltkit.buildkit.startup.write_start` before `close_plan`."""
        plan = simulate_start(self.layout.path, config=_config(config))
        close_plan(plan)
        return plan

    def fsck(self, *, jobs: int = 1, config: StartConfig | str | None = None) -> FsckResult:
        """Every store checked, the checks across stores and the replay of the next start, with fsck's exit
        code (`FsckResult.exit_code`): what `boltkit buildkit fsck` reports, as values."""
        return fsck_root(str(self.layout.path), jobs=jobs, config=_config(config))


def _config(config: StartConfig | str | None) -> StartConfig | None:
    return StartConfig.load(config) if isinstance(config, str) else config


__all__ = ["BuildKitRoot"]
