"""A sequence made of parts, in order: lists of records, and tables whose rows become records only when read.

A fleet-size store makes hundreds of thousands of problems (a check) or changes (a prune, a start's releases).
Built as objects up front they cost more than the work that found them; kept as tables they are counted without
building a row, and only what is listed or written is ever made. Problems, a prune's plan and a start's plan are
all such sequences; each adds how it is filled and counted.
"""
from __future__ import annotations

from collections.abc import Sequence


class Chained(Sequence):
    def __init__(self) -> None:
        self._parts: list = []

    def __len__(self) -> int:
        return sum(len(part) for part in self._parts)

    def __bool__(self) -> bool:
        return any(len(part) for part in self._parts)

    def __iter__(self):
        for part in self._parts:
            for i in range(len(part)):
                yield part[i]

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            return [self[i] for i in range(start, stop, step)]
        if index < 0:
            index += len(self)
        if index >= 0:
            for part in self._parts:
                if index < len(part):
                    return part[index]
                index -= len(part)
        raise IndexError(f"{type(self).__name__} index out of range")

    def __eq__(self, other) -> bool:
        if isinstance(other, (Chained, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None     # type: ignore[assignment]  # mutable, compared by value
