"""The meta ladder and salvage's floor, against real bbolt: files whose metas lie (page sizes, checksums,
pages 0-1 gone) are read through whatever rung holds, files cut inside their last page are read as bbolt
reads them, and salvage never writes a file with fewer pairs than the input's tolerant read."""
from __future__ import annotations

import json
import struct

import pytest
from click.testing import CliRunner

from boltkit.check.checker import check_file
from boltkit.cli import main
from boltkit.storage import Database
from testdata import damage

from .conftest import corpus_files, corpus_id

SOUND = corpus_files("sound")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def export_lines(path, *extra) -> bytes:
    return run("export", "-e", "hex", *extra, path).stdout_bytes


def pair_set(dump: bytes) -> set:
    recs = [json.loads(x) for x in dump.splitlines()]
    return {(tuple(r["path"]), r["key"], r["value"]) for r in recs if r.get("type", r.get("kind")) == "pair"}


def salvaged_pairs(path) -> set:
    """(path, key, value) of a salvaged file, lost+found's prefix taken off."""
    lf = b"lost+found".hex()
    out = set()
    for p, k, v in pair_set(export_lines(path)):
        out.add((p[2:] if p and p[0] == lf else p, k, v))
    return out


def set_page_size(path, index, ps, base_ps=4096):
    """Meta ``index``'s page size field, checksum fixed (the meta sits at index * base_ps)."""
    from boltkit.schemas import META_OFFSET, fnv1a64
    from boltkit.schemas.layout import META, META_CHECKSUMMED
    base = index * base_ps + META_OFFSET
    data = bytearray(path.read_bytes()[base:base + META.size])
    struct.pack_into("<I", data, META.offset_of("page_size"), ps)
    struct.pack_into("<Q", data, META_CHECKSUMMED, fnv1a64(bytes(data[:META_CHECKSUMMED])))
    damage.write_at(path, base, bytes(data))


@pytest.fixture
def source(oracle_files):
    return oracle_files("buildkit", 7)


@pytest.mark.parametrize("case", ["meta0 12288", "both 2048", "both 4097", "both checksums", "pages 0-1 zeroed",
                                  "meta 1 overwritten, meta 0 checksum"])
def test_lying_metas_are_read_through_the_ladder_and_salvaged_whole(tmp_path, oracle, source, case):
    bad = damage.copy(source, tmp_path / "bad.db")
    if case == "meta0 12288":
        set_page_size(bad, 0, 12288)
    elif case.startswith("both 4") or case.startswith("both 2"):
        ps = int(case.split()[1])
        set_page_size(bad, 1, ps)
        set_page_size(bad, 0, ps)
    elif case == "both checksums":
        damage.damage_meta(bad, 1)
        damage.damage_meta(bad, 0)
    elif case == "pages 0-1 zeroed":
        damage.write_at(bad, 0, bytes(8192))
    else:
        damage.write_at(bad, 4096, b"\xab" * 4096)
        damage.damage_meta(bad, 0)
    with Database(bad) as db:
        read = db.meta.index
    # the tree read is the newest one whenever a meta that names it can be believed
    newest = run("info", "--json", source)
    newest = json.loads(newest.output)["current_meta"]
    if case in ("meta0 12288", "both 2048", "both 4097"):
        assert read == newest
    expected = oracle.dump(source) if read in (newest, None) else export_lines(source, "--meta", read)
    ours = run("export", "-e", "hex", bad)
    assert ours.exit_code == 1 and "Error: " in ours.stderr, ours.output[-500:]    # said, never silent
    if case != "pages 0-1 zeroed":
        assert ours.stdout_bytes == expected, case          # the newest tree, read as a sound file would be
    else:
        assert pair_set(ours.stdout_bytes) <= pair_set(expected)
    assert run("check", bad).exit_code in (1, 4)
    r = run("info", bad)
    assert "page size:    4096" in r.output
    # salvage in place: every pair of the original, none lost from the live path, a file bbolt accepts
    live = tmp_path / "live.db"
    live.write_bytes(bad.read_bytes())
    r = run("salvage", "--in-place", live)
    assert r.exit_code == 0, r.output
    assert "nothing readable" not in r.output
    assert oracle.check(live)[0] == 0
    assert pair_set(expected) <= salvaged_pairs(live)
    if case != "pages 0-1 zeroed":      # the live namespace is the tree read; a lost meta slot adds lost+found
        lf = b"lost+found".hex()
        assert {p for p in pair_set(export_lines(live)) if not p[0] or p[0][0] != lf} == pair_set(expected)


