"""The generated CLI reference matches the commands; the README's quick start names real commands."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_cli_reference_is_current():
    spec = importlib.util.spec_from_file_location("gen", ROOT / "docs" / "generate_cli_reference.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (ROOT / "docs" / "cli.md").read_text() == gen.render(), \
        "docs/cli.md is stale: run python3 docs/generate_cli_reference.py"
