"""A full garbage collection once a minute, so that cyclic garbage cannot pile up for hours.

In Python 3.11 every closed asyncio socket transport stays in a reference cycle: it keeps
``_read_ready_cb``, a bound method of itself (cpython#100348, fixed for 3.12).  Only the
cyclic collector frees it, with its socket object and ``__dict__``.  ``cli.py`` freezes the
start-up heap and raises the collector's thresholds to ``(20_000, 50, 100)``, to keep
young-generation pauses out of ``/metrics``.  Under load, a young collection then runs
about every 30 s.  Connections in flight at that moment are promoted, and once closed they
wait for generation 1 (about every 25 minutes) or generation 2 (hours).  Meanwhile they
hold pymalloc arenas, and RSS rises.  In the soak (benchmarks/soak; docs/performance.md#soak)
RSS rose by about 10 MB/h while the bytes malloc had handed out stayed flat.  A census of
the garbage found one transport, socket and dict per closed connection.  With a full
collection every minute, RSS was flat.  The frozen start-up heap is left out of a
collection, so with 1,000 checks one took 9-35 ms, no longer than the automatic young
collections.

The collection runs as a timer callback on the event loop, not as a task, so it does not
change ``mail_exporter_asyncio_tasks``.
"""

from __future__ import annotations

__all__ = ["COLLECT_EVERY", "PeriodicCollector"]

import asyncio
import gc
from collections.abc import Callable

#: Seconds between full collections.
COLLECT_EVERY = 60.0


class PeriodicCollector:
    """Calls ``collect`` (``gc.collect``: all generations) every ``every`` seconds between start and stop."""

    def __init__(self, every: float = COLLECT_EVERY, collect: Callable[[], int] = gc.collect) -> None:
        self.every = every
        self.collect = collect
        self.runs = 0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Schedule the first collection ``every`` seconds from now, on the running loop."""
        self.stop()
        self._handle = asyncio.get_running_loop().call_later(self.every, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        self.collect()
        self.runs += 1
        self._handle = asyncio.get_running_loop().call_later(self.every, self._tick)
