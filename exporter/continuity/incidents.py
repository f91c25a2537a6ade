"""Incidents from alerts: which service an alert belongs to, and how incidents open and close.

The rules (docs/continuity.md has the long form):

- **Matching.**  An alert belongs to every configured service whose ``incident_match``
  labels it carries, all equal (an empty match takes every alert).
- **Kind.**  For each service it matches, an alert is a *drill* when it is labelled
  ``drill="true"``, else *maintenance* when its ``startsAt`` falls inside one of the
  service's maintenance windows, else an *incident*.  Drills and maintenance are kept
  apart from incidents: they never count in incident totals, MTTR, MTBF or downtime.
- **Alert occurrences.**  An alert occurrence is keyed by (fingerprint, startsAt to the
  millisecond).  Each is stored once; repeats of it (Alertmanager's repeat_interval,
  regrouping, retries) change nothing but its last-seen time.  Its state only moves
  from firing to resolved, never back: a stale firing repeat that arrives after the
  resolved notification, or a resolved notification that arrives before the firing
  one, both end with one resolved occurrence.  A flapping alert (firing, resolved,
  firing again) has a new ``startsAt`` each time, so each flap is a new occurrence.
- **Grouping.**  Per service and kind, an occurrence joins the incident whose span
  ([start, end], open incidents reaching to now) overlaps its own span, preferring the
  open incident; otherwise it opens a new incident.  So an incident opens at the first
  firing ``startsAt`` and closes when the last of its alerts resolves, at the latest
  ``endsAt``.  A late occurrence that starts before its incident moves the start back;
  one that overlaps a closed incident while still firing reopens it.  Incidents are
  never merged or deleted afterwards, so the totals only grow.
- **Severity** is the ``severity`` label, lower-cased and bounded to ``critical``,
  ``warning``, ``info`` or ``other``.  An incident's severity is its most severe alert's;
  ``mail_incidents_total`` counts it under the severity it opened with (counters never
  move between label sets).
- **Maintenance overrun.**  An alert that started inside a window and is still firing
  when the window ends opens an incident at the window's end (:func:`promote_overruns`).

The logic runs against :class:`IncidentTx`, the operations one store transaction
offers, so that the SQLite store (and a future PostgreSQL one) only does storage.
"""

from __future__ import annotations

__all__ = [
    "KINDS",
    "SEVERITIES",
    "AlertEvent",
    "Assignment",
    "Changes",
    "Classifier",
    "ImportRecord",
    "IncidentRow",
    "IncidentTx",
    "MaintenanceSpan",
    "apply_event",
    "events_from_notification",
    "import_record",
    "promote_overruns",
    "resolve_missing",
    "severity_of",
]

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from exporter.config import MaintenanceWindow, ServiceConfig
from exporter.continuity.webhook import Notification, parse_time, seconds

SEVERITIES: tuple[str, ...] = ("critical", "warning", "info", "other")
_RANK = {"other": 0, "info": 1, "warning": 2, "critical": 3}
KINDS: tuple[str, ...] = ("incident", "drill", "maintenance")

LabelPairs = tuple[tuple[str, str], ...]
_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def severity_of(value: str) -> str:
    """The bounded severity of a ``severity`` label value."""
    v = value.strip().lower()
    return v if v in _RANK else "other"


def _worse(a: str, b: str) -> str:
    return a if _RANK.get(a, 0) >= _RANK.get(b, 0) else b


# --- classification -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MaintenanceSpan:
    service: str
    start: float
    end: float


def parse_maintenance(windows: Iterable[MaintenanceWindow]) -> tuple[MaintenanceSpan, ...]:
    """Config windows as Unix-time spans.  Raises ``ValueError`` for a bad time (config validation
    rejects those first)."""
    out = []
    for w in windows:
        start, end = parse_time(w.start), parse_time(w.end)
        if start is None or end is None:
            raise ValueError("maintenance windows need real times")
        out.append(MaintenanceSpan(w.service, seconds(start), seconds(end)))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Assignment:
    """An alert's place in one service: as an incident, a drill or maintenance."""

    service: str
    kind: str
    window_end: float | None = None  # maintenance: when the window ends


