"""The incident store: the :class:`Store` interface and its SQLite implementation.

One file, ``<storage.path>/mail-continuity.sqlite``, in WAL mode.

**Durability.**  ``synchronous=FULL``: every commit is fsynced (the WAL file) before
the commit returns, so a notification that was answered 200 survives ``kill -9`` *and*
a power cut.  (WAL with ``synchronous=NORMAL`` survives a process crash but may lose
the last commits on power loss: it fsyncs only at checkpoints.  The exporter promises
Alertmanager that a 200 means "stored", so it pays the fsync.)  To keep that affordable
the writer uses **group commit**: it takes every request that is waiting, applies each
inside one transaction, commits once (one fsync), and only then answers the requests.
A request that fails is rolled back and fails alone (see :func:`commit_batch`); a
failed commit fails the whole batch, and nothing in it is acknowledged.

**The writer** is one thread of this process (``writer="thread"``: the CLI, tests) or a
child process (``writer="process"``: the exporter), which runs the same code and keeps
the incident rules' Python off the exporter's GIL; see :class:`_ProcessWriter`.

**Off the event loop.**  sqlite3 calls never run on the event loop: writes go to the
writer, reads (figures, listings) run through :func:`asyncio.to_thread` on a separate
read-only connection, which in WAL mode never waits for the writer.

**Schema migrations** are versioned in ``schema_version`` and applied at open, all in
one transaction: a failed migration leaves the file as it was.  A file written by a
newer version (a higher schema version than this code knows) is refused.

:class:`Store` is the interface the rest of the exporter uses; a PostgreSQL store can
implement it (and :class:`~exporter.continuity.incidents.IncidentTx` inside its
transactions) without changing the incident logic.
"""

from __future__ import annotations

__all__ = [
    "DB_NAME",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "IncidentRecord",
    "OpenIncident",
    "RecoveryHistogram",
    "SqliteStore",
    "Store",
    "Summary",
]

import argparse
import asyncio
import contextlib
import itertools
import logging
import math
import os
import pickle
import queue
import socket
import sqlite3
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from exporter.continuity.figures import Span
from exporter.continuity.incidents import (
    AlertEvent,
    Changes,
    ImportRecord,
    IncidentRow,
    StoredAlert,
    apply_event,
    import_record,
    promote_overruns,
    resolve_missing,
)
from exporter.core.errors import StoreError

DB_NAME = "mail-continuity.sqlite"
T = TypeVar("T")
log = logging.getLogger("exporter.continuity.store")

