"""What every repair shares: refusing damaged input, and leaving a JSON account of what it did."""
from __future__ import annotations

import contextlib

from ..check import CheckReport, Severity, check_file
from ..check.checker import Progress, check_database
from ..errors import CorruptionError, InUse
from ..storage import Database
from ..storage.source import consistent_copy, held_by_writer
from .replace import report_beside, write_report  # noqa: F401  (their home is replace.py)

# problems that do not change what the tree holds: leaked pages, meta txid gaps, revert information
HARMLESS = {"B040", "B003", "B050"}
# ... and, for a copy of the live tree, the freelist's faults too (a copy writes a freelist of its own): on an
# intact tree salvage takes nothing but that tree
TREE_INTACT = HARMLESS | {"B010", "B011", "B012", "B013", "B014", "B015", "B016"}


def intact_tree(db: Database, progress: Progress | None = None, *, as_bbolt: bool = True) -> CheckReport | None:
    """The check report of ``db`` when the tree of its meta is intact (and, ``as_bbolt``, that meta is the one
    bbolt reads, both metas valid, nothing doubtful in the choice); else None.

    Such a tree can be copied as `compact` copies it, in bulk: runs of leaf elements and inline buckets
    verbatim (salvage of a sound file; the stores a replayed start writes, under the meta its SafeOpen chose).
    Anything the tolerant walk would doubt (keys out of order or outside their branch's range, a page named
    twice, a plain key at the root, unknown flag bits) is a problem here, and sends the caller down its
    key-by-key path."""
    if as_bbolt and (db.choice.rung != "bbolt" or db.warnings or any(m is None or not m.valid for m in db.metas)):
        return None
    report = check_database(db, progress)
    if not report.readable:
        return None
    bad = [c for c, n in report.counts().items() if n and c not in TREE_INTACT]
    if any(p.severity != Severity.INFO for p in report.problems.select(lambda c: c in bad)):
        return None
    return report


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
