"""`boltkit buildkit ...`: commands that understand BuildKit's stores."""
from __future__ import annotations

from typing import Any

import click

from ..buildkit.fsck import check_store
from ..errors import BoltkitError
from ..repair.replace import report_beside
from ..textform import show_bytes
from .app import destinations, main, output_file
from .check import FsckCommand, run_checks
from .live import held, settled_reads
from .output import progress, quiet_option, wide_option

PLAN_ROWS = 20          # rows of a prune plan listed without --list


@main.group()
def buildkit():
    """BuildKit's stores: cache.db (solver cache keys) and friends."""


@buildkit.command("check", cls=FsckCommand)
@click.argument("files", nargs=-1, required=True, type=click.Path(readable=False))
@click.option("--max-errors", type=click.IntRange(0), default=100, show_default=True,
              help="List at most this many problems per file (counts are never capped).")
@click.option("--snapshot", is_flag=True, help="Copy each file first and check the copy (buildkitd running).")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per problem, then one summary record per file.")
@quiet_option
@settled_reads(over="files")
def buildkit_check(files, max_errors, snapshot, as_json):
    """Structural check plus BuildKit's own invariants, for cache.db, metadata_v2.db and history.db files,
    or every store of a BuildKit root directory (with the checks across its stores).

    \b
    C1-C17  cache.db invariants (poison link keys, undecodable results, _result/_byresult
            disagreement, dead chains, empty branches, cycles, ...)
    D1-D5   dangling links: hard-dangling targets, ghost targets, missing and stale backlinks,
            orphan results
    M1-M14  metadata_v2.db records: undecodable values, missing parents, parent cycles, index
            keys, externals, ranges
    H1-H3   history.db build records
    ROOT only, across its stores: M9 and M17 (snapshots), M15 and M16 (leases), X1 and X2
            (results whose worker or metadata record is gone)

    Files: the output and exit status of `boltkit check` (0 clean, 4 problems, 8 unreadable, 16 usage).
    A ROOT: the exit status of `buildkit fsck` (0 the daemon starts and only its routine clean-up happens,
    warnings never fail; 4 it discards data or errors remain; 8 it will not start or a store is reset or
    unreadable; 12 both). Exit codes of several files and roots are ORed, as fsck(8) does. Other stores
    get the structural check and a note.
    """
    import os

    from ..buildkit.fsck import check_root
    from .startplan import headline
    checked, paths, roots = {}, [], []
    for f in files:
        if os.path.isdir(f):
            result = check_root(str(_root_or_exit(f).path), snapshot=snapshot)
            roots.append(result)
            checked.update(result.reports)
            paths += sorted(result.reports)
        else:
            paths.append(f)
    try:
        run_checks(paths, as_json, max_errors,
                   lambda path, progress: checked.get(path) or check_store(path, snapshot=snapshot,
                                                                            progress=progress))
    except SystemExit as done:
        code = done.code if roots and len(paths) > sum(len(r.reports) for r in roots) else 0
        for r in roots:
            code |= r.exit_code()
            if not as_json:
                click.echo(f"{r.root.path}: at its next start {headline(r.plan)} ({len(r.plan.changes)} change(s), "
                           f"{len(r.plan.discards)} discarding data: `buildkit simulate-start` lists them)")
        raise SystemExit(code if roots else done.code) from None


@buildkit.command()
@click.argument("file", type=click.Path(readable=False))
@click.option("--top", type=click.IntRange(1), default=10, show_default=True, help="How many keys in each top list.")
@click.option("--key", "focus", default=None, help="Show one key's neighbourhood: its parents and targets, "
              "--radius links away (and draw only that).")
@click.option("--radius", type=click.IntRange(1), default=2, show_default=True, help="How far --key looks.")
@click.option("--metadata", "metadata_dbs", multiple=True, type=click.Path(),
              help="A worker's metadata_v2.db, to name the build step each key's results stand for (found by "
                   "itself when FILE sits in a BuildKit root).")
@click.option("--view", type=click.Choice(["auto", "full", "steps", "condensed"]), default="auto", show_default=True,
              help="What --dot/--svg/--png draw: every key; one box per build step; or cycles, keys with the same "
                   "parents and targets, and plain chains merged. auto: full up to 200 keys, else steps (condensed "
                   "when no step is known).")
@click.option("--dot", "dot_path", type=click.Path(), default=None,
              help="Write the graph as Graphviz to this file (problem keys and cycles in red).")
@click.option("--svg", "svg_path", type=click.Path(readable=False), default=None,
              help="Render it to SVG with Graphviz's `dot` program (must be installed).")
@click.option("--png", "png_path", type=click.Path(), default=None,
              help="Render it to PNG with Graphviz's `dot` program (must be installed).")
