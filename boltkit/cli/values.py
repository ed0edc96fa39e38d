"""Values on the terminal, streamed: a value of any size costs one chunk of memory, not copies of it.

A bbolt value lies in the file's map (an overflow run for big ones). Slicing it out, decoding it, hex-
encoding it and formatting a JSON line around it made a 400 MB value cost 3.3 GB. Here the value is read
from the map a chunk at a time and each chunk is encoded and written before the next is read; the pages
already written are handed back to the kernel, so the resident size stays near one chunk as well.
Small values (the common case) keep the one-shot path, which is faster.
"""
from __future__ import annotations

import base64
import codecs
import json
from typing import Callable

from .output import encode_bytes

CHUNK = 1 << 20          # bytes of the value per step
SMALL = 4 * CHUNK        # values up to this size are encoded in one go

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _chunks(data, start: int, end: int, size: int = CHUNK, release: Callable[[int, int], None] | None = None):
    for a in range(start, end, size):
        b = min(a + size, end)
        yield data[a:b]
        if release is not None:
            release(a, b)


def _is_printable_text(data, start: int, end: int) -> bool:
    """encode_bytes' `auto` test (printable UTF-8), chunk by chunk."""
    dec = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        for piece in _chunks(data, start, end):
            if not dec.decode(piece).isprintable():
                return False
        return dec.decode(b"", final=True).isprintable()
    except UnicodeDecodeError:
        return False


def _text_pieces(data, start: int, end: int, errors: str, release=None):
    dec = codecs.getincrementaldecoder("utf-8")(errors)
    for piece in _chunks(data, start, end, release=release):
        yield dec.decode(piece)
    yield dec.decode(b"", final=True)


def write_json_value(write: Callable[[str], object], data, start: int, end: int, encoding: str,
                     release=None) -> None:
    """Write the JSON form of ``data[start:end]`` in ``encoding`` (what encode_bytes gives, as JSON text)."""
    if end - start <= SMALL:
        write(_dumps(encode_bytes(bytes(data[start:end]), encoding)))
        return
    if encoding == "auto":
        if _is_printable_text(data, start, end):
            encoding = "text"
        else:
            write('{"hex":')
            write_json_value(write, data, start, end, "hex", release)
            write("}")
            return
    write('"')
    for text in plain_pieces(data, start, end, encoding, release):
        write(text if encoding in ("hex", "base64") else _dumps(text)[1:-1])
    write('"')


def plain_pieces(data, start: int, end: int, encoding: str, release=None):
    """``data[start:end]`` as text pieces in ``encoding`` (hex, base64, utf8 = backslashreplace, text = a value
    known to be UTF-8): what encode_bytes gives, unquoted."""
    if encoding == "hex":
        for piece in _chunks(data, start, end, release=release):
            yield piece.hex()
    elif encoding == "base64":
        for piece in _chunks(data, start, end, size=3 * (CHUNK // 3), release=release):
            yield base64.b64encode(piece).decode("ascii")
    else:
        for text in _text_pieces(data, start, end, "backslashreplace" if encoding == "utf8" else "strict", release):
            if text:
                yield text


def write_text_value(write: Callable[[str], object], data, start: int, end: int, release=None) -> None:
    """The table form of show_bytes (text when printable UTF-8, else 0x-hex), without a trailing newline."""
    if end - start <= SMALL:
        from .output import show_bytes
        write(show_bytes(bytes(data[start:end])))
        return
    if _is_printable_text(data, start, end):
        for text in _text_pieces(data, start, end, "strict", release):
            write(text)
    else:
        write("0x")
        for piece in _chunks(data, start, end, release=release):
            write(piece.hex())


def write_raw_value(write: Callable[[bytes], object], data, start: int, end: int, release=None) -> None:
    for piece in _chunks(data, start, end, release=release):
        write(piece)
