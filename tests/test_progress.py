"""Progress bars: on a terminal's stderr only, never with --json or --quiet, never on stdout."""
from __future__ import annotations

import os
import pty
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "cache.db"


def run_on_tty(*args: str, tmp_path: Path) -> tuple[int, bytes, bytes]:
    """(exit status, stdout, what the terminal on stderr showed) of `python -m boltkit ARGS`."""
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(ROOT), BOLTKIT_PROGRESS_DELAY="0", COLUMNS="100")
    # stdout into a file, not a pipe: a pipe nobody reads while the terminal is drained fills at 64 KiB (a
    # --json plan is longer) and the child blocks on it forever
    stdout = tempfile.TemporaryFile(dir=tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "boltkit", *args], stdout=stdout, stderr=slave,
                            cwd=tmp_path, env=env)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:          # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    code = proc.wait(timeout=60)
    os.close(master)
    stdout.seek(0)
    out = stdout.read()
    stdout.close()
    return code, out, shown


@pytest.mark.parametrize("args,label", [
    (["check", str(EXAMPLE)], b"checking"),
    (["buildkit", "check", str(EXAMPLE)], b"checking"),
    (["export", "--count", str(EXAMPLE)], b"counting"),
    (["compact", str(EXAMPLE), "-o", "out.db"], b"compacting"),
    (["buildkit", "graph", str(EXAMPLE)], b"reading"),
])
def test_a_bar_on_a_terminal_finished_before_the_output(tmp_path, args, label):
    code, out, shown = run_on_tty(*args, tmp_path=tmp_path)
    assert code == 0, shown
    assert label in shown and b"100%" in shown and shown.endswith(b"\r\n")
    assert b"100%" not in out and label not in out        # stdout carries the command's output only


def test_quiet_and_json_silence_the_bar(tmp_path):
    plain = run_on_tty("check", str(EXAMPLE), tmp_path=tmp_path)
    for args in (["check", "--quiet", str(EXAMPLE)], ["-q", "check", str(EXAMPLE)],
                 ["check", "--json", str(EXAMPLE)]):
        code, out, shown = run_on_tty(*args, tmp_path=tmp_path)
        assert code == 0 and b"%" not in shown and b"checking" not in shown, args
        if "--json" not in args:
            assert out == plain[1]


def test_no_bar_when_stderr_is_not_a_terminal(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), BOLTKIT_PROGRESS_DELAY="0")
    proc = subprocess.run([sys.executable, "-m", "boltkit", "check", str(EXAMPLE)], capture_output=True, env=env)
    assert proc.returncode == 0 and proc.stderr == b""


def test_export_draws_no_bar_over_its_own_output_on_the_same_terminal(tmp_path):
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(ROOT), BOLTKIT_PROGRESS_DELAY="0")
    proc = subprocess.Popen([sys.executable, "-m", "boltkit", "export", str(EXAMPLE)], stdout=slave, stderr=slave,
                            env=env)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    assert proc.wait(timeout=60) == 0
    os.close(master)
    assert b'"type":"pair"' in shown and b"exporting" not in shown


@pytest.mark.parametrize("command,label", [("fsck", b"checking"), ("prune", b"planning"),
                                           ("simulate-start", b"replaying"), ("gc", b"replaying"),
                                           ("du", b"replaying")])
def test_fsck_and_prune_draw_a_bar_and_quiet_or_json_silence_it(tmp_path, command, label):
    """fsck: the stores' pages, then the replay's releases; prune: the check, the read and the plan;
    simulate-start, gc and du: the replay's releases (of the start they follow)."""
    import shutil
    root = tmp_path / "root"
    root.mkdir()
    shutil.copyfile(EXAMPLE, root / "cache.db")
    target = str(root / "cache.db") if command == "prune" else str(root)
    code, out, shown = run_on_tty("buildkit", command, target, tmp_path=tmp_path)
    assert code == 0, shown
    assert label in shown and b"100%" in shown and shown.endswith(b"\r\n")
    assert label not in out
    for args in (["buildkit", command, "-q", target], ["-q", "buildkit", command, target]):
        quiet = run_on_tty(*args, tmp_path=tmp_path)
        assert quiet[0] == 0 and b"%" not in quiet[2] and quiet[1] == out, args
    as_json = run_on_tty("buildkit", command, "--json", target, tmp_path=tmp_path)
    assert as_json[0] == 0 and b"%" not in as_json[2]


def _leaf_of(path: Path) -> tuple[int, int]:
    """(offset, size) of a leaf page of the tree of ``path`` (a page salvage has to read around once zeroed)."""
    from boltkit.storage import Database
    with Database(str(path)) as db:
        for _, child, _ in db.tree.walk(db.root()):
            if child is not None and not child.inline:
                for node, _ in db.tree.leaves(child):
                    return node.pgid * db.page_size, db.page_size
    raise AssertionError("no paged bucket")


@pytest.mark.parametrize("damaged", [False, True], ids=["sound", "damaged"])
@pytest.mark.parametrize("in_place", [False, True], ids=["to-a-new-file", "in-place"])
def test_salvage_draws_a_bar_and_quiet_or_json_silence_it(tmp_path, damaged, in_place):
    """A sound source is copied in bulk, a damaged one walked tolerantly: both report their progress."""
    import shutil
    src = tmp_path / "cache.db"
    shutil.copyfile(EXAMPLE, src)
    if damaged:
        at, size = _leaf_of(src)
        with open(src, "r+b") as f:
            f.seek(at)
            f.write(bytes(size))

    def args(*extra):
        out = tmp_path / f"out{''.join(extra)}.db"
        return ["salvage", str(src), *(["--in-place"] if in_place else ["-o", str(out)]), *extra]
    code, out, shown = run_on_tty(*args(), tmp_path=tmp_path)
    assert code == 0, shown
    assert b"salvaging" in shown and b"100%" in shown and shown.endswith(b"\r\n")
    assert b"salvaging" not in out and b"%|" not in out
    for extra in (["-q"], ["--json"]):
        if in_place:
            shutil.copyfile(EXAMPLE, src)
        code, out, shown = run_on_tty(*args(*extra), tmp_path=tmp_path)
        assert code == 0 and b"%" not in shown and b"salvaging" not in shown, extra


def test_buildkit_repair_draws_a_bar_and_quiet_or_json_silence_it(tmp_path):
    """The replayed start (its releases), the stores written and verified; with --prune also the plan before."""
    import shutil
    from .conftest import CORPUS
    # with --prune, the plan releases what the start would, so the replay that follows has nothing to release
    for args, labels in ((["--apply"], [b"replaying the start", b"repairing"]),
                         (["--apply", "--prune"], [b"planning", b"repairing"])):
        root = tmp_path / ("root" + "".join(args))
        shutil.copytree(CORPUS / "daemon1-overlayfs" / "01-after-30-builds", root)
        code, out, shown = run_on_tty("buildkit", "repair", *args, str(root), tmp_path=tmp_path)
        assert code == 0, shown
        assert all(label in shown for label in labels) and b"100%" in shown and shown.endswith(b"\r\n"), args
        assert b"%" not in out and b"applied" in out
    for quiet in (["-q"], ["--json"]):
        root = tmp_path / ("quiet" + quiet[0])
        shutil.copytree(CORPUS / "daemon1-overlayfs" / "01-after-30-builds", root)
        code, out, shown = run_on_tty("buildkit", "repair", "--apply", "--prune", *quiet, str(root),
                                      tmp_path=tmp_path)
        assert code == 0 and b"%" not in shown and b"repairing" not in shown, quiet