@click.option("--snapshot", is_flag=True, help="Copy the file first (buildkitd running).")
@click.option("--json", "as_json", is_flag=True, help="The summary as one JSON record (with --key: the key's).")
@settled_reads(over=("file", "metadata_dbs"))
@wide_option
@quiet_option
def graph(file, top, focus, radius, metadata_dbs, view, dot_path, svg_path, png_path, snapshot, as_json):
    """The cache-key graph of a cache.db: size, roots, cycles, fan-out/fan-in, depth and path counts, with
    the build step each key stands for and what the graph's shape costs a cache export.

    The number of root-to-key paths is what a cache export before BuildKit v0.25 walks one by one
    (its loop removal keeps a visited set per path), so from about a million of them an export spends
    seconds to hours in "preparing build cache for export"; v0.25 walks the keys in order instead.
    Cycles broke exports before v0.9 and trip v0.25's consistency check.

    \b
    Examples:
      boltkit buildkit graph /var/lib/buildkit/cache.db
      boltkit buildkit graph --key 07kqnj6no2r1s1p9ndwpo1qr8 --png key.png cache.db
      boltkit buildkit graph --view steps --svg steps.svg /var/lib/buildkit/cache.db
    """
    from ..buildkit.cachecheck import check_cache_columns
    from ..buildkit.cachecolumns import load_cache_columns
    from .app import opened
    from .inspect import report_damage
    from ..buildkit.kinds import require_store
    from .output import echo_wrapped, emit_json, emit_table
    destinations(dot_path, svg_path, png_path, replace=True)
    with opened(file, None, snapshot) as db:
        require_store(db, "cache.db")
        damage: list = []
        with progress(f"reading {file}", as_json=as_json) as p:
            cols = load_cache_columns(db, on_damage=damage.append, progress=p)
    s = cols.graph_summary(top)
    # the summary needs neither the problem keys nor the graph as Python objects (10 s on a 265 MB store):
    # only the JSON record, --key and the drawings do
    drawing = bool(dot_path or svg_path or png_path)
    marked: dict = {}
    if as_json or focus is not None or drawing:
        wanted = ("D1", "D2", "C12", "C15")
        for p in check_cache_columns(cols, file).select(lambda code: code in wanted):
            if p.key is not None:
                marked.setdefault(p.key.decode("utf-8", "replace"), p.code)
    names = cols.names.str
    steps = _steps(file, zip(map(names, cols.result_kid.tolist()), map(names, cols.result_rid.tolist())),
                   metadata_dbs)
    if focus is not None or drawing:
        store = cols.to_store()
        links = store.edges()
        if focus is not None and focus not in links and not any(focus in ts for ts in links.values()):
            raise click.ClickException(f"{focus}: no such key in {file}'s link graph")
    if drawing:
        _draw(links, store.with_results(), marked, steps, focus, radius, view, dot_path, svg_path, png_path)
    risk = s.export_risk
    if focus is not None:
        _show_key(focus, links, store, steps, marked, as_json)
        report_damage(damage, "graph")
        return
    shown = {k for rows in (s.fan_out, s.fan_in, s.paths) for k, _ in rows} | {k for c in s.cycles for k in c}
    if as_json:
        emit_json({"type": "graph", "file": file, "keys": s.nodes, "links": s.edges, "roots": len(s.roots),
                   "with_results": s.with_results, "depth": s.depth, "max_paths": s.max_paths,
                   "total_paths": s.total_paths, "cycles": s.cycles, "fan_out": s.fan_out, "fan_in": s.fan_in,
                   "paths": s.paths, "problems": marked, "steps": {k: steps[k] for k in sorted(shown) if k in steps},
                   "risk": {"level": "high" if risk.high else "low", "paths": risk.paths,
                            "threshold": risk.threshold, "cycles": risk.cycles},
                   "damage": [str(e) for e in damage]})
        return
    echo_wrapped(f"keys: {s.nodes}, links: {s.edges}, roots: {len(s.roots)}, keys with results: {s.with_results}, "
                 f"depth: {s.depth}, most root-to-key paths: {s.max_paths}")
    echo_wrapped(_risk_line(risk))
    click.echo(f"cycles and self-loops: {len(s.cycles)}")
    for c in s.cycles[:top]:
        click.echo("  " + " -> ".join(c))
    for title, what, rows in (("fan-out: keys with the most links", "links", s.fan_out),
                              ("fan-in: keys with the most parents", "parents", s.fan_in),
                              ("keys with the most root-to-key paths", "paths", s.paths)):
        click.echo(f"\n{title}")
        emit_table([[k, n, steps.get(k, "")] for k, n in rows], ["key", what, "build step"], shrink=[0, 2])
    if not steps and s.with_results:
        click.echo("\n(build steps unknown: give --metadata runc-*/metadata_v2.db to name them)")
    report_damage(damage, "graph")


def _risk_line(risk) -> str:
    """The export risk in words: the count, the threshold, and why it is one."""
    head = (f"export risk: {'HIGH' if risk.high else 'low'}: {risk.paths:,} root-to-key paths in all "
            f"(high from {risk.threshold:,}")
    if risk.cycles:
        return head + f"; and {risk.cycles} cycle(s), which broke exports before v0.9 and fail v0.25's " \
                      "consistency check)"
    return head + ": a pre-v0.25 cache export walks every path once, so from there it spends seconds to hours " \
                  "in 'preparing build cache for export'; v0.25 and later walk keys, not paths)"


