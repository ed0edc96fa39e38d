"""The cache-key graph (src -> target links): liveness, cycles, path counts. All iterative: real graphs
reach hundreds of thousands of keys and may contain cycles."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, TypeVar

import numpy as np

K = TypeVar("K", str, bytes, int)      # a key of the graph: its id (text or bytes), or an integer code for it


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


def cycles(links: dict[K, list[K]]) -> list[list[K]]:
    """Strongly connected components with more than one key, and self-loops."""
    return [sorted(c) for c in components(links) if len(c) > 1 or c[0] in links.get(c[0], ())]


def components(links: dict[K, list[K]]) -> list[list[K]]:
    """Every strongly connected component (Tarjan, iterative), sinks first: reversed, a topological order."""
    index: dict[K, int] = {}
    low: dict[K, int] = {}
    on_stack: set[K] = set()
    stack: list[K] = []
    out: list[list[K]] = []
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

def pair_codes(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Pairs of codes below ``n`` as single int64s (a, b) -> a * n + b: sortable, comparable as one."""
    return a.astype(np.int64) * max(n, 1) + b


def sorted_unique(x: np.ndarray) -> np.ndarray:
    """np.unique without its hashing detour: one vectorised sort."""
    s = np.sort(x)
    return s[np.concatenate([[True], s[1:] != s[:-1]])] if s.size else s


def _csr(key: np.ndarray, val: np.ndarray, n: int):
    order = np.argsort(key)
    starts = np.zeros(n + 1, np.int64 if val.dtype.itemsize >= 8 else val.dtype)   # offsets up to val.size
    np.cumsum(np.bincount(key, minlength=n), out=starts[1:])
    return starts, val[order]


def _small_codes(n: int, m: int):
    """The narrowest integer type for codes below ``n`` and counts up to ``m``: the peeling of a fleet-size
    graph holds a few arrays per link, and in 32 bits they take half the memory."""
    return np.int32 if max(n, m) < 2**31 - 1 else np.int64


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
    first = np.zeros(n, np.int64)           # scratch: drops repeats from a wave without sorting it
    frontier = np.flatnonzero(live)
    while frontier.size:
        p = _expand(starts, parents, frontier)
        p = p[~live[p]]
        first[p[::-1]] = np.arange(p.size - 1, -1, -1)
        frontier = p[first[p] == np.arange(p.size)]
        live[frontier] = True
    return live


def cycles_of_arrays(src: np.ndarray, tgt: np.ndarray, n: int) -> list[list[int]]:
    """``cycles`` over arrays. Keys with no parents left, then keys with no children left, are peeled off a
    wave at a time (they cannot be on a cycle); Tarjan runs on what remains, usually nothing."""
    alive = np.ones(n, bool)
    small = _small_codes(n, src.size)
    for a, b in ((src, tgt), (tgt, src)):            # sources first, then sinks
        live_edge = alive[a] & alive[b]
        a_, b_ = a[live_edge].astype(small), b[live_edge].astype(small)
        del live_edge
        indeg = np.bincount(b_, minlength=n).astype(small)
        starts, out = _csr(a_, b_, n)
        del a_, b_
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
    total_paths: int = 0                   # sum over keys of their root-to-key paths

    @property
    def export_risk(self) -> "ExportRisk":
        return ExportRisk(self.total_paths, len(self.cycles))


# From this many root-to-key paths (summed over keys) a pre-v0.25 cache export is slow: its loop removal
# (checkLoops/removeLoops) is a depth-first walk whose visited set is per path, so it takes one step per
# path, and a step is map work on strings; a million steps is seconds of CPU per export, and every extra
# level of shared keys multiplies the count (reference/buildkit-stores.md §2, #2296, #6008).
PATH_RISK_THRESHOLD = 1_000_000


@dataclass
class ExportRisk:
    """What the graph's shape costs a cache export: ``paths`` steps for a pre-v0.25 exporter (v0.25 walks
    the tree in order instead, #6129), and cycles, which broke exports before v0.9 and trip v0.25's
    consistency check."""
    paths: int
    cycles: int
    threshold: int = PATH_RISK_THRESHOLD

    @property
    def high(self) -> bool:
        return self.paths >= self.threshold or self.cycles > 0


def summarize(links: dict[str, list[str]], with_results: Iterable[str], top: int = 10) -> GraphSummary:
    """``summarize_arrays`` for a graph given as a dict of names."""
    names = sorted(set(links) | {t for ts in links.values() for t in ts})
    code = {k: i for i, k in enumerate(names)}
    src = np.array([code[a] for a, ts in links.items() for _ in ts], dtype=np.int64)
    tgt = np.array([code[t] for ts in links.values() for t in ts], dtype=np.int64)
    is_node = np.ones(len(names), bool)
    has_links = np.zeros(len(names), bool)
    has_links[[code[a] for a in links]] = True
    return summarize_arrays(src, tgt, is_node, has_links, names.__getitem__, len(set(with_results)), top)


