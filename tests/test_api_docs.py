"""The public API (`import boltkit`): every example of docs/api.md runs on the shared corpus as written, and every
public name is documented there, exists and says why it is there."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import boltkit

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "api.md").read_text()
EXAMPLES = re.findall(r"```python\n(.*?)```", DOC, re.S)


def test_the_doc_has_examples():
    assert len(EXAMPLES) >= 8


@pytest.mark.parametrize("n", range(len(EXAMPLES)))
def test_example_runs_on_the_corpus(n, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(ROOT)                     # the examples name ../shared/corpus, as from a checkout
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    exec(compile(EXAMPLES[n], f"docs/api.md example {n + 1}", "exec"), {"__name__": "__example__"})
    assert capsys.readouterr().out, "an example shows what it found"


def test_every_public_name_exists_is_documented_and_has_a_docstring():
    assert "__version__" in boltkit.__all__
    for name in boltkit.__all__:
        obj = getattr(boltkit, name)
        if name == "__version__":
            continue
        assert re.search(rf"`(boltkit\.)?{re.escape(name)}\b", DOC), f"{name} is not in docs/api.md"
        if inspect.isfunction(obj) or name in ("Database", "BuildKitRoot", "BoltkitError"):
            assert (obj.__doc__ or "").strip(), f"boltkit.{name} has no docstring"
    assert (Path(boltkit.__file__).parent / "py.typed").is_file()


def test_the_face_is_the_library_not_a_copy():
    """Thin names: the objects a script gets are the ones the commands use."""
    from boltkit.buildkit.startup import StartPlan
    from boltkit.storage import Database
    assert boltkit.Database is Database and boltkit.StartPlan is StartPlan
    with boltkit.open(ROOT / "examples" / "cache.db") as db:
        assert isinstance(db, Database)
        assert [b.path for b in db.buckets()] == [(b"_backlinks",), (b"_byresult",), (b"_links",), (b"_result",)]
