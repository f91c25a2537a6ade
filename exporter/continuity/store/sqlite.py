"""The SQLite implementation of :class:`~exporter.continuity.store.protocol.Store`.

One file, ``<storage.path>/mail-continuity.sqlite``, in WAL mode with
``synchronous=FULL`` (:mod:`.schema`); writes go to the writer, which commits them in
groups (:mod:`.writer`).

**Off the event loop.**  sqlite3 calls never run on the event loop: writes go to the
writer, reads (figures, listings) run through :func:`asyncio.to_thread` on a separate
read-only connection, which in WAL mode never waits for the writer.

The file's name, schema version and migrations live in :mod:`.schema` and are
re-exported here.
"""

from __future__ import annotations

__all__ = ["DB_NAME", "MIGRATIONS", "SCHEMA_VERSION", "SqliteStore", "migrate"]

import asyncio
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from exporter.continuity.figures import Span
from exporter.continuity.incidents import AlertEvent, Changes, ImportRecord
from exporter.continuity.store.queries import (
    ALERT_KEYS,
    FIRING_CHECK_OUTAGES,
    firing_check_outage,
    incident_record,
    incidents_query,
)
from exporter.continuity.store.records import IncidentRecord, OpenIncident, RecoveryHistogram, Summary
from exporter.continuity.store.schema import DB_NAME, MIGRATIONS, SCHEMA_VERSION, connect, migrate
from exporter.continuity.store.tx import Op
from exporter.continuity.store.writer import STOP, ProcessWriter, Request, ThreadWriter
from exporter.core.errors import StoreError

T = TypeVar("T")
log = logging.getLogger("exporter.continuity.store")


