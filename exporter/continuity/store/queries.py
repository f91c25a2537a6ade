"""Read queries that the SQLite and PostgreSQL stores phrase identically.

Both stores have the same tables and columns (:mod:`.schema`, :mod:`.postgres`'s
``MIGRATIONS``), so a read that needs no dialect-specific SQL is written once here; each
store passes its parameter placeholder (``?`` for sqlite3, ``%s`` for psycopg) and runs
the statement on its own connection.
"""

from __future__ import annotations

__all__ = ["ALERT_KEYS", "FIRING_CHECK_OUTAGES", "firing_check_outage", "incident_record", "incidents_query"]

from collections.abc import Sequence
from typing import Any

from exporter.continuity.store.records import IncidentRecord

#: (fingerprint, starts_ms, starts_at) of the exporter's own check outages still open.
FIRING_CHECK_OUTAGES = (
    "SELECT fingerprint, starts_ms, starts_at FROM alerts WHERE ends_at IS NULL AND source = 'check' ORDER BY id"
)
#: Every stored (fingerprint, starts_ms), in insertion order.
ALERT_KEYS = "SELECT fingerprint, starts_ms FROM alerts ORDER BY id"


def firing_check_outage(row: Sequence[Any]) -> tuple[str, int, float]:
    return str(row[0]), int(row[1]), float(row[2])


def incidents_query(
    placeholder: str, *, service: str | None, open_only: bool, limit: int | None
) -> tuple[str, list[Any]]:
    """The statement and parameters of :meth:`Store.incidents`; rows go through :func:`incident_record`."""
    where = []
    params: list[Any] = []
    if service is not None:
        where.append(f"i.service = {placeholder}")
        params.append(service)
    if open_only:
        where.append("i.ended_at IS NULL")
    sql = (
        "SELECT i.id, i.service, i.kind, i.severity, i.started_at, i.ended_at, i.source, i.labels,"
        " (SELECT count(*) FROM incident_alerts ia WHERE ia.incident_id = i.id),"
        " (SELECT a.labels FROM incident_alerts ia JOIN alerts a ON a.id = ia.alert_id"
        "  WHERE ia.incident_id = i.id ORDER BY a.starts_at, a.id LIMIT 1)"
        " FROM incidents i"
    )
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY i.started_at, i.id"
    if limit is not None:
        sql += f" LIMIT {placeholder}"
        params.append(limit)
    return sql, params


def incident_record(row: Sequence[Any]) -> IncidentRecord:
    """A row of :func:`incidents_query`: the record's own labels (imports), else its earliest alert's."""
    labels = row[7] if row[7] != "{}" or row[9] is None else row[9]
    return IncidentRecord(int(row[0]), row[1], row[2], row[3], row[4], row[5], row[6], int(row[8]), labels)
