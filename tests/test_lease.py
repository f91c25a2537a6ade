"""The lease of the once-only jobs: on the test stack's PostgreSQL, and trivially on SQLite.

Store level: granted when free, expired or already ours (a renewal), refused while another
exporter holds it, released at once.  Service level: of two :class:`Continuity` objects on
one database exactly one is the leader at any time, only it reconciles, records check
outages and publishes ``mail_exporter_leader 1``; when it closes (releases) or stops
renewing (dies), the other takes over and adopts the check outages left open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import metric_values
from test_continuity_store_pg import admin_dsn, fresh_database

from exporter import config as cfgmod
from exporter.continuity.service import LEASE_NAME, Continuity
from exporter.continuity.store import PostgresStore, SqliteStore
from exporter.core.model import CheckState, Sink
from exporter.core.scheduler import Check, RunRecord
from exporter.core.snapshot import Snapshot

TTL = 2.0  # the shortest lease_ttl the config accepts: keeps the takeover tests short


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with fresh_database(admin_dsn(request)) as dsn:
        yield dsn


def leader_value(snapshot: Snapshot) -> float:
    values = metric_values(snapshot.render().decode(), "mail_exporter_leader")
    assert list(values) == [()]
    return values[()]


async def test_store_lease_is_granted_renewed_refused_and_released(pg_url: str) -> None:
    a, b = PostgresStore(pg_url, timeout=5), PostgresStore(pg_url, timeout=5)
    await a.open()
    await b.open()
    try:
        assert await a.lease(LEASE_NAME, "a", TTL) == "a"
        assert await b.lease(LEASE_NAME, "b", TTL) == "a"  # held: refused, and told who holds it
        assert await a.lease(LEASE_NAME, "a", TTL) == "a"  # renewed
        assert await b.lease("another-lease", "b", TTL) == "b"  # leases are independent
        await b.release(LEASE_NAME, "b")  # not the holder: changes nothing
        assert await b.lease(LEASE_NAME, "b", TTL) == "a"
        await a.release(LEASE_NAME, "a")
        assert await b.lease(LEASE_NAME, "b", TTL) == "b"  # free at once after a release
        assert await a.lease(LEASE_NAME, "a", TTL) == "b"
    finally:
        await a.close()
        await b.close()


async def test_store_lease_expires_by_the_servers_clock(pg_url: str) -> None:
    a, b = PostgresStore(pg_url, timeout=5), PostgresStore(pg_url, timeout=5)
    await a.open()
    await b.open()
    try:
        assert await a.lease(LEASE_NAME, "a", 1.0) == "a"
        assert await b.lease(LEASE_NAME, "b", 1.0) == "a"
        await asyncio.sleep(1.2)  # a stopped renewing
        assert await b.lease(LEASE_NAME, "b", 1.0) == "b"
        assert await a.lease(LEASE_NAME, "a", 1.0) == "b"  # a came back: b keeps it
    finally:
        await a.close()
        await b.close()


async def test_lease_failure_is_a_store_error_without_the_password(pg_url: str) -> None:
    store = PostgresStore(pg_url, timeout=5)
    await store.open()
    await store.close()
    with pytest.raises(Exception, match="not open"):
        await store.lease(LEASE_NAME, "a", TTL)


def service_config(tmp_path: Path, *, reconcile_url: str | None = None) -> cfgmod.Config:
    text = f"""
continuity:
  store: {{lease_ttl: {TTL:g}s}}
  services:
    - name: inbound
      incident_match: {{service: inbound}}
      check_outages: [imap]
      check_outage_threshold: 2
