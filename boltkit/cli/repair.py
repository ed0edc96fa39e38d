"""Commands that write a new file: compact, salvage (also in place), surgery."""
from __future__ import annotations


import click

from ..repair import compact as compact_file
from .app import EXIT_DAMAGE, destinations, main
from .output import emit_json, human_size, progress, quiet_option


_snapshot = click.option("--snapshot", is_flag=True,
                         help="SRC is held by a writer (buildkitd running): work from a consistent copy of it "
                              "(without this, such a SRC is refused with exit 8).")


class _Fill(click.FloatRange):
    """A float range that also refuses NaN (which every comparison lets through)."""

    def convert(self, value, param, ctx):
        v = super().convert(value, param, ctx)
        if v != v:
            self.fail("NaN is not a fill percent", param, ctx)
        return v


@main.command()
@click.argument("src", type=click.Path(readable=False))
@click.option("-o", "--output", "dst", required=True, type=click.Path(readable=False),
              help="The new file (must not exist).")
@click.option("--page-size", type=click.Choice([str(1 << n) for n in range(10, 17)]), default=None,
              callback=lambda ctx, param, v: None if v is None else int(v),
              help="Page size of the new file, a power of two from 1024 to 65536 (default: the source's).")
@click.option("--fill-percent", type=_Fill(0.1, 1.0), default=1.0, show_default=True,
              help="How full to pack pages; 1.0 is densest (what `bbolt compact` does), 0.5 leaves room for writes.")
@click.option("--no-freelist", is_flag=True,
              help="Store no freelist (bbolt rebuilds it at open, as with NoFreelistSync).")
@click.option("--meta", type=click.IntRange(0, 1), default=None, help="Copy the tree of meta page 0 or 1.")
@_snapshot
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@quiet_option
def compact(src, dst, page_size, fill_percent, no_freelist, meta, snapshot, as_json):
    """Copy every bucket, key, value and sequence of SRC into a fresh, dense file.

    BuildKit's stores never shrink after a prune; this gives the space back. SRC is only read. The
    new file is written beside it, fsynced, and left for you to move into place while buildkitd is
    stopped. A damaged SRC is refused: use `boltkit salvage` for that.
    """
    destinations(dst)
    with progress(f"compacting {src}", as_json=as_json) as p:
        result = compact_file(src, dst, page_size=page_size, fill_percent=fill_percent,
                              freelist=not no_freelist, meta=meta, progress=p, snapshot=snapshot)
    if as_json:
        emit_json({"type": "compact", "src": src, "dst": dst, "src_size": result.src_size, "dst_size": result.dst_size,
                   "saved": result.saved, "mode": f"{result.mode:04o}", "buckets": result.buckets,
                   "pairs": result.pairs})
    else:
        share = 100.0 * result.saved / result.src_size if result.src_size else 0.0
        change = (f"{human_size(result.saved)} smaller ({share:.1f}% given back)" if result.saved >= 0 else
                  f"{human_size(-result.saved)} larger")
        click.echo(f"{src} ({human_size(result.src_size)}) -> {dst} ({human_size(result.dst_size)}): {change}; "
                   f"{result.buckets} buckets, {result.pairs} pairs, mode {result.mode:04o} like the source")


@main.command()
@click.argument("src", type=click.Path(readable=False))
@click.option("-o", "--output", "dst", type=click.Path(readable=False), default=None,
              help="The new file (must not exist).")
@click.option("--in-place", is_flag=True,
              help="Replace SRC with what is recovered: written beside it and verified first, SRC kept as "
                   "SRC.boltkit-<UTC>.bak; refused (exit 8) while a process such as buildkitd holds SRC.")
@click.option("--report", "report_path", type=click.Path(readable=False), default=None,
              help="Where to write the JSON report (default: OUTPUT.report.json, or beside the backup).")
@click.option("--no-lost-found", is_flag=True, help="Do not scan for leaf pages no tree reaches.")
@click.option("--include-freed", is_flag=True,
              help="Also take every pair of freed pages (older versions of keys); by default a freed page gives "
                   "only keys the recovered tree lacks, and lost+found is scanned only when the tree is damaged.")
