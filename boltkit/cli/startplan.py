"""The rendering of a start plan (buildkit/startup.py's StartPlan) that `buildkit simulate-start`, `buildkit fsck`
and `buildkit repair` share: its own module, so the command modules import it without importing each other."""
from __future__ import annotations

from collections import Counter

import click

from ..buildkit.startup import ROUTINE, Outcome, StartPlan
from .output import emit_table, encode_bytes, show_path

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
    kinds: Counter = Counter()
    for (store, _, what, why, _), n in plan.changes.counts().items():
        kinds[store, what, why.value] += n
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
        text += f" at {plan.stage.value if plan.stage else '?'} ({plan.store}): {plan.message}"
    return text


def echo_plan(plan: StartPlan, *, listing: bool, limit: int = 20) -> None:
    """The outcome, the changes grouped by store and reason (every change with ``listing``), the notes."""
    click.echo(headline(plan) + ".")
    if not plan.starts and not plan.changes:
        click.echo("Nothing is written: every later start stops the same way until the store is repaired "
                   "(`boltkit buildkit fsck --repair`, or `buildkit repair`).")
    if plan.changes:
        kinds: Counter = Counter()
        for (store, op, what, why, _), count in plan.changes.counts().items():
            kinds[store, op, what, why.value, "routine" if why in ROUTINE else "discards"] += count
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
