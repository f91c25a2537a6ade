"""The PostgreSQL implementation of :class:`~exporter.continuity.store.protocol.Store`: an HA pair's store.

:class:`PostgresStore` is :class:`~exporter.continuity.store.sqlite.SqliteStore`'s
sibling: the same interface, the same incident rules
(:func:`~exporter.continuity.incidents.apply_event` and friends run unchanged against
:class:`PgTx`, an :class:`~exporter.continuity.incidents.IncidentTx` over one psycopg
transaction), the same figures, and the same errors (:class:`StoreError`, nothing else).
Two or more exporters may write one database at the same time.

Design, and why:

- **Driver: psycopg 3, its sync API, off the event loop.**  The incident rules are
  synchronous (a transaction asks, decides, writes), so they need a synchronous
  transaction; asyncpg would mean a second, async copy of them.  Writes go to one writer
  thread (:class:`PgWriter`, a :class:`~exporter.continuity.store.writer.GroupCommitThread`
  like SQLite's: the batching and answering code is shared, only "how to commit a batch"
  differs); reads run through :func:`asyncio.to_thread` on a
  :class:`psycopg_pool.ConnectionPool`.  No psycopg call ever runs on the event loop.
  (This module imports psycopg; the package imports it only when a PostgreSQL store is
  asked for, so SQLite users never pay psycopg's import time.)
- **Group commit.**  The writer takes every waiting request (up to
  :data:`~exporter.continuity.store.writer.MAX_BATCH`), applies them in one transaction and
  commits once.  The fast path (:mod:`.pgbatch`) reads the batch's working set in one
  query, runs the rules on it in memory and writes everything back in one statement: five
  statements and two round trips per batch, instead of about four round trips per alert.
  One failing request fails alone: when a request raises, the transaction is rolled back
  and the batch replayed in one new transaction, statement by statement (:class:`PgTx`),
  with a ``SAVEPOINT`` around each request, rolling back only the failing ones.  Each
  request is a function of the database state (and the replay holds the write lock
  again), so the replay is exact: this is SQLite's
  :func:`~exporter.continuity.store.writer.commit_batch` with savepoints instead of one
  transaction per request.
- **Durable acknowledgement.**  A write returns only after ``COMMIT`` returned ``COMMIT``
  (a ``COMMIT`` of an aborted transaction answers ``ROLLBACK`` without an error: that is
  a failure here).  Every writer connection checks ``fsync`` and ``synchronous_commit``
  (as its session sees them: a role or database setting counts) and refuses to write when
  either is ``off``: with those, a commit can return before its WAL is on disk, and the
  webhook's 200 would be a lie.  (``local``, ``remote_write``, ``on`` and
  ``remote_apply`` all flush the local WAL before the commit returns.)
- **Two writers, one database.**  Every write transaction starts with
  ``pg_advisory_xact_lock(LOCK_KEY)``: writers of every replica take turns, and each sees
  everything committed before it (the lock is released only after the commit is
  visible, and READ COMMITTED takes a fresh snapshot per statement after the lock).  So
  the rules' read-then-write steps (is this occurrence known?  which open incident does it
  join?) never race: the same notification through both replicas is stored once and
  counted once as a repeat, and one service never gets two incidents because both
  replicas saw none.  ``UNIQUE (fingerprint, starts_ms)`` backs this up.  Finer locks (per
  service) would need every service an event touches known before the transaction and
  buy little: with group commit one lock round trip covers a whole batch, and a replica
  that waits for the lock collects a bigger batch meanwhile.  ``lock_timeout`` bounds the
  wait (a stuck peer makes writes fail with StoreError, never hang), and
  ``idle_in_transaction_session_timeout`` makes the server drop a peer that froze
  holding the lock.  Advisory locks are per database, so stores in other databases of
  the same server do not contend.
- **Schema.**  The same tables, columns and meaning as SQLite's (:mod:`.schema`), in
  PostgreSQL types: ``BIGINT`` identity ids (``BY DEFAULT``, so a migration from SQLite
  can keep its ids), ``DOUBLE PRECISION`` times, ``TEXT`` labels (the JSON text, so the
  labels read back are byte for byte those written), ``BOOLEAN`` for ``promoted``.
  Versioned migrations (:data:`MIGRATIONS`, version numbers kept in step with SQLite's)
  are applied at :meth:`PostgresStore.open`, all in one transaction that holds the same
  advisory lock, so two exporters starting together never race (one migrates, the other
  then finds nothing to do), and no write runs half-way through a migration.  Applied
  versions are in ``schema_migrations``; a schema newer than this code knows is refused.
  Tables are created unqualified: in the first schema of the session's ``search_path``
  (set ``options=-csearch_path=...`` in the DSN for a dedicated schema).
- **Errors and outages.**  Every psycopg error becomes a :class:`StoreError` whose text
  names the database as ``postgresql://user@host:port/dbname`` (:attr:`description`) and
  never carries the password (it is registered with :mod:`exporter.core.secrets` and
  scrubbed from every message as defence in depth).  When the server goes away, the
  batch in flight fails (the webhook answers 503 and Alertmanager retries; ingestion is
  idempotent, so a commit whose answer was lost is harmless) and the writer reconnects
  by itself, at most every :data:`RECONNECT_MAX` seconds while the server stays away
  (in between, writes fail at once with the last error rather than queueing); the read
  pool checks each connection before use and replaces broken ones.  TCP keepalives,
  ``tcp_user_timeout`` and ``connect_timeout`` (defaults, unless the DSN sets them) bound
  how long a vanished server can hold a request.  No restart is needed.
- **Reads** run in ``REPEATABLE READ READ ONLY`` transactions: every read method sees one
  committed snapshot, and never waits for a writer (MVCC).
"""

