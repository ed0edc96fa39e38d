"""Getting at the bytes: a read-only, never-creating, lock-aware memory map of the file.

The map is read-only and opened O_RDONLY, so no code path of the reader can write to a user's
file. bbolt's readers take a shared flock; a running buildkitd holds an exclusive one. We take the
shared lock without blocking: if a writer holds the file we read anyway (a `bbolt check` would hang
forever here) and record a warning that the caller shows.

A file a writer holds is read consistently without its lock by bbolt's own reuse rule: pages of transaction T's
tree are freed by T+1 and handed out again only once T+2 has begun, so whatever was read while the metas still
said T is T's tree. `Source.settled()` tells whether the metas are still the ones seen at open (the reader then
retries, see `boltkit.storage.live`); `--snapshot` copies the file under the same rule, into a temp file that is
unlinked as soon as it exists (no signal can leave it behind) and keeps the source's holes.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import stat
import tempfile
import time

import numpy as np

from ..errors import InUse, NotAFile, OpenError, PermissionDenied, Unsettled
from ..schemas import MAGIC, MAX_PAGE_SIZE, META, META1_PROBE_OFFSETS, META_OFFSET, MIN_PAGE_SIZE
from . import live

SNAPSHOT_ATTEMPTS = 10          # copies tried before a busy file is given up on
_META_HEAD = META_OFFSET + META.size


class Source:
    """A mapped file. ``data`` is a bytes-like view, ``array`` the same bytes as a numpy uint8 array."""

    def __init__(self, path: str, *, snapshot: bool = False, lock: bool = True, refuse_held: bool = False,
                 zero_past_end: bool = True):
        """``refuse_held``: raise InUse instead of reading a file a writer holds (without ``snapshot``): commands
        that turn what they read into a new file do not gamble on a retry. ``zero_past_end``: a file that ends
        inside a memory page reads as zeros from its end to that page's end, as bbolt's mmap reads it
        (``readable_size`` is that page's end); without it, nothing past the last byte exists."""
        self.path = os.fspath(path)
        self.warnings: list[str] = []
        self.snapshot = snapshot
        self.locked_by_writer = False
        self._fd = -1
        self._mm: mmap.mmap | None = None
        self._extents: list[tuple[int, int]] | None = None
        self._fd = open_input(self.path)
        if lock:
            self._take_shared_lock(snapshot)
        elif not snapshot:
            self.locked_by_writer = _writer_holds(self._fd)   # read without our lock: still know if it is live
        if self.locked_by_writer and refuse_held and not snapshot:
            os.close(self._fd)
            self._fd = -1
            raise InUse(f"{self.path} is locked by a writer (is buildkitd running?): stop it, or give --snapshot "
                        "to work from a consistent copy", holders=[self.path])
        if snapshot:
            copy = snapshot_copy(self._fd, self.path)
            os.close(self._fd)
            self._fd = copy
        self.stamp = meta_stamp(self._fd)
        self.size = os.fstat(self._fd).st_size
        if self.size == 0:
            self.close()
            raise OpenError(f"{self.path}: file is empty (0 bytes), not a bbolt database", kind="empty")
        self.readable_size = self.size
        tail = -self.size % mmap.PAGESIZE if zero_past_end else 0
        padded = _map_to_page_end(self._fd, self.size + tail) if tail else None
        if padded is not None:
            self.readable_size = self.size + tail
            self.data = padded
            self.array = np.frombuffer(padded, dtype=np.uint8)
            self.array.flags.writeable = False
        else:
            self._map()
        if self.live:
            live.opened(self)

    def _map(self) -> None:
        try:
            self._mm = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            self.close()
            raise OpenError(f"{self.path}: cannot map the file: {e}") from e
        mm = self._mm
        if hasattr(mm, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
            # readahead: whole-file passes are page-order scans (bbolt uses MADV_RANDOM and pays for it cold)
            try:
                mm.madvise(mmap.MADV_NORMAL)
            except OSError:
                pass
        self.data = mm
        self.array = np.frombuffer(mm, dtype=np.uint8)

    def _take_shared_lock(self, snapshot: bool) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            self.locked_by_writer = True
            if snapshot:
                self.warnings.append(f"{self.path} is locked by a writer (is buildkitd running?); reading a copy "
                                     "taken while its metas stood still")
            else:
                self.warnings.append(f"{self.path} is locked by a writer (is buildkitd running?); reading it anyway, "
                                     "and again whenever a commit lands before the read ends")
        except OSError:
            pass  # filesystems without flock support: nothing to coordinate with

    @property
    def live(self) -> bool:
        """Read straight from a file a writer holds: what was read counts only if `settled()`."""
        return self.locked_by_writer and not self.snapshot

    def settled(self) -> bool:
        """Whether the metas are still the ones seen at open, so everything read since is that transaction's."""
        if not self.live:
            return True
        return self._fd >= 0 and meta_stamp(self._fd) == self.stamp

    def data_extents(self) -> list[tuple[int, int]]:
        """Byte ranges [start, end) of the file that hold data. The holes of a sparse file read as zeros and
        hold no page bbolt wrote, so whole-file scans skip them instead of faulting in gigabytes of zeros
        (SEEK_DATA/SEEK_HOLE; the whole file where the filesystem does not say)."""
        if self._extents is None:
            self._extents = _extents(self._fd, self.size)
        return self._extents

    def advise_sequential(self) -> None:
        if self._mm is not None and hasattr(mmap, "MADV_SEQUENTIAL"):
            try:
                self._mm.madvise(mmap.MADV_SEQUENTIAL)
            except OSError:
                pass

    def release(self, start: int, end: int) -> None:
        """Drop our mapping of [start, end) from memory after a pass is done with it: the pages stay in
        the page cache (a later read refaults them cheaply) but stop counting against our RSS."""
        if self._mm is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        a = (start + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
        b = min(end, self.size) // mmap.PAGESIZE * mmap.PAGESIZE
        if b > a:
            try:
                self._mm.madvise(mmap.MADV_DONTNEED, a, b - a)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        if self.live and self._fd >= 0:
            live.closing(self)
        self.array = None  # type: ignore[assignment]  # closed: nothing reads through it again
        self.data = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # views still alive elsewhere; the map goes when they do
            self._mm = None
        if self._fd >= 0:
            try:    # the map holds a duplicate of the descriptor, and with it our lock, while views live on
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = -1


def _writer_holds(fd: int) -> bool:
    """Whether a writer holds bbolt's exclusive flock on the open file ``fd`` (a shared lock taken and dropped at
    once, without blocking: a reader that never keeps a lock must not hold a starting buildkitd back)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _map_to_page_end(fd: int, length: int):
    """A read-only shared map of the file through the end of the memory page its last byte is in, as bbolt maps
    it: the kernel reads that page's bytes past the end of the file as zeros (Python's mmap refuses a length past
    the file's end, so this maps through libc). The map is released when the last view of it goes. None where
    libc cannot be called (the caller then maps the file alone)."""
    import ctypes
    import weakref
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    addr = libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr is None or addr == ctypes.c_void_p(-1).value:
        return None
    base = ctypes.c_char * length

    class PageEndMap(base):          # type: ignore[valid-type, misc]
        """Bytes like an mmap's: an index gives an int, a slice gives bytes."""
        def __getitem__(self, i):
            got = base.__getitem__(self, i)
            return got[0] if isinstance(i, int) else got

    view = PageEndMap.from_address(addr)
    weakref.finalize(view, libc.munmap, addr, length)
    return view


def held_by_writer(path: str) -> bool:
    """Whether a process holds bbolt's exclusive flock on ``path`` (never blocks, never creates)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def meta_stamp(fd: int) -> bytes:
    """The bytes of both meta pages' headers and metas: unchanged exactly while no transaction commits."""
    head = os.pread(fd, _META_HEAD, 0)
    ps = None
    if len(head) == _META_HEAD and int.from_bytes(head[META_OFFSET:META_OFFSET + 4], "little") == MAGIC:
        cand = int.from_bytes(head[META_OFFSET + 8:META_OFFSET + 12], "little")
        if MIN_PAGE_SIZE <= cand <= MAX_PAGE_SIZE:
            ps = cand
    if ps is None:
        for off in META1_PROBE_OFFSETS:
            probe = os.pread(fd, _META_HEAD, off)
            if len(probe) < _META_HEAD:
                break
            if int.from_bytes(probe[META_OFFSET:META_OFFSET + 4], "little") == MAGIC:
                ps = off
                break
    return head + (os.pread(fd, _META_HEAD, ps) if ps else b"")


def snapshot_copy(src_fd: int, path: str, attempts: int = SNAPSHOT_ATTEMPTS) -> int:
    """A descriptor of a private copy of the file behind ``src_fd``, taken while its metas stood still (the same
    stamp before the copy, after it, and in the copy). The copy is unlinked the moment it is created, so it goes
    with the descriptor whatever ends the process; holes stay holes. Raises Unsettled when every attempt saw a
    commit land."""
    return _consistent_copy(src_fd, path, attempts, named=False)[0]


@contextlib.contextmanager
def consistent_copy(path: str, attempts: int = SNAPSHOT_ATTEMPTS):
    """The name of a temp copy of ``path`` taken under `snapshot_copy`'s rule, for code that needs a path (compact,
    surgery); removed when the block ends, however it ends (the CLI turns SIGTERM and SIGHUP into an exit)."""
    src = open_input(path)
    try:
        fd, name = _consistent_copy(src, path, attempts, named=True)
    finally:
        os.close(src)
    os.close(fd)
    try:
        yield name
    finally:
        try:
            os.unlink(name)
        except OSError:
            pass


def _consistent_copy(src_fd: int, path: str, attempts: int, named: bool) -> tuple[int, str]:
    for attempt in range(attempts):
        before = meta_stamp(src_fd)
        fd, tmp = tempfile.mkstemp(prefix="boltkit-snapshot-", suffix=".db")
        try:
            if not named:
                os.unlink(tmp)
            copy_sparse(src_fd, fd)
            if meta_stamp(src_fd) == before == meta_stamp(fd):
                return fd, tmp
        except BaseException:
            os.close(fd)
            if named:
                os.unlink(tmp)
            raise
        os.close(fd)
        if named:
            os.unlink(tmp)
        time.sleep(0.005 * (attempt + 1))
    raise Unsettled(f"{path}: {attempts} copies in a row saw a writer commit while they were taken; try again at "
                    "a quiet moment (or stop the writer)", attempts=attempts)


def copy_sparse(src_fd: int, dst_fd: int, chunk: int = 1 << 20) -> int:
    """Copy the data of ``src_fd`` into ``dst_fd`` (empty) and give the copy the source's size, keeping holes:
    only the data segments SEEK_DATA/SEEK_HOLE report are copied (in the kernel, by copy_file_range, when it can);
    where the filesystem cannot say, all-zero chunks are skipped instead. Returns the bytes copied."""
    size = os.fstat(src_fd).st_size
    written = 0
    off = 0
    while off < size:
        try:
            data = os.lseek(src_fd, off, os.SEEK_DATA)
            hole = min(os.lseek(src_fd, data, os.SEEK_HOLE), size)
            seekable = True
        except OSError as e:
            if e.errno == errno.ENXIO:      # only a hole is left
                break
            data, hole, seekable = off, size, False
        written += _copy_range(src_fd, dst_fd, data, hole, chunk, skip_zeros=not seekable)
        off = max(hole, off + 1)
    os.ftruncate(dst_fd, size)
    return written


def _copy_range(src_fd: int, dst_fd: int, start: int, end: int, chunk: int, skip_zeros: bool) -> int:
    pos = start
    written = 0
    cfr = getattr(os, "copy_file_range", None)
    while pos < end:
        n = min(chunk, end - pos)
        if cfr is not None and not skip_zeros:
            try:
                done = cfr(src_fd, dst_fd, n, pos, pos)
            except OSError:
                cfr = None
                continue
            if done <= 0:
                break
            pos += done
            written += done
            continue
        buf = os.pread(src_fd, n, pos)
        if not buf:
            break
        if not skip_zeros or buf.count(0) != len(buf):
            os.pwrite(dst_fd, buf, pos)
            written += len(buf)
        pos += len(buf)
    return written


def _extents(fd: int, size: int) -> list[tuple[int, int]]:
    if not hasattr(os, "SEEK_DATA") or fd < 0:
        return [(0, size)]
    out: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:      # no data after pos
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            if end <= start:
                break
            out.append((start, end))
            pos = end
    except OSError:
        return [(0, size)]
    return out


def open_input(path: str, what: str = "a bbolt file") -> int:
    """A read-only descriptor of the regular file at ``path``, or a typed OpenError.

    Opened with O_NONBLOCK so that a FIFO (which blocks in open() until a writer appears) or a device
    is refused at once instead of hanging; the flag is cleared again for a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise OpenError(f"{path}: no such file", kind="missing") from None
    except IsADirectoryError:
        raise NotAFile(f"{path}: is a directory, not {what}", kind="directory") from None
    except PermissionError:
        raise PermissionDenied(f"{path}: permission denied (cannot read it as this user)") from None
    except OSError as e:
        if e.errno == errno.ENXIO:      # a socket, or a FIFO nobody writes to (with O_NONBLOCK)
            raise NotAFile(f"{path}: is a socket or FIFO, not {what}") from None
        raise OpenError(f"{path}: cannot open: {e.strerror or e}", kind="io") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _file_type(st.st_mode)
            raise NotAFile(f"{path}: is {kind}, not {what}", kind="directory" if kind == "a directory" else None)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"