def summarize_arrays(src: np.ndarray, tgt: np.ndarray, is_node: np.ndarray, has_links: np.ndarray, name,
                     with_results: int, top: int = 10) -> GraphSummary:
    """What the cache graph looks like: size, roots, cycles, fan-out/in, depth and root-to-key path counts
    (the quantity pre-v0.25 cache exporters were exponential in), over the condensation of its cycles.

    Links ``src[i] -> tgt[i]`` between key codes 0..n-1 (duplicates count as links, not as parents);
    ``is_node``: the keys of the graph; ``name(code)``: a key's name, for ties and output. Depth and paths
    go a wave at a time in topological order; path counts are Python integers (they overflow 64 bits on
    the graphs that hung exports)."""
    n = is_node.size
    cyc = cycles_of_arrays(src, tgt, n)
    comp = np.arange(n)
    for c in cyc:
        comp[c] = c[0]
    pairs = sorted_unique(pair_codes(comp[src], comp[tgt], n))
    ps, pt = pairs // max(n, 1), pairs % max(n, 1)
    keep = ps != pt
    ps, pt = ps[keep], pt[keep]
    starts, out = _csr(ps, pt, n)
    indeg = np.bincount(pt, minlength=n)
    paths = np.ones(n, dtype=object)
    paths[indeg > 0] = 0
    depth = np.zeros(n, np.int64)
    frontier = np.flatnonzero(is_node & (comp == np.arange(n)) & (indeg == 0))
    while frontier.size:
        counts = starts[frontier + 1] - starts[frontier]
        e_src, e_tgt = np.repeat(frontier, counts), _expand(starts, out, frontier)
        np.add.at(paths, e_tgt, paths[e_src])
        np.maximum.at(depth, e_tgt, depth[e_src] + 1)
        u, cnt = np.unique(e_tgt, return_counts=True)
        indeg[u] -= cnt
        frontier = u[indeg[u] == 0]
    n_parents = np.bincount(sorted_unique(pair_codes(src, tgt, n)) % max(n, 1), minlength=n)
    n_links = np.bincount(src, minlength=n)
    nodes = np.flatnonzero(is_node)
    key_paths = paths[comp]
    return GraphSummary(
        nodes=int(nodes.size), edges=int(src.size),
        roots=sorted(name(k) for k in nodes[n_parents[nodes] == 0]), with_results=with_results,
        cycles=sorted(sorted(name(k) for k in c) for c in cyc),
        fan_out=_top(n_links, has_links & (n_links > 0), name, top), fan_in=_top(n_parents, n_parents > 0, name, top),
        depth=int(depth[nodes].max()) if nodes.size else 0, paths=_top(key_paths, is_node, name, top),
        max_paths=int(max(key_paths[nodes], default=0)), total_paths=int(sum(key_paths[nodes].tolist())))


def _top(values: np.ndarray, mask: np.ndarray, name, top: int) -> list[tuple[str, int]]:
    """The ``top`` keys by value, ties by name: narrowed by a float sort, settled exactly on what is left."""
    idx = np.flatnonzero(mask)
    if not idx.size:
        return []
    approx = values[idx].astype(float)
    cut = np.sort(approx)[::-1][min(top, idx.size) - 1]
    return sorted(((name(k), int(values[k])) for k in idx[approx >= cut]), key=lambda x: (-x[1], x[0]))[:top]


def neighbourhood(links: dict[str, list[str]], key: str, radius: int = 2) -> dict[str, list[str]]:
    """The links within ``radius`` steps of ``key``, up (its parents, theirs, ...) and down (its targets, ...)."""
    parents: dict[str, list[str]] = {}
    for src, targets in links.items():
        for t in targets:
            parents.setdefault(t, []).append(src)
    keep = {key}
    for step in (lambda k: links.get(k, ()), lambda k: parents.get(k, ())):
        frontier = {key}
        for _ in range(radius):
            frontier = {n for k in frontier for n in step(k)} - keep
            keep |= frontier
    return {src: [t for t in links.get(src, ()) if t in keep] for src in sorted(keep) if src in links or src == key}


@dataclass
class Condensed:
    """A graph of groups of keys: ``members[g]`` the keys of group ``g``, ``links[g]`` the groups it links to."""
    members: dict[str, list[str]]
    links: dict[str, list[str]]


