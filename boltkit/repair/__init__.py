"""Layer 5: repairs that write a new file and never touch the original."""
from .compact import CompactResult, compact
from .salvage import SalvageResult, salvage, write_report