class Classifier:
    """Decides, from the config, which services an alert belongs to and as what kind."""

    def __init__(self, services: Sequence[ServiceConfig], maintenance: Sequence[MaintenanceSpan]) -> None:
        self.services = tuple(services)
        self._match = [(s.name, tuple(s.incident_match.items())) for s in services]
        self._windows: dict[str, list[MaintenanceSpan]] = {}
        for w in maintenance:
            self._windows.setdefault(w.service, []).append(w)

    def window_at(self, service: str, t: float) -> MaintenanceSpan | None:
        for w in self._windows.get(service, ()):
            if w.start <= t < w.end:
                return w
        return None

    def windows(self, service: str) -> list[MaintenanceSpan]:
        return list(self._windows.get(service, ()))

    def _kind(self, service: str, drill: bool, starts_at: float) -> Assignment:
        if drill:
            return Assignment(service, "drill")
        w = self.window_at(service, starts_at)
        if w is not None:
            return Assignment(service, "maintenance", w.end)
        return Assignment(service, "incident")

    def assign(self, labels: Mapping[str, str], starts_at: float) -> tuple[Assignment, ...]:
        drill = labels.get("drill", "").strip().lower() == "true"
        out = []
        for name, match in self._match:
            if all(labels.get(k) == v for k, v in match):
                out.append(self._kind(name, drill, starts_at))
        return tuple(out)

    def assign_to(self, services: Iterable[str], starts_at: float) -> tuple[Assignment, ...]:
        """Assignments for an alert that names its services itself (the exporter's check outages)."""
        return tuple(self._kind(s, False, starts_at) for s in services)


# --- events -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """What the store is told about one alert occurrence."""

    fingerprint: str
    starts_ms: int
    starts_at: float
    ends_at: float | None  # None while firing
    labels: LabelPairs
    severity: str
    source: str  # alertmanager | reconcile | check
    assignments: tuple[Assignment, ...]

    @property
    def labels_json(self) -> str:
        return _json(dict(self.labels))  # labels are sorted already


def events_from_notification(note: Notification, classifier: Classifier) -> list[AlertEvent]:
    out = []
    for a in note.alerts:
        labels = dict(a.labels)
        out.append(
            AlertEvent(
                fingerprint=a.fingerprint,
                starts_ms=a.starts_ms,
                starts_at=a.starts_at,
                ends_at=a.ends_at if a.status == "resolved" else None,
                labels=a.labels,
                severity=severity_of(labels.get("severity", "")),
                source="alertmanager",
                assignments=classifier.assign(labels, a.starts_at),
            )
        )
    return out


# --- the transaction interface -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IncidentRow:
    id: int
    service: str
    kind: str
    severity: str
    started_at: float
    ended_at: float | None
    open_alerts: int = 0  # attached alerts still firing
    last_end: float | None = None  # latest endsAt among attached resolved alerts
    window_end: float | None = None


@dataclass(frozen=True, slots=True)
class StoredAlert:
    id: int
    ends_at: float | None
    severity: str


