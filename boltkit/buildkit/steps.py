"""Which build step a cache key stands for: the description of the metadata_v2.db record its results lead to.

A cache.db key is a digest; what a person recognises is the step ("[stage-1 4/10] COPY src/b* ./"). A key's
results name `<workerID>::<refID>`, and the worker's metadata_v2.db holds the record `refID` with its
`cache.description`. Keys without results (or whose records are gone) have no step that can be derived
from the files; they are left out rather than guessed."""
from __future__ import annotations

from typing import Iterable

from .cachedb import split_result_id
from .metadata import MetadataStore


def step_descriptions(results: Iterable[tuple[str, str]], stores: dict[str | None, MetadataStore]) -> dict[str, str]:
    """key -> description, from ``results`` (key id, result id) pairs and the metadata stores by worker id
    (``None``: a store whose worker id is not known, used for any worker)."""
    out: dict[str, str] = {}
    for key, rid in results:
        if key in out:
            continue
        parts = split_result_id(rid)
        if parts is None:
            continue
        worker, ref = parts
        store = stores.get(worker) or stores.get(None)
        rec = store.records.get(ref.encode()) if store is not None else None     # (the cache model: text ids)
        desc = rec.values.get("cache.description") if rec is not None else None
        if isinstance(desc, str) and desc:
            out[key] = desc
    return out