def condense(links: dict[str, list[str]], keep: Iterable[str] = (), by_step: dict[str, str] | None = None) -> Condensed:
    """A picture-sized version of the key graph, every key in exactly one group:
    each cycle becomes one group; keys with the same parents and the same targets (the hundreds of root
    keys of one context that all link to one key) become one group; a chain of keys that each have one
    parent and one target becomes one group. Repeated until nothing merges. Keys in
    ``keep`` (problem keys) stay groups of their own. With ``by_step`` (key -> build step), keys of the same
    step start in one group: one box per Dockerfile step however many builds recorded it."""
    keep = set(keep)
    nodes = sorted(set(links) | {t for ts in links.values() for t in ts})
    group = {k: k for k in nodes}
    if by_step:
        first: dict[str, str] = {}
        for k in nodes:
            step = by_step.get(k)
            if step is not None and k not in keep:
                group[k] = first.setdefault(step, k)
    for c in components(links):
        if len(c) > 1:
            head = min(c)
            for k in c:
                group[k] = head

    def graph():
        out: dict[str, set[str]] = {g: set() for g in set(group.values())}
        for src, targets in links.items():
            for t in targets:
                a, b = group[src], group[t]
                if a != b:
                    out[a].add(b)
        return out

    for _ in range(20):
        g_links = graph()
        parents: dict[str, set[str]] = {g: set() for g in g_links}
        for a, bs in g_links.items():
            for b in bs:
                parents[b].add(a)
        merge: dict[str, str] = {}
        twins: dict[tuple, list[str]] = {}
        for g in g_links:
            if g not in keep:
                twins.setdefault((frozenset(parents[g]), frozenset(g_links[g])), []).append(g)
        for same in twins.values():
            if len(same) > 1:
                head = min(same)
                merge.update((g, head) for g in same)
        if not merge:
            def passing(g):
                return g not in keep and len(parents[g]) == 1 and len(g_links[g]) == 1  # noqa: B023
            for g in sorted(g_links):
                if not passing(g):
                    continue
                (p,) = parents[g]
                if passing(p) and p not in merge and g not in merge.values():
                    merge[g] = p
        if not merge:
            break
        for k, g in group.items():
            group[k] = merge.get(g, g)
        # a chain merged into a twin's head, or the reverse: follow merges to their end
        for k in group:
            g = group[k]
            while merge.get(g, g) != g:
                g = merge[g]
            group[k] = g
    members: dict[str, list[str]] = {}
    for k in nodes:
        members.setdefault(group[k], []).append(k)
    return Condensed(members, {g: sorted(ts) for g, ts in graph().items()})


def to_dot(links: dict[str, list[str]], with_results: set[str], marked: dict[str, str],
           steps: dict[str, str] | None = None, condensed: Condensed | None = None, focus: str | None = None) -> str:
    """Graphviz: keys with results filled, cycle members and problem keys in red with the problem code,
    each key labelled with its short id and the build step it stands for. With ``condensed``, one box per
    group ("N keys"); ``focus`` (one key's neighbourhood) is drawn bold."""
    steps = steps or {}
    in_cycle = {k for c in cycles(links) for k in c}

    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def short(text: str, n: int = 40) -> str:
        return text if len(text) <= n else text[:n - 1] + "…"
    lines = ["digraph cache {", "  rankdir=LR;", '  node [shape=box, fontname="monospace", fontsize=9];']
    if condensed is None:
        nodes = sorted(set(links) | {t for ts in links.values() for t in ts})
        condensed = Condensed({k: [k] for k in nodes}, {k: sorted(set(links.get(k, ()))) for k in nodes})
        edge_list = [(src, t) for src in sorted(links) for t in links[src]]
    else:
        edge_list = [(g, t) for g in sorted(condensed.links) for t in condensed.links[g]]
    for g in sorted(condensed.members):
        ks = condensed.members[g]
        attrs = []
        if any(k in with_results for k in ks):
            attrs.append('style=filled, fillcolor="#d8f0d8"')
        codes = sorted({marked[k] for k in ks if k in marked})
        if codes or any(k in in_cycle for k in ks):
            attrs.append("color=red, fontcolor=red")
        if focus in ks:
            attrs.append("penwidth=3")
        label = [short(g, 19) if len(ks) == 1 else f"{len(ks)} keys ({'cycle' if g in in_cycle else short(g, 12)}…)"]
        step = next((steps[k] for k in ks if k in steps), None)
        if step:
            label.append(short(step))
        if codes:
            label.append(" ".join(codes))
        attrs.append("label=" + '"' + "\\n".join(q(x)[1:-1] for x in label) + '"')
        lines.append(f"  {q(g)} [{', '.join(attrs)}];")
    for src, t in edge_list:
        extra = " [color=red]" if src in in_cycle and t in in_cycle else ""
        lines.append(f"  {q(src)} -> {q(t)}{extra};")
    lines.append("}")
    return "\n".join(lines) + "\n"
