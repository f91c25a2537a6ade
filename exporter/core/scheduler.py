"""Runs every check in the background, each on its own interval with jitter.

- A global semaphore bounds how many checks run at once.
- Every run is wrapped in ``asyncio.timeout(check.timeout)``; on the cut-off the
  check's ``on_timeout`` records a failure with reason ``timeout``.
- A check that raises is recorded as a run with result ``error`` and the loop goes
  on: nothing a check does can stop the scheduler.
- Each run's samples, plus the check's own self-metrics, replace the check's part of
  the :class:`~exporter.core.snapshot.Snapshot`.
- :meth:`Scheduler.apply` swaps in a new set of checks: checks whose definition is
  unchanged keep running undisturbed (and keep their counters), removed checks are
  cancelled and their series dropped, new ones start.
"""

from __future__ import annotations

__all__ = ["Check", "RunRecord", "Scheduler"]

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from exporter.core.model import CheckState, Sink
from exporter.core.secrets import redact
from exporter.core.snapshot import Snapshot

RUN_RESULTS = ("success", "failure", "error")

RunFn = Callable[[Sink, logging.Logger], Awaitable[bool]]


def _default_timeout(check: Check, sink: Sink) -> None:
    sink.fail("timeout", f"timed out after {check.timeout:g}s")


@dataclass(eq=False)
class Check:
    """One scheduled unit of work (a probe, a queue read, a DNS check...)."""

    kind: str
    name: str
    interval: float
    timeout: float
    spec: Any  # the config it was built from; equal spec means "unchanged" on reload
    run: RunFn
    on_timeout: Callable[[Check, Sink], None] = _default_timeout
    state: CheckState = field(default_factory=CheckState)
    #: Releases what the check holds (files, sockets) once it is removed or the scheduler stops.
    on_close: Callable[[], Awaitable[None]] | None = None
    last: RunRecord | None = None
    runs: int = 0

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"

    def same_as(self, other: Check) -> bool:
        return (
            self.kind == other.kind
            and self.name == other.name
            and self.interval == other.interval
            and self.timeout == other.timeout
            and self.spec == other.spec
        )


@dataclass(frozen=True)
class RunRecord:
    started: float  # unix time
    duration: float
    result: str  # success | failure | error
    reason: str
    error: str
    details: tuple[tuple[str, str], ...]


