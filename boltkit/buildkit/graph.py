"""The cache-key graph (src -> target links): liveness, cycles, path counts. All iterative: real graphs
reach hundreds of thousands of keys and may contain cycles."""
from __future__ import annotations

from typing import Iterable


def live_keys(with_results: Iterable[str], links: dict[str, list[str]]) -> set[str]:
    """Keys that have a result, or link to a live key (BuildKit's collection rule keeps exactly these)."""
    parents: dict[str, list[str]] = {}
    for src, targets in links.items():
        for t in targets:
            parents.setdefault(t, []).append(src)
    live = set(with_results)
    todo = list(live)
    while todo:
        k = todo.pop()
        for p in parents.get(k, ()):
            if p not in live:
                live.add(p)
                todo.append(p)
    return live


def cycles(links: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components with more than one key, and self-loops (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in links:
        if start in index:
            continue
        work = [(start, iter(links.get(start, ())))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(links.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    k = stack.pop()
                    on_stack.discard(k)
                    comp.append(k)
                    if k == node:
                        break
                if len(comp) > 1 or node in links.get(node, ()):
                    out.append(sorted(comp))
    return out
