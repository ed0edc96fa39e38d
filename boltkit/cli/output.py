"""Shared output machinery: byte encodings, tables, JSON, and the options every command takes."""
from __future__ import annotations

import base64
import functools
import json
import sys

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


def progress_enabled() -> bool:
    return sys.stderr.isatty()
