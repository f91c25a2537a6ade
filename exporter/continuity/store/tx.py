"""One write transaction on the SQLite file, and the write operations run inside it.

:class:`SqliteTx` implements :class:`~exporter.continuity.incidents.IncidentTx` (the
operations the incident rules need) in SQL over one connection that is inside a
transaction; the rules themselves live in :mod:`exporter.continuity.incidents`.

A write is an operation name and its arguments (plain data, so that it can cross to the
writer process), applied by :func:`apply_op` inside the writer's transaction.  Each
operation is a function of the database state, so replaying it after a rollback is safe.

On the way to the writer process an operation's events travel as plain tuples
(:func:`encode_op`, :func:`decode_op`), and its :class:`Changes` come back as one
(:func:`encode_result`, :func:`decode_result`): pickling frozen dataclasses runs Python
for every object, and the exporter's event loop pays for it on every notification.
"""

from __future__ import annotations

__all__ = ["OPS", "Op", "SqliteTx", "apply_op", "decode_op", "decode_result", "encode_op", "encode_result"]

import dataclasses
import math
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from exporter.continuity.incidents import (
    AlertEvent,
    Assignment,
    Changes,
    ImportRecord,
    IncidentRow,
    IncidentTx,
    StoredAlert,
    apply_event,
    import_record,
    promote_overruns,
    resolve_missing,
)


def _incident_row(r: tuple[Any, ...]) -> IncidentRow:
    return IncidentRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8])


_INCIDENT_COLS = "id, service, kind, severity, started_at, ended_at, open_alerts, last_end, window_end"


