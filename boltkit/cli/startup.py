"""`boltkit buildkit simulate-start`: buildkitd's next start, replayed offline; and the rendering of a start plan
that `buildkit fsck` shares."""
from __future__ import annotations

from collections import Counter

import click

from ..buildkit.startup import Outcome, StartPlan
from ..errors import BoltkitError
from .buildkit import _root_or_exit, buildkit
from .check import EXIT_UNREADABLE, FsckCommand
from .live import remove_new_dir, settled_reads
from .output import emit_json, emit_table, encode_bytes, show_bytes, show_path, wide_option

OUTCOME_TEXT = {
    Outcome.STARTS: "buildkitd will start",
    Outcome.RESETS: "buildkitd will start, after SafeOpen resets {resets} (everything in it is lost)",
    Outcome.REFUSES: "buildkitd will refuse to start (exit 1)",
    Outcome.CRASHES: "buildkitd will crash before it is ready (exit 2)",
}


def change_record(c, encoding: str = "auto") -> dict:
    return {"type": "change", "store": c.store, "op": c.op, "path": [encode_bytes(p, encoding) for p in c.path],
            "key": encode_bytes(c.key, encoding), "value": None if c.value is None else encode_bytes(c.value, encoding),
            "what": c.what, "why": c.why.value, "subject": encode_bytes(c.subject, encoding), "stage": c.stage.value,
            "routine": c.routine}


def prediction_record(plan: StartPlan) -> dict:
    kinds = Counter((c.store, c.what, c.why.value) for c in plan.changes)
    return {"type": "prediction", "root": str(plan.root), "outcome": plan.outcome.value,
            "daemon_exit": plan.daemon_exit, "stage": plan.stage.value if plan.stage else None, "store": plan.store,
            "message": plan.message, "resets": plan.resets, "unreadable": plan.unreadable, "changes": len(plan.changes),
            "discards": len(plan.discards), "exit": plan.exit_class,
            "by_kind": [{"store": s, "what": w, "why": y, "count": n} for (s, w, y), n in sorted(kinds.items())]}


def note_record(n) -> dict:
    return {"type": "note", "kind": n.kind, "store": n.store, "message": n.message}


def headline(plan: StartPlan) -> str:
    text = OUTCOME_TEXT[plan.outcome].format(resets=", ".join(plan.resets))
    if plan.outcome in (Outcome.REFUSES, Outcome.CRASHES):
        text += f" at {plan.stage.value} ({plan.store}): {plan.message}"
    return text


def echo_plan(plan: StartPlan, *, listing: bool, limit: int = 20) -> None:
    """The outcome, the changes grouped by store and reason (every change with ``listing``), the notes."""
    click.echo(headline(plan) + ".")
    if not plan.starts and not plan.changes:
        click.echo("Nothing is written: every later start stops the same way until the store is repaired "
                   "(`boltkit buildkit fsck --repair`, or `buildkit repair`).")
    if plan.changes:
        kinds = Counter((c.store, c.op, c.what, c.why.value, "routine" if c.routine else "discards")
                        for c in plan.changes)
        click.echo("\nWhat the start changes:" if plan.starts else "\nWhat it commits before it stops:")
        emit_table([[s, op, w, y, r, n] for (s, op, w, y, r), n in sorted(kinds.items())],
                   ["store", "op", "what", "why", "", "count"])
    if listing and plan.changes:
        click.echo()
        emit_table([[c.store, c.op, show_path(c.path + (c.key,) if c.key else c.path)[:90], c.what, c.why.value]
                    for c in plan.changes], ["store", "op", "entry", "what", "why"])
    elif len(plan.changes) > 0:
        click.echo(f"\n{len(plan.changes)} change(s), {len(plan.discards)} of them discarding data"
                   + ("; --list shows every one." if len(plan.changes) else "."))
    for n in plan.notes:
        click.echo(f"note: {n.store + ': ' if n.store else ''}{n.message}")


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
    try:
        found = _root_or_exit(root)
    except click.ClickException as e:
        e.show()
        raise SystemExit(EXIT_UNREADABLE)
    if out is not None and os.path.exists(out):
        click.echo(f"Error: {out} already exists: -o writes a new directory", err=True)
        raise SystemExit(EXIT_UNREADABLE)
    try:
        config = StartConfig.load(config_path) if config_path else None
        plan = simulate(found.path, config=config)
    except BoltkitError as e:
        click.echo(f"Error: {e}", err=True)
        raise SystemExit(EXIT_UNREADABLE)
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