@_snapshot
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@quiet_option
def salvage(src, dst, in_place, report_path, no_lost_found, include_freed, snapshot, as_json):
    """Recover everything recoverable from a damaged SRC into a new, valid file.

    Takes every intact part of the current tree; where it is damaged, what the previous transaction's
    tree still holds; and (unless --no-lost-found) the pairs of leaf pages no tree reaches, under
    lost+found/page-<id> (suffix -free when the page was on the freelist, i.e. older data: only keys the
    recovered tree lacks, unless --include-freed). A sound SRC salvages to the same content, with no
    lost+found. Nothing is invented: every pair is copied from an element in SRC. SRC is only read, unless
    --in-place. A JSON report lists what came from where and what could not be read.

    Never a file with less: when the result would hold fewer pairs than a tolerant read of SRC gives, or
    nothing at all from a damaged SRC, salvage stops with exit 8 and writes (and swaps) nothing.

    \b
    A torn BuildKit store, start to finish (buildkitd stopped):
      boltkit salvage --in-place /var/lib/buildkit/cache.db
      boltkit buildkit repair --apply --prune /var/lib/buildkit
      boltkit buildkit fsck /var/lib/buildkit && systemctl start buildkit
    or all three at once: boltkit buildkit fsck --repair /var/lib/buildkit
    """
    from ..repair.salvage import WARNING, salvage as salvage_file, salvage_in_place
    if (dst is None) == (not in_place):
        raise click.UsageError("give either -o OUTPUT or --in-place")
    if in_place and snapshot:
        raise click.UsageError("--snapshot reads a copy of a file a writer holds; --in-place needs the writer gone")
    destinations(dst)      # before the salvage pass: a bad path costs nothing and leaves nothing behind
    destinations(report_path, replace=True)
    with progress(f"salvaging {src}", as_json=as_json) as p:
        if in_place:
            result, done = salvage_in_place(src, lost_found=not no_lost_found, include_freed=include_freed,
                                            report_path=report_path, progress=p)
            backup = done.backup if done else None
        else:
            result, backup = salvage_file(src, dst, lost_found=not no_lost_found, include_freed=include_freed,
                                          snapshot=snapshot, report=report_path or True, progress=p), None
    report_path = result.report_path
    if as_json:
        emit_json(dict(type="salvage", **result.report()))
    else:
        total = sum(result.pairs.values())
        click.echo(f"{src} -> {src if backup else result.dst}: {total} pairs in {result.buckets} buckets "
                   f"({', '.join(f'{n} from {s}' for s, n in result.pairs.items()) or 'nothing readable'})")
        click.echo(f"damaged parts skipped: {len(result.damage)}; orphan leaf pages recovered: "
                   f"{len(result.orphan_pages)}; new file checks {'clean' if result.clean else 'NOT clean'}")
        if backup:
            click.echo(f"the original is kept as {backup}")
        click.echo(f"report: {report_path}")
        click.echo(f"warning: {WARNING}", err=True)
    if not result.clean:
        raise SystemExit(EXIT_DAMAGE)


@main.group()
def surgery():
    """Exact edits of a copy of a bbolt file (always to -o OUT; the source is only read).

    Each edit is checked afterwards and refused, with the reason, when it would leave a file bbolt
    cannot open or use.
    """


def _surgery(fn, src, dst, snapshot, *args):
    """Run one edit; its outcome is printed and recorded in DST.report.json beside the edited copy. A source a
    writer holds is refused (exit 8) unless --snapshot: then the edit starts from a consistent copy."""
    from ..repair.preflight import readable_source
    from ..repair.replace import check_report_path, write_report
    destinations(dst)
    destinations(dst + ".report.json", replace=True)
    check_report_path(dst + ".report.json")
    with readable_source(src, snapshot) as path:
        message = fn(path, dst, *args)
    write_report(dst + ".report.json", {"operation": fn.__name__, "src": src, "dst": dst,
                                        "arguments": list(args), "snapshot": snapshot, "result": message})
    click.echo(message)


def _out(f):
    f = _snapshot(f)
    return click.option("-o", "--output", "dst", required=True, type=click.Path(readable=False),
                        help="The edited copy (must not exist).")(f)


@surgery.command("revert-meta")
@click.argument("src", type=click.Path(readable=False))
@_out
def revert_meta(src, dst, snapshot):
    """Make the older meta current: the last transaction is undone (its data was not written, say)."""
    from ..repair.surgery import revert_meta as fn
    _surgery(fn, src, dst, snapshot)


@surgery.command("freelist")
@click.argument("action", type=click.Choice(["abandon", "rebuild"]))
@click.argument("src", type=click.Path(readable=False))
@_out
def freelist(action, src, dst, snapshot):
    """abandon: store no freelist (bbolt rebuilds it at the next read-write open); rebuild: write a new one
    from the pages the tree does not use."""
    from ..repair.surgery import freelist_abandon, freelist_rebuild
    _surgery(freelist_abandon if action == "abandon" else freelist_rebuild, src, dst, snapshot)


@surgery.command("drop-element")
@click.argument("src", type=click.Path(readable=False))
@_out
@click.option("--page", "pgid", type=int, required=True, help="The branch or leaf page.")
@click.option("--index", type=int, required=True, help="The element to drop (0-based).")
def drop_element(src, dst, pgid, index, snapshot):
    """Drop one element from a page (a broken child pointer, a bad key); orphaned pages are freed."""
    from ..repair.surgery import drop_element as fn
    _surgery(fn, src, dst, snapshot, pgid, index)


@surgery.command("clear-page")
@click.argument("src", type=click.Path(readable=False))
@_out
@click.option("--page", "pgid", type=int, required=True, help="The leaf page to empty.")
def clear_page(src, dst, pgid, snapshot):
    """Empty a leaf page (refused for branches: an empty branch crashes bbolt)."""
    from ..repair.surgery import clear_page as fn
    _surgery(fn, src, dst, snapshot, pgid)
