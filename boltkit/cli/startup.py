"""`boltkit buildkit simulate-start`: buildkitd's next start, replayed offline (rendered by startplan.py, which
`buildkit fsck` shares)."""
from __future__ import annotations

import click

from ..errors import OutputExists
from .buildkit import _root_or_exit, buildkit
from .check import FsckCommand
from .live import remove_new_dir, settled_reads
from .output import emit_json, progress, quiet_option, show_bytes, wide_option
from .startplan import change_record, echo_plan, headline, note_record, prediction_record


@buildkit.command("simulate-start", cls=FsckCommand)
@click.argument("root", type=click.Path(readable=False))
@click.option("-o", "--output", "out", type=click.Path(readable=False), default=None,
              help="Write a copy of the root's stores as buildkitd leaves them after its start (a new directory).")
@click.option("--config", "config_path", type=click.Path(readable=False), default=None,
              help="buildkitd.toml: its GC switch and history retention (BuildKit's defaults otherwise).")
@click.option("--list", "listing", is_flag=True, help="Every change, not only the counts by kind.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON record per change and note, then one prediction record (docs/json.md).")
@wide_option
@quiet_option
@settled_reads(over="root", discard=remove_new_dir("out"))
def simulate_start(root, out, config_path, listing, as_json):
    """What buildkitd will do to ROOT at its next start, replayed offline from BuildKit's own code paths.

    The worker loads every record of metadata_v2.db (clearing those whose parent, partner, snapshot or
    blob is gone, and their leases), SafeOpen opens cache.db and history.db (resetting a store bbolt
    cannot open), ReleaseUnreferenced releases results whose record cannot be loaded and prunes keys left
    empty, the history queue drops orphaned builds, and the start-up GC removes a mutable record left
    without its partner and the snapshots no lease holds. Damage the daemon's own reads meet crashes it.
    Nothing under ROOT is written.

    \b
    Exit status: 0 it starts and changes nothing or only its routine clean-up; 4 it starts but discards
    data (records cleared, leases or snapshots dropped, values rewritten); 8 it refuses to start,
    crashes, or SafeOpen resets a store (or ROOT cannot be read); 16 usage.

    \b
    Examples:
      boltkit buildkit simulate-start /var/lib/buildkit
      boltkit buildkit simulate-start --list --config /etc/buildkit/buildkitd.toml /var/lib/buildkit
      boltkit buildkit simulate-start -o /tmp/after /var/lib/buildkit && boltkit buildkit ls /tmp/after
    """
    import os

    from ..buildkit.startconfig import StartConfig
    from ..buildkit.startup import close_plan, simulate_start as simulate, write_start
    found = _root_or_exit(root)         # errors: exit 8 through the group's one handler
    if out is not None and os.path.exists(out):
        raise OutputExists(f"{out} already exists: -o writes a new directory")
    config = StartConfig.load(config_path) if config_path else None
    with progress(f"replaying the start of {root}", as_json=as_json) as p:
        plan = simulate(found.path, config=config, progress=p)
    try:
        written = write_start(plan, out) if out is not None else []
    finally:
        close_plan(plan)
    if as_json:
        for c in plan.changes:
            emit_json(change_record(c))
        for n in plan.notes:
            emit_json(note_record(n))
        rec = prediction_record(plan)
        if out is not None:
            rec["output"] = {"dir": out, "files": written}
        emit_json(rec)
    else:
        echo_plan(plan, listing=listing)
        if out is not None:
            click.echo(f"\nWrote {len(written)} file(s) under {out}.")
    raise SystemExit(plan.exit_class)


__all__ = ["simulate_start", "echo_plan", "change_record", "prediction_record", "note_record", "headline",
           "show_bytes"]
