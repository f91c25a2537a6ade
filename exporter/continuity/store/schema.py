"""The SQLite file: its name, its schema migrations and how a connection to it is set up.

**Durability settings** (:func:`connect`).  WAL mode with ``synchronous=FULL``: every
commit is fsynced (the WAL file) before the commit returns, so a notification that was
answered 200 survives ``kill -9`` *and* a power cut.  (WAL with ``synchronous=NORMAL``
survives a process crash but may lose the last commits on power loss: it fsyncs only at
checkpoints.  The exporter promises Alertmanager that a 200 means "stored", so it pays
the fsync.)  Automatic checkpoints are off; :class:`Checkpointer` runs them in the
background so that a commit costs one fsync of the WAL.

**Schema migrations** are versioned in ``schema_version`` and applied at open, all in
one transaction (:func:`migrate`): a failed migration leaves the file as it was.  A
file written by a newer version (a higher schema version than this code knows) is
refused.
"""

from __future__ import annotations

__all__ = [
    "CHECKPOINT_EVERY",
    "CHECKPOINT_SIZE",
    "DB_NAME",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "WAL_SIZE_LIMIT",
    "Checkpointer",
    "connect",
    "migrate",
]

import contextlib
import logging
import sqlite3
import threading
import time
from pathlib import Path

from exporter.core.errors import StoreError

DB_NAME = "mail-continuity.sqlite"
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
    (
        2,
        "leases",
        (
            # The lease of the once-only jobs.  Used by the PostgreSQL store, where several
            # exporters share one database; a SQLite store has one exporter, which always
            # holds it.  Created here too so that version N means the same tables in both.
            """CREATE TABLE leases (
                name TEXT PRIMARY KEY,
                holder TEXT NOT NULL,
                expires_at REAL NOT NULL,
                since REAL NOT NULL
            )""",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


def connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
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
        # Checkpoints run in the background (Checkpointer), not inside a commit: a commit
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


class Checkpointer(threading.Thread):
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
