"""The `boltkit` command: one group, and the one place where an outcome becomes an exit status.

Every command exits with a code of one table (fsck(8)'s), whatever went wrong and wherever:

    0   done; the file read (or checked, or was written) in full
    1   done, but damaged parts were skipped: the output holds everything intact, not everything
    4   problems found (check, fsck, buildkit check): the file reads, but is not sound
    8   unreadable input or refused: missing, not a regular file, permission denied, not bbolt, the wrong
        kind of store, a bucket/key/page that is not there, a bad output path, a file in use, a damaged
        source a copy refuses; or not done: interrupted by SIGINT, SIGTERM or SIGHUP
    16  usage: a missing argument, an unknown option, a bad value (click's own usage errors included)

As in fsck(8) the codes are bits: `buildkit fsck` and the checks of several files OR them (4|8: problems in
one, another unreadable); every other command exits with exactly one of them. `in_table` is the test the attack
campaign applies.

Library errors are typed (boltkit/errors.py); `exit_code` maps each type to its row, and BoltkitGroup
applies it to everything a subcommand raises, so no command picks its own number.
"""
from __future__ import annotations

import contextlib
import signal
import threading

import click

from .. import __version__
from ..errors import BoltkitError, Interrupted, OutputError, forget_signals, note_signal
from ..storage import Database
from .output import quiet_option, warn

EXIT_OK = 0
EXIT_DAMAGE = 1          # read with damage skipped
EXIT_PROBLEMS = 4        # problems found
EXIT_UNREADABLE = 8      # unreadable input, or refused
EXIT_USAGE = 16          # usage error
EXIT_CODES = (EXIT_OK, EXIT_DAMAGE, EXIT_PROBLEMS, EXIT_UNREADABLE, EXIT_USAGE)
EXIT_IN_USE = EXIT_UNREADABLE


def in_table(code: int) -> bool:
    """Whether an exit status is one the table allows (a single code, or fsck's OR of 1, 4 and 8)."""
    return code in EXIT_CODES or (0 < code < EXIT_USAGE and not code & ~(EXIT_DAMAGE | EXIT_PROBLEMS | EXIT_UNREADABLE))


def exit_code(e: BaseException) -> int:
    """The row of the table an error belongs to."""
    if isinstance(e, click.UsageError):
        return EXIT_USAGE
    if isinstance(e, DamageSkipped):
        return EXIT_DAMAGE
    return EXIT_UNREADABLE          # BoltkitError of every kind, OSError: cannot read, cannot write, refused


class DamageSkipped(click.ClickException):
    """A reading command finished, but skipped damaged parts (exit 1)."""

    exit_code = EXIT_DAMAGE


def _set_code(err: click.ClickException, code: int) -> None:
    """A ClickException's exit code, set per instance (click 8.5 declares it a ClassVar; the instance
    attribute is what click reads either way)."""
    setattr(err, "exit_code", code)  # noqa: B010  (an assignment is what mypy refuses under click 8.5)


def failure(e: BaseException) -> click.ClickException:
    """What an error becomes on the terminal: `Error: ...` and its exit code from the table."""
    if isinstance(e, click.ClickException):
        _set_code(e, exit_code(e))
        return e
    if isinstance(e, OSError) and not isinstance(e, BrokenPipeError):
        text = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)
    else:
        text = str(e)
    err = click.ClickException(text)
    _set_code(err, exit_code(e))
    return err


