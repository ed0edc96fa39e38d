"""The exit-code table (boltkit/cli/app.py) holds for every command and every class of error a user can
cause: missing argument or bad option 16; missing file, not a regular file (FIFO, socket, device,
directory), not bbolt, wrong kind of store, permission denied, bad output path 8 — each with one clear
line, no traceback, no hang, and nothing left behind. Commands are found by walking the click group, so a
new command is covered (or this test says how to cover it) without anyone remembering to."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from boltkit.cli import main
from boltkit.cli.app import in_table
from testdata import attack

from .conftest import CORPUS, EXAMPLE, ROOT

CORPUS_ROOT = CORPUS / "daemon1-overlayfs" / "01-after-30-builds"
ROOT_COMMANDS = {("buildkit", "ls"), ("buildkit", "fsck"), ("buildkit", "repair"), ("buildkit", "simulate-start"),
                 ("buildkit", "gc")}
# what each store-specific command reads; anything else reads any bolt file
STORE_OF = {("buildkit", "graph"): "cache.db", ("buildkit", "prune"): "cache.db",
            ("buildkit", "history"): "history.db", ("buildkit", "du"): "metadata_v2.db"}
WRONG_STORE = {"cache.db": "history.db", "history.db": "cache.db", "metadata_v2.db": "cache.db"}


def leaf_commands(group=main, prefix=()):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from leaf_commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


COMMANDS = dict(leaf_commands())


def argv(path: tuple, input_path, out_dir: Path, **override) -> list[str]:
    """A full command line for ``path`` with ``input_path`` as its file (or root) argument: the other
    arguments and required options get harmless values, outputs go to ``out_dir``."""
    cmd = COMMANDS[path]
    args: list[str] = list(path)
    for p in cmd.params:
        if isinstance(p, click.Argument):
            if p.name in ("file", "files", "src", "root", "target"):
                args.append(str(input_path))
            elif p.name == "page_ids":
                args.append("2")
            elif p.name == "path_and_key":
                args += ["_links", "k"]
            elif p.name == "path" and p.required:
                args.append("_links")
            elif p.name == "action":
                args.append(p.type.choices[0])
            elif p.required:
                raise AssertionError(f"{' '.join(path)}: tests/test_exit_codes.py does not know how to fill "
                                     f"argument {p.name!r}; add it to argv()")
        elif isinstance(p, click.Option) and (p.required or p.name == "dst"):
            value = override.get(p.name)
            if value is None:
                value = {"dst": str(out_dir / ("out-" + "-".join(path) + ".db")), "pgid": "2", "index": "0"}.get(p.name)
            if value is None:
                raise AssertionError(f"{' '.join(path)}: no value for required option {p.name!r}; add it to argv()")
            args += [p.opts[-1], value]
    return args


class Hang(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: int):
    def alarm(signum, frame):
        raise Hang(f"no answer within {seconds} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def invoke(args: list[str], seconds: int = 60):
    with deadline(seconds):
        r = CliRunner().invoke(main, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"{args}: {r.exception!r} (a traceback)") from r.exception
    assert in_table(r.exit_code), (args, r.exit_code, r.output)
    return r


def expect(args, code: int, *words: str):
    r = invoke(args)
    text = r.output.lower()
    assert r.exit_code == code, (args, r.exit_code, r.output[-800:])
    assert "traceback" not in text
    for w in words:
        assert w in text, (args, w, r.output[-800:])
    return r


def is_root_command(path) -> bool:
    return path in ROOT_COMMANDS


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_missing_argument_and_bad_option_are_usage_errors(path):
    expect(list(path), 16)
    expect(list(path) + ["--no-such-option"], 16, "no such option")


@pytest.mark.parametrize("group", [(), ("buildkit",), ("surgery",)], ids=lambda g: " ".join(g) or "boltkit")
def test_unknown_command_is_a_usage_error(group):
    expect(list(group) + ["no-such-command"], 16, "no such command")


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_missing_input_exits_8(path, tmp_path):
    r = expect(argv(path, tmp_path / "missing.db", tmp_path), 8)
    assert "no such file" in r.output.lower() or "not a directory" in r.output.lower(), r.output
    assert not [p for p in tmp_path.iterdir()], "an output was left behind"


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_not_bbolt_exits_8(path, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 400)
    r = expect(argv(path, text, tmp_path), 8)
    assert ("not a bbolt" in r.output or "not a directory" in r.output), r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("kind", ["fifo", "socket", "device", "directory"])
@pytest.mark.parametrize("path", sorted(p for p in COMMANDS if p not in ROOT_COMMANDS), ids=" ".join)
def test_non_file_input_is_refused_at_once(path, kind, tmp_path):
    target = tmp_path / "input"
    keep = None
    if kind == "fifo":
        attack.fifo(target)
    elif kind == "socket":
        keep = attack.unix_socket(target)
    elif kind == "device":
        target = Path("/dev/null")
    else:
        target.mkdir()
    try:
        r = invoke(argv(path, target, tmp_path), seconds=20)
    finally:
        if keep is not None:
            keep.close()
    assert r.exit_code == 8, (kind, r.output)
    # check, buildkit check and du take a root too: for them an empty directory is "no BuildKit stores"
    assert any(w in r.output.lower() for w in ("fifo", "socket", "device", "directory", "no buildkit stores")), \
        r.output


@pytest.mark.parametrize("path", sorted(STORE_OF), ids=" ".join)
def test_wrong_kind_of_store_exits_8(path, tmp_path):
    wrong = WRONG_STORE[STORE_OF[path]]
    src = CORPUS_ROOT / wrong if wrong != "metadata_v2.db" else CORPUS_ROOT / "runc-overlayfs" / wrong
    db = shutil.copy(src, tmp_path / wrong)
    expect(argv(path, db, tmp_path), 8, f"not a {STORE_OF[path]}")


def test_right_kind_of_store_is_accepted(tmp_path):
    for path, kind in STORE_OF.items():
        src = CORPUS_ROOT / kind if kind != "metadata_v2.db" else CORPUS_ROOT / "runc-overlayfs" / kind
        assert invoke(argv(path, src, tmp_path)).exit_code in (0, 1), path


OUTPUT_CASES = {
    "compact -o": (["compact", "{db}", "-o", "{bad}"], ()),
    "salvage -o": (["salvage", "{db}", "-o", "{bad}"], ()),
    "salvage --report": (["salvage", "{db}", "-o", "{out}", "--report", "{bad}"], ("{out}",)),
    "surgery revert-meta -o": (["surgery", "revert-meta", "{db}", "-o", "{bad}"], ()),
    "surgery freelist -o": (["surgery", "freelist", "rebuild", "{db}", "-o", "{bad}"], ()),
    "surgery drop-element -o": (["surgery", "drop-element", "{db}", "-o", "{bad}", "--page", "3", "--index", "0"], ()),
    "surgery clear-page -o": (["surgery", "clear-page", "{db}", "-o", "{bad}", "--page", "3"], ()),
    "check --map": (["check", "--map", "{bad}", "{db}"], ()),
    "pages --map": (["pages", "--map", "{bad}", "{db}"], ()),
    "buildkit graph --dot": (["buildkit", "graph", "--dot", "{bad}", "{db}"], ()),
    "buildkit graph --svg": (["buildkit", "graph", "--svg", "{bad}", "{db}"], ()),
}


@pytest.mark.parametrize("where", ["missing-dir", "a-directory"])
@pytest.mark.parametrize("case", sorted(OUTPUT_CASES))
def test_bad_output_path_exits_8_and_leaves_nothing(case, where, tmp_path):
    db = shutil.copy(EXAMPLE, tmp_path / "cache.db")
    work = tmp_path / "work"
    work.mkdir()
    bad = work / "nope" / "x.out" if where == "missing-dir" else work
    template, must_not_exist = OUTPUT_CASES[case]
    subst = {"{db}": str(db), "{bad}": str(bad), "{out}": str(work / "salvaged.db")}
    before = sorted(os.listdir(tmp_path))
    r = expect([subst.get(a, a) for a in template], 8)
    assert "directory" in r.output.lower() or "does not exist" in r.output.lower(), r.output
    assert sorted(os.listdir(tmp_path)) == before and not os.listdir(work), "something was written"
    for p in must_not_exist:
        assert not Path(subst[p]).exists()


def test_page_beyond_the_file_is_an_error(tmp_path):
    r = expect(["page", EXAMPLE, "1000000000000"], 8)
    assert "beyond" in r.output or "outside" in r.output or "page 1000000000000" in r.output
    assert expect(["page", EXAMPLE, "2"], 0)


_PERMISSION_CHILD = r"""
import json, sys
from click.testing import CliRunner
from boltkit.cli import main
out = {}
for args in json.loads(sys.argv[1]):
    r = CliRunner().invoke(main, args)
    tb = r.exception is not None and not isinstance(r.exception, SystemExit)
    out[" ".join(args)] = [r.exit_code, r.output[-3000:], tb]
