"""Copy a whole incident store into another: SQLite to PostgreSQL and back (``incidents migrate``).

Both stores have the same tables with the same meaning at the same schema version
(:mod:`.schema` and :mod:`.postgres` keep their version numbers in step), so the copy is
table by table, ids included, rows in id order:

1. the source is opened read-only (its schema must be one this code knows);
2. the destination is opened read-write once, which creates or migrates its schema, and
   must hold no incident data: a copy never merges two histories;
3. every row is written in **one** destination transaction (all or nothing); on
   PostgreSQL the identity sequences are then moved past the copied ids;
4. both stores are read again and compared: every alert key, every incident record and
   the figures (:meth:`~.protocol.Store.summary`) must be equal, or the command fails.

The exporter writing the source should be stopped meanwhile (new notifications would be
left behind); one writing the destination must not run yet.
"""

from __future__ import annotations

__all__ = ["TABLES", "Location", "migrate_store", "parse_location"]

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from exporter.continuity.store.protocol import Store
from exporter.continuity.store.schema import DB_NAME
from exporter.continuity.store.schema import connect as sqlite_connect
from exporter.continuity.store.sqlite import SqliteStore
from exporter.core.errors import StoreError
from exporter.core.secrets import redact

#: The tables copied, parents first, with their columns (the same in both stores).
TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "alerts",
        (
            "id",
            "fingerprint",
            "starts_ms",
            "starts_at",
            "ends_at",
            "severity",
            "labels",
            "source",
            "first_seen",
            "last_seen",
            "seen",
        ),
    ),
    (
        "incidents",
        (
            "id",
            "service",
            "kind",
            "severity",
            "opened_severity",
            "started_at",
            "ended_at",
            "open_alerts",
            "last_end",
            "window_end",
            "promoted",
            "source",
            "import_key",
            "labels",
            "created_at",
        ),
    ),
    ("incident_alerts", ("incident_id", "alert_id")),
    ("recoveries", ("incident_id", "service", "severity", "seconds", "recorded_at")),
)
_ORDER = {"alerts": "id", "incidents": "id", "incident_alerts": "incident_id, alert_id", "recoveries": "incident_id"}
#: Columns stored as 0/1 in SQLite and as BOOLEAN in PostgreSQL.
_BOOLEANS = {("incidents", "promoted")}

Rows = dict[str, list[tuple[Any, ...]]]

# The statements, from the fixed table and column names above (no outside text in them).
_SELECT = {t: f"SELECT {', '.join(c)} FROM {t} ORDER BY {_ORDER[t]}" for t, c in TABLES}  # noqa: S608 - constants
_COUNT = {t: f"SELECT count(*) FROM {t}" for t, _ in TABLES}  # noqa: S608 - constants
_INSERT = {
    (t, mark): f"INSERT INTO {t} ({', '.join(c)}) VALUES ({', '.join([mark] * len(c))})"  # noqa: S608 - constants
    for t, c in TABLES
    for mark in ("?", "%s")
}


@dataclass(frozen=True)
class Location:
    """Where a store is: ``sqlite`` (the storage directory) or ``postgresql`` (a libpq URL)."""

    kind: Literal["sqlite", "postgresql"]
    where: str

    def store(self, *, readonly: bool) -> Store:
        if self.kind == "sqlite":
            return SqliteStore(self.where, readonly=readonly, writer="thread")
        from exporter.continuity.store.postgres import PostgresStore

        return PostgresStore(self.where, readonly=readonly)


def parse_location(text: str) -> Location:
    """``sqlite:DIR`` (or ``sqlite:DIR/mail-continuity.sqlite``) or ``postgresql://...``."""
    if text.startswith(("postgresql://", "postgres://")):
        return Location("postgresql", text)
    if text.startswith("sqlite:"):
        path = Path(text.removeprefix("sqlite:"))
        if path.name == DB_NAME:
            path = path.parent
        if not str(path):
            raise StoreError("sqlite: needs the storage directory, e.g. sqlite:/var/lib/mail-continuity-exporter")
        return Location("sqlite", str(path))
    raise StoreError(f"expected sqlite:DIR or a postgresql:// URL, got {text[:20]!r}...")


# --- raw rows -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _sqlite(where: str, readonly: bool) -> Iterator[sqlite3.Connection]:
    conn = sqlite_connect(Path(where) / DB_NAME, readonly=readonly)
    try:
        yield conn
    finally:
        conn.close()


