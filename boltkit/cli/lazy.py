"""The top-level group's command table, filled when a command is first looked up: `boltkit check FILE` imports
the checker's command module only, not the BuildKit layer, the writer and salvage that other commands need (their
imports took longer than numpy's, on every run of every command).

A name maps to the modules whose decorators register it; looking the name up imports them. Anything that wants
the whole table (iterating it, `--help`, completion, an unknown name's "did you mean") imports every command
module first, so the table reads as if every module had been imported at start, and a command added to one of
the modules is found even before the map below names it.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:   # what `load` imports, for readers and the import-graph test
    from . import buildkit, check, gc, inspect, repair, startup  # noqa: F401

COMMAND_MODULES = ("buildkit", "check", "gc", "inspect", "repair", "startup")

# command name -> the modules that register it (a group: its own module and those adding subcommands to it)
MODULES_OF = {
    **{name: ("inspect",) for name in ("info", "pages", "page", "buckets", "keys", "get", "tree", "stats", "export")},
    "check": ("check",),
    "compact": ("repair",), "salvage": ("repair",), "surgery": ("repair",),
    "buildkit": ("buildkit", "gc", "startup"),
}


def load(modules=COMMAND_MODULES) -> None:
    """Import command modules (each registers its commands on the group as it is imported)."""
    for module in modules:
        importlib.import_module(f"{__package__}.{module}")


class LazyCommands(dict):
    """click's `Group.commands`: a name's lookup imports the modules registering it, a walk of the whole
    table imports them all."""

    def _one(self, name) -> None:
        if not dict.__contains__(self, name):
            load(MODULES_OF.get(name, COMMAND_MODULES))
            if not dict.__contains__(self, name):
                load()

    def get(self, name, default=None):
        self._one(name)
        return dict.get(self, name, default)

    def __getitem__(self, name):
        self._one(name)
        return dict.__getitem__(self, name)

    def __contains__(self, name) -> bool:
        self._one(name)
        return dict.__contains__(self, name)

    def __iter__(self) -> Iterator:
        load()
        return dict.__iter__(self)

    def __len__(self) -> int:
        load()
        return dict.__len__(self)

    def keys(self):
        load()
        return dict.keys(self)

    def values(self):
        load()
        return dict.values(self)

    def items(self):
        load()
        return dict.items(self)
