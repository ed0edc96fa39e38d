"""Typed errors. Damage found while reading carries where it is (page id, byte offset, bucket path).

Exceptions are for the caller's mistakes and for I/O failure, and for a single read that cannot be
answered; whole-file passes (the checker, tolerant walks) turn them into problems and go on.
"""
from __future__ import annotations


class BoltkitError(Exception):
    """Base of every error boltkit raises on purpose."""


class OpenError(BoltkitError):
    """The file cannot be opened as a bbolt database at all (missing, empty, not bbolt, both metas bad)."""


class NotFound(BoltkitError):
    """A bucket or key the caller asked for does not exist."""


class CorruptionError(BoltkitError):
    """A read ran into damage. ``pgid``/``offset`` say where, when known."""

    def __init__(self, message: str, *, pgid: int | None = None, offset: int | None = None,
                 path: tuple[bytes, ...] | None = None):
        self.message = message
        self.pgid = pgid
        self.offset = offset
        self.path = path
        super().__init__(self.describe())

    def describe(self) -> str:
        where = []
        if self.pgid is not None:
            where.append(f"page {self.pgid}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        return (", ".join(where) + ": " if where else "") + self.message


class InUse(BoltkitError):
    """A process (buildkitd, a bbolt writer) holds the file or its root's lock, so a repair or a read that needs
    the file to stand still was refused. ``holders`` names each lock found held."""

    def __init__(self, message: str, *, holders: list[str] | None = None):
        self.holders = list(holders or [])
        super().__init__(message)


class Unsettled(InUse):
    """Reads of a file a writer holds never finished inside one transaction: every attempt saw a commit land."""

    def __init__(self, message: str, *, attempts: int):
        self.attempts = attempts
        super().__init__(message)