#: (version, description, statements).  Append only; never edit a released migration.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "alerts, incidents, incident_alerts, recoveries",
        (
            """CREATE TABLE alerts (
                id INTEGER PRIMARY KEY,
                fingerprint TEXT NOT NULL,
                starts_ms INTEGER NOT NULL,
                starts_at REAL NOT NULL,
                ends_at REAL,
                severity TEXT NOT NULL,
                labels TEXT NOT NULL,
                source TEXT NOT NULL,
                first_seen REAL NOT NULL,
                last_seen REAL NOT NULL,
                seen INTEGER NOT NULL DEFAULT 1,
                UNIQUE (fingerprint, starts_ms)
            )""",
            "CREATE INDEX alerts_firing ON alerts(source) WHERE ends_at IS NULL",
            """CREATE TABLE incidents (
                id INTEGER PRIMARY KEY,
                service TEXT NOT NULL,
                kind TEXT NOT NULL CHECK (kind IN ('incident', 'drill', 'maintenance')),
                severity TEXT NOT NULL,
                opened_severity TEXT NOT NULL,
                started_at REAL NOT NULL,
                ended_at REAL,
                open_alerts INTEGER NOT NULL DEFAULT 0,
                last_end REAL,
                window_end REAL,
                promoted INTEGER NOT NULL DEFAULT 0,
                source TEXT NOT NULL,
                import_key TEXT UNIQUE,
                labels TEXT NOT NULL DEFAULT '{}',
                created_at REAL NOT NULL
            )""",
            "CREATE INDEX incidents_open ON incidents(service, kind, started_at) WHERE ended_at IS NULL",
            "CREATE INDEX incidents_ended ON incidents(service, kind, ended_at)",
            "CREATE INDEX incidents_ended_all ON incidents(ended_at)",
            """CREATE TABLE incident_alerts (
                incident_id INTEGER NOT NULL REFERENCES incidents(id),
                alert_id INTEGER NOT NULL REFERENCES alerts(id),
                PRIMARY KEY (incident_id, alert_id)
            ) WITHOUT ROWID""",
            "CREATE INDEX incident_alerts_by_alert ON incident_alerts(alert_id, incident_id)",
            """CREATE TABLE recoveries (
                incident_id INTEGER PRIMARY KEY REFERENCES incidents(id),
                service TEXT NOT NULL,
                severity TEXT NOT NULL,
                seconds REAL NOT NULL,
                recorded_at REAL NOT NULL
            )""",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

#: Requests committed together at most (one transaction, one fsync).
MAX_BATCH = 256


# --- what reads return ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecoveryHistogram:
    buckets: tuple[float, ...]  # upper bounds, the last one +Inf
    counts: tuple[int, ...]  # cumulative
    total: float
    count: int


@dataclass(frozen=True, slots=True)
class OpenIncident:
    id: int
    service: str
    severity: str
    started_at: float
    open_alerts: int
    alertnames: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Summary:
    """Everything the figures need, read in one go."""

    spans: tuple[Span, ...]  # incidents and drills open or ended since the horizon
    totals: dict[tuple[str, str], int]  # (service, opened severity) -> incidents ever opened
    open_counts: dict[tuple[str, str], int]  # (service, severity) -> incidents open now
    oldest_open: dict[str, float]  # service -> start of its oldest open incident
    recoveries: dict[tuple[str, str], RecoveryHistogram]
    last_drill: dict[str, tuple[float, float]]  # service -> (end, failover seconds) of its last drill
    open: tuple[OpenIncident, ...]  # for the status page (at most 100)


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    """One incident, drill or maintenance record, for listings and export."""

    id: int
    service: str
    kind: str
    severity: str
    started_at: float
    ended_at: float | None
    source: str
    alerts: int
    labels: str  # JSON: the import's labels, or the labels common to its alerts


# --- the interface -----------------------------------------------------------------------------------


class Store(Protocol):
    """Persistent incident state.  Every method is a coroutine that never blocks the event loop."""

    description: str

    async def open(self) -> None:
        """Create or open the store and apply schema migrations.  Raises StoreError."""

    async def close(self) -> None: ...

    async def ingest(self, events: Sequence[AlertEvent], now: float) -> Changes:
        """Record alert occurrences, durably, in one transaction.  Returns after the commit."""

    async def reconcile(
        self, active: frozenset[tuple[str, int]], new_events: Sequence[AlertEvent], fetched_at: float, now: float
    ) -> Changes: ...

    async def promote_overruns(self, now: float) -> Changes: ...

    async def import_records(self, records: Sequence[ImportRecord], now: float) -> Changes:
        """Import past incidents, all or nothing; records already present are skipped."""

    async def summary(self, now: float, horizon: float, buckets: Sequence[float]) -> Summary: ...

    async def firing_check_outages(self) -> list[tuple[str, int, float]]:
        """(fingerprint, starts_ms, starts_at) of the exporter's own check outages still open."""

    async def incidents(
        self, *, service: str | None = None, open_only: bool = False, limit: int | None = None
    ) -> list[IncidentRecord]: ...

    async def alert_keys(self) -> list[tuple[str, int]]:
        """Every stored (fingerprint, starts_ms), for audits and tests."""


# --- SQLite ---------------------------------------------------------------------------------------------


def _incident_row(r: tuple[Any, ...]) -> IncidentRow:
    return IncidentRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8])


_INCIDENT_COLS = "id, service, kind, severity, started_at, ended_at, open_alerts, last_end, window_end"