from __future__ import annotations

__all__ = ["LOCK_KEY", "MIGRATIONS", "SCHEMA_VERSION", "PgLease", "PgTx", "PgWriter", "PostgresStore", "describe_dsn"]

import asyncio
import contextlib
import getpass
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import IsolationLevel, errors, pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from exporter.continuity.figures import Span
from exporter.continuity.incidents import (
    AlertEvent,
    Changes,
    ImportRecord,
    IncidentRow,
    StoredAlert,
)
from exporter.continuity.store.pgbatch import alert_sequence, batchable, run_batch
from exporter.continuity.store.queries import (
    ALERT_KEYS,
    FIRING_CHECK_OUTAGES,
    firing_check_outage,
    incident_record,
    incidents_query,
)
from exporter.continuity.store.records import IncidentRecord, OpenIncident, RecoveryHistogram, Summary
from exporter.continuity.store.tx import apply_op
from exporter.continuity.store.writer import STOP, GroupCommitThread, Request
from exporter.core.errors import StoreError
from exporter.core.secrets import redact, register

T = TypeVar("T")
Conn = psycopg.Connection[TupleRow]
log = logging.getLogger("exporter.continuity.store")

#: The advisory lock every write transaction and every migration holds (``'mce_stor'`` as a bigint).
LOCK_KEY = int.from_bytes(b"mce_stor", "big")
#: Seconds between reconnection attempts of the writer while the server is away: doubling up to the max.
RECONNECT_MIN = 0.25
RECONNECT_MAX = 2.0
#: Planner settings of the writer's session.  The writer runs a dozen statements over and over, each
#: a handful of index look-ups (the batch's take arrays of keys): plan each once, when psycopg
#: prepares it, rather than at every execution (a custom plan of the batch's prefetch costs more
#: than running it), and as nested loops over the indexes, so that a plan made while the tables
#: were still small (a new store) never scans a table (a cached plan is replaced only after the
#: next ANALYZE).  They change plans, never results; reads (the pool) keep the server's defaults.
WRITER_SETTINGS: tuple[tuple[str, str], ...] = (
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
)
#: Server-side limits of the writer's and the readers' sessions (seconds).
STATEMENT_TIMEOUT = 30.0
IDLE_IN_TRANSACTION_TIMEOUT = 60.0

