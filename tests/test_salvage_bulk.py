"""Salvage of a sound file: its live tree copied in bulk (as compact copies it), with exactly the outcome of the
tolerant walk, and a file the tolerant walk would read differently never taken down the bulk path."""
from __future__ import annotations

import importlib

import pytest

from boltkit.schemas import ELEMENT_SIZE, PAGE_HEADER_SIZE
from boltkit.storage import Database
from boltkit.write import BoltWriter

from .conftest import corpus_files, corpus_id

salvage_mod = importlib.import_module("boltkit.repair.salvage")


def _outcome(r) -> tuple:
    return r.pairs, r.buckets, r.damage, r.orphan_pages, r.clean, r.input_pairs, r.output_pairs


def _content(path) -> list:
    with Database(str(path)) as db:
        return [(parent.path, item.key, child.sequence if child is not None else
                 bytes(db.data[item.value_start:item.value_end])) for parent, child, item in db.tree.walk(db.root())]


def _both(monkeypatch, tmp_path, src, **kw):
    """(bulk result, tolerant result, whether the bulk path ran): the same salvage with `intact_tree` as it is and
    with it forced to say no."""
    ran = []
    real = salvage_mod._copy_sound
    monkeypatch.setattr(salvage_mod, "_copy_sound", lambda *a: ran.append(1) or real(*a))
    bulk = salvage_mod.salvage(str(src), str(tmp_path / "bulk.db"), report=False, **kw)
    monkeypatch.setattr(salvage_mod, "intact_tree", lambda db, progress: None)
    tolerant = salvage_mod.salvage(str(src), str(tmp_path / "tolerant.db"), report=False, **kw)
    monkeypatch.undo()
    return bulk, tolerant, bool(ran)


SOUND = [p for p in corpus_files("sound") if p.stat().st_size < 3 << 20][:6]


@pytest.mark.parametrize("path", SOUND, ids=corpus_id)
def test_a_sound_store_is_copied_in_bulk_with_the_tolerant_walks_outcome(tmp_path, monkeypatch, oracle, path):
    bulk, tolerant, ran = _both(monkeypatch, tmp_path, path)
    assert ran
    assert _outcome(bulk) == _outcome(tolerant) and bulk.clean and not bulk.orphan_pages
    assert _content(tmp_path / "bulk.db") == _content(tmp_path / "tolerant.db")
    assert oracle.check(tmp_path / "bulk.db")[0] == 0
    assert oracle.dump(tmp_path / "bulk.db") == oracle.dump(path)      # #11: the dump of a sound file, unchanged


@pytest.mark.parametrize("profile,page_size", [("mixed", 4096), ("deep", 1024), ("large-values", 16384),
                                               ("nofreelist", 4096), ("leak", 4096), ("deletes", 65536)])
def test_oracle_files_bulk_equals_tolerant(tmp_path, monkeypatch, oracle, oracle_files, profile, page_size):
    """Leaked pages (B040) and a freelist bbolt does not store change nothing the live tree holds: bulk too."""
    src = oracle_files(profile, 1, page_size)
    bulk, tolerant, ran = _both(monkeypatch, tmp_path, src)
    assert ran and _outcome(bulk) == _outcome(tolerant)
    assert _content(tmp_path / "bulk.db") == _content(tmp_path / "tolerant.db")
    assert oracle.dump(tmp_path / "bulk.db") == oracle.dump(src)


def test_a_plain_key_at_the_root_takes_the_tolerant_path(tmp_path, monkeypatch):
    """bbolt has no place for a plain key in the root bucket: the tolerant walk keeps it under lost+found, which a
    bulk copy would not do; the check's B037 sends the file the tolerant way."""
    src = tmp_path / "rootkey.db"
    w = BoltWriter(str(src))
    for name in (b"a", b"b"):
        w.begin_bucket(name)
        w.put(b"k", b"v")
        w.end_bucket()
    w.close()
    with Database(str(src)) as db:
        root, ps = db.meta.root, db.page_size
    with open(src, "r+b") as f:          # the root leaf's second element: a bucket no more, a plain key
        f.seek(root * ps + PAGE_HEADER_SIZE + ELEMENT_SIZE)
        f.write(bytes(4))
    bulk, tolerant, ran = _both(monkeypatch, tmp_path, src)
    assert not ran and _outcome(bulk) == _outcome(tolerant)
    kept = {(path, key) for path, key, _ in _content(tmp_path / "bulk.db")}
    assert ((b"lost+found", b"root-bucket-keys"), b"b") in kept and ((b"a",), b"k") in kept


def test_freed_pages_wanted_take_the_tolerant_path(tmp_path, monkeypatch, oracle_files):
    """--include-freed: the freed pages' pairs go to lost+found, which only the tolerant path scans."""
    src = oracle_files("deletes", 1)
    bulk, tolerant, ran = _both(monkeypatch, tmp_path, src, include_freed=True)
    assert not ran and _outcome(bulk) == _outcome(tolerant)
    assert bulk.orphan_pages
    # without lost+found nothing outside the live tree is wanted: bulk again
    for p in tmp_path.glob("*.db"):
        p.unlink()
    bulk, tolerant, ran = _both(monkeypatch, tmp_path, src, include_freed=True, lost_found=False)
    assert ran and _outcome(bulk) == _outcome(tolerant)
