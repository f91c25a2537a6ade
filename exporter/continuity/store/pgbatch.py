"""The PostgreSQL writer's fast path: a batch of writes in five statements and two round trips.

:class:`~exporter.continuity.store.postgres.PgTx` sends each read and write of the
incident rules as a statement of its own: about four round trips per alert, each costing
the writer thread (psycopg) and the server some 100 us of CPU.  :class:`BatchTx` is the
same :class:`~exporter.continuity.incidents.IncidentTx` over a working set of the batch,
in one transaction on one connection in pipeline mode:

1. **Read** (``BEGIN``, the advisory lock and one query, sent together: one round trip;
   the query runs after the lock is granted, so it sees every commit of the other
   writers): every alert occurrence the batch's events name, with the ids of the
   incidents it is linked to, or, when it is not stored yet, a fresh id from the alerts'
   identity sequence; and every open incident of the services the events belong to, with
   every incident linked to an occurrence of the batch.
2. **Apply**: the unchanged rules (:func:`~exporter.continuity.store.tx.apply_op`) run
   against that working set, in memory.  It is exact, not a guess: this transaction holds
   the write lock, so nobody else changes these rows, and each write of the rules is
   applied to the working set as its SQL would apply it to the rows (``open_alerts``,
   ``last_end``, a link made once, the first recovery kept...).  Writes are kept, not
   sent.  What the working set does not hold (an occurrence outside the batch, the closed
   incidents a late alert may join, a new incident's id, the reconciliation's and the
   overrun check's queries) is read from the database after the kept writes were sent:
   every read sees every earlier write of the transaction.
3. **Write** (one statement with ``COMMIT``: one round trip): every kept write in one
   statement of data-modifying ``WITH`` parts over JSON lists of rows: new alerts, touched
   or resolved alerts, new links, changed incidents (with their final values: the working
   set holds exactly what the database holds plus this transaction's writes), recoveries.

What the working set cannot follow exactly (an insert of an occurrence that exists, a row
that is not there, a link the working set did not know of: the links are inserted without
``ON CONFLICT``, so that one is an error) raises :class:`Unmodelled` or fails in the
database; so does any error of a request.  The writer then rolls the transaction back and
replays the batch statement by statement with ``PgTx`` and a savepoint around each
request (the reference behaviour): a failing request fails alone, the others are
committed once.  Operations given as functions (tests, tools) always take that path.
Nothing here changes durability: a batch is acknowledged only when ``COMMIT`` answered
``COMMIT``, under the server's durable settings the writer checked.
"""

from __future__ import annotations

__all__ = ["BatchTx", "Unmodelled", "alert_sequence", "batchable", "run_batch", "working_set"]

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from exporter.continuity.incidents import KINDS, AlertEvent, IncidentRow, StoredAlert
from exporter.continuity.store.tx import OPS, apply_op

Conn = psycopg.Connection[TupleRow]

_INCIDENT_COLS = "id, service, kind, severity, started_at, ended_at, open_alerts, last_end, window_end"

