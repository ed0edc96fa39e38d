"""`boltkit buildkit ...`: commands that understand BuildKit's stores."""
from __future__ import annotations

import click

from ..buildkit.fsck import check_store
from .app import main
from .check import FsckCommand, run_checks


@main.group()
def buildkit():
    """BuildKit's stores: cache.db (solver cache keys) and friends."""


@buildkit.command("check", cls=FsckCommand)
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--max-errors", type=click.IntRange(0), default=100, show_default=True,
              help="List at most this many problems per file (counts are never capped).")
@click.option("--snapshot", is_flag=True, help="Copy each file first and check the copy (buildkitd running).")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per problem, then one summary record per file.")
def buildkit_check(files, max_errors, snapshot, as_json):
    """Structural check plus BuildKit's own invariants, for cache.db.

    \b
    C1-C17  cache.db invariants (poison link keys, undecodable results, _result/_byresult
            disagreement, dead chains, empty branches, cycles, ...)
    D1-D5   dangling links: hard-dangling targets, ghost targets, missing and stale backlinks,
            orphan results

    Same output and exit status as `boltkit check` (0 clean, 4 problems, 8 unreadable, 16 usage).
    Other stores get the structural check and a note.
    """
    run_checks(files, as_json, max_errors, lambda path, progress: check_store(path, snapshot=snapshot,
                                                                                progress=progress))
