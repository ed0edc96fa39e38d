"""What a person sees on an 80-column terminal: tables that fit (and --wide), the tree's nesting, du's columns
and totals, graph's risk line, steps and views, the page map, and the notes on what a root command skipped."""
from __future__ import annotations

import json
import re
import shutil
import struct

import pytest
from click.testing import CliRunner

from boltkit.cli import main
from testdata.buildkit import write_store

from .conftest import CORPUS

ROOT = CORPUS / "daemon1-overlayfs" / "04-after-253-builds-sigkill-mid-build"
SMALL_ROOT = CORPUS / "daemon1-overlayfs" / "01-after-30-builds"


def run(*args, columns: int | None = 80, exit_codes=(0,)):
    env = {"COLUMNS": str(columns)} if columns else {"COLUMNS": ""}
    r = CliRunner().invoke(main, [str(a) for a in args], env=env)
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert r.exit_code in exit_codes, (r.exit_code, r.output[-2000:])
    return r


def widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


@pytest.mark.parametrize("args", [
    ["buildkit", "du", ROOT], ["buildkit", "ls", ROOT], ["buildkit", "graph", ROOT / "cache.db"],
    ["buildkit", "history", ROOT / "history.db"], ["tree", ROOT / "runc-overlayfs" / "metadata_v2.db"],
    ["pages", ROOT / "history.db"], ["buckets", ROOT / "cache.db", "_result"],
])
def test_tables_fit_80_columns_and_wide_prints_cells_whole(args):
    narrow = run(*args).stdout
    assert widest(narrow) <= 80, [line for line in narrow.splitlines() if len(line) > 80][:3]
    wide = (run(args[0], "--wide", *args[1:]) if args[0] != "buildkit" else run(*args[:2], "--wide", *args[2:])).stdout
    assert len(wide) >= len(narrow)
    if "…" in narrow:
        assert "…" not in wide and widest(wide) > 80


def test_piped_output_is_never_cut():
    """No terminal and no COLUMNS: a pipe or a file gets every cell whole."""
    r = run("buildkit", "du", ROOT, columns=None)
    assert "…" not in r.stdout and widest(r.stdout) > 80


def test_tree_shows_nesting():
    r = run("tree", SMALL_ROOT / "runc-overlayfs" / "containerdmeta.db", columns=200)
    names = [re.match(r" *\S+", line).group(0) for line in r.stdout.splitlines()[2:]]
    depth = [len(n) - len(n.lstrip(" ")) for n in names]
    assert names[0] == "v1" and depth[0] == 0
    assert names[1].strip() == "buildkit" and depth[1] == 2            # v1/buildkit, one level in
    assert max(depth) >= 8                                             # containerd nests five levels and more
    for a, b in zip(depth, depth[1:]):
        assert b <= a + 2                                              # a child is one level below its parent


def test_du_columns_human_sizes_and_totals():
    r = run("buildkit", "du", ROOT, columns=200)
    header = r.stdout.splitlines()[0].split()
    assert header == ["id", "size", "reclaimable", "mutable", "last", "used", "description"]   # shared: all "no"
    first = r.stdout.splitlines()[2]
    assert re.search(r"\s\d+(\.\d+)?(B|KiB|MiB|GiB)\s", first)          # human sizes, not raw bytes
    # 596 records, less 80 pair halves listed through their mutable half and 1 the next start removes
    assert "Reclaimable:  41.4MiB" in r.stdout and "Total:        41.4MiB in 515 record(s)" in r.stdout
    recs = [json.loads(x) for x in run("buildkit", "du", "--json", ROOT).stdout.splitlines()]
    rows, totals = recs[:-1], recs[-1]
    assert totals["total"] == sum(x["size"] or 0 for x in rows) == totals["reclaimable"]    # buildkitd not running
    assert totals["shared"] == 0 and totals["private"] == totals["total"]
    assert {x["mutable"] for x in rows} == {True, False}
    # active snapshots whose directories this partial copy lacks (317 before pairs were folded)
    assert totals["unknown_sizes"] == sum(x["size"] is None for x in rows) == 236


