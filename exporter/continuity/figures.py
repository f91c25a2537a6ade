"""Continuity figures, computed from incident spans: pure functions, no I/O, no clock.

Definitions (for one service, over a window W of 7, 30 or 90 days ending at ``now``):

- **Maintenance time** M: the part of W covered by the service's maintenance windows.
- **Observed time** = W - M.
- **Downtime** D: the part of W covered by at least one incident (an open incident
  reaches to ``now``), minus maintenance time.  Overlapping incidents count once.
- **Availability** = 1 - D / (W - M); 1 when W is all maintenance.
- **Failures** F: incidents that *started* inside W.
- **MTBF** = (W - M - D) / F: uptime per failure, the classic "operating time divided by
  the number of failures".  +Inf when F = 0 (no failure observed).
- **Recovered** R: incidents that *ended* inside W.
- **MTTR** = mean of (end - start) over those R incidents, each counted whole even when it
  started before W.  NaN when R = 0 (nothing to average).

Worked example (also ``tests/test_continuity_figures.py``): W = 7 days = 604,800 s, one
maintenance window of 3,600 s, and two incidents inside W lasting 600 s and 1,800 s.
M = 3,600, observed = 601,200, D = 2,400, availability = 1 - 2,400/601,200 = 0.996008 (to
six places), F = R = 2, MTBF = (601,200 - 2,400)/2 = 299,400 s, MTTR = (600 + 1,800)/2 =
1,200 s.

- **Recovery times** for the RTO: the durations of incidents and drills that ended in the
  last 90 days.
- **RTO estimate** = max(p90 of those recovery times, the last drill's failover time).  The
  percentile is nearest-rank: the ⌈0.9·n⌉-th smallest value.  NaN without any data.
- **RPO estimate** = the smallest lag among healthy replicas; without one, the age of the
  newest good backup (now - its time); without either, +Inf (nothing to recover from).
"""

from __future__ import annotations

__all__ = [
    "DAY",
    "RECOVERY_BUCKETS",
    "WINDOWS",
    "Span",
    "WindowFigures",
    "measure",
    "merge",
    "percentile",
    "recovery_times",
    "rpo_estimate",
    "rto_estimate",
    "subtract",
    "window_figures",
]

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DAY = 86400.0
WINDOWS: tuple[tuple[str, float], ...] = (("7d", 7 * DAY), ("30d", 30 * DAY), ("90d", 90 * DAY))
#: Buckets of mail_incident_recovery_seconds: 1 min to 1 week.
RECOVERY_BUCKETS: tuple[float, ...] = (
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    43200.0,
    86400.0,
    259200.0,
    604800.0,
)
RTO_HORIZON = 90 * DAY

Interval = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Span:
    """An incident, drill or maintenance record as the figures see it."""

    service: str
    kind: str  # incident | drill | maintenance
    severity: str
    start: float
    end: float | None  # None while open

    def end_or(self, now: float) -> float:
        return now if self.end is None else self.end


@dataclass(frozen=True, slots=True)
class WindowFigures:
    window: str
    length: float
    maintenance: float
    downtime: float
    availability: float
    failures: int
    recovered: int
    mttr: float
    mtbf: float

    @property
    def observed(self) -> float:
        return self.length - self.maintenance


# --- interval arithmetic ------------------------------------------------------------------------


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted union of intervals; touching or overlapping ones become one; empty ones vanish."""
    out: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def clip(intervals: Iterable[Interval], lo: float, hi: float) -> list[Interval]:
    return merge((max(s, lo), min(e, hi)) for s, e in intervals)


def measure(intervals: Iterable[Interval]) -> float:
    return sum(e - s for s, e in merge(intervals))


def subtract(a: Iterable[Interval], b: Iterable[Interval]) -> list[Interval]:
    """The parts of ``a`` not covered by ``b``."""
    cut = merge(b)
    out: list[Interval] = []
    for start, end in merge(a):
        cur = start
        for bs, be in cut:
            if be <= cur or bs >= end:
                continue
            if bs > cur:
                out.append((cur, bs))
            cur = max(cur, be)
            if cur >= end:
                break
        if cur < end:
            out.append((cur, end))
    return out


# --- the figures ----------------------------------------------------------------------------------


def window_figures(
    incidents: Sequence[Span], maintenance: Sequence[Interval], now: float, window: str, length: float
) -> WindowFigures:
    """MTTR, MTBF, downtime and availability of one service over [now - length, now].

    ``incidents`` are the service's spans of kind ``incident``; ``maintenance`` its windows.
    """
    lo = now - length
    maint = clip(maintenance, lo, now)
    maint_time = measure(maint)
    down = subtract(clip(((s.start, s.end_or(now)) for s in incidents), lo, now), maint)
    downtime = measure(down)
    observed = length - maint_time
    availability = 1.0 - downtime / observed if observed > 0 else 1.0
    failures = sum(1 for s in incidents if lo <= s.start <= now)
    recovered = [s.end - s.start for s in incidents if s.end is not None and lo <= s.end <= now]
    mttr = sum(recovered) / len(recovered) if recovered else math.nan
    mtbf = (observed - downtime) / failures if failures else math.inf
    return WindowFigures(window, length, maint_time, downtime, availability, failures, len(recovered), mttr, mtbf)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the ⌈q·n⌉-th smallest value (q in (0, 1]).  NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered) - 1e-9))
    return ordered[rank - 1]


def recovery_times(spans: Iterable[Span], now: float, horizon: float = RTO_HORIZON) -> list[float]:
    """Durations of incidents and drills that ended within ``horizon`` of ``now``."""
    return [
        s.end - s.start
        for s in spans
        if s.kind in ("incident", "drill") and s.end is not None and now - horizon <= s.end <= now
    ]


def rto_estimate(recoveries: Sequence[float], last_drill: float | None) -> float:
    """max(p90 of recovery times, last drill's failover time); NaN without either."""
    candidates = [percentile(recoveries, 0.9)] if recoveries else []
    if last_drill is not None:
        candidates.append(last_drill)
    return max(candidates) if candidates else math.nan


def rpo_estimate(healthy_lags: Sequence[float], good_backups: Sequence[float], now: float) -> float:
    """Smallest healthy replica lag, else age of the newest good backup (its Unix time), else +Inf."""
    if healthy_lags:
        return max(0.0, min(healthy_lags))
    if good_backups:
        return max(0.0, now - max(good_backups))
    return math.inf
