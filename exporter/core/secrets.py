"""Secret values that must never be printed.

A :class:`Secret` hides its value from ``str``/``repr``/formatting.  Every secret
loaded from a config is also registered here, and :func:`redact` (used by the log
formatter, the status page, error messages and debug transcripts) replaces any
registered value by ``<redacted>`` wherever it appears, as defence in depth.
"""

from __future__ import annotations

__all__ = ["REDACTED", "Secret", "redact", "register", "unregister"]

import threading

REDACTED = "<redacted>"

_lock = threading.Lock()
_known: set[str] = set()
_sorted: tuple[str, ...] = ()


def register(value: str) -> None:
    """Remember a secret value so that :func:`redact` can scrub it from any text."""
    global _sorted
    if len(value) < 3:  # too short to scrub without mangling ordinary text
        return
    with _lock:
        if value not in _known:
            _known.add(value)
            _sorted = tuple(sorted(_known, key=len, reverse=True))


def unregister(value: str) -> None:
    """Forget a secret that can no longer appear (a replaced access token): keeps the set bounded."""
    global _sorted
    with _lock:
        if value in _known:
            _known.discard(value)
            _sorted = tuple(sorted(_known, key=len, reverse=True))


def redact(text: str) -> str:
    """Replace every registered secret value in ``text``."""
    for value in _sorted:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


class Secret:
    """A string that does not show itself.  Call :meth:`reveal` where the value is needed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)
