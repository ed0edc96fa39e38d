"""The real stores written by buildkitd: the sound ones read and check clean, the torn ones are
diagnosed as the corpus MANIFEST describes (same pages as bbolt's own complaints), and read as far
as they are intact — without hanging where `bbolt check` loops or `bbolt stats` overflows its stack."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from boltkit.check import check_file
from boltkit.cli import main

from .conftest import CORPUS, corpus_files, corpus_id

SOUND = corpus_files("sound")
TORN = corpus_files("torn")


def test_corpus_is_present():
    assert len(SOUND) >= 20 and len(TORN) == 10, f"shared corpus missing at {CORPUS}"


@pytest.mark.parametrize("path", SOUND, ids=corpus_id)
def test_sound_store_checks_clean(path):
    report = check_file(path)
    assert report.clean, [p.line() for p in report.problems]
    assert report.readable and report.revert is None


@pytest.mark.parametrize("path", SOUND, ids=corpus_id)
def test_sound_store_export_matches_oracle(path, oracle):
    ours = CliRunner().invoke(main, ["export", "-e", "hex", str(path)])
    assert ours.exit_code == 0, ours.output
    assert ours.stdout_bytes == oracle.dump(path)


# what bbolt said about each torn copy (MANIFEST.md) -> the codes and pages boltkit must name
TORN_EXPECT = {
    "daemon0-history-slowcopy-during-build-223.db": {("B010", 118), ("B022", 93)},
    "daemon1-cache-slowcopy-during-build-306.db": {("B010", 193)},
    "daemon1-cache-slowcopy-during-build-354.db": {("B016", 323), ("B016", 119), ("B016", 167)},
    "daemon1-cache-slowcopy-during-build-376.db": {("B040", 2), ("B040", 3), ("B040", 4)},
    "daemon1-cache-slowcopy-during-build-397.db": {("B016", 312), ("B016", 383), ("B016", 171), ("B025", None)},
    "daemon1-overlayfs-metadata_v2-slowcopy-during-build-308.db": {("B016", 9), ("B016", 204), ("B024", 190),
                                                                  ("B021", 8)},
    "daemon1-overlayfs-metadata_v2-slowcopy-during-build-324.db": {("B040", 24), ("B040", 40), ("B025", None)},
    "daemon4-cache-cp-during-build-73.db": {("B040", 2), ("B040", 4), ("B040", 5)},
    "daemon4-cache-cp-during-build-136.db": {("B033", 225), ("B025", None)},
    "daemon4-overlayfs-metadata_v2-cp-during-build-54.db": {("B002", 0), ("B004", 0)},
}


@pytest.mark.parametrize("path", TORN, ids=corpus_id)
def test_torn_copy_is_diagnosed_like_the_manifest(path):
    report = check_file(path)
    assert report.readable and not report.clean
    found = {(p.code, p.pgid) for p in report.problems} | {(p.code, None) for p in report.problems}
    missing = TORN_EXPECT[path.name] - found
    assert not missing, (missing, [p.line() for p in report.problems[:20]])


def test_torn_meta_root_names_the_page():
    report = check_file(CORPUS / "torn-copies" / "daemon4-overlayfs-metadata_v2-cp-during-build-54.db")
    assert any(p.code == "B002" and "root page 113" in p.message and "freelist" in p.message for p in report.problems)
    assert report.meta_index == 1   # fell back to the older, intact meta


@pytest.mark.parametrize("path", TORN, ids=corpus_id)
def test_torn_copy_exports_what_is_intact(path):
    """The export terminates, reports damage on stderr, and invents nothing: every exported pair is a key
    immediately followed by its value somewhere in the file, as bbolt packs them."""
    r = CliRunner().invoke(main, ["export", "-e", "hex", str(path)])
    assert r.exit_code in (0, 1), r.output
    raw = path.read_bytes()
    pairs = [json.loads(line) for line in r.stdout_bytes.splitlines()]
    pairs = [p for p in pairs if p["type"] == "pair"]
    assert pairs, "nothing read from a store that is mostly intact"
    for p in pairs:
        assert bytes.fromhex(p["key"]) + bytes.fromhex(p["value"]) in raw
    if r.exit_code == 1:
        assert "damaged part(s) skipped" in r.stderr or "older transaction than bbolt reads" in r.stderr


def test_cycle_files_terminate():
    """bbolt stats overflows its stack on these (a page cycle); boltkit reports the cycle and stops.
    Run as a real process so that a hang would fail the test (timeout) instead of blocking it."""
    import subprocess
    import sys
    for name in ("daemon1-cache-slowcopy-during-build-397.db", "daemon4-cache-cp-during-build-136.db",
                 "daemon1-overlayfs-metadata_v2-slowcopy-during-build-324.db"):
        for cmd in ("stats", "tree", "pages"):
            proc = subprocess.run([sys.executable, "-m", "boltkit", cmd, str(CORPUS / "torn-copies" / name)],
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 1 and "damage:" in proc.stderr and "Traceback" not in proc.stderr
