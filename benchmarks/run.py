"""boltkit against Go bbolt (the project's oracle, Debian's bbolt 1.3.6) on the same files, in one run.

    python3 benchmarks/run.py [--quick] [--repeat N]

Generates (once, cached in benchmarks/data/) a BuildKit-like cache.db of ~400 MB (~200k ids, 99 % inline
buckets) and a flat file of 3M keys, then times, for each file:

  traversal   `boltkit export --count`          vs oracle `walk` (every bucket, key and value); also timed
              inside the process (open + walk, no interpreter start), as `walk` reports its own seconds
  check warm  `boltkit check`                   vs oracle `check` (tx.Check), file in the page cache
  check cold  the same, file evicted before every run (posix_fadvise DONTNEED)
  compact     `boltkit compact`                 vs oracle `compact` (bbolt.Compact, 64 KiB transactions)
  buildkit check (BuildKit-like file only)   `boltkit buildkit check` vs `boltkit check` (semantic vs structural)

Each figure is the median of --repeat runs of the whole command (process start included), with the peak
RSS of the child process (ru_maxrss). Ratios are boltkit / Go: below 1 means boltkit is faster or smaller.
`--quick` uses small files (scale 1/20) to check that the harness works.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import build_oracle  # noqa: E402

BOLTKIT = [sys.executable, "-m", "boltkit"]


def run(cmd: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS in MiB) of one command."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read().decode()
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 4):      # 4: the check completed and found problems
        raise SystemExit(f"{cmd} failed with {code}: {err[-500:]}")
    return wall, usage.ru_maxrss // 1024


INPROCESS = """
import json, sys, time
from boltkit.check import count_tree
from boltkit.storage import Database
t = time.perf_counter()
with Database(sys.argv[1]) as db:
    count_tree(db)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def inprocess(oracle: Path, path: Path, repeat: int) -> tuple[float, float]:
    """Open + full traversal timed inside each process (no interpreter start), like the oracle's `walk`."""
    ours, theirs = [], []
    for _ in range(repeat):
        warm(path)
        out = subprocess.run([sys.executable, "-c", INPROCESS, str(path)], capture_output=True, check=True, cwd=ROOT)
        ours.append(json.loads(out.stdout)["seconds"])
        out = subprocess.run([str(oracle), "walk", str(path)], capture_output=True, check=True)
        theirs.append(json.loads(out.stdout)["seconds"])
    return statistics.median(ours), statistics.median(theirs)


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def measure(cmd_factory, repeat: int, before=None) -> tuple[float, int]:
    walls, rss = [], []
    for i in range(repeat):
        if before:
            before()
        cmd, cleanup = cmd_factory(i)
        w, r = run(cmd)
        if cleanup:
            cleanup()
        walls.append(w)
        rss.append(r)
    return statistics.median(walls), max(rss)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default=None, help="comma-separated subset: traversal,check-warm,check-cold,compact")
    args = ap.parse_args()
    data = HERE / "data"
    data.mkdir(exist_ok=True)
    oracle = build_oracle(data)
    if oracle is None:
        raise SystemExit("needs the Go toolchain (apt-get install golang-go golang-github-coreos-bbolt-dev)")
    div = 20 if args.quick else 1
    files = {
        "buildkit-like cache.db": ("buildkit", 2000 // div),
        "flat 3M keys": ("flat", 1500 // div),
    }
    only = set(args.only.split(",")) if args.only else None
    rows = []
    for label, (profile, scale) in files.items():
        path = data / f"{profile}-{scale}.db"
        if not path.exists():
            print(f"generating {path.name} with bbolt ...", file=sys.stderr)
            subprocess.run([str(oracle), "gen", "-seed", "1", "-profile", profile, "-scale", str(scale), str(path)],
                           check=True)
        size = path.stat().st_size
        tmp = data / "out.db"

        def rm_tmp():
            if tmp.exists():
                tmp.unlink()
        rm_tmp()
        cases = {
            "traversal": (lambda i: (BOLTKIT + ["export", "--count", str(path)], None),
                          lambda i: ([str(oracle), "walk", str(path)], None), lambda: warm(path)),
            "check-warm": (lambda i: (BOLTKIT + ["check", str(path)], None),
                           lambda i: ([str(oracle), "check", str(path)], None), lambda: warm(path)),
            "check-cold": (lambda i: (BOLTKIT + ["check", str(path)], None),
                           lambda i: ([str(oracle), "check", str(path)], None), lambda: evict(path)),
            "compact": (lambda i: (BOLTKIT + ["compact", str(path), "-o", str(tmp)], rm_tmp),
                        lambda i: ([str(oracle), "compact", str(path), str(tmp)], rm_tmp), lambda: warm(path)),
        }
        if not only or "traversal" in only:
            bw, gw = inprocess(oracle, path, args.repeat)
            rows.append((label, f"{size / 1e6:.0f} MB", "traversal, in-process", bw, gw, bw / gw, 0, 0, 0))
            print(f"{label:24} in-process traversal boltkit {bw:6.3f}s | go {gw:6.3f}s | time x{bw / gw:.2f}",
                  file=sys.stderr)
        if profile == "buildkit" and (not only or "buildkit-check" in only):
            # issue target: the semantic `buildkit check` within 2x the structural `check` of the same file
            bw, br = measure(lambda i: (BOLTKIT + ["buildkit", "check", str(path)], None), args.repeat, lambda: warm(path))
            sw, sr = measure(lambda i: (BOLTKIT + ["check", str(path)], None), args.repeat, lambda: warm(path))
            rows.append((label, f"{size / 1e6:.0f} MB", "buildkit check vs boltkit check", bw, sw, bw / sw, br, sr,
                         br / sr))
            print(f"{label:24} buildkit check {bw:6.2f}s vs structural {sw:6.2f}s: x{bw / sw:.2f}", file=sys.stderr)
        for name, (ours, theirs, before) in cases.items():
            if only and name not in only:
                continue
            bw, br = measure(ours, args.repeat, before)
            gw, gr = measure(theirs, args.repeat, before)
            rows.append((label, f"{size / 1e6:.0f} MB", name, bw, gw, bw / gw, br, gr, br / gr))
            print(f"{label:24} {name:11} boltkit {bw:6.2f}s {br:5d} MiB | go {gw:6.2f}s {gr:5d} MiB | "
                  f"time x{bw / gw:.2f} rss x{br / gr:.2f}", file=sys.stderr)
    print("| file | size | operation | boltkit s | Go s | time ratio | boltkit RSS MiB | Go RSS MiB | RSS ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rss = f"{r[6]} | {r[7]} | {r[8]:.2f}" if r[6] else "- | - | -"
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.2f} | {rss} |")
    shutil.rmtree(data / "gocache", ignore_errors=True)


if __name__ == "__main__":
    main()
