"""Typed errors. Damage found while reading carries where it is (page id, byte offset, bucket path).

Exceptions are for the caller's mistakes and for I/O failure, and for a single read that cannot be
answered; whole-file passes (the checker, tolerant walks) turn them into problems and go on.
"""
from __future__ import annotations


class BoltkitError(Exception):
    """Base of every error boltkit raises on purpose."""


class OpenError(BoltkitError):
    """The file cannot be opened as a bbolt database at all (missing, empty, not bbolt, both metas bad).

    ``kind`` says which, as a word a caller can test (fsck tells a permission error from a store
    SafeOpen would reset): missing, directory, not-a-file, permission, empty, io, not-bbolt."""

    kind = "not-bbolt"

    def __init__(self, message: str, *, kind: str | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class PermissionDenied(OpenError):
    """The file exists but this user may not read it: nothing is known about its contents."""

    kind = "permission"


class NotAFile(OpenError):
    """A FIFO, socket, device or directory where a bbolt file was expected: refused before any read, since
    opening a FIFO blocks and a device has no size."""

    kind = "not-a-file"


class WrongStore(BoltkitError):
    """A readable bbolt file, but not the kind of store the command works on (a history.db given to
    `buildkit graph`, which reads cache.db)."""

    def __init__(self, message: str, *, expected: str, found: str):
        super().__init__(message)
        self.expected = expected
        self.found = found


class OutputError(BoltkitError):
    """A file boltkit was asked to write cannot be created there (missing directory, a directory in the
    way, no permission); raised before any work, so nothing is left half-written."""


class OutputExists(OutputError, FileExistsError):
    """The new file a copy (compact, salvage, surgery, a writer) was asked to create is already there: boltkit never
    overwrites one. Still a FileExistsError for callers that test for that."""


class WriteError(BoltkitError, ValueError):
    """A writer was asked for what bbolt cannot store (keys out of order, an empty key, a page size out of range,
    a page of too many elements): the caller's mistake, found before the file is finished. Still a ValueError."""


class NotFound(BoltkitError):
    """A bucket or key the caller asked for does not exist."""


class CorruptionError(BoltkitError):
    """A read ran into damage. ``pgid``/``offset`` say where, when known. ``whole``: a tolerant read found all of
    what the damage displaced (a swapped page at the other's place), so nothing is hidden behind it."""

    def __init__(self, message: str, *, pgid: int | None = None, offset: int | None = None,
                 path: tuple[bytes, ...] | None = None, whole: bool = False):
        self.message = message
        self.pgid = pgid
        self.offset = offset
        self.path = path
        self.whole = whole
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


class Refused(BoltkitError):
    """A repair declined to act, and wrote nothing in place: an edit that would leave a file bbolt cannot open
    (surgery), a salvage that would hold less than the input reads as, a new file that did not verify."""


class SalvageRefused(Refused):
    """Salvage stopped before writing or swapping a file that would hold less than the input reads as."""


class NotVerified(Refused):
    """The new file did not verify; the original is untouched and the attempt is kept for inspection."""

    def __init__(self, message: str, *, reason: str, attempt: str | None):
        self.reason = reason
        self.attempt = attempt
        super().__init__(message)


class PreenError(BoltkitError):
    """Preen (`buildkit fsck --repair`) could not make the root start. ``exit_bits`` is 8 when a process holds a
    store."""

    def __init__(self, message: str, exit_bits: int = 0):
        super().__init__(message)
        self.exit_bits = exit_bits


class ConfigError(BoltkitError):
    """buildkitd.toml cannot be read or holds a value buildkitd would reject."""


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP, raised where the command is, like Ctrl-C's KeyboardInterrupt (whose subclass it is,
    so that every `except Exception` in the library lets it through and every `finally` runs)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_received: list[int] = []      # the signals the command's handlers were given (cli.app), first first


def note_signal(signum: int) -> None:
    _received.append(signum)


def forget_signals() -> None:
    _received.clear()


def stop_if_interrupted() -> None:
    """Raise Interrupted again for a signal already received. Python runs a signal's handler between any two
    bytecodes, including those of a finalizer or a GC callback, where the exception it raises is printed and
    dropped: a Ctrl-C that landed there would let a repair go on and swap its file in. A swap asks first."""
    if _received:
        raise Interrupted(_received[0])
