"""`boltkit check`: structural check with fsck(8) exit codes."""
from __future__ import annotations

import click

from ..check import check_file
from ..errors import Unsettled
from .app import EXIT_DAMAGE, EXIT_OK, EXIT_PROBLEMS, EXIT_UNREADABLE, destinations, main, output_file
from .output import emit_json, progress, quiet_option, warn

EXIT_CLEAN, EXIT_REPAIRED = EXIT_OK, EXIT_DAMAGE

# usage errors exit 16 for every command now (cli/app.py); the name stays for the commands that use it
FsckCommand = click.Command


@main.command(cls=FsckCommand)
@click.argument("files", nargs=-1, required=True, type=click.Path(readable=False))
@click.option("--meta", type=click.IntRange(0, 1), default=None,
              help="Check the tree under meta page 0 or 1 (what `bbolt surgery revert-meta-page` would give).")
@click.option("--quick", is_flag=True, help="Pages and tree only: skip key order, bounds and inline contents.")
@click.option("--max-errors", type=click.IntRange(0), default=100, show_default=True,
              help="List at most this many problems per file (counts are never capped).")
@click.option("--snapshot", is_flag=True, help="Copy each file first and check the copy.")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per problem, then one summary record per file.")
@click.option("--map", "map_path", type=click.Path(readable=False), default=None,
              help="Also draw the file as an SVG: one cell per page, damaged pages in red (one file only).")
@quiet_option
def check(files, meta, quick, max_errors, snapshot, as_json, map_path):
    """Check the structure of bbolt files: every fault, not just the first.

    Finds what `bbolt check` finds (freelist duplicates, reachable free pages, multiple references,
    bad page types, key order, leaked pages) and what it misses: meta bounds, freelist ids out of
    range, overflow past the end, empty branches, element bounds, bucket value sizes, and the inside
    of inline buckets. Never loops and never crashes on a damaged file.

    When problems are found, it also checks the other meta's tree and says whether reverting to it
    would give a clean file.

    \b
    Exit status (fsck): 0 clean, 4 problems found, 8 a file could not be read, 16 usage error.
    """
    if map_path and len(files) != 1:
        raise click.UsageError("--map draws one file; give exactly one")
    destinations(map_path, replace=True)

    def make_report(path, progress):
        report = check_file(path, meta=meta, quick=quick, snapshot=snapshot, progress=progress)
        if map_path and report.readable:
            draw_map(path, meta, report.problems, map_path)
        return report
    run_checks(files, as_json, max_errors, make_report)


def draw_map(path, meta, problems, map_path) -> None:
    from ..storage import Database
    from ..storage.pagemap import page_map
    from .pagemap_svg import render
    damaged: dict[int, str] = {}
    for p in problems:
        if p.pgid is not None and p.code not in ("B040", "B050"):
            damaged.setdefault(p.pgid, f"{p.code} {p.message}")
    with Database(path, meta=meta) as db:
        infos, _ = page_map(db)
        file_pages = db.file_size // db.page_size
    with output_file(map_path) as f:
        f.write(render(infos, damaged, f"{path}: {len(infos)} pages", file_pages))


def run_checks(files, as_json: bool, max_errors: int, make_report) -> None:
    """Check each file with ``make_report(path, progress)``; print its problems and summary; exit like fsck(8):
    4 when a file has problems, 8 when one cannot be read, 12 when both happened to different files."""
    status = EXIT_CLEAN
    for path in files:
        try:
            with progress(f"checking {path}", as_json=as_json) as p:
                report = make_report(path, p)
        except Unsettled as e:      # a live file that never stood still long enough: not damage, not read
            click.echo(f"Error: {e}", err=True)
            status |= EXIT_UNREADABLE
            continue
        for w in report.warnings:
            warn(w)
        listed = report.problems[:max_errors]
        for p in listed:
            if as_json:
                emit_json(p.as_dict())
            else:
                click.echo(f"{path}: {p.line()}")
        counts = report.severity_counts()
        if as_json:
            state = "unreadable" if not report.readable else "ok" if report.clean else "problems"
            emit_json({"type": "summary", "file": path, "status": state, "readable": report.readable,
                       "clean": report.clean,
                       "meta": report.meta_index, "txid": report.txid, "page_size": report.page_size,
                       "hwm": report.hwm, "pages_reachable": report.pages_reachable, "buckets": report.buckets,
                       "inline_buckets": report.inline_buckets, "keys": report.keys,
                       "problems": counts, "codes": report.counts(), "revert": report.revert})
        else:
            if len(report.problems) > len(listed):
                click.echo(f"{path}: ... {len(report.problems) - len(listed)} more problem(s) not listed "
                           f"(--max-errors {max_errors})")
            if not report.readable:
                click.echo(f"{path}: cannot be read")
            elif report.clean:
                click.echo(f"{path}: OK ({report.hwm} pages, {report.buckets} buckets "
                           f"({report.inline_buckets} inline), {report.keys} keys, meta {report.meta_index}, "
                           f"txid {report.txid})")
            else:
                codes = ", ".join(f"{c} x{n}" for c, n in sorted(report.counts().items()))
                click.echo(f"{path}: {counts['error']} error(s), {counts['warning']} warning(s) [{codes}]")
        if not report.readable:         # fsck(8): the outcomes of several files combine as bits
            status |= EXIT_UNREADABLE
        elif not report.clean:
            status |= EXIT_PROBLEMS
    raise SystemExit(status)
