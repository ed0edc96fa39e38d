"""What every repair shares: refusing damaged input, and leaving a JSON account of what it did."""
from __future__ import annotations

import contextlib

from ..check import Severity, check_file
from ..errors import CorruptionError, InUse
from ..storage.source import consistent_copy, held_by_writer
from .replace import report_beside, write_report  # noqa: F401  (their home is replace.py)

# problems that do not change what the tree holds: leaked pages, meta txid gaps, revert information
HARMLESS = {"B040", "B003", "B050"}


@contextlib.contextmanager
def readable_source(path: str, snapshot: bool):
    """The path a repair that writes a new file should read for ``path``: ``path`` itself, refused (InUse) while a
    writer holds it, or with ``snapshot`` the name of a consistent temp copy (removed afterwards)."""
    if snapshot:
        with consistent_copy(path) as copy:
            yield copy
        return
    if held_by_writer(path):
        raise InUse(f"{path} is locked by a writer (is buildkitd running?): stop it, or give --snapshot to work "
                    "from a consistent copy", holders=[path])
    yield path


def require_sound(path: str, meta: int | None = None, name: str | None = None, progress=None, on_leaves=None):
    """Raise CorruptionError unless ``path`` is structurally sound (the repairs that copy a tree need that);
    the check's report otherwise. ``name``: what to call the file in messages (the source, when ``path`` is a
    snapshot of it); ``progress(done, total)``: pages checked, as check_file reports them; ``on_leaves``: the
    check pass's leaves (TreeScan), for a repair that reads the tree from them instead of reading it again."""
    report = check_file(path, meta=meta, revert=False, progress=progress, on_leaves=on_leaves)
    path = name or path
    if not report.readable:
        raise CorruptionError(f"{path} cannot be read: {report.problems[0].message if report.problems else ''}; "
                              "salvage it (boltkit salvage)")
    damage = sorted({p.code for p in report.problems if p.code.startswith("B") and p.code not in HARMLESS
                     and p.severity != Severity.INFO})
    if damage:
        raise CorruptionError(f"{path} is structurally damaged ({', '.join(damage)}): salvage it first "
                              "(boltkit salvage); `boltkit check` shows where")
    return report
