"""The safe-replace protocol: a repaired file takes the original's place only when nothing holds the
original, the new file has been verified, and the original is kept as a timestamped backup.

The original is never edited: it is hard-linked (or copied) to the backup name first, then the verified
new file is renamed over it (atomic on POSIX) and the directory is fsynced.
"""
from __future__ import annotations

import datetime
import fcntl
import os
import shutil

from ..errors import BoltkitError


class InUse(BoltkitError):
    """A process (buildkitd) holds the file or its root's lock."""


def holder_check(path: str) -> None:
    """Raise InUse when any process holds bbolt's flock on ``path`` or buildkitd.lock beside it."""
    for candidate in (path, os.path.join(os.path.dirname(os.path.abspath(path)), "buildkitd.lock")):
        if not os.path.exists(candidate):
            continue
        fd = os.open(candidate, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            raise InUse(f"{candidate} is locked by another process (is buildkitd running?); stop it first") from None
        finally:
            os.close(fd)


def backup_name(path: str, now: datetime.datetime | None = None) -> str:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return f"{path}.boltkit-{now:%Y%m%dT%H%M%SZ}.bak"


def replace(original: str, new: str) -> str:
    """Keep ``original`` as a backup and move ``new`` into its place; returns the backup's path."""
    holder_check(original)
    backup = backup_name(original)
    n = 1
    while os.path.exists(backup):       # two repairs of one store within a second
        backup, n = backup_name(original)[:-len(".bak")] + f".{n}.bak", n + 1
    try:
        os.link(original, backup)
    except OSError:
        shutil.copy2(original, backup)
    os.chmod(new, os.stat(original).st_mode & 0o7777)
    os.replace(new, original)
    dfd = os.open(os.path.dirname(os.path.abspath(original)), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return backup