#: (version, description, statements).  Append only; never edit a released migration.
#: Versions follow SQLite's (:data:`exporter.continuity.store.schema.MIGRATIONS`): version N
#: means the same tables and meaning in both stores.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "alerts, incidents, incident_alerts, recoveries",
        (
            """CREATE TABLE alerts (
                id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                fingerprint TEXT NOT NULL,
                starts_ms BIGINT NOT NULL,
                starts_at DOUBLE PRECISION NOT NULL,
                ends_at DOUBLE PRECISION,
                severity TEXT NOT NULL,
                labels TEXT NOT NULL,
                source TEXT NOT NULL,
                first_seen DOUBLE PRECISION NOT NULL,
                last_seen DOUBLE PRECISION NOT NULL,
                seen BIGINT NOT NULL DEFAULT 1,
                UNIQUE (fingerprint, starts_ms)
            )""",
            "CREATE INDEX alerts_firing ON alerts (source) WHERE ends_at IS NULL",
            """CREATE TABLE incidents (
                id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                service TEXT NOT NULL,
                kind TEXT NOT NULL CHECK (kind IN ('incident', 'drill', 'maintenance')),
                severity TEXT NOT NULL,
                opened_severity TEXT NOT NULL,
                started_at DOUBLE PRECISION NOT NULL,
                ended_at DOUBLE PRECISION,
                open_alerts BIGINT NOT NULL DEFAULT 0,
                last_end DOUBLE PRECISION,
                window_end DOUBLE PRECISION,
                promoted BOOLEAN NOT NULL DEFAULT false,
                source TEXT NOT NULL,
                import_key TEXT UNIQUE,
                labels TEXT NOT NULL DEFAULT '{}',
                created_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX incidents_open ON incidents (service, kind, started_at) WHERE ended_at IS NULL",
            "CREATE INDEX incidents_ended ON incidents (service, kind, ended_at)",
            "CREATE INDEX incidents_ended_all ON incidents (ended_at)",
            """CREATE TABLE incident_alerts (
                incident_id BIGINT NOT NULL REFERENCES incidents (id),
                alert_id BIGINT NOT NULL REFERENCES alerts (id),
                PRIMARY KEY (incident_id, alert_id)
            )""",
            "CREATE INDEX incident_alerts_by_alert ON incident_alerts (alert_id, incident_id)",
            """CREATE TABLE recoveries (
                incident_id BIGINT PRIMARY KEY REFERENCES incidents (id),
                service TEXT NOT NULL,
                severity TEXT NOT NULL,
                seconds DOUBLE PRECISION NOT NULL,
                recorded_at DOUBLE PRECISION NOT NULL
            )""",
        ),
    ),
    (
        2,
        "leases",
        (
            """CREATE TABLE leases (
                name TEXT PRIMARY KEY,
                holder TEXT NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL,
                since DOUBLE PRECISION NOT NULL
            )""",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

#: Take or renew a lease: granted when free, expired or already ours, all by the server's clock.
#: Returns a row only when granted.
LEASE_CLAIM = """
INSERT INTO leases AS l (name, holder, expires_at, since)
VALUES (%(name)s, %(holder)s, %(now)s + %(ttl)s, %(now)s)
ON CONFLICT (name) DO UPDATE
SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at,
    since = CASE WHEN l.holder = EXCLUDED.holder THEN l.since ELSE EXCLUDED.since END
WHERE l.holder = EXCLUDED.holder OR l.expires_at <= EXCLUDED.since
RETURNING l.holder
""".replace("%(now)s", "extract(epoch FROM clock_timestamp())::double precision")
#: Seconds a lease statement may take on the server (a lease is renewed every third of its ttl).
LEASE_STATEMENT_TIMEOUT = 2.0


# --- connection strings --------------------------------------------------------------------------------


def describe_dsn(params: Mapping[str, Any]) -> str:
    """``postgresql://user@host:port/dbname`` for parsed conninfo ``params``: never the password.

    What the DSN leaves out is filled as libpq would (``PGUSER``, ``PGHOST``, ``PGPORT``,
    ``PGDATABASE``, then the defaults), so the text names the database actually used.
    Several hosts (libpq failover) are listed as ``host1:port1,host2:port2``.
    """

    def get(key: str, env: str, default: str) -> str:
        return str(params.get(key) or os.environ.get(env) or default)

    try:
        default_user = getpass.getuser()
    except (KeyError, OSError):
        default_user = "postgres"
    user = get("user", "PGUSER", default_user)
    hosts = str(params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or "localhost").split(",")
    ports = get("port", "PGPORT", "5432").split(",")
    if len(ports) == 1:
        ports *= len(hosts)
    where = ",".join(
        f"{f'[{h}]' if ':' in h else h or 'localhost'}:{p or '5432'}" for h, p in zip(hosts, ports, strict=False)
    )
    return f"postgresql://{user}@{where}/{get('dbname', 'PGDATABASE', user)}"


def _message(exc: BaseException) -> str:
    """An exception's text on one line, with every registered secret scrubbed."""
    return redact(" ".join(str(exc).split()) or type(exc).__name__)


def _check_status(cur: psycopg.Cursor[TupleRow], expected: str, what: str) -> None:
    if cur.statusmessage != expected:
        raise StoreError(f"{what}: the server answered {cur.statusmessage!r}, not {expected!r}; nothing was stored")


# --- the incident rules' transaction ----------------------------------------------------------------------

_INCIDENT_COLS = "id, service, kind, severity, started_at, ended_at, open_alerts, last_end, window_end"


_ATTACH = "INSERT INTO incident_alerts (incident_id, alert_id) VALUES (%s, %s) ON CONFLICT DO NOTHING"
# Link once and, only when the link is new, count the alert as firing or move the incident's last end.
_ATTACH_FIRING = (
    "WITH linked AS (INSERT INTO incident_alerts (incident_id, alert_id) VALUES (%s, %s)"
    " ON CONFLICT DO NOTHING RETURNING incident_id)"
    " UPDATE incidents SET open_alerts = open_alerts + 1 WHERE id IN (SELECT incident_id FROM linked)"
)
_ATTACH_ENDED = (
    "WITH linked AS (INSERT INTO incident_alerts (incident_id, alert_id) VALUES (%s, %s)"
    " ON CONFLICT DO NOTHING RETURNING incident_id)"
    " UPDATE incidents SET last_end = greatest(coalesce(last_end, %s), %s) WHERE id IN (SELECT incident_id FROM linked)"
)


def _incident_row(r: tuple[Any, ...]) -> IncidentRow:
    return IncidentRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8])


