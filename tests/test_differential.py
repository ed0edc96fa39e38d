"""Differential test against real bbolt: on hundreds of random files written by the Go oracle (every
profile, random page sizes 1 KiB-64 KiB), `boltkit export -e hex` equals the oracle's `dump` byte for
byte (same pairs, same order, same sequences), and the checker agrees that they are clean."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from boltkit.check import check_file
from boltkit.cli import main

# profile -> number of random files (>= 300 in all)
PROFILES = {"mixed": 120, "deep": 50, "nofreelist": 40, "buildkit": 30, "deletes": 30, "large-values": 15,
            "flat": 15, "leak": 10}
BATCH = 10


def batches():
    for profile, n in PROFILES.items():
        for start in range(0, n, BATCH):
            yield pytest.param(profile, range(start + 1, min(start + BATCH, n) + 1), id=f"{profile}-{start // BATCH}")


@pytest.mark.parametrize("profile,seeds", list(batches()))
def test_export_equals_bbolt_dump(tmp_path, oracle, profile, seeds):
    runner = CliRunner()
    for seed in seeds:
        path = oracle.gen(tmp_path / f"{profile}-{seed}.db", profile=profile, seed=seed, page_size=0)
        expected = oracle.dump(path)
        ours = runner.invoke(main, ["export", "-e", "hex", str(path)])
        assert ours.exit_code == 0, (seed, ours.output[-500:])
        assert ours.stdout_bytes == expected, f"{profile} seed {seed}: export differs from bbolt's dump"
        report = check_file(path)
        problems = [p.line() for p in report.problems]
        if profile == "leak":
            assert problems and all(p.startswith("B040") or p.startswith("B050") for p in problems), problems
        else:
            assert report.clean, (seed, problems[:5])
        path.unlink()


def test_total_is_at_least_300():
    assert sum(PROFILES.values()) >= 300