# One statement: the occurrences of the batch (``ord`` set), each with its row and links, or a
# fresh id from the identity sequence when it is not stored; then (``ord`` NULL) the open incidents
# of the services and the incidents linked to the occurrences.
_PREFETCH = (
    "WITH w AS (SELECT * FROM unnest(%(fps)b::text[], %(mss)b::bigint[]) WITH ORDINALITY AS w(fp, ms, ord))"
    " SELECT w.ord, a.id, a.ends_at, a.severity,"
    " CASE WHEN a.id IS NULL THEN nextval(%(seq)s::bigint::oid::regclass) END,"
    " (SELECT array_agg(ia.incident_id) FROM incident_alerts ia WHERE ia.alert_id = a.id),"
    " NULL::text, NULL::text, NULL::float8, NULL::bigint, NULL::float8, NULL::float8"
    " FROM w LEFT JOIN alerts a ON a.fingerprint = w.fp AND a.starts_ms = w.ms"
    " UNION ALL"
    " SELECT NULL, i.id, i.ended_at, i.severity, NULL, NULL,"
    " i.service, i.kind, i.started_at, i.open_alerts, i.last_end, i.window_end"
    " FROM incidents i WHERE i.id IN ("
    " SELECT id FROM incidents WHERE ended_at IS NULL AND service = ANY(%(services)b::text[])"
    " UNION SELECT ia.incident_id FROM w JOIN alerts a ON a.fingerprint = w.fp AND a.starts_ms = w.ms"
    " JOIN incident_alerts ia ON ia.alert_id = a.id)"
)
_ALERTS_BY_ID = (
    "SELECT a.id, a.fingerprint, a.starts_ms, a.ends_at, a.severity,"
    " (SELECT array_agg(ia.incident_id) FROM incident_alerts ia WHERE ia.alert_id = a.id)"
    " FROM alerts a WHERE a.id = ANY(%b::bigint[])"
)
_INCIDENTS_OF_ALERTS = (
    f"SELECT {_INCIDENT_COLS} FROM incidents"  # noqa: S608 - constant column list
    " WHERE id IN (SELECT incident_id FROM incident_alerts WHERE alert_id = ANY(%b::bigint[]))"
)
_INCIDENTS_BY_ID = f"SELECT {_INCIDENT_COLS} FROM incidents WHERE id = ANY(%b::bigint[])"  # noqa: S608
_OPEN_INCIDENTS = (
    f"SELECT {_INCIDENT_COLS} FROM incidents"  # noqa: S608 - constant column list
    " WHERE service = %s AND kind = %s AND ended_at IS NULL"
)
_ENDED_INCIDENTS = (
    f"SELECT {_INCIDENT_COLS} FROM incidents"  # noqa: S608 - constant column list
    " WHERE service = %s AND kind = %s AND ended_at >= %s"
)
# One statement writes every kept write: a JSON list of rows per kind of write (JSON: one
# parameter each, cheap to encode and to read).  Each row is changed by one part only: new and
# stored alerts are apart, promotions ride on the incidents' update.
_FLUSH = (
    "WITH new_alerts AS (INSERT INTO alerts (id, fingerprint, starts_ms, starts_at, ends_at, severity, labels,"
    " source, first_seen, last_seen, seen) SELECT * FROM json_to_recordset(%(a)s::json) AS r(id bigint,"
    " fingerprint text, starts_ms bigint, starts_at float8, ends_at float8, severity text, labels text,"
    " source text, first_seen float8, last_seen float8, seen bigint)),"
    " changed_alerts AS (UPDATE alerts AS a SET last_seen = coalesce(v.last_seen, a.last_seen),"
    " seen = a.seen + v.n, ends_at = coalesce(v.ends_at, a.ends_at)"
    " FROM json_to_recordset(%(u)s::json) AS v(id bigint, last_seen float8, n bigint, ends_at float8)"
    " WHERE a.id = v.id),"
    " new_links AS (INSERT INTO incident_alerts (incident_id, alert_id)"
    " SELECT * FROM json_to_recordset(%(l)s::json) AS r(incident_id bigint, alert_id bigint)),"
    " changed_incidents AS (UPDATE incidents AS i SET started_at = v.started_at, ended_at = v.ended_at,"
    " severity = v.severity, open_alerts = v.open_alerts, last_end = v.last_end,"
    " promoted = i.promoted OR v.promoted"
    " FROM json_to_recordset(%(i)s::json) AS v(id bigint, started_at float8, ended_at float8,"
    " severity text, open_alerts bigint, last_end float8, promoted boolean) WHERE i.id = v.id)"
    " INSERT INTO recoveries (incident_id, service, severity, seconds, recorded_at)"
    " SELECT * FROM json_to_recordset(%(r)s::json) AS r(incident_id bigint, service text, severity text,"
    " seconds float8, recorded_at float8) ON CONFLICT DO NOTHING"
)
_INSERT_INCIDENT = (
    "INSERT INTO incidents (service, kind, severity, opened_severity, started_at, ended_at, last_end,"
    " window_end, source, import_key, labels, created_at)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"
)
# Exact floats (the shortest text that reads back as the same double), text as is, no NaN.
_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


class Unmodelled(Exception):
    """The working set cannot follow this step exactly: replay the batch statement by statement."""


def _f(x: float | None) -> float | None:
    return None if x is None else float(x)


