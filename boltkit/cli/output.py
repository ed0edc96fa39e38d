"""Shared output machinery: byte encodings, tables, JSON, and the options every command takes."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from typing import Any

import click

from ..textform import ENCODINGS, encode_bytes, encode_path, is_printable_text, show_bytes, show_path  # noqa: F401


def parse_name(text: str, as_hex: bool) -> bytes:
    """A bucket name or key from the command line: the argument's own bytes (a name that is not UTF-8 arrives
    as surrogate escapes, which give those bytes back), or its hex with --hex."""
    if not as_hex:
        return os.fsencode(text)
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not hexadecimal (--hex is set)") from None


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))


def emit_table(rows, headers, fmt: str = "simple", wide: bool | None = None, shrink=None) -> None:
    """Print a table that fits the terminal: cells of the widest columns are cut short with "…" until the
    rows fit (``--wide`` or ``wide=True`` prints them whole). ``shrink`` names the columns (indices) to cut
    first, the free text (descriptions, keys, paths); the others are cut only if that is not enough.
    Leading spaces are kept, so indented names (the tree) keep showing their nesting."""
    import tabulate as tabulate_module   # imported when a table is printed: JSON and check runs start faster
    if not rows:
        return
    rows = [["" if c is None else str(c) for c in r] for r in rows]
    if wide is None:
        wide = wide_requested()
    width = None if wide else terminal_width()
    if width is not None:
        rows = fit_columns(rows, [str(h) for h in headers], width, SEPARATOR_WIDTH.get(fmt, 3), shrink)
    keep = tabulate_module.PRESERVE_WHITESPACE, tabulate_module.MIN_PADDING
    # keep the tree's indentation; no extra padding around headers (columns are as wide as their cells)
    tabulate_module.PRESERVE_WHITESPACE, tabulate_module.MIN_PADDING = True, 0
    try:
        try:     # tabulate 0.10 takes it as an argument; 0.9 reads the module global set above
            text = tabulate_module.tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True,
                                            preserve_whitespace=True)
        except TypeError:
            text = tabulate_module.tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)
        click.echo(text)
    finally:
        tabulate_module.PRESERVE_WHITESPACE, tabulate_module.MIN_PADDING = keep


# columns of space a table format spends between two cells (simple and plain: two spaces; grid, github: " | ")
SEPARATOR_WIDTH = {"simple": 2, "plain": 2}


def terminal_width() -> int | None:
    """The width tables must fit: $COLUMNS when set, else the terminal's; None when stdout is not a terminal
    (a pipe or a file gets whole cells, as `ls` does)."""
    import os
    import shutil
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    if sys.stdout.isatty():
        return shutil.get_terminal_size((80, 24)).columns
    return None


def fit_columns(rows: list[list[str]], headers: list[str], width: int, sep: int, shrink=None) -> list[list[str]]:
    """Cut columns down to one cap, the largest that lets every row fit in ``width``: first only the
    ``shrink`` columns, then all. No column goes below its header or 6 characters, so a table too wide
    even then overflows instead of vanishing."""
    n = len(headers)
    natural = [max([len(headers[i])] + [len(r[i]) for r in rows]) for i in range(n)]
    budget = width - sep * (n - 1) - (sep if sep > 2 else 0) * 2
    if sum(natural) <= budget:
        return rows
    floor = [min(natural[i], max(len(headers[i]), 6)) for i in range(n)]
    caps = list(natural)
    for group in ([i for i in range(n) if i in set(shrink)] if shrink else [], list(range(n))):
        if not group or sum(caps) <= budget:
            continue
        fixed = sum(caps[i] for i in range(n) if i not in group)

        def used(cap, group=group, fixed=fixed):
            return fixed + sum(max(floor[i], min(caps[i], cap)) for i in group)
        lo, hi = 1, max(caps[i] for i in group)
        while lo < hi:   # the largest cap that fits
            mid = (lo + hi + 1) // 2
            if used(mid) <= budget:
                lo = mid
            else:
                hi = mid - 1
        for i in group:
            caps[i] = max(floor[i], min(caps[i], lo))
    return [[truncate(c, caps[i]) for i, c in enumerate(r)] for r in rows]


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:max(limit - 1, 0)] + "…"


def wide_requested() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get("boltkit.wide"))


def _set_wide(ctx, param, value):
    if value:
        ctx.meta["boltkit.wide"] = True


def wide_option(f):
    """--wide: tables print whole cells instead of fitting the terminal."""
    return click.option("--wide", is_flag=True, expose_value=False, callback=_set_wide,
                        help="Print table cells whole instead of cutting them to fit the terminal width.")(f)


def human_size(n: int | None) -> str:
    """Bytes as people read them, with binary units like `buildctl du` (1.5MiB, 512B); "?" when unknown."""
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)}{unit}" if unit == "B" else f"{size:.3g}{unit}" if size < 100 else f"{size:.0f}{unit}"
        size /= 1024
    return f"{n}B"


def echo_wrapped(text: str, indent: str = "  ") -> None:
    """A long line of prose, wrapped to the terminal width (continuation lines indented); whole when piped."""
    import textwrap
    width = None if wide_requested() else terminal_width()
    if width is None or len(text) <= width:
        click.echo(text)
    else:
        click.echo(textwrap.fill(text, width=max(width, 40), subsequent_indent=indent, break_on_hyphens=False))


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def note(message: str) -> None:
    """What a command did not do or read differently than asked, on stderr (nothing wrong with the data)."""
    click.echo(f"note: {message}", err=True)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True,
                        help="Machine-readable output (JSON; one record per line for listings).")(f)


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
    return click.option("--hex", "as_hex", is_flag=True,
                        help="Bucket names and keys on the command line are hexadecimal.")(f)


def output_options(f):
    @json_option
    @table_format_option
    @wide_option
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
        self.bar: Any = None             # click's progress bar, once the delay has passed

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