print(json.dumps(out))
"""


def _unprivileged() -> list[str] | None:
    """A command prefix that runs without the right to read files one does not own: as root, setpriv drops
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (our interpreter may live in root's home, out of nobody's
    reach); as another user, nothing is needed."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


def test_permission_denied_is_its_own_error_for_every_command(tmp_path):
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("running as root without setpriv: root reads a mode-000 file, so no permission error exists")
    locked = tmp_path / "locked.db"
    shutil.copy(EXAMPLE, locked)
    locked.chmod(0)
    root = tmp_path / "root"
    attack.copy_root(CORPUS_ROOT, root)
    (root / "cache.db").chmod(0)
    paths = sorted(COMMANDS)
    lines = [argv(path, root if is_root_command(path) else locked, tmp_path) for path in paths]
    proc = subprocess.run(prefix + [sys.executable, "-c", _PERMISSION_CHILD, json.dumps(lines)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)
    for path, line in zip(paths, lines):
        code, output, traceback = results[" ".join(line)]
        assert not traceback, (line, output)
        if path == ("buildkit", "ls"):      # a listing: the store's row says it cannot be read
            assert code == 0 and "unreadable" in output, (line, output)
            continue
        assert code & 8, (line, code, output)
        assert "permission denied" in output.lower(), (line, output)
    assert stat.S_IMODE(locked.stat().st_mode) == 0
