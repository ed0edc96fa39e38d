"""The project's own attack campaign (testdata/attack.py): extreme meta, page and element fields, huge
freelist counts, deep nesting, _result values in another JSON form, FIFO locks, damaged roots, huge values
and sparse files — every command, asserting 0 tracebacks, 0 hangs, 0 exit codes outside the table, and for
the huge value and the sparse file bounded time and memory (measured in a child process)."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from boltkit.cli import main
from boltkit.cli.output import encode_bytes
from testdata import attack, damage
from testdata.campaign import _survey

from .conftest import CORPUS, EXAMPLE, ROOT
from .test_exit_codes import invoke

CORPUS_ROOT = CORPUS / "daemon1-overlayfs" / "01-after-30-builds"


def every_reader(db: Path, out: Path, meta: str | None = None) -> list[list]:
    """The commands that read one file, each as an argument list."""
    m = ["--meta", meta] if meta is not None else []
    return [["info", *m, db], ["pages", *m, db], ["tree", *m, db], ["stats", *m, db], ["export", *m, db],
            ["buckets", *m, db], ["check", *m, db], ["page", db, "0", "1", "2", "3"],
            ["compact", *m, db, "-o", out / f"compact-{meta}.db"], ["buildkit", "check", db],
            ["buildkit", "graph", db]]


def attack_file(db: Path, tmp: Path, metas=(None,)) -> list[tuple]:
    """Every reading command (and compact and salvage to a new file) on ``db``: no traceback, no hang, an exit from
    the table (`invoke`), and the input byte for byte as it was."""
    outcomes = []
    original = db.read_bytes()
    for meta in metas:
        for args in every_reader(db, tmp, meta):
            r = invoke(args, seconds=60)
            outcomes.append((args[0], r.exit_code))
    r = invoke(["salvage", db, "-o", tmp / "salvaged.db"], seconds=60)
    outcomes.append(("salvage", r.exit_code))
    assert db.read_bytes() == original, "a reading command wrote to its input"
    for p in tmp.glob("compact-*"):
        p.unlink()
    for p in tmp.glob("salvaged.db*"):
        p.unlink()
    return outcomes


def _meta_cases():
    rng = random.Random(12)
    picked = [(1, "root", 2**63 + 7), (0, "root", 2**64 - 1), (1, "freelist", 2**63 + 7), (0, "pgid", 2**64 - 1),
              (1, "pgid", 2**63), (0, "page_size", 2**32 - 1), (1, "page_size", 0), (0, "txid", 2**64 - 1)]
    for _ in range(8):
        picked.append((rng.randrange(2), rng.choice(attack.META_FIELDS), rng.choice(attack.EXTREMES)))
    return picked


@pytest.mark.parametrize("index,field,value", _meta_cases())
def test_extreme_meta_fields(index, field, value, tmp_path):
    db = tmp_path / "x.db"
    attack.meta_extreme(EXAMPLE, db, index, field, value)
    attack_file(db, tmp_path, metas=(None, "0", "1"))
    assert db.read_bytes() != EXAMPLE.read_bytes()      # the damage is in place: the reads did not "fix" it


def test_extreme_page_headers_elements_and_freelist_counts(tmp_path):
    s = _survey(EXAMPLE)
    branch, leaf = s["branches"][0], s["leaves"][len(s["leaves"]) // 2]
    cases = []
    for pg in (branch, leaf):
        for field, value in (("overflow", 2**32 - 1), ("overflow", 2**31), ("count", 0xFFFF), ("flags", 0xFFFF),
                             ("id", 2**64 - 1)):
            cases.append(lambda dst, pg=pg, f=field, v=value: attack.page_header_extreme(EXAMPLE, dst, pg, f, v))
        for field, value in (("pos", 2**32 - 1), ("ksize", 2**32 - 1), ("vsize", 2**32 - 1), ("vsize", 2**64 - 1)):
            cases.append(lambda dst, pg=pg, f=field, v=value: attack.element_extreme(EXAMPLE, dst, pg, 0, f, v))
    fl = s["freelist"][0]
    for count in (2**63, 2**64 - 1, 10**12):
        cases.append(lambda dst, c=count: attack.freelist_count(EXAMPLE, dst, fl, c))
    for i, make in enumerate(cases):
        db = tmp_path / f"case{i}.db"
        make(db)
        attack_file(db, tmp_path)


def test_deep_nesting(tmp_path):
    db = tmp_path / "deep.db"
    attack.deep(db, 1100)       # deeper than Python's recursion limit: every walk must be iterative
    outcomes = dict(attack_file(db, tmp_path))
    assert outcomes["check"] == 0 and outcomes["compact"] == 0 and outcomes["salvage"] == 0, outcomes
    r = invoke(["export", db])
    assert r.exit_code == 0 and r.output.count('"type":"bucket"') == 1100
    assert json.loads(r.output.splitlines()[-1])["value"] == "bottom"


def test_result_values_in_another_json_form(tmp_path):
    """Valid `_result` JSON not in Go's byte form used to crash prune and repair (to_store's regex)."""
    db = tmp_path / "cache.db"
    assert attack.result_not_go_form(EXAMPLE, db).split()[0] != "0"
    r = invoke(["buildkit", "prune", db])
    assert r.exit_code == 0, r.output
    ref = invoke(["buildkit", "prune", EXAMPLE])
    assert r.output.replace(str(db), "F") == ref.output.replace(str(EXAMPLE), "F")
    assert invoke(["buildkit", "prune", "--rehome", "--drop-unreachable", db]).exit_code == 0
    assert invoke(["buildkit", "graph", "--dot", tmp_path / "g.dot", db]).exit_code == 0
    root = attack.copy_root(CORPUS_ROOT, tmp_path / "root")
    attack.result_not_go_form(CORPUS_ROOT / "cache.db", root / "cache.db.new")
    os.replace(root / "cache.db.new", root / "cache.db")
    for args in (["buildkit", "repair", root], ["buildkit", "repair", "--apply", root], ["buildkit", "fsck", root]):
        r = invoke(args, seconds=120)
        assert "Traceback" not in r.output


def test_fifo_lock_does_not_hang(tmp_path):
    root = attack.copy_root(CORPUS_ROOT, tmp_path / "root")
    attack.fifo(root / "buildkitd.lock")
    for args in (["buildkit", "fsck", root], ["buildkit", "repair", "--apply", root],
                 ["buildkit", "prune", "--apply", root / "cache.db"], ["salvage", "--in-place", root / "cache.db"],
                 ["buildkit", "ls", root], ["buildkit", "check", root], ["buildkit", "du", root]):
        invoke(args, seconds=120)


ROOT_STORES = ["cache.db", "history.db", "runc-overlayfs/metadata_v2.db", "runc-overlayfs/containerdmeta.db",
               "runc-overlayfs/snapshots/metadata.db"]
# read-only root commands beyond fsck, check and ls, two per seed so that four seeds run each
ROTATING = [["buildkit", "simulate-start"], ["buildkit", "simulate-start", "-o", "{out}"], ["buildkit", "repair"],
            ["buildkit", "repair", "--start-only"], ["buildkit", "repair", "--prune"], ["buildkit", "du"],
            ["buildkit", "fsck", "--json"], ["buildkit", "fsck", "-j", "2"]]
WRITING = [["buildkit", "fsck", "--repair"], ["buildkit", "repair", "--apply"],
           ["buildkit", "repair", "--apply", "--prune"], ["buildkit", "repair", "--apply", "--start-only"]]


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("seed", range(6))
def test_damaged_stores_in_a_root(seed, tmp_path):
    """One store of a root damaged (damage.py's classes and attack.py's: swapped and stale pages, extreme header and
    element fields, extreme metas): every root command reads it with no traceback and an exit from the table, the
    read-only ones write nothing under the root, fsck and check give every store its line, and a writing one
    either changes nothing (a refusal) or changes each store with its backup and its report: never half a root."""
    root = attack.copy_root(CORPUS_ROOT, tmp_path / "root")
    rng = random.Random(seed)
    victim = rng.choice(ROOT_STORES)
    what = attack.damage_store(root / victim, rng)
    if seed % 2:
        damage.damage_meta(root / victim, 0)
    before = files_of(root)
    out = tmp_path / "after"
    reading = [["buildkit", "ls"], ["buildkit", "fsck"], ["buildkit", "check"]] + ROTATING[2 * (seed % 4):][:2]
    for cmd in reading:
        args = [str(out) if a == "{out}" else a for a in cmd] + [root]
        r = invoke(args, seconds=120)
        assert files_of(root) == before, (args, what)              # a reading command wrote under the root
        if cmd[1:] in (["fsck"], ["check"]):
            assert all(Path(st).name in r.output for st in ROOT_STORES), (what, r.output[-2000:])
            assert r.exit_code & 12 or r.exit_code == 0, (what, r.output[-500:])
    args = WRITING[seed % 4] + [root]
    r = invoke(args, seconds=180)
    after = files_of(root)
    changed = [st for st in ROOT_STORES if after.get(st) != before[st]]
    assert not [f for f in after if ".boltkit-new" in f], (args, what, sorted(after))
    if r.exit_code & 8 and args[1] == "repair":
        assert changed == [], (args, what, changed, r.output[-800:])     # refused: refused before any write
    for st in changed:
        backups = [f for f in after if f.startswith(st + ".boltkit-") and f.endswith(".bak")]
        assert any(after[b] == before[st] for b in backups), (args, what, st, backups)
        assert any(f.startswith(st + ".boltkit-") and f.endswith(".report.json") for f in after), (args, what, st)


# -- huge values and sparse files: time and memory, in a child process -----------------------------------

_CHILD = r"""
import resource, sys
sys.argv = ["boltkit"] + sys.argv[1:]
from boltkit.cli import main
try:
    main()
