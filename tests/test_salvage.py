"""Salvage: torn files become valid files that keep every intact pair and invent none."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from boltkit.check import check_file
from boltkit.cli import main
from testdata import damage

from .conftest import corpus_files, corpus_id


def export(path) -> list[dict]:
    r = CliRunner().invoke(main, ["export", "-e", "hex", str(path)])
    return [json.loads(x) for x in r.stdout_bytes.splitlines()]


def pairs(recs) -> set[tuple]:
    return {(tuple(r["path"]), r["key"], r["value"]) for r in recs if r["type"] == "pair"}


@pytest.mark.parametrize("path", corpus_files("torn"), ids=corpus_id)
def test_torn_copy_salvages_to_a_file_bbolt_accepts(tmp_path, oracle, path):
    out = tmp_path / "rescued.db"
    r = CliRunner().invoke(main, ["salvage", str(path), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "new file checks clean" in r.output and "deserves review" in r.stderr
    assert check_file(out).clean
    assert oracle.check(out)[0] == 0
    # never invent: every pair is a key followed by its value somewhere in the source
    raw = path.read_bytes()
    rescued = export(out)
    assert all(bytes.fromhex(k) + bytes.fromhex(v) in raw for _, k, v in pairs(rescued))
    # keep everything intact: all a tolerant export of the source reads is in the rescued file, at its path or,
    # where its place is doubtful (disordered pages, redirected pointers, name clashes, plain keys in the root
    # bucket), under lost+found/<reason>/<its path>
    lf = b"lost+found".hex()
    have = {(p, k) for p, k, _ in pairs(rescued)}
    aside = {(p[2:], k) for p, k, _ in pairs(rescued) if p and p[0] == lf}
    missing = [(p, k) for p, k, _ in pairs(export(path)) if (p, k) not in have and (p, k) not in aside]
    assert not missing
    report = json.loads((tmp_path / "rescued.db.report.json").read_text())
    assert report["output_clean"] and sum(report["pairs"].values()) == len(pairs(rescued))


def test_sound_file_salvages_to_the_same_content(tmp_path, example_db):
    out = tmp_path / "s.db"
    r = CliRunner().invoke(main, ["salvage", "--no-lost-found", str(example_db), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert export(out) == export(example_db)


def test_damage_in_the_last_transaction_is_refilled_from_the_previous_one(tmp_path, example_db):
    from boltkit.storage import Database
    from boltkit.storage.pagemap import reachable_pages
    with Database(example_db) as db:
        new = reachable_pages(db, db.metas[1])
        old = reachable_pages(db, db.metas[0])
    # a leaf the last transaction wrote, whose bucket's previous version is still intact under meta 0
    target = next(p for p, (node, bucket) in sorted(new.items()) if node.is_leaf and p not in old and bucket.path)
    src = damage.copy(example_db, tmp_path / "c.db")
    damage.zero_page(src, target)
    assert export(src) != export(example_db)
    out = tmp_path / "s.db"
    r = CliRunner().invoke(main, ["salvage", "--no-lost-found", str(src), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "from meta 0 (txid 438)" in r.output
    lost = pairs(export(example_db)) - pairs(export(out))
    older = pairs(export_meta0(example_db))
    assert not (lost & older), "a pair the previous transaction still had was not recovered"


def export_meta0(path):
    r = CliRunner().invoke(main, ["export", "--meta", "0", "-e", "hex", str(path)])
    return [json.loads(x) for x in r.stdout_bytes.splitlines()]


def test_refuses_existing_output(tmp_path, example_db):
    out = tmp_path / "s.db"
    out.write_bytes(b"x")
    r = CliRunner().invoke(main, ["salvage", str(example_db), "-o", str(out)])
    assert r.exit_code == 8 and "already exists" in r.output and out.read_bytes() == b"x"


@pytest.mark.parametrize("case", ["zeroed page", "truncated", "swapped keys", "meta 1", "child beyond EOF",
                                  "inline count"])
def test_recovers_the_pairs_of_intact_leaves_and_invents_none(tmp_path, oracle_files, case):
    """The salvage campaign in small: at least 99 % of the pairs whose leaf page is intact come back (at
    their path, or under lost+found), and the live namespace holds no pair the file never had."""
    import random

    from boltkit.repair import salvage
    from testdata.campaign import damage_cases
    from testdata.recovery import measure
    for profile, seed in (("mixed", 3), ("buildkit", 4)):
        original = oracle_files(profile, seed)
        cases = dict(damage_cases(original, random.Random(seed)))
        if case not in cases:
            continue
        bad = damage.copy(original, tmp_path / f"{profile}-bad.db")
        cases[case](bad)
        out = tmp_path / f"{profile}-out.db"
        salvage(str(bad), str(out))
        rec = measure(original, bad, out)
        assert rec.share_intact >= 0.99, (profile, case, rec)
        assert rec.invented == 0, (profile, case, rec)
        assert check_file(out).clean


def test_in_place_salvage_keeps_the_original_and_refuses_a_held_file(tmp_path):
    import fcntl
    import os
    src = next(p for p in corpus_files("torn") if "cache-cp-during-build-73" in p.name)
    path = tmp_path / "cache.db"
    path.write_bytes(src.read_bytes())
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)           # a running buildkitd
    try:
        r = CliRunner().invoke(main, ["salvage", "--in-place", str(path)])
    finally:
        os.close(fd)
    assert r.exit_code == 8 and "locked by another process" in r.output
    assert path.read_bytes() == src.read_bytes() and len(list(tmp_path.iterdir())) == 1

    r = CliRunner().invoke(main, ["salvage", "--in-place", str(path)])
    assert r.exit_code == 0, r.output
    backup = next(tmp_path.glob("cache.db.boltkit-*.bak"))
    assert backup.read_bytes() == src.read_bytes()
    assert check_file(str(path)).clean
    assert json.loads(next(tmp_path.glob("cache.db.boltkit-*.report.json")).read_text())
    assert CliRunner().invoke(main, ["salvage", str(path)]).exit_code == 16          # -o or --in-place


def test_a_child_pointer_redirected_to_a_sub_bucket_root_invents_nothing(tmp_path):
    """A branch element of bucket `a` rewritten to point at bucket `b`'s root leaf, whose keys fall inside the
    range that element gives: that page is named twice (by the branch and by b's header), so which place is right
    is unknown, and its pairs must not come back under `a`, where they never were; they stay recoverable under
    lost+found."""
    import struct

    import boltkit
    from boltkit.repair import salvage
    from boltkit.schemas import ELEMENT_SIZE, PAGE_HEADER_SIZE
    from boltkit.write import BoltWriter
    from testdata.recovery import measure

    src = tmp_path / "src.db"
    w = BoltWriter(str(src), page_size=4096)
    w.begin_bucket(b"a", 0)
    for i in range(400):
        w.put(b"k%05d" % (2 * i), b"x" * 40)
    w.end_bucket()
    w.begin_bucket(b"b", 0)
    b_keys = [b"k%05d" % (2 * i + 1) for i in range(70, 90)]
    for k in b_keys:
        w.put(k, b"y" * 40)
    w.end_bucket()
    w.close()
    with boltkit.open(str(src)) as db:
        a, b = list(db.buckets())
        node = db.pager.node(a.root)
        assert node.is_branch and b.root and not b.inline
        lo, hi = (db.data[ks:ke] for ks, ke, _ in db.pager.branch_elements(node)[1:3])
        assert lo < b_keys[0] and b_keys[-1] < hi                  # b's keys fit where element 1 points
        element = a.root * 4096 + PAGE_HEADER_SIZE + 1 * ELEMENT_SIZE + 8      # branch element 1's pgid
    bad = damage.copy(src, tmp_path / "bad.db")
    damage.write_at(bad, element, struct.pack("<Q", b.root))
    out = tmp_path / "out.db"
    salvage(str(bad), str(out), report=False)
    got = pairs(export(out))
    assert not any(p[0] == ("61",) and bytes.fromhex(p[1]) in b_keys for p in got)   # no b pair under a
    assert {bytes.fromhex(p[1]) for p in got} >= set(b_keys)                       # all still recovered
    assert measure(src, bad, out).invented == 0
    assert check_file(out).clean


def test_two_torn_metas_nothing_orders_keep_only_what_both_agree_on_live(tmp_path, oracle, oracle_files):
    """Both metas torn, their txids garbled apart (the older one's now the larger), the same high-water mark and
    freelists that each list the other's root: nothing says which transaction is later. Salvage used to take the
    larger txid's tree whole, bringing the last transaction's deleted keys back to life; now the live namespace
    is exactly the later state's (what both trees agree on) and the rest waits under lost+found."""
    import boltkit
    from boltkit.repair import salvage
    from boltkit.schemas import META
    from boltkit.storage.meta import newer_meta

    src = oracle_files("deletes", 1)

    def pairs_of(path, **kw):
        with boltkit.open(str(path), **kw) as db:
            return {(b.path, i.key, bytes(db.value(i))) for b, c, i in db.walk() if c is None}
    with boltkit.open(str(src)) as db:
        old, new = sorted(db.metas, key=lambda m: m.txid)
    older, newer = pairs_of(src, meta=old.slot), pairs_of(src, meta=new.slot)
    assert older - newer and not newer - older          # the last transaction deleted keys
    bad = damage.copy(src, tmp_path / "bad.db")
    damage.set_meta_field(bad, old.slot, "txid", new.txid + 5)
    damage.set_meta_field(bad, new.slot, "txid", old.txid - 3)
    for slot in (0, 1):
        damage.flip_bits(bad, slot * old.page_size + 16 + META.offset_of("checksum"), 0x01)
    with boltkit.open(str(bad)) as db:
        a, b = db.metas
        assert not a.valid and not b.valid and newer_meta(a, b, db.data, db.file_size) is None
        assert db.meta.slot == old.slot                   # the ladder's pick is the older state
    out = tmp_path / "out.db"
    result = salvage(str(bad), str(out), report=False)
    got = pairs_of(out)
    live = {p for p in got if p[0][:1] != (b"lost+found",)}
    assert live == newer
    where = (b"lost+found", f"meta-{old.slot}-order-unknown".encode())
    aside = {(p[0][2:], p[1], p[2]) for p in got if p[0][:2] == where}
    assert aside == older - newer
    assert any("nothing in the file says which is the later transaction" in d for d in result.damage)
    assert oracle.check(out)[0] == 0