def test_page_size_must_be_a_power_of_two_in_range(tmp_path, source):
    from boltkit.storage.meta import trusted_page_size
    assert all(trusted_page_size(1 << i) for i in range(9, 17))
    assert not any(trusted_page_size(x) for x in (256, 4097, 12288, 1 << 17, 0))
    bad = damage.copy(source, tmp_path / "bad.db")
    set_page_size(bad, 0, 12288)
    with Database(bad) as db:
        assert db.page_size == 4096 and db.choice.rung in ("bbolt", "checksum")
        assert any("12288" in f for f in db.metas[0].soft) and not db.metas[0].usable


def test_copy_cut_inside_its_last_page_reads_as_bbolt_does(tmp_path, oracle, oracle_files):
    """Cut a few bytes off the end: where bbolt still opens, checks and dumps the file, boltkit's export is
    bbolt's dump (the newest transaction, never the previous one), and exits 0."""
    tried = agreed = 0
    for profile, seed in (("mixed", 2), ("buildkit", 3), ("deletes", 1), ("mixed", 5), ("deep", 1)):
        src = oracle_files(profile, seed)
        for cut in (1, 100, 4000):
            bad = damage.copy(src, tmp_path / "cut.db")
            damage.truncate(bad, src.stat().st_size - cut)
            proc = oracle.run("dump", bad, check=False)
            if proc.returncode != 0:
                continue
            tried += 1
            ours = run("export", "-e", "hex", bad)
            assert ours.stdout_bytes == proc.stdout, (profile, seed, cut)
            with Database(bad) as db:
                assert db.choice.rung == "bbolt" and db.meta is db.choice.bbolt
            if ours.exit_code == 0:
                agreed += 1
    assert tried >= 5 and agreed == tried


def test_older_transaction_than_bbolt_is_damage(tmp_path, example_db):
    """The newer meta bbolt reads has its root page overwritten: we read the older one, and say so (exit 1)."""
    bad = damage.copy(example_db, tmp_path / "c.db")
    with Database(bad) as db:
        new = db.meta
    damage.zero_page(bad, new.root)
    r = run("export", "--count", bad)
    assert r.exit_code == 1 and "older transaction than bbolt" in r.stderr
    assert "B004" in run("check", bad).output


@pytest.mark.parametrize("src", SOUND, ids=corpus_id)
def test_salvage_of_a_sound_store_is_its_dump_without_lost_found(tmp_path, oracle, src):
    """Every sound corpus store, freed pages and all: the salvaged file's dump is the store's, nothing comes
    back from the freed pages, and the report counts what the file holds."""
    out = tmp_path / "s.db"
    r = run("salvage", src, "-o", out)
    assert r.exit_code == 0, r.output
    assert oracle.dump(out) == oracle.dump(src)
    assert b"lost+found".hex().encode() not in export_lines(out)
    report = json.loads((tmp_path / "s.db.report.json").read_text())
    assert report["output_pairs"] == report["input_pairs"] == len(pair_set(oracle.dump(src)))


# what zeros read as elements of a cut page are to boltkit's check: bad bounds, keys out of order or repeated,
# empty keys, an inline bucket that does not fit its value
ZEROS_READ_AS_ELEMENTS = {"B030", "B031", "B032", "B034", "B036"}