class _Alert:
    """An occurrence in the working set.  Stored ones carry their pending changes; new ones their whole row."""

    __slots__ = ("ends_at", "ends_pending", "id", "last_seen", "new", "row", "seen", "severity")

    def __init__(self, alert_id: int, ends_at: float | None, severity: str) -> None:
        self.id = alert_id
        self.ends_at = ends_at
        self.severity = severity
        self.new = False
        self.row: tuple[Any, ...] = ()  # new: (fingerprint, starts_ms, starts_at, labels, source, first_seen)
        self.last_seen: float | None = None  # pending: last_seen to write (None: unchanged)
        self.seen = 0  # pending: repeats to add (new: the whole count)
        self.ends_pending = False  # pending: ends_at to write


class _Incident:
    """An incident row in the working set: what the database holds plus this transaction's writes."""

    __slots__ = (
        "ended_at",
        "id",
        "kind",
        "last_end",
        "open_alerts",
        "promote",
        "service",
        "severity",
        "started_at",
        "window_end",
    )

    def __init__(self, r: Sequence[Any]) -> None:  # r: the columns of _INCIDENT_COLS
        self.id = int(r[0])
        self.service: str = r[1]
        self.kind: str = r[2]
        self.severity: str = r[3]
        self.started_at: float = r[4]
        self.ended_at: float | None = r[5]
        self.open_alerts = int(r[6])
        self.last_end: float | None = r[7]
        self.window_end: float | None = r[8]
        self.promote = False  # pending: mark promoted

    def row(self) -> IncidentRow:
        return IncidentRow(
            self.id,
            self.service,
            self.kind,
            self.severity,
            self.started_at,
            self.ended_at,
            self.open_alerts,
            self.last_end,
            self.window_end,
        )


