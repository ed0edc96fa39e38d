"""Layer 4: building a valid bbolt file from a logical tree. Knows nothing of reading."""
from .encode import Run
from .writer import BoltWriter

__all__ = ["Run", "BoltWriter"]