def _bbolt_variants(src, rng):
    """Copies bbolt still opens: cut inside the file's last page, cut inside the last page below the high-water
    mark (a torn `cp`), and the newer meta broken (checksum, overwritten) so that bbolt reads the older one."""
    with Database(src) as db:
        ps, hwm, size, newest = db.page_size, db.hwm, db.file_size, db.meta.index
    return {
        "cut inside the last page": lambda p: damage.truncate(p, size - rng.randrange(1, ps)),
        "cut inside the last used page": lambda p: damage.truncate(p, min(size, hwm * ps) - rng.randrange(1, ps)),
        "newer meta checksum": lambda p: damage.damage_meta(p, newest),
        "newer meta overwritten": lambda p: damage.write_at(p, newest * ps, bytes(rng.randrange(256)
                                                                                 for _ in range(ps))),
    }


@pytest.mark.parametrize("src", SOUND, ids=corpus_id)
def test_copies_bbolt_opens_and_checks_clean_read_as_its_dump(tmp_path, oracle, src):
    """Every sound corpus store, cut inside its last page or with its newer meta broken: wherever bbolt opens
    the copy and its tx.Check passes, boltkit's export is bbolt's dump and exits 0 (a cut inside the tree warns
    on stderr). One deviation, said: a cut through a leaf's elements or keys leaves zeros there, which bbolt
    1.3.6 reads as elements (empty keys, keys out of order, so that its cursor then misses keys) and its check does
    not look at; there boltkit's check names the damage at the cut page and the export says so (exit 1)."""
    import random
    compared = 0
    for name, apply in _bbolt_variants(src, random.Random(src.name)).items():
        bad = damage.copy(src, tmp_path / "copy.db")
        apply(bad)
        if oracle.check(bad)[0] != 0:
            continue
        dump = oracle.run("dump", bad, check=False)
        if dump.returncode != 0:
            continue
        ours = run("export", "-e", "hex", bad)
        compared += 1
        if ours.stdout_bytes == dump.stdout:
            assert ours.exit_code == 0, (name, ours.stderr[-500:])
            continue
        cut_page = bad.stat().st_size // 4096
        codes = {p.code for p in check_file(bad).problems if p.pgid == cut_page}
        assert name.startswith("cut") and codes & ZEROS_READ_AS_ELEMENTS, (name, codes)
        assert ours.exit_code == 1 and "damage: page %d" % cut_page in ours.stderr, name
    assert compared >= 3


@pytest.mark.parametrize("profile,seed", [("deletes", 1), ("deletes", 2), ("deep", 2), ("mixed", 3)])
def test_no_meta_the_root_is_a_committed_state_not_an_old_freed_tree(tmp_path, oracle, oracle_files, profile, seed):
    """Pages 0-1 zeroed: the rebuilt root is the (root, freelist) pair that partitions the file, so the tree
    read is one of the two last committed states (the newest where pages show it), never an older freed root
    whose tree brings deleted keys back into the live namespace. Where nothing orders the two (each freelist
    lists the other's root), salvage keeps live only the pairs both agree on, and the rest in lost+found."""
    src = oracle_files(profile, seed)
    states = [pair_set(export_lines(src, "--meta", 0)), pair_set(export_lines(src, "--meta", 1))]
    bad = damage.copy(src, tmp_path / "bad.db")
    damage.write_at(bad, 0, bytes(8192))
    with Database(bad) as db:
        assert db.choice.rung == "rebuilt" and db.meta.has_freelist
        assert "0 reached page(s) listed free, 0 tree page(s) neither reached nor free" in db.meta.notes[0]
        unordered = db.meta.tied_root is not None
    assert pair_set(export_lines(bad)) in states
    out = tmp_path / "out.db"
    assert run("salvage", bad, "-o", out).exit_code == 0
    lf = b"lost+found".hex()
    got = pair_set(export_lines(out))
    live = {p for p in got if not p[0] or p[0][0] != lf}
    assert (live == states[0] & states[1]) if unordered else (live in states)
    assert {(k, v) for _, k, v in states[0] | states[1]} <= {(k, v) for _, k, v in got}   # nothing lost
    assert oracle.check(out)[0] == 0