class IncidentTx(Protocol):
    """The operations of one store transaction that the incident logic needs."""

    def get_alert(self, fingerprint: str, starts_ms: int) -> StoredAlert | None: ...

    def insert_alert(self, ev: AlertEvent, now: float) -> int: ...

    def touch_alert(self, alert_id: int, now: float) -> None: ...

    def resolve_alert(self, alert_id: int, ends_at: float) -> None:
        """Mark a firing alert resolved, updating its incidents' ``open_alerts`` and ``last_end``."""
        ...

    def overlapping_incidents(self, service: str, kind: str, start: float, end: float | None) -> list[IncidentRow]:
        """Incidents of ``service`` and ``kind`` whose span overlaps [start, end] (end None: to now)."""
        ...

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
    ) -> int: ...

    def update_incident(self, incident_id: int, start: float, end: float | None, severity: str) -> None: ...

    def attach(self, incident_id: int, alert_id: int, firing: bool, end: float | None) -> None:
        """Link an alert to an incident (once), keeping ``open_alerts`` and ``last_end`` up to date."""
        ...

    def incidents_of_alert(self, alert_id: int) -> list[IncidentRow]: ...

    def record_recovery(self, incident_id: int, service: str, severity: str, seconds: float, now: float) -> None: ...

    def firing_alerts(self, sources: Sequence[str]) -> list[tuple[int, str, int, float]]:
        """(id, fingerprint, starts_ms, first_seen) of every firing alert from ``sources``."""
        ...

    def overrun_maintenance(self, now: float) -> list[IncidentRow]:
        """Open maintenance records whose window ended by ``now`` and that were not promoted yet."""
        ...

    def firing_alerts_of(self, incident_id: int) -> list[StoredAlert]: ...

    def mark_promoted(self, incident_id: int) -> None: ...

    def import_key_exists(self, key: str) -> bool: ...


@dataclass
class Changes:
    """What a batch of events changed (for logs, metrics and the decision to recompute)."""

    new_alerts: int = 0
    resolved_alerts: int = 0
    repeats: int = 0
    opened: int = 0  # incidents (kind incident) opened
    closed: int = 0  # incidents (kind incident) closed
    other: int = 0  # drills and maintenance records opened or closed
    imported: int = 0
    skipped: int = 0
    conflicts: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(
            self.new_alerts or self.resolved_alerts or self.opened or self.closed or self.other or self.imported
        )

    def add(self, other: Changes) -> None:
        self.new_alerts += other.new_alerts
        self.resolved_alerts += other.resolved_alerts
        self.repeats += other.repeats
        self.opened += other.opened
        self.closed += other.closed
        self.other += other.other
        self.imported += other.imported
        self.skipped += other.skipped
        self.conflicts.extend(other.conflicts)


# --- the logic -------------------------------------------------------------------------------------------


def apply_event(tx: IncidentTx, ev: AlertEvent, now: float, changes: Changes) -> None:
    """Record one alert occurrence (new, repeated or resolved) and update its incidents."""
    stored = tx.get_alert(ev.fingerprint, ev.starts_ms)
    if stored is None:
        alert_id = tx.insert_alert(ev, now)
        changes.new_alerts += 1
        for a in ev.assignments:
            _attach(tx, alert_id, ev.starts_at, ev.ends_at, ev.severity, a, ev.source, now, changes)
        if ev.ends_at is not None:
            changes.resolved_alerts += 1
            _close_finished(tx, alert_id, now, changes)
        return
    tx.touch_alert(stored.id, now)
    if stored.ends_at is None and ev.ends_at is not None:
        _resolve(tx, stored.id, ev.ends_at, now, changes)
    else:
        changes.repeats += 1


def _attach(
    tx: IncidentTx,
    alert_id: int,
    start: float,
    end: float | None,
    severity: str,
    a: Assignment,
    source: str,
    now: float,
    changes: Changes,
) -> None:
    candidates = tx.overlapping_incidents(a.service, a.kind, start, end)
    if not candidates:
        # Created open; _close_finished closes it (and records the recovery) when the alert has ended.
        incident_id = tx.create_incident(
            a.service, a.kind, severity, start, None, window_end=a.window_end, source=source, now=now
        )
        tx.attach(incident_id, alert_id, end is None, end)
        if a.kind == "incident":
            changes.opened += 1
        else:
            changes.other += 1
        return
    open_ = [c for c in candidates if c.ended_at is None]
    inc = open_[0] if open_ else max(candidates, key=lambda c: c.started_at)
    new_start = min(inc.started_at, start)
    new_end = None if inc.ended_at is None or end is None else max(inc.ended_at, end)
    new_severity = _worse(inc.severity, severity)
    if (new_start, new_end, new_severity) != (inc.started_at, inc.ended_at, inc.severity):
        tx.update_incident(inc.id, new_start, new_end, new_severity)
        changes.other += 1
    tx.attach(inc.id, alert_id, end is None, end)


