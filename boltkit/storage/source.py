"""Getting at the bytes: a read-only, never-creating, lock-aware memory map of the file.

The map is read-only and opened O_RDONLY, so no code path of the reader can write to a user's
file. bbolt's readers take a shared flock; a running buildkitd holds an exclusive one. We take the
shared lock without blocking: if a writer holds the file we read anyway (a `bbolt check` would hang
forever here) and record a warning that the caller shows, because a live NoSync file can be torn.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import shutil
import stat
import tempfile

import numpy as np

from ..errors import OpenError


class Source:
    """A mapped file. ``data`` is a bytes-like view, ``array`` the same bytes as a numpy uint8 array."""

    def __init__(self, path: str, *, snapshot: bool = False, lock: bool = True):
        self.path = os.fspath(path)
        self.warnings: list[str] = []
        self.snapshot_path: str | None = None
        self.locked_by_writer = False
        self._fd = -1
        self._mm = None
        read_path = self.path
        self._fd = _open_readonly(self.path)
        if lock:
            self._take_shared_lock()
        if snapshot:
            read_path = self._snapshot()
            os.close(self._fd)
            self._fd = _open_readonly(read_path)
        self.size = os.fstat(self._fd).st_size
        if self.size == 0:
            self.close()
            raise OpenError(f"{self.path}: file is empty (0 bytes), not a bbolt database")
        try:
            self._mm = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            self.close()
            raise OpenError(f"{self.path}: cannot map the file: {e}") from e
        if hasattr(self._mm, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
            # readahead: whole-file passes are page-order scans (bbolt uses MADV_RANDOM and pays for it cold)
            try:
                self._mm.madvise(mmap.MADV_NORMAL)
            except OSError:
                pass
        self.data = self._mm
        self.array = np.frombuffer(self._mm, dtype=np.uint8)

    def _take_shared_lock(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            self.locked_by_writer = True
            self.warnings.append(
                f"{self.path} is locked by a writer (is buildkitd running?); reading it anyway. "
                "A live file can change or be torn while it is read: use --snapshot to read a copy.")
        except OSError:
            pass  # filesystems without flock support: nothing to coordinate with

    def _snapshot(self) -> str:
        fd, tmp = tempfile.mkstemp(prefix="boltkit-snapshot-", suffix=".db")
        os.close(fd)
        with open(self.path, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        self.snapshot_path = tmp
        return tmp

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
        self.array = None
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
        if self.snapshot_path:
            try:
                os.unlink(self.snapshot_path)
            except OSError:
                pass
            self.snapshot_path = None


def _open_readonly(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise OpenError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise OpenError(f"{path}: is a directory, not a bbolt file") from None
    except PermissionError:
        raise OpenError(f"{path}: permission denied") from None
    except OSError as e:
        raise OpenError(f"{path}: cannot open: {e.strerror or e}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        what = "is a directory" if stat.S_ISDIR(st.st_mode) else "is not a regular file"
        raise OpenError(f"{path}: {what}, not a bbolt file")
    return fd
