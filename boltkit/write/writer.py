"""Writing a whole bbolt file from a stream of buckets and pairs.

Pages are written in post-order (a bucket's pages before the parent entry that points at them),
then the freelist, an fsync, and only then the two meta pages and a second fsync — the order
bbolt's own commit uses, so a crash mid-write never leaves a file whose metas point at garbage.
"""
from __future__ import annotations

import os

from ..errors import OutputExists, WriteError
from ..schemas import (BUCKET_HEADER, BUCKET_LEAF_FLAG, ELEMENT_SIZE, MAGIC, MAX_PAGE_SIZE, META, META_CHECKSUMMED,
                       META_OFFSET, MIN_PAGE_SIZE, PAGE_HEADER, PAGE_HEADER_SIZE, PGID_NO_FREELIST, VERSION, PageFlag,
                       fnv1a64)
from .builder import BucketBuilder, PageSink
from .destination import output_error
from .encode import Run, bucket_value, encode_leaf_pairs


MIN_OPEN_SIZE = 4096
MAX_WRITTEN_PAGE_SIZE = 65536     # the largest page size the meta ladder trusts (storage.meta)


class BoltWriter:
    """Stream a tree into a new file::

        with BoltWriter(path) as w:
            w.begin_bucket(b"a"); w.put(b"k", b"v"); w.end_bucket()

    Within a bucket, keys and sub-bucket names must come in strictly increasing byte order.
    """

    def __init__(self, path: str, page_size: int = 4096, fill_percent: float = 1.0, freelist: bool = True,
                 txid: int = 1, sync: bool = True):
        if not MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE:
            raise WriteError(f"page size {page_size} outside [{MIN_PAGE_SIZE}, {MAX_PAGE_SIZE}]")
        if page_size < 1024:
            raise WriteError("page size below 1024: bbolt cannot find meta 1 in such a file")
        if page_size & (page_size - 1) or page_size > MAX_WRITTEN_PAGE_SIZE:
            raise WriteError(f"page size {page_size}: a power of two up to {MAX_WRITTEN_PAGE_SIZE} is wanted (a reader "
                             "trusts no other: the file could not be read back)")
        if fill_percent != fill_percent:
            raise WriteError("fill percent NaN")
        self.path = str(path)
        self.page_size = page_size
        self.fill_percent = min(max(fill_percent, 0.1), 1.0)   # bbolt clamps the same way
        self.store_freelist = freelist
        self.txid = max(txid, 1)
        self.sync = sync
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise OutputExists(f"{self.path} already exists; refusing to overwrite it") from None
        except OSError as e:        # no such directory, a directory in the way, no permission
            raise output_error(self.path, e) from None
        self.f = os.fdopen(fd, "wb", buffering=1 << 20)
        self.sink = PageSink(self.f, page_size)
        self.stack: list[tuple[bytes, int, BucketBuilder]] = [(b"", 0, BucketBuilder(self.sink, self.fill_percent,
                                                                                      inline_allowed=False))]
        self.closed = False

    # -- the stream ---------------------------------------------------------------------------

    def begin_bucket(self, name: bytes, sequence: int = 0) -> None:
        parent = self.stack[-1][2]
        if parent.last_key is not None and name <= parent.last_key:
            raise WriteError(f"bucket {name!r} out of order after {parent.last_key!r}")
        if not name:
            raise WriteError("empty bucket name")
        self.stack.append((name, sequence, BucketBuilder(self.sink, self.fill_percent)))

    def put(self, key: bytes, value: bytes) -> None:
        if len(self.stack) == 1:
            raise WriteError("the root bucket holds only buckets: begin_bucket first")
        self.stack[-1][2].add(key, value, 0)

    def put_run(self, run: Run) -> None:
        """Many elements at once, already in key order; bucket entries among them (flag set) are copied
        verbatim, which is right for inline buckets written by bbolt (their value holds all they are)."""
        if len(self.stack) == 1 and (run.flags & BUCKET_LEAF_FLAG).sum() != len(run):
            raise WriteError("the root bucket holds only buckets")
        self.stack[-1][2].add_run(run)

    def put_bucket(self, name: bytes, pairs: list[tuple[bytes, bytes]], sequence: int = 0) -> None:
        """A whole bucket of plain pairs, in strictly increasing key order, at once: the same bytes as
        begin_bucket, a put per pair and end_bucket, but a bucket small enough to be inline (as a BuildKit id
        bucket almost always is) is encoded straight into its parent's entry, without a builder of its own:
        a prune writes 400k of them. The parent's builder refuses a name out of order, as for any entry."""
        size = PAGE_HEADER_SIZE + sum(ELEMENT_SIZE + len(k) + len(v) for k, v in pairs)
        if size > self.page_size // 4:     # not inline (bbolt's inlineable): pages of its own
            self.begin_bucket(name, sequence)
            for k, v in pairs:
                self.put(k, v)
            self.end_bucket()
            return
        last = None
        for k, _ in pairs:
            if not k:
                raise WriteError("empty key (bbolt requires a key)")
            if last is not None and k <= last:
                raise WriteError(f"keys must be added in strictly increasing order: {k!r} after {last!r}")
            last = k
        self.stack[-1][2].add(name, bucket_value(0, sequence, encode_leaf_pairs([(k, v, 0) for k, v in pairs], 0,
                                                                               None)), BUCKET_LEAF_FLAG)

    def put_bucket_value(self, name: bytes, value) -> None:
        """A bucket entry copied as it is: ``value`` is a sound inline bucket's value (header and page) as bbolt
        wrote it, which holds everything the bucket is (as compact copies inline buckets in runs)."""
        self.stack[-1][2].add(name, value, BUCKET_LEAF_FLAG)

    def end_bucket(self) -> None:
        if len(self.stack) == 1:
            raise WriteError("end_bucket without begin_bucket")
        name, seq, builder = self.stack.pop()
        self.stack[-1][2].add(name, builder.finish(seq), BUCKET_LEAF_FLAG)

    @property
    def depth(self) -> int:
        return len(self.stack) - 1

    # -- finishing ----------------------------------------------------------------------------

    def close(self) -> dict:
        while len(self.stack) > 1:
            self.end_bucket()
        _, _, root_builder = self.stack[0]
        root_value = root_builder.finish(0)
        root = BUCKET_HEADER.unpack_from(root_value)[0]
        freelist = PGID_NO_FREELIST
        if self.store_freelist:
            freelist = self.sink.allocate(PAGE_HEADER_SIZE)
            page = PAGE_HEADER.struct.pack(freelist, PageFlag.FREELIST, 0, 0)
            self.sink.write(freelist, page + bytes(self.page_size - len(page)))
        hwm = self.sink.next_pgid
        self.f.flush()
        if self.sync:
            os.fsync(self.f.fileno())
        for index in (0, 1):
            txid = self.txid - 1 + index
            self.f.seek(index * self.page_size)
            self.f.write(self._meta_page(index, root, freelist, hwm, txid))
        self.f.flush()
        if hwm * self.page_size < MIN_OPEN_SIZE:
            # bbolt reads 4 KiB at offset 0 when it opens a file and refuses a shorter one
            self.f.truncate(MIN_OPEN_SIZE)
        if self.sync:
            os.fsync(self.f.fileno())
        self.f.close()
        self.closed = True
        return {"root": root, "freelist": None if freelist == PGID_NO_FREELIST else freelist, "hwm": hwm,
                "size": hwm * self.page_size}

    def _meta_page(self, index: int, root: int, freelist: int, hwm: int, txid: int) -> bytes:
        fields = dict(magic=MAGIC, version=VERSION, page_size=self.page_size, flags=0, root=root, sequence=0,
                      freelist=freelist, pgid=hwm, txid=txid, checksum=0)
        body = bytearray(META.build(**fields))
        body[META_CHECKSUMMED:] = fnv1a64(bytes(body[:META_CHECKSUMMED])).to_bytes(8, "little")
        page = PAGE_HEADER.struct.pack(index, PageFlag.META, 0, 0) + bytes(body)
        assert len(page) == META_OFFSET + META.size
        return page + bytes(self.page_size - len(page))

    def abort(self) -> None:
        if not self.closed:
            try:
                self.f.close()          # flushes what is buffered: on a full disk that fails again
            except OSError:
                pass
            self.closed = True
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


__all__ = ["BoltWriter"]