"""
    if reconcile_url:
        text += f"  reconcile: {{alertmanager_url: {reconcile_url}, interval: 1h}}\n"
    path = tmp_path / "config.yml"
    path.write_text(text)
    return cfgmod.load(str(path))


async def open_pair(pg_url: str, cfg: cfgmod.Config) -> tuple[Continuity, Continuity]:
    pair = []
    for _ in range(2):
        c = Continuity("", Snapshot(), store=PostgresStore(pg_url, timeout=5))
        await c.open(cfg)
        pair.append(c)
    return pair[0], pair[1]


async def wait_for(predicate: object, timeout: float) -> float:
    """Seconds until ``predicate()`` holds (polled every 50 ms); fails after ``timeout``."""
    assert callable(predicate)
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "condition not reached"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def run(started: float, result: str) -> RunRecord:
    return RunRecord(started, 0.1, result, "" if result == "success" else "refused", "", ())


async def test_exactly_one_leader_and_it_alone_reconciles(pg_url: str, tmp_path: Path) -> None:
    # Alertmanager's address is a closed port: a run that asks it fails ("unreachable").
    cfg = service_config(tmp_path, reconcile_url="http://127.0.0.1:1")
    a, b = await open_pair(pg_url, cfg)
    try:
        assert a.is_leader() and not b.is_leader()  # the first up takes it
        assert (leader_value(a.snapshot), leader_value(b.snapshot)) == (1.0, 0.0)
        assert b.lease_holder == a.holder
        assert "held by this exporter" in a.lease_state and a.holder in b.lease_state
        sinks = [Sink(CheckState()), Sink(CheckState())]
        assert await a.reconcile_once("http://127.0.0.1:1", sinks[0]) is False  # the leader asked
        assert sinks[0].failure is not None and sinks[0].failure.reason == "unreachable"
        assert sinks[1].failure is None
        assert await b.reconcile_once("http://127.0.0.1:1", sinks[1]) is True  # the standby did not
        assert b.reconcile_state.startswith("standby")
        # renewals keep it where it is
        await asyncio.sleep(TTL * 1.5)
        assert a.is_leader() and not b.is_leader()
    finally:
        await a.close()
        await b.close()


async def test_release_hands_the_lease_over_and_outages_are_adopted(pg_url: str, tmp_path: Path) -> None:
    cfg = service_config(tmp_path)
    a, b = await open_pair(pg_url, cfg)
    check = Check("imap", "imap", 60.0, 5.0, None, _never)
    try:
        t0 = time.time() - 100
        for c in (a, b):  # both exporters see the same failing check
            c.on_check_run(check, run(t0, "failure"))
            c.on_check_run(check, run(t0 + 10, "failure"))
        await wait_for(lambda: not a._tasks, 10)
        firing = await a.store.firing_check_outages()
        assert [(f, ms) for f, ms, _ in firing] == [("check|inbound|imap|imap", int(t0 * 1000))]  # once, by a
        await a.close()  # releases the lease
        took = await wait_for(b.is_leader, 5.0)
        assert took <= 5.0
        await wait_for(lambda: leader_value(b.snapshot) == 1.0, 5.0)
        # b adopted the outage that a opened: its recovery closes it
        b.on_check_run(check, run(t0 + 50, "success"))
        await wait_for(lambda: not b._tasks, 10)
        assert await b.store.firing_check_outages() == []
        records = await b.store.incidents(service="inbound")
        assert [(r.started_at, r.ended_at) for r in records] == [pytest.approx((t0, t0 + 50.1))]
    finally:
        await a.close()
        await b.close()


async def test_a_dead_leader_loses_the_lease_after_the_ttl(pg_url: str, tmp_path: Path) -> None:
    cfg = service_config(tmp_path)
    a, b = await open_pair(pg_url, cfg)
    try:
        assert a.is_leader()
        # a dies without releasing: its renewals stop (the task is gone, nothing released)
        assert a._lease_task is not None
        a._lease_task.cancel()
        took = await wait_for(b.is_leader, TTL * 4)
        assert not a.is_leader()  # a's own view expired no later than the store's
        assert took > 0
    finally:
        await a.close()
        await b.close()


async def test_sqlite_store_needs_no_lease(tmp_path: Path) -> None:
    c = Continuity(str(tmp_path), Snapshot(), store=SqliteStore(str(tmp_path), writer="thread"))
    await c.open(service_config(tmp_path))
    try:
        assert c.is_leader() and leader_value(c.snapshot) == 1.0 and c._lease_task is None
        assert c.lease_state.startswith("not needed")
    finally:
        await c.close()


async def _never(sink: Sink, log: object) -> bool:
    return False
