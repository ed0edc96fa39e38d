"""history.db: protobuf build records decoded from the wire format, checked, listed."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from boltkit.buildkit.history import check_history, decode_record, fields, load_history
from boltkit.cli import main
from boltkit.storage import Database
from testdata.buildkit import write_store
from testdata.trees import Bucket

from .conftest import corpus_files, corpus_id

HISTORY = [p for p in corpus_files() if p.name == "history.db" or "history" in p.name]


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field_bytes(num: int, payload: bytes) -> bytes:
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def field_int(num: int, value: int) -> bytes:
    return varint(num << 3) + varint(value)


def record(ref="r1", pinned=True) -> bytes:
    ts = field_int(1, 1764000000) + field_int(2, 500000000)
    return (field_bytes(1, ref.encode()) + field_bytes(2, b"dockerfile.v0") + field_bytes(6, ts) +
            field_bytes(7, field_int(1, 1764000003)) + field_int(14, int(pinned)) + field_int(15, 2) +
            field_int(16, 9) + field_int(17, 9) + field_bytes(5, field_int(1, 2) + field_bytes(2, b"failed to solve")) +
            field_bytes(13, b"\x0a\x03abc"))


def test_decodes_the_fields_users_ask_for():
    r = decode_record(b"r1", record())
    assert (r.ref, r.frontend, r.created_at, r.completed_at, r.pinned) == \
        ("r1", "dockerfile.v0", "2025-11-24T16:00:00.5Z", "2025-11-24T16:00:03Z", True)
    assert (r.num_cached_steps, r.num_total_steps, r.num_completed_steps, r.error) == (2, 9, 9, "failed to solve")
    assert r.other == {13: [b"\x0a\x03abc"]}      # unknown fields kept, never dropped
    assert r.duration == 2.5                    # what `buildkit history` shows as "took"
    assert decode_record(b"r2", field_bytes(1, b"r2")).duration is None     # no times: a duration is unknown


def test_wire_damage_is_reported_not_raised(tmp_path):
    good = record()
    tree = {b"_records": Bucket({b"r1": good, b"r2": good[:-3], b"r3": record("other")}),
            b"_version": Bucket({b"version": b"2"})}
    path = write_store(tmp_path / "history.db", tree)
    with Database(path) as db:
        recs = load_history(db)
    assert [p.code for p in check_history(recs)] == ["H1", "H2"]
    with pytest.raises(ValueError):
        list(fields(b"\x0a\x05ab"))


@pytest.mark.parametrize("path", HISTORY, ids=corpus_id)
def test_corpus_history_decodes(path):
    """Sound stores: every record decodes, names its own key and has its times; torn copies: read as far as
    they are intact, without raising."""
    damage: list = []
    with Database(path) as db:
        recs = load_history(db, on_damage=damage.append)
        if "torn-copies" in path.parts:
            return
        stored = sum(1 for _ in db.tree.items(db.tree.child(db.root(), db.tree.get(db.root(), b"_records"))))
    assert len(recs) == stored > 0 and not damage
    assert check_history(recs) == []
    assert all(r.created_at and r.completed_at and r.num_total_steps >= r.num_completed_steps for r in recs)


def test_history_cli():
    path = [p for p in HISTORY if "01-after-30" in str(p)][0]
    r = CliRunner().invoke(main, ["buildkit", "history", str(path)])
    assert r.exit_code == 0 and r.output.endswith("30 build record(s)\n")
    out = CliRunner().invoke(main, ["buildkit", "history", "--json", str(path)]).output
    recs = [json.loads(x) for x in out.splitlines()]
    assert len(recs) == 30 and all(x["ref"] == x["key"] for x in recs)
