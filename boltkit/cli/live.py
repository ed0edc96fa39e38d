"""Reading commands on a file a writer holds: the whole command is run again until one run read one transaction.

A reading command prints as it walks, so on a file a writer holds (probed before the command starts) each run's
stdout and stderr are held back in a spool and only the run whose reads all settled (`Database.settled`) is
shown; damage lines of a run that saw a commit land are never shown. After `LIVE_ATTEMPTS` unsettled runs the
command fails with `Unsettled` (exit 8), saying how many runs failed. With --snapshot nothing is retried: the copy
is taken under the same rule (`storage.source.snapshot_copy`).
"""
from __future__ import annotations

import contextvars
import functools
import io
import sys
import tempfile
import time

from ..errors import Unsettled
from ..storage.live import LIVE_ATTEMPTS, unsettled_message
from ..storage.source import held_by_writer
from .output import warn

_settled: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar("boltkit_settled", default=None)


def note(db) -> None:
    """Called by `opened` before it closes a database: whether everything read through it was one transaction."""
    seen = _settled.get()
    if seen is not None and db.live:
        seen.append(db.settled())


class _Spool:
    """stdout and stderr held back (in memory, then on disk) for one run."""

    def __enter__(self):
        self.saved = sys.stdout, sys.stderr
        self.out = io.TextIOWrapper(tempfile.SpooledTemporaryFile(8 << 20), encoding="utf-8", errors="surrogateescape",
                                    newline="")
        self.err = io.TextIOWrapper(tempfile.SpooledTemporaryFile(1 << 20), encoding="utf-8",
                                    errors="surrogateescape", newline="")
        sys.stdout, sys.stderr = self.out, self.err
        return self

    def __exit__(self, *exc):
        sys.stdout, sys.stderr = self.saved
        return False

    def replay(self) -> None:
        for spool, dest in ((self.err, sys.stderr), (self.out, sys.stdout)):
            spool.flush()
            raw = spool.buffer
            raw.seek(0)
            target = getattr(dest, "buffer", None)
            while chunk := raw.read(1 << 20):
                if target is not None:
                    target.write(chunk)
                else:
                    dest.write(chunk.decode("utf-8", "surrogateescape"))
            dest.flush()

    def close(self) -> None:
        for s in (self.out, self.err):
            try:
                s.close()
            except Exception:
                pass


def settled_reads(fn):
    """Decorate a reading command whose FILE parameter is ``file`` (see the module docstring)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        path = kwargs.get("file")
        token = _settled.set([])
        try:
            if kwargs.get("snapshot") or path is None or not held_by_writer(str(path)):
                result = fn(*args, **kwargs)
                if not all(_settled.get()):
                    warn(f"{path}: a writer started and committed while it was read; what is shown may mix two "
                         "transactions (run it again)")
                return result
            for n in range(LIVE_ATTEMPTS):
                _settled.set([])
                spool = _Spool()
                outcome: BaseException | None = None
                result = None
                with spool:
                    try:
                        result = fn(*args, **kwargs)
                    except KeyboardInterrupt:
                        raise
                    except BaseException as e:     # an exit code, a NotFound, ...: kept only if the run settled
                        outcome = e
                try:
                    if all(_settled.get()):
                        spool.replay()
                        if outcome is not None:
                            raise outcome
                        return result
                finally:
                    spool.close()
                time.sleep(min(0.002 * (n + 1), 0.02))
            raise Unsettled(unsettled_message(str(path), LIVE_ATTEMPTS), attempts=LIVE_ATTEMPTS)
        finally:
            _settled.reset(token)
    return wrapper
