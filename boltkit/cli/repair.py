"""Commands that write a new file: compact."""
from __future__ import annotations

import click

from ..repair import compact as compact_file
from .app import main
from .output import emit_json


@main.command()
@click.argument("src", type=click.Path())
@click.option("-o", "--output", "dst", required=True, type=click.Path(), help="The new file (must not exist).")
@click.option("--page-size", type=int, default=None, help="Page size of the new file (default: the source's).")
@click.option("--fill-percent", type=click.FloatRange(0.1, 1.0), default=1.0, show_default=True,
              help="How full to pack pages; 1.0 is densest (what `bbolt compact` does), 0.5 leaves room for writes.")
@click.option("--no-freelist", is_flag=True, help="Store no freelist (bbolt rebuilds it at open, as with NoFreelistSync).")
@click.option("--meta", type=click.IntRange(0, 1), default=None, help="Copy the tree of meta page 0 or 1.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def compact(src, dst, page_size, fill_percent, no_freelist, meta, as_json):
    """Copy every bucket, key, value and sequence of SRC into a fresh, dense file.

    BuildKit's stores never shrink after a prune; this gives the space back. SRC is only read. The
    new file is written beside it, fsynced, and left for you to move into place while buildkitd is
    stopped. A damaged SRC is refused: use `boltkit salvage` for that.
    """
    bar = None
    progress = None
    if not as_json and click.get_text_stream("stderr").isatty():
        bar = click.progressbar(length=1, label="compacting", file=click.get_text_stream("stderr"))

        def progress(page, bar=bar):
            bar.length = max(bar.length, page + 1)
            bar.update(max(page - bar.pos, 0))
    try:
        result = compact_file(src, dst, page_size=page_size, fill_percent=fill_percent, freelist=not no_freelist,
                              meta=meta, progress=progress)
    except FileExistsError as e:
        raise click.ClickException(str(e))
    except ValueError as e:
        raise click.ClickException(str(e))
    finally:
        if bar is not None:
            bar.render_finish()
    if as_json:
        emit_json({"src": src, "dst": dst, "src_size": result.src_size, "dst_size": result.dst_size,
                   "gain": round(result.gain, 4), "buckets": result.buckets, "pairs": result.pairs})
    else:
        click.echo(f"{result.src_size} -> {result.dst_size} bytes (gain={result.gain:.2f}x)")
