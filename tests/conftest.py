"""Shared fixtures: the real corpus, the Go oracle (built on the fly), and damaged copies."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from testdata.oracle import build_oracle

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("BOLTKIT_CORPUS", ROOT.parent / "shared" / "corpus"))
EXAMPLE = ROOT / "examples" / "cache.db"


def corpus_files(kind: str = "all") -> list[Path]:
    """Every bolt file of the shared corpus (``sound``: the clean snapshots, ``torn``: the torn copies)."""
    files = sorted(p for p in CORPUS.rglob("*.db"))
    if kind == "sound":
        return [p for p in files if "torn-copies" not in p.parts]
    if kind == "torn":
        return [p for p in files if "torn-copies" in p.parts]
    return files


def corpus_id(p: Path) -> str:
    return str(p.relative_to(CORPUS))


class Oracle:
    """The project's own Go program linked against Debian's bbolt 1.3.6 (tests/oracle/main.go)."""

    def __init__(self, binary: Path):
        self.binary = binary

    def run(self, *args, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(self.binary), *map(str, args)], capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"oracle {args} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
        return proc

    def gen(self, out: Path, profile: str = "mixed", seed: int = 1, page_size: int = 4096, scale: int = 1) -> Path:
        self.run("gen", "-seed", seed, "-profile", profile, "-page-size", page_size, "-scale", scale, out)
        return out

    def dump(self, path: Path) -> bytes:
        return self.run("dump", path).stdout

    def check(self, path: Path, timeout: float = 30) -> tuple[int, str]:
        """(exit status, output) of tx.Check; a hang counts as a failure (-1)."""
        try:
            proc = self.run("check", path, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return -1, "timeout"
        return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")


@pytest.fixture(scope="session")
def oracle(tmp_path_factory) -> Oracle:
    binary = build_oracle(tmp_path_factory.mktemp("oracle"))
    if binary is None:
        pytest.skip("the Go toolchain is not installed (CI installs golang-go)")
    return Oracle(binary)


@pytest.fixture(scope="session")
def oracle_files(oracle, tmp_path_factory):
    """Oracle-generated files, made once per session. bbolt's page placement is not deterministic (it
    spills child buckets in Go map order), so a seed fixes the content, not the layout; caching keeps
    one layout per seed for the whole run, which hypothesis needs to replay its examples."""
    cache: dict = {}
    base = tmp_path_factory.mktemp("oracle-files")

    def get(profile: str, seed: int, page_size: int = 4096) -> Path:
        key = (profile, seed, page_size)
        if key not in cache:
            cache[key] = oracle.gen(base / f"{profile}-{seed}-{page_size}.db", profile=profile, seed=seed,
                                    page_size=page_size)
        return cache[key]
    return get


@pytest.fixture
def example_db() -> Path:
    return EXAMPLE


def pytest_report_header(config):
    return f"corpus: {CORPUS} ({'present' if CORPUS.exists() else 'MISSING'})"
