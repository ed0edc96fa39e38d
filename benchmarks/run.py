"""boltkit against Go bbolt (the project's oracle, Debian's bbolt 1.3.6) on the same files, in one run.

    python3 benchmarks/run.py [--quick | --tiny] [--repeat N] [--files a,b] [--only row,row] [--data DIR]
                              [--oracle BINARY] [--results FILE] [--skip row,row]
    python3 benchmarks/run.py --render RESULTS...      # the tables of earlier runs, merged

Needs only `pip install -e .` and the Go toolchain (for the oracle, built on the fly); no pytest. Generates
its files once with real bbolt (`oracle gen`) into --data (default benchmarks/data/, git-ignored):

  bk265      BuildKit-like cache.db, 265 MB: 200k ids, a quarter sha256: roots, Go-canonical link keys
  bknc       BuildKit-like cache.db, ~366 MB: 300k ids, one in eight a root, a fifth of the link keys with
             their zero values spelled out ("Input":0, "Selector":""), as another tool would write them
  bk1g       BuildKit-like cache.db, 1.09 GB: 900k ids, like bk265
  flat       849 MB, one bucket of 3M random 16-byte keys

and times one row per user-facing command against the nearest operation (see ROWS), each the median of
--repeat runs of the whole command (interpreter start included), with the child's peak RSS (ru_maxrss).
The two sides of a row alternate run by run, so a change in the machine's load hits both. Ratios are
boltkit / reference: below 1 means boltkit is faster or smaller. Prints the table in markdown on stdout
(the load average of the machine before and after) and keeps the figures in DATA/results.json.
`--quick` divides every file by 20, `--tiny` by 1000 (the test suite's smoke test).
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from testdata.oracle import build_oracle  # noqa: E402

BOLTKIT = [sys.executable, "-m", "boltkit"]

# name: (label, oracle gen arguments, scale)
FILES = {
    "bk265": ("BuildKit-like cache.db", ["-profile", "buildkit"], 2000),
    "bknc": ("BuildKit-like, 1/5 keys non-canonical", ["-profile", "buildkit", "-roots", "8",
                                                        "-non-canonical", "0.2"], 3000),
    "bk1g": ("BuildKit-like cache.db, >= 1 GB", ["-profile", "buildkit"], 9000),
    "flat": ("flat 3M keys", ["-profile", "flat"], 1500),
}


@dataclass
class Row:
    """One user-facing command and what it is measured against: ``ours`` and ``ref`` name entries of the
    command table built per file (see ``commands``); targets are ratio limits (None: no target)."""
    name: str
    ours: str
    ref: str
    time_target: float | None
    rss_target: float | None
    buildkit_only: bool = False
    cold: bool = False


ROWS = [
    Row("check warm", "check", "go check", 1.0, 1.0),
    Row("check cold", "check", "go check", 1.0, 1.0, cold=True),
    Row("traversal (export --count)", "export --count", "go walk", 1.5, 1.0),
    Row("traversal (in-process)", "in-process walk", "go walk, own seconds", 1.5, None),
    Row("compact", "compact", "go compact", 1.0, 2.0),
    Row("salvage of the sound file", "salvage", "go compact", 1.0, 1.5),
    Row("buildkit check", "buildkit check", "check", 2.0, 1.5, buildkit_only=True),
    Row("buildkit prune (dry run)", "buildkit prune", "check", 1.5, None, buildkit_only=True),
    Row("buildkit fsck ROOT", "buildkit fsck", "go check", 2.0, 1.0, buildkit_only=True),
    Row("buildkit simulate-start ROOT", "buildkit simulate-start", "go check", 2.0, 1.0, buildkit_only=True),
]

INPROCESS = """
import json, sys, time
from boltkit.check import count_tree
from boltkit.storage import Database
t = time.perf_counter()
with Database(sys.argv[1]) as db:
    count_tree(db)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def run(cmd: list[str], ok: tuple[int, ...], seconds_from_stdout: bool = False) -> tuple[float, int, float]:
    """(seconds, peak RSS in MiB, CPU seconds) of one command: wall time, or the seconds it reports itself
    on stdout. CPU time (user + system, all threads) is the figure least moved by other loads."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out if seconds_from_stdout else subprocess.DEVNULL, stderr=err,
                                cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        if code not in ok:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed with {code}: {err.read().decode(errors='replace')[-800:]}")
        if seconds_from_stdout:
            out.seek(0)
            wall = json.loads(out.read())["seconds"]
    return wall, usage.ru_maxrss // 1024, usage.ru_utime + usage.ru_stime


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


def commands(oracle: Path, path: Path, scratch: Path) -> dict:
    """name -> (argv, accepted exit codes, seconds reported on stdout?) for one file."""
    out = scratch / "out.db"
    root = scratch / "root"
    return {
        "check": (BOLTKIT + ["check", str(path)], (0, 4), False),
        "export --count": (BOLTKIT + ["export", "--count", str(path)], (0,), False),
        "in-process walk": ([sys.executable, "-c", INPROCESS, str(path)], (0,), True),
        "compact": (BOLTKIT + ["compact", str(path), "-o", str(out)], (0,), False),
        "salvage": (BOLTKIT + ["salvage", str(path), "-o", str(out), "--report", str(scratch / "report.json")],
                    (0,), False),
        "buildkit check": (BOLTKIT + ["buildkit", "check", str(path)], (0, 4), False),
        "buildkit prune": (BOLTKIT + ["buildkit", "prune", str(path)], (0, 1, 4), False),
        "buildkit fsck": (BOLTKIT + ["buildkit", "fsck", str(root)], (0, 1, 4), False),
        "buildkit simulate-start": (BOLTKIT + ["buildkit", "simulate-start", str(root)], (0, 4), False),
        "go check": ([str(oracle), "check", str(path)], (0, 1), False),
        "go walk": ([str(oracle), "walk", str(path)], (0,), False),
        "go walk, own seconds": ([str(oracle), "walk", str(path)], (0,), True),
        "go compact": ([str(oracle), "compact", str(path), str(out)], (0,), False),
    }


def clean_scratch(scratch: Path) -> None:
    for name in ("out.db", "report.json"):
        p = scratch / name
        if p.exists():
            p.unlink()


def prepare_root(path: Path, scratch: Path) -> None:
    """A BuildKit root holding just this cache.db (a hard link: nothing copied, nothing written to it)."""
    root = scratch / "root"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        os.link(path, root / "cache.db")
    except OSError:
        os.symlink(path, root / "cache.db")


def measure_pair(cmds: dict, ours: str, ref: str, path: Path, scratch: Path, repeat: int, cold: bool,
                 cache: dict) -> tuple[tuple[float, int], tuple[float, int]]:
    """Median seconds and max peak RSS of both sides, alternating run by run. Both are measured afresh for
    every row (the reference of a later row may run under another load); only a row whose two sides were
    both measured already (the same command against the same reference) is reused."""
    keys = [(ours, cold), (ref, cold)]
    todo = keys if any(k not in cache for k in keys) else []
    samples: dict = {k: [] for k in todo}
    for _ in range(repeat):
        for k in todo:
            evict(path) if cold else warm(path)
            argv, ok, own = cmds[k[0]]
            samples[k].append(run(argv, ok, own))
            clean_scratch(scratch)
    for k in todo:
        cache[k] = (statistics.median(s for s, _, _ in samples[k]), max(r for _, r, _ in samples[k]),
                    statistics.median(c for _, _, c in samples[k]))
    return cache[keys[0]], cache[keys[1]]


def verdict(ratio: float, target: float | None) -> str:
    if target is None:
        return "-"
    return "yes" if ratio <= target else "**no**"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="every file scaled down by 20")
    ap.add_argument("--tiny", action="store_true", help="every file scaled down by 1000 (smoke test)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--files", default=",".join(FILES), help=f"comma-separated subset of {','.join(FILES)}")
    ap.add_argument("--only", default=None, help="comma-separated subset of the rows (by name, e.g. 'check warm')")
    ap.add_argument("--skip", default=None, help="comma-separated rows to leave out")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("BOLTKIT_BENCH_DATA", HERE / "data")),
                    help="where the generated files are kept (default benchmarks/data/, git-ignored)")
    ap.add_argument("--scratch", type=Path, default=None,
                    help="where the commands' outputs go, one directory per file (default: beside the data; give "
                         "one of your own when others measure from the same data directory)")
    ap.add_argument("--oracle", type=Path, default=None, help="an oracle binary already built (default: build one)")
    ap.add_argument("--results", type=Path, default=None, help="where to keep the figures (default DATA/results.json)")
    ap.add_argument("--render", type=Path, nargs="+", default=None, metavar="RESULTS",
                    help="only print the tables of results files kept by earlier runs")
    args = ap.parse_args()
    if args.render:
        print(render([json.loads(p.read_text()) for p in args.render]))
        return
    data = args.data
    data.mkdir(parents=True, exist_ok=True)
    # an installed boltkit starts from byte-compiled modules (pip compiles them); an editable checkout under
    # PYTHONDONTWRITEBYTECODE would recompile every module at every start (~0.1 s a command), so compile once
    compileall.compile_dir(str(ROOT / "boltkit"), quiet=1)
    oracle = args.oracle or build_oracle(data)
    if oracle is None:
        raise SystemExit("needs the Go toolchain (apt-get install golang-go golang-github-coreos-bbolt-dev)")
    div = 1000 if args.tiny else 20 if args.quick else 1
    only = {s.strip() for s in args.only.split(",")} if args.only else None
    skip = {s.strip() for s in args.skip.split(",")} if args.skip else set()
    rows_out = []
    load_before = os.getloadavg()
    started = time.time()
    for fname in args.files.split(","):
        label, gen_args, scale = FILES[fname]
        scale = max(1, scale // div)
        path = data / f"{fname}-{scale}.db"
        if not path.exists():
            print(f"generating {path.name} with bbolt ...", file=sys.stderr)
            tmp = path.with_suffix(".tmp")
            if tmp.exists():
                tmp.unlink()
            subprocess.run([str(oracle), "gen", "-seed", "1", *gen_args, "-scale", str(scale), str(tmp)], check=True)
            tmp.rename(path)
        size = path.stat().st_size
        scratch = (args.scratch or data) / f"scratch-{fname}"
        scratch.mkdir(parents=True, exist_ok=True)
        clean_scratch(scratch)
        prepare_root(path, scratch)
        cmds = commands(oracle, path, scratch)
        cache: dict = {}
        for row in ROWS:
            if only and row.name not in only or row.name in skip or row.buildkit_only and fname == "flat":
                continue
            (bt, br, bc), (rt, rr, rc) = measure_pair(cmds, row.ours, row.ref, path, scratch, args.repeat, row.cold,
                                                      cache)
            own = cmds[row.ours][2]       # in-process: seconds only, RSS is not the operation's
            rec = {"file": fname, "label": label, "size_mb": round(size / 1e6), "row": row.name, "ours": row.ours,
                   "ref": row.ref, "ours_s": bt, "ref_s": rt, "time_ratio": bt / rt,
                   "ours_mib": None if own else br, "ref_mib": None if own else rr,
                   "rss_ratio": None if own else br / rr,
                   "time_target": row.time_target, "rss_target": row.rss_target,
                   "ours_cpu": None if own else bc, "ref_cpu": None if own else rc}
            rows_out.append(rec)
            save(args, data, rows_out, load_before, started)
            rss = "" if own else f" {br:5d} MiB vs {rr:5d} MiB  rss x{br / rr:.2f}"
            print(f"{fname:6} {row.name:28} {bt:7.2f}s vs {row.ref} {rt:7.2f}s  time x{bt / rt:.2f}{rss}",
                  file=sys.stderr)
        shutil.rmtree(scratch, ignore_errors=True)
    save(args, data, rows_out, load_before, started)
    print(render([json.loads((args.results or data / "results.json").read_text())]))


def render(results: list[dict]) -> str:
    """The markdown tables of one or more runs (their load averages first)."""
    out = []
    for res in results:
        before, now = res["load_before"][0], (res.get("load_now") or res.get("load_after"))[0]
        files = ",".join(dict.fromkeys(r["file"] for r in res["rows"]))
        out.append(f"* {files}: {res['cpus']} CPUs, load average {before:.1f} at the start, {now:.1f} at the end "
                   f"({res['minutes']:.0f} minutes); median of {res['repeat']}")
    rows = [r for res in results for r in res["rows"]]
    out += ["", "| file | size | command | reference | boltkit s | ref s | time ratio | target | met | "
            "boltkit MiB | ref MiB | RSS ratio | target | met | CPU s ratio |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t_target = f"≤ {r['time_target']}" if r["time_target"] is not None else "-"
        if r["rss_ratio"] is None:
            rss = "- | - | - | - | -"
        else:
            r_target = f"≤ {r['rss_target']}" if r["rss_target"] is not None else "-"
            rss = (f"{r['ours_mib']} | {r['ref_mib']} | {r['rss_ratio']:.2f} | {r_target} | "
                   f"{verdict(r['rss_ratio'], r['rss_target'])}")
        out.append(f"| {r['label']} | {r['size_mb']} MB | {r['row']} | {r['ref']} | {r['ours_s']:.2f} | "
                   f"{r['ref_s']:.2f} | {r['time_ratio']:.2f} | {t_target} | "
                   f"{verdict(r['time_ratio'], r['time_target'])} | {rss} | {cpu_ratio(r)} |")
    growth = scaling(rows)
    if growth:
        out += ["", "Peak RSS of each command on the largest BuildKit-like file against the 265 MB one (target ≤ 2):",
                "", "| command | 265 MB MiB | large MiB | ratio | met |", "|---|---|---|---|---|"]
        out += [f"| {name} | {small} | {large} | {large / small:.2f} | {verdict(large / small, 2.0)} |"
                for name, small, large in growth]
    return "\n".join(out)


def cpu_ratio(r: dict) -> str:
    if not r.get("ours_cpu") or not r.get("ref_cpu"):
        return "-"
    return f"{r['ours_cpu']:.1f} / {r['ref_cpu']:.1f} = {r['ours_cpu'] / r['ref_cpu']:.2f}"


def save(args, data: Path, rows: list[dict], load_before, started: float) -> None:
    """The figures so far (after every row: a long run that is stopped keeps what it measured)."""
    result = {"load_before": load_before, "load_now": os.getloadavg(), "minutes": (time.time() - started) / 60,
              "repeat": args.repeat, "cpus": os.cpu_count(), "rows": rows}
    (args.results or data / "results.json").write_text(json.dumps(result, indent=1))


def scaling(rows: list[dict]) -> list[tuple[str, int, int]]:
    """(command, RSS on bk265, RSS on bk1g) for every command measured on both."""
    by = {(r["file"], r["ours"]): r["ours_mib"] for r in rows if r["ours_mib"]}
    return [(name, by[("bk265", name)], by[("bk1g", name)]) for (f, name) in by
            if f == "bk265" and ("bk1g", name) in by]


if __name__ == "__main__":
    main()
