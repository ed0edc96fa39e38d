"""Reading a file a writer holds, without its lock: retry until one read ran inside one transaction.

bbolt reuses a page of transaction T's tree only after T+1 has committed and T+2 has begun (the pages T+1 frees
are released when the next writer starts), so a walk of T's tree is consistent if the metas still say T when it
ends (`Database.settled`). A read that saw a commit land is thrown away and done again, a bounded number of times;
then `Unsettled` says how many attempts failed. Damage seen by a read that did not settle is never reported.
"""
from __future__ import annotations

import contextlib
import contextvars
import time
from typing import Callable, TypeVar

from ..errors import Unsettled

LIVE_ATTEMPTS = 12

T = TypeVar("T")


class Reads:
    """The live files read inside one `tracked` block, each judged when it was closed (or at the end, if still
    open): the block read one transaction of every file exactly when `settled()`."""

    def __init__(self):
        self.open: list = []           # live sources not closed yet
        self.closed: list[tuple[str, bool]] = []

    def settled(self) -> bool:
        return all(ok for _, ok in self.closed) and all(s.settled() for s in self.open)

    def moved(self) -> list[str]:
        """The files a commit landed on while they were read."""
        return [p for p, ok in self.closed if not ok] + [s.path for s in self.open if not s.settled()]


_reads: contextvars.ContextVar[Reads | None] = contextvars.ContextVar("boltkit_reads", default=None)


@contextlib.contextmanager
def tracked():
    """Collect every live file opened inside the block (`Source` reports itself): a caller that reads several
    files, or a whole root, then knows whether all it read was settled. Blocks nest; an inner block's reads are
    its own (`settled_read` retries them itself) and not the outer's."""
    reads = Reads()
    token = _reads.set(reads)
    try:
        yield reads
    finally:
        _reads.reset(token)


def opened(source) -> None:
    """Called by a live `Source` when it is opened."""
    reads = _reads.get()
    if reads is not None:
        reads.open.append(source)
        source._reads = reads


def closing(source) -> None:
    """Called by a live `Source` just before it closes: whether everything read through it was one transaction."""
    reads = getattr(source, "_reads", None)
    if reads is not None and source in reads.open:
        reads.open.remove(source)
        reads.closed.append((source.path, source.settled()))


def settled_read(path: str, attempt: Callable[[], tuple[T, bool]], attempts: int = LIVE_ATTEMPTS) -> T:
    """Run ``attempt()`` -> (result, settled) until it settles; Unsettled after ``attempts`` tries. Each attempt is
    a `tracked` block of its own, so a caller tracking its reads never counts the attempts that were thrown away;
    an attempt that raised while a commit landed is one of them (bytes that changed under a read can break any
    assumption), one that raised on settled reads raises."""
    for n in range(attempts):
        with tracked() as reads:
            try:
                result, settled = attempt()
            except Exception:
                if reads.settled():
                    raise
                settled = False     # what failed was a read torn by a commit: it says nothing about the file
            settled = settled and reads.settled()
        if settled:
            return result
        time.sleep(min(0.002 * (n + 1), 0.02))
    raise Unsettled(unsettled_message(path, attempts), attempts=attempts)


def unsettled_message(path: str, attempts: int, snapshot_hint: bool = True) -> str:
    return (f"{path}: {attempts} reads in a row saw the writer that holds it commit before they ended, so none "
            f"of them is one transaction's tree; try again at a quiet moment"
            + (" (or give --snapshot: a copy is taken faster than the tree is read)" if snapshot_hint else ""))
