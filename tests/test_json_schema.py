"""Every command's --json output against docs/json.md: each record names its kind in `type`, and each kind has
one schema, whichever command prints it. The commands run on a BuildKit root of the corpus, its stores, a
torn copy, and what salvage and compact write; every line they print must validate against its kind's schema
as the document states it (the schemas are read from the document itself, not copied here)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from boltkit.cli import main

from .conftest import CORPUS, ROOT

DOC = ROOT / "docs" / "json.md"
BUILDKIT_ROOT = CORPUS / "daemon1-overlayfs" / "01-after-30-builds"
TORN_CACHE = CORPUS / "torn-copies" / "daemon1-cache-slowcopy-during-build-354.db"
TORN_METADATA = CORPUS / "torn-copies" / "daemon1-overlayfs-metadata_v2-slowcopy-during-build-308.db"
PLACEHOLDERS = {"change", "prediction", "plan", "note", "repair"}   # kinds the start model and repairs settle


def schemas() -> dict[str, jsonschema.protocols.Validator]:
    """kind -> a validator for it, from the ```json blocks of docs/json.md (blocks titled "$defs" are shared)."""
    defs, kinds = {}, {}
    for block in re.findall(r"```json\n(.*?)\n```", DOC.read_text(), re.S):
        schema = json.loads(block)
        title = schema.pop("title")
        if title == "$defs":
            defs.update(schema)
        else:
            assert title not in kinds, f"two schemas for {title}"
            kinds[title] = schema
    out = {}
    for kind, schema in kinds.items():
        full = dict(schema, **{"$defs": defs})
        jsonschema.Draft202012Validator.check_schema(full)
        out[kind] = jsonschema.Draft202012Validator(full)
    return out


SCHEMAS = schemas()


def records(*args, exit_codes=(0,)) -> list[dict]:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), (args, r.exception)
    assert r.exit_code in exit_codes, (args, r.exit_code, r.output[-2000:])
    lines = r.stdout_bytes.decode().splitlines()
    assert lines, f"{args}: no JSON printed"
    return [json.loads(line) for line in lines]


def invalid(rec: dict) -> list[str]:
    kind = rec.get("type")
    if kind not in SCHEMAS:
        return [f"record without a known type: {str(rec)[:200]}"]
    return [f"{kind}: {e.json_path}: {e.message[:300]}" for e in SCHEMAS[kind].iter_errors(rec)]


def command_lines(tmp: Path) -> list[tuple]:
    """(arguments, exit codes allowed): every command that has --json, on sound and damaged inputs."""
    r = BUILDKIT_ROOT
    cache, history, metadata = r / "cache.db", r / "history.db", r / "runc-overlayfs" / "metadata_v2.db"
    torn = tmp / "torn.db"
    shutil.copy(TORN_CACHE, torn)
    busybox = "2hvo9447ca6hwtufkdhf1zzo9"     # [tools 1/2] COPY busybox /bin/busybox: 22 parents
    ok, damaged, problems = (0,), (0, 1), (0, 4)
    bits = tuple(range(16))     # fsck(8)'s bits: which ones is the exit-code tests' business, not this one's
    torn_root = tmp / "torn-root"
    shutil.copytree(r, torn_root)
    shutil.copy(TORN_CACHE, torn_root / "cache.db")
    shutil.copy(TORN_METADATA, torn_root / "runc-overlayfs" / "metadata_v2.db")
    preened = tmp / "preened-root"
    shutil.copytree(torn_root, preened)
    lines = [
        (["buildkit", "fsck", "--json", "--repair", preened], bits),
        (["buildkit", "check", "--json", torn_root], bits), (["buildkit", "ls", "--json", torn_root], ok),
        (["buildkit", "fsck", "--json", torn_root], bits), (["buildkit", "du", "--json", torn_root], damaged),
        (["buildkit", "simulate-start", "--json", torn_root], bits),
        (["buildkit", "simulate-start", "--json", r], bits),
        (["buildkit", "simulate-start", "--json", CORPUS / "daemon1-overlayfs" / "06-after-303-builds-default-prune"],
         bits),     # notes: what the start leaves alone
        (["info", "--json", cache], ok), (["info", "--json", torn], ok), (["info", "--json", "--meta", "0", torn], ok),
        (["pages", "--json", history], ok), (["pages", "--json", "-e", "hex", torn], damaged),
        (["page", "--json", "--hex", cache, 0, 1, 2, 3, 4, 10 ** 6], (8,)),   # a page the file lacks: 8
        (["page", "--json", torn, 119, 167], ok),
        (["buckets", "--json", cache], ok), (["buckets", "--json", "-e", "base64", cache, "_result"], ok),
        (["keys", "--json", history, "_records"], ok), (["keys", "--json", "-e", "hex", history, "_version"], ok),
        (["get", "--json", history, "_version", "version"], ok),
        (["get", "--json", "-e", "hex", history, "_version", "version"], ok),
        (["tree", "--json", metadata], ok), (["tree", "--json", torn], damaged),
        (["stats", "--json", cache], ok), (["stats", "--json", torn], damaged),
        (["export", history], ok), (["export", "-e", "base64", metadata, "_index"], ok), (["export", torn], damaged),
        (["export", "--count", cache], ok),
        (["check", "--json", cache, torn], problems), (["check", "--json", "--quick", TORN_METADATA], problems),
        (["buildkit", "check", "--json", r], bits), (["buildkit", "check", "--json", torn], problems),
        (["buildkit", "ls", "--json", r], ok),
        (["buildkit", "fsck", "--json", r], bits),
        (["buildkit", "graph", "--json", cache], ok), (["buildkit", "graph", "--json", torn], damaged),
        (["buildkit", "graph", "--json", "--key", busybox, cache], ok),
        (["buildkit", "du", "--json", r], ok), (["buildkit", "du", "--json", metadata], ok),
        (["buildkit", "gc", "--json", r], ok), (["buildkit", "gc", "--json", "--keep-duration", "1h", r], ok),
        (["buildkit", "history", "--json", history], ok),
        (["buildkit", "prune", "--json", cache], ok),
        (["buildkit", "repair", "--json", r], ok),
        (["compact", "--json", history, "-o", tmp / "compacted.db"], ok),
        (["salvage", "--json", torn, "-o", tmp / "salvaged.db"], damaged),
    ]
    return lines


@pytest.fixture(scope="module")
def printed(tmp_path_factory) -> list[tuple[list, dict]]:
    tmp = tmp_path_factory.mktemp("json")
    out = []
    for args, codes in command_lines(tmp):
        out += [(args, rec) for rec in records(*args, exit_codes=codes)]
    salvaged = tmp / "salvaged.db"
    for args in (["buildkit", "prune", "--json", "--rehome", salvaged], ["check", "--json", salvaged],
                 ["export", "-e", "hex", salvaged]):
        out += [(args, rec) for rec in records(*args, exit_codes=(0, 4))]
    return out


def test_every_record_validates_against_its_kind(printed):
    """Every record of every command; of the long listings (export, pages) every n-th, at most 300 each."""
    groups: dict = {}
    for args, rec in printed:
        groups.setdefault((tuple(map(str, args)), rec.get("type")), []).append(rec)
    bad = []
    for (args, _), recs in groups.items():
        step = max(1, len(recs) // 300)
        for rec in recs[::step] + recs[-1:]:
            bad += [(" ".join(args)[-120:], err) for err in invalid(rec)]
    assert not bad, bad[:20]


def test_every_kind_of_the_document_is_printed(printed):
    seen = {rec["type"] for _, rec in printed}
    assert seen == set(SCHEMAS), (set(SCHEMAS) - seen, seen - set(SCHEMAS))


def test_same_things_same_names(printed):
    """Paths are lists everywhere; check's and fsck's summaries and problems are the same records."""
    for _, rec in printed:
        if "path" in rec and rec["type"] not in PLACEHOLDERS:
            assert rec["path"] is None or isinstance(rec["path"], list), rec
    by_command = {}
    for args, rec in printed:
        if rec["type"] in ("summary", "problem"):
            by_command.setdefault(" ".join(map(str, args[:2])), set()).add(frozenset(rec) - {"store"})
    fields = {c: set().union(*v) for c, v in by_command.items()}
    assert fields["check --json"] >= fields["buildkit fsck"] - {"store"}


def test_the_encoding_option_reaches_keys_and_paths(tmp_path):
    """-e hex encodes the key and the path of `get`, not only the value."""
    history = BUILDKIT_ROOT / "history.db"
    (rec,) = records("get", "--json", "-e", "hex", history, "_version", "version")
    assert rec == {"type": "pair", "path": [b"_version".hex()], "key": b"version".hex(), "value": b"2".hex()}
    (rec,) = records("get", "--json", history, "_version", "version")
    assert rec == {"type": "pair", "path": ["_version"], "key": "version", "value": "2"}


def test_the_schemas_reject_what_the_issue_complained_about():
    """The document's schemas are strict enough to catch the old vocabulary (so the test above can fail)."""
    assert invalid({"store": "cache.db", "summary": True, "status": "ok"})                          # no type
    assert invalid({"type": "problem", "code": "B040", "severity": "warning", "file": "f", "page": 2,
                    "offset": None, "path": "_links/x", "key": None, "message": "m", "details": {}})  # path a string
    assert invalid({"type": "bucket", "name": "_links", "keys": 1, "buckets": 0, "inline": False, "root": 3,
                    "sequence": 0})                                                                   # name, not path
    assert invalid({"type": "graph", "file": "f", "nodes": 1, "edges": 0})                           # nodes/edges
    assert invalid({"type": "pair", "path": [], "key": {"hex": "zz"}, "value": ""})                  # not hex
    assert not invalid({"type": "pair", "path": [{"hex": "00ff"}], "key": "k", "value": ""})
