"""Log sources: one signature, one registry, keyed by the config's ``type``.

A source is built from its config (:data:`SOURCES`, ``@SOURCES.register("file")``) and is
then read by its check, one batch per run::

    source = SOURCES[cfg.type](cfg, positions)     # a LogSource
    batch = await source.read(max_lines)          # a list of LogRecord (may be empty)
    ... count the batch ...
    await source.commit()                         # the position after the batch is saved

``read`` must not block the event loop (file I/O goes to a thread) and raises
:class:`LogSourceError` (a :class:`~exporter.core.errors.Failure`) with a bounded
reason when the source cannot be read now (``missing``, ``permission``, ``unavailable``,
``command``, ``timeout``, ``bind``, ``parse``); the check reports it and retries at its
next run.  Problems that do not stop reading (a line over the length limit, a truncated
file, lines dropped by a full buffer) are counted in :attr:`LogSource.errors` by reason
and exported as ``mail_log_read_errors_total``.  ``commit`` persists the position
(through :class:`~exporter.logs.position.PositionStore`) so that a restart continues
after the last line counted, never before or after it.  ``close`` releases files,
processes and sockets.
"""

from __future__ import annotations

__all__ = ["SOURCES", "LogSource", "LogSourceError", "SourceFactory"]

from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from exporter.core.errors import Failure
from exporter.core.registry import Registry
from exporter.logs.position import PositionStore
from exporter.logs.record import LogRecord


class LogSourceError(Failure):
    """A log source cannot be read now; ``reason`` is short and bounded."""


class LogSource(Protocol):
    #: Problems met while reading that did not stop it, by reason (cumulative).
    errors: Counter[str]

    async def read(self, max_lines: int) -> list[LogRecord]: ...

    async def commit(self) -> None: ...

    async def close(self) -> None: ...


SourceFactory = Callable[[Any, PositionStore], LogSource]

#: Log source factories by config ``type``: file, journal, syslog.
SOURCES: Registry[SourceFactory] = Registry("log source")
