"""`boltkit stats` against bbolt's own BucketStats (the Go oracle's `stats`, summed as `bbolt stats` sums
them): every field of every top-level bucket and of the total, on the real stores and on generated files
with deep nesting, where bbolt's depth adds a sub-bucket's levels to its parent's."""
from __future__ import annotations

import json

import pytest

from boltkit.storage import Database
from boltkit.storage.stats import gather_stats

from .conftest import corpus_files, corpus_id


def ours(path) -> dict:
    with Database(str(path)) as db:
        st = gather_stats(db)
    out = {None: st.total.as_dict()}
    out.update({k.hex(): v.as_dict() for k, v in st.by_top_bucket.items()})
    return out


def theirs(oracle, path) -> dict:
    lines = [json.loads(x) for x in oracle.run("stats", path).stdout.splitlines()]
    return {rec.pop("bucket"): rec for rec in lines}


@pytest.mark.parametrize("path", corpus_files("sound"), ids=corpus_id)
def test_stats_equal_bbolts_on_real_stores(oracle, path):
    assert ours(path) == theirs(oracle, path)


@pytest.mark.parametrize("profile,seed", [("deep", 1), ("deep", 2), ("mixed", 3), ("buildkit", 4)])
def test_stats_equal_bbolts_on_generated_files(oracle, oracle_files, profile, seed):
    path = oracle_files(profile, seed)
    assert ours(path) == theirs(oracle, path)


def test_depth_adds_nested_levels(oracle, oracle_files):
    """The case the issue names: bbolt says 4 where a maximum over pages says 2."""
    path = oracle_files("deep", 1)
    total = ours(path)[None]
    assert total["depth"] == theirs(oracle, path)[None]["depth"] > 2
