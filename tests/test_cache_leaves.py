"""cache.db's columns read a chunk of the structural pass at a time (buildkit/cacheleaves.py): whatever the
chunks, the columns are the same, down to the numbering of the names, and say what the object decoder says.

A chunk of one leaf page (``TreeScan.CHUNK_ELEMENTS`` = 1) puts an id bucket's entry in one call and its
entries, and every other mention of its name, in others: the bucket is numbered by the pass between the
calls, interned before it is placed, and its strings are met first in every possible order."""
from __future__ import annotations

from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from boltkit.buildkit import check_cache_db, load_cache_columns
from boltkit.check.scan import TreeScan
from boltkit.storage import Database
from boltkit.storage.strings import Interner
from testdata.buildkit import clean_tree, link_key, write_store

from .conftest import corpus_files, corpus_id
from .reference_cachecheck import check_cache_store, problem_rows
from .reference_cachecheck import load_cache_store as load_plainly
from .test_buildkit_cache import cache_trees, same_store

ARRAYS = ("links_ids", "results_ids", "byresult_ids", "backlinks_ids", "link_src", "link_tgt", "link_spelled",
          "result_kid", "result_rid", "byresult_rid", "byresult_kid", "backlink_tgt", "backlink_src")


def columns(path, chunk: int | None = None):
    with Database(path) as db:
        if chunk is None:
            return load_cache_columns(db, on_damage=lambda e: None)
        with patch.object(TreeScan, "CHUNK_ELEMENTS", chunk):
            return load_cache_columns(db, on_damage=lambda e: None)


def same_columns(a, b) -> None:
    assert a.names.all_bytes() == b.names.all_bytes()
    for name in ARRAYS:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for name in ("link_key", "result_value"):
        assert [a.raw(getattr(a, name), i) for i in range(getattr(a, name)[0].size)] == \
            [b.raw(getattr(b, name), i) for i in range(getattr(b, name)[0].size)], name
    assert (a.top, a.foreign_top, a.anomalies) == (b.top, b.foreign_top, b.anomalies)
    assert a.link_errors == b.link_errors and a.result_errors == b.result_errors
    assert a.id_sequences.keys() == b.id_sequences.keys()
    assert all(np.array_equal(a.id_sequences[k], b.id_sequences[k]) for k in a.id_sequences)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(tree=cache_trees())
def test_columns_read_a_page_at_a_time_are_the_columns(tmp_path_factory, tree):
    path = write_store(tmp_path_factory.mktemp("leaves") / "cache.db", tree)
    small = columns(path, chunk=1)
    same_columns(small, columns(path))
    with Database(path) as db:
        same_store(small.to_store(), load_plainly(db))


@pytest.mark.parametrize("path", [p for p in corpus_files("sound") if p.name == "cache.db"], ids=corpus_id)
def test_corpus_columns_do_not_depend_on_the_chunks(path):
    """(Not on the torn copies: which of two nodes naming one page the structural pass keeps depends on
    its chunks, as it always did.)"""
    same_columns(columns(path, chunk=7), columns(path))


def test_a_page_at_a_time_on_a_store_with_paged_id_buckets(tmp_path):
    """Id buckets with pages of their own (300 links): their entries come a level later than their names."""
    t = clean_tree()
    sub = t[b"_links"].children
    for k in list(sub)[:2]:
        sub[k].children.update({link_key(f"{i:025d}"): b"" for i in range(300)})
    path = write_store(tmp_path / "cache.db", t)
    same_columns(columns(path, chunk=1), columns(path))
    with Database(path) as db, patch.object(TreeScan, "CHUNK_ELEMENTS", 1):
        assert problem_rows(check_cache_db(db)) == problem_rows(check_cache_store(load_plainly(db)))


def test_interner_numbers_strings_by_first_place_whatever_order_they_are_added():
    """Codes follow the places strings stand at (list, then position), not the order they were met; a
    string added but never placed gets no code; equal strings added apart share one."""
    words = [b"b", b"a", b"ccc", b"a", b"", b"dd" * 40, b"b"]
    it = Interner()
    late = it.add_bytes(words[:3])                          # met first, placed last
    early = it.add_bytes(words[3:], Interner.where(0, np.arange(4)))
    it.place(late, Interner.where(1, np.arange(3)))
    stray = it.add_bytes([b"never placed"])
    rank, names = it.finish()
    assert names.all_bytes() == [b"a", b"", b"dd" * 40, b"b", b"ccc"]
    assert rank[early].tolist() == [0, 1, 2, 3] and rank[late].tolist() == [3, 0, 4] and rank[stray[0]] == -1
