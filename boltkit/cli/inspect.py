"""Reading commands: info, pages, page, buckets, keys, get, tree, stats, export."""
from __future__ import annotations

import sys
from typing import Any

import click

from ..check import count_tree
from ..errors import CorruptionError
from ..schemas import PageFlag
from ..storage.describe import describe_page
from ..storage.pagemap import page_map
from ..storage.stats import gather_stats
from .app import EXIT_UNREADABLE, DamageSkipped, destinations, main, opened, output_file
from .live import settled_reads
from .values import SMALL, plain_pieces, write_json_value, write_raw_value, write_text_value
from .output import (ENCODINGS, emit_json, emit_table, encode_bytes, encode_path, hex_option, json_option,
                     output_options, parse_name, progress, quiet_option, read_options, show_bytes, show_path)

file_argument = click.argument("file", type=click.Path(readable=False))
encoding_option = click.option("--encoding", "-e", type=click.Choice(ENCODINGS), default="auto", show_default=True,
                               help="How keys, values and bucket names appear in JSON: auto = text when printable "
                                    "UTF-8, else {\"hex\": ...}.")


def report_damage(errors: list, what: str = "output") -> None:
    """Damage met by a tolerant read: one line each on stderr, then fail so scripts notice."""
    if not errors:
        return
    for e in errors[:50]:
        click.echo(f"damage: {e}", err=True)
    if len(errors) > 50:
        click.echo(f"damage: ... and {len(errors) - 50} more", err=True)
    raise DamageSkipped(f"{len(errors)} damaged part(s) skipped; the {what} holds everything intact. "
                               "Run `boltkit check` for a full diagnosis.")


@main.command()
@file_argument
@read_options
@output_options
@settled_reads
def info(file, meta, snapshot, as_json, table_fmt):
    """Both meta pages, which one is current and why, sizes and the freelist.

    The current meta is the valid one with the higher txid, as bbolt chooses; boltkit also refuses
    a meta whose root or freelist lies beyond its high-water mark or the end of the file.
    """
    with opened(file, meta, snapshot) as db:
        fl_info, fl_error = None, None
        try:
            fl = db.freelist()
            if fl is not None:
                fl_info = {"page": fl.pgid, "overflow": fl.overflow, "ids": int(len(fl.ids))}
        except CorruptionError as e:
            fl_error = str(e)
        used = db.hwm * db.page_size
        result = {
            "type": "info", "file": file, "file_size": db.source.size, "page_size": db.page_size, "hwm": db.hwm,
            "used_size": used, "txid": db.meta.txid, "current_meta": db.meta.index, "reason": db.choice.reason,
            "root": db.meta.root, "freelist": fl_info if db.meta.has_freelist else "not stored (NoFreelistSync)",
            "freelist_error": fl_error,
            "metas": [m.as_dict() if m else None for m in db.metas],
        }
        if as_json:
            emit_json(result)
            return
        click.echo(f"file:         {file}")
        click.echo(f"file size:    {db.source.size} bytes ({db.source.size // db.page_size} pages)")
        click.echo(f"page size:    {db.page_size}")
        click.echo(f"high-water:   {db.hwm} pages = {used} bytes used "
                   f"({100.0 * used / db.source.size:.1f}% of the file)")
        click.echo(f"current meta: {db.meta.index}: {db.choice.reason}")
        click.echo(f"txid:         {db.meta.txid}")
        click.echo(f"root page:    {db.meta.root}")
        if not db.meta.has_freelist:
            click.echo("freelist:     not stored (rebuilt by bbolt at open)")
        elif fl_info:
            click.echo(f"freelist:     page {fl_info['page']} (+{fl_info['overflow']} overflow), "
                       f"{fl_info['ids']} free or pending pages")
        else:
            click.echo(f"freelist:     unreadable: {fl_error}")
        rows = []
        for i, m in enumerate(db.metas):
            if m is None:
                rows.append([i, "missing", "", "", "", "", "", ""])
                continue
            state = "ok" if m.usable else "; ".join(m.errors + m.soft + m.faults)
            rows.append([i, m.txid, m.root, "-" if not m.has_freelist else m.freelist, m.pgid,
                         m.page_size, f"{m.checksum:016x}", state])
        click.echo()
        emit_table(rows, ["meta", "txid", "root", "freelist", "hwm", "page size", "checksum", "state"], table_fmt,
                   shrink=[7])


@main.command()
@file_argument
@read_options
@click.option("--map", "map_path", type=click.Path(readable=False), default=None,
              help="Also draw the pages as an SVG, one coloured cell per page (open it in a browser).")
