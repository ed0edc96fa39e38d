"""How bytes become text: one rule for every layer that describes what it found.

Keys, values and bucket names are bytes from the file to the writer. Where a record leaves the library
as JSON or a message, they become text by this rule only: printable UTF-8 stays text, anything else is
hex, ``0x…`` in human text and ``{"hex": …}`` in JSON (so a name that happens to look like hex is never
mistaken for one), unless the caller asked for one encoding throughout."""
from __future__ import annotations

import base64

ENCODINGS = ("auto", "hex", "base64", "utf8")


def is_printable_text(b: bytes) -> bool:
    try:
        s = b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return s.isprintable()


def encode_bytes(b: bytes, encoding: str = "auto"):
    """A JSON value for ``b``. ``auto`` keeps printable UTF-8 as text and marks anything else as hex."""
    if encoding == "hex":
        return b.hex()
    if encoding == "base64":
        return base64.b64encode(b).decode("ascii")
    if encoding == "utf8":
        return b.decode("utf-8", "backslashreplace")
    return b.decode("utf-8") if is_printable_text(b) else {"hex": b.hex()}


def encode_path(path, encoding: str = "auto") -> list:
    """A bucket path as a JSON list, each name encoded like a key."""
    return [encode_bytes(p, encoding) for p in path]


def show_bytes(b: bytes | None, limit: int | None = None) -> str:
    """Human form: text when printable, otherwise 0x-prefixed hex."""
    if b is None:
        return ""
    s = b.decode("utf-8") if is_printable_text(b) else "0x" + b.hex()
    if limit is not None and len(s) > limit:
        s = s[:limit - 1] + "…"
    return s


def show_path(path) -> str:
    return "/".join(show_bytes(p) for p in path) if path else "/"
