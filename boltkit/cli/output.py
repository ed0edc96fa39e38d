"""Shared output machinery: byte encodings, tables, JSON, and the options every command takes."""
from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import sys
import time

import click

ENCODINGS = ("auto", "hex", "base64", "utf8")


def is_printable_text(b: bytes) -> bool:
    try:
        s = b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return s.isprintable()


def encode_bytes(b: bytes, encoding: str):
    """A JSON value for ``b``. ``auto`` keeps printable UTF-8 as text and marks anything else as hex."""
    if encoding == "hex":
        return b.hex()
    if encoding == "base64":
        return base64.b64encode(b).decode("ascii")
    if encoding == "utf8":
        return b.decode("utf-8", "backslashreplace")
    return b.decode("utf-8") if is_printable_text(b) else {"hex": b.hex()}


def show_bytes(b: bytes | None, limit: int | None = None) -> str:
    """Human form for tables: text when printable, otherwise 0x-prefixed hex."""
    if b is None:
        return ""
    s = b.decode("utf-8") if is_printable_text(b) else "0x" + b.hex()
    if limit is not None and len(s) > limit:
        s = s[:limit - 1] + "…"
    return s


def show_path(path) -> str:
    return "/".join(show_bytes(p) for p in path) if path else "/"


def parse_name(text: str, as_hex: bool) -> bytes:
    if not as_hex:
        return text.encode("utf-8")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not hexadecimal (--hex is set)") from None


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))


def emit_table(rows, headers, fmt: str = "simple") -> None:
    from tabulate import tabulate   # imported when a table is printed: JSON and check runs start faster
    if rows:
        click.echo(tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True))


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output (JSON; one record per line for listings).")(f)


def table_format_option(f):
    return click.option("--fmt", "table_fmt", default="simple", show_default=True,
                        help="Table style, any tabulate format (plain, github, grid, ...).")(f)


def read_options(f):
    """--meta and --snapshot: how a file is opened."""
    f = click.option("--meta", "meta", type=click.IntRange(0, 1), default=None,
                     help="Read the tree of meta page 0 or 1 instead of the current one.")(f)
    f = click.option("--snapshot", is_flag=True,
                     help="Copy the file first and read the copy (for files a running daemon is writing).")(f)
    return f


def hex_option(f):
    return click.option("--hex", "as_hex", is_flag=True, help="Bucket names and keys on the command line are hexadecimal.")(f)


def output_options(f):
    @json_option
    @table_format_option
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)
    return wrapper


QUIET = "boltkit.quiet"          # ctx.meta key: --quiet was given (to the group or to the command)


def _set_quiet(ctx, param, value):
    if value:
        ctx.meta[QUIET] = True


def quiet_option(f):
    """--quiet/-q on a long-running command: no progress bar."""
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_quiet,
                        help="No progress bar on stderr.")(f)


def progress_enabled(as_json: bool = False, stdout_busy: bool = False) -> bool:
    """Progress is drawn only on a terminal's stderr, never with --json or --quiet, and not while the
    command's own output streams to the same terminal (``stdout_busy``)."""
    ctx = click.get_current_context(silent=True)
    if as_json or (ctx is not None and ctx.meta.get(QUIET)):
        return False
    if stdout_busy and sys.stdout.isatty():
        return False
    return sys.stderr.isatty()


class Progress:
    """The callback a library function reports its progress through, ``progress(done, total)``, drawn with
    click's progress bar on stderr. Nothing is drawn for the first ``delay`` seconds, so commands that
    finish quickly print nothing extra; ``finish()`` ends the bar's line before the command prints."""

    def __init__(self, label: str, delay: float | None = None):
        if delay is None:       # BOLTKIT_PROGRESS_DELAY: seconds before a bar appears (tests set 0)
            try:
                delay = float(os.environ.get("BOLTKIT_PROGRESS_DELAY", "1"))
            except ValueError:
                delay = 1.0
        self.label, self.delay = label, delay
        self.start = time.monotonic()
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            if time.monotonic() - self.start < self.delay:
                return
            self.bar = click.progressbar(length=max(total, 1), label=self.label, file=sys.stderr,
                                         show_percent=True, show_eta=True)
            self.bar.render_progress()
        self.bar.length = max(total, 1)
        step = min(done, self.bar.length) - self.bar.pos
        if step > 0:
            self.bar.update(step)

    def finish(self, complete: bool = True) -> None:
        """End the bar's line; ``complete``: the work is done (a pass that skips free pages ends short)."""
        if self.bar is not None:
            if complete and self.bar.pos < self.bar.length:
                self.bar.update(self.bar.length - self.bar.pos)
            self.bar.render_finish()
            self.bar = None


@contextlib.contextmanager
def progress(label: str, *, as_json: bool = False, stdout_busy: bool = False):
    """``with progress("checking x") as p: work(progress=p)``: ``p`` is a Progress, or None when no bar is
    to be drawn (see ``progress_enabled``); the bar's line is ended when the block is left."""
    if not progress_enabled(as_json, stdout_busy):
        yield None
        return
    p = Progress(label)
    try:
        yield p
    except BaseException:
        p.finish(complete=False)
        raise
    p.finish()
