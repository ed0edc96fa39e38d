"""Salvage campaign: oracle-written files and corpus stores, each damaged by every damage class of the
checker's campaign; the share of original pairs `boltkit salvage` recovers, against what Go bbolt's
`compact` gets out of the same damaged files (usually nothing: it refuses or crashes on them).

    python3 benchmarks/salvage_campaign.py [--seeds N]
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
from tests.conftest import build_oracle, corpus_files  # noqa: E402
from testdata import damage  # noqa: E402
from testdata.campaign import damage_cases  # noqa: E402
from testdata.recovery import measure  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
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
    totals: dict[str, list[int]] = {}
    files: dict[str, int] = {}
    for label, src in sources:
        rng = random.Random(src.name)
        for name, apply in damage_cases(src, rng):
            if name in ("both metas",):
                continue           # nothing readable to salvage from: reported, not counted
            bad = damage.copy(src, work / "damaged.db")
            apply(bad)
            out = work / "rescued.db"
            for f in (out, work / "go.db"):
                if f.exists():
                    f.unlink()
            try:
                salvage(str(bad), str(out))
                rec = measure(src, bad, out)
            except Exception as e:      # noqa: BLE001 - a campaign records failures instead of stopping
                print(f"salvage failed on {label}/{name}: {e}", file=sys.stderr)
                rec = measure(src, bad, None)
            try:
                go = subprocess.run([str(oracle), "compact", str(bad), str(work / "go.db")], capture_output=True,
                                    timeout=10)
                go_ok = go.returncode == 0
            except subprocess.TimeoutExpired:      # bbolt loops on some damage (cycles): counts as nothing
                go_ok = False
            go_rec = measure(src, bad, work / "go.db") if go_ok else measure(src, bad, None)
            t = totals.setdefault(name, [0, 0, 0, 0, 0, 0, 0])
            for i, v in enumerate((rec.original, rec.on_intact_leaves, rec.recovered, rec.recovered_on_intact,
                                   rec.invented, go_rec.recovered, 1 if go_ok else 0)):
                t[i] += v
            files[name] = files.get(name, 0) + 1
    print("| damage class | files | original pairs | on intact leaves | boltkit recovered | of intact leaves | "
          "invented | Go compact recovered | Go compact succeeded |")
    print("|---|---|---|---|---|---|---|---|---|")
    agg = [0] * 7
    for name, t in totals.items():
        print(f"| {name} | {files[name]} | {t[0]} | {t[1]} | {t[2]} ({100 * t[2] / max(t[0], 1):.1f} %) | "
              f"{100 * t[3] / max(t[1], 1):.2f} % | {t[4]} | {t[5]} ({100 * t[5] / max(t[0], 1):.1f} %) | {t[6]}/{files[name]} |")
        agg = [x + y for x, y in zip(agg, t)]
    print(f"| **all** | | {agg[0]} | {agg[1]} | {agg[2]} ({100 * agg[2] / max(agg[0], 1):.1f} %) | "
          f"{100 * agg[3] / max(agg[1], 1):.2f} % | {agg[4]} | {agg[5]} ({100 * agg[5] / max(agg[0], 1):.1f} %) | |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
