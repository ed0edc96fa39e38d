"""The cache-key graph (src -> target links): liveness, cycles, path counts. All iterative: real graphs
reach hundreds of thousands of keys and may contain cycles."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np


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
    """Strongly connected components with more than one key, and self-loops."""
    return [sorted(c) for c in components(links) if len(c) > 1 or c[0] in links.get(c[0], ())]


def components(links: dict[str, list[str]]) -> list[list[str]]:
    """Every strongly connected component (Tarjan, iterative), sinks first: reversed, a topological order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    nodes = list(links) + [t for ts in links.values() for t in ts if t not in links]
    for start in nodes:
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
                out.append(comp)
    return out


# -- the same questions over integer edge arrays (src[i] -> tgt[i], nodes 0..n-1), in waves --------------

def _csr(key: np.ndarray, val: np.ndarray, n: int):
    order = np.argsort(key)
    return np.concatenate([[0], np.cumsum(np.bincount(key, minlength=n))]), val[order]


def _expand(starts: np.ndarray, vals: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """All neighbours of ``nodes`` in a CSR adjacency, concatenated."""
    lo, hi = starts[nodes], starts[nodes + 1]
    count = hi - lo
    if not count.sum():
        return vals[:0]
    first = np.repeat(lo - (np.cumsum(count) - count), count)
    return vals[first + np.arange(int(count.sum()))]


def live_mask(has_results: np.ndarray, src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    """``live_keys`` over arrays: keys with a result and every key that reaches one, one wave per level."""
    n = has_results.size
    starts, parents = _csr(tgt, src, n)
    live = has_results.copy()
    frontier = np.flatnonzero(live)
    while frontier.size:
        p = np.unique(_expand(starts, parents, frontier))
        frontier = p[~live[p]]
        live[frontier] = True
    return live


def cycles_of_arrays(src: np.ndarray, tgt: np.ndarray, n: int) -> list[list[int]]:
    """``cycles`` over arrays. Keys with no parents left, then keys with no children left, are peeled off a
    wave at a time (they cannot be on a cycle); Tarjan runs on what remains, usually nothing."""
    alive = np.ones(n, bool)
    for a, b in ((src, tgt), (tgt, src)):            # sources first, then sinks
        live_edge = alive[a] & alive[b]
        a_, b_ = a[live_edge], b[live_edge]
        starts, out = _csr(a_, b_, n)
        indeg = np.bincount(b_, minlength=n)
        frontier = np.flatnonzero(alive & (indeg == 0))
        while frontier.size:
            alive[frontier] = False
            u, c = np.unique(_expand(starts, out, frontier), return_counts=True)
            indeg[u] -= c
            frontier = u[(indeg[u] == 0) & alive[u]]
    keep = alive[src] & alive[tgt]
    links: dict[int, list[int]] = {}
    for s_, t_ in zip(src[keep].tolist(), tgt[keep].tolist()):
        links.setdefault(s_, []).append(t_)
    return cycles(links)


@dataclass
class GraphSummary:
    nodes: int
    edges: int
    roots: list[str]                       # keys nothing links to
    with_results: int
    cycles: list[list[str]]
    fan_out: list[tuple[str, int]]         # top N by outgoing links
    fan_in: list[tuple[str, int]]          # top N by distinct parents
    depth: int                             # longest root-to-key chain (cycles condensed)
    paths: list[tuple[str, int]]           # top N by distinct root-to-key paths
    max_paths: int


def summarize(links: dict[str, list[str]], with_results: Iterable[str], top: int = 10) -> GraphSummary:
    """What the cache graph looks like: size, roots, cycles, fan-out/in, depth and root-to-key path counts
    (the quantity pre-v0.25 cache exporters were exponential in), over the condensation of its cycles."""
    comps = components(links)
    comp_of = {k: i for i, c in enumerate(comps) for k in c}
    parents: dict[str, set[str]] = {}
    edges = 0
    for src, ts in links.items():
        for t in ts:
            edges += 1
            parents.setdefault(t, set()).add(src)
    cpreds: dict[int, set[int]] = {}
    for t, ps in parents.items():
        ct = comp_of[t]
        for p in ps:
            if comp_of[p] != ct:
                cpreds.setdefault(ct, set()).add(comp_of[p])
    paths: dict[int, int] = {}
    depth: dict[int, int] = {}
    for ci in reversed(range(len(comps))):          # sources first
        preds = cpreds.get(ci)
        paths[ci] = sum(paths[p] for p in preds) if preds else 1
        depth[ci] = 1 + max((depth[p] for p in preds), default=-1) if preds else 0
    nodes = [k for c in comps for k in c]
    per_key_paths = sorted(((k, paths[comp_of[k]]) for k in nodes), key=lambda x: (-x[1], x[0]))
    fan_out = sorted(((k, len(v)) for k, v in links.items() if v), key=lambda x: (-x[1], x[0]))
    fan_in = sorted(((k, len(v)) for k, v in parents.items()), key=lambda x: (-x[1], x[0]))
    return GraphSummary(
        nodes=len(nodes), edges=edges, roots=sorted(k for k in nodes if k not in parents),
        with_results=len(set(with_results)), cycles=cycles(links), fan_out=fan_out[:top], fan_in=fan_in[:top],
        depth=max(depth.values(), default=0), paths=per_key_paths[:top],
        max_paths=per_key_paths[0][1] if per_key_paths else 0)


def to_dot(links: dict[str, list[str]], with_results: set[str], marked: dict[str, str]) -> str:
    """Graphviz: keys with results filled, cycle members and problem keys in red with the problem code."""
    in_cycle = {k for c in cycles(links) for k in c}

    def q(s: str) -> str:
        return '"' + s.replace('"', '\\"') + '"'
    lines = ["digraph cache {", "  rankdir=LR;", '  node [shape=box, fontname="monospace", fontsize=9];']
    nodes = set(links) | {t for ts in links.values() for t in ts}
    for k in sorted(nodes):
        attrs = []
        if k in with_results:
            attrs.append('style=filled, fillcolor="#d8f0d8"')
        if k in marked or k in in_cycle:
            attrs.append('color=red, fontcolor=red')
        label = k[:19] + ("\\n" + marked[k] if k in marked else "")
        attrs.append(f"label={q(label)}")
        lines.append(f"  {q(k)} [{', '.join(attrs)}];")
    for src in sorted(links):
        for t in links[src]:
            extra = " [color=red]" if src in in_cycle and t in in_cycle else ""
            lines.append(f"  {q(src)} -> {q(t)}{extra};")
    lines.append("}")
    return "\n".join(lines) + "\n"
