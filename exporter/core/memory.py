"""A full garbage collection once a minute, so that cyclic garbage cannot pile up for hours.

In Python 3.11 every closed asyncio socket transport stays in a reference cycle: it keeps
``_read_ready_cb``, a bound method of itself (cpython#100348, fixed for 3.12).  Only the
cyclic collector frees it, with its socket object and ``__dict__``.  The probers' own
connections no longer do: ``exporter.net.tls.Conn.abort`` cuts the cycle once the
transport is closed.  The others (scrapes, webhooks, IMAP receivers, HTTP clients) still
do, so the collection stays.  ``cli.py`` freezes the
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

**Freezing again once the checks have run.**  A check's long-lived state (its counters, its
lines in the snapshot, its last result) is made by its first run, after ``cli.py``'s
freeze.  With 10,000 checks that is about 170,000 objects that every full collection walks
again, for nothing: under load one took 0.9 to 1.2 s, and ``/metrics`` waited.  So the
first collection after every check has finished a run (:attr:`PeriodicCollector.settled`
says so, or ``SETTLE_LIMIT`` seconds have passed) freezes what survived it.  From then on
a collection walks only what was made since: the objects of runs in flight (a check's
sleeping timer, its last record).  The price: garbage cycles among objects alive at that
moment (the connections of runs in flight, a few hundred at most) are never freed, once.
A reload unfreezes (:meth:`PeriodicCollector.reload`), so the checks it removed are
collected, and freezes again once the new ones have run.
"""

from __future__ import annotations

__all__ = ["COLLECT_EVERY", "SETTLE_LIMIT", "PeriodicCollector"]

import asyncio
import contextlib
import gc
from collections.abc import Callable

#: Seconds between full collections.
COLLECT_EVERY = 60.0
#: Seconds after a start or reload after which the heap is frozen even if a check has not run yet.
SETTLE_LIMIT = 600.0


class PeriodicCollector:
    """Calls ``collect`` (``gc.collect``: all generations) every ``every`` seconds between start and stop.

    The first collection after ``settled()`` turns true (or ``settle_limit`` seconds after
    the start or the last :meth:`reload`) is followed by ``freeze`` (``gc.freeze``).
    """

    def __init__(
        self,
        every: float = COLLECT_EVERY,
        collect: Callable[[], int] = gc.collect,
        *,
        settled: Callable[[], bool] = lambda: False,
        settle_limit: float = SETTLE_LIMIT,
        freeze: Callable[[], None] = gc.freeze,
        unfreeze: Callable[[], None] = gc.unfreeze,
    ) -> None:
        self.every = every
        self.collect = collect
        self.settled = settled
        self.settle_limit = settle_limit
        self.freeze = freeze
        self.unfreeze = unfreeze
        self.runs = 0
        self.frozen = False
        self._since = 0.0  # loop time of the start or the last reload
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Schedule the first collection ``every`` seconds from now, on the running loop."""
        self.stop()
        loop = asyncio.get_running_loop()
        self._since = loop.time()
        self._handle = loop.call_later(self.every, self._tick)

    def reload(self) -> None:
        """The checks changed: unfreeze (the next collection frees what the old ones left), freeze again later."""
        if self.frozen:
            self.unfreeze()
            self.frozen = False
        with contextlib.suppress(RuntimeError):  # no running loop: the next start() sets it
            self._since = asyncio.get_running_loop().time()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        self.collect()
        self.runs += 1
        if not self.frozen and (loop.time() - self._since >= self.settle_limit or self.settled()):
            self.freeze()
            self.frozen = True
        self._handle = loop.call_later(self.every, self._tick)