class PgTx:
    """:class:`~exporter.continuity.incidents.IncidentTx` over one psycopg connection inside a transaction.

    The same statements as :class:`~exporter.continuity.store.tx.SqliteTx`, in PostgreSQL's
    dialect; where SQLite takes two statements (resolve an alert and update its incidents;
    link an alert and count it), this takes one, with a data-modifying ``WITH``: one round
    trip fewer.  psycopg prepares statements it runs often on a connection by itself.
    The writer's fast path (:class:`~exporter.continuity.store.pgbatch.BatchTx`) does the
    same in two round trips per batch; this is the reference it falls back on when a
    request fails, and what operations given as functions run on.
    """

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.cur = conn.cursor()

    def _one(self, sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
        self.cur.execute(sql, params)
        return self.cur.fetchone()

    def _all(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        self.cur.execute(sql, params)
        return self.cur.fetchall()

    def _run(self, sql: str, params: Sequence[Any]) -> None:
        self.cur.execute(sql, params)

    def get_alert(self, fingerprint: str, starts_ms: int) -> StoredAlert | None:
        row = self._one(
            "SELECT id, ends_at, severity FROM alerts WHERE fingerprint = %s AND starts_ms = %s",
            (fingerprint, starts_ms),
        )
        return None if row is None else StoredAlert(row[0], row[1], row[2])

    def insert_alert(self, ev: AlertEvent, now: float) -> int:
        row = self._one(
            "INSERT INTO alerts (fingerprint, starts_ms, starts_at, ends_at, severity, labels, source,"
            " first_seen, last_seen) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (ev.fingerprint, ev.starts_ms, ev.starts_at, ev.ends_at, ev.severity, ev.labels_json, ev.source, now, now),
        )
        assert row is not None
        return int(row[0])

    def touch_alert(self, alert_id: int, now: float) -> None:
        self._run("UPDATE alerts SET last_seen = %s, seen = seen + 1 WHERE id = %s", (now, alert_id))

    def resolve_alert(self, alert_id: int, ends_at: float) -> None:
        self._run(
            "WITH resolved AS (UPDATE alerts SET ends_at = %s WHERE id = %s)"
            " UPDATE incidents SET open_alerts = open_alerts - 1,"
            " last_end = greatest(coalesce(last_end, %s), %s)"
            " WHERE id IN (SELECT incident_id FROM incident_alerts WHERE alert_id = %s)",
            (ends_at, alert_id, ends_at, ends_at, alert_id),
        )

    def overlapping_incidents(self, service: str, kind: str, start: float, end: float | None) -> list[IncidentRow]:
        # end None: the span reaches to now, so every incident that started at all overlaps (no upper bound)
        upper = "" if end is None else " AND started_at <= %s"
        bound: tuple[Any, ...] = () if end is None else (end,)
        rows = self._all(
            f"SELECT {_INCIDENT_COLS} FROM incidents"  # noqa: S608 - constant column list and condition
            f" WHERE service = %s AND kind = %s AND ended_at IS NULL{upper}",
            (service, kind, *bound),
        )
        if rows:
            return [_incident_row(r) for r in rows]
        rows = self._all(
            f"SELECT {_INCIDENT_COLS} FROM incidents"  # noqa: S608 - constant column list and condition
            f" WHERE service = %s AND kind = %s AND ended_at >= %s{upper}",
            (service, kind, start, *bound),
        )
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
        row = self._one(
            "INSERT INTO incidents (service, kind, severity, opened_severity, started_at, ended_at, last_end,"
            " window_end, source, import_key, labels, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (service, kind, severity, severity, start, end, end, window_end, source, import_key, labels, now),
        )
        assert row is not None
        return int(row[0])

    def update_incident(self, incident_id: int, start: float, end: float | None, severity: str) -> None:
        self._run(
            "UPDATE incidents SET started_at = %s, ended_at = %s, severity = %s WHERE id = %s",
            (start, end, severity, incident_id),
        )

    def attach(self, incident_id: int, alert_id: int, firing: bool, end: float | None) -> None:
        if firing:
            self._run(_ATTACH_FIRING, (incident_id, alert_id))
        elif end is not None:
            self._run(_ATTACH_ENDED, (incident_id, alert_id, end, end))
        else:
            self._run(_ATTACH, (incident_id, alert_id))

    def incidents_of_alert(self, alert_id: int) -> list[IncidentRow]:
        rows = self._all(
            f"SELECT {_INCIDENT_COLS} FROM incidents"  # noqa: S608 - constant column list
            " WHERE id IN (SELECT incident_id FROM incident_alerts WHERE alert_id = %s)",
            (alert_id,),
        )
        return [_incident_row(r) for r in rows]

    def record_recovery(self, incident_id: int, service: str, severity: str, seconds: float, now: float) -> None:
        self._run(
            "INSERT INTO recoveries (incident_id, service, severity, seconds, recorded_at)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (incident_id, service, severity, seconds, now),
        )

    def firing_alerts(self, sources: Sequence[str]) -> list[tuple[int, str, int, float]]:
        rows = self._all(
            "SELECT id, fingerprint, starts_ms, first_seen FROM alerts WHERE ends_at IS NULL AND source = ANY(%s)",
            (list(sources),),
        )
        return [(int(r[0]), r[1], int(r[2]), float(r[3])) for r in rows]

    def overrun_maintenance(self, now: float) -> list[IncidentRow]:
        rows = self._all(
            f"SELECT {_INCIDENT_COLS} FROM incidents"  # noqa: S608 - constant column list
            " WHERE kind = 'maintenance' AND ended_at IS NULL AND NOT promoted AND window_end <= %s",
            (now,),
        )
        return [_incident_row(r) for r in rows]

    def firing_alerts_of(self, incident_id: int) -> list[StoredAlert]:
        rows = self._all(
            "SELECT a.id, a.ends_at, a.severity FROM alerts a JOIN incident_alerts ia ON ia.alert_id = a.id"
            " WHERE ia.incident_id = %s AND a.ends_at IS NULL",
            (incident_id,),
        )
        return [StoredAlert(r[0], r[1], r[2]) for r in rows]

    def mark_promoted(self, incident_id: int) -> None:
        self._run("UPDATE incidents SET promoted = true WHERE id = %s", (incident_id,))

    def import_key_exists(self, key: str) -> bool:
        return self._one("SELECT 1 FROM incidents WHERE import_key = %s", (key,)) is not None


#: A write: (name in :data:`~exporter.continuity.store.tx.OPS`, arguments), or a function of the transaction.
PgOp = tuple[str, tuple[Any, ...]] | Callable[[PgTx], Any]


# --- schema -------------------------------------------------------------------------------------------------


def migrate(conn: Conn, where: str) -> int:
    """Apply pending migrations in one transaction holding the write lock.  Returns the version in force.

    ``conn`` is in autocommit mode (outside a transaction).  Raises StoreError for a
    schema newer than :data:`SCHEMA_VERSION`; psycopg errors pass through.
    """
    conn.execute(f"BEGIN; SELECT pg_advisory_xact_lock({LOCK_KEY})")
    try:
        if conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,):
            # Only when missing: CREATE ... IF NOT EXISTS would need the CREATE privilege every time.
            conn.execute(
                "CREATE TABLE schema_migrations ("
                " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
            )
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        current = int(row[0]) if row is not None else 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{where}: schema version {current} was written by a newer mail-continuity-exporter"
                f" (this one knows up to {SCHEMA_VERSION}); refusing to open it"
            )
        for version, description, statements in MIGRATIONS:
            if version <= current:
                continue
            for sql in statements:
                conn.execute(sql)
            conn.execute(
                "INSERT INTO schema_migrations (version, description, applied_at) VALUES (%s, %s, %s)",
                (version, description, time.time()),
            )
            log.info("store schema migrated", extra={"kv": {"version": version, "store": where}})
        _check_status(conn.execute("COMMIT"), "COMMIT", f"{where}: schema migration")
    except BaseException:
        if not conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")
        raise
    return SCHEMA_VERSION


