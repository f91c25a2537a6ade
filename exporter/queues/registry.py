"""The queue readers' one signature and their registry, keyed by a source's ``type``.

A reader is an ``async`` function of a :class:`ReadContext` that returns the
:class:`~exporter.queues.stats.QueueStats` of one read, or raises
:class:`~exporter.queues.stats.QueueReadError` (``TimeoutError`` and ``OSError`` are
turned into failures too).  :func:`exporter.queues.read_queue` looks the reader up
in :data:`READERS` by ``cfg.type``, runs it under the source's timeout and emits the
result; a reader never writes metrics itself.

**Adding a queue reader.**  Write a config dataclass with a ``type: Literal["mine"]``
field and add it to the ``QueueConfig`` union of :mod:`exporter.config` (the
schema), then one module in ``exporter/queues/`` that registers its entry point, and
import that module in ``exporter/queues/__init__.py`` so that it registers::

    from exporter.config import MyQueue
    from exporter.queues.registry import ReadContext, register
    from exporter.queues.stats import QueueReadError, QueueStats

    @register("mine")
    async def read_mine(ctx: ReadContext[MyQueue]) -> QueueStats:
        stats = QueueStats((ctx.cfg.queue,))
        ...  # stats.add(...) per message; raise QueueReadError("parse", "...") on bad data
        return stats

Blocking work goes to a thread (``asyncio.to_thread``) that stops by itself at
``ctx.deadline``; state kept between reads goes in ``ctx.cache``.  A reader that
picks among sub-readers (Postfix's ``reader: auto``) names the one in use in
``ctx.progress.reader``, which defaults to the ``type``.
"""

from __future__ import annotations

__all__ = ["READERS", "Progress", "QueueReader", "ReadContext", "Reader", "register"]

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from exporter.core.registry import Registry
from exporter.queues.stats import QueueCache, QueueStats

C = TypeVar("C")


@dataclass(slots=True)
class Progress:
    """Which reader a read is using (``mail_queue_reader_info``), known even when it fails half-way."""

    reader: str


@dataclass(frozen=True, slots=True)
class ReadContext(Generic[C]):
    """Everything one read of one source gets.

    ``cfg`` is the source's config (the dataclass its ``type`` selects); ``cache`` the
    :class:`~exporter.queues.stats.QueueCache` kept between reads of the source, or
    ``None`` (every read starts cold); ``deadline`` the ``time.monotonic()`` by which
    the read must end, for work in threads that a cancellation cannot stop.
    """

    cfg: C
    log: logging.Logger
    cache: QueueCache | None
    deadline: float
    progress: Progress


#: A reader of sources whose config is a ``C``.
Reader = Callable[[ReadContext[C]], Awaitable[QueueStats]]

#: The one reader signature, whatever the config.
QueueReader = Reader[Any]

#: Reader of each queue ``type``; filled by :func:`register` when the reader modules are imported.
READERS: Registry[QueueReader] = Registry("queue reader")


def register(type_: str) -> Callable[[Reader[C]], Reader[C]]:
    """Decorator: make the function the reader of sources whose ``type`` is ``type_``."""
    return READERS.register(type_)