def test_du_takes_a_size_from_the_equal_mutable_partner_and_knows_what_a_running_daemon_hides():
    from boltkit.buildkit.du import totals, usage
    from boltkit.buildkit.metadata import MetadataStore, Record
    store = MetadataStore(records={
        b"imm": Record(b"imm", {"cache.equalMutable": "mut", "snapshot.committed": True}),
        b"mut": Record(b"mut", {"snapshot.size": 4096}),
        b"alone": Record(b"alone", {"snapshot.committed": True}),
    })
    rows = {r.id: r for r in usage(store)}
    assert rows[b"imm"].size == 4096 and rows[b"alone"].size is None         # BuildKit's DiskUsage does the same
    assert (rows[b"imm"].mutable, rows[b"mut"].mutable) == (False, True)
    assert totals(list(rows.values())).reclaimable == 8192
    running = usage(store, daemon_running=True, docker=True)
    t = totals(running)
    assert t.reclaimable is None and t.shared is None and t.total == 8192


def test_du_in_a_docker_data_root_says_shared_is_unknown(tmp_path):
    docker = docker_root(tmp_path)
    r = run("buildkit", "du", "--json", docker)
    totals = json.loads(r.stdout.splitlines()[-1])
    assert totals["shared"] is None and totals["private"] is None
    assert "is a Docker data root" in r.stderr


def docker_root(tmp_path):
    """/var/lib/docker as Docker lays it out: buildkit/ holding the stores flat, Docker's own bolt files beside."""
    docker = tmp_path / "docker"
    (docker / "buildkit").mkdir(parents=True)
    for name in ("cache.db", "history.db"):
        shutil.copy(SMALL_ROOT / name, docker / "buildkit" / name)
    for name in ("metadata_v2.db", "containerdmeta.db", "workerid"):
        shutil.copy(SMALL_ROOT / "runc-overlayfs" / name, docker / "buildkit" / name)
    for rel in ("network/files/local-kv.db", "volumes/metadata.db"):
        (docker / rel).parent.mkdir(parents=True)
        shutil.copy(SMALL_ROOT / "history.db", docker / rel)
    (docker / "overlay2" / "l").mkdir(parents=True)
    return docker


def test_fsck_of_a_docker_data_root_checks_buildkit_and_says_what_it_skipped(tmp_path):
    docker = docker_root(tmp_path)
    r = run("buildkit", "fsck", "--json", docker, exit_codes=(0, 4))
    stores = {x["store"] for x in map(json.loads, r.stdout.splitlines()) if x["type"] == "summary"}
    assert stores == {"cache.db", "history.db", "metadata_v2.db", "containerdmeta.db"}
    assert f"{docker} is a Docker data root" in r.stderr
    assert "skipped 2 file(s) that are not BuildKit stores: network/files/local-kv.db, volumes/metadata.db" \
        in r.stderr


def test_buildkit_check_of_an_empty_store_agrees_with_ls(tmp_path):
    worker = tmp_path / "runc-overlayfs"
    worker.mkdir()
    write_store(worker / "metadata_v2.db", {})
    listed = run("buildkit", "ls", "--json", tmp_path).stdout.splitlines()
    kinds = {x["store"]: x["kind"] for x in map(json.loads, listed)}
    assert kinds == {"runc-overlayfs/metadata_v2.db": "metadata_v2.db"}
    r = run("buildkit", "check", worker / "metadata_v2.db")
    assert "unknown store" not in r.output and ": OK (" in r.stdout


def test_key_not_found_prints_binary_as_hex():
    r = CliRunner().invoke(main, ["get", "--hex", str(SMALL_ROOT / "history.db"), b"_records".hex(), "00ff01"])
    assert r.exit_code != 0            # which code: the exit-code table's (tests/test_exit_codes.py)
    assert "key not found: 0x00ff01 in _records" in r.output and "\x00" not in r.output


def test_graph_risk_line_states_count_threshold_and_reason():
    r = run("buildkit", "graph", ROOT / "cache.db", columns=400)
    line = next(x for x in r.stdout.splitlines() if x.startswith("export risk:"))
    assert line.startswith("export risk: low: 57,789 root-to-key paths in all (high from 1,000,000")
    assert "pre-v0.25" in line and "walks every path once" in line