def _resolve(tx: IncidentTx, alert_id: int, ends_at: float, now: float, changes: Changes) -> None:
    tx.resolve_alert(alert_id, ends_at)
    changes.resolved_alerts += 1
    _close_finished(tx, alert_id, now, changes)


def _close_finished(tx: IncidentTx, alert_id: int, now: float, changes: Changes) -> None:
    """Close every open incident of ``alert_id`` that has no firing alert left."""
    for inc in tx.incidents_of_alert(alert_id):
        if inc.ended_at is not None or inc.open_alerts > 0:
            continue
        end = inc.started_at if inc.last_end is None else max(inc.last_end, inc.started_at)
        tx.update_incident(inc.id, inc.started_at, end, inc.severity)
        if inc.kind == "incident":
            tx.record_recovery(inc.id, inc.service, inc.severity, end - inc.started_at, now)
            changes.closed += 1
        else:
            changes.other += 1


def resolve_missing(
    tx: IncidentTx, active: frozenset[tuple[str, int]], fetched_at: float, now: float, changes: Changes
) -> None:
    """Reconciliation: resolve (at ``now``) every firing Alertmanager alert that is no longer active.

    Only alerts first seen before ``fetched_at`` (when the active list was asked for) are
    considered, so an alert that arrived while the list was in flight is left alone.
    """
    for alert_id, fingerprint, starts_ms, first_seen in tx.firing_alerts(("alertmanager", "reconcile")):
        if first_seen < fetched_at and (fingerprint, starts_ms) not in active:
            _resolve(tx, alert_id, now, now, changes)


def promote_overruns(tx: IncidentTx, now: float, changes: Changes) -> None:
    """Open incidents for alerts still firing when their maintenance window ended."""
    for m in tx.overrun_maintenance(now):
        assert m.window_end is not None
        for alert in tx.firing_alerts_of(m.id):
            _attach(
                tx,
                alert.id,
                m.window_end,
                None,
                alert.severity,
                Assignment(m.service, "incident"),
                "maintenance_overrun",
                now,
                changes,
            )
        tx.mark_promoted(m.id)


# --- imported history --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImportRecord:
    """A past incident from an import file."""

    service: str
    severity: str
    start: float
    end: float
    labels: LabelPairs
    where: str  # "file.csv line 3", for messages

    @property
    def kind(self) -> str:
        return "drill" if dict(self.labels).get("drill", "").strip().lower() == "true" else "incident"

    @property
    def key(self) -> str:
        """The identity of an imported incident: service, kind and start to the millisecond."""
        raw = f"{self.service}\0{self.kind}\0{round(self.start * 1000)}"
        return "import:" + hashlib.sha256(raw.encode()).hexdigest()[:32]


def import_record(tx: IncidentTx, rec: ImportRecord, now: float, changes: Changes) -> None:
    """Store one imported incident unless it is already there (same service, kind and start)."""
    if tx.import_key_exists(rec.key):
        changes.skipped += 1
        return
    labels = json.dumps(dict(rec.labels), sort_keys=True, separators=(",", ":"))
    incident_id = tx.create_incident(
        rec.service,
        rec.kind,
        rec.severity,
        rec.start,
        rec.end,
        window_end=None,
        source="import",
        now=now,
        import_key=rec.key,
        labels=labels,
    )
    if rec.kind == "incident":
        tx.record_recovery(incident_id, rec.service, rec.severity, rec.end - rec.start, now)
    changes.imported += 1
