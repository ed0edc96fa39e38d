"""What every repair shares: refusing damaged input, and leaving a JSON account of what it did."""
from __future__ import annotations

import json

from ..check import Severity, check_file
from ..errors import CorruptionError

# problems that do not change what the tree holds: leaked pages, meta txid gaps, revert information
HARMLESS = {"B040", "B003", "B050"}


def require_sound(path: str, meta: int | None = None) -> None:
    """Raise CorruptionError unless ``path`` is structurally sound (the repairs that copy a tree need that)."""
    report = check_file(path, meta=meta, revert=False)
    if not report.readable:
        raise CorruptionError(f"{path} cannot be read: {report.problems[0].message if report.problems else ''}; "
                              "salvage it (boltkit salvage)")
    damage = sorted({p.code for p in report.problems if p.code.startswith("B") and p.code not in HARMLESS
                     and p.severity != Severity.INFO})
    if damage:
        raise CorruptionError(f"{path} is structurally damaged ({', '.join(damage)}): salvage it first "
                              "(boltkit salvage); `boltkit check` shows where")


def write_report(path: str, record: dict) -> str:
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    return path


def report_beside(backup: str) -> str:
    """The report's name for a repair that kept ``backup``: `<name>.boltkit-<UTC>.report.json`."""
    return (backup[:-len(".bak")] if backup.endswith(".bak") else backup) + ".report.json"