class _SqliteTx:
    """:class:`~exporter.continuity.incidents.IncidentTx` over one sqlite3 connection in a transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.c = conn

    def get_alert(self, fingerprint: str, starts_ms: int) -> StoredAlert | None:
        row = self.c.execute(
            "SELECT id, ends_at, severity FROM alerts WHERE fingerprint = ? AND starts_ms = ?", (fingerprint, starts_ms)
        ).fetchone()
        return None if row is None else StoredAlert(row[0], row[1], row[2])

    def insert_alert(self, ev: AlertEvent, now: float) -> int:
        cur = self.c.execute(
            "INSERT INTO alerts (fingerprint, starts_ms, starts_at, ends_at, severity, labels, source,"
            " first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ev.fingerprint, ev.starts_ms, ev.starts_at, ev.ends_at, ev.severity, ev.labels_json, ev.source, now, now),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def touch_alert(self, alert_id: int, now: float) -> None:
        self.c.execute("UPDATE alerts SET last_seen = ?, seen = seen + 1 WHERE id = ?", (now, alert_id))

    def resolve_alert(self, alert_id: int, ends_at: float) -> None:
        self.c.execute("UPDATE alerts SET ends_at = ? WHERE id = ?", (ends_at, alert_id))
        self.c.execute(
            "UPDATE incidents SET open_alerts = open_alerts - 1,"
            " last_end = max(coalesce(last_end, ?), ?)"
            " WHERE id IN (SELECT incident_id FROM incident_alerts WHERE alert_id = ?)",
            (ends_at, ends_at, alert_id),
        )

    def overlapping_incidents(self, service: str, kind: str, start: float, end: float | None) -> list[IncidentRow]:
        upper = math.inf if end is None else end
        rows = self.c.execute(
            f"SELECT {_INCIDENT_COLS} FROM incidents"  # noqa: S608 - constant column list
            " WHERE service = ? AND kind = ? AND ended_at IS NULL AND started_at <= ?",
            (service, kind, upper),
        ).fetchall()
        if rows:
            return [_incident_row(r) for r in rows]
        rows = self.c.execute(
            f"SELECT {_INCIDENT_COLS} FROM incidents"  # noqa: S608 - constant column list
            " WHERE service = ? AND kind = ? AND ended_at >= ? AND started_at <= ?",
            (service, kind, start, upper),
        ).fetchall()
        return [_incident_row(r) for r in rows]

    def create_incident(
        self,
        service: str,
        kind: str,
        severity: str,
        start: float,
        end: float | None,
        *,
        window_end: float | None,
        source: str,
        now: float,
        import_key: str | None = None,
        labels: str = "{}",
    ) -> int:
        cur = self.c.execute(
            "INSERT INTO incidents (service, kind, severity, opened_severity, started_at, ended_at, last_end,"
            " window_end, source, import_key, labels, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (service, kind, severity, severity, start, end, end, window_end, source, import_key, labels, now),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def update_incident(self, incident_id: int, start: float, end: float | None, severity: str) -> None:
        self.c.execute(
            "UPDATE incidents SET started_at = ?, ended_at = ?, severity = ? WHERE id = ?",
            (start, end, severity, incident_id),
        )

    def attach(self, incident_id: int, alert_id: int, firing: bool, end: float | None) -> None:
        cur = self.c.execute(
            "INSERT OR IGNORE INTO incident_alerts (incident_id, alert_id) VALUES (?, ?)", (incident_id, alert_id)
        )
        if cur.rowcount:
            if firing:
                self.c.execute("UPDATE incidents SET open_alerts = open_alerts + 1 WHERE id = ?", (incident_id,))
            elif end is not None:
                self.c.execute(
                    "UPDATE incidents SET last_end = max(coalesce(last_end, ?), ?) WHERE id = ?",
                    (end, end, incident_id),
                )

    def incidents_of_alert(self, alert_id: int) -> list[IncidentRow]:
        rows = self.c.execute(
            f"SELECT {_INCIDENT_COLS} FROM incidents"  # noqa: S608 - constant column list
            " WHERE id IN (SELECT incident_id FROM incident_alerts WHERE alert_id = ?)",
            (alert_id,),
        ).fetchall()
        return [_incident_row(r) for r in rows]

    def record_recovery(self, incident_id: int, service: str, severity: str, seconds: float, now: float) -> None:
        self.c.execute(
            "INSERT OR IGNORE INTO recoveries (incident_id, service, severity, seconds, recorded_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (incident_id, service, severity, seconds, now),
        )

    def firing_alerts(self, sources: Sequence[str]) -> list[tuple[int, str, int, float]]:
        marks = ",".join("?" * len(sources))
        return self.c.execute(
            "SELECT id, fingerprint, starts_ms, first_seen FROM alerts"  # noqa: S608 - placeholders only
            f" WHERE ends_at IS NULL AND source IN ({marks})",
            tuple(sources),
        ).fetchall()

    def overrun_maintenance(self, now: float) -> list[IncidentRow]:
        rows = self.c.execute(
            f"SELECT {_INCIDENT_COLS} FROM incidents"  # noqa: S608 - constant column list
            " WHERE kind = 'maintenance' AND ended_at IS NULL"
            " AND promoted = 0 AND window_end <= ?",
            (now,),
        ).fetchall()
        return [_incident_row(r) for r in rows]

    def firing_alerts_of(self, incident_id: int) -> list[StoredAlert]:
        rows = self.c.execute(
            "SELECT a.id, a.ends_at, a.severity FROM alerts a JOIN incident_alerts ia ON ia.alert_id = a.id"
            " WHERE ia.incident_id = ? AND a.ends_at IS NULL",
            (incident_id,),
        ).fetchall()
        return [StoredAlert(r[0], r[1], r[2]) for r in rows]

    def mark_promoted(self, incident_id: int) -> None:
        self.c.execute("UPDATE incidents SET promoted = 1 WHERE id = ?", (incident_id,))

    def import_key_exists(self, key: str) -> bool:
        return self.c.execute("SELECT 1 FROM incidents WHERE import_key = ?", (key,)).fetchone() is not None


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    if readonly:  # mode=ro: never writes the database file, not even a checkpoint when closing
        target = path.resolve().as_uri() + "?mode=ro"
        conn = sqlite3.connect(target, uri=True, isolation_level=None, check_same_thread=False, timeout=10.0)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.execute("PRAGMA busy_timeout = 10000")
    if not readonly:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: cannot switch to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        # Checkpoints run in the background (_Checkpointer), not inside a commit: a commit
        # then costs one fsync of the WAL, and the database file's fsyncs never delay an
        # acknowledgement.
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
    return conn


#: Checkpoint when the WAL is larger than this, or every CHECKPOINT_EVERY seconds.
CHECKPOINT_SIZE = 4 << 20
CHECKPOINT_EVERY = 30.0
#: Size the WAL file is truncated to after a checkpoint reset it.
WAL_SIZE_LIMIT = 64 << 20


class _Checkpointer(threading.Thread):
    """Copies the WAL into the database in the background (PASSIVE: never blocks the writer).

    SQLite resets the WAL once a checkpoint has copied all of it and the writer starts a
    new transaction.  Closing the last connection checkpoints whatever is left.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(name="continuity-store-checkpoint", daemon=True)
        self.path = path
        self.wal = Path(str(path) + "-wal")
        self.stop_event = threading.Event()

    def run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        except sqlite3.Error as exc:
            log.error("store checkpointer cannot open the store", extra={"kv": {"err": str(exc)}})
            return
        last = time.monotonic()
        try:
            while not self.stop_event.wait(0.5):
                try:
                    size = self.wal.stat().st_size
                except OSError:
                    continue
                if size >= CHECKPOINT_SIZE or (size and time.monotonic() - last >= CHECKPOINT_EVERY):
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    except sqlite3.Error as exc:
                        log.warning("store checkpoint failed", extra={"kv": {"err": str(exc)}})
                    last = time.monotonic()
        finally:
            conn.close()


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Apply pending migrations in one transaction.  Returns the schema version now in force."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{path}: schema version {current} was written by a newer mail-continuity-exporter"
                f" (this one knows up to {SCHEMA_VERSION}); refusing to open it"
            )
        for version, description, statements in MIGRATIONS:
            if version <= current:
                continue
            for sql in statements:
                conn.execute(sql)
            conn.execute(
                "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                (version, description, time.time()),
            )
            log.info("store schema migrated", extra={"kv": {"version": version, "path": str(path)}})
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return SCHEMA_VERSION


