"""One opened bbolt file under one chosen meta: the entry point of every reader."""
from __future__ import annotations

from typing import Iterator, Sequence

from ..errors import CorruptionError, NotFound, OpenError
from ..textform import show_path
from .freelist import Freelist, read_freelist
from .meta import discover
from .pages import Pager
from .source import Source
from .tree import Bucket, Item, Tree


class Database:
    """Read-only view of a bbolt file.

    ``meta`` forces meta page 0 or 1 (the revert candidate); by default the current meta is chosen
    like bbolt does, falling back to the other one when the newest is damaged.
    """

    def __init__(self, path: str, *, meta: int | None = None, snapshot: bool = False, lock: bool = True,
                 refuse_held: bool = False, zero_past_end: bool = True):
        """``zero_past_end``: read a file cut inside a memory page as bbolt does, the rest of that page as zeros
        (``file_size`` is then that page's end; ``source.size`` is always the file's length). Salvage reads
        without it: zeros bbolt would read are no data to keep."""
        self.path = str(path)
        self.source = Source(self.path, snapshot=snapshot, lock=lock, refuse_held=refuse_held,
                             zero_past_end=zero_past_end)
        size = self.source.readable_size
        try:
            self.choice = discover(self.source.data, size, force=meta)
            if self.choice.bbolt is None and size != self.source.size:
                # bbolt cannot open the file at all: no zeros to read as it would, whole pages only
                size = self.source.size
                self.choice = discover(self.source.data, size, force=meta)
        except OpenError as e:
            self.source.close()
            raise OpenError(f"{self.path}: {e}", kind=e.kind) from None
        except Exception:
            self.source.close()
            raise
        self.metas = self.choice.metas
        self.meta = self.choice.current
        self.page_size = self.choice.page_size
        self.hwm = self.meta.pgid
        self.file_size = size
        self.data = self.source.data
        self.pager = Pager(self.data, self.file_size, self.page_size, self.hwm)
        self.tree = Tree(self.pager)
        cut = self.source.size // self.page_size
        if self.file_size > self.source.size and cut < self.hwm:
            self.source.warnings.append(
                f"{self.path} ends at byte {self.source.size}, inside page {cut}: the rest of its memory page "
                f"({self.file_size - self.source.size} bytes) reads as zeros, as bbolt reads it")

    @property
    def warnings(self) -> list[str]:
        return self.source.warnings + self.choice.warnings

    @property
    def other_meta(self):
        """The meta not read through (None when it is missing or the root was rebuilt)."""
        return None if self.meta.index is None else self.metas[1 - self.meta.index]

    @property
    def live(self) -> bool:
        """Read straight from a file a writer holds (see `settled`)."""
        return self.source.live

    def settled(self) -> bool:
        """True unless a writer committed since this file was opened (then what was read may mix transactions and
        must be read again: `boltkit.storage.live`)."""
        return self.source.settled()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.source.close()

    # -- the tree -------------------------------------------------------------------------------

    def root(self) -> Bucket:
        return self.tree.bucket_at((), self.meta.root, self.meta.sequence)

    def bucket(self, path: Sequence[bytes] = ()) -> Bucket:
        """The bucket at ``path`` (a sequence of names); NotFound when a step is missing or not a bucket."""
        b = self.root()
        for i, name in enumerate(path):
            item = self.tree.get(b, name)
            if item is None:
                raise NotFound(f"bucket not found: {_show_path(path[:i + 1])}")
            if not item.is_bucket:
                raise NotFound(f"not a bucket: {_show_path(path[:i + 1])} is a key")
            b = self.tree.child(b, item)
        return b

    def item(self, path: Sequence[bytes], key: bytes) -> Item:
        """The pair ``key`` of the bucket at ``path``: its value is ``data[item.value_start:item.value_end]``,
        in the map (a caller that streams a big value never holds a copy of it)."""
        item = self.tree.get(self.bucket(path), key)
        if item is None:
            raise NotFound(f"key not found: {_show_path([key])} in {_show_path(path)}")
        if item.is_bucket:
            raise NotFound(f"{_show_path([key])} in {_show_path(path)} is a bucket, not a key")
        return item

    def get(self, path: Sequence[bytes], key: bytes) -> bytes:
        """The value of ``key`` in the bucket at ``path`` (NotFound when either is missing)."""
        return self.value(self.item(path, key))

    def value(self, item: Item) -> bytes:
        return self.data[item.value_start:item.value_end]

    # -- the tolerant readers: every reader of a bucket's contents goes through these -----------------
    #
    # ``damage`` chooses what damage does: None raises the first CorruptionError met; a list receives each one
    # (where it is: page, offset, bucket path) and the read goes on past it, leaving out only what it hides, as
    # `export` does on a torn copy. The same walk serves `keys`, `buckets`, `tree` and `export`.

    def items(self, path: Sequence[bytes] = (), *, damage: list[CorruptionError] | None = None) -> Iterator[Item]:
        """The entries of the bucket at ``path`` in key order, pairs and sub-bucket entries alike
        (``item.is_bucket``; a pair's value is ``db.value(item)``)."""
        return self.tree.items(self.bucket(path), on_damage=None if damage is None else damage.append)

    def buckets(self, path: Sequence[bytes] = (), *,
                damage: list[CorruptionError] | None = None) -> Iterator[Bucket]:
        """The buckets directly under ``path``, opened; one whose header or root page is unreadable is damage."""
        parent = self.bucket(path)
        on_damage = None if damage is None else damage.append
        for item in self.tree.items(parent, on_damage=on_damage):
            if item.is_bucket and (child := self.tree.open(parent, item, on_damage)) is not None:
                yield child

    def walk(self, path: Sequence[bytes] = (), *, damage: list[CorruptionError] | None = None,
             on_page=None) -> Iterator[tuple[Bucket, Bucket | None, Item]]:
        """Every bucket and pair under ``path``, depth first in bbolt cursor order: ``(bucket, None, item)`` for a
        pair of ``bucket``, ``(bucket, child, item)`` for a sub-bucket, before the child's contents
        (`Tree.walk`)."""
        return self.tree.walk(self.bucket(path), on_damage=None if damage is None else damage.append,
                              on_page=on_page)

    def freelist(self) -> Freelist | None:
        """The stored freelist of the current meta, None when the file stores none (NoFreelistSync)."""
        if not self.meta.has_freelist:
            return None
        return read_freelist(self.pager, self.meta.freelist)

    def page_header(self, pgid: int):
        return self.pager.header(pgid)


def _show_path(path) -> str:
    """Names in messages as everywhere else: text when printable, 0x… otherwise (never raw binary)."""
    return show_path(path)


__all__ = ["Database", "CorruptionError", "NotFound"]