def _steps(file, results, metadata_dbs) -> dict:
    """key -> build step, from the metadata_v2.db files given or, when FILE sits in a root, its workers';
    ``results``: (key, result id) of every result of the cache.db."""
    import os

    from ..buildkit.metadata import load_metadata_store
    from ..buildkit.root import discover
    from ..buildkit.steps import step_descriptions
    from ..storage import Database
    stores: dict = {}
    paths: list[tuple[str | None, Any]] = [(None, p) for p in metadata_dbs]
    if not paths:
        try:
            found = discover(os.path.dirname(os.path.abspath(file)))
        except (BoltkitError, OSError):
            found = None
        if found is not None:
            ids = {w.dir.name: w.worker_id for w in found.workers}
            paths = [(ids.get(st.worker or ""), st.path) for st in found.stores if st.kind == "metadata_v2.db"]
    from .output import warn
    for worker, p in paths:
        damage: list = []
        try:
            with Database(str(p)) as mdb:
                stores[worker] = load_metadata_store(mdb, on_damage=damage.append)
        except BoltkitError as e:
            warn(f"{p}: cannot name build steps from it: {e}")
        if damage:
            warn(f"{p}: read past {len(damage)} damaged part(s) ({damage[0]}): the steps of the records they hold "
                 "are not named")
    if not stores:
        return {}
    return step_descriptions(results, stores)


def _show_key(focus, links, store, steps, marked, as_json) -> None:
    from .output import emit_json, emit_table
    parents = sorted({src for src, ts in links.items() if focus in ts})
    targets = sorted(set(links.get(focus, ())))
    results = [r.result_id for r in store.results.get(focus, [])]
    if as_json:
        emit_json({"type": "graph-key", "key": focus, "step": steps.get(focus), "problem": marked.get(focus),
                   "results": results, "parents": [{"key": k, "step": steps.get(k)} for k in parents],
                   "targets": [{"key": k, "step": steps.get(k)} for k in targets]})
        return
    click.echo(f"key {focus}" + (f": {steps[focus]}" if focus in steps else "")
               + (f" [{marked[focus]}]" if focus in marked else ""))
    click.echo(f"{len(results)} result(s), {len(parents)} parent(s), {len(targets)} target(s)")
    for title, ks in (("parents (keys that link to it)", parents), ("targets (keys it links to)", targets)):
        if ks:
            click.echo()
            emit_table([[k, steps.get(k, ""), marked.get(k, "")] for k in ks], [title, "build step", "problem"],
                       shrink=[0, 1])


def _draw(links, with_results, marked, steps, focus, radius, view, dot_path, svg_path, png_path) -> None:
    """Write the DOT, and render SVG/PNG through Graphviz when it is installed (it is optional)."""
    import shutil
    import subprocess

    from ..buildkit.graph import condense, neighbourhood, to_dot
    from .output import note
    if focus is not None:
        links = neighbourhood(links, focus, radius)
    n = len(set(links) | {t for ts in links.values() for t in ts})
    if view == "auto":
        view = "full" if n <= 200 else "steps" if steps else "condensed"
    grouped = None
    if view in ("steps", "condensed"):
        grouped = condense(links, keep=set(marked) | ({focus} if focus else set()),
                           by_step=steps if view == "steps" else None)
        note(f"drawing {len(grouped.members)} group(s) for {n} key(s) ({view} view)")
    text = to_dot(links, with_results, marked, steps, grouped, focus)
    if dot_path:
        with output_file(dot_path) as f:
            f.write(text)
    for fmt, out in (("svg", svg_path), ("png", png_path)):
        if not out:
            continue
        dot = shutil.which("dot")
        if dot is None:
            raise click.ClickException(f"--{fmt} needs Graphviz's `dot` program (apt-get install graphviz); "
                                       "use --dot to write the graph and render it elsewhere")
        proc = subprocess.run([dot, f"-T{fmt}", "-o", out], input=text.encode(), capture_output=True)
        if proc.returncode != 0:
            raise click.ClickException(f"dot failed to render {out}: {proc.stderr.decode(errors='replace')[-500:]}")


def _change_row(c) -> list:
    """An offline repair's change as a table row: its bytes as text only here (plan.Change.as_dict)."""
    d = c.as_dict()
    return [d["code"], d["action"], d["bucket"], d["key"]]


def _root_or_exit(root):
    from ..buildkit.root import discover
    found = discover(root)        # OpenError (exit 8) through the group's one handler
    if not found.stores:
        raise click.ClickException(f"{root}: no BuildKit stores found (expected cache.db, a worker directory with "
                                   "metadata_v2.db, ...)")
    from .output import note
    if found.docker_root is not None:
        note(f"{root} is a Docker data root: reading its BuildKit stores in {found.path}")
    if found.skipped:
        base = found.docker_root or found.path
        names = [str(p.relative_to(base)) for p in found.skipped]
        note(f"skipped {len(names)} file(s) that are not BuildKit stores: " + ", ".join(names[:8])
             + (f", ... ({len(names) - 8} more)" if len(names) > 8 else ""))
    return found


