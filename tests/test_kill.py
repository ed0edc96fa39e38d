"""Fault injection: a repair process killed with SIGKILL at random moments and right after each of its fsyncs
leaves the store path holding either the original or the complete new file, never a torn or missing one, and a
rerun then succeeds and leaves no temp behind.

The repair runs in a forked child (no interpreter start per kill, so the whole test stays a few seconds): its
os.fsync is wrapped to SIGKILL the child right after the n-th call, for every n the clean run makes."""
from __future__ import annotations

import os
import random
import signal
import sys
import time
import weakref

import pytest
from click.testing import CliRunner

from boltkit.check import check_file
from boltkit.cli import main
from boltkit.repair.replace import clear_stale, stale_temps

from .conftest import corpus_files
from .test_buildkit_prune import planted_store

TORN = next(p for p in corpus_files("torn") if "cache-cp-during-build-73" in p.name)


def child(args: list[str], kill_after_fsync: int | None) -> tuple[int, int, float]:
    """Run the command in a forked child; returns (wait status, fsyncs made, seconds)."""
    r, w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:                        # the child: never returns into pytest
        os.close(r)
        code = 1
        try:
            real, calls = os.fsync, [0]

            def fsync(fd):
                real(fd)
                calls[0] += 1
                if calls[0] == kill_after_fsync:
                    os.kill(os.getpid(), signal.SIGKILL)
            os.fsync = fsync
            sys.stdout = sys.stderr = open(os.devnull, "w")
            try:
                main.main(args=args, standalone_mode=False)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            os.write(w, str(calls[0]).encode())
        finally:
            os._exit(code)
    os.close(w)
    return pid, r, start


def finish(pid, r, start):
    _, status = os.waitpid(pid, 0)
    calls = os.read(r, 100)
    os.close(r)
    return status, int(calls or -1), time.monotonic() - start


def run_child(args, kill_after_fsync=None):
    return finish(*child(args, kill_after_fsync))


def kill_at(args, delay):
    pid, r, start = child(args, None)
    time.sleep(delay)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return finish(pid, r, start)


SCENARIOS = {
    "salvage --in-place": (lambda d: _torn(d), lambda p: ["salvage", "--in-place", str(p)]),
    "prune --apply": (lambda d: planted_store(d), lambda p: ["buildkit", "prune", "--apply", str(p)]),
}


def _torn(d):
    p = d / "cache.db"
    p.write_bytes(TORN.read_bytes())
    return p


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_killed_repair_leaves_the_original_or_the_new_file(tmp_path, name):
    make, argv = SCENARIOS[name]
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref = make(ref_dir)
    original = ref.read_bytes()
    status, fsyncs, took = run_child(argv(ref))
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and fsyncs >= 5, (status, fsyncs)
    new = ref.read_bytes()
    assert new != original and check_file(str(ref)).clean
    rng = random.Random(12)
    points = [("fsync", n) for n in range(1, fsyncs + 1)] + [("time", rng.uniform(0, took)) for _ in range(4)]
    outcomes = set()
    for i, (how, at) in enumerate(points):
        d = tmp_path / f"k{i}"
        d.mkdir()
        path = make(d)
        assert path.read_bytes() == original
        status, _, _ = run_child(argv(path), at) if how == "fsync" else kill_at(argv(path), at)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        assert killed or (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0), (how, at, status)
        now = path.read_bytes()
        assert now in (original, new), (how, at, "the store is neither the original nor the new file")
        outcomes.add("new" if now == new else "original")
        r = CliRunner().invoke(main, argv(path))         # the rerun: stale temps cleared, repair done
        assert r.exit_code == 0, (how, at, r.output)
        assert path.read_bytes() == new and check_file(str(path)).clean
        # a temp left by the kill is either cleared by the rerun or, when the rerun had nothing to write, one the
        # next repair recognises as stale and clears
        temps = sorted(str(p) for p in d.iterdir() if ".boltkit-new" in p.name)
        assert temps == stale_temps(str(path)), (how, at, temps)
        clear_stale(str(path))
        assert not [p.name for p in d.iterdir() if ".boltkit-new" in p.name], (how, at)
        assert original in [b.read_bytes() for b in d.glob("cache.db.boltkit-*.bak")], (how, at)
    assert outcomes == {"original", "new"}


# -- SIGTERM: exit 8 (not done), temps removed, and never between two swaps of one root --------------------------