# --- write operations -------------------------------------------------------------------------
#
# A write is an operation name and its arguments (plain data, so that it can cross to the
# writer process), applied by the functions below inside the writer's transaction.


def _op_ingest(tx: _SqliteTx, events: Sequence[AlertEvent], now: float) -> Changes:
    changes = Changes()
    for ev in events:
        apply_event(tx, ev, now, changes)
    return changes


def _op_reconcile(
    tx: _SqliteTx, active: frozenset[tuple[str, int]], events: Sequence[AlertEvent], fetched_at: float, now: float
) -> Changes:
    changes = Changes()
    resolve_missing(tx, active, fetched_at, now, changes)
    for ev in events:
        apply_event(tx, ev, now, changes)
    return changes


def _op_promote(tx: _SqliteTx, now: float) -> Changes:
    changes = Changes()
    promote_overruns(tx, now, changes)
    return changes


def _op_import(tx: _SqliteTx, records: Sequence[ImportRecord], now: float) -> Changes:
    changes = Changes()
    for rec in records:
        import_record(tx, rec, now, changes)
    return changes


OPS: dict[str, Callable[..., Any]] = {
    "ingest": _op_ingest,
    "reconcile": _op_reconcile,
    "promote": _op_promote,
    "import": _op_import,
}
#: An operation: (name in OPS, arguments); the thread writer also takes a plain function of the transaction.
Op = tuple[str, tuple[Any, ...]] | Callable[[_SqliteTx], Any]