class SqliteTx:
    """:class:`~exporter.continuity.incidents.IncidentTx` over one sqlite3 connection in a transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.c = conn
        # One cursor for every statement: ``Connection.execute`` makes a cursor per call,
        # which costs about as much as running a small statement.  Every method reads its
        # rows before the next statement, so one cursor is enough.
        self._cur = conn.cursor()

    def get_alert(self, fingerprint: str, starts_ms: int) -> StoredAlert | None:
        row = self._cur.execute(
            "SELECT id, ends_at, severity FROM alerts WHERE fingerprint = ? AND starts_ms = ?", (fingerprint, starts_ms)
        ).fetchone()
        return None if row is None else StoredAlert(row[0], row[1], row[2])

    def insert_alert(self, ev: AlertEvent, now: float) -> int:
        cur = self._cur.execute(
            "INSERT INTO alerts (fingerprint, starts_ms, starts_at, ends_at, severity, labels, source,"
            " first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ev.fingerprint, ev.starts_ms, ev.starts_at, ev.ends_at, ev.severity, ev.labels_json, ev.source, now, now),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def touch_alert(self, alert_id: int, now: float) -> None:
        self._cur.execute("UPDATE alerts SET last_seen = ?, seen = seen + 1 WHERE id = ?", (now, alert_id))

    def resolve_alert(self, alert_id: int, ends_at: float) -> None:
        self._cur.execute("UPDATE alerts SET ends_at = ? WHERE id = ?", (ends_at, alert_id))
        self._cur.execute(
            "UPDATE incidents SET open_alerts = open_alerts - 1,"
            " last_end = max(coalesce(last_end, ?), ?)"
            " WHERE id IN (SELECT incident_id FROM incident_alerts WHERE alert_id = ?)",
            (ends_at, ends_at, alert_id),
        )

    def overlapping_incidents(self, service: str, kind: str, start: float, end: float | None) -> list[IncidentRow]:
        upper = math.inf if end is None else end
        rows = self._cur.execute(
            f"SELECT {_INCIDENT_COLS} FROM incidents"  # noqa: S608 - constant column list
            " WHERE service = ? AND kind = ? AND ended_at IS NULL AND started_at <= ?",
            (service, kind, upper),
        ).fetchall()
        if rows:
            return [_incident_row(r) for r in rows]
        rows = self._cur.execute(
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
        cur = self._cur.execute(
            "INSERT INTO incidents (service, kind, severity, opened_severity, started_at, ended_at, last_end,"
            " window_end, source, import_key, labels, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (service, kind, severity, severity, start, end, end, window_end, source, import_key, labels, now),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def update_incident(self, incident_id: int, start: float, end: float | None, severity: str) -> None:
        self._cur.execute(
            "UPDATE incidents SET started_at = ?, ended_at = ?, severity = ? WHERE id = ?",
            (start, end, severity, incident_id),
        )

    def attach(self, incident_id: int, alert_id: int, firing: bool, end: float | None) -> None:
        cur = self._cur.execute(
            "INSERT OR IGNORE INTO incident_alerts (incident_id, alert_id) VALUES (?, ?)", (incident_id, alert_id)
        )
        if cur.rowcount:
            if firing:
                self._cur.execute("UPDATE incidents SET open_alerts = open_alerts + 1 WHERE id = ?", (incident_id,))
            elif end is not None:
                self._cur.execute(
                    "UPDATE incidents SET last_end = max(coalesce(last_end, ?), ?) WHERE id = ?",
                    (end, end, incident_id),
                )

    def incidents_of_alert(self, alert_id: int) -> list[IncidentRow]:
        rows = self._cur.execute(
            f"SELECT {_INCIDENT_COLS} FROM incidents"  # noqa: S608 - constant column list
            " WHERE id IN (SELECT incident_id FROM incident_alerts WHERE alert_id = ?)",
            (alert_id,),
        ).fetchall()
        return [_incident_row(r) for r in rows]

    def record_recovery(self, incident_id: int, service: str, severity: str, seconds: float, now: float) -> None:
        self._cur.execute(
            "INSERT OR IGNORE INTO recoveries (incident_id, service, severity, seconds, recorded_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (incident_id, service, severity, seconds, now),
        )

    def firing_alerts(self, sources: Sequence[str]) -> list[tuple[int, str, int, float]]:
        marks = ",".join("?" * len(sources))
        return self._cur.execute(
            "SELECT id, fingerprint, starts_ms, first_seen FROM alerts"  # noqa: S608 - placeholders only
            f" WHERE ends_at IS NULL AND source IN ({marks})",
            tuple(sources),
        ).fetchall()

    def overrun_maintenance(self, now: float) -> list[IncidentRow]:
        rows = self._cur.execute(
            f"SELECT {_INCIDENT_COLS} FROM incidents"  # noqa: S608 - constant column list
            " WHERE kind = 'maintenance' AND ended_at IS NULL"
            " AND promoted = 0 AND window_end <= ?",
            (now,),
        ).fetchall()
        return [_incident_row(r) for r in rows]

    def firing_alerts_of(self, incident_id: int) -> list[StoredAlert]:
        rows = self._cur.execute(
            "SELECT a.id, a.ends_at, a.severity FROM alerts a JOIN incident_alerts ia ON ia.alert_id = a.id"
            " WHERE ia.incident_id = ? AND a.ends_at IS NULL",
            (incident_id,),
        ).fetchall()
        return [StoredAlert(r[0], r[1], r[2]) for r in rows]

    def mark_promoted(self, incident_id: int) -> None:
        self._cur.execute("UPDATE incidents SET promoted = 1 WHERE id = ?", (incident_id,))

    def import_key_exists(self, key: str) -> bool:
        return self._cur.execute("SELECT 1 FROM incidents WHERE import_key = ?", (key,)).fetchone() is not None


# --- write operations -------------------------------------------------------------------------


def _op_ingest(tx: IncidentTx, events: Sequence[AlertEvent], now: float) -> Changes:
    changes = Changes()
    for ev in events:
        apply_event(tx, ev, now, changes)
    return changes


def _op_reconcile(
    tx: IncidentTx, active: frozenset[tuple[str, int]], events: Sequence[AlertEvent], fetched_at: float, now: float
) -> Changes:
    changes = Changes()
    resolve_missing(tx, active, fetched_at, now, changes)
    for ev in events:
        apply_event(tx, ev, now, changes)
    return changes


def _op_promote(tx: IncidentTx, now: float) -> Changes:
    changes = Changes()
    promote_overruns(tx, now, changes)
    return changes


def _op_import(tx: IncidentTx, records: Sequence[ImportRecord], now: float) -> Changes:
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
Op = tuple[str, tuple[Any, ...]] | Callable[[SqliteTx], Any]
TxT = TypeVar("TxT", bound=IncidentTx)


def apply_op(tx: TxT, op: tuple[str, tuple[Any, ...]] | Callable[[TxT], Any]) -> Any:
    """Run one operation in ``tx``: the OPS run on any store's :class:`IncidentTx` (PostgreSQL's too)."""
    if callable(op):
        return op(tx)
    name, args = op
    return OPS[name](tx, *args)


# --- the writer process's wire format -------------------------------------------------------------------
#
# Plain tuples pickle in C; dataclasses pickle through Python (``__getstate__`` per object).

#: Operations whose arguments hold a list of AlertEvents, and where: (name, index of the list).
_EVENT_ARGS = {"ingest": 0, "reconcile": 1}
_CHANGES_FIELDS = tuple(f.name for f in dataclasses.fields(Changes))


def _event_row(ev: AlertEvent) -> tuple[Any, ...]:
    return (
        ev.fingerprint,
        ev.starts_ms,
        ev.starts_at,
        ev.ends_at,
        ev.labels,
        ev.severity,
        ev.source,
        tuple((a.service, a.kind, a.window_end) for a in ev.assignments),
    )


def _row_event(row: tuple[Any, ...]) -> AlertEvent:
    fingerprint, starts_ms, starts_at, ends_at, labels, severity, source, assignments = row
    return AlertEvent(
        fingerprint,
        starts_ms,
        starts_at,
        ends_at,
        labels,
        severity,
        source,
        tuple(Assignment(service, kind, window_end) for service, kind, window_end in assignments),
    )


def encode_op(name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """An operation's arguments as plain data for the writer process (the inverse of :func:`decode_op`)."""
    at = _EVENT_ARGS.get(name)
    if at is None:
        return args
    return (*args[:at], [_event_row(ev) for ev in args[at]], *args[at + 1 :])


def decode_op(name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The arguments :func:`encode_op` encoded, as the operation takes them."""
    at = _EVENT_ARGS.get(name)
    if at is None:
        return args
    return (*args[:at], [_row_event(row) for row in args[at]], *args[at + 1 :])


def encode_result(result: Any) -> Any:
    """An operation's result as plain data (a :class:`Changes` becomes a tagged tuple)."""
    if type(result) is Changes:
        return ("changes", *(getattr(result, f) for f in _CHANGES_FIELDS))
    return result


def decode_result(value: Any) -> Any:
    """The result :func:`encode_result` encoded."""
    if type(value) is tuple and value and value[0] == "changes":
        return Changes(*value[1:])
    return value