def _check_durability(conn: Conn, where: str) -> None:
    row = conn.execute(
        "SELECT current_setting('fsync'), current_setting('synchronous_commit'),"
        " pg_is_in_recovery(), current_setting('transaction_read_only')"
    ).fetchone()
    assert row is not None
    fsync, sync_commit, recovery, read_only = (str(x) for x in row)
    if fsync != "on":
        raise StoreError(
            f"{where}: the server runs with fsync = {fsync}: a commit may be lost in a crash, and the"
            " exporter acknowledges a notification only once it is stored durably; refusing to write"
            " (turn fsync on)"
        )
    if sync_commit == "off":
        raise StoreError(
            f"{where}: synchronous_commit is off for this session (server, database or role setting):"
            " a commit may return before it is on disk, and the exporter acknowledges a notification"
            " only once it is stored durably; refusing to write (set synchronous_commit to on or local)"
        )
    if recovery == "true" or read_only == "on":
        raise StoreError(
            f"{where}: the server is a read-only standby (or the session is read-only); the store needs"
            " the primary (with several hosts, add target_session_attrs=read-write)"
        )


# --- the lease --------------------------------------------------------------------------------------------


class PgLease:
    """The lease statements, on a connection of their own (autocommit, short timeouts).

    Not the writer's connection: a renewal must not queue behind a batch of writes, nor a
    batch wait for a renewal.  Not the read pool's either: those are read-only.  Calls run
    in a thread (:func:`asyncio.to_thread`); one at a time.
    """

    def __init__(self, conninfo: str, where: str) -> None:
        self._conninfo = make_conninfo(conninfo, connect_timeout=max(2, math.ceil(LEASE_STATEMENT_TIMEOUT)))
        self._where = where
        self._conn: Conn | None = None
        self._lock = threading.Lock()

    def _connection(self) -> Conn:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self._conn = None
            conn = psycopg.connect(self._conninfo, autocommit=True)
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)",
                (f"{int(LEASE_STATEMENT_TIMEOUT * 1000)}ms",) * 2,
            )
            self._conn = conn
        return conn

    def _call(self, fn: Callable[[Conn], T]) -> T:
        if not self._lock.acquire(timeout=LEASE_STATEMENT_TIMEOUT * 2):
            raise StoreError(f"{self._where}: lease: the previous lease statement is still running")
        try:
            return fn(self._connection())
        except psycopg.Error as exc:
            if self._conn is not None and (self._conn.broken or self._conn.closed):
                self._conn = None
            raise StoreError(f"{self._where}: lease: {_message(exc)}") from None
        finally:
            self._lock.release()

    def claim(self, name: str, holder: str, ttl: float) -> str | None:
        def fn(conn: Conn) -> str | None:
            row = conn.execute(LEASE_CLAIM, {"name": name, "holder": holder, "ttl": float(ttl)}).fetchone()
            if row is not None:
                return str(row[0])
            row = conn.execute(
                "SELECT holder FROM leases WHERE name = %s AND expires_at > extract(epoch FROM clock_timestamp())",
                (name,),
            ).fetchone()
            return None if row is None else str(row[0])

        return self._call(fn)

    def release(self, name: str, holder: str) -> None:
        self._call(lambda conn: conn.execute("DELETE FROM leases WHERE name = %s AND holder = %s", (name, holder)))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(psycopg.Error):
                    self._conn.close()
                self._conn = None


# --- the writer ---------------------------------------------------------------------------------------------


