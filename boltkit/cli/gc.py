"""`boltkit buildkit gc`: what BuildKit's next GC pass, or a `buildctl prune`, removes, and why the rest stays."""
from __future__ import annotations

import datetime
from collections import Counter

import click

from ..errors import BoltkitError
from .buildkit import _root_or_exit, buildkit
from .check import EXIT_UNREADABLE, FsckCommand
from .live import settled_reads
from .output import echo_wrapped, emit_json, emit_table, human_size, progress, quiet_option, show_bytes, wide_option

KEEP_TEXT = {
    "parent": "a kept record is built on it (it can go only after them)",
    "pair": "the immutable half of an equal-mutable pair: goes with its mutable half",
    "internal-or-frontend": "internal or frontend record: only --all / all = true rules take it",
    "keep-duration": "used within the rule's keep duration",
    "filter": "the rule's filters do not match it",
    "under-budget": "the cache is under what the rule keeps (reservedSpace / maxUsedSpace / minFreeSpace)",
    "no-rule": "no rule's filters match its type",
}


def _when(ns: int | None) -> str:
    if not ns:
        return "never"
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


def _megabytes(value: float | None) -> int:
    return int(value * 1e6) if value else 0


@buildkit.command("gc", cls=FsckCommand)
@click.argument("root", type=click.Path(readable=False))
@click.option("--config", "config_path", type=click.Path(readable=False), default=None,
              help="buildkitd.toml: the worker's gc switch, gcpolicy rules and reservedSpace / maxUsedSpace / "
                   "minFreeSpace (BuildKit's default policy for this disk otherwise).")
@click.option("--prune", "prune", is_flag=True,
              help="Simulate `buildctl prune` with the options below instead of the next automatic GC pass.")
@click.option("-f", "--filter", "filters", multiple=True,
              help="As buildctl prune --filter (implies --prune): type==regular, description~=apt, id==ID, "
                   "mutable, immutable; several: any one matches.")
@click.option("--keep-duration", default=None, help="As buildctl prune --keep-duration (implies --prune): 48h, 90m.")
@click.option("--keep-storage", type=float, default=None,
              help="As buildctl prune --keep-storage, in MB (implies --prune): keep the cache under this size.")
@click.option("--keep-storage-min", type=float, default=None,
              help="As buildctl prune --keep-storage-min, in MB (implies --prune): never go under this size.")
@click.option("--free-storage", type=float, default=None,
              help="As buildctl prune --free-storage, in MB (implies --prune): free the disk to this much.")
@click.option("--all", "prune_all", is_flag=True, help="As buildctl prune --all (implies --prune): internal and "
                                                       "frontend records too.")
@click.option("--at", "at", default=None, help="Replay at this time (RFC 3339, e.g. 2026-12-24T00:00:00Z) instead "
                                               "of now: what a GC pass will do then.")
@click.option("--list", "listing", is_flag=True, help="Every record that stays, not only the first ones.")
@click.option("--json", "as_json", is_flag=True,
              help="One gc-removed and one gc-kept record per record, then one gc-pass record per worker and pass.")
