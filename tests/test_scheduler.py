"""The scheduler: intervals with jitter, a global concurrency limit, timeouts, crash isolation, reload diffs."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.core.model import Sink
from exporter.core.scheduler import Check, Scheduler
from exporter.core.snapshot import Snapshot


def values(snap: Snapshot, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for fam in text_string_to_metric_families(snap.render().decode()):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def make_check(name: str, fn, interval: float = 0.05, timeout: float = 1.0) -> Check:  # type: ignore[no-untyped-def]
    async def run(sink: Sink, log: logging.Logger) -> bool:
        return await fn(sink)

    return Check("test", name, interval, timeout, spec=name, run=run)


async def test_runs_repeatedly_and_records_results() -> None:
    snap = Snapshot()
    sched = Scheduler(snap, first_run_spread=0)
    calls = 0

    async def ok(sink: Sink) -> bool:
        nonlocal calls
        calls += 1
        return True

    sched.apply([make_check("a", ok)])
    await asyncio.sleep(0.35)
    await sched.stop()
    assert 4 <= calls <= 9
    runs = values(snap, "mail_exporter_check_runs_total")
    assert runs[(("check", "test"), ("name", "a"), ("result", "success"))] == calls
    assert runs[(("check", "test"), ("name", "a"), ("result", "error"))] == 0
    assert values(snap, "mail_exporter_check_success") == {(("check", "test"), ("name", "a")): 1.0}


async def test_exception_is_recorded_and_loop_continues() -> None:
    snap = Snapshot()
    sched = Scheduler(snap, first_run_spread=0)
    calls = 0

    async def boom(sink: Sink) -> bool:
        nonlocal calls
        calls += 1
        raise RuntimeError("bug in a check")

    check = make_check("boom", boom)
    sched.apply([check])
    await asyncio.sleep(0.3)
    await sched.stop()
    assert calls >= 3
    assert check.last is not None and check.last.result == "error"
    assert "RuntimeError: bug in a check" in check.last.error
    runs = values(snap, "mail_exporter_check_runs_total")
    assert runs[(("check", "test"), ("name", "boom"), ("result", "error"))] == calls


async def test_timeout_records_failure_with_reason() -> None:
    snap = Snapshot()
    sched = Scheduler(snap, first_run_spread=0)

    async def hang(sink: Sink) -> bool:
        sink.gauge("mail_smtp_up", 0, check="hang", target="t")
        await asyncio.sleep(3600)
        return True

    check = make_check("hang", hang, interval=10, timeout=0.2)
    record = await sched.run_once(check)
    assert record.result == "failure" and record.reason == "timeout"
    assert 0.2 <= record.duration < 1.0


async def test_concurrency_limit_is_global() -> None:
    snap = Snapshot()
    sched = Scheduler(snap, max_concurrency=3, first_run_spread=0)
    running = 0
    peak = 0

    async def slow(sink: Sink) -> bool:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return True

    await asyncio.gather(*(sched.run_once(make_check(f"c{i}", slow)) for i in range(12)))
    assert peak == 3


async def test_jitter_spreads_runs() -> None:
    snap = Snapshot()
    sched = Scheduler(snap, jitter=0.5, first_run_spread=0)
    stamps: list[float] = []
    loop = asyncio.get_running_loop()

    async def stamp(sink: Sink) -> bool:
        stamps.append(loop.time())
        return True

    sched.apply([make_check("j", stamp, interval=0.04)])
    await asyncio.sleep(0.8)
    await sched.stop()
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert len(gaps) >= 8
    assert all(0.015 <= g <= 0.08 for g in gaps)
    assert max(gaps) - min(gaps) > 0.005  # not a fixed period


async def test_apply_keeps_unchanged_replaces_changed_drops_removed() -> None:
    snap = Snapshot()
    sched = Scheduler(snap, first_run_spread=0)

    async def ok(sink: Sink) -> bool:
        return True

    a, b = make_check("a", ok), make_check("b", ok)
    sched.apply([a, b])
    await asyncio.sleep(0.12)
    runs_a = a.runs
    a2 = make_check("a", ok)  # same definition: the running check (and its counters) stays
    c = make_check("c", ok)
    sched.apply([a2, c])
    assert {x.key for x in sched.checks} == {"test/a", "test/c"}
    assert next(x for x in sched.checks if x.key == "test/a") is a
    await asyncio.sleep(0.12)
    await sched.stop()
    assert a.runs > runs_a
    names = {dict(k)["name"] for k in values(snap, "mail_exporter_check_runs_total")}
    assert names == {"a", "c"}


# --- start lag -------------------------------------------------------------------------------------


async def test_start_lag_counts_every_run_and_measures_the_wait_for_a_slot() -> None:
    """Ground truth: with one slot, a run due while another holds it starts when it is released."""
    from exporter.core.scheduler import START_LAG

    snap = Snapshot()
    sched = Scheduler(snap, max_concurrency=1, first_run_spread=0.0)
    release = asyncio.Event()
    held = asyncio.Event()

    async def blocker(sink: Sink, log: logging.Logger) -> bool:
        held.set()
        await release.wait()
        return True

    async def quick(sink: Sink, log: logging.Logger) -> bool:
        return True

    slow = Check("smtp", "slow", 3600.0, 10.0, spec="slow", run=blocker)
    fast = Check("smtp", "fast", 3600.0, 10.0, spec="fast", run=quick)
    loop = asyncio.get_running_loop()
    first = asyncio.create_task(sched.run_once(slow, planned=loop.time()))
    await held.wait()
    due = loop.time()
    second = asyncio.create_task(sched.run_once(fast, planned=due))
    await asyncio.sleep(0.3)  # the fast run is due but waits for the slot
    release.set()
    await asyncio.gather(first, second)
    values = {(s.name, dict(s.labels).get("le")): s.value for s in sched.lag.samples()}
    assert values[(f"{START_LAG}_count", None)] == 2
    # the second run started at least 0.3 s after it was due (a lower bound, not a speed figure)
    assert values[(f"{START_LAG}_sum", None)] >= 0.3
    assert values[(f"{START_LAG}_bucket", "0.25")] == 1  # only the first run started in time
    assert values[(f"{START_LAG}_bucket", "+Inf")] == 2
    # a run without a due time (a /probe-like manual run) is not counted
    await sched.run_once(fast)
    assert {s.name: s.value for s in sched.lag.samples()}[f"{START_LAG}_count"] == 2


async def test_first_runs_of_many_checks_are_spread_at_most_200_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    from exporter.core import scheduler as schedmod

    bounds: list[float] = []

    def uniform(low: float, high: float) -> float:
        bounds.append(high)
        return high  # every first run at the end of its spread: nothing runs during the test

    monkeypatch.setattr(schedmod.random, "uniform", uniform)
    sched = Scheduler(Snapshot(), first_run_spread=5.0)

    async def never(sink: Sink, log: logging.Logger) -> bool:
        return True

    def many(n: int, interval: float, prefix: str) -> list[Check]:
        return [Check("t", f"{prefix}{i}", interval, 1.0, spec=i, run=never) for i in range(n)]

    sched.apply(many(100, 3600.0, "a"))  # few checks: the configured 5 s
    await asyncio.sleep(0)
    assert set(bounds) == {5.0}
    bounds.clear()
    sched.apply(many(100, 3600.0, "a") + many(4000, 3600.0, "b"))  # 4,000 new ones: 20 s
    await asyncio.sleep(0)
    assert len(bounds) == 4000 and set(bounds) == {4000 / schedmod.FIRST_RUNS_PER_SECOND} == {20.0}
    bounds.clear()
    sched.apply(many(100, 3600.0, "a") + many(4000, 3600.0, "b") + many(3000, 10.0, "c"))  # never past the interval
    await asyncio.sleep(0)
    assert set(bounds) == {10.0}
    await sched.stop()
