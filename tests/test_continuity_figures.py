"""Exact continuity figures from a fixture incident set, computed by hand in the comments."""

from __future__ import annotations

import math

import pytest

from exporter.continuity import figures
from exporter.continuity.figures import (
    Span,
    measure,
    merge,
    percentile,
    recovery_times,
    rpo_estimate,
    rto_estimate,
    subtract,
    window_figures,
)

N = 1_800_000_000.0  # "now"
DAY = 86_400.0


def inc(start_ago: float, duration: float | None) -> Span:
    start = N - start_ago
    return Span("inbound", "incident", "critical", start, None if duration is None else start + duration)


# The fixture, as offsets before now (seconds):
#   A  100 d ago, 3,600 s             entirely before every window: ignored
#   B  starts 90 d + 1,800 s ago, lasts 3,600 s: straddles the 90 d window's start
#      (1,800 s inside it; it started before the window, so it is not a failure in it,
#      but it ended inside it, so it is recovered there, with its whole 3,600 s)
#   C  20 d ago, 600 s
#   D  5 d ago, 1,200 s           } overlapping: D = [-432,000, -430,800],
#   E  5 d ago + 600 s, 1,800 s   }              E = [-431,400, -429,600]; union 2,400 s
#   G  3 d + 600 s ago, 1,500 s: [-259,800, -258,300], of which the maintenance window
#      [-259,200, -252,000] (3 d ago, 2 h) covers 900 s: 600 s of downtime
#   F  1,000 s ago, still open: 1,000 s of downtime, a failure, not recovered
A = inc(100 * DAY, 3_600)
B = inc(90 * DAY + 1_800, 3_600)
C = inc(20 * DAY, 600)
D = inc(5 * DAY, 1_200)
E = inc(5 * DAY - 600, 1_800)
G = inc(3 * DAY + 600, 1_500)
F = inc(1_000, None)
INCIDENTS = [A, B, C, D, E, G, F]
MAINTENANCE = [(N - 3 * DAY, N - 3 * DAY + 7_200)]


def test_7d() -> None:
    f = window_figures(INCIDENTS, MAINTENANCE, N, "7d", 7 * DAY)
    # W = 604,800; maintenance inside = 7,200; observed = 597,600
    assert f.maintenance == 7_200
    assert f.observed == 597_600
    # downtime = D+E 2,400 + G outside maintenance 600 + F 1,000 = 4,000
    assert f.downtime == 4_000
    assert f.availability == 1 - 4_000 / 597_600
    # failures (started inside): D, E, G, F = 4; MTBF = (597,600 - 4,000) / 4 = 148,400
    assert f.failures == 4
    assert f.mtbf == 148_400
    # recovered (ended inside): D 1,200, E 1,800, G 1,500; MTTR = 4,500 / 3 = 1,500
    assert f.recovered == 3
    assert f.mttr == 1_500


def test_30d() -> None:
    f = window_figures(INCIDENTS, MAINTENANCE, N, "30d", 30 * DAY)
    # W = 2,592,000; observed = 2,592,000 - 7,200 = 2,584,800
    assert f.observed == 2_584_800
    # downtime = C 600 + 2,400 + 600 + 1,000 = 4,600
    assert f.downtime == 4_600
    assert f.availability == 1 - 4_600 / 2_584_800
    # failures: C, D, E, G, F = 5; MTBF = (2,584,800 - 4,600) / 5 = 516,040
    assert f.failures == 5
    assert f.mtbf == 516_040
    # recovered: C 600, D 1,200, E 1,800, G 1,500 = 5,100 / 4 = 1,275
    assert f.recovered == 4
    assert f.mttr == 1_275