@buildkit.command("ls")
@click.argument("root", type=click.Path(readable=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON record per store.")
@wide_option
@settled_reads(over="root")
def ls(root, as_json):
    """The bolt stores under a BuildKit root: kind, worker, sizes, txid, last modified.

    ROOT is buildkitd's --root (/var/lib/buildkit, ~/.local/share/buildkit for rootless, a buildx
    state volume) or Docker's <data-root>/buildkit (given /var/lib/docker, its buildkit/ directory is
    read and the other bolt files found are named as skipped).

    \b
    Examples:
      boltkit buildkit ls /var/lib/buildkit
      boltkit buildkit ls --json /var/lib/docker | jq -r .file
    """
    from ..buildkit.root import store_usage
    from .output import emit_json, emit_table, human_size
    found = _root_or_exit(root)
    rows = []
    for u in store_usage(found):
        s = u.store
        rec = {"type": "store", "file": str(s.path), "store": u.relpath, "kind": s.kind, "worker": s.worker,
               "worker_id": u.worker_id, "size": u.size, "modified": u.modified.isoformat(timespec="seconds"),
               "used": u.used, "txid": u.txid, "error": u.error}
        if as_json:
            emit_json(rec)
        else:
            used = "unreadable" if rec["error"] else f"{100.0 * rec['used'] / rec['size']:.0f}%"
            rows.append([rec["store"], s.kind, rec["worker_id"] or "", human_size(rec["size"]), used,
                         rec["txid"] if rec["txid"] is not None else "", rec["modified"][:16].replace("T", " ")])
    if not as_json:
        emit_table(rows, ["store", "kind", "worker id", "size", "used", "txid", "modified (UTC)"], shrink=[0, 2])
        for files, what in ((found.backups, "left by buildkitd's SafeOpen resets (the stores it discarded)"),
                            (found.boltkit_backups, "kept by boltkit repairs (the originals they replaced)"),
                            (found.other_backups, "of other origin")):
            if files:
                click.echo(f"\n{len(files)} .bak file(s) {what}: "
                           + ", ".join(str(p.relative_to(found.path)) for p in files))


@buildkit.command(cls=FsckCommand)
@click.argument("root", type=click.Path(readable=False))
@click.option("--jobs", "-j", type=click.IntRange(1), default=1, show_default=True, help="Check stores in parallel.")
@click.option("--max-errors", type=click.IntRange(0), default=20, show_default=True,
              help="List at most this many problems per store (counts are never capped).")
@click.option("--snapshot", is_flag=True, help="Copy each store first (when buildkitd may be running).")
@click.option("--config", "config_path", type=click.Path(readable=False), default=None,
              help="buildkitd.toml: its GC switch and history retention (BuildKit's defaults otherwise).")
@click.option("--strict", is_flag=True, help="Warnings count too: exit 4 on any problem.")
@click.option("--repair", "preen", is_flag=True,
              help="Preen (e2fsck -p): salvage torn stores, apply what the start would do and what would stop "
                   "it, verify, keep backups, check again; exit 1 when the daemon will now start.")
@click.option("--list", "listing", is_flag=True, help="Every change the start makes, not only the counts.")
@click.option("--json", "as_json", is_flag=True,
              help="Problems, one summary per store, the start's changes and notes, then one prediction record.")
@wide_option
@quiet_option
@settled_reads(over="root", unless=lambda kw: kw["preen"])
def fsck(root, jobs, max_errors, snapshot, config_path, strict, preen, listing, as_json):
    """Before restarting buildkitd: check every store under ROOT and say exactly what the daemon will do.

    Structural check of every bolt file, BuildKit's invariants, the checks across stores, and a replay of
    the next start from BuildKit's own code paths (`buildkit simulate-start`): whether it starts, refuses,
    crashes or has SafeOpen reset a store, and every record, lease, snapshot and cache key it removes.

    \b
    Exit status (bits, ORed as fsck(8) ORs them): 0 the daemon will start and changes nothing or
    only its routine clean-up (warnings are printed, never fail); 4 it will start but discard data,
    or error-level problems remain; 8 it will refuse to start, crash, or reset a store, or a store
    cannot be read; 12 both; 1 (--repair) problems were repaired and the daemon will now start;
    16 usage. --strict counts warnings as 4.

    \b
    Examples:
      boltkit buildkit fsck /var/lib/buildkit && systemctl start buildkit
      boltkit buildkit fsck --repair /var/lib/buildkit; test $? -lt 4 && systemctl start buildkit
      systemd: ExecStartPre=/bin/sh -c 'boltkit buildkit fsck --repair /var/lib/buildkit; test $? -lt 4'
    """
    from ..buildkit.fsck import fsck_root
    from ..buildkit.startconfig import StartConfig
    from .check import EXIT_UNREADABLE
    from .output import emit_json, emit_table, warn
    from .startplan import change_record, echo_plan, note_record, prediction_record
    found = _root_or_exit(root)         # no root, no stores, a bad config: exit 8 through the group's handler
    config = StartConfig.load(config_path) if config_path else None
    repaired = None
    if preen:
        from ..buildkit.preen import preen_root
        try:
            with progress(f"repairing {root}", as_json=as_json) as p:
                repaired = preen_root(str(found.path), config=config, progress=p)
        except BoltkitError as e:
            click.echo(f"Error: --repair: {e}", err=True)
            raise SystemExit(EXIT_UNREADABLE | getattr(e, "exit_bits", 0)) from None
        for step in repaired.steps:
            if as_json:
                emit_json(step.as_record())
            else:
                click.echo(f"repaired: {step.describe()}")
    if jobs > 1 and not snapshot and held(str(found.path)):
        jobs = 1            # a live store is read again when a commit lands: the reads must be this process's
    with progress(f"checking {root}", as_json=as_json) as p:
        result = fsck_root(str(found.path), jobs=jobs, snapshot=snapshot, config=config, progress=p)
    if result.daemon_running:
        warn(f"{root}/buildkitd.lock is held: buildkitd is running; " + (
            "each store is read from a copy taken while its metas stood still" if snapshot else
            "a store read while a commit lands is read again (or use --snapshot)"))
    rows = []
    for path, rep in result.reports.items():
        rel = str(__import__("pathlib").Path(path).relative_to(found.path))
        for p in rep.problems[:max_errors]:
            if as_json:
                emit_json(p.as_dict())
            else:
                click.echo(f"{rel}: {p.line()}")
        counts = rep.severity_counts()
        status = "unreadable" if not rep.readable else ("ok" if rep.clean else "problems")
        codes = ", ".join(f"{c} x{n}" for c, n in sorted(rep.counts().items()))
        if as_json:
            emit_json({"type": "summary", "file": path, "store": rel, "status": status, "problems": counts,
                       "codes": rep.counts()})
        rows.append([rel, status, counts["error"], counts["warning"], codes])
    for p in result.cross[:max_errors]:
        if as_json:
            emit_json(p.as_dict())
        else:
            click.echo(f"cross-store: {p.line()}")
    code = result.exit_code(strict=strict)
    if repaired is not None and repaired.steps and not code & 8:
        code |= 1
    plan = result.plan
    if as_json:
        for c in plan.changes if listing else []:
            emit_json(change_record(c))
        for n in plan.notes:
            emit_json(note_record(n))
        rec = prediction_record(plan)
        rec.update({"status": result.status, "exit": code, "cross": len(result.cross),
                    "daemon_running": result.daemon_running,
                    "repaired": [s.as_record() for s in repaired.steps] if repaired is not None else None})
        emit_json(rec)
    else:
        click.echo()
        emit_table(rows, ["store", "status", "errors", "warnings", "codes"], shrink=[0, 4])
        click.echo("\nAt its next start: ", nl=False)
        echo_plan(plan, listing=listing)
    raise SystemExit(code)


@buildkit.command()
@click.argument("file", type=click.Path(readable=False))
@click.option("--apply", "apply_", is_flag=True,
              help="Write the pruned store beside FILE, verify it, keep FILE as a .bak and move the new one in.")
@click.option("--break-cycles", is_flag=True, help="Also drop the links inside every cycle of the key graph.")
@click.option("--release-missing", "metadata_db", type=click.Path(readable=False), default=None,
              help="The worker's metadata_v2.db: release results whose record is gone, as buildkitd does at start.")
@click.option("--rehome", is_flag=True,
              help="After a salvage: merge id buckets found away from their top-level bucket (at the top level, "
                   "nested in another top, in lost+found) back where BuildKit looks for them.")
@click.option("--drop-unreachable", is_flag=True,
              help="Also drop derived keys that no chain of links from a root key reaches (C14), with their "
                   "results: BuildKit can never hit them, but its own rule keeps them.")
@click.option("--list", "listing", is_flag=True,
              help=f"Every change (by default a plan of more than {PLAN_ROWS} changes is shown as counts by kind "
                   "and its first rows).")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per change, then a summary.")
@wide_option
@quiet_option
@settled_reads(over=("file", "metadata_db"), unless=lambda kw: kw["apply_"])
def prune(file, apply_, break_cycles, metadata_db, rehome, drop_unreachable, listing, as_json):
    """Remove dangling links, ghost keys and stale index entries from a cache.db (dry run by default).

    Mirrors BuildKit's own collection rule: a key with no results and no links to a live key goes,
    with its parents' links to it, recursively. Backlinks and by-result entries are rebuilt to match
    (missing ones added, stale ones dropped), orphan results get their _links bucket back, poison link
    keys and undecodable results are dropped. With --apply, refuses while buildkitd holds the file.

    \b
    A torn BuildKit store, start to finish (buildkitd stopped):
      boltkit salvage --in-place /var/lib/buildkit/cache.db
      boltkit buildkit repair --apply --prune /var/lib/buildkit
      boltkit buildkit fsck /var/lib/buildkit && systemctl start buildkit
    or all three at once: boltkit buildkit fsck --repair /var/lib/buildkit
    """
    from ..buildkit.prune import apply_prune, plan_file
    from ..storage import Database
    from .output import emit_json, emit_table
    from ..buildkit.kinds import require_store
    with Database(file) as db:
        require_store(db, "cache.db")
    records = None
    if metadata_db is not None:
        from ..buildkit.metadata import record_keys
        with Database(metadata_db) as mdb:
            records = record_keys(mdb)
    with progress(f"planning {file}", as_json=as_json) as p:
        plan = plan_file(file, break_cycles=break_cycles, records=records, rehome=rehome,
                         drop_unreachable=drop_unreachable, progress=p)
    changes = plan.changes
    counts = changes.actions()
    if as_json:
        for c in changes:
            emit_json(dict(type="change", **c.as_dict()))
    elif listing or len(changes) <= PLAN_ROWS:
        emit_table([_change_row(c) for c in changes], ["code", "action", "bucket", "key"], shrink=[2, 3])
    else:       # a fleet-size plan: hundreds of thousands of rows would bury the summary
        kinds = changes.counts()        # counted without building the rows
        emit_table([[code, action, n] for (code, action), n in sorted(kinds.items())], ["code", "action", "count"])
        click.echo(f"\nThe first {PLAN_ROWS} of {len(changes)} changes (--list shows every one):")
        emit_table([_change_row(c) for c in changes[:PLAN_ROWS]], ["code", "action", "bucket", "key"],
                   shrink=[2, 3])
    summary = {"type": "plan", "file": file, "changes": len(changes), "actions": counts, "applied": False,
               "backup": None}
    if changes and apply_:
        summary["backup"] = apply_prune(plan)     # which writes the report beside the backup
        summary["applied"] = True
        summary["report"] = report_beside(summary["backup"])
    if as_json:
        emit_json(summary)
    elif not changes:
        click.echo(f"{file}: nothing to prune")
    else:
        what = ", ".join(f"{n} {a}" for a, n in sorted(counts.items()))
        if summary["applied"]:
            click.echo(f"{file}: pruned ({what}); the original is kept as {summary['backup']}")
        else:
            click.echo(f"{file}: would change {len(changes)} entries ({what}); run with --apply to write it")


@buildkit.command()
@click.argument("file", type=click.Path(readable=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON record per build.")
@click.option("--snapshot", is_flag=True, help="Copy the file first (buildkitd running).")
@settled_reads
@wide_option
def history(file, as_json, snapshot):
    """Build records of a history.db: ref, created, duration, steps (cached/completed/total), pinned, error.

    \b
    Examples:
      boltkit buildkit history /var/lib/buildkit/history.db
      boltkit buildkit history --json history.db | jq -r 'select(.error) | .ref'
    """
    from ..buildkit.history import load_history
    from .app import opened
    from .output import emit_json, emit_table
    from ..buildkit.kinds import require_store
    with opened(file, None, snapshot) as db:
        require_store(db, "history.db")
        damage: list = []
        records = load_history(db, on_damage=damage.append)
    records.sort(key=lambda r: r.created_at or "")
    rows = []
    for r in records:
        if as_json:
            emit_json(dict(type="build", **r.as_dict()))
            continue
        took = "" if r.duration is None else f"{r.duration:.1f}s"
        rows.append([r.ref or r.key, (r.created_at or "")[:16].replace("T", " "), took,
                     f"{r.num_cached_steps}/{r.num_completed_steps}/{r.num_total_steps}", "yes" if r.pinned else "",
                     (r.error or r.decode_error or "")])
    if not as_json:
        emit_table(rows, ["ref", "created (UTC)", "took", "cached/done/total", "pinned", "error"], shrink=[0, 5])
        click.echo(f"{len(records)} build record(s)")
    for e in damage:
        click.echo(f"damage: {e}", err=True)


@buildkit.command()
@click.argument("target", type=click.Path(readable=False))
@click.option("--sort", type=click.Choice(["size", "created", "last-used", "usage"]), default="size", show_default=True)
@click.option("--type", "record_type", multiple=True,
              help="Only records of this type (regular, internal, frontend, source.local, source.git.checkout, "
                   "exec.cachemount).")
@click.option("--older-than", default=None,
              help="Only records last used (or created) longer ago than this: 48h, 7d, 30m.")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per cache record, then the totals.")
@click.option("--config", "config_path", type=click.Path(readable=False), default=None,
              help="buildkitd.toml, for the start the listing is replayed through (its start-up GC).")
@click.option("--at", "at", default=None, help="Replay the start at this time (RFC 3339) instead of now: its "
                                               "start-up GC's keep durations count from then.")
@wide_option
@quiet_option
@settled_reads(over="target")
def du(target, sort, record_type, older_than, as_json, config_path, at):
    """Disk usage of cache records, offline (like `buildctl du -v`), from a root or a metadata_v2.db.

    Lists id, kind, type, mutable, reclaimable, shared, size, created, last used, usage count, parents and
    description, then buildctl's totals (Shared and Private when anything is shared, Reclaimable, Total)
    and the reasons space will not be reclaimed that the files show (parents pinned by descendants, types
    skipped by default prunes, bolt and .bak files du never counts).

    For a root whose daemon is stopped, the list is the one `buildctl du` gives once buildkitd has started
    again: the start is replayed (as `buildkit simulate-start`), an equal-mutable pair is listed once, and
    a size not recorded is measured as BuildKit measures it (a committed snapshot's recorded usage, an
    active snapshot's directory under snapshots/snapshots/, the blob in the content store); "?" only where
    neither exists. Nothing holds a reference in a daemon that has just started, so every record is
    reclaimable (`buildkit gc` says what a GC pass or prune would actually remove, and why the rest
    stays); while buildkitd runs (its lock is held) Reclaimable is unknown ("?"). Shared is only ever set
    by Docker (layers of its images): unknown in a Docker data root, no elsewhere.

    \b
    Examples:
      boltkit buildkit du /var/lib/buildkit                   biggest records first
      boltkit buildkit du --sort last-used --older-than 7d /var/lib/buildkit
      boltkit buildkit du --json /var/lib/buildkit | jq 'select(.type=="du-totals")'
    """
    from pathlib import Path

    from ..buildkit.du import listing, parse_age, root_file_bytes, usage
    from ..buildkit.fsck import daemon_holds_lock
    from ..buildkit.metadata import load_metadata_store
    from .app import opened
    from .inspect import report_damage
    from .output import echo_wrapped, emit_json, emit_table, human_size
    path = Path(target)
    dbs, bolt_bytes, bak_bytes, running, docker = [], 0, 0, False, False
    if path.is_dir():
        found = _root_or_exit(target)
        dbs = [s.path for s in found.stores if s.kind == "metadata_v2.db"]
        bolt_bytes, bak_bytes = root_file_bytes(found)
        running, docker = daemon_holds_lock(found), found.docker_root is not None
    else:
        dbs = [path]
    stores: list = []
    from ..buildkit.kinds import require_store
    damage: list = []
    unreadable = []
    started, start_notes = None, []
    if path.is_dir() and not running:
        # what the daemon lists once started: DiskUsage on the start model (sizes measured, pairs once)
        from ..buildkit.du import usage_after_start
        from ..buildkit.startconfig import StartConfig
        from ..buildkit.gotime import time_of
        when = time_of(at) if at is not None else None
        if at is not None and when is None:
            raise click.BadParameter(f"{at!r} is not an RFC 3339 time", param_hint="--at")
        try:
            with progress(f"replaying the start of {target}", as_json=as_json) as p:
                started, start_notes = usage_after_start(found.path, StartConfig.load(config_path) if config_path
                                                         else None, when, progress=p)
        except BoltkitError as e:
            start_notes = [f"the start could not be replayed ({e}): the listing comes from the files alone"]
    for p in dbs:
        if not path.is_dir():
            with opened(str(p)) as db:
                require_store(db, "metadata_v2.db")
                stores.append((str(p), usage(load_metadata_store(db, on_damage=damage.append),
                                             daemon_running=running, docker=docker)))
            continue
        try:        # a root: one unreadable store is reported and skipped, the others are still counted
            with opened(str(p)) as db:
                stores.append((str(p), usage(load_metadata_store(db, on_damage=damage.append),
                                             daemon_running=running, docker=docker)))
        except BoltkitError as e:
            unreadable.append(f"{e} (its records are not counted)")
    if unreadable and len(unreadable) == len(dbs):
        raise click.ClickException(f"{target}: no metadata_v2.db could be read: " + "; ".join(unreadable))
    damage = unreadable + damage
    age = parse_age(older_than) if older_than else None
    if older_than and age is None:
        raise click.BadParameter("use a number and s, m, h or d, e.g. 48h", param_hint="--older-than")
    shown = listing(stores, started=started, start_notes=start_notes, types=record_type, older_than=age, sort=sort,
                    bolt_bytes=bolt_bytes, bak_bytes=bak_bytes)
    rows, t, notes = shown.rows, shown.totals, shown.notes
    if as_json:
        for r in rows:
            emit_json(dict(type="cache-record", **r.as_dict()))
        emit_json({"type": "du-totals", "records": t.records, "total": t.total, "reclaimable": t.reclaimable,
                   "shared": t.shared, "private": None if t.shared is None else t.total - t.shared,
                   "unknown_sizes": t.unknown_sizes, "daemon_running": running, "notes": notes})
        report_damage(damage, "usage listing")
        return

    def yes(v):
        return "?" if v is None else "yes" if v else "no"
    from .output import wide_requested
    when = "%Y-%m-%d %H:%M"
    if wide_requested():
        emit_table([[show_bytes(r.id), r.kind, r.record_type, yes(r.mutable), yes(r.reclaimable), yes(r.shared),
                     human_size(r.size), r.created.strftime(when) if r.created else "",
                     r.last_used.strftime(when) if r.last_used else "", r.usage_count,
                     " ".join(map(show_bytes, r.parents)), r.description] for r in rows],
                   ["id", "kind", "type", "mutable", "reclaimable", "shared", "size", "created", "last used", "uses",
                    "parents", "description"])
    else:   # what fits 80 columns; shared only when it can be anything but "no" (Docker)
        with_shared = any(r.shared is not False for r in rows)
        emit_table([[show_bytes(r.id), human_size(r.size), yes(r.reclaimable)]
                    + ([yes(r.shared)] if with_shared else [])
                    + [yes(r.mutable), (r.last_used or r.created).strftime("%Y-%m-%d") if (r.last_used or r.created)
                       else "", r.description] for r in rows],
                   ["id", "size", "reclaimable"] + (["shared"] if with_shared else []) + ["mutable", "last used",
                                                                                         "description"],
                   shrink=[0, 6 if with_shared else 5])
    click.echo()
    if t.shared:
        click.echo(f"Shared:       {human_size(t.shared)}")
        click.echo(f"Private:      {human_size(t.total - t.shared)}")
    click.echo("Reclaimable:  " + ("? (buildkitd is running: only it knows what is in use)" if t.reclaimable is None
                                   else human_size(t.reclaimable)))
    echo_wrapped(f"Total:        {human_size(t.total)} in {t.records} record(s)"
                 + (f", {t.unknown_sizes} without a recorded size (counted as 0)" if t.unknown_sizes else ""),
                 indent=" " * 14)
    for n in notes:
        echo_wrapped(f"  - {n}", indent="    ")
    report_damage(damage, "usage listing")


@buildkit.command()
@click.argument("root", type=click.Path(readable=False))
@click.option("--apply", "apply_", is_flag=True,
              help="Apply the fixes: each store is rewritten beside itself, verified, kept as .bak and swapped in.")
@click.option("--start-only", is_flag=True,
              help="Apply exactly what buildkitd's next start would do, nothing more (refused if it would not start).")
@click.option("--prune", "prune_more", is_flag=True,
              help="Also what BuildKit never does at start: ghost keys, dead chains, dangling links and stale "
                   "indexes in cache.db, id buckets a salvage left misplaced, metadata leftovers (M2, M10, M11).")
@click.option("--config", "config_path", type=click.Path(readable=False), default=None,
              help="buildkitd.toml: its GC switch and history retention (BuildKit's defaults otherwise).")
@click.option("--list", "listing", is_flag=True, help="Every change, not only the counts by kind.")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per change, then a summary.")
@wide_option
@quiet_option
@settled_reads(over="root", unless=lambda kw: kw["apply_"])
def repair(root, apply_, start_only, prune_more, config_path, listing, as_json):
    """Repair a whole BuildKit root so buildkitd starts cleanly (dry run by default; stop buildkitd first).

    By default: what would stop the daemon (a metadata value that is not JSON, which makes it refuse to
    start; a cache.parent cycle, which crashes it) is fixed, then exactly what its next start would do is
    applied (records whose parent, partner or snapshot is gone cleared with their leases, results released,
    emptied keys pruned; see `buildkit simulate-start`). The next real start then changes nothing.
    Damaged stores need salvage first (`boltkit buildkit fsck --repair` does both).

    \b
    Exit status: 0 nothing to do or applied; 1 an error; 8 refused (buildkitd holds a store, or a store
    needs salvage first).

    \b
    Examples:
      boltkit buildkit repair /var/lib/buildkit             what it would change
      boltkit buildkit repair --apply /var/lib/buildkit     change it (buildkitd stopped)
      boltkit buildkit repair --apply --prune /var/lib/buildkit
    """
    from ..buildkit.repair import apply_root, apply_start_repair, plan_root, plan_start_repair
    from ..buildkit.startconfig import StartConfig
    from .output import emit_json, emit_table
    from .startplan import change_record, echo_plan
    found = _root_or_exit(root)
    backups, extra = [], []
    config = StartConfig.load(config_path) if config_path else None
    if prune_more:
        # first what only --prune does (ids back where BuildKit looks, poison entries, ghosts), so the start
        # that follows is replayed on the result and the root ends where a start changes nothing
        with progress(f"planning {root}", as_json=as_json) as p:
            more = plan_root(found, config=config, progress=p)
        extra = more.changes
        if as_json:
            for path, c in extra:
                emit_json(dict(type="change", store=path, **c.as_dict()))
        elif extra:
            emit_table([[str(__import__("pathlib").Path(p).relative_to(found.path)), *_change_row(c)]
                        for p, c in extra], ["store", "code", "action", "bucket", "key"], shrink=[0, 3, 4])
            click.echo()
        if apply_ and extra:
            with progress(f"repairing {root}", as_json=as_json) as p:     # each store's report beside its backup
                backups += [b for _, b in apply_root(more, progress=p)]
    with progress(f"replaying the start of {root}", as_json=as_json) as p:
        rep = plan_start_repair(found.path, config=config, start_only=start_only, progress=p)
    blocked = rep.blocked
    changes = rep.changes
    if as_json:
        for c in changes:
            emit_json(change_record(c))
    elif changes or blocked:
        echo_plan(rep.start, listing=listing)
    if apply_ and changes and blocked is None:
        with progress(f"repairing {root}", as_json=as_json) as p:     # InUse: exit 8, through the group's handler
            backups += [b for _, b in apply_start_repair(rep, progress=p)]
    else:
        rep.close()
    total = len(changes) + len(extra)
    if as_json:
        emit_json({"type": "plan", "root": str(found.path), "changes": total, "applied": bool(backups),
                   "backups": backups, "blocked": blocked,
                   "reports": [report_beside(b) for b in backups]})    # one per store, written as it was swapped
    elif blocked is not None:
        click.echo(f"Error: {blocked}", err=True)
    elif not total:
        click.echo(f"{root}: nothing to repair")
    elif backups:
        click.echo(f"{root}: {total} change(s) applied; originals kept as: " + ", ".join(backups))
    else:
        click.echo(f"{root}: would make {total} change(s); run with --apply (buildkitd stopped) to make them")
    if blocked is not None:
        raise SystemExit(8)