class BatchTx:
    """:class:`~exporter.continuity.incidents.IncidentTx` over a batch's working set, writing behind.

    Used inside a pipeline (``conn.pipeline()``) of a transaction that holds the write lock.
    Invariants: every incident in :attr:`incidents` is exactly the database row plus this
    transaction's kept writes; for every (service, kind) in :attr:`open_known`, every open
    incident of it is in :attr:`incidents`; :attr:`links` holds every link of each
    occurrence it names, and every incident it links to is in :attr:`incidents`;
    :attr:`alerts` is exact for the keys it holds (None: not stored).
    """

    def __init__(self, conn: Conn, alert_seq: int) -> None:
        self.conn = conn
        self.alert_seq = alert_seq  # the OID of the alerts' identity sequence
        self.alerts: dict[tuple[str, int], _Alert | None] = {}
        self.by_id: dict[int, _Alert] = {}
        self.links: dict[int, set[int]] = {}
        self.incidents: dict[int, _Incident] = {}
        self.open_known: set[tuple[str, str]] = set()
        self.ids: list[int] = []  # fresh alert ids, smallest last
        # kept writes
        self.new_alerts: list[_Alert] = []
        self.changed_alerts: dict[int, _Alert] = {}
        self.new_links: list[tuple[int, int]] = []
        self.changed_incidents: dict[int, _Incident] = {}
        self.recoveries: dict[int, tuple[int, str, str, float, float]] = {}
        self.round_trips = 0  # (statistics)
        self.statements = 0

    # --- reading ---

    def _execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> psycopg.Cursor[TupleRow]:
        cur = self.conn.cursor()
        cur.execute(sql, params)
        self.statements += 1
        return cur

    def _query(self, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Rows of a query, after the kept writes (one round trip)."""
        self.flush()
        cur = self._execute(sql, params)
        self.round_trips += 1
        return cur.fetchall()

    def _take_incidents(self, rows: Iterable[Sequence[Any]]) -> list[_Incident]:
        """The working set's incidents for rows just read (rows already there are the same: reads follow writes)."""
        out = []
        for r in rows:
            inc = self.incidents.get(int(r[0]))
            if inc is None:
                inc = self.incidents[int(r[0])] = _Incident(r)
            out.append(inc)
        return out

    def _take_alert(self, key: tuple[str, int], r: Sequence[Any]) -> None:
        """An occurrence read with its links: r is (id, ends_at, severity, incident ids)."""
        a = _Alert(int(r[0]), r[1], r[2])
        self.alerts[key] = a
        self.by_id[a.id] = a
        self.links[a.id] = {int(i) for i in r[3] or ()}

    def prefetch(self, keys: Sequence[tuple[str, int]], services: Sequence[str]) -> None:
        """Read the working set of ``keys`` and ``services``: one statement, one round trip (with what is queued)."""
        rows = self._query(
            _PREFETCH,
            {
                "fps": [k[0] for k in keys],
                "mss": [k[1] for k in keys],
                "services": list(services),
                "seq": self.alert_seq,
            },
        )
        incidents = []
        for r in rows:
            if r[0] is None:  # an incident
                incidents.append((r[1], r[6], r[7], r[3], r[8], r[2], r[9], r[10], r[11]))
            elif r[1] is None:  # an occurrence not stored: a fresh id for it
                self.alerts[keys[int(r[0]) - 1]] = None
                self.ids.append(int(r[4]))
            else:
                self._take_alert(keys[int(r[0]) - 1], (r[1], r[2], r[3], r[5]))
        self._take_incidents(incidents)
        self.ids.sort(reverse=True)
        self.open_known.update((s, k) for s in services for k in KINDS)

    def _alert(self, alert_id: int) -> _Alert:
        """The occurrence ``alert_id`` with its links and their incidents (read when not in the working set)."""
        a = self.by_id.get(alert_id)
        if a is not None:
            return a
        self.flush()
        alerts = self._execute(_ALERTS_BY_ID, ([alert_id],))
        incidents = self._execute(_INCIDENTS_OF_ALERTS, ([alert_id],))
        self.round_trips += 1
        rows = alerts.fetchall()
        if not rows:
            raise Unmodelled(f"no alert {alert_id}")
        for r in rows:
            self._take_alert((r[1], int(r[2])), (r[0], r[3], r[4], r[5]))
        self._take_incidents(incidents.fetchall())
        return self.by_id[alert_id]

    def _incident(self, incident_id: int) -> _Incident:
        inc = self.incidents.get(incident_id)
        if inc is None:
            found = self._take_incidents(self._query(_INCIDENTS_BY_ID, ([incident_id],)))
            if not found:
                raise Unmodelled(f"no incident {incident_id}")
            inc = found[0]
        return inc

    # --- IncidentTx ---

    def get_alert(self, fingerprint: str, starts_ms: int) -> StoredAlert | None:
        key = (fingerprint, starts_ms)
        if key not in self.alerts:  # not an event of the batch: read it as the prefetch would
            self.prefetch([key], [])
        a = self.alerts[key]
        return None if a is None else StoredAlert(a.id, a.ends_at, a.severity)

    def insert_alert(self, ev: AlertEvent, now: float) -> int:
        key = (ev.fingerprint, ev.starts_ms)
        if self.get_alert(*key) is not None:
            raise Unmodelled("insert of a stored alert")  # the replay gets the unique violation
        if not self.ids:
            raise Unmodelled("no fresh alert id")  # (the prefetch allocates one per occurrence not stored)
        a = _Alert(self.ids.pop(), ev.ends_at, ev.severity)
        a.new = True
        a.row = (ev.fingerprint, ev.starts_ms, float(ev.starts_at), ev.labels_json, ev.source, float(now))
        a.last_seen, a.seen = float(now), 1
        self.alerts[key] = a
        self.by_id[a.id] = a
        self.links[a.id] = set()
        self.new_alerts.append(a)
        return a.id

    def touch_alert(self, alert_id: int, now: float) -> None:
        a = self._alert(alert_id)
        a.last_seen = float(now)
        a.seen += 1
        if not a.new:
            self.changed_alerts[a.id] = a

    def resolve_alert(self, alert_id: int, ends_at: float) -> None:
        a = self._alert(alert_id)
        a.ends_at = float(ends_at)
        if not a.new:
            a.ends_pending = True
            self.changed_alerts[a.id] = a
        for incident_id in self.links[alert_id]:
            inc = self._incident(incident_id)
            inc.open_alerts -= 1
            inc.last_end = ends_at if inc.last_end is None else max(inc.last_end, ends_at)
            self.changed_incidents[inc.id] = inc

    def overlapping_incidents(self, service: str, kind: str, start: float, end: float | None) -> list[IncidentRow]:
        if (service, kind) not in self.open_known:
            self._take_incidents(self._query(_OPEN_INCIDENTS, (service, kind)))
            self.open_known.add((service, kind))
        found = [
            inc
            for inc in self.incidents.values()
            if inc.ended_at is None
            and inc.service == service
            and inc.kind == kind
            and (end is None or inc.started_at <= end)
        ]
        if not found:
            upper = "" if end is None else " AND started_at <= %s"
            bound: tuple[Any, ...] = () if end is None else (end,)
            found = self._take_incidents(self._query(_ENDED_INCIDENTS + upper, (service, kind, start, *bound)))
        return [inc.row() for inc in sorted(found, key=lambda i: (i.started_at, i.id))]

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
        rows = self._query(
            _INSERT_INCIDENT,
            (service, kind, severity, severity, start, end, end, window_end, source, import_key, labels, now),
        )
        incident_id = int(rows[0][0])
        self.incidents[incident_id] = _Incident((incident_id, service, kind, severity, start, end, 0, end, window_end))
        return incident_id

    def update_incident(self, incident_id: int, start: float, end: float | None, severity: str) -> None:
        inc = self._incident(incident_id)
        inc.started_at, inc.ended_at, inc.severity = start, end, severity
        self.changed_incidents[inc.id] = inc

    def attach(self, incident_id: int, alert_id: int, firing: bool, end: float | None) -> None:
        inc = self._incident(incident_id)
        self._alert(alert_id)
        links = self.links[alert_id]
        if incident_id in links:
            return  # linked already: nothing changes (ON CONFLICT DO NOTHING)
        links.add(incident_id)
        self.new_links.append((incident_id, alert_id))
        if firing:
            inc.open_alerts += 1
        elif end is not None:
            inc.last_end = end if inc.last_end is None else max(inc.last_end, end)
        else:
            return
        self.changed_incidents[inc.id] = inc

    def incidents_of_alert(self, alert_id: int) -> list[IncidentRow]:
        self._alert(alert_id)
        return [self._incident(i).row() for i in sorted(self.links[alert_id])]

    def record_recovery(self, incident_id: int, service: str, severity: str, seconds: float, now: float) -> None:
        # ON CONFLICT DO NOTHING: the first recovery of an incident stays
        self.recoveries.setdefault(incident_id, (incident_id, service, severity, float(seconds), float(now)))

    def firing_alerts(self, sources: Sequence[str]) -> list[tuple[int, str, int, float]]:
        rows = self._query(
            "SELECT id, fingerprint, starts_ms, first_seen FROM alerts WHERE ends_at IS NULL AND source = ANY(%s)",
            (list(sources),),
        )
        return [(int(r[0]), r[1], int(r[2]), float(r[3])) for r in rows]

    def overrun_maintenance(self, now: float) -> list[IncidentRow]:
        rows = self._query(
            f"SELECT {_INCIDENT_COLS} FROM incidents"  # noqa: S608 - constant column list
            " WHERE kind = 'maintenance' AND ended_at IS NULL AND NOT promoted AND window_end <= %s",
            (now,),
        )
        return [inc.row() for inc in self._take_incidents(rows)]

    def firing_alerts_of(self, incident_id: int) -> list[StoredAlert]:
        rows = self._query(
            "SELECT a.id, a.ends_at, a.severity FROM alerts a JOIN incident_alerts ia ON ia.alert_id = a.id"
            " WHERE ia.incident_id = %s AND a.ends_at IS NULL",
            (incident_id,),
        )
        return [StoredAlert(r[0], r[1], r[2]) for r in rows]

    def mark_promoted(self, incident_id: int) -> None:
        inc = self._incident(incident_id)
        inc.promote = True
        self.changed_incidents[inc.id] = inc

    def import_key_exists(self, key: str) -> bool:
        return bool(self._query("SELECT 1 FROM incidents WHERE import_key = %s", (key,)))

    # --- writing ---

    def flush(self) -> None:
        """Queue the kept writes in the pipeline as one statement (sent with the next read or sync)."""
        if not (self.new_alerts or self.changed_alerts or self.new_links or self.changed_incidents or self.recoveries):
            return
        parts = {
            "a": [
                {
                    "id": a.id,
                    "fingerprint": a.row[0],
                    "starts_ms": a.row[1],
                    "starts_at": a.row[2],
                    "ends_at": _f(a.ends_at),
                    "severity": a.severity,
                    "labels": a.row[3],
                    "source": a.row[4],
                    "first_seen": a.row[5],
                    "last_seen": a.last_seen,
                    "seen": a.seen,
                }
                for a in self.new_alerts
            ],
            "u": [
                {
                    "id": a.id,
                    "last_seen": a.last_seen,
                    "n": a.seen,
                    "ends_at": _f(a.ends_at) if a.ends_pending else None,
                }
                for a in self.changed_alerts.values()
            ],
            "l": [{"incident_id": i, "alert_id": a} for i, a in self.new_links],
            "i": [
                {
                    "id": i.id,
                    "started_at": float(i.started_at),
                    "ended_at": _f(i.ended_at),
                    "severity": i.severity,
                    "open_alerts": i.open_alerts,
                    "last_end": _f(i.last_end),
                    "promoted": i.promote,
                }
                for i in self.changed_incidents.values()
            ],
            "r": [
                {"incident_id": r[0], "service": r[1], "severity": r[2], "seconds": r[3], "recorded_at": r[4]}
                for r in self.recoveries.values()
            ],
        }
        self._execute(_FLUSH, {k: _json(v) for k, v in parts.items()})
        for a in self.new_alerts:
            a.new, a.row = False, ()
        for a in (*self.new_alerts, *self.changed_alerts.values()):
            a.last_seen, a.seen, a.ends_pending = None, 0, False
        for i in self.changed_incidents.values():
            i.promote = False
        self.new_alerts, self.changed_alerts, self.new_links = [], {}, []
        self.changed_incidents, self.recoveries = {}, {}


# --- the batch ---------------------------------------------------------------------------------------------


def batchable(ops: Sequence[Any]) -> bool:
    """Whether every operation is one of the named :data:`~exporter.continuity.store.tx.OPS` (not a function)."""
    return all(isinstance(op, tuple) and len(op) == 2 and op[0] in OPS for op in ops)


def working_set(ops: Sequence[tuple[str, tuple[Any, ...]]]) -> tuple[list[tuple[str, int]], list[str]]:
    """The occurrence keys (in order, once each) and the services the batch's events name."""
    keys: dict[tuple[str, int], None] = {}
    services: dict[str, None] = {}
    for name, args in ops:
        events: Sequence[AlertEvent] = args[0] if name == "ingest" else args[1] if name == "reconcile" else ()
        for ev in events:
            keys.setdefault((ev.fingerprint, ev.starts_ms), None)
            for a in ev.assignments:
                services.setdefault(a.service, None)
    return list(keys), sorted(services)


def alert_sequence(conn: Conn) -> int:
    """The OID of the alerts' identity sequence (the prefetch draws fresh ids from it): once per connection."""
    row = conn.execute("SELECT pg_get_serial_sequence('alerts', 'id')::regclass::oid").fetchone()
    assert row is not None
    return int(row[0])


def run_batch(
    conn: Conn, ops: Sequence[tuple[str, tuple[Any, ...]]], lock_key: int, alert_seq: int
) -> tuple[list[Any], psycopg.Cursor[TupleRow], BatchTx] | None:
    """Apply ``ops`` in one transaction on ``conn`` (autocommit mode, idle) and send ``COMMIT``.

    Returns each operation's result, the ``COMMIT``'s cursor (its status tells whether the
    transaction committed) and the working set, or None when a request failed or could
    not be followed: nothing of the batch is committed, and the caller rolls the
    transaction back.  Errors of ``BEGIN``, of the write lock and of the connection propagate.
    """
    keys, services = working_set(ops)
    tx = BatchTx(conn, alert_seq)
    locked = False
    try:
        with conn.pipeline() as pipeline:
            tx._execute("BEGIN", ())
            tx._execute(f"SELECT pg_advisory_xact_lock({int(lock_key)})", ())
            if keys or services:
                tx.prefetch(keys, services)  # waits for the lock
            else:
                pipeline.sync()
                tx.round_trips += 1
            locked = True
            results = [apply_op(tx, op) for op in ops]
            tx.flush()
            commit = tx._execute("COMMIT", ())
            pipeline.sync()
            tx.round_trips += 1
    except Exception:
        if not locked or conn.broken or conn.closed:
            raise
        return None
    return results, commit, tx