class SqliteStore:
    """:class:`Store` in one SQLite file (WAL, synchronous=FULL, group commit).

    ``writer="thread"`` writes from a thread of this process; ``writer="process"`` from a
    child process (what the exporter uses: see :mod:`.writer`).  ``readonly=True`` opens no writer
    at all and never modifies the file (listings, exports).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        readonly: bool = False,
        writer: Literal["thread", "process"] = "thread",
    ) -> None:
        self.readonly = readonly
        self.writer_kind = writer
        self.directory = Path(directory)
        self.path = self.directory / DB_NAME
        self.description = f"sqlite:{self.path}"
        self._writer: ThreadWriter | None = None
        self._process: ProcessWriter | None = None
        self._restart = asyncio.Lock()
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._closed = False
        self._pending: list[Request] = []  # requests of this event-loop iteration, handed over together

    # --- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self.readonly:
            await asyncio.to_thread(self._open_readonly)
            return
        try:
            await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.directory}: cannot create the storage directory: {exc.strerror or exc}") from exc
        if self.writer_kind == "process":
            process = ProcessWriter(self.path)
            await process.start()
            self._process = process
        else:
            await asyncio.to_thread(self._start_thread)
        try:
            self._reader = await asyncio.to_thread(connect, self.path, readonly=True)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the incident store for reading: {exc}") from exc

    def _start_thread(self) -> None:
        writer = ThreadWriter(self.path)
        writer.start()
        writer.ready.wait()
        if writer.open_error is not None:
            err = writer.open_error
            if isinstance(err, StoreError):
                raise err
            raise StoreError(f"{self.path}: cannot open the incident store: {err}") from err
        self._writer = writer

    def _open_readonly(self) -> None:
        if not self.path.exists():
            raise StoreError(f"{self.path}: no incident store here")
        try:
            reader = connect(self.path, readonly=True)
            row = reader.execute("SELECT max(version) FROM schema_version").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the incident store for reading: {exc}") from exc
        if row is None or row[0] is None or row[0] > SCHEMA_VERSION:
            reader.close()
            raise StoreError(f"{self.path}: schema version {row[0] if row else None} is not one this version reads")
        self._reader = reader

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        writer = self._writer
        if writer is not None:
            self._flush()
            writer.requests.put(STOP)
            await asyncio.to_thread(writer.join, 10.0)
        if self._process is not None:
            await self._process.stop()
        if self._reader is not None:
            with self._read_lock:
                self._reader.close()
            self._reader = None

    @property
    def stats(self) -> tuple[int, int]:
        """(transactions committed, requests committed): their ratio is the group-commit batch size."""
        w = self._writer or self._process
        return (w.batches, w.committed) if w is not None else (0, 0)

    # --- plumbing --------------------------------------------------------------------------------

    async def _write(self, op: Op) -> Any:
        if self._closed or (self._writer is None and self._process is None):
            raise StoreError("the incident store is not open")
        if self._process is not None:
            if callable(op):
                raise TypeError("the writer process takes operations, not functions")
            if not self._process.alive:
                await self._restart_process()
            return await self._process.submit(op)
        assert self._writer is not None
        if not self._writer.is_alive():
            raise StoreError("the incident store is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.append(Request(op, loop, fut))
        if len(self._pending) == 1:
            # Hand over everything this loop iteration produces at once: one wake-up of the
            # writer thread (and one GIL hand-off) per batch rather than per request.
            loop.call_soon(self._flush)
        return await fut

    async def _restart_process(self) -> None:
        async with self._restart:
            old = self._process
            if old is None or old.alive or self._closed:
                return
            log.error("restarting the store writer process")
            await old.stop()
            process = ProcessWriter(self.path)
            await process.start()
            self._process = process

    def _flush(self) -> None:
        if self._pending and self._writer is not None:
            batch, self._pending = self._pending, []
            self._writer.requests.put(batch)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            with self._read_lock:
                if self._reader is None:
                    raise StoreError("the incident store is not open")
                try:
                    self._reader.execute("BEGIN")  # one consistent snapshot for every query in fn
                    try:
                        return fn(self._reader)
                    finally:
                        self._reader.execute("COMMIT")
                except sqlite3.Error as exc:
                    raise StoreError(f"store read failed: {exc}") from exc

        return await asyncio.to_thread(run)

    # --- writes ------------------------------------------------------------------------------------

    async def ingest(self, events: Sequence[AlertEvent], now: float) -> Changes:
        result: Changes = await self._write(("ingest", (list(events), now)))
        return result

    async def reconcile(
        self, active: frozenset[tuple[str, int]], new_events: Sequence[AlertEvent], fetched_at: float, now: float
    ) -> Changes:
        result: Changes = await self._write(("reconcile", (active, list(new_events), fetched_at, now)))
        return result

    async def promote_overruns(self, now: float) -> Changes:
        def due(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM incidents WHERE kind = 'maintenance' AND ended_at IS NULL AND promoted = 0"
                " AND window_end <= ? LIMIT 1",
                (now,),
            ).fetchone()
            return row is not None

        if not await self._read(due):  # the common case: no write transaction at all
            return Changes()
        result: Changes = await self._write(("promote", (now,)))
        return result

    async def import_records(self, records: Sequence[ImportRecord], now: float) -> Changes:
        result: Changes = await self._write(("import", (list(records), now)))
        return result

    # --- reads --------------------------------------------------------------------------------------

    async def summary(self, now: float, horizon: float, buckets: Sequence[float]) -> Summary:
        bounds = tuple(sorted({float(b) for b in buckets if math.isfinite(b)}))

        def fn(c: sqlite3.Connection) -> Summary:
            spans = tuple(
                Span(r[0], r[1], r[2], r[3], r[4])
                for r in c.execute(
                    "SELECT service, kind, severity, started_at, ended_at FROM incidents"
                    " WHERE kind IN ('incident', 'drill') AND (ended_at IS NULL OR ended_at >= ?) ORDER BY id",
                    (horizon,),
                )
            )
            totals = {
                (r[0], r[1]): int(r[2])
                for r in c.execute(
                    "SELECT service, opened_severity, count(*) FROM incidents WHERE kind = 'incident'"
                    " GROUP BY service, opened_severity"
                )
            }
            open_counts: dict[tuple[str, str], int] = {}
            oldest: dict[str, float] = {}
            for service, severity, n, first in c.execute(
                "SELECT service, severity, count(*), min(started_at) FROM incidents"
                " WHERE kind = 'incident' AND ended_at IS NULL GROUP BY service, severity"
            ):
                open_counts[(service, severity)] = int(n)
                oldest[service] = min(first, oldest.get(service, math.inf))
            sums = ", ".join(f"sum(seconds <= {b!r})" for b in bounds)
            recoveries: dict[tuple[str, str], RecoveryHistogram] = {}
            for row in c.execute(
                f"SELECT service, severity, count(*), total(seconds){', ' + sums if sums else ''}"  # noqa: S608
                " FROM recoveries GROUP BY service, severity"  # (sums: float literals from the code)
            ):
                counts = (*(int(x or 0) for x in row[4:]), int(row[2]))
                recoveries[(row[0], row[1])] = RecoveryHistogram(
                    (*bounds, math.inf), counts, float(row[3]), int(row[2])
                )
            last_drill = {
                r[0]: (float(r[1]), float(r[1]) - float(r[2]))
                for r in c.execute(
                    "SELECT service, max(ended_at), started_at FROM incidents"
                    " WHERE kind = 'drill' AND ended_at IS NOT NULL GROUP BY service"
                )
            }
            open_rows = tuple(
                OpenIncident(
                    r[0],
                    r[1],
                    r[2],
                    r[3],
                    int(r[4]),
                    tuple(sorted(x for x in (r[5] or "").split("\x1f") if x)),
                )
                for r in c.execute(
                    "SELECT i.id, i.service, i.severity, i.started_at, i.open_alerts,"
                    " (SELECT group_concat(name, char(31)) FROM (SELECT DISTINCT name FROM ("
                    "   SELECT json_extract(a.labels, '$.alertname') AS name FROM incident_alerts ia"
                    "   JOIN alerts a ON a.id = ia.alert_id WHERE ia.incident_id = i.id LIMIT 1000) LIMIT 10))"
                    " FROM incidents i WHERE i.kind = 'incident' AND i.ended_at IS NULL"
                    " ORDER BY i.started_at LIMIT 100"
                )
            )
            return Summary(spans, totals, open_counts, oldest, recoveries, last_drill, open_rows)

        return await self._read(fn)

    async def firing_check_outages(self) -> list[tuple[str, int, float]]:
        def fn(c: sqlite3.Connection) -> list[tuple[str, int, float]]:
            return [firing_check_outage(r) for r in c.execute(FIRING_CHECK_OUTAGES)]

        return await self._read(fn)

    async def incidents(
        self, *, service: str | None = None, open_only: bool = False, limit: int | None = None
    ) -> list[IncidentRecord]:
        sql, params = incidents_query("?", service=service, open_only=open_only, limit=limit)

        def fn(c: sqlite3.Connection) -> list[IncidentRecord]:
            return [incident_record(r) for r in c.execute(sql, params)]

        return await self._read(fn)

    async def alert_keys(self) -> list[tuple[str, int]]:
        def fn(c: sqlite3.Connection) -> list[tuple[str, int]]:
            return [(r[0], int(r[1])) for r in c.execute(ALERT_KEYS)]

        return await self._read(fn)

    # --- the lease -----------------------------------------------------------------------------------

    #: One exporter owns a SQLite store (its writer is that exporter's process): no lease needed.
    shared = False

    async def lease(self, name: str, holder: str, ttl: float) -> str | None:
        return holder

    async def release(self, name: str, holder: str) -> None:
        return None