@wide_option
@quiet_option
@settled_reads(over="root")
def gc(root, config_path, prune, filters, keep_duration, keep_storage, keep_storage_min, free_storage, prune_all,
       at, listing, as_json):
    """What BuildKit's garbage collection removes from ROOT, record by record, and why every other record stays.

    Replays buildkitd's start, whose start-up GC pass runs the worker's policy (the config's gcpolicy
    rules, or BuildKit's default four computed from reservedSpace / maxUsedSpace / minFreeSpace or from
    this disk's size), rule by rule as cacheManager.prune does: a record goes only when nothing is built
    on it, internal and frontend records only under an `all` rule, a keep duration keeps what was used
    since, and under a byte budget the least recently and least often used go first until the cache is
    under what the rule keeps. With --prune (or any prune option), `buildctl prune` with those options is
    replayed on the started daemon instead. Removing a record's last child stamps the parent as used now,
    so a keep-duration prune keeps the parents of what it removes until the next one.

    Sizes are BuildKit's: recorded, or measured from the snapshots on disk; "?" where neither exists
    (counted as 0, as `buildctl du` does). Nothing under ROOT is written.

    \b
    Exit status: 0 the replay ran; 8 ROOT or one of its stores cannot be read (what is predicted is still
    printed), or the daemon would not start (no GC runs); 16 usage (a bad filter, duration or config).

    \b
    Examples:
      boltkit buildkit gc /var/lib/buildkit                                the next GC pass
      boltkit buildkit gc --config /etc/buildkit/buildkitd.toml /var/lib/buildkit
      boltkit buildkit gc --keep-duration 24h --filter type==regular /var/lib/buildkit
      boltkit buildkit gc --json /var/lib/buildkit | jq -r 'select(.type=="gc-kept") | .reason' | sort | uniq -c
    """
    from ..buildkit.gc import FilterError, Rule, parse_filter
    from ..buildkit.gotime import time_of
    from ..buildkit.startconfig import ConfigError, StartConfig, go_duration
    from ..buildkit.startup import Outcome, close_plan, simulate_start
    from .startplan import headline, note_record
    try:
        for f in filters:
            parse_filter(f)
        duration = go_duration(keep_duration) if keep_duration else datetime.timedelta(0)
    except (FilterError, ConfigError) as e:
        raise click.BadParameter(str(e)) from None
    now = None
    if at is not None:
        now = time_of(at)
        if now is None:
            raise click.BadParameter(f"{at!r} is not an RFC 3339 time", param_hint="--at")
    rule = None
    if prune or filters or keep_duration or keep_storage or keep_storage_min or free_storage or prune_all:
        rule = Rule(filters=tuple(filters), all=prune_all, keep_duration=duration,
                    reserved_space=_megabytes(keep_storage_min), max_used_space=_megabytes(keep_storage),
                    min_free_space=_megabytes(free_storage))
    try:
        found = _root_or_exit(root)
    except click.ClickException as e:
        e.show()
        raise SystemExit(EXIT_UNREADABLE) from None
    try:
        config = StartConfig.load(config_path) if config_path else StartConfig()
        with progress(f"replaying the start of {root}", as_json=as_json) as p:
            plan = simulate_start(found.path, config=config, now=now, prune=rule, progress=p)
    except (ConfigError, FilterError) as e:
        click.echo(f"Error: {e}", err=True)
        raise SystemExit(16) from None
    except BoltkitError as e:
        click.echo(f"Error: {e}", err=True)
        raise SystemExit(EXIT_UNREADABLE) from None
    from ..buildkit.fsck import daemon_holds_lock
    running = daemon_holds_lock(found)
    try:
        passes = [(stage, res) for stage, res in plan.gc if rule is None or stage.value == "prune"]
        if as_json:
            _emit_json(passes, plan)
            for n in plan.notes:
                emit_json(note_record(n))
        else:
            if plan.outcome not in (Outcome.STARTS, Outcome.RESETS):
                click.echo(headline(plan) + ": no GC runs.")
            elif not passes:
                click.echo("GC is off for every worker of this root (gc = false): nothing is removed.")
            if running:
                echo_wrapped("buildkitd is running on this root: the replay starts from the files as they are now; "
                             "records a running build holds are in use there and stay, which the files cannot show.")
            what = "`buildctl prune`" if rule is not None else "The next GC pass"
            for _stage, res in passes:
                _echo_pass(what, res, listing)
            for n in plan.notes:
                echo_wrapped(f"note: {n.store + ': ' if n.store else ''}{n.message}")
    finally:
        close_plan(plan)
    # a store this user cannot read leaves part of the pass unknown: unreadable input, as for simulate-start
    raise SystemExit(0 if plan.outcome in (Outcome.STARTS, Outcome.RESETS) and not plan.unreadable
                     else EXIT_UNREADABLE)


