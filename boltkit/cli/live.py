"""Reading commands on files a writer holds: the whole command is run again until one run read one transaction
of every file it read.

A reading command prints as it walks, so when a file or a store of a root it names is held by a writer (probed
before the command starts) each run's stdout and stderr are held back in a spool and only a run whose reads all
settled is shown (every live file it opened, through any layer, reports itself: `storage.live.tracked`); damage
lines of a run that saw a commit land are never shown. After `LIVE_ATTEMPTS` unsettled runs the command fails with
`Unsettled` (exit 8), saying how many runs failed. With --snapshot nothing is retried: the copy is taken under
the same rule (`storage.source.snapshot_copy`). Commands that write (--apply, --repair) are never run twice: they
refuse a held store anyway.
"""
from __future__ import annotations

import functools
import io
import os
import shutil
import sys
import tempfile
import time
from typing import Callable

from ..errors import Unsettled
from ..storage.live import LIVE_ATTEMPTS, tracked, unsettled_message
from ..storage.source import held_by_writer
from .output import warn


def held(target) -> bool:
    """Whether a writer holds the file, or any store of the BuildKit root, that ``target`` names (a path, or a
    tuple of them); never raises, never blocks."""
    if target is None:
        return False
    if isinstance(target, (tuple, list)):
        return any(held(t) for t in target)
    path = str(target)
    try:
        if os.path.isdir(path):
            from ..buildkit.root import discover
            return any(held_by_writer(str(s.path)) for s in discover(path).stores)
    except Exception:
        return False
    return held_by_writer(path)


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


def settled_reads(fn=None, *, over: str | tuple[str, ...] = "file", unless: Callable[[dict], bool] | None = None,
                  discard: Callable[[dict], None] | None = None):
    """Decorate a reading command whose file, files or root is the parameter ``over`` (or each of several
    parameters; see the module docstring).
    ``unless(kwargs)``: run once, untracked (a writing mode); ``discard(kwargs)``: undo what a run that did not
    settle wrote (simulate-start's -o directory) before the next."""
    if fn is None:
        return lambda f: settled_reads(f, over=over, unless=unless, discard=discard)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        target = tuple(kwargs.get(o) for o in over) if isinstance(over, tuple) else kwargs.get(over)
        if kwargs.get("snapshot") or (unless is not None and unless(kwargs)):
            return fn(*args, **kwargs)
        if not held(target):
            with tracked() as reads:
                result = fn(*args, **kwargs)
            if not reads.settled():
                warn(f"{', '.join(reads.moved())}: a writer started and committed while it was read; what is shown "
                     "may mix two transactions (run it again)")
            return result
        for n in range(LIVE_ATTEMPTS):
            spool = _Spool()
            outcome: BaseException | None = None
            result = None
            with spool, tracked() as reads:
                try:
                    result = fn(*args, **kwargs)
                except KeyboardInterrupt:
                    raise
                except BaseException as e:     # an exit code, a NotFound, ...: kept only if the run settled
                    outcome = e
            try:
                if reads.settled():
                    spool.replay()
                    if outcome is not None:
                        raise outcome
                    return result
            finally:
                spool.close()
            if discard is not None:
                discard(kwargs)
            time.sleep(min(0.002 * (n + 1), 0.02))
        name = target if not isinstance(target, (tuple, list)) else ", ".join(map(str, _flat(target)))
        raise Unsettled(unsettled_message(str(name), LIVE_ATTEMPTS), attempts=LIVE_ATTEMPTS)
    return wrapper


def _flat(target) -> list:
    if isinstance(target, (tuple, list)):
        return [x for t in target for x in _flat(t)]
    return [] if target is None else [target]


def remove_new_dir(param: str) -> Callable[[dict], None]:
    """A ``discard`` for a command that writes a new directory named by ``param`` (checked absent at its start)."""
    def discard(kwargs: dict) -> None:
        path = kwargs.get(param)
        if path is not None and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
    return discard
