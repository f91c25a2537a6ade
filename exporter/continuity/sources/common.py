"""What every backup and replica source shares: the error, the parsers, running a program."""

from __future__ import annotations

__all__ = [
    "FUTURE_SLACK",
    "OUTPUT_LIMIT",
    "SourceError",
    "check_sane",
    "parse_lag",
    "parse_timestamp",
    "run_command",
]

import re

from exporter.core.command import CommandFailed, run_for_value
from exporter.core.errors import Failure
from exporter.core.timefmt import parse_time, seconds

#: How far in the future a backup time may be before it is rejected (clock skew allowance).
FUTURE_SLACK = 300.0
#: Bytes of a command's output (or a timestamp file) considered.
OUTPUT_LIMIT = 4096

_NUMBER_RE = re.compile(r"^[0-9]+(\.[0-9]+)?$")


class SourceError(Failure, RuntimeError):
    """A backup or replica source could not be read.  ``reason`` is short and bounded."""


# --- parsing --------------------------------------------------------------------------------------


def parse_timestamp(text: str, what: str) -> float:
    """A Unix time (seconds, optionally fractional) or an RFC 3339 time.  Raises SourceError."""
    word = text.strip()
    if _NUMBER_RE.match(word):
        return float(word)
    try:
        ns = parse_time(word)
    except ValueError:
        ns = None
    if ns is None:
        shown = word[:60] or "nothing"
        raise SourceError("parse", f"{what}: expected a Unix time or an RFC 3339 time, got {shown!r}")
    return seconds(ns)


def parse_lag(text: str, what: str) -> float:
    word = text.strip()
    try:
        value = float(word)
    except ValueError:
        value = -1.0
    if not _NUMBER_RE.match(word) or value < 0:
        raise SourceError("parse", f"{what}: expected a lag in seconds (a number >= 0), got {word[:60]!r}")
    return value


def check_sane(ts: float, now: float, what: str) -> float:
    if ts > now + FUTURE_SLACK:
        raise SourceError("invalid", f"{what}: time {ts:.0f} is {ts - now:.0f}s in the future")
    return ts


#: How the reasons of a failed command map onto the sources' reasons.
_COMMAND_REASONS = {"not_found": "command", "permission": "command", "exit": "command", "too_long": "parse"}


async def run_command(argv: tuple[str, ...], timeout: float) -> str:
    """Run a program (no shell), return its stdout; kill it at ``timeout``.  Raises SourceError."""
    try:
        out = await run_for_value(argv, OUTPUT_LIMIT, timeout=timeout)
    except CommandFailed as exc:
        raise SourceError(_COMMAND_REASONS.get(exc.reason, exc.reason), exc.message) from None
    return out.decode("utf-8", "replace")
