"""metadata_v2.db: every record of the real stores decodes; one test per M code on a store carrying
exactly that defect; fsck predicts what buildkitd does with them."""
from __future__ import annotations

import pytest

from boltkit.buildkit.metadata import check_metadata_store, load_metadata_store
from boltkit.storage import Database
from testdata.buildkit import BASE, LAYER, MERGE, OTHER, clean_metadata_tree, env, write_store
from testdata.trees import Bucket

from .conftest import corpus_files, corpus_id


def codes_of(tmp_path, tree) -> dict[str, int]:
    path = write_store(tmp_path / "metadata_v2.db", tree)
    with Database(path) as db:
        problems = check_metadata_store(load_metadata_store(db), str(path))
    out: dict[str, int] = {}
    for p in problems:
        out[p.code] = out.get(p.code, 0) + 1
    return out


def rec(t, rid):
    return t[b"_main"].children[rid.encode()].children


def test_clean_store_reports_nothing(tmp_path):
    assert codes_of(tmp_path, clean_metadata_tree()) == {}


DEFECTS = {
    "M1": lambda t: t.update({b"_foreign": Bucket()}),
    "M2": lambda t: t[b"_main"].children.update({b"plain0000000000000000000ee": b"x"}),
    "M3": lambda t: rec(t, LAYER).update({b"cache.description": b"not json"}),
    "M4": lambda t: rec(t, LAYER).update({b"cache.parent": env("gone00000000000000000000ff")}),
    "M5": lambda t: rec(t, BASE).update({b"cache.parent": env(MERGE)}),
    "M6": lambda t: rec(t, LAYER).update({b"cache.mergeParents": env([BASE, OTHER])}),
    "M7": lambda t: rec(t, BASE).update({b"snapshot.committed": env(False)}),
    "M8": lambda t: rec(t, OTHER).update({b"cache.equalMutable": env("gone00000000000000000000ff")}),
    "M13": lambda t: rec(t, BASE).update({b"cache.chainID": env("sha256:" + "12" * 32, "chainid:x")}),
    "M10": lambda t: t[b"_index"].children.update({b"cache-dir:nocolons": b""}),
    "M11": lambda t: t[b"_external"].children.update({b"gone00000000000000000000ff": Bucket({b"filelist": b"[]"})}),
    "M12": lambda t: rec(t, BASE).update({b"snapshot.size": env(-5)}),
    "M14": lambda t: rec(t, OTHER).update({b"cache.deleted": env(True)}),
}


@pytest.mark.parametrize("code", sorted(DEFECTS))
def test_each_code_is_reported_for_its_defect(tmp_path, code):
    t = clean_metadata_tree()
    DEFECTS[code](t)
    found = codes_of(tmp_path, t)
    assert code in found, found


def test_payload_type_and_index_variants(tmp_path):
    t = clean_metadata_tree()
    rec(t, OTHER)[b"snapshot.committed"] = env(1)            # a number where Go wants a bool
    rec(t, OTHER)[b"cache.blobsize"] = env(True)              # a bool where Go wants a number
    del t[b"_index"].children[next(iter(t[b"_index"].children))]   # the chain index entry goes missing
    t[b"_index"].children[b"chainid:x::gone00000000000000000000ff"] = b""
    # Go reads the mistyped snapshot.committed as false: OTHER counts as mutable, so its child MERGE gets M7
    assert codes_of(tmp_path, t) == {"M3": 2, "M10": 2, "M7": 1}


@pytest.mark.parametrize("path", [p for p in corpus_files() if p.name == "metadata_v2.db" or "metadata_v2" in p.name],
                         ids=corpus_id)
def test_corpus_metadata_decodes_completely(path):
    """Sound stores: every value decodes and nothing is wrong. Torn copies: read as far as they are intact."""
    with Database(path) as db:
        store = load_metadata_store(db, on_damage=lambda e: None)
    problems = check_metadata_store(store)
    if "torn-copies" not in path.parts:
        assert all(not r.raw and not r.nested for r in store.records.values())
        assert problems == []
        assert all("cache.createdAt" in r.values for r in store.records.values())


@pytest.mark.parametrize("code,prediction", [("M3", ("refuses", 8)), ("M5", ("crashes", 8)),
                                             ("M4", ("starts", 4))])
def test_fsck_predicts_what_buildkitd_does_with_the_records(tmp_path, code, prediction):
    import json
    import shutil

    from click.testing import CliRunner

    from boltkit.cli import main
    root = tmp_path / "buildkit"
    worker = root / "runc-overlayfs"
    worker.mkdir(parents=True)
    shutil.copyfile(corpus_files("sound")[0].parent / "cache.db", root / "cache.db")
    (worker / "workerid").write_text("x03o8ykcb5gi9f4j2ygkwwsgx")
    t = clean_metadata_tree()
    DEFECTS[code](t)
    write_store(worker / "metadata_v2.db", t)
    r = CliRunner().invoke(main, ["buildkit", "fsck", "--json", str(root)])
    final = json.loads(r.output.splitlines()[-1])
    assert (final["outcome"], r.exit_code & 8 or 4) == prediction, r.output
    if code == "M4":    # the record whose parent is missing is cleared, with its descendants
        assert any(k["what"] == "record" and k["why"] == "parent-not-loaded" for k in final["by_kind"])


def test_fsck_names_orphan_leases_and_unprotected_records(tmp_path):
    """M16: a lease of no record leaks what it holds; M15: a record without a lease is not GC-protected.
    Temporary leases and -variants/-view leases of live records are fine."""
    import json

    from click.testing import CliRunner

    from boltkit.cli import main
    root = tmp_path / "buildkit"
    worker = root / "runc-overlayfs"
    worker.mkdir(parents=True)
    (worker / "workerid").write_text("x03o8ykcb5gi9f4j2ygkwwsgx")
    write_store(worker / "metadata_v2.db", clean_metadata_tree())

    def lease(*labels, snaps=1):
        return Bucket({b"labels": Bucket({lb.encode(): b"" for lb in labels}),
                       b"snapshots": Bucket({b"overlayfs": Bucket({f"k{i}".encode(): b"" for i in range(snaps)})})})
    held = {BASE: lease("containerd.io/gc.flat"), BASE + "-variants": lease(), LAYER + "-view": lease(),
            MERGE: lease(), OTHER: lease(), LAYER: lease(),
            "tmp0000000000000000000000a": lease("buildkit/lease.temporary"),
            "gone00000000000000000000ff": lease(snaps=3)}
    del held[OTHER]
    tree = {b"v1": Bucket({b"buildkit": Bucket({b"leases": Bucket({k.encode(): v for k, v in held.items()})})})}
    write_store(worker / "containerdmeta.db", tree)
    r = CliRunner().invoke(main, ["buildkit", "fsck", "--json", str(root)])
    recs = [json.loads(x) for x in r.output.splitlines()]
    cross = {(x["code"], x["key"]) for x in recs if x.get("code") in ("M15", "M16")}
    assert cross == {("M16", "gone00000000000000000000ff"), ("M15", OTHER)}
    # the orphan lease stays (startup case 24), the temporary lease goes, M15/M16 are warnings
    assert r.exit_code == 0 and "--strict" and CliRunner().invoke(
        main, ["buildkit", "fsck", "--strict", str(root)]).exit_code == 4
    assert [(k["what"], k["why"], k["count"]) for k in recs[-1]["by_kind"] if k["what"] == "lease"] == \
        [("lease", "temporary-lease", 1)]
