"""The page map as an SVG: one cell per page of the file, coloured by what it is, viewable in any browser.

Meant to be read, not hovered: every cell carries its page id when the file is small enough for ids to fit
(up to 4096 pages), every row starts with the id of its first page, the legend lists every kind with its
count and wraps instead of running off the picture, and the pages past the high-water mark (file space
bbolt has not used yet) are drawn too, so the picture is the whole file."""
from __future__ import annotations

from html import escape

COLOURS = {
    "meta": "#6a3d9a", "freelist": "#ff7f00", "branch": "#1f78b4", "leaf": "#33a02c", "overflow": "#b2df8a",
    "free": "#e6e6e6", "pending": "#fdbf6f", "leaked": "#fb9a99", "damaged": "#e31a1c", "beyond-eof": "#000000",
    "unused": "#ffffff",
}
MEANING = {
    "meta": "meta page", "freelist": "freelist", "branch": "branch", "leaf": "leaf",
    "overflow": "overflow of the page before",
    "free": "free", "pending": "pending (freed, older tree still uses it)", "leaked": "leaked (neither used nor free)",
    "damaged": "damaged", "beyond-eof": "past the end of the file (truncated)",
    "unused": "past the high-water mark (not used yet)",
}
DARK = {"meta", "branch", "leaf", "damaged", "beyond-eof", "freelist"}
CHAR_W = 7          # monospace advance at font-size 11, rounded up
IDS_UP_TO = 4096    # pages with their id written inside the cell


def render(infos, damaged: dict[int, str], title: str, file_pages: int | None = None) -> str:
    """``infos``: PageInfo list below the high-water mark; ``damaged``: page id -> the first problem naming it
    (red, and in the tooltip); ``file_pages``: pages the file holds, to draw those past the high-water mark."""
    # a row of the page map may stand for a run of alike pages (never written, or past the end of the file)
    cells = [(p.pgid, "damaged" if p.pgid in damaged else p.kind, p, getattr(p, "run", 1)) for p in infos]
    hwm = (infos[-1].pgid + getattr(infos[-1], "run", 1)) if infos else 0
    if file_pages is not None and file_pages > hwm:
        cells.append((hwm, "unused", None, file_pages - hwm))
    n = cells[-1][0] + cells[-1][3] if cells else 0
    if n <= IDS_UP_TO:     # small enough for one cell per page: runs drawn page by page
        cells = [(pgid + i, kind, p, 1) for pgid, kind, p, run in cells for i in range(run)]
    big = n <= IDS_UP_TO
    cell, per_row = (30, 32) if big else (10, 128)
    label_w = CHAR_W * len(str(max(n - 1, 0))) + 8
    grid_w = per_row * cell
    width = label_w + grid_w + 10
    rows = (n + per_row - 1) // per_row
    top = 40
    counts: dict[str, int] = {}
    for _, kind, _, run in cells:
        counts[kind] = counts.get(kind, 0) + run
    legend = _legend_layout([k for k in COLOURS if k in counts], counts, width - 10)
    legend_top = top + rows * cell + 20
    height = legend_top + 18 * len(legend) + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" '
           'font-size="11">', f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="5" y="16" font-size="13">{escape(title)}</text>',
           f'<text x="5" y="32">{hwm} pages used (high-water mark), {n - hwm} more in the file; '
           f'{per_row} pages a row</text>']
    for r in range(rows):
        if big or r % 4 == 0:
            out.append(f'<text x="{label_w - 4}" y="{top + r * cell + (cell / 2 + 3 if big else 9)}" text-anchor="end" '
                       f'font-size="{10 if big else 9}">{r * per_row}</text>')
    for pgid, kind, p, run in cells:
        if run > 1:     # at most three rectangles: the first row, the full rows, the last row
            tip = f"pages {pgid}-{pgid + run - 1}: {MEANING.get(kind, kind)}"
            out.extend(_run_rects(pgid, run, per_row, cell, label_w, top, COLOURS.get(kind, "#999999"), escape(tip)))
            continue
        x, y = label_w + (pgid % per_row) * cell, top + (pgid // per_row) * cell
        tip = f"page {pgid}: {MEANING.get(kind, kind)}"
        if p is not None and p.bucket:
            tip += " of bucket " + "/".join(b.decode("utf-8", "replace") for b in p.bucket)
        if pgid in damaged:
            tip += " - " + damaged[pgid]
        stroke = ' stroke="#999999"' if kind == "unused" else ""
        out.append(f'<g><title>{escape(tip)}</title><rect x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}" '
                   f'fill="{COLOURS.get(kind, "#999999")}"{stroke}/>')
        if big:
            colour = "#ffffff" if kind in DARK else "#000000"
            size = 10 if pgid < 1000 else 8
            out.append(f'<text x="{x + (cell - 1) / 2}" y="{y + cell / 2 + 3}" text-anchor="middle" '
                       f'font-size="{size}" fill="{colour}">{pgid}</text>')
        out.append("</g>")
    for i, line in enumerate(legend):
        y = legend_top + 18 * i + 10
        for x, kind in line:
            stroke = ' stroke="#999999"' if kind == "unused" else ""
            out.append(f'<rect x="{x}" y="{y - 10}" width="11" height="11" fill="{COLOURS[kind]}"{stroke}/>'
                       f'<text x="{x + 15}" y="{y}">{escape(_legend_text(kind, counts))}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _run_rects(first: int, run: int, per_row: int, cell: int, left: int, top: int, colour: str, tip: str):
    last = first + run - 1
    r0, r1 = first // per_row, last // per_row
    if r0 == r1:
        spans = [(r0, first % per_row, last % per_row + 1, 1)]
    else:
        spans = [(r0, first % per_row, per_row, 1)]
        if r1 - r0 > 1:
            spans.append((r0 + 1, 0, per_row, r1 - r0 - 1))
        spans.append((r1, 0, last % per_row + 1, 1))
    for row, c0, c1, nrows in spans:
        yield (f'<g><title>{tip}</title><rect x="{left + c0 * cell}" y="{top + row * cell}" '
               f'width="{(c1 - c0) * cell - 1}" height="{nrows * cell - 1}" fill="{colour}"/></g>')


def _legend_text(kind: str, counts: dict[str, int]) -> str:
    return f"{MEANING[kind]}: {counts[kind]}"


def _legend_layout(kinds, counts, width: int) -> list[list[tuple[int, str]]]:
    """Legend entries placed left to right, wrapping to a new line before one would cross ``width``."""
    lines: list[list[tuple[int, str]]] = [[]]
    x = 5
    for kind in kinds:
        w = 15 + CHAR_W * len(_legend_text(kind, counts)) + 14
        if lines[-1] and x + w > width:
            lines.append([])
            x = 5
        lines[-1].append((x, kind))
        x += w
    return lines
