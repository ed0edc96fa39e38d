"""Salvage campaign: oracle-written files and corpus stores, each damaged by every damage class of the
checker's campaign and of the meta-ladder issue (metas that lie, leaves with bad elements or lying headers,
swapped pages, deep nesting); per class, the share of the pairs on intact leaves and of the well-formed
elements on damaged leaves that `boltkit salvage` recovers, pairs invented, outputs bbolt's `tx.Check`
accepts, and what Go bbolt's `compact` gets out of the same damaged files (usually nothing).

    python3 benchmarks/salvage_campaign.py [--seeds N] [--only CLASS,...]
"""
from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from boltkit.repair import salvage  # noqa: E402
from boltkit.repair.salvage import SalvageRefused  # noqa: E402
from boltkit.write import BoltWriter  # noqa: E402
from tests.conftest import build_oracle, corpus_files  # noqa: E402
from testdata import damage  # noqa: E402
from testdata.campaign import damage_cases, salvage_cases  # noqa: E402
from testdata.recovery import measure  # noqa: E402

FIELDS = ("original", "on_intact_leaves", "recovered", "recovered_on_intact", "invented", "wellformed_on_damaged",
          "recovered_wellformed", "resurrected")


def deep_chain(path: Path, depth: int) -> Path:
    """Buckets nested ``depth`` deep, a pair in each (bbolt's layout: every bucket with a child is paged)."""
    w = BoltWriter(str(path), page_size=4096)
    for i in range(depth):
        w.begin_bucket(b"b%05d" % i, 0)
        for j in range(3):
            w.put(b"a%d" % j, b"v%d-%d" % (i, j))
    for _ in range(depth):
        w.end_bucket()
    w.close()
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated damage classes")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    work = Path(tempfile.mkdtemp(prefix="boltkit-salvage-"))
    oracle = build_oracle(work)
    sources = []
    for profile in ("mixed", "deep", "buildkit", "deletes"):
        for seed in range(1, args.seeds + 1):
            path = work / f"{profile}-{seed}.db"
            subprocess.run([str(oracle), "gen", "-seed", str(seed), "-profile", profile, str(path)], check=True)
            sources.append((f"{profile} (oracle)", path))
    for p in corpus_files("sound"):
        if p.name in ("cache.db", "metadata_v2.db") and p.stat().st_size < 3 << 20:
            sources.append((f"corpus {p.name}", p))
    deep = deep_chain(work / "chain.db", 300)
    totals: dict[str, list[int]] = {}
    files: dict[str, int] = {}
    accepted: dict[str, int] = {}
    refused: dict[str, int] = {}
    go_totals: dict[str, list[int]] = {}

    def cases_of(label, src, rng):
        yield from damage_cases(src, rng)
        yield from salvage_cases(src, rng)

    jobs = [(label, src, cases_of(label, src, random.Random(src.name))) for label, src in sources]
    rng = random.Random(7)
    chain_pages = deep.stat().st_size // 4096
    jobs.append(("chain", deep, iter([("deep nesting (300), a page zeroed",
                                       lambda p: damage.zero_page(p, rng.randrange(chain_pages // 3, chain_pages)))])))
    for label, src, cases in jobs:
        for name, apply in cases:
            if only and name not in only:
                continue
            bad = damage.copy(src, work / "damaged.db")
            apply(bad)
            out = work / "rescued.db"
            for f in (out, work / "go.db", work / "rescued.db.report.json"):
                if f.exists():
                    f.unlink()
            ok = False
            try:
                salvage(str(bad), str(out))
                rec = measure(src, bad, out)
                ok = oracle_check(oracle, out)
            except SalvageRefused:
                refused[name] = refused.get(name, 0) + 1
                rec = measure(src, bad, None)
            except Exception as e:      # noqa: BLE001 - a campaign records failures instead of stopping
                print(f"salvage failed on {label}/{name}: {type(e).__name__}: {e}", file=sys.stderr)
                rec = measure(src, bad, None)
            try:
                go = subprocess.run([str(oracle), "compact", str(bad), str(work / "go.db")], capture_output=True,
                                    timeout=10)
                go_ok = go.returncode == 0
            except subprocess.TimeoutExpired:      # bbolt loops on some damage (cycles): counts as nothing
                go_ok = False
            go_rec = measure(src, bad, work / "go.db") if go_ok else measure(src, bad, None)
            t = totals.setdefault(name, [0] * len(FIELDS))
            for i, f in enumerate(FIELDS):
                t[i] += getattr(rec, f)
            g = go_totals.setdefault(name, [0, 0])
            g[0] += go_rec.recovered
            g[1] += 1 if go_ok else 0
            files[name] = files.get(name, 0) + 1
            accepted[name] = accepted.get(name, 0) + (1 if ok else 0)
            if rec.share_intact < 0.99 or rec.share_wellformed < 0.99 or rec.invented or rec.resurrected:
                print(f"below target: {label}/{name}: {rec}", file=sys.stderr)
    print("| damage class | files | original pairs | on intact leaves | recovered | of intact leaves | "
          "well-formed on damaged leaves | of those | invented | deleted keys back | tx.Check ok | refused | "
          "Go compact recovered |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    agg = [0] * len(FIELDS)
    for name, t in totals.items():
        o, il, r, ri, inv, wf, rw, res = t
        go_r, go_n = go_totals[name]
        print(f"| {name} | {files[name]} | {o} | {il} | {r} ({100 * r / max(o, 1):.1f} %) | "
              f"{100 * ri / max(il, 1):.2f} % | {wf} | {100 * rw / max(wf, 1):.2f} % | {inv} | {res} | "
              f"{accepted[name]}/{files[name]} | {refused.get(name, 0)} | {go_r} ({go_n}/{files[name]} ran) |")
        agg = [x + y for x, y in zip(agg, t)]
    o, il, r, ri, inv, wf, rw, res = agg
    print(f"| **all** | {sum(files.values())} | {o} | {il} | {r} ({100 * r / max(o, 1):.1f} %) | "
          f"{100 * ri / max(il, 1):.2f} % | {wf} | {100 * rw / max(wf, 1):.2f} % | {inv} | {res} | "
          f"{sum(accepted.values())}/{sum(files.values())} | {sum(refused.values())} | |")
    shutil.rmtree(work, ignore_errors=True)


def oracle_check(oracle: Path, path: Path) -> bool:
    try:
        return subprocess.run([str(oracle), "check", str(path)], capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


if __name__ == "__main__":
    main()