def test_two_torn_metas_are_ordered_by_the_high_water_mark(tmp_path, oracle, oracle_files):
    """Both checksums fail and the txids are garbled the wrong way round; the freelists list each other's roots
    (no witness): the meta with the higher high-water mark is the later transaction, as bbolt never lowers it."""
    for seed in range(1, 8):
        src = oracle_files("mixed", seed)
        with Database(src) as db:
            new, old = db.meta, db.other_meta
        if new.pgid > old.pgid:
            break
    else:
        raise AssertionError("no generated file grew in its last transaction")
    bad = damage.copy(src, tmp_path / "bad.db")
    damage.set_meta_field(bad, new.index, "txid", old.txid - 1)         # the newer one now says it is older
    damage.damage_meta(bad, new.index)                                 # and fails its checksum,
    damage.damage_meta(bad, old.index)                                 # as does the older one
    with Database(bad) as db:
        assert db.choice.rung == "checksum" and db.meta.index == new.index
    assert pair_set(export_lines(bad)) == pair_set(oracle.dump(src))


def test_a_lost_meta_slot_salvages_the_later_state_the_pages_hold(tmp_path, oracle, oracle_files):
    """The newer meta overwritten with garbage: bbolt reads the older transaction. Salvage finds the later
    state in the pages (its tree reaches past the older meta's high-water mark), takes its pairs first, and
    puts the keys that transaction deleted in lost+found, not back in the live namespace."""
    tried = 0
    for profile, seed in (("mixed", 1), ("mixed", 2), ("mixed", 3), ("deep", 1)):
        src = oracle_files(profile, seed)
        with Database(src) as db:
            new, old = db.meta, db.other_meta
        if new.pgid <= old.pgid:
            continue
        tried += 1
        bad = damage.copy(src, tmp_path / "bad.db")
        damage.write_at(bad, new.index * 4096, bytes(range(256)) * 16)
        assert pair_set(export_lines(bad)) == pair_set(export_lines(src, "--meta", old.index))    # as bbolt
        out = tmp_path / "out.db"
        if out.exists():
            out.unlink()
        r = run("salvage", bad, "-o", out)
        assert r.exit_code == 0, r.output
        report = json.loads((tmp_path / "out.db.report.json").read_text())
        assert any(d.startswith("meta slot lost: the pages hold a later state") for d in report["damage"])
        (tmp_path / "out.db.report.json").unlink()
        lf = b"lost+found".hex()
        got = pair_set(export_lines(out))
        assert {p for p in got if not p[0] or p[0][0] != lf} == pair_set(oracle.dump(src)), (profile, seed)
        older = pair_set(export_lines(src, "--meta", old.index))
        deleted = {(p, k) for p, k, _ in older} - {(p, k) for p, k, _ in pair_set(oracle.dump(src))}
        aside = {(p[2:], k) for p, k, _ in got if p and p[0] == lf and p[1] == f"txid-{old.txid}-deleted-since"
                 .encode().hex()}
        assert deleted <= aside
        assert oracle.check(out)[0] == 0
    assert tried >= 2


