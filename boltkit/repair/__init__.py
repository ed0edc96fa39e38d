"""Layer 5: repairs that write a new file and never touch the original."""
from .compact import CompactResult, compact
from .replace import InUse, Replaced, refuse_if_held, replace_file, write_report
from .salvage import SalvageResult, salvage

__all__ = ["CompactResult", "compact", "InUse", "Replaced", "refuse_if_held", "replace_file", "write_report",
           "SalvageResult", "salvage"]