def test_graph_names_build_steps_and_shows_a_key_neighbourhood():
    r = run("buildkit", "graph", "--top", "1", ROOT / "cache.db", columns=200)
    assert "[tools 1/2] COPY busybox /bin/busybox" in r.stdout           # the key 159 keys link to
    r = run("buildkit", "graph", "--json", "--key", "ba7p00qp7q1hw0ig1wpizouom", ROOT / "cache.db")
    rec = json.loads(r.stdout)
    assert rec["step"] == "[stage-2 2/2] COPY --from=build /w/SHA256SUMS /"
    assert len(rec["parents"]) == 4 and rec["targets"] == [] and len(rec["results"]) == 1
    assert any(p["step"] == "[stage-2 1/2] COPY --from=build /w/out /out" for p in rec["parents"])
    assert run("buildkit", "graph", "--key", "nope", ROOT / "cache.db", exit_codes=(1, 8)).output.strip() \
        .endswith("nope: no such key in " + str(ROOT / "cache.db") + "'s link graph")


@pytest.mark.parametrize("view,most", [("steps", 200), ("condensed", 800)])
def test_graph_views_are_picture_sized(tmp_path, view, most):
    dot = tmp_path / "g.dot"
    run("buildkit", "graph", "--view", view, "--dot", dot, ROOT / "cache.db")
    boxes = [x for x in dot.read_text().splitlines() if "label=" in x]
    assert 0 < len(boxes) <= most            # of 1022 keys
    assert any(" keys (" in b for b in boxes)
    full = tmp_path / "full.dot"
    run("buildkit", "graph", "--view", "full", "--dot", full, ROOT / "cache.db")
    assert sum("label=" in x for x in full.read_text().splitlines()) == 1022


def test_graph_renders_png_and_svg_when_graphviz_is_there(tmp_path):
    if shutil.which("dot") is None:
        pytest.skip("Graphviz is optional: .ci/run installs it")
    png, svg = tmp_path / "k.png", tmp_path / "k.svg"
    run("buildkit", "graph", "--key", "ba7p00qp7q1hw0ig1wpizouom", "--png", png, "--svg", svg, ROOT / "cache.db")
    head = png.read_bytes()[:24]
    width, height = struct.unpack(">II", head[16:24])
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and width < 3000 and height < 3000    # one key: readable at 100 %
    import html
    assert "COPY --from=build" in html.unescape(svg.read_text())


def test_page_map_has_ids_a_full_legend_and_the_pages_past_the_high_water_mark(tmp_path):
    svg = tmp_path / "m.svg"
    path = CORPUS / "torn-copies" / "daemon1-cache-slowcopy-during-build-376.db"
    run("check", "--map", svg, path, exit_codes=(4,))
    text = svg.read_text()
    width = int(re.search(r'<svg [^>]*width="(\d+)"', text).group(1))
    cells = re.findall(r'<rect x="(\d+)" y="\d+" width="29" height="29" fill="([^"]+)"', text)
    assert len(cells) == 512                                   # the whole 2 MiB file, not only the 406 used pages
    assert sum(fill == "#ffffff" for _, fill in cells) == 106  # past the high-water mark
    ids = re.findall(r'text-anchor="middle" font-size="\d+" fill="[^"]+">(\d+)</text>', text)
    assert sorted(map(int, ids)) == list(range(512))
    legend = re.findall(r'<text x="(\d+)" y="\d+">([a-z][^<]*: \d+)</text>', text)
    assert {t.split(":")[0] for _, t in legend} >= {"meta page", "free", "leaked (neither used nor free)",
                                                    "damaged", "past the high-water mark (not used yet)"}
    assert all(int(x) + 7 * len(t) <= width for x, t in legend)   # nothing runs off the picture


def test_compact_summary_reads_sensibly(tmp_path):
    src = SMALL_ROOT / "cache.db"
    r = run("compact", src, "-o", tmp_path / "c.db")
    assert "gain" not in r.output and re.search(r"\(512KiB\) -> .*\(\d+KiB\): \d+KiB smaller \(\d+\.\d% given back\)",
                                               r.output)