def _emit_json(passes, plan) -> None:
    for stage, res in passes:
        for r in res.removed:
            emit_json({"type": "gc-removed", "stage": stage.value, "worker": r.worker, "id": show_bytes(r.id),
                       "rule": r.rule, "size": r.size, "record_type": r.record_type, "mutable": r.mutable,
                       "last_used_ns": r.last_used, "usage_count": r.usage_count, "description": r.description,
                       "partner": show_bytes(r.partner) if r.partner is not None else None, "tie": r.tie})
        for k in res.kept:
            emit_json({"type": "gc-kept", "stage": stage.value, "worker": k.worker, "id": show_bytes(k.id),
                       "reason": k.reason.value, "per_rule": [v.value for v in k.per_rule], "size": k.size,
                       "counted": k.counted, "stamped": k.stamped,
                       "record_type": k.record_type, "holders": [show_bytes(h) for h in k.holders],
                       "last_used_ns": k.last_used, "description": k.description})
        emit_json({"type": "gc-pass", "stage": stage.value, "outcome": plan.outcome.value,
                   "rules": [r.as_dict() for r in res.rules], "removed": len(res.removed),
                   "reclaimed": res.reclaimed, "total_before": res.total_before, "total_after": res.total_after,
                   "unknown_sizes": res.unknown_sizes, "kept": len(res.kept)})


def _echo_pass(what: str, res, listing: bool, limit: int = 20) -> None:
    worker = res.kept[0].worker if res.kept else (res.removed[0].worker if res.removed else "")
    click.echo(f"Rules ({worker}):")
    for i, r in enumerate(res.rules, 1):
        echo_wrapped(f"  {i}. {r.describe()}", indent="     ")
    halves = sum(r.partner is not None for r in res.removed)
    click.echo()
    echo_wrapped(f"{what} removes {len(res.removed)} record(s)"
               + (f" (and the immutable halves of {halves} pair(s))" if halves else "")
               + f", {human_size(res.reclaimed)}; "
               f"{human_size(res.total_after)} stay of {human_size(res.total_before)}"
               + (f" ({res.unknown_sizes} size(s) unknown, counted as 0)" if res.unknown_sizes else "") + ".")
    if res.removed:
        click.echo()
        emit_table([[show_bytes(r.id), r.record_type, human_size(r.size), _when(r.last_used), r.rule + 1,
                     "tie" if r.tie else ""] for r in res.removed],
                   ["removed", "type", "size", "last used", "rule", ""])
    if not res.kept:
        return
    by = Counter(k.reason.value for k in res.kept)
    sizes: Counter[str] = Counter()
    for k in res.kept:
        sizes[k.reason.value] += k.size or 0 if k.counted else 0
    click.echo("\nWhy the rest stays:")
    emit_table([[reason, n, human_size(sizes[reason]), KEEP_TEXT[reason]] for reason, n in by.most_common()],
               ["reason", "records", "size", "meaning"], shrink=[3])
    rows = res.kept if listing else res.kept[:limit]
    click.echo()
    emit_table([[show_bytes(k.id), k.record_type, human_size(k.size) if k.counted else "(pair)", _when(k.last_used),
                 k.reason.value + (" (stamped now)" if k.stamped else ""),
                 " ".join(show_bytes(h) for h in k.holders[:2]) + (" …" if len(k.holders) > 2 else "")]
                for k in rows], ["stays", "type", "size", "last used", "why", "held by"], shrink=[5])
    if any(k.stamped for k in res.kept):
        echo_wrapped("(stamped now: its last child went in this pass, and BuildKit then records the parent as "
                     "used now; the next prune with a keep duration keeps it again)")
    if len(rows) < len(res.kept):
        click.echo(f"… {len(res.kept) - len(rows)} more; --list shows every one.")


__all__ = ["gc"]
