"""The page map as an SVG: one cell per page, coloured by what it is, viewable in any browser."""
from __future__ import annotations

from html import escape

COLOURS = {
    "meta": "#6a3d9a", "freelist": "#ff7f00", "branch": "#1f78b4", "leaf": "#33a02c", "overflow": "#b2df8a",
    "free": "#e6e6e6", "pending": "#fdbf6f", "leaked": "#fb9a99", "damaged": "#e31a1c", "beyond-eof": "#000000",
}


def render(infos, damaged: dict[int, str], title: str, cell: int = 10, per_row: int = 64) -> str:
    """``infos``: PageInfo list; ``damaged``: page id -> the first problem naming it (shown as the tooltip)."""
    n = (infos[-1].pgid + getattr(infos[-1], "run", 1)) if infos else 0
    rows = (n + per_row - 1) // per_row
    legend_h = 24
    width, height = per_row * cell + 2, rows * cell + legend_h + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" '
           'font-size="11">', f'<text x="1" y="12">{escape(title)}</text>']
    for p in infos:
        kind = "damaged" if p.pgid in damaged else p.kind
        x, y = 1 + (p.pgid % per_row) * cell, 18 + (p.pgid // per_row) * cell
        tip = f"page {p.pgid}: {kind}"
        if p.bucket:
            tip += " " + "/".join(b.decode("utf-8", "replace") for b in p.bucket)
        if p.pgid in damaged:
            tip += " - " + damaged[p.pgid]
        run = getattr(p, "run", 1)
        if run > 1:     # a run of alike pages: at most three rectangles (first row, full rows, last row)
            tip = f"pages {p.pgid}-{p.pgid + run - 1}: {kind}"
            out.extend(_run_rects(p.pgid, run, per_row, cell, COLOURS.get(kind, "#999999"), escape(tip)))
            continue
        out.append(f'<rect x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}" '
                   f'fill="{COLOURS.get(kind, "#999999")}"><title>{escape(tip)}</title></rect>')
    x, y = 1, 18 + rows * cell + 16
    for kind, colour in COLOURS.items():
        out.append(f'<rect x="{x}" y="{y - 9}" width="9" height="9" fill="{colour}"/>'
                   f'<text x="{x + 12}" y="{y}">{kind}</text>')
        x += 12 + 7 * len(kind) + 10
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _run_rects(first: int, run: int, per_row: int, cell: int, colour: str, tip: str):
    last = first + run - 1
    spans = []
    r0, r1 = first // per_row, last // per_row
    if r0 == r1:
        spans.append((r0, first % per_row, last % per_row + 1, 1))
    else:
        spans.append((r0, first % per_row, per_row, 1))
        if r1 - r0 > 1:
            spans.append((r0 + 1, 0, per_row, r1 - r0 - 1))
        spans.append((r1, 0, last % per_row + 1, 1))
    for row, c0, c1, nrows in spans:
        yield (f'<rect x="{1 + c0 * cell}" y="{18 + row * cell}" width="{(c1 - c0) * cell - 1}" '
               f'height="{nrows * cell - 1}" fill="{colour}"><title>{tip}</title></rect>')
