"""Where new files go: a bad output path is refused before any work starts, as a typed error.

Commands that write (compact, salvage and its report, surgery, page maps, graph exports) check every
output path first, so a missing directory or a directory in the way costs no salvage pass and leaves
nothing behind; the writer maps the same failures to the same error if the path changes meanwhile.
"""
from __future__ import annotations

import os

from ..errors import OutputError


def check_destination(path: str, *, replace: bool = False) -> None:
    """Raise OutputError unless a new file can be created at ``path`` (or, with ``replace``, a regular
    file there can be overwritten)."""
    path = os.fspath(path)
    if not path:
        raise OutputError("empty output path")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a directory; give a file name for the output")
    if os.path.lexists(path):
        if not replace:
            raise OutputError(f"{path} already exists; refusing to overwrite it")
        if not os.path.isfile(path):
            raise OutputError(f"{path}: exists and is not a regular file")
    if not os.path.isdir(parent):
        what = "does not exist" if not os.path.lexists(parent) else "is not a directory"
        raise OutputError(f"{path}: cannot create it: {parent} {what}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot create it: no permission to write in {parent}")


def output_error(path: str, e: OSError) -> OutputError:
    """The OutputError for an OSError met while creating or writing ``path``."""
    return OutputError(f"{path}: cannot write it: {e.strerror or e}")
