"""Corruption campaign (seeded, reproducible): every damage class on oracle-written files of every
profile. boltkit never raises and always terminates; whenever bbolt's tx.Check (the oracle) reports a
problem or panics, boltkit reports one too, at the same pages where bbolt names positional pages."""
from __future__ import annotations

import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boltkit.check import Severity, check_file
from boltkit.errors import BoltkitError
from boltkit.storage import Database
from testdata import damage
from testdata.campaign import damage_cases, go_pages

PROFILES = ["mixed", "deep", "buildkit", "nofreelist", "deletes", "large-values"]
SEEDS = [11, 12, 13]

# bbolt messages whose page id is a position (freelist/reachability maps), not a possibly garbage header id
_POSITIONAL = re.compile(r"page (\d+): (unreachable unfreed|reachable freed|already freed)")


def boltkit_pages(report) -> set[int]:
    pages = set()
    for p in report.problems:
        if p.pgid is not None:
            pages.add(p.pgid)
        pages.update(p.details.get("stack", []))
        if "span" in p.details:
            pages.update(range(p.details["span"][0], p.details["span"][1] + 1))
        pages.update(p.details.get("pages", []))
        if "id" in p.details:
            pages.add(p.details["id"])
    return pages


def read_everything(path) -> None:
    """A tolerant full read must terminate without raising anything but an open refusal."""
    try:
        with Database(path) as db:
            for _ in db.tree.walk(db.root(), on_damage=lambda e: None):
                pass
    except BoltkitError:
        pass


def compare(oracle, path, what: str) -> None:
    report = check_file(path)
    read_everything(path)
    status, out = oracle.check(path, timeout=20)
    ours = [p for p in report.problems if p.severity != Severity.INFO]
    if status != 0:
        assert ours or not report.readable, f"{what}: bbolt says {out[:300]!r}, boltkit says clean"
        # a child id whose byte offset overflows 64 bits makes Go read whatever page the wrapped address hits
        # (often a meta page) and name that page: nothing to compare page for page
        wrapped = any(p.code == "B020" and p.pgid is not None and p.pgid * max(report.page_size, 1) >= 2 ** 64
                      for p in report.problems)
        if report.readable and not wrapped:
            # an id no file can have (a freelist entry of -1 read from a cut-off page, say) names no page
            positional = {int(m.group(1)) for m in _POSITIONAL.finditer(out)
                          if int(m.group(1)) * max(report.page_size, 1) < 2 ** 63}
            missing = positional - boltkit_pages(report)
            assert not missing, f"{what}: bbolt names pages {sorted(missing)} that boltkit does not: {out[:300]}"
            named = go_pages(out) - {0, 1}
            hwm = report.hwm
            assert not named or named & (boltkit_pages(report) | {p for p in named if p >= hwm}), \
                f"{what}: bbolt {out[:300]!r} / boltkit {[p.line() for p in ours[:5]]}"


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("seed", SEEDS)
def test_every_damage_class(tmp_path, oracle, profile, seed):
    original = oracle.gen(tmp_path / "orig.db", profile=profile, seed=seed, page_size=random.Random(seed).choice(
        [1024, 4096, 8192, 65536]))
    assert check_file(original).clean and oracle.check(original)[0] == 0
    rng = random.Random(seed * 1000 + len(profile))
    cases = damage_cases(original, rng)
    assert len(cases) >= 10
    for name, apply in cases:
        path = damage.copy(original, tmp_path / "damaged.db")
        desc = apply(path)
        compare(oracle, path, f"{profile}/{seed}/{name}: {desc}")


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_byte_damage(tmp_path_factory, oracle, oracle_files, data):
    seed = data.draw(st.integers(min_value=1, max_value=8))
    profile = data.draw(st.sampled_from(["mixed", "buildkit", "deep", "nofreelist"]))
    original = oracle_files(profile, seed)
    path = damage.copy(original, tmp_path_factory.mktemp("rnd") / "damaged.db")
    size = path.stat().st_size
    # damage where it matters most: the used part of the file, headers of pages more often
    hits = data.draw(st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                              min_size=1, max_size=12))
    hits = [(int(f * size), mask) for f, mask in hits]
    for off, mask in hits:
        damage.flip_bits(path, off, mask)
    compare(oracle, path, f"{profile}/{seed} flips {hits}")