ROOT = next(p for p in corpus_files("sound") if p.name == "cache.db" and "01-after-30-builds" in str(p)).parent
SWAPPED = ["cache.db", "runc-overlayfs/containerdmeta.db", "runc-overlayfs/snapshots/metadata.db"]


def term_child(args: list[str], when: str, sig: int = signal.SIGTERM) -> int:
    """Run the command in a forked child that sends itself SIGTERM at its first fsync (``when="write"``: the new
    files are being written) or at the rename of its first store over the original (``when="swap"``); returns the
    exit status (-1: killed by the signal). ``when="write, dropped"``: at every fsync, with the handler run inside a
    finalizer, where Python prints and drops the exception it raises."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            real_fsync, real_replace = os.fsync, os.replace

            def fsync(fd):
                real_fsync(fd)
                if when == "write":
                    os.kill(os.getpid(), sig)
                elif when == "write, dropped":      # the handler runs inside a finalizer, which drops its exception
                    doomed = type("Doomed", (), {})()
                    weakref.finalize(doomed, lambda: os.kill(os.getpid(), sig) or None)
                    del doomed

            def replace(src, dst, **kw):
                real_replace(src, dst, **kw)
                if when == "swap" and not str(dst).endswith(".report.json"):
                    os.kill(os.getpid(), sig)
            os.fsync, os.replace = fsync, replace
            sys.stdout = sys.stderr = open(os.devnull, "w")
            try:
                main.main(args=args, standalone_mode=False)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except Exception as e:          # a ClickException (the signal's Error: line, exit 8)
                code = getattr(e, "exit_code", 1)
        finally:
            os._exit(code)
    status = os.waitpid(pid, 0)[1]
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1


@pytest.mark.parametrize("when", ["write", "swap"])
def test_sigterm_exits_8_and_never_leaves_a_root_half_swapped(tmp_path, when):
    import shutil
    root = tmp_path / "root"
    shutil.copytree(ROOT, root)
    before = {s: (root / s).read_bytes() for s in SWAPPED}
    assert term_child(["buildkit", "repair", "--apply", str(root)], when) == 8
    changed = [s for s in SWAPPED if (root / s).read_bytes() != before[s]]
    leftovers = [str(p) for p in root.rglob("*") if ".boltkit-new" in p.name]
    assert not leftovers, leftovers
    if when == "write":             # stopped before any swap: nothing changed, no backup
        assert changed == [] and not list(root.rglob("*.bak"))
    else:                           # the signal waited for the last swap: every store, each with backup and report
        assert changed == SWAPPED, changed
        for s in SWAPPED:
            assert len(list((root / s).parent.glob((root / s).name + ".boltkit-*.report.json"))) == 1, s
        assert CliRunner().invoke(main, ["buildkit", "repair", str(root)]).output.strip().endswith(
            "nothing to repair")


def test_every_signal_on_a_single_store_repair_exits_8(tmp_path):
    """SIGTERM, SIGHUP and Ctrl-C's SIGINT alike: exit 8, not 143/129 (outside the table) nor click's 1."""
    for when, sig in (("write", signal.SIGTERM), ("swap", signal.SIGTERM), ("write", signal.SIGINT),
                      ("swap", signal.SIGHUP)):
        d = tmp_path / f"{when}-{sig}"
        d.mkdir()
        path = _torn(d)
        original = path.read_bytes()
        assert term_child(["salvage", "--in-place", str(path)], when, sig) == 8, (when, sig)
        assert (path.read_bytes() == original) == (when == "write")
        assert not [p.name for p in d.iterdir() if ".boltkit-new" in p.name]
        if when == "swap":
            assert list(d.glob("cache.db.boltkit-*.report.json")) and check_file(str(path)).clean


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_whose_exception_was_dropped_still_stops_the_swap(tmp_path, sig):
    """Python runs a signal's handler between any two bytecodes, a finalizer's too, and drops what it raises
    there: the command still exits 8 before it swaps anything in, and leaves no temp behind."""
    path = _torn(tmp_path)
    original = path.read_bytes()
    assert term_child(["salvage", "--in-place", str(path)], "write, dropped", sig) == 8
    assert path.read_bytes() == original
    assert not [p.name for p in tmp_path.iterdir() if ".boltkit-new" in p.name or ".bak" in p.name]
