"""One small registry type for every extension point: check kinds, ``/probe`` modules,
queue readers, backup and replica sources.

Each extension module registers its entry with a decorator at import time::

    READERS: Registry[QueueReader] = Registry("queue reader")

    @READERS.register("exim")
    async def read_exim(ctx: ReadContext[EximQueue]) -> QueueStats: ...

A name registered twice is a programming error (``ValueError``).  Entries come out in
``order``, then by name, so that what is built from them does not depend on import order.
"""

from __future__ import annotations

__all__ = ["Registry"]

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")
F = TypeVar("F")


class Registry(Generic[T]):
    """Named entries of one kind, registered by decorator; read like a mapping."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, tuple[int, T]] = {}

    def register(self, name: str, *, order: int = 0) -> Callable[[F], F]:
        """Decorator: register the decorated object as the entry ``name``; returns it unchanged."""

        def add(entry: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} registered twice")
            self._entries[name] = (order, cast(T, entry))
            return entry

        return add

    def __getitem__(self, name: str) -> T:
        return self._entries[name][1]

    def __setitem__(self, name: str, entry: T) -> None:
        """Replace (or add) an entry, keeping its order: for tests (``monkeypatch.setitem``)."""
        order = self._entries[name][0] if name in self._entries else 0
        self._entries[name] = (order, entry)

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def get(self, name: str, default: T | None = None) -> T | None:
        found = self._entries.get(name)
        return default if found is None else found[1]

    def __contains__(self, name: Any) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return [name for name, _ in self.items()]

    def keys(self) -> list[str]:
        return self.names()

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` in ``order``, then by name."""
        ranked = sorted(self._entries.items(), key=lambda kv: (kv[1][0], kv[0]))
        return [(name, entry) for name, (_, entry) in ranked]

    def values(self) -> list[T]:
        return [entry for _, entry in self.items()]
