"""The package's import graph, read from the source (ast), counting imports inside functions too: no cycle, and
no layer imports a higher one (DESIGN §2). A function-level import hides a cycle from Python's import machinery
but not from a reader, and the next refactor that hoists it turns it into an ImportError."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "boltkit"

# what each layer may import besides itself and the shared top-level modules (errors, textform, chained); DESIGN
# §2, with buildkit's prunes writing their pruned store through `write`
MAY_IMPORT = {
    "schemas": set(),
    "storage": {"schemas"},
    "check": {"schemas", "storage"},
    "write": {"schemas"},
    "repair": {"schemas", "storage", "check", "write"},
    "buildkit": {"schemas", "storage", "check", "write", "repair"},
    "boltkit": {"schemas", "storage", "check", "write", "repair", "buildkit"},      # the public face (__init__)
    "cli": {"schemas", "storage", "check", "write", "repair", "buildkit", "boltkit"},
}
SHARED = {"boltkit.errors", "boltkit.textform", "boltkit.chained"}   # importable from every layer; they import
#                                                                      nothing of boltkit


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its body (``from x import name`` counts as an import
    of x.name when that is a module, else of x)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for a in node.names:
                    targets.add(f"{source}.{a.name}" if f"{source}.{a.name}" in mods else source)
        graph[name] = {t for t in targets if t in mods and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def layer(module: str) -> str | None:
    """The layer a module belongs to; "boltkit" for the package's public face (its __init__), which sits on top
    of every library layer."""
    parts = module.split(".")
    if parts == ["boltkit"]:
        return "boltkit"
    return parts[1] if len(parts) > 1 and parts[1] in MAY_IMPORT else None


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    # cli/buildkit.py imports the fsck model only inside its commands: the graph must still see it
    assert "boltkit.buildkit.fsck" in graph["boltkit.cli.buildkit"]
    assert "boltkit.storage.meta" in graph["boltkit.storage.database"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_even_inside_functions():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_layer_imports_a_higher_one():
    wrong = []
    for module, targets in import_graph().items():
        here = layer(module)
        if here is None:
            continue
        for t in targets:
            there = layer(t)
            if t in SHARED or there == here:
                continue
            if there is None or there not in MAY_IMPORT[here]:
                wrong.append(f"{module} -> {t}")
    assert not wrong, "imports against the layers: " + ", ".join(sorted(wrong))


def test_each_layer_registers_its_own_problem_codes():
    """check/problems.py lists the structural codes only; BuildKit's come from boltkit/buildkit/codes.py, and a code
    registered again with another meaning is refused."""
    import re

    import pytest

    from boltkit.buildkit.codes import CODES
    from boltkit.check.problems import CATALOGUE, Severity, register
    listed = set(re.findall(r'^    "([A-Z]+\d+)":', (PACKAGE / "check" / "problems.py").read_text(), re.M))
    assert listed and all(c.startswith("B") for c in listed)
    assert {c[0] for c in CODES} == set("CDMHX") and set(CODES) <= set(CATALOGUE)
    register({"C9": CATALOGUE["C9"]})           # the same meaning again is harmless
    with pytest.raises(ValueError, match="C9"):
        register({"C9": (Severity.INFO, "something else")})


def _modules_a_run_imports(*args: str) -> set[str]:
    """The boltkit modules one command run imports, in a fresh interpreter running the worktree's code."""
    import subprocess
    import sys
    code = ("import sys\nfrom boltkit.cli import main\n"
            "try:\n    main(sys.argv[1:], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "print(' '.join(m for m in sys.modules if m.startswith('boltkit')), file=sys.stderr)")
    run = subprocess.run([sys.executable, "-c", code, *args], cwd=PACKAGE.parent, capture_output=True, text=True,
                         env={"PYTHONPATH": str(PACKAGE.parent), "PATH": "/usr/bin:/bin"}, timeout=120)
    return set(run.stderr.split("\n")[-2].split())


def test_a_structural_command_imports_only_its_layers(tmp_path):
    """`boltkit check` and `export --count` load neither the BuildKit layer nor the writer nor salvage (their
    imports cost more than numpy's on every run); `compact` loads the writer but not the BuildKit layer."""
    from .conftest import EXAMPLE
    for args in (["check", str(EXAMPLE)], ["export", "--count", str(EXAMPLE)]):
        loaded = _modules_a_run_imports(*args)
        assert "boltkit.check.scan" in loaded, args                  # the command did run
        assert not {m for m in loaded if m.split(".")[1:2] in (["buildkit"], ["write"], ["repair"])}, args
    loaded = _modules_a_run_imports("compact", str(EXAMPLE), "-o", str(tmp_path / "out.db"))
    assert (tmp_path / "out.db").exists() and "boltkit.write.writer" in loaded
    assert not {m for m in loaded if m.startswith("boltkit.buildkit")}


def test_the_lazy_command_table_is_the_whole_table():
    """Every command a module registers is found under its name, and the map of names to modules is right (a
    name mapped to the wrong module would import every command module: correct, but slow)."""
    from boltkit.cli import main
    from boltkit.cli.lazy import COMMAND_MODULES, MODULES_OF
    names = sorted(main.commands)
    assert names == sorted(MODULES_OF) and len(main.commands) == len(MODULES_OF)
    for name, cmd in main.commands.items():
        assert cmd.callback.__module__.rsplit(".", 1)[1] == MODULES_OF[name][0], name
    assert set(COMMAND_MODULES) == {m for mods in MODULES_OF.values() for m in mods}
    assert "no-such-command" not in main.commands


def test_the_public_names_resolve_on_first_use():
    """`boltkit`'s BuildKit and repair names are imported when first used; `boltkit.check` stays the function
    (the subpackage of that name is imported before it is defined)."""
    import boltkit
    import boltkit.check.checker  # noqa: F401
    assert callable(boltkit.check) and boltkit.check.__module__ == "boltkit"
    assert set(boltkit.__all__) <= set(dir(boltkit))
    for name in boltkit.__all__:
        assert getattr(boltkit, name) is not None, name
    assert boltkit.CacheStore.__module__ == "boltkit.buildkit.cachedb"
    import pytest
    with pytest.raises(AttributeError):
        boltkit.no_such_name  # noqa: B018