def _read(loc: Location) -> Rows:
    out: Rows = {}
    if loc.kind == "sqlite":
        with _sqlite(loc.where, readonly=True) as conn:
            conn.execute("BEGIN")
            for table, _ in TABLES:
                out[table] = conn.execute(_SELECT[table]).fetchall()
            conn.execute("COMMIT")
        return out
    import psycopg

    with psycopg.connect(loc.where) as pg, pg.transaction():
        pg.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        for table, _ in TABLES:
            out[table] = pg.execute(_SELECT[table]).fetchall()
    return out


def _convert(rows: Rows, to: Literal["sqlite", "postgresql"]) -> Rows:
    out: Rows = {}
    for table, cols in TABLES:
        flags = [i for i, c in enumerate(cols) if (table, c) in _BOOLEANS]
        if not flags:
            out[table] = rows[table]
            continue
        fixed = []
        for row in rows[table]:
            values = list(row)
            for i in flags:
                values[i] = bool(values[i]) if to == "postgresql" else int(bool(values[i]))
            fixed.append(tuple(values))
        out[table] = fixed
    return out


def _write(loc: Location, rows: Rows) -> None:
    rows = _convert(rows, loc.kind)
    if loc.kind == "sqlite":
        with _sqlite(loc.where, readonly=False) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                _refuse_data(loc, [conn.execute(_COUNT[t]).fetchone()[0] for t, _ in TABLES])
                for table, _ in TABLES:
                    conn.executemany(_INSERT[table, "?"], rows[table])
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        return
    import psycopg

    from exporter.continuity.store.postgres import LOCK_KEY

    with psycopg.connect(loc.where) as pg, pg.transaction():
        pg.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        counts = []
        for table, _ in TABLES:
            row = pg.execute(_COUNT[table]).fetchone()
            counts.append(row[0] if row else 0)
        _refuse_data(loc, counts)
        with pg.cursor() as cur:
            for table, _ in TABLES:
                cur.executemany(_INSERT[table, "%s"], rows[table])
        # the next ids come after the copied ones
        pg.execute("SELECT setval(pg_get_serial_sequence('alerts', 'id'), coalesce(max(id), 0) + 1, false) FROM alerts")
        pg.execute(
            "SELECT setval(pg_get_serial_sequence('incidents', 'id'), coalesce(max(id), 0) + 1, false) FROM incidents"
        )


def _refuse_data(loc: Location, counts: list[int]) -> None:
    if any(counts):
        held = ", ".join(f"{n} {t}" for (t, _), n in zip(TABLES, counts, strict=True) if n)
        raise StoreError(f"the destination already holds incident data ({held}): nothing copied")


# --- the command ---------------------------------------------------------------------------------------


async def _fingerprint(store: Store, now: float) -> tuple[Any, ...]:
    """What must be equal in both stores: alert keys, incident records, and the figures."""
    summary = await store.summary(now, 0.0, (60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0))
    return (sorted(await store.alert_keys()), await store.incidents(), summary)


async def migrate_store(source: str, destination: str, now: float) -> dict[str, int]:
    """Copy every row of ``source`` into the empty ``destination``; returns the rows copied per
    table.  Raises StoreError when a store cannot be opened or the destination holds data
    (nothing written), and when the two stores do not read the same after the copy (the
    destination keeps the copy, for inspection)."""
    src, dst = parse_location(source), parse_location(destination)
    if src == dst:
        raise StoreError("source and destination are the same store")
    reader = src.store(readonly=True)
    await reader.open()  # checks the schema is one this code can read
    try:
        writer = dst.store(readonly=False)
        await writer.open()  # creates or migrates the destination's schema
        await writer.close()
        try:
            rows = await asyncio.to_thread(_read, src)
            await asyncio.to_thread(_write, dst, rows)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"copy failed: {exc}") from None
        except StoreError:
            raise
        except Exception as exc:  # psycopg.Error: its text names no password (the DSN is not quoted)
            raise StoreError(redact(f"copy failed: {type(exc).__name__}: {exc}")) from None
        check = dst.store(readonly=True)
        await check.open()
        try:
            if await _fingerprint(reader, now) != await _fingerprint(check, now):
                raise StoreError("the destination does not read the same as the source after the copy")
        finally:
            await check.close()
    finally:
        await reader.close()
    return {table: len(rows[table]) for table, _ in TABLES}