def test_salvage_never_gives_fewer_pairs_than_the_tolerant_read(tmp_path, source):
    """Over every damage class of both campaigns (the checker's and the meta ladder's), in place and not: the
    output holds at least as many pairs as the input's tolerant read, and a file with nothing readable is refused
    (exit 8) and left as it was."""
    import random

    from testdata.campaign import damage_cases, salvage_cases
    src = source
    rng = random.Random(4)
    for name, apply in damage_cases(src, rng) + salvage_cases(src, rng):
        bad = damage.copy(src, tmp_path / "bad.db")
        apply(bad)
        before = bad.read_bytes()
        tolerant = len({(p, k) for p, k, _ in pair_set(export_lines(bad))})
        out = tmp_path / "out.db"
        if out.exists():
            out.unlink()
        r = run("salvage", bad, "-o", out)
        if r.exit_code == 8:
            assert not out.exists() and tolerant == 0, (name, r.output)
            continue
        assert r.exit_code == 0, (name, r.output)
        assert len(pair_set(export_lines(out))) >= tolerant, name
        r = run("salvage", "--in-place", bad)
        assert r.exit_code == 0, (name, r.output)
        assert len(pair_set(export_lines(bad))) >= tolerant, name
        for f in tmp_path.glob("bad.db.boltkit-*"):
            f.unlink()
    # nothing readable: every tree page gone, metas intact
    bad = damage.copy(src, tmp_path / "gone.db")
    with Database(bad) as db:
        ps, n = db.page_size, db.file_size // db.page_size
    damage.write_at(bad, 2 * ps, bytes((n - 2) * ps))
    before = bad.read_bytes()
    r = run("salvage", "--in-place", bad)
    assert r.exit_code == 8 and "nothing readable" in r.output
    assert bad.read_bytes() == before and sorted(p.name for p in tmp_path.glob("gone.db*")) == ["gone.db"]


def _nested_chain(path, depth):
    from boltkit.write import BoltWriter
    w = BoltWriter(str(path), page_size=4096)
    for i in range(depth):
        w.begin_bucket(b"b%05d" % i, 0)
        w.put(b"a", b"v%d" % i)
    for _ in range(depth):
        w.end_bucket()
    w.close()


def _calls(fn, *args):
    """fn(*args) and the function calls (Python and C) it made: a count of work that does not depend on the
    machine's load, where a CPU-time ratio failed CI on a busy runner. Time is the benchmark's row (depth)."""
    import sys
    n = 0

    def count(frame, event, arg):
        nonlocal n
        n += event in ("call", "c_call")
    sys.setprofile(count)
    try:
        result = fn(*args)
    finally:
        sys.setprofile(None)
    return result, n


def test_salvage_is_linear_in_nesting_depth(tmp_path):
    """A chain of nested buckets: salvage's work (walk, write, check of the new file) doubles when the depth doubles,
    and stays within 2.5x compact's on the same file. A walk that re-reads the path per level grows 4x instead."""
    from boltkit.repair import compact, salvage
    work = {}
    for depth in (100, 200):
        src = tmp_path / f"deep{depth}.db"
        _nested_chain(src, depth)
        r, work[depth] = _calls(salvage, str(src), str(tmp_path / f"s{depth}.db"))
        assert r.clean and r.output_pairs == depth and r.buckets == depth
        _, compact_work = _calls(compact, str(src), str(tmp_path / f"c{depth}.db"))
        assert work[depth] <= 2.5 * compact_work, (depth, work[depth], compact_work)
    assert work[200] <= 2.3 * work[100], work


def test_a_page_size_probed_past_meta_0_is_a_typed_warning_and_a_b002(tmp_path, example_db):
    """Meta 0 says a page size the pages deny: the size is taken from meta 1, the choice's warning says so with a
    kind a caller tests (not its text), and the check turns exactly that warning into a B002 of its own."""
    from boltkit.storage.meta import ChoiceWarning
    db_path = damage.copy(example_db, tmp_path / "ps.db")
    damage.set_meta_field(db_path, 0, "page_size", 1000)
    with Database(db_path) as db:
        kinds = [w.kind for w in db.choice.warnings]
        said = [str(w) for w in db.choice.warnings if w.kind == ChoiceWarning.PAGE_SIZE]
    assert kinds == [ChoiceWarning.PAGE_SIZE] and db.page_size == 4096
    b002 = [p.message for p in check_file(str(db_path)).problems if p.code == "B002" and p.pgid is None]
    assert b002 == said