#: At most this many first runs a second on average, when many checks start at once.
FIRST_RUNS_PER_SECOND = 200.0
#: The start lag histogram: from when a run was due to when it started.
START_LAG = "mail_exporter_check_start_lag_seconds"
START_LAG_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Scheduler:
    def __init__(
        self,
        snapshot: Snapshot,
        *,
        max_concurrency: int = 64,
        jitter: float = 0.1,
        first_run_spread: float = 5.0,
        log: logging.Logger | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.jitter = jitter
        self.first_run_spread = first_run_spread
        self.log = log or logging.getLogger("exporter.scheduler")
        self._sem = asyncio.Semaphore(max_concurrency)
        self._checks: dict[str, Check] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.scheduled = asyncio.Event()
        #: The exporter-wide start lag histogram (a self-metric): how late runs start.
        self.lag = CheckState()
        self.lag.init_histogram(START_LAG, START_LAG_BUCKETS)
        self.listeners: list[Callable[[Check, RunRecord], None]] = []

    @property
    def checks(self) -> list[Check]:
        return list(self._checks.values())

    def all_ran(self) -> bool:
        """Whether every check has finished at least one run."""
        return all(check.runs for check in self._checks.values())

    def set_concurrency(self, max_concurrency: int, jitter: float) -> None:
        if self._sem._value != max_concurrency:
            self._sem = asyncio.Semaphore(max_concurrency)
        self.jitter = jitter

    def apply(self, checks: list[Check]) -> None:
        """Run exactly ``checks`` from now on, keeping unchanged ones undisturbed."""
        new = {c.key: c for c in checks}
        for key, old in list(self._checks.items()):
            keep = new.get(key)
            if keep is not None and keep.same_as(old):
                new[key] = old
                continue
            self._cancel(key)
            self.snapshot.remove(key)
        starting = [check for key, check in new.items() if key not in self._tasks]
        # First runs are spread over first_run_spread seconds, or longer when more than
        # FIRST_RUNS_PER_SECOND would start per second (10,000 checks: 50 s), never longer
        # than a check's interval: a burst of every check at once would make them all late.
        spread = max(self.first_run_spread, len(starting) / FIRST_RUNS_PER_SECOND)
        for check in starting:
            self._initial_samples(check)
            self._tasks[check.key] = asyncio.create_task(self._loop(check, spread), name=f"check:{check.key}")
        self._checks = new
        self.scheduled.set()

    def _cancel(self, key: str) -> None:
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()
        check = self._checks.pop(key, None)
        if check is not None and check.on_close is not None:
            closing = asyncio.create_task(self._close(task, check), name=f"close:{key}")
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def _close(self, task: asyncio.Task[None] | None, check: Check) -> None:
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        assert check.on_close is not None
        try:
            await check.on_close()
        except Exception:
            self.log.exception("closing a check failed", extra={"kv": {"check": check.key}})

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for key in list(self._tasks):
            self._cancel(key)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=10.0)

    def _initial_samples(self, check: Check) -> None:
        for result in RUN_RESULTS:
            check.state.init_counter("mail_exporter_check_runs_total", check=check.kind, name=check.name, result=result)
        self.snapshot.update(check.key, list(check.state.samples()))

    async def _loop(self, check: Check, spread: float) -> None:
        loop = asyncio.get_running_loop()
        first = random.uniform(0, min(check.interval, spread))
        planned = loop.time() + first
        await asyncio.sleep(first)
        while True:
            started = loop.time()
            await self.run_once(check, planned=planned)
            spread = check.interval * self.jitter
            delay = max(0.0, check.interval + random.uniform(-spread, spread) - (loop.time() - started))
            planned = loop.time() + delay
            await asyncio.sleep(delay)

    async def run_once(self, check: Check, *, planned: float | None = None) -> RunRecord:
        """Run a check once now, record its result and publish its samples.

        ``planned``: the event loop time this run was due; how late it really starts (a busy
        loop, or every ``max_concurrency`` slot taken) goes into the start lag histogram.
        """
        async with self._sem:
            if planned is not None:
                lag = max(0.0, asyncio.get_running_loop().time() - planned)
                self.lag.observe(START_LAG, lag, START_LAG_BUCKETS)
            sink = Sink(check.state)
            wall = time.time()
            t0 = time.perf_counter()
            result = "failure"
            try:
                async with asyncio.timeout(check.timeout):
                    ok = await check.run(sink, self.log.getChild(check.kind))
                result = "success" if ok else "failure"
            except TimeoutError:
                check.on_timeout(check, sink)
            except Exception as exc:  # a bug in a check must never stop the loop
                result = "error"
                self.log.error("check raised", exc_info=exc, extra={"kv": {"check": check.kind, "name": check.name}})
                sink.fail("error", f"internal error: {type(exc).__name__}: {exc}")
            duration = time.perf_counter() - t0
        if result == "success" and sink.failure is not None:
            result = "failure"
        failure = sink.failure
        record = RunRecord(
            started=wall,
            duration=duration,
            result=result,
            reason=failure.reason if failure else "",
            error=redact(failure.message) if failure else "",
            details=tuple(sorted((k, redact(v)) for k, v in sink.details.items())),
        )
        check.last = record
        check.runs += 1
        kind, name = check.kind, check.name
        check.state.inc("mail_exporter_check_runs_total", check=kind, name=name, result=result)
        sink.gauge("mail_exporter_check_duration_seconds", duration, check=kind, name=name)
        sink.gauge("mail_exporter_check_success", 1.0 if result == "success" else 0.0, check=kind, name=name)
        sink.gauge("mail_exporter_check_last_run_timestamp_seconds", wall + duration, check=kind, name=name)
        if check.key in self._tasks or check.key in self._checks:
            self.snapshot.update(check.key, sink.samples())
        if result != "success":
            self.log.debug(
                "check failed",
                extra={"kv": {"check": check.kind, "name": check.name, "reason": record.reason, "err": record.error}},
            )
        for listener in self.listeners:
            try:
                listener(check, record)
            except Exception:  # a listener must not break the scheduler either
                self.log.exception("check listener failed")
        return record