finally:
    sys.stderr.write("\nMAXRSS %d\n" % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def measured(args, timeout=120, stdout=subprocess.DEVNULL) -> tuple[int, int, str]:
    """(exit status, peak RSS in bytes, stderr) of one boltkit run in a child process."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                          timeout=timeout, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    err = proc.stderr.decode(errors="replace")
    rss = int(err.rsplit("MAXRSS", 1)[1]) * 1024
    assert "Traceback" not in err, err[-2000:]
    return proc.returncode, rss, err


def _baseline_rss(tmp_path) -> int:
    return measured(["info", EXAMPLE])[1]


def test_huge_value_costs_at_most_twice_it(oracle, tmp_path):
    """Issue 12: peak RSS <= 2x the largest value a command must hold (one 400 MB value cost 3.3 GB to export,
    1.2 GB to compact, 2.0 GB to salvage). The file is written by real bbolt; every command that reads, checks or
    copies the value is measured in a child process, and the copies hold the value bbolt wrote."""
    size = 48 << 20
    db = oracle.run("gen", "-profile", "huge", "-value-size", size, tmp_path / "huge.db") and tmp_path / "huge.db"
    base = _baseline_rss(tmp_path)
    value = tmp_path / "value.bin"
    for args, out in ((["get", "-e", "raw", db, "big", "huge"], value), (["export", "-e", "hex", db], None),
                      (["check", db], None), (["compact", db, "-o", tmp_path / "c.db"], None),
                      (["salvage", db, "-o", tmp_path / "s.db"], None)):
        with open(out or os.devnull, "wb") as f:
            code, rss, err = measured(args, stdout=f)
        assert code == 0, (args, err[-1000:])
        assert rss - base <= 2 * size, (args[0], rss >> 20, base >> 20)
    assert value.stat().st_size == size
    from boltkit.storage import Database
    for copy in (tmp_path / "c.db", tmp_path / "s.db"):
        assert oracle.check(copy)[0] == 0
        with Database(str(copy)) as out:
            assert out.get([b"big"], b"huge") == value.read_bytes(), copy


@pytest.mark.parametrize("kind", ["binary", "text", "multibyte", "non-printable"])
def test_streamed_json_equals_the_one_shot_encoding(kind, tmp_path, monkeypatch):
    """Tiny chunks, so that multi-byte characters and base64 groups straddle chunk boundaries."""
    from boltkit.cli import inspect as inspect_cli
    from boltkit.cli import values
    from boltkit.write import BoltWriter
    monkeypatch.setattr(values, "CHUNK", 7)
    monkeypatch.setattr(values, "SMALL", 64)
    monkeypatch.setattr(inspect_cli, "SMALL", 64)
    value = {"binary": random.Random(3).randbytes(5000), "text": b"0123456789abcdef" * 300,
             "multibyte": "a\u00e9\u20ac\U0001F600\u2028z".encode() * 300,
             "non-printable": "x\u00e9\n".encode() * 1000 + b"\xff\xfe" + "\u20ac".encode() * 50}[kind]
    db = tmp_path / "v.db"
    with BoltWriter(str(db), sync=False) as w:
        w.begin_bucket(b"big")
        w.put(b"huge", value)
        w.end_bucket()
    for enc in ("auto", "hex", "base64", "utf8"):
        r = CliRunner().invoke(main, ["export", "-e", enc, str(db)])
        rec = [json.loads(x) for x in r.output.split("\n") if x][1]     # (U+2028 is no line break in JSON)
        assert rec["value"] == encode_bytes(value, enc), enc
        r = CliRunner().invoke(main, ["get", "--json", "-e", enc, str(db), "big", "huge"])
        assert json.loads(r.output)["value"] == encode_bytes(value, enc), enc
        if enc != "auto":
            r = CliRunner().invoke(main, ["get", "-e", enc, str(db), "big", "huge"])
            assert r.output[:-1] == (value.hex() if enc == "hex" else encode_bytes(value, enc)), enc
    r = CliRunner().invoke(main, ["get", str(db), "big", "huge"])
    from boltkit.cli.output import show_bytes
    assert r.output[:-1] == show_bytes(value)


def test_sparse_file_whose_hwm_covers_it(tmp_path):
    size = 4 << 30
    db = tmp_path / "sparse.db"
    attack.sparse(EXAMPLE, db, size)
    assert db.stat().st_blocks * 512 < 8 << 20
    base = _baseline_rss(tmp_path)
    listing = tmp_path / "pages.json"
    for args, code_wanted in ((["pages", "--json", db], 0), (["check", db], 4),
                              (["salvage", db, "-o", tmp_path / "s.db"], 0)):
        with open(listing if args[0] == "pages" else os.devnull, "wb") as f:
            code, rss, err = measured(args, timeout=90, stdout=f)
        assert code == code_wanted, (args, code, err[-1000:])
        assert rss - base < 128 << 20, (args, rss, base)     # was 8-12 GB for 10 GiB, and minutes
    last = json.loads(listing.read_text().splitlines()[-1])
    assert last["page_type"] == "leaked" and last["id"] + last["run"] == size // 4096
    text = invoke(["pages", db]).output.splitlines()
    assert len(text) < 200 and f"-{size // 4096 - 1}" in text[-1]


# -- a hostile user's command lines: each was a traceback, a hang, a fork bomb or a file left behind ---------------

def test_non_utf8_paths_and_names_are_their_own_bytes(tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/\xff\xfe.db"
    with open(raw, "wb") as f:
        f.write(EXAMPLE.read_bytes())
    name = os.fsdecode(raw)
    for args in (["info", name], ["check", name], ["buildkit", "prune", name],
                 ["compact", name, "-o", os.fsdecode(raw + b".c")]):
        r = invoke(args)
        assert r.exit_code == 0 and b"\xff\xfe.db" in r.stdout_bytes, (args, r.output[-300:])
    r = invoke(["get", EXAMPLE, "_links", os.fsdecode(b"\xff")])
    assert r.exit_code == 8 and "key not found: 0xff" in r.output


def test_a_config_buildkitd_would_refuse_is_an_error_not_a_traceback(tmp_path):
    root = attack.copy_root(CORPUS_ROOT, tmp_path / "root")
    configs = {"malformed": b"[worker.oci\ngc = ", "worker-int": b"worker = 5", "gc-str": b"[worker.oci]\ngc = 'yes'",
               "policy-int": b"[worker.oci]\ngcpolicy = 5", "entries-str": b"[history]\nmaxEntries = 'abc'",
               "age-array": b"[history]\nmaxAge = []", "age-inf": b"[history]\nmaxAge = inf",
               "history-array": b"history = [1, 2]", "binary": b"\xff\xfe\x00"}
    paths = []
    for name, text in configs.items():
        (tmp_path / name).write_bytes(text)
        paths.append(tmp_path / name)
    attack.fifo(tmp_path / "fifo.toml")           # used to block in open() forever
    paths += [tmp_path / "fifo.toml", tmp_path]
    for p in paths:
        for cmd in (["buildkit", "simulate-start"], ["buildkit", "fsck"]):
            r = invoke(cmd + ["--config", p, root], seconds=30)
            assert r.exit_code == 8 and str(p) in r.output, (cmd, p.name, r.exit_code, r.output[-300:])


def test_bad_values_are_usage_errors_and_leave_nothing(tmp_path):
    for opt, value in (("--page-size", "131072"), ("--page-size", "3000"), ("--fill-percent", "nan")):
        r = invoke(["compact", opt, value, EXAMPLE, "-o", tmp_path / "c.db"])
        assert r.exit_code == 16 and not (tmp_path / "c.db").exists(), (opt, value, r.output)
    root = attack.copy_root(CORPUS_ROOT, tmp_path / "root")
    assert invoke(["buildkit", "du", "--older-than", "99999999999999h", root]).exit_code == 0


def test_fsck_jobs_never_fork_more_workers_than_stores(tmp_path, monkeypatch):
    import boltkit.buildkit.fsck as fsck
    asked = []
    real = fsck.ProcessPoolExecutor
    monkeypatch.setattr(fsck, "ProcessPoolExecutor", lambda max_workers: asked.append(max_workers) or real(max_workers))
    root = attack.copy_root(CORPUS_ROOT, tmp_path / "root")
    assert invoke(["buildkit", "fsck", "-j", "100000", root], seconds=120).exit_code == 0
    assert asked and asked[0] <= 5, asked          # -j 100000 forked until the machine stopped


def test_a_history_record_of_the_wrong_wire_types(tmp_path):
    from boltkit.write import BoltWriter
    db = tmp_path / "history.db"
    with BoltWriter(str(db), sync=False) as w:
        w.begin_bucket(b"_records")
        w.put(b"a", b"\x0a\x01a\x30\x05")          # ref "a", then created_at as a varint, not a timestamp
        w.put(b"b", b"\x08\x07")                    # ref as a varint
        w.put(b"c", b"\x0a\x01c\x32\x02\x08\x7f")  # created_at whose seconds are length-delimited... fine
        w.put(b"d", b"\x0a\x01d\x32\x0b\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")  # seconds -1 (int64)
        w.end_bucket()
    for args in (["buildkit", "history", db], ["buildkit", "check", db]):
        r = invoke(args)
        assert r.exit_code in (0, 4), (args, r.output[-500:])


def test_a_file_size_limit_exits_8_and_leaves_nothing(tmp_path):
    """ulimit -f: SIGXFSZ used to kill the process and leave the partial output."""
    import resource
    root = attack.copy_root(CORPUS_ROOT, tmp_path / "root")
    cases = [(["compact", EXAMPLE, "-o", tmp_path / "c.db"], tmp_path / "c.db"),
             (["salvage", EXAMPLE, "-o", tmp_path / "s.db"], tmp_path / "s.db"),
             (["surgery", "freelist", "rebuild", EXAMPLE, "-o", tmp_path / "f.db"], tmp_path / "f.db"),
             (["buildkit", "simulate-start", "-o", tmp_path / "out", root], tmp_path / "out")]

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))
    for args, out in cases:
        proc = subprocess.run([sys.executable, "-m", "boltkit", *map(str, args)], preexec_fn=limit, cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, timeout=120)
        err = proc.stderr.decode(errors="replace")
        assert proc.returncode == 8 and "Traceback" not in err and str(out) in err, (args, proc.returncode, err)
        assert not out.exists() and not list(tmp_path.glob(out.name + "*")), (args, list(tmp_path.iterdir()))
