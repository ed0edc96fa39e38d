"""Reading a file a writer holds, without its lock: retry until one read ran inside one transaction.

bbolt reuses a page of transaction T's tree only after T+1 has committed and T+2 has begun (the pages T+1 frees
are released when the next writer starts), so a walk of T's tree is consistent if the metas still say T when it
ends (`Database.settled`). A read that saw a commit land is thrown away and done again, a bounded number of times;
then `Unsettled` says how many attempts failed. Damage seen by a read that did not settle is never reported.
"""
from __future__ import annotations

import time
from typing import Callable, TypeVar

from ..errors import Unsettled

LIVE_ATTEMPTS = 12

T = TypeVar("T")


def settled_read(path: str, attempt: Callable[[], tuple[T, bool]], attempts: int = LIVE_ATTEMPTS) -> T:
    """Run ``attempt()`` -> (result, settled) until it settles; Unsettled after ``attempts`` tries."""
    for n in range(attempts):
        result, settled = attempt()
        if settled:
            return result
        time.sleep(min(0.002 * (n + 1), 0.02))
    raise Unsettled(unsettled_message(path, attempts), attempts=attempts)


def unsettled_message(path: str, attempts: int, snapshot_hint: bool = True) -> str:
    return (f"{path}: {attempts} reads in a row saw the writer that holds it commit before they ended, so none "
            f"of them is one transaction's tree; try again at a quiet moment"
            + (" (or give --snapshot: a copy is taken faster than the tree is read)" if snapshot_hint else ""))