def test_90d() -> None:
    f = window_figures(INCIDENTS, MAINTENANCE, N, "90d", 90 * DAY)
    # W = 7,776,000; observed = 7,768,800
    assert f.observed == 7_768_800
    # downtime = B's 1,800 inside + 4,600 = 6,400
    assert f.downtime == 6_400
    assert f.availability == 1 - 6_400 / 7_768_800
    # failures: C, D, E, G, F = 5 (B started before the window); MTBF = (7,768,800 - 6,400) / 5 = 1,552,480
    assert f.failures == 5
    assert f.mtbf == 1_552_480
    # recovered: B 3,600 (whole), C 600, D 1,200, E 1,800, G 1,500 = 8,700 / 5 = 1,740
    assert f.recovered == 5
    assert f.mttr == 1_740


def test_no_incidents() -> None:
    f = window_figures([], MAINTENANCE, N, "7d", 7 * DAY)
    assert f.downtime == 0 and f.availability == 1.0 and f.failures == 0
    assert math.isnan(f.mttr)  # nothing recovered: undefined
    assert f.mtbf == math.inf  # no failure: unbounded


def test_docs_worked_example() -> None:
    # docs/continuity.md and figures.py: a 3,600 s maintenance window and two incidents of 600 s and 1,800 s.
    spans = [inc(2 * DAY, 600), inc(1 * DAY, 1_800)]
    f = window_figures(spans, [(N - 4 * DAY, N - 4 * DAY + 3_600)], N, "7d", 7 * DAY)
    assert (f.observed, f.downtime, f.failures, f.recovered) == (601_200, 2_400, 2, 2)
    assert f.availability == 1 - 2_400 / 601_200
    assert round(f.availability, 6) == 0.996008
    assert f.mtbf == 299_400
    assert f.mttr == 1_200


def test_whole_window_in_maintenance() -> None:
    f = window_figures([inc(DAY, 60)], [(N - 8 * DAY, N + 1)], N, "7d", 7 * DAY)
    assert f.observed == 0 and f.downtime == 0 and f.availability == 1.0


def test_interval_arithmetic() -> None:
    assert merge([(5, 6), (1, 3), (2, 4), (4, 4.5), (7, 7)]) == [(1, 4.5), (5, 6)]
    assert measure([(0, 10), (5, 15)]) == 15
    assert subtract([(0, 10), (20, 30)], [(5, 25), (28, 40)]) == [(0, 5), (25, 28)]
    assert subtract([(0, 10)], []) == [(0, 10)]
    assert subtract([(0, 10)], [(0, 10)]) == []


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([600, 1_200, 1_500, 1_800, 2_700, 3_600], 0.9, 3_600),  # ceil(5.4) = 6th
        (list(range(1, 11)), 0.9, 9),  # ceil(9.0) = 9th
        (list(range(1, 21)), 0.9, 18),  # ceil(18) = 18th
        ([42], 0.9, 42),
        ([], 0.9, math.nan),
    ],
)
def test_percentile_nearest_rank(values: list[float], q: float, expected: float) -> None:
    got = percentile(values, q)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


def test_rto_estimate() -> None:
    drill = Span("inbound", "drill", "other", N - 10 * DAY, N - 10 * DAY + 2_700)
    spans = [*INCIDENTS, drill]
    times = recovery_times(spans, N)
    # ended within 90 days: B 3,600, C 600, D 1,200, E 1,800, G 1,500 and the drill's 2,700
    assert sorted(times) == [600, 1_200, 1_500, 1_800, 2_700, 3_600]
    # p90 (6th of 6) = 3,600 > last drill 2,700
    assert rto_estimate(times, 2_700) == 3_600
    # a slower last drill wins
    assert rto_estimate(times, 5_000) == 5_000
    assert rto_estimate([], 900) == 900
    assert math.isnan(rto_estimate([], None))


def test_rpo_estimate() -> None:
    assert rpo_estimate([3.2, 7.0], [N - 10], N) == 3.2  # the freshest healthy replica
    assert rpo_estimate([], [N - 1_000, N - 500], N) == 500  # else the newest good backup's age
    assert rpo_estimate([], [], N) == math.inf  # nothing to recover from


def test_windows_and_buckets() -> None:
    assert [w for w, _ in figures.WINDOWS] == ["7d", "30d", "90d"]
    assert list(figures.RECOVERY_BUCKETS) == sorted(figures.RECOVERY_BUCKETS)
