"""benchmarks/run.py works (on a tiny profile): the benchmarks themselves never run in the test suite."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_run_py_measures_every_command_on_a_tiny_buildkit_file(oracle, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--tiny", "--repeat", "1",
                           "--files", "bk265", "--data", str(tmp_path), "--oracle", str(oracle.binary)],
                          capture_output=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["row"] for r in rows] == ["check warm", "check cold", "traversal (export --count)",
                                        "traversal (in-process)", "compact", "salvage of the sound file",
                                        "buildkit check", "buildkit prune (dry run)", "buildkit fsck ROOT",
                                        "buildkit simulate-start ROOT"]
    assert all(r["ours_s"] > 0 and r["ref_s"] > 0 for r in rows)
    assert all(r["ours_mib"] > 0 for r in rows if r["row"] != "traversal (in-process)")
    table = proc.stdout.decode()
    assert table.count("| BuildKit-like cache.db |") == len(rows) and "load average" in table
    assert not list(tmp_path.glob("scratch-*")) and not list(tmp_path.glob("*.tmp"))