def _apply(tx: _SqliteTx, op: Op) -> Any:
    if callable(op):
        return op(tx)
    name, args = op
    return OPS[name](tx, *args)


def commit_batch(conn: sqlite3.Connection, tx: _SqliteTx, ops: Sequence[Op]) -> list[tuple[Any, BaseException | None]]:
    """Apply ``ops`` in one transaction (one fsync); returns each one's (result, error).

    The fast path has no savepoints (they cost two statements per operation).  An operation
    that raises is rare (a bug, a constraint): then the whole batch is rolled back and
    replayed one transaction per operation, so that only the failing one fails.  Each
    operation is a function of the database state, so replaying it is safe.  When the
    commit itself fails (disk full, I/O error), every operation of the batch fails.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            outcomes: list[tuple[Any, BaseException | None]] = [(_apply(tx, op), None) for op in ops]
        except Exception:
            conn.execute("ROLLBACK")
            return [_apply_alone(conn, tx, op) for op in ops]
        conn.execute("COMMIT")
        return outcomes
    except sqlite3.Error as exc:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        log.error("store commit failed", extra={"kv": {"err": str(exc), "requests": len(ops)}})
        failure = StoreError(f"store commit failed: {exc}")
        return [(None, failure)] * len(ops)


def _apply_alone(conn: sqlite3.Connection, tx: _SqliteTx, op: Op) -> tuple[Any, BaseException | None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = _apply(tx, op)
    except Exception as exc:
        conn.execute("ROLLBACK")
        err = exc if isinstance(exc, StoreError) else StoreError(f"store write failed: {exc}")
        if err is not exc:
            err.__cause__ = exc
        log.error("store request failed", extra={"kv": {"err": str(exc)}})
        return None, err
    conn.execute("COMMIT")
    return result, None


# --- the writer thread ---------------------------------------------------------------------------------

_STOP = object()


@dataclass
class _Request:
    op: Op
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


def _deliver(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, exc in items:
        if fut.done():  # the caller went away; the write stands
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


class _ThreadWriter(threading.Thread):
    """The one thread that writes: batches waiting requests into one transaction (group commit)."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="continuity-store-writer", daemon=True)
        self.path = path
        # Items are lists of requests (what the event loop gathered in one iteration) or _STOP.
        self.requests: queue.SimpleQueue[list[_Request] | object] = queue.SimpleQueue()
        self.ready = threading.Event()
        self.open_error: BaseException | None = None
        self.batches = 0
        self.committed = 0

    def run(self) -> None:
        try:
            conn = _connect(self.path, readonly=False)
            migrate(conn, self.path)
        except BaseException as err:
            self.open_error = err
            self.ready.set()
            return
        self.ready.set()
        tx = _SqliteTx(conn)
        checkpointer = _Checkpointer(self.path)
        checkpointer.start()
        try:
            while True:
                first = self.requests.get()
                if first is _STOP:
                    return
                batch = list(first) if isinstance(first, list) else []
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        item = self.requests.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    if isinstance(item, list):
                        batch.extend(item)
                self._commit(conn, tx, batch)
                if stop:
                    return
        finally:
            checkpointer.stop_event.set()
            checkpointer.join(10.0)
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _commit(self, conn: sqlite3.Connection, tx: _SqliteTx, batch: list[_Request]) -> None:
        outcomes = commit_batch(conn, tx, [r.op for r in batch])
        self.batches += 1
        self.committed += sum(1 for _, exc in outcomes if exc is None)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}
        for req, (result, error) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(req.loop, []).append((req.future, result, error))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_deliver, items)


