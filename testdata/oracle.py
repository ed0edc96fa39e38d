"""Building the Go oracle (tests/oracle/main.go, Debian's bbolt 1.3.6) without pytest: the test suite and
benchmarks/run.py both need the binary, and the benchmarks must run after `pip install -e .` alone."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ORACLE_SRC = Path(__file__).resolve().parent.parent / "tests" / "oracle"


def build_oracle(dest: Path) -> Path | None:
    """The oracle built into ``dest`` (its Go build cache beside it); None when Go is not installed."""
    go = shutil.which("go")
    if go is None:
        return None
    binary = dest / "oracle"
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode", GOCACHE=str(dest / "gocache"),
               GOFLAGS="")
    subprocess.run([go, "build", "-o", str(binary), "."], check=True, env=env, cwd=ORACLE_SRC)
    return binary
