"""The one repair primitive: a repaired store takes the original's place only when nothing holds it, the new
file has been written beside it and verified, and the original is kept as a backup; then a JSON report says what
changed.

Every in-place repair (salvage --in-place, buildkit prune --apply, rehome, buildkit repair) goes through
`replace_file`, which gives it, once:

- a temp name unique to the run (``<name>.boltkit-new-<pid>-<token>``) beside the real file, so two runs never
  collide, and temps a killed run left behind (the pid is gone, or the older fixed ``<name>.boltkit-new``) are
  recognised and cleared before the next attempt;
- verification before anything is touched: a rejected attempt is kept as ``<name>.boltkit-<UTC>.rejected`` and
  the original is never edited;
- a backup name unique even for two repairs in one UTC second (``<name>.boltkit-<UTC>[-n].bak``), made by a hard
  link (or an exclusive copy) of the original before the swap;
- the original's owner, group and mode on the new file (a rootless buildkitd keeps write access to its store);
- on a symlinked store, the target is repaired: the link stays a link and the backup is of the target's content;
- the swap is one rename(2) over the target, with the new file and the directory fsynced around it, so a kill at
  any moment leaves the path holding either the original or the complete new file;
- the JSON report, written by `write_report` (atomically) beside the backup, so a library caller gets it too;
- no signal acted on between the backup and the report (`signals_deferred`; a whole-root repair holds them over
  all its swaps), so a SIGTERM stops a repair before its first swap or after its last, never in between.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import secrets
import signal
import stat
import threading
from dataclasses import dataclass
from typing import Callable, Iterable

from ..errors import BoltkitError, InUse, NotVerified, stop_if_interrupted

TEMP_MARK = ".boltkit-new"
LOCK_NAME = "buildkitd.lock"

# Writer: creates the new file at the path it is given (which does not exist yet).
Writer = Callable[[str], object]
# Verifier: None when the new file at the given path is good, else the reason it is not.
Verifier = Callable[[str], "str | None"]


@dataclass
class Replaced:
    """What one replacement did. ``path`` is the store as named; ``target`` the file that was replaced (the
    link's target when ``path`` is a symlink)."""
    path: str
    target: str
    backup: str
    report: str | None = None


# -- holders -------------------------------------------------------------------------------------------------------

def root_locks(path: str) -> list[str]:
    """The `buildkitd.lock` files of every directory from the store's own up to the filesystem root: a worker
    store (`<root>/runc-overlayfs/metadata_v2.db`) is held through its root's lock, not one beside it. A
    symlinked store is looked up both from where it is named and from where it really is."""
    found: list[str] = []
    starts = {os.path.dirname(os.path.abspath(path)), os.path.dirname(os.path.realpath(path))}
    for start in sorted(starts):
        d = start
        while True:
            candidate = os.path.join(d, LOCK_NAME)
            if candidate not in found and os.path.lexists(candidate):
                found.append(candidate)
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
    return found


def _held(path: str) -> str | None:
    """Why ``path`` counts as held (None: it is not). Opened without blocking (a FIFO must not hang us) and never
    created; a path that is not a regular file cannot be a lock we can test, so it counts as held."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"{path} cannot be opened to test its lock ({e.strerror or e})"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return f"{path} is not a regular file, so whether a process holds it cannot be told"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return f"{path} is locked by another process (is buildkitd running?); stop it first"
        except OSError:
            return None         # no flock on this filesystem: nothing to coordinate with
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def refuse_if_held(paths: Iterable[str]) -> None:
    """Raise InUse, before anything is written, when any of the stores a repair will write is held: bbolt's
    flock on the file (or its symlink's target) or the `buildkitd.lock` of a buildkit root above it. Every
    holder is named, so a whole-root repair refuses as a whole."""
    reasons: list[str] = []
    for p in paths:
        for candidate in [os.path.realpath(p)] + root_locks(p):
            why = _held(candidate)
            if why is not None and why not in reasons:
                reasons.append(why)
    if reasons:
        raise InUse("; ".join(reasons), holders=reasons)


def holder_check(path: str) -> None:
    """One store: see `refuse_if_held`."""
    refuse_if_held([path])


# -- names ---------------------------------------------------------------------------------------------------------

def _stamp(now: datetime.datetime | None = None) -> str:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}"


def backup_name(path: str, now: datetime.datetime | None = None, n: int = 1) -> str:
    """`<path>.boltkit-<UTC>.bak`, `-<n>` before `.bak` for the n-th backup made in the same second."""
    return f"{path}.boltkit-{_stamp(now)}{'' if n == 1 else f'-{n}'}.bak"


def temp_name(target: str) -> str:
    return f"{target}{TEMP_MARK}-{os.getpid()}-{secrets.token_hex(4)}"


# after the store's name: the store's own temp, or that of a report beside it (`.boltkit-<UTC>.report.json`)
_TEMP_RE = re.compile(r"(?:\.boltkit-[0-9TZ-]+\.report\.json)?" + re.escape(TEMP_MARK) + r"(?:-(\d+)-[0-9a-f]+)?")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temps(target: str) -> list[str]:
    """Temps a killed run left beside ``target`` (its own, and its reports'): the fixed name older versions
    used, and unique names whose process is gone. A temp of a run that is still alive is not stale."""
    d, base = os.path.split(target)
    out: list[str] = []
    try:
        names = os.listdir(d or ".")
    except OSError:
        return out
    for name in names:
        if not name.startswith(base) or not (m := _TEMP_RE.fullmatch(name[len(base):])):
            continue
        if m.group(1) is None or (int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1)))):
            out.append(os.path.join(d, name))
    return sorted(out)


def clear_stale(target: str) -> list[str]:
    """Remove `stale_temps` (regular files only); returns what was removed."""
    removed = []
    for p in stale_temps(target):
        try:
            if stat.S_ISREG(os.lstat(p).st_mode):
                os.unlink(p)
                removed.append(p)
        except OSError:
            pass
    return removed


def _exclusive_name(make: Callable[[int], str], create: Callable[[str], None]) -> str:
    """The first name ``make(n)`` (n = 1, 2, ...) that ``create`` can make without replacing anything."""
    for n in range(1, 10000):
        name = make(n)
        try:
            create(name)
            return name
        except FileExistsError:
            continue
    raise BoltkitError(f"no free name like {make(1)}")


def _keep_backup(target: str, now: datetime.datetime) -> str:
    def create(name: str) -> None:
        try:
            os.link(target, name)
        except FileExistsError:
            raise
        except OSError:         # no hard links here: an exclusive copy, fsynced
            _copy_exclusive(target, name)
    return _exclusive_name(lambda n: backup_name(target, now, n), create)


def _copy_exclusive(src: str, dst: str) -> None:
    st = os.stat(src)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, st.st_mode & 0o7777)
    try:
        with open(src, "rb") as f:
            while chunk := f.read(1 << 20):
                os.write(fd, chunk)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_path(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same_owner(new: str, st: os.stat_result) -> None:
    """Give ``new`` the original's owner, group and mode, or refuse: a store that changed owner may no longer be
    writable by the (rootless) buildkitd that owns it."""
    try:
        os.chown(new, st.st_uid, st.st_gid)
    except PermissionError:
        try:
            os.chown(new, -1, st.st_gid)
        except PermissionError:
            pass
    os.chmod(new, st.st_mode & 0o7777)
    now = os.stat(new)
    if (now.st_uid, now.st_gid) != (st.st_uid, st.st_gid):
        raise BoltkitError(f"cannot give the repaired file the original's owner {st.st_uid}:{st.st_gid} "
                           f"(running as uid {os.geteuid()}); run the repair as root or as the owner")


# -- the report ----------------------------------------------------------------------------------------------------

def report_beside(backup: str) -> str:
    """The report's name for a repair that kept ``backup``: `<name>.boltkit-<UTC>[-n].report.json`."""
    return (backup[:-len(".bak")] if backup.endswith(".bak") else backup) + ".report.json"


def check_report_path(path: str) -> None:
    """Refuse a report path that cannot be written, before any work is done."""
    if os.path.isdir(path):
        raise BoltkitError(f"report path {path} is a directory")
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise BoltkitError(f"report path {path}: directory {d} does not exist")


def write_report(path: str, record: dict) -> str:
    """Write ``record`` as JSON to ``path`` atomically (a temp beside it, fsynced, renamed); returns ``path``."""
    check_report_path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "x") as f:
            _dump(f, record)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise BoltkitError(f"cannot write the report {path}: {e.strerror or e}") from None
        raise
    return path


def _dump(f, record: dict) -> None:
    """The report as JSON: a field per line, and a list field (or any iterable, consumed as it is written: a
    prune's 300k changes are never all built) an item per line. Each item goes through the C encoder (json.dump
    with an indent runs the pure-Python one: 10 s for a fleet-size prune's report, under signals held back)."""
    encode = json.JSONEncoder(default=_jsonable).encode
    f.write("{")
    for n, (key, value) in enumerate(record.items()):
        f.write(("," if n else "") + "\n " + encode(key) + ": ")
        if isinstance(value, (str, bytes, dict)) or hasattr(value, "as_dict") or not hasattr(value, "__iter__"):
            f.write(encode(value))
            continue
        f.write("[")
        items = iter(value)
        first = next(items, _END)
        if first is not _END:
            f.write("\n  " + encode(first))
            for item in items:
                f.write(",\n  " + encode(item))
            f.write("\n ")
        f.write("]")
    f.write("\n}\n")


_END = object()


def _jsonable(o):
    if isinstance(o, bytes):
        return o.decode("utf-8", "backslashreplace")
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if hasattr(o, "as_dict"):
        return o.as_dict()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


# -- signals -------------------------------------------------------------------------------------------------------

_DEFERRED = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGINT, SIGTERM and SIGHUP back while the block runs (a swap: backup, rename, report; or the swaps of
    a whole root), so a signal never leaves a store swapped without its report or a root with some stores swapped
    and others not; one that arrived is delivered, and acted on, when the block ends. Outside the main thread, or
    where signal masks do not exist, nothing is held back."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# -- the primitive -------------------------------------------------------------------------------------------------

@dataclass
class Prepared:
    """A verified new file beside its store, not yet swapped in (the first half of `replace_file`). A whole-root
    repair prepares every store before it swaps any, so a refusal or a failed verification changes nothing."""
    path: str
    target: str
    tmp: str
    st: os.stat_result
    check_holders: bool = True
    done: Replaced | None = None

    def commit(self, report: dict | Callable[[Replaced], dict] | None = None,
               report_path: str | None = None) -> Replaced:
        """Keep the original as a unique backup, rename the new file over it, and write the report."""
        with signals_deferred():
            return self._commit(report, report_path)

    def _commit(self, report, report_path) -> Replaced:
        target, tmp = self.target, self.tmp
        try:
            stop_if_interrupted()           # a signal received while the file was written: it is not swapped in
            _same_owner(tmp, self.st)
            _fsync_path(tmp)
            if self.check_holders:
                refuse_if_held([self.path])     # buildkitd may have started while we wrote
            backup = _keep_backup(target, datetime.datetime.now(datetime.timezone.utc))
            d = os.path.dirname(target) or "."
            _fsync_path(d, directory=True)
            os.replace(tmp, target)
            _fsync_path(d, directory=True)
        except BaseException:
            self.discard()
            raise
        done = self.done = Replaced(self.path, target, backup)
        if report is not None or report_path is not None:
            record = report(done) if callable(report) else dict(report or {})
            record = {"store": self.path, **({"target": target} if target != os.path.abspath(self.path) else {}),
                      "backup": backup, **record}
            done.report = write_report(report_path or report_beside(backup), record)
        return done

    def discard(self) -> None:
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


def prepare(path: str, write: Writer, verify: Verifier | None = None, *, check_holders: bool = True,
            report_path: str | None = None) -> Prepared:
    """Write and verify the new file for the store at ``path`` beside its real file; nothing is swapped yet.
    Raises InUse when a process holds the store or its root (nothing is written), NotVerified when the new file
    does not verify (the attempt is kept as `<name>.boltkit-<UTC>.rejected`)."""
    path = os.fspath(path)
    target = os.path.realpath(path)
    if not os.path.isfile(target):
        raise BoltkitError(f"{path}: not a regular file")
    if report_path is not None:
        check_report_path(report_path)
    if check_holders:
        refuse_if_held([path])
    clear_stale(target)
    st = os.stat(target)
    tmp = temp_name(target)
    try:
        write(tmp)
        _fsync_path(tmp)
        reason = verify(tmp) if verify is not None else None
        if reason is not None:
            now = datetime.datetime.now(datetime.timezone.utc)
            kept = _exclusive_name(lambda n: f"{target}.boltkit-{_stamp(now)}{'' if n == 1 else f'-{n}'}.rejected",
                                   lambda name: os.link(tmp, name))
            os.unlink(tmp)
            raise NotVerified(f"the repaired {path} did not verify ({reason}); it is untouched, the attempt is in "
                              f"{kept}", reason=reason, attempt=kept)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return Prepared(path, target, tmp, st, check_holders)


def replace_file(path: str, write: Writer, verify: Verifier | None = None, *,
                 report: dict | Callable[[Replaced], dict] | None = None, report_path: str | None = None,
                 check_holders: bool = True) -> Replaced:
    """Repair the store at ``path``: ``write(tmp)`` creates the new file beside the real file, ``verify(tmp)``
    judges it, and only a verified file is swapped in, the original kept as a unique backup. ``report`` (a record,
    or a function of the `Replaced`) is written as JSON beside the backup, or to ``report_path``.

    Raises InUse when a process holds the store or its root (nothing is written), NotVerified when the new file
    does not verify (the original is untouched; the attempt is kept as `<name>.boltkit-<UTC>.rejected`)."""
    return prepare(path, write, verify, check_holders=check_holders,
                   report_path=report_path).commit(report, report_path)


__all__ = ["InUse", "NotVerified", "Replaced", "Prepared", "prepare", "replace_file", "refuse_if_held", "holder_check",
           "root_locks", "stale_temps", "clear_stale", "backup_name", "write_report", "report_beside",
           "check_report_path", "signals_deferred"]