class PgWriter(GroupCommitThread):
    """The writer thread: group commit over one connection, reconnecting by itself when it is lost.

    A batch of named operations (every write of the store) takes the fast path,
    :func:`~exporter.continuity.store.pgbatch.run_batch`: five statements in two round
    trips, whatever the batch holds.  When one of its requests fails, the batch is rolled
    back and replayed statement by statement through :class:`PgTx`, a savepoint around
    each request.  Operations given as functions (tests, tools) always go statement by
    statement, the fast path first without savepoints.  The session runs with
    :data:`WRITER_SETTINGS`.
    """

    def __init__(self, conninfo: str, where: str, timeout: float) -> None:
        super().__init__("continuity-store-pg-writer")
        self.conninfo = conninfo
        self.where = where
        self.timeout = timeout
        self.conn: Conn | None = None
        self.tx: PgTx | None = None
        self.connects = 0  # connections opened (the first one and every reconnection)
        self._retry_at = 0.0
        self._backoff = RECONNECT_MIN
        self._last_error: StoreError | None = None
        #: Batches of named operations go through :func:`~.pgbatch.run_batch` (False: statement by statement).
        self.batching = True
        #: Settings of each new session (False-y: the server's: for comparisons).
        self.settings = WRITER_SETTINGS
        self.alert_seq = 0  # the OID of the alerts' identity sequence, read at each connection
        self.round_trips = 0  # of the batched transactions (statistics for tests and benchmarks)
        self.statements = 0  # of the batched transactions
        self.replays = 0  # batches replayed statement by statement after a failing request

    # --- the connection ---

    def _open(self) -> Conn:
        try:
            conn = psycopg.connect(self.conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise StoreError(f"{self.where}: cannot connect: {_message(exc)}") from None
        try:
            conn.execute(
                "SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false),"
                " set_config('idle_in_transaction_session_timeout', %s, false)",
                (
                    f"{int(self.timeout * 1000)}ms",
                    f"{int(STATEMENT_TIMEOUT * 1000)}ms",
                    f"{int(IDLE_IN_TRANSACTION_TIMEOUT * 1000)}ms",
                ),
            )
            _check_durability(conn, self.where)
            migrate(conn, self.where)  # at open; after a reconnection it only checks the version (or recreates)
            for name, value in self.settings:
                conn.execute("SELECT set_config(%s, %s, false)", (name, value))
            self.alert_seq = alert_sequence(conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, psycopg.Error):
                raise StoreError(f"{self.where}: cannot open the incident store: {_message(exc)}") from None
            raise
        self.connects += 1
        return conn

    def _connection(self) -> tuple[Conn, PgTx]:
        if self.conn is not None and self.tx is not None and not self.conn.closed:
            return self.conn, self.tx
        now = time.monotonic()
        if now < self._retry_at and self._last_error is not None:
            raise StoreError(f"{self._last_error} (retrying)")
        try:
            conn = self._open()
        except StoreError as exc:
            self._retry_at = now + self._backoff
            self._backoff = min(self._backoff * 2, RECONNECT_MAX)
            if self._last_error is None:
                log.error("store connection failed", extra={"kv": {"store": self.where, "err": str(exc)}})
            self._last_error = exc
            raise
        if self._last_error is not None:
            log.warning("store reconnected", extra={"kv": {"store": self.where}})
        self._backoff, self._last_error = RECONNECT_MIN, None
        self.conn, self.tx = conn, PgTx(conn)
        return conn, self.tx

    def _drop(self) -> None:
        """After a failed batch: keep the connection if it is healthy (rolled back), else close it."""
        conn = self.conn
        if conn is None:
            return
        if not conn.closed and not conn.broken:
            try:
                if conn.info.transaction_status != pq.TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")
                return
            except psycopg.Error:
                pass
        log.error("store connection lost", extra={"kv": {"store": self.where}})
        with contextlib.suppress(psycopg.Error):
            conn.close()
        self.conn = self.tx = None

    # --- GroupCommitThread ---

    def setup(self) -> None:
        self.conn = self._open()
        self.tx = PgTx(self.conn)

    def teardown(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
            self.conn = self.tx = None

    def commit(self, ops: Sequence[Any]) -> list[tuple[Any, BaseException | None]]:
        try:
            conn, tx = self._connection()
        except StoreError as exc:
            return [(None, exc)] * len(ops)
        try:
            return self._transact(conn, tx, ops)
        except Exception as exc:  # the batch as a whole: lost connection, lock timeout, failed COMMIT
            if isinstance(exc, StoreError):
                failure = exc
            elif isinstance(exc, errors.LockNotAvailable):
                failure = StoreError(
                    f"{self.where}: another writer held the store's write lock for more than {self.timeout:g} s;"
                    " nothing was stored"
                )
            elif conn.broken or conn.closed:
                failure = StoreError(
                    f"{self.where}: the connection was lost before the commit was confirmed: {_message(exc)}"
                )
            else:
                failure = StoreError(f"{self.where}: store commit failed: {_message(exc)}")
            self._drop()
            log.error("store commit failed", extra={"kv": {"err": str(failure), "requests": len(ops)}})
            return [(None, failure)] * len(ops)

    def _begin(self, conn: Conn) -> None:
        conn.execute(f"BEGIN; SELECT pg_advisory_xact_lock({LOCK_KEY})")  # one round trip

    def _transact(self, conn: Conn, tx: PgTx, ops: Sequence[PgOp]) -> list[tuple[Any, BaseException | None]]:
        outcomes: list[tuple[Any, BaseException | None]]
        if self.batching and batchable(ops):
            done = run_batch(conn, ops, LOCK_KEY, self.alert_seq)  # type: ignore[arg-type]  # (batchable: named ops)
            if done is not None:
                results, commit, batch = done
                self.round_trips += batch.round_trips
                self.statements += batch.statements
                _check_status(commit, "COMMIT", f"{self.where}: store commit")
                return [(r, None) for r in results]
            # a request failed (or the working set could not follow it): nothing was committed;
            # replay the batch statement by statement, a savepoint around each request
            self.replays += 1
            if conn.info.transaction_status != pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
            self._begin(conn)
            outcomes = [self._apply_alone(conn, tx, op) for op in ops]
        else:
            self._begin(conn)
            try:
                outcomes = [(apply_op(tx, op), None) for op in ops]
            except Exception:
                if conn.broken or conn.closed:
                    raise
                conn.execute("ROLLBACK")
                self._begin(conn)
                outcomes = [self._apply_alone(conn, tx, op) for op in ops]
        if conn.info.transaction_status != pq.TransactionStatus.INTRANS:
            raise StoreError(f"{self.where}: the transaction was aborted; nothing was stored")
        _check_status(conn.execute("COMMIT"), "COMMIT", f"{self.where}: store commit")
        return outcomes

    def _apply_alone(self, conn: Conn, tx: PgTx, op: PgOp) -> tuple[Any, BaseException | None]:
        conn.execute("SAVEPOINT request")
        try:
            result = apply_op(tx, op)
        except Exception as exc:
            if conn.broken or conn.closed:
                raise
            conn.execute("ROLLBACK TO SAVEPOINT request")
            err = (
                exc if isinstance(exc, StoreError) else StoreError(f"{self.where}: store write failed: {_message(exc)}")
            )
            if err is not exc:
                err.__cause__ = exc
            log.error("store request failed", extra={"kv": {"err": str(err)}})
            return None, err
        conn.execute("RELEASE SAVEPOINT request")
        return result, None


# --- the store ----------------------------------------------------------------------------------------------


class PostgresStore:
    """:class:`Store` in a PostgreSQL database, shared by any number of exporters.

    ``dsn`` is a libpq connection string (``postgresql://user:password@host:port/dbname``
    or ``host=... dbname=...``); the password may be in it, or come from ``PGPASSWORD`` or
    a ``.pgpass`` file.  ``readonly=True`` opens no writer and never modifies the
    database (listings, exports).  ``timeout`` bounds the wait for a connection, for the
    write lock and for a connection attempt (seconds).  ``pool_size`` is the most
    connections reads use at once.
    """

    def __init__(self, dsn: str, *, readonly: bool = False, pool_size: int = 4, timeout: float = 10.0) -> None:
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error:
            # (psycopg's message quotes the text around the error, which may be the password)
            raise StoreError("invalid PostgreSQL connection string (not shown: it may hold a password)") from None
        for secret in (params.get("password"), None if params.get("password") else os.environ.get("PGPASSWORD")):
            if secret:
                register(str(secret))
        self.readonly = readonly
        self.timeout = float(timeout)
        self.pool_size = max(1, pool_size)
        self.description = describe_dsn(params)
        defaults: dict[str, Any] = {
            "application_name": "mail-continuity-exporter",
            "connect_timeout": max(2, math.ceil(self.timeout)),
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": int(STATEMENT_TIMEOUT * 1000),
        }
        if not readonly:
            defaults["target_session_attrs"] = "read-write"
        self._conninfo = make_conninfo("", **{**defaults, **params})
        self._writer: PgWriter | None = None
        self._lease = PgLease(self._conninfo, self.description)
        self._pool: ConnectionPool[Conn] | None = None
        self._closed = False
        self._pending: list[Request] = []  # requests of this event-loop iteration, handed over together

    def __repr__(self) -> str:
        return f"PostgresStore({self.description!r})"

    # --- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._closed:
            raise StoreError("the incident store is not open")
        if self._writer is not None or self._pool is not None:
            raise StoreError(f"{self.description}: the incident store is open already")
        if not self.readonly:
            await asyncio.to_thread(self._start_writer)  # connects, checks durability, migrates
        pool: ConnectionPool[Conn] = ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=self.pool_size,
            open=False,
            name="continuity-store-read",
            configure=self._configure_reader,
            check=ConnectionPool.check_connection,  # a connection broken by a server restart is replaced, not used
            kwargs={"autocommit": True},
            timeout=self.timeout,
            # give up a reconnection series early: the next read then starts a fresh one at once,
            # instead of waiting for a backed-off attempt long after the server came back
            reconnect_timeout=max(5.0, self.timeout),
        )
        await asyncio.to_thread(pool.open, False)
        self._pool = pool
        if self.readonly:
            try:
                await self._read(self._check_readable)
            except StoreError:
                self._pool = None
                await asyncio.to_thread(pool.close, 5.0)
                raise

    def _start_writer(self) -> None:
        writer = PgWriter(self._conninfo, self.description, self.timeout)
        writer.start()
        writer.ready.wait()
        if writer.open_error is not None:
            err = writer.open_error
            if isinstance(err, StoreError):
                raise err
            raise StoreError(f"{self.description}: cannot open the incident store: {_message(err)}") from None
        self._writer = writer

    def _configure_reader(self, conn: Conn) -> None:
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{int(STATEMENT_TIMEOUT * 1000)}ms",))

    def _check_readable(self, conn: Conn) -> None:
        row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        if row is None or not row[0]:
            raise StoreError(f"{self.description}: no incident store here")
        row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        version = None if row is None else row[0]
        if version is None or version > SCHEMA_VERSION:
            raise StoreError(f"{self.description}: schema version {version} is not one this version reads")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        writer = self._writer
        if writer is not None:
            self._flush()
            writer.requests.put(STOP)
            await asyncio.to_thread(writer.join, self.timeout + STATEMENT_TIMEOUT)
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.close, 5.0)
        await asyncio.to_thread(self._lease.close)

    @property
    def stats(self) -> tuple[int, int]:
        """(transactions committed, requests committed): their ratio is the group-commit batch size."""
        w = self._writer
        return (w.batches, w.committed) if w is not None else (0, 0)

    # --- plumbing --------------------------------------------------------------------------------

    async def _write(self, op: PgOp) -> Any:
        writer = self._writer
        if self._closed or writer is None or not writer.is_alive():
            raise StoreError("the incident store is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.append(Request(op, loop, fut))
        if len(self._pending) == 1:
            # Hand over everything this loop iteration produces at once: one wake-up of the
            # writer thread per batch rather than per request.
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        if self._pending and self._writer is not None:
            batch, self._pending = self._pending, []
            self._writer.requests.put(batch)

    async def _read(self, fn: Callable[[Conn], T]) -> T:
        pool = self._pool
        if self._closed or pool is None:
            raise StoreError("the incident store is not open")

        def run() -> T:
            try:
                with pool.connection() as conn, conn.transaction():  # one snapshot for every query in fn
                    return fn(conn)
            except psycopg.Error as exc:
                raise StoreError(f"{self.description}: store read failed: {_message(exc)}") from None

        return await asyncio.to_thread(run)

    # --- the lease -----------------------------------------------------------------------------------

    #: Several exporters may share this store: the once-only jobs need the lease.
    shared = True

    async def lease(self, name: str, holder: str, ttl: float) -> str | None:
        if self._closed or self.readonly:
            raise StoreError("the incident store is not open for writing")
        return await asyncio.to_thread(self._lease.claim, name, holder, ttl)

    async def release(self, name: str, holder: str) -> None:
        if self._closed or self.readonly:
            return
        await asyncio.to_thread(self._lease.release, name, holder)

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
        def due(conn: Conn) -> bool:
            row = conn.execute(
                "SELECT 1 FROM incidents WHERE kind = 'maintenance' AND ended_at IS NULL AND NOT promoted"
                " AND window_end <= %s LIMIT 1",
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
        counts_sql = "".join(", count(*) FILTER (WHERE seconds <= %s)" for _ in bounds)

        def fn(c: Conn) -> Summary:
            spans = tuple(
                Span(r[0], r[1], r[2], r[3], r[4])
                for r in c.execute(
                    "SELECT service, kind, severity, started_at, ended_at FROM incidents"
                    " WHERE kind IN ('incident', 'drill') AND (ended_at IS NULL OR ended_at >= %s) ORDER BY id",
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
            recoveries: dict[tuple[str, str], RecoveryHistogram] = {}
            for row in c.execute(
                f"SELECT service, severity, count(*), coalesce(sum(seconds), 0){counts_sql}"  # noqa: S608
                " FROM recoveries GROUP BY service, severity",  # (counts_sql: placeholders only)
                bounds,
            ):
                counts = (*(int(x or 0) for x in row[4:]), int(row[2]))
                recoveries[(row[0], row[1])] = RecoveryHistogram(
                    (*bounds, math.inf), counts, float(row[3]), int(row[2])
                )
            last_drill = {
                r[0]: (float(r[1]), float(r[1]) - float(r[2]))
                for r in c.execute(
                    "SELECT DISTINCT ON (service) service, ended_at, started_at FROM incidents"
                    " WHERE kind = 'drill' AND ended_at IS NOT NULL ORDER BY service, ended_at DESC, id DESC"
                )
            }
            open_rows = tuple(
                OpenIncident(
                    int(r[0]),
                    r[1],
                    r[2],
                    r[3],
                    int(r[4]),
                    tuple(sorted(x for x in (r[5] or ()) if x)),
                )
                for r in c.execute(
                    "SELECT i.id, i.service, i.severity, i.started_at, i.open_alerts,"
                    " (SELECT array_agg(name) FROM (SELECT DISTINCT name FROM ("
                    "   SELECT a.labels::json ->> 'alertname' AS name FROM incident_alerts ia"
                    "   JOIN alerts a ON a.id = ia.alert_id WHERE ia.incident_id = i.id LIMIT 1000) AS n"
                    "  LIMIT 10) AS d)"
                    " FROM incidents i WHERE i.kind = 'incident' AND i.ended_at IS NULL"
                    " ORDER BY i.started_at, i.id LIMIT 100"
                )
            )
            return Summary(spans, totals, open_counts, oldest, recoveries, last_drill, open_rows)

        return await self._read(fn)

    async def firing_check_outages(self) -> list[tuple[str, int, float]]:
        def fn(c: Conn) -> list[tuple[str, int, float]]:
            return [firing_check_outage(r) for r in c.execute(FIRING_CHECK_OUTAGES)]

        return await self._read(fn)

    async def incidents(
        self, *, service: str | None = None, open_only: bool = False, limit: int | None = None
    ) -> list[IncidentRecord]:
        sql, params = incidents_query("%s", service=service, open_only=open_only, limit=limit)

        def fn(c: Conn) -> list[IncidentRecord]:
            return [incident_record(r) for r in c.execute(sql, params)]

        return await self._read(fn)

    async def alert_keys(self) -> list[tuple[str, int]]:
        def fn(c: Conn) -> list[tuple[str, int]]:
            return [(r[0], int(r[1])) for r in c.execute(ALERT_KEYS)]

        return await self._read(fn)