@encoding_option
@output_options
@settled_reads
def pages(file, meta, snapshot, map_path, encoding, as_json, table_fmt):
    """Every page below the high-water mark: type, items, overflow, owning bucket, free or pending.

    Types: meta, freelist, branch, leaf, overflow (continuation of the page in OF), free, pending
    (free, but the previous meta's tree still uses it), leaked (neither reachable nor free),
    beyond-eof (below the high-water mark, past the end of the file). Consecutive never-written
    (all-zero) pages, pages past the end, and the overflow pages of one page are one row, `A-B` (in
    JSON: "run": the page count).

    \b
    Examples:
      boltkit pages cache.db                       the table
      boltkit pages --map pages.svg cache.db       and the whole file as a picture (ids, legend)
      boltkit pages --json cache.db | jq -c 'select(.page_type == "leaked")'
    """
    destinations(map_path, replace=True)
    with opened(file, meta, snapshot) as db:
        infos, errors = page_map(db)
        if map_path:
            from .pagemap_svg import render
            with output_file(map_path) as f:
                f.write(render(infos, {e.pgid: str(e) for e in errors if e.pgid is not None},
                               f"{file}: {len(infos)} pages", db.file_size // db.page_size))
        rows = []
        for p in infos:
            if as_json:
                rec = {"type": "page", "id": p.pgid, "page_type": p.kind, "items": p.items, "overflow": p.overflow,
                       "path": None if p.bucket is None else encode_path(p.bucket, encoding), "of": p.of}
                if p.run > 1:       # pages id .. id+run-1, all alike (never written, or past the end)
                    rec["run"] = p.run
                emit_json(rec)
            else:
                rows.append([p.pgid if p.run == 1 else f"{p.pgid}-{p.pgid + p.run - 1}", p.kind,
                             "" if p.items is None else p.items, p.overflow or "",
                             "" if p.bucket is None else show_path(p.bucket), "" if p.of is None else p.of])
        if not as_json:
            emit_table(rows, ["id", "type", "items", "overflow", "bucket", "of"], table_fmt, shrink=[4])
        report_damage(errors, "listing")


@main.command()
@file_argument
@click.argument("page_ids", nargs=-1, type=int, required=True)
@read_options
@click.option("--hex", "hexdump", is_flag=True, help="Hex dump of the page's bytes (with its overflow span).")
@json_option
@settled_reads
def page(file, page_ids, meta, snapshot, hexdump, as_json):
    """Decode pages by id: header, then elements (meta fields, branch children, leaf pairs, freelist ids).

    Works on damaged pages too: the header is shown as stored and elements are decoded as far as
    their bounds allow.
    """
    missing = 0
    with opened(file, meta, snapshot) as db:
        for n, pgid in enumerate(page_ids):
            try:
                rec = page_record(db, pgid)
            except CorruptionError as e:
                rec = {"type": "page", "id": pgid, "error": str(e)}
                missing += 1
            lines = rec.pop("lines", [])
            if as_json:
                if hexdump and "error" not in rec:
                    rec["hex"] = bytes(db.data[rec["offset"]:rec["offset"] + rec["size"]]).hex()
                emit_json(rec)
                continue
            if n:
                click.echo("=" * 60)
            if "error" in rec:
                click.echo(f"Error: page {pgid}: {rec['error']}", err=True)
                continue
            click.echo(f"page {pgid}: {rec['page_type']}, {rec['items']} item(s), overflow {rec['overflow']}, "
                       f"header id {rec['header_id']}, offset {rec['offset']}, {rec['size']} bytes")
            for line in lines:
                click.echo("  " + line)
            if rec.get("element_error"):
                click.echo(f"  damage: {rec['element_error']}")
            if hexdump:
                _hexdump(db.data[rec["offset"]:rec["offset"] + rec["size"]], rec["offset"])
    if missing:     # a page that is not in the file is an answer the file cannot give
        raise SystemExit(EXIT_UNREADABLE)


def page_record(db, pgid: int) -> dict:
    """describe_page's view as a `page` record (docs/json.md) plus its text lines under "lines"."""
    v = describe_page(db, pgid)
    rec: dict[str, Any] = {"type": "page", "id": v.pgid, "header_id": v.header_id,
                           "page_type": PageFlag.name_of(v.flags), "flags": v.flags, "items": v.count,
                           "overflow": v.overflow, "offset": v.offset, "size": v.size}
    lines: list[str] = []
    if v.meta is not None:
        rec["meta"] = v.meta.as_dict()
        lines += [f"{k}: {val}" for k, val in rec["meta"].items()]
    if v.freelist is not None:
        rec["ids"] = v.freelist
        lines.append(f"{len(v.freelist)} ids: " + " ".join(map(str, v.freelist[:200]))
                     + (" ..." if len(v.freelist) > 200 else ""))
    if v.flags == PageFlag.BRANCH:
        rec["elements"] = [{"index": i, "key": encode_bytes(k, "auto"), "child": c}
                           for i, (k, c) in enumerate(v.branch)]
        lines += [f"[{i}] {show_bytes(k, 80)} -> page {c}" for i, (k, c) in enumerate(v.branch)]
    if v.flags == PageFlag.LEAF:
        rec["elements"] = []
        for i, e in enumerate(v.leaf):
            el = {"index": i, "flags": e.flags, "key": encode_bytes(e.key, "auto")}
            if e.bucket is not None:
                root, seq, items = e.bucket
                el["bucket"] = {"root": root, "sequence": seq, "inline": root == 0, "inline_items": items}
                desc = f"bucket root={root} seq={seq}" + (" (inline)" if root == 0 else "")
            else:
                el["value"] = encode_bytes(e.value, "auto")
                desc = show_bytes(e.value, 60)
            rec["elements"].append(el)
            lines.append(f"[{i}] {show_bytes(e.key, 60)} = {desc}")
    if v.error:
        rec["element_error"] = v.error
    rec["lines"] = lines
    return rec


def _hexdump(buf, base: int) -> None:
    prev = None
    starred = False
    for i in range(0, len(buf), 16):
        chunk = bytes(buf[i:i + 16])
        if chunk == prev and i + 16 < len(buf):
            if not starred:
                click.echo("*")
                starred = True
            continue
        starred = False
        prev = chunk
        text = "".join(chr(c) if 32 <= c < 127 else "." for c in chunk)
        click.echo(f"{base + i:08x}  {chunk[:8].hex(' '):<23}  {chunk[8:].hex(' '):<23}  |{text}|")


def bucket_path_argument(f):
    return click.argument("path", nargs=-1)(f)


@main.command()
@file_argument
@bucket_path_argument
@read_options
@hex_option
@encoding_option
@output_options
@settled_reads
def buckets(file, path, meta, snapshot, as_hex, encoding, as_json, table_fmt):
    """Buckets directly under PATH (top-level buckets when no PATH is given), with their key counts.

    \b
    Examples:
      boltkit buckets cache.db                     _backlinks, _byresult, _links, _result
      boltkit buckets cache.db _result             one bucket per cache key
    """
    from ..storage.stats import child_counts
    with opened(file, meta, snapshot) as db:
        names = [parse_name(p, as_hex) for p in path]
        rows = []
        errors: list = []
        for c in child_counts(db, names, errors):
            child, keys, subs = c.bucket, c.keys, c.buckets
            rec = {"type": "bucket", "path": encode_path(child.path, encoding), "keys": keys, "buckets": subs,
                   "inline": child.inline, "root": child.root, "sequence": child.sequence}
            if as_json:
                emit_json(rec)
            else:
                rows.append([show_bytes(child.path[-1]), keys, subs, "inline" if child.inline else f"page {child.root}",
                             child.sequence])
        if not as_json:
            emit_table(rows, ["bucket", "keys", "buckets", "root", "sequence"], table_fmt, shrink=[0])
        report_damage(errors, "list")


@main.command()
@file_argument
@click.argument("path", nargs=-1, required=True)
@read_options
@hex_option
@encoding_option
@json_option
@settled_reads
def keys(file, path, meta, snapshot, as_hex, encoding, as_json):
    """Keys of the bucket at PATH, one per line (sub-bucket names end with /).

    \b
    Examples:
      boltkit keys history.db _records
      boltkit keys --hex cache.db 5f726573756c74   the bucket name given in hex
    """
    with opened(file, meta, snapshot) as db:
        names = tuple(parse_name(p, as_hex) for p in path)
        errors: list = []
        for item in db.items(names, damage=errors):
            if as_json:
                emit_json({"type": "key", "path": encode_path(names, encoding), "key": encode_bytes(item.key, encoding),
                           "bucket": item.is_bucket})
            else:
                text = item.key.hex() if encoding == "hex" else show_bytes(item.key)
                click.echo(text + ("/" if item.is_bucket else ""))
        report_damage(errors, "list")


@main.command()
@file_argument
@click.argument("path_and_key", nargs=-1, required=True, metavar="PATH... KEY")
@read_options
@hex_option
@click.option("--encoding", "-e", type=click.Choice(ENCODINGS + ("raw",)), default="auto", show_default=True,
              help="raw writes the value's bytes unchanged to stdout.")
@json_option
@settled_reads
def get(file, path_and_key, meta, snapshot, as_hex, encoding, as_json):
    """The value of KEY in the bucket at PATH.

    \b
    Examples:
      boltkit get metadata_v2.db _main <record id> cache.description
      boltkit get -e raw history.db _records <ref> > record.pb      the bytes as stored
      boltkit get --json -e hex history.db _version version          path, key and value in hex
    """
    if len(path_and_key) < 2:
        raise click.UsageError("give a bucket path and a key: boltkit get FILE BUCKET [SUBBUCKET...] KEY")
    names = [parse_name(p, as_hex) for p in path_and_key]
    with opened(file, meta, snapshot) as db:
        item = db.item(names[:-1], names[-1])
        data, start, end, release = db.data, item.value_start, item.value_end, db.source.release
        out = sys.stdout
        if as_json:
            enc = "hex" if encoding == "raw" else encoding
            out.write('{"type":"pair","path":[%s],"key":%s,"value":'
                      % (",".join(_encoder(enc)(x) for x in names[:-1]), _encoder(enc)(names[-1])))
            write_json_value(out.write, data, start, end, enc, release)
            out.write("}\n")
        elif encoding == "raw":
            out.flush()
            write_raw_value(out.buffer.write, data, start, end, release)
        elif encoding == "auto":
            write_text_value(out.write, data, start, end, release)
            out.write("\n")
        else:
            for text in plain_pieces(data, start, end, encoding, release):
                out.write(text)
            out.write("\n")
        out.flush()


@main.command()
@file_argument
@read_options
@click.option("--max-depth", type=int, default=None, help="Show buckets down to this nesting level only.")
@encoding_option
@output_options
@settled_reads
def tree(file, meta, snapshot, max_depth, encoding, as_json, table_fmt):
    """Nested buckets with their key counts, inline or paged; each level indented under its parent.

    \b
    Examples:
      boltkit tree --max-depth 3 containerdmeta.db
      boltkit tree --wide cache.db                 names whole, however wide the terminal
    """
    from ..storage.stats import bucket_counts
    with opened(file, meta, snapshot) as db:
        errors: list = []
        rows = []
        for c in bucket_counts(db, errors):
            p, k, sub, b = c.bucket.path, c.keys, c.buckets, c.bucket
            if max_depth is not None and len(p) > max_depth:
                continue
            if as_json:
                emit_json({"type": "bucket", "path": encode_path(p, encoding), "keys": k, "buckets": sub,
                           "inline": b.inline, "root": b.root, "sequence": b.sequence})
            else:
                rows.append(["  " * (len(p) - 1) + show_bytes(p[-1]), k, sub,
                             "inline" if b.inline else f"page {b.root}"])
        if not as_json:
            emit_table(rows, ["bucket", "keys", "buckets", "root"], table_fmt, shrink=[0])
        report_damage(errors, "tree")


@main.command()
@file_argument
@read_options
@encoding_option
@output_options
@settled_reads
def stats(file, meta, snapshot, encoding, as_json, table_fmt):
    """Page counts, fill ratios, depth, inline vs paged buckets (like `bbolt stats`), per top-level bucket.

    The numbers mean what bbolt's BucketStats mean: keys counts sub-bucket entries too, and a bucket's
    depth adds its deepest sub-bucket's depth to its own levels.
    """
    with opened(file, meta, snapshot) as db:
        st = gather_stats(db)
        if as_json:
            emit_json(dict(type="stats", path=[], **st.total.as_dict()))
            for k, v in st.by_top_bucket.items():
                emit_json(dict(type="stats", path=encode_path([k], encoding), **v.as_dict()))
        else:
            t = st.total

            def pct(a, b):
                return f"{100.0 * a / b:.0f}%" if b else "-"
            click.echo("Page count statistics")
            click.echo(f"\tNumber of logical branch pages: {t.branch_pages}")
            click.echo(f"\tNumber of physical branch overflow pages: {t.branch_overflow}")
            click.echo(f"\tNumber of logical leaf pages: {t.leaf_pages}")
            click.echo(f"\tNumber of physical leaf overflow pages: {t.leaf_overflow}")
            click.echo("Tree statistics")
            click.echo(f"\tNumber of keys/value pairs: {t.keys}")
            click.echo(f"\tNumber of levels in B+tree: {t.depth}")
            click.echo("Page size utilization")
            click.echo(f"\tBytes allocated for physical branch pages: {t.branch_alloc}")
            click.echo(f"\tBytes actually used for branch data: {t.branch_inuse} "
                       f"({pct(t.branch_inuse, t.branch_alloc)})")
            click.echo(f"\tBytes allocated for physical leaf pages: {t.leaf_alloc}")
            click.echo(f"\tBytes actually used for leaf data: {t.leaf_inuse} ({pct(t.leaf_inuse, t.leaf_alloc)})")
            click.echo("Bucket statistics")
            click.echo(f"\tTotal number of buckets: {t.buckets}")
            click.echo(f"\tTotal number on inlined buckets: {t.inline_buckets} ({pct(t.inline_buckets, t.buckets)})")
            click.echo(f"\tBytes used for inlined buckets: {t.inline_inuse} ({pct(t.inline_inuse, t.leaf_inuse)})")
            click.echo()
            rows = [[show_bytes(k), s.keys, s.buckets, s.inline_buckets, s.branch_pages, s.leaf_pages,
                     s.leaf_overflow, s.depth, pct(s.leaf_inuse, s.leaf_alloc)]
                    for k, s in st.by_top_bucket.items()]
            emit_table(rows, ["bucket", "keys", "buckets", "inline", "branch", "leaf", "overflow", "depth",
                              "leaf fill"], table_fmt, shrink=[0])
        report_damage(st.errors, "statistics")


@main.command()
@file_argument
@bucket_path_argument
@read_options
@hex_option
@encoding_option
@click.option("--count", "count_only", is_flag=True,
              help="Only count buckets, pairs and key+value bytes of the whole file (a fast bulk traversal).")
@settled_reads
@quiet_option
def export(file, path, meta, snapshot, as_hex, encoding, count_only):
    """Every bucket and pair under PATH (everything by default) as JSON lines, in bbolt cursor order.

    \b
    {"type":"bucket","path":[...],"sequence":N}      a bucket, before its contents
    {"type":"pair","path":[...],"key":K,"value":V}    a key/value pair of the bucket at path

    The same records as `buckets --json` and `get --json` (docs/json.md).

    On a damaged file every intact part is exported; damaged subtrees are listed on stderr and the
    exit status is 1.
    """
    with opened(file, meta, snapshot) as db:
        start = db.bucket([parse_name(p, as_hex) for p in path])
        errors: list = []
        if count_only:
            if path:
                raise click.UsageError("--count counts the whole file; drop the bucket path")
            with progress(f"counting {file}") as p:
                counts = count_tree(db, progress=p)
            errors.extend(p.line() for p in counts.damage)
            emit_json({"type": "count", "buckets": counts.buckets, "pairs": counts.pairs, "bytes": counts.bytes})
        else:
            write = sys.stdout.write
            enc = _encoder(encoding)
            paths: dict = {}
            with progress(f"exporting {file}", stdout_busy=True) as p:
                on_page = None
                if p is not None:
                    seen, total = [0], db.pager.limit_pages

                    def on_page(bucket, node, depth, elems):
                        seen[0] += 1
                        if not seen[0] & 255:
                            p(seen[0], total)
                _export(db, start, enc, encoding, write, paths, errors, on_page)
            sys.stdout.flush()
        report_damage(errors, "export")


def _export(db, start, enc, encoding, write, paths: dict, errors: list, on_page) -> None:
    """Every bucket and pair under ``start`` as JSON lines (the body of `export`)."""
    data = db.data
    for parent, child, item in db.tree.walk(start, on_damage=errors.append, on_page=on_page):
        if child is None:
            p = paths.get(parent.path)
            if p is None:
                p = paths[parent.path] = ",".join(enc(x) for x in parent.path)
            vs, ve = item.value_start, item.value_end
            if ve - vs > SMALL:       # streamed: a huge value costs a chunk, not copies of itself
                write('{"type":"pair","path":[%s],"key":%s,"value":' % (p, enc(item.key)))
                write_json_value(write, data, vs, ve, encoding, db.source.release)
                write("}\n")
            else:
                write('{"type":"pair","path":[%s],"key":%s,"value":%s}\n'
                      % (p, enc(item.key), enc(data[vs:ve])))
        else:
            write('{"type":"bucket","path":[%s],"sequence":%d}\n'
                  % (",".join(enc(x) for x in child.path), child.sequence))


def _encoder(encoding: str):
    import json
    if encoding == "hex":
        return lambda b: '"' + b.hex() + '"'
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    return lambda b: dumps(encode_bytes(b, encoding))