# --- the writer process ------------------------------------------------------------------------------------
#
# Why a process: the exporter's event loop (HTTP, JSON, validation) and the writer (the
# incident rules, sqlite3 calls) each need about 250-400 us of Python per notification.
# In one process they take turns on the GIL, which caps ingestion at roughly 1,500
# notifications/s on the benchmark machine; in two processes they run in parallel.
# Parent and child talk over a socket pair: frames of a 4-byte length and a pickle.
# Requests are (id, operation, arguments); after each commit the child answers with one
# frame listing (id, ok, result or error message) for the whole batch.  The child exits
# when the socket closes (the exporter stopped, or was killed).

_FRAME = struct.Struct(">I")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding the exporter package


def _frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(len(data)) + data


def _take_frames(buf: bytearray) -> list[Any]:
    out = []
    while len(buf) >= _FRAME.size:
        (n,) = _FRAME.unpack_from(buf)
        if len(buf) < _FRAME.size + n:
            break
        out.append(pickle.loads(bytes(buf[_FRAME.size : _FRAME.size + n])))  # noqa: S301 - our own parent process
        del buf[: _FRAME.size + n]
    return out


def writer_process_main(fd: int, path: str) -> int:
    """The writer process: ``python -m exporter.continuity.store --writer-fd FD PATH``."""
    sock = socket.socket(fileno=fd)
    db = Path(path)
    try:
        conn = _connect(db, readonly=False)
        migrate(conn, db)
    except BaseException as exc:
        sock.sendall(_frame(("error", str(exc))))
        return 1
    sock.sendall(_frame(("ready", SCHEMA_VERSION)))
    tx = _SqliteTx(conn)
    checkpointer = _Checkpointer(db)
    checkpointer.start()
    buf = bytearray()
    eof = False
    while True:
        requests = _take_frames(buf)
        if not requests:
            if eof:
                break
            data = sock.recv(1 << 20)  # wait for work
            if not data:
                break
            buf += data
            sock.setblocking(False)
            try:
                while True:  # and take whatever else is already there: one batch
                    more = sock.recv(1 << 20)
                    if not more:
                        eof = True
                        break
                    buf += more
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
            continue
        for i in range(0, len(requests), MAX_BATCH):
            chunk = requests[i : i + MAX_BATCH]
            outcomes = commit_batch(conn, tx, [(name, args) for _, name, args in chunk])
            answer = [
                (rid, exc is None, result if exc is None else str(exc))
                for (rid, _, _), (result, exc) in zip(chunk, outcomes, strict=True)
            ]
            try:
                sock.sendall(_frame(answer))
            except OSError:
                eof = True  # the exporter is gone; what was committed stays committed
    checkpointer.stop_event.set()
    checkpointer.join(10.0)
    with contextlib.suppress(sqlite3.Error):
        conn.close()
    return 0


