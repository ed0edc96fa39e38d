"""The `boltkit` command: one group, errors turned into one clear line and an exit code."""
from __future__ import annotations

import contextlib
import signal
import threading

import click

from .. import __version__
from ..errors import BoltkitError, CorruptionError, InUse, NotFound, OpenError
from ..storage import Database
from . import live
from .output import warn


EXIT_IN_USE = 8


def failure(e: Exception) -> click.ClickException:
    """What a library error becomes: `Error: ...` and exit 1, or exit 8 when a repair refused because a
    process (buildkitd) holds the file."""
    err = click.ClickException(str(e))
    if isinstance(e, InUse):
        err.exit_code = EXIT_IN_USE
    return err


def _exit_on_signals() -> None:
    """SIGTERM and SIGHUP end the command like Ctrl-C does, through every `finally`: temp copies (--snapshot) and
    unfinished new files are removed, never left behind (a repair's swap is one rename either way)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, stop)


class BoltkitGroup(click.Group):
    """Library errors become `Error: ...` and exit 1 (8: file in use), never a traceback."""

    def invoke(self, ctx):
        _exit_on_signals()
        try:
            return super().invoke(ctx)
        except (OpenError, NotFound, CorruptionError, BoltkitError) as e:
            raise failure(e) from None
        except BrokenPipeError:
            ctx.exit(0)


@click.group(cls=BoltkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="boltkit")
def main():
    """Inspect, check and repair bbolt database files (BuildKit's cache.db, metadata_v2.db, ...).

    Every reading command opens the file read-only and never writes to it. Damaged files are
    read as far as they are intact; what is broken is reported on stderr.

    \b
    Examples:
      boltkit buildkit fsck /var/lib/buildkit   before a restart: every store, and what buildkitd will do
      boltkit check cache.db             structural check (exit 0 clean, 4 problems, 8 unreadable)
      boltkit salvage broken.db -o rescued.db   everything recoverable, into a valid file
      boltkit info cache.db              both meta pages and which one is current
      boltkit tree cache.db              nested buckets with key counts
      boltkit keys cache.db _links       keys of a bucket
      boltkit export cache.db | jq .     every bucket and pair as JSON lines
    """


@contextlib.contextmanager
def opened(path: str, meta: int | None = None, snapshot: bool = False):
    db = Database(path, meta=meta, snapshot=snapshot)
    try:
        for w in db.warnings:
            warn(w)
        if meta is None and db.meta.index is not None:
            other = db.metas[1 - db.meta.index]
            if other is None or not other.usable:
                warn(f"{path}: reading through {db.choice.reason}")
        yield db
    finally:
        live.note(db)
        db.close()