def _exit_on_signals() -> dict:
    """SIGINT, SIGTERM and SIGHUP end the command as Interrupted, through every `finally`: temp copies (--snapshot) and
    unfinished new files are removed, never left behind; a swap is never cut halfway (the repair primitive holds
    signals back while it swaps, `repair.replace.signals_deferred`, and asks `errors.stop_if_interrupted` before
    it does, for a signal whose exception Python dropped). Returns the handlers replaced, which the
    command puts back when it ends (a program that runs commands in-process keeps its own signal behaviour)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def stop(signum, frame):
        note_signal(signum)         # remembered, in case the exception lands where Python drops it
        raise Interrupted(signum)
    replaced = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler, None):
            replaced[sig] = signal.signal(sig, stop)
    if hasattr(signal, "SIGXFSZ") and signal.getsignal(signal.SIGXFSZ) in (signal.SIG_DFL, None):
        # a file size limit (ulimit -f) reached: the write fails with EFBIG and the command exits 8 with its temps
        # removed, instead of the process being killed by the signal with a partial file left behind
        replaced[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return replaced


def _raw_paths_to_the_terminal() -> None:
    """A path (or name) that is not UTF-8 arrives as surrogate escapes; printed, they become its own bytes again,
    as ls prints them, instead of a UnicodeEncodeError traceback."""
    import sys
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", None) == "strict":
            try:
                reconfigure(errors="surrogateescape")
            except (ValueError, OSError, AttributeError):
                pass


def interrupted(e: KeyboardInterrupt) -> click.ClickException:
    """What a signal becomes: the command was not done, so exit 8 (refused / not done), not 128+N outside the
    table, nor click's 1 (which here means "read with damage skipped")."""
    name = signal.Signals(e.signum).name if isinstance(e, Interrupted) else "SIGINT"
    err = click.ClickException(f"interrupted by {name} before the command finished: files it had begun were "
                               "removed, and a store is only ever swapped in whole (with its backup and report)")
    _set_code(err, EXIT_UNREADABLE)
    return err


class BoltkitGroup(click.Group):
    """Applies the exit-code table to every subcommand (and sub-group): typed library errors and I/O
    errors become `Error: ...` with their code, click's usage errors exit 16 instead of 2. Never a
    traceback for anything a user can cause."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            _set_code(e, EXIT_USAGE)
            raise

    def invoke(self, ctx):
        replaced = _exit_on_signals()
        _raw_paths_to_the_terminal()
        try:
            return super().invoke(ctx)
        except click.ClickException as e:      # sub-groups and sub-commands run inside: one place for all
            _set_code(e, exit_code(e))
            raise
        except BrokenPipeError:
            ctx.exit(EXIT_OK)
        except KeyboardInterrupt as e:         # Ctrl-C, SIGTERM, SIGHUP
            raise interrupted(e) from None
        except (BoltkitError, OSError) as e:
            raise failure(e) from None
        finally:
            for sig, handler in replaced.items():
                signal.signal(sig, handler)
            if replaced:
                forget_signals()


@click.group(cls=BoltkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="boltkit")
@quiet_option
def main():
    """Inspect, check and repair bbolt database files (BuildKit's cache.db, metadata_v2.db, ...).

    Every reading command opens the file read-only and never writes to it. Damaged files are
    read as far as they are intact; what is broken is reported on stderr.

    \b
    Exit status, every command: 0 ok, 1 read with damaged parts skipped, 4 problems found,
    8 unreadable input or refused, 16 usage error.

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


def destinations(*paths: str | None, replace: bool = False) -> None:
    """Refuse bad output paths (exit 8) before a command does any work."""
    given = [p for p in paths if p is not None]
    if given:       # the writer's modules only for a command that writes
        from ..write.destination import check_destination
        for p in given:
            check_destination(p, replace=replace)


@contextlib.contextmanager
def output_file(path: str):
    """A text file the command writes (a page map, a graph): bad paths are an OutputError, exit 8."""
    from ..write.destination import output_error
    try:
        f = open(path, "w")
    except OSError as e:
        raise output_error(path, e) from None
    with f:
        yield f


@contextlib.contextmanager
def opened(path: str, meta: int | None = None, snapshot: bool = False):
    db = Database(path, meta=meta, snapshot=snapshot)
    try:
        for w in db.warnings:
            warn(w)
        if meta is None and db.meta.index is not None and not db.choice.damaged:
            other = db.other_meta
            if other is None or not other.usable:
                warn(f"{path}: reading through {db.choice.reason}")
        yield db
        if meta is None and db.choice.damaged:
            # an older transaction than bbolt reads, or a tree bbolt cannot open: the output is not what bbolt
            # would give, and a script must notice (exit 1)
            what = {"checksum": "a meta bbolt rejects", "broken": "a meta whose tree cannot be entered",
                    "rebuilt": "a rebuilt root"}.get(db.choice.rung, "an older transaction than bbolt reads")
            raise DamageSkipped(f"{path}: read through {what}: {db.choice.reason}")
    finally:
        db.close()


__all__ = ["main", "opened", "failure", "exit_code", "in_table", "Interrupted", "destinations", "output_file",
           "DamageSkipped", "OutputError",
           "EXIT_OK", "EXIT_DAMAGE", "EXIT_PROBLEMS", "EXIT_UNREADABLE", "EXIT_USAGE", "EXIT_CODES", "EXIT_IN_USE"]