class _ProcessWriter:
    """The parent's side of the writer process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.ids = itertools.count(1)
        self.task: asyncio.Task[None] | None = None
        self.alive = False
        self.stopping = False
        self.batches = 0
        self.committed = 0

    async def start(self) -> None:
        parent, child = socket.socketpair()
        env = dict(os.environ)
        root = _PACKAGE_ROOT
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "exporter.continuity.store",
                "--writer-fd",
                str(child.fileno()),
                str(self.path),
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C meant for the exporter must not cut a commit short
                env=env,
            )
        except OSError as exc:
            parent.close()
            raise StoreError(f"cannot start the store writer process: {exc}") from exc
        finally:
            child.close()
        self.reader, self.writer = await asyncio.open_unix_connection(sock=parent)
        try:
            kind, value = await asyncio.wait_for(self._read_frame(), 60.0)
        except (TimeoutError, asyncio.IncompleteReadError, OSError) as exc:
            await self.stop()
            raise StoreError(f"{self.path}: the store writer process did not start: {exc!r}") from None
        if kind != "ready":
            await self.stop()
            message = str(value)
            if str(self.path) not in message:
                message = f"{self.path}: cannot open the incident store: {message}"
            raise StoreError(message)
        self.alive = True
        self.task = asyncio.create_task(self._read_loop(), name="continuity:store-writer")

    async def _read_frame(self) -> Any:
        assert self.reader is not None
        head = await self.reader.readexactly(_FRAME.size)
        (n,) = _FRAME.unpack(head)
        return pickle.loads(await self.reader.readexactly(n))  # noqa: S301 - our own child process

    async def _read_loop(self) -> None:
        try:
            while True:
                answer = await self._read_frame()
                self.batches += 1
                for rid, ok, value in answer:
                    fut = self.pending.pop(rid, None)
                    if ok:
                        self.committed += 1
                    if fut is None or fut.done():
                        continue
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(StoreError(value))
        except (asyncio.IncompleteReadError, OSError, pickle.UnpicklingError) as exc:
            if not self.stopping:
                log.error("the store writer process stopped", extra={"kv": {"err": repr(exc)}})
        finally:
            self.alive = False
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(StoreError("the store writer process stopped before committing"))
            self.pending.clear()

    async def submit(self, op: tuple[str, tuple[Any, ...]]) -> Any:
        if not self.alive or self.writer is None:
            raise StoreError("the store writer process is not running")
        rid = next(self.ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        name, args = op
        try:
            self.writer.write(_frame((rid, name, args)))
            await self.writer.drain()
        except (OSError, RuntimeError) as exc:
            self.pending.pop(rid, None)
            raise StoreError(f"the store writer process is not reachable: {exc!r}") from exc
        return await fut

    async def stop(self) -> None:
        self.alive = False
        self.stopping = True
        if self.writer is not None:
            self.writer.close()  # EOF: the child finishes its batch and exits
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        if self.proc is not None and self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), 10.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


# --- the store ------------------------------------------------------------------------------------------------


class SqliteStore:
    """:class:`Store` in one SQLite file (WAL, synchronous=FULL, group commit).

    ``writer="thread"`` writes from a thread of this process; ``writer="process"`` from a
    child process (what the exporter uses: see above).  ``readonly=True`` opens no writer
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
        self._writer: _ThreadWriter | None = None
        self._process: _ProcessWriter | None = None
        self._restart = asyncio.Lock()
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._closed = False
        self._pending: list[_Request] = []  # requests of this event-loop iteration, handed over together

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
            process = _ProcessWriter(self.path)
            await process.start()
            self._process = process
        else:
            await asyncio.to_thread(self._start_thread)
        try:
            self._reader = await asyncio.to_thread(_connect, self.path, readonly=True)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the incident store for reading: {exc}") from exc

    def _start_thread(self) -> None:
        writer = _ThreadWriter(self.path)
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
            reader = _connect(self.path, readonly=True)
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
            writer.requests.put(_STOP)
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
        self._pending.append(_Request(op, loop, fut))
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
            process = _ProcessWriter(self.path)
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
                    " WHERE kind IN ('incident', 'drill') AND (ended_at IS NULL OR ended_at >= ?)",
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
            return [
                (r[0], int(r[1]), float(r[2]))
                for r in c.execute(
                    "SELECT fingerprint, starts_ms, starts_at FROM alerts WHERE ends_at IS NULL AND source = 'check'"
                )
            ]

        return await self._read(fn)

    async def incidents(
        self, *, service: str | None = None, open_only: bool = False, limit: int | None = None
    ) -> list[IncidentRecord]:
        where = []
        params: list[Any] = []
        if service is not None:
            where.append("i.service = ?")
            params.append(service)
        if open_only:
            where.append("i.ended_at IS NULL")
        sql = (
            "SELECT i.id, i.service, i.kind, i.severity, i.started_at, i.ended_at, i.source, i.labels,"
            " (SELECT count(*) FROM incident_alerts ia WHERE ia.incident_id = i.id),"
            " (SELECT a.labels FROM incident_alerts ia JOIN alerts a ON a.id = ia.alert_id"
            "  WHERE ia.incident_id = i.id ORDER BY a.starts_at LIMIT 1)"
            " FROM incidents i"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY i.started_at, i.id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)

        def fn(c: sqlite3.Connection) -> list[IncidentRecord]:
            out = []
            for r in c.execute(sql, params):
                labels = r[7] if r[7] != "{}" or r[9] is None else r[9]
                out.append(IncidentRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], int(r[8]), labels))
            return out

        return await self._read(fn)

    async def alert_keys(self) -> list[tuple[str, int]]:
        def fn(c: sqlite3.Connection) -> list[tuple[str, int]]:
            return [(r[0], int(r[1])) for r in c.execute("SELECT fingerprint, starts_ms FROM alerts")]

        return await self._read(fn)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The incident store's writer process (started by the exporter).")
    parser.add_argument("--writer-fd", type=int, required=True)
    parser.add_argument("path")
    args = parser.parse_args(argv)
    return writer_process_main(args.writer_fd, args.path)


if __name__ == "__main__":
    sys.exit(_main())
