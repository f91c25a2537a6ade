"""What the store's reads return: plain, immutable records (no storage types leak out)."""

from __future__ import annotations

__all__ = ["IncidentRecord", "OpenIncident", "RecoveryHistogram", "Summary"]

from dataclasses import dataclass

from exporter.continuity.figures import Span


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
