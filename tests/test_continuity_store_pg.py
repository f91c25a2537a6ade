"""The PostgreSQL incident store against a real server: the same behaviour as SQLite, plus an HA pair's needs.

Where the server comes from: ``MCE_TEST_PG_DSN`` (a libpq DSN of a role that may
``CREATE DATABASE``) when set, else the test stack's (``stack.postgresql["dsn"]``).  Every
test gets a fresh database, dropped afterwards.

The store-independent behaviour tests of ``test_continuity_store.py`` run here too,
unchanged, against :class:`PostgresStore` (they are imported below and pick up this
module's ``store`` fixture); that file itself stays SQLite-only, so it never needs a server.

The outage test cuts the connection with a TCP proxy of its own (a server restart that
disturbs nobody else).  With ``MCE_TEST_PG_DATADIR`` set to the data directory of the
server behind ``MCE_TEST_PG_DSN`` (a private scratch cluster), it also stops and starts
that server with ``pg_ctl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import glob
import logging
import os
import random
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from test_continuity_store import (  # noqa: F401 - the store-independent tests, collected here against PostgreSQL
    NOW,
    T,
    am_alert,
    events,
    incidents,
    lab,
    summary,
    test_a_failing_request_fails_alone,
    test_drills_are_not_incidents,
    test_firing_opens_repeat_is_a_duplicate_resolved_closes,
    test_flapping_alert_makes_one_incident_per_flap,
    test_group_commit_batches_concurrent_requests,
    test_import_is_idempotent,
    test_incident_spans_first_start_to_last_end,
    test_late_alert_moves_start_back_and_overlapping_resolved_joins,
    test_maintenance_and_overrun,
    test_reads_and_writes_stay_off_the_event_loop,
    test_reconcile_resolves_only_missing_alerts_seen_before_the_fetch,
    test_resolved_before_firing,
    test_severity_is_bounded_and_escalates,
)
from test_continuity_support import body, payload

from exporter.config import ServiceConfig
from exporter.continuity.incidents import AlertEvent, Assignment, Changes, Classifier, events_from_notification
from exporter.continuity.store import PostgresStore, Store, Summary
from exporter.continuity.store.postgres import LOCK_KEY, SCHEMA_VERSION
from exporter.continuity.webhook import parse_notification
from exporter.core.errors import StoreError

# --- the server and a fresh database per test ----------------------------------------------------------


def admin_dsn(request: pytest.FixtureRequest) -> str:
    """A DSN of a role that may CREATE DATABASE: MCE_TEST_PG_DSN, else the test stack's PostgreSQL."""
    env = os.environ.get("MCE_TEST_PG_DSN")
    if env:
        return env
    pg = request.getfixturevalue("stack").postgresql
    dsn = str(pg["dsn"])
    if pg.get("password") and not conninfo_to_dict(dsn).get("password"):
        dsn = make_conninfo(dsn, password=str(pg["password"]))
    return dsn


@contextlib.contextmanager
def fresh_database(admin: str) -> Iterator[str]:
    """Create an empty database, yield a DSN for it, drop it (and every session on it) afterwards."""
    name = f"mce_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(admin, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def admin(request: pytest.FixtureRequest) -> str:
    return admin_dsn(request)


@pytest.fixture
def pg_dsn(admin: str) -> Iterator[str]:
    with fresh_database(admin) as dsn:
        yield dsn


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_dsn, timeout=5)
    await s.open()
    yield s
    await s.close()


def password_of(dsn: str) -> str:
    pw = conninfo_to_dict(dsn).get("password") or os.environ.get("PGPASSWORD") or ""
    return str(pw)


def query(dsn: str, text: Any, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(text, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


#: Longest stall of the event loop the tests accept.  A store call that waited on the network on
#: the loop would stall it for its whole timeout (seconds); a garbage collection or the other
#: processes of a shared 2-core CI machine can stall it for a few hundred milliseconds (0.21 s
#: was seen with the server's connections being cut), which says nothing about the store.
STALL_BOUND = 1.0


class LoopLag:
    """The longest the event loop went without running a 5 ms ticker (a blocked loop shows here)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, time.monotonic() - t - 0.005)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


# --- schema, settings, errors ----------------------------------------------------------------------------


async def test_schema_settings_and_version(pg_dsn: str) -> None:
    s = PostgresStore(pg_dsn)
    await s.open()
    # the writer's session: durable commits, bounded lock waits, in a read-write primary
    settings = await s._write(
        lambda tx: tx.conn.execute(
            "SELECT current_setting('synchronous_commit'), current_setting('fsync'),"
            " current_setting('lock_timeout'), current_setting('transaction_isolation')"
        ).fetchone()
    )
    assert settings[0] != "off" and settings[1] == "on"
    assert settings[2] == "10s" and settings[3] == "read committed"
    # readers: one snapshot per read
    assert await s._read(lambda c: c.execute("SELECT current_setting('transaction_isolation')").fetchone()) == (
        "repeatable read",
    )
    await s.ingest(events(am_alert("kept", lab(), T)), NOW)
    await s.close()
    rows = query(pg_dsn, "SELECT version, description FROM schema_migrations ORDER BY version")
    assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    types = dict(
        query(
            pg_dsn,
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns"
            " WHERE table_name IN ('alerts', 'incidents', 'incident_alerts', 'recoveries')",
        )
    )
    assert types["alerts.id"] == "bigint" and types["alerts.starts_ms"] == "bigint"
    assert types["alerts.starts_at"] == "double precision" and types["alerts.labels"] == "text"
    assert types["incidents.promoted"] == "boolean" and types["recoveries.seconds"] == "double precision"
    assert query(pg_dsn, "SELECT is_identity FROM information_schema.columns WHERE table_name = 'alerts'"
                 " AND column_name = 'id'") == [("YES",)]  # fmt: skip
    # opening again applies nothing and keeps the data
    s = PostgresStore(pg_dsn)
    await s.open()
    assert await s.alert_keys() == [("kept", int(T * 1000))]
    await s.close()
    assert query(pg_dsn, "SELECT count(*) FROM schema_migrations") == [(SCHEMA_VERSION,)]


async def test_exporters_starting_together_migrate_once(pg_dsn: str) -> None:
    stores = [PostgresStore(pg_dsn) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))  # no race on CREATE TABLE: the migration holds the lock
    try:
        assert query(pg_dsn, "SELECT version FROM schema_migrations") == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
        await stores[0].ingest(events(am_alert("a", lab(), T)), NOW)
        assert await stores[3].alert_keys() == [("a", int(T * 1000))]
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_newer_schema_is_refused(pg_dsn: str) -> None:
    s = PostgresStore(pg_dsn)
    await s.open()
    await s.close()
    query(pg_dsn, "INSERT INTO schema_migrations VALUES (%s, 'from the future', 0)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer mail-continuity-exporter") as err:
        await PostgresStore(pg_dsn).open()
    assert str(err.value).startswith(PostgresStore(pg_dsn).description)
    with pytest.raises(StoreError, match="not one this version reads"):
        await PostgresStore(pg_dsn, readonly=True).open()


async def test_commits_that_may_not_be_durable_are_refused(pg_dsn: str) -> None:
    dbname = conninfo_to_dict(pg_dsn)["dbname"]
    query(pg_dsn, sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(sql.Identifier(dbname)))
    s = PostgresStore(pg_dsn)
    with pytest.raises(StoreError, match=r"synchronous_commit is off.*refusing to write"):
        await s.open()
    query(pg_dsn, sql.SQL("ALTER DATABASE {} SET synchronous_commit = local").format(sql.Identifier(dbname)))
    await s.open()  # the same store, once fixed: local waits for the local WAL flush, which is what we promise
    await s.ingest(events(am_alert("x", lab(), T)), NOW)
    await s.close()


def test_description_never_shows_the_password() -> None:
    cases = {
        "postgresql://mce:s3cr3t-pw@127.0.0.1:5433/incidents": "postgresql://mce@127.0.0.1:5433/incidents",
        "postgres://mce:s3cr3t-pw@db.example.test/incidents?sslmode=require": "postgresql://mce@db.example.test:5432/incidents",
        "host=db1,db2 port=5432,5433 user=u password=s3cr3t-pw dbname=x": "postgresql://u@db1:5432,db2:5433/x",
        "postgresql://u:s3cr3t-pw@[::1]:6432/x": "postgresql://u@[::1]:6432/x",
    }  # fmt: skip
    for dsn, expected in cases.items():
        s = PostgresStore(dsn)
        assert s.description == expected
        assert "s3cr3t-pw" not in repr(s) and "s3cr3t-pw" not in str(s)
    for bad in ("postgresql://u:s3cr3t-pw@h:5432/db x", "host=h password=s3cr3t-pw garbage"):
        with pytest.raises(StoreError) as err:
            PostgresStore(bad)
        assert "s3cr3t-pw" not in str(err.value) and err.value.__cause__ is None


async def test_connection_errors_are_store_errors_without_the_password(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = make_conninfo(pg_dsn, password="Wr0ng-pa55word")
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    dead = make_conninfo(pg_dsn, host="127.0.0.1", port=str(dead_port), password="Wr0ng-pa55word")
    missing = make_conninfo(pg_dsn, dbname="mce_no_such_database")
    for dsn, expected in (
        (wrong, "password authentication failed|authentication failed"),
        (dead, r"cannot connect.*(refused|failed)"),
        (missing, 'database "mce_no_such_database" does not exist'),
    ):
        s = PostgresStore(dsn, timeout=3)
        t0 = time.monotonic()
        with pytest.raises(StoreError, match=expected) as err:
            await s.open()
        assert time.monotonic() - t0 < 10
        assert str(err.value).startswith(s.description)
        for text in (str(err.value), repr(err.value), caplog.text):
            assert "Wr0ng-pa55word" not in text
            if password_of(pg_dsn):
                assert password_of(pg_dsn) not in text
        with pytest.raises(StoreError, match="not open"):
            await s.ingest([], NOW)
        await s.close()


async def test_closed_store_refuses_writes_and_reads(pg_dsn: str) -> None:
    s = PostgresStore(pg_dsn)
    with pytest.raises(StoreError, match="not open"):
        await s.ingest([], NOW)
    await s.open()
    await s.close()
    await s.close()  # twice is fine
    with pytest.raises(StoreError, match="not open"):
        await s.ingest([], NOW)
    with pytest.raises(StoreError, match="not open"):
        await s.alert_keys()


async def test_readonly_store_reads_and_never_writes(pg_dsn: str) -> None:
    with pytest.raises(StoreError, match="no incident store here"):
        await PostgresStore(pg_dsn, readonly=True).open()
    rw = PostgresStore(pg_dsn)
    await rw.open()
    await rw.ingest(events(am_alert("r", lab(), T, T + 60)), NOW)
    ro = PostgresStore(pg_dsn, readonly=True)
    await ro.open()
    try:
        assert [(r.service, r.started_at, r.ended_at) for r in await ro.incidents(service="inbound")] == [
            ("inbound", T, T + 60)
        ]
        with pytest.raises(StoreError, match="not open"):
            await ro.ingest(events(am_alert("x", lab(), T)), NOW)
        with pytest.raises(StoreError, match="read-only transaction"):  # reads really are read-only
            await ro._read(lambda c: c.execute("DELETE FROM alerts"))
    finally:
        await ro.close()
        await rw.close()


async def test_a_constraint_violation_fails_its_request_alone(store: PostgresStore) -> None:
    good = events(am_alert("ok", lab(), T))[0]
    bogus = AlertEvent("bad", 1, 1.0, None, (), "other", "alertmanager", (Assignment("inbound", "bogus"),))
    outcome = await asyncio.gather(store.ingest([bogus], NOW), store.ingest([good], NOW), return_exceptions=True)
    assert isinstance(outcome[0], StoreError) and "violates check constraint" in str(outcome[0])
    assert isinstance(outcome[1], Changes) and outcome[1].new_alerts == 1
    assert await store.alert_keys() == [("ok", int(T * 1000))]
    batches, committed = store.stats
    assert committed == 1 and batches == 1  # the good one was committed with the failing one's batch


async def test_incident_listing_matches_the_sqlite_format(store: PostgresStore) -> None:
    await store.ingest(events(am_alert("b", lab("warning"), T + 5), am_alert("a", lab(), T)), NOW)
    await store.ingest(events(am_alert("z", lab(service="mx"), T - 100, T - 50)), NOW)
    rows = await store.incidents(service="inbound")
    assert [(r.kind, r.severity, r.started_at, r.ended_at, r.alerts, r.source) for r in rows] == [
        ("incident", "critical", T, None, 2, "alertmanager")
    ]
    assert rows[0].labels == '{"alertname":"MXDown","service":"inbound","severity":"critical"}'  # its earliest alert
    assert [r.started_at for r in await store.incidents()] == [T - 100, T, T]
    assert len(await store.incidents(open_only=True, limit=1)) == 1
    s = await summary(store)
    assert [(o.service, o.open_alerts, o.alertnames) for o in s.open] == [
        ("inbound", 2, ("MXDown",)),
        ("all", 2, ("MXDown",)),
    ]


# --- two exporters on one database -------------------------------------------------------------------------

CLUSTERS = 24
PER_CLUSTER = 6


def cluster_classifier() -> Classifier:
    """A service per cluster ("c0", ...), and one per pair of clusters ("p0", ...): alerts with two services."""
    services = [ServiceConfig(name=f"c{k}", incident_match={"cluster": str(k)}) for k in range(CLUSTERS)]
    services += [ServiceConfig(name=f"p{m}", incident_match={"pair": str(m)}) for m in range(CLUSTERS // 2)]
    return Classifier(services, [])


def cluster_events(*alerts: dict[str, object]) -> list[AlertEvent]:
    return events_from_notification(parse_notification(body(payload(list(alerts)))), cluster_classifier())


def cluster_alerts() -> list[tuple[dict[str, object], dict[str, object]]]:
    """(firing, resolved) Alertmanager alerts of CLUSTERS clusters of PER_CLUSTER alerts.

    Each alert belongs to its cluster's service and its pair's service; a pair shares one
    severity; every fifth cluster is a drill.  Every alert fires before any resolves
    (phases), so while firing, each service has exactly one open incident (or drill) that
    all its alerts join, and it closes when its last alert resolves, at the latest end:
    the figures do not depend on the order in which alerts arrive, only on each being
    applied once, atomically, and on no service getting two incidents.  So any correct
    interleaving of two replicas must give exactly the figures of one store fed in order.
    (Times are multiples of 1/8 s: sums of them are exact in any order.)
    """
    out = []
    for k in range(CLUSTERS):
        base = T - 80_000 + k * 2_500
        severity = ("critical", "warning", "info")[(k // 2) % 3]
        extra = {"drill": "true"} if k % 5 == 4 else {}
        for i in range(PER_CLUSTER):
            labels = lab(severity, **extra) | {"cluster": str(k), "pair": str(k // 2), "n": str(i)}
            start = base + i * 10 + 0.125
            out.append((am_alert(f"c{k}a{i}", labels, start), am_alert(f"c{k}a{i}", labels, start, start + 300 + i)))
    return out


async def feed(s: Store, notes: list[list[AlertEvent]], concurrency: int = 8) -> Changes:
    """Ingest ``notes`` with ``concurrency`` requests in flight (like Alertmanager's parallel webhooks)."""
    total = Changes()
    sem = asyncio.Semaphore(concurrency)

    async def one(evs: list[AlertEvent]) -> None:
        async with sem:
            total.add(await s.ingest(evs, NOW))
            await asyncio.sleep(random.random() / 1000)

    await asyncio.gather(*(one(n) for n in notes))
    return total


def notifications(alerts: list[dict[str, object]], rng: random.Random) -> list[list[AlertEvent]]:
    """The alerts in a shuffled order, grouped into notifications of 1 to 4 alerts."""
    alerts = list(alerts)
    rng.shuffle(alerts)
    out = []
    while alerts:
        n = rng.randint(1, 4)
        out.append(cluster_events(*alerts[:n]))
        del alerts[:n]
    return out


def comparable(s: Summary) -> tuple[Any, ...]:
    return (
        sorted(s.spans, key=repr),
        s.totals,
        s.open_counts,
        s.oldest_open,
        s.recoveries,
        s.last_drill,
        sorted((o.service, o.severity, o.started_at, o.open_alerts, o.alertnames) for o in s.open),
    )


async def listing(s: Store) -> list[tuple[Any, ...]]:
    return sorted(
        (r.service, r.kind, r.severity, r.started_at, r.ended_at, r.source, r.alerts) for r in await s.incidents()
    )


async def test_two_replicas_ingesting_concurrently_give_the_figures_of_one_store(admin: str) -> None:
    rng = random.Random(17)
    pairs = cluster_alerts()
    firing = [f for f, _ in pairs]
    resolved = [r for _, r in pairs]
    with fresh_database(admin) as ref_dsn, fresh_database(admin) as ha_dsn:
        ref = PostgresStore(ref_dsn)
        a, b = PostgresStore(ha_dsn), PostgresStore(ha_dsn)
        await asyncio.gather(ref.open(), a.open(), b.open())
        try:
            # one store, fed once, in order
            ref_changes = await feed(ref, [cluster_events(x) for x in firing], concurrency=1)
            ref_open = comparable(await summary(ref))
            ref_changes.add(await feed(ref, [cluster_events(x) for x in resolved], concurrency=1))
            ref_done = comparable(await summary(ref))

            # the pair: every firing alert through both replicas, in different orders, plus repeats
            sent = 0
            phase1 = []
            for s in (a, b):
                notes = notifications(firing + rng.sample(firing, len(firing) // 4), rng)
                sent += sum(len(n) for n in notes)
                phase1.append(feed(s, notes))
            got = await asyncio.gather(*phase1)
            for s in (a, b):  # both replicas see the same figures, equal to the one store's
                assert comparable(await summary(s)) == ref_open
            # resolutions interleaved: each through one replica or both, with stale firing repeats
            only_a, only_b, both = [], [], []
            for x in resolved:
                [only_a, only_b, both][rng.randrange(3)].append(x)
            stale = rng.sample(firing, len(firing) // 3)
            notes_a = notifications(only_a + both + stale, rng)
            notes_b = notifications(only_b + both, rng)
            sent += sum(len(n) for n in notes_a + notes_b)
            got += await asyncio.gather(feed(a, notes_a), feed(b, notes_b))
            total = Changes()
            for ch in got:
                total.add(ch)

            for s in (a, b):
                assert comparable(await summary(s)) == ref_done
                assert await listing(s) == await listing(ref)
            keys = await a.alert_keys()
            assert len(keys) == len(set(keys)) == len(pairs)
            # every occurrence stored, opened and resolved once; every other event a repeat
            assert (total.new_alerts, total.resolved_alerts) == (len(pairs), len(pairs))
            assert (total.opened, total.closed) == (ref_changes.opened, ref_changes.closed)
            assert total.repeats == sent - 2 * len(pairs)
            # each event applied exactly once: seen counts every delivery of its occurrence
            assert query(ha_dsn, "SELECT sum(seen) FROM alerts") == [(sent,)]
            # by hand: each cluster's service has one record, of its kind; each pair's service one of each kind it has
            expected: dict[tuple[str, str], int] = {}
            for k in range(CLUSTERS):
                kind = "drill" if k % 5 == 4 else "incident"
                expected[(f"c{k}", kind)] = 1
                expected[(f"p{k // 2}", kind)] = 1
            rows = query(ha_dsn, "SELECT service, kind, count(*) FROM incidents GROUP BY service, kind")
            assert {(r[0], r[1]): r[2] for r in rows} == expected
            n_incidents = sum(1 for (_, kind) in expected if kind == "incident")
            assert ref_changes.opened == n_incidents
            assert sum(ref_open[2].values()) == n_incidents  # all open after the firing phase (open_counts)
        finally:
            await asyncio.gather(ref.close(), a.close(), b.close())


async def test_a_writer_waits_for_the_other_replicas_lock_without_blocking_the_loop(
    store: PostgresStore, pg_dsn: str
) -> None:
    await store.ingest(events(am_alert("before", lab(), T)), NOW)
    with psycopg.connect(pg_dsn, autocommit=True) as other:  # the other replica, mid-transaction
        other.execute("BEGIN")
        other.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        with LoopLag() as lag:
            write = asyncio.ensure_future(store.ingest(events(am_alert("after", lab(), T + 1)), NOW))
            await asyncio.sleep(1.0)
            assert not write.done()  # waits for the lock...
            assert await store.alert_keys() == [("before", int(T * 1000))]  # ...while reads go on
            other.execute("COMMIT")
            ch = await asyncio.wait_for(write, 5)
        assert ch.new_alerts == 1
        assert lag.worst < STALL_BOUND, f"the event loop stalled for {lag.worst:.3f} s"


async def test_a_lock_held_too_long_fails_the_write(pg_dsn: str) -> None:
    s = PostgresStore(pg_dsn, timeout=1)
    await s.open()
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as other:
            other.execute("BEGIN")
            other.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            t0 = time.monotonic()
            with pytest.raises(StoreError, match="write lock for more than 1 s"):
                await s.ingest(events(am_alert("x", lab(), T)), NOW)
            assert time.monotonic() - t0 < 5
            other.execute("ROLLBACK")
        assert (await s.ingest(events(am_alert("x", lab(), T)), NOW)).new_alerts == 1  # same connection, fine
    finally:
        await s.close()


# --- the server goes away, and comes back ----------------------------------------------------------------


class TcpProxy:
    """A loopback TCP proxy to the server that can be cut (every connection reset, nothing listening)
    and restored on the same port: the server going away and coming back, as the store sees it."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def _upstream(self) -> socket.socket:
        host, port = self.target
        if host.startswith("/"):  # a Unix socket directory
            s = socket.socket(socket.AF_UNIX)
            s.connect(f"{host}/.s.PGSQL.{port}")
            return s
        return socket.create_connection((host, port), timeout=5)

    def start(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self.port = ls.getsockname()[1]
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                upstream = self._upstream()
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    restore = start


def pg_ctl(datadir: str, *args: str, bin_dir: str | None = None, log: str | None = None) -> None:
    """Run pg_ctl on a cluster, as the owner of its data directory."""
    exe = (
        str(Path(bin_dir) / "pg_ctl")
        if bin_dir
        else shutil.which("pg_ctl") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)))
    )
    cmd = [exe, "-D", datadir, "-l", log or str(Path(datadir).parent / "log"), "-w", *args]
    owner = Path(datadir).owner()
    if os.geteuid() == 0 and owner != "root":
        cmd = ["runuser", "-u", owner, "--", *cmd]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


async def until_ok(what: str, fn: Any, timeout: float) -> float:
    """Call ``fn`` until it stops raising StoreError; returns the seconds it took."""
    t0 = time.monotonic()
    while True:
        try:
            await fn()
            return time.monotonic() - t0
        except StoreError:
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"{what} did not recover within {timeout} s") from None
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("outage", ["connections-cut", "server-crash"])
async def test_server_outage_fails_writes_then_the_store_recovers_by_itself(
    pg_dsn: str, outage: str, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    """The server goes away while writes flow: writes fail fast (StoreError: the webhook answers 503), reads
    fail within the timeout, the event loop runs on; when the server is back the same store works again,
    and every acknowledged write is there, once.  ``server-crash`` kills the server (``pg_ctl stop -m
    immediate``: no checkpoint, crash recovery at start), so it also shows that acknowledged means durable."""
    params = conninfo_to_dict(pg_dsn)
    datadir = os.environ.get("MCE_TEST_PG_DATADIR")
    proxy: TcpProxy | None = None
    crash: Callable[[], None] | None = None
    restart: Callable[[], None] | None = None
    if outage == "server-crash":
        if os.environ.get("MCE_TEST_PG_DSN"):
            if not datadir:
                pytest.skip("needs MCE_TEST_PG_DATADIR with MCE_TEST_PG_DSN: a private server this test may crash")
            crash = functools.partial(pg_ctl, datadir, "stop", "-m", "immediate")
            restart = functools.partial(pg_ctl, datadir, "start")
        else:  # the test stack's server: crash it, then start it as the stack does
            stack = request.getfixturevalue("stack")
            pg = stack.postgresql
            crash = functools.partial(
                pg_ctl, str(pg["data_dir"]), "stop", "-m", "immediate", bin_dir=str(pg["bin_dir"]), log=str(pg["log"])
            )
            restart = functools.partial(stack.start, "postgresql")
        dsn = pg_dsn
    else:
        proxy = TcpProxy(str(params.get("host") or "/var/run/postgresql"), int(params.get("port") or 5432))
        proxy.start()
        dsn = make_conninfo(pg_dsn, host="127.0.0.1", port=str(proxy.port))

    def down() -> None:
        if proxy is not None:
            proxy.cut()
        else:
            assert crash is not None
            crash()

    def up() -> None:
        if proxy is not None:
            proxy.restore()
        else:
            assert restart is not None
            restart()

    acked: list[tuple[str, int]] = []
    failed = 0
    flooding = True

    async def flood(j: int) -> None:  # webhook traffic that goes on through the outage
        nonlocal failed
        i = 0
        while flooding:
            i += 1
            starts = T + 100 + j * 100_000 + i
            try:
                await s.ingest(events(am_alert(f"flood{j}-{i}", lab(), starts)), NOW)
                acked.append((f"flood{j}-{i}", int(starts * 1000)))
            except StoreError:
                failed += 1
                await asyncio.sleep(0.02)

    s = PostgresStore(dsn, timeout=3)
    await s.open()
    flooders: list[asyncio.Task[None]] = []
    try:
        await s.ingest(events(am_alert("before", lab(), T)), NOW)
        assert (await summary(s)).open_counts == {("inbound", "critical"): 1, ("all", "critical"): 1}
        writer = s._writer
        assert writer is not None and writer.connects == 1
        flooders = [asyncio.create_task(flood(j)) for j in range(8)]
        await asyncio.sleep(0.5)
        before_outage = len(acked)
        assert before_outage > 0
        await asyncio.to_thread(down)
        try:
            with LoopLag() as lag:
                for i in range(3):  # each write fails, and fast: the webhook answers 503, Alertmanager retries
                    t0 = time.monotonic()
                    with pytest.raises(StoreError) as err:
                        await s.ingest(events(am_alert("during", lab(), T + 1)), NOW)
                    assert time.monotonic() - t0 < 5, f"write {i} took {time.monotonic() - t0:.1f} s to fail"
                    assert str(err.value).startswith(s.description)
                    if password_of(pg_dsn):
                        assert password_of(pg_dsn) not in str(err.value)
                t0 = time.monotonic()
                with pytest.raises(StoreError, match="store read failed"):
                    await summary(s)
                assert time.monotonic() - t0 < 10
            assert lag.worst < STALL_BOUND, f"the event loop stalled for {lag.worst:.3f} s"
            assert failed > 0
        finally:
            await asyncio.to_thread(up)
        # back: no reopen, no restart
        again = events(am_alert("during", lab(), T + 1), am_alert("after", lab(), T + 2))
        took = await until_ok("ingestion", lambda: s.ingest(again, NOW), 15)
        assert took < 10
        await until_ok("reads", lambda: summary(s), 30)
        assert writer.connects >= 2 and s._writer is writer
        count = len(acked)
        await asyncio.sleep(0.3)
        assert len(acked) > count  # the traffic flows again
        flooding = False
        await asyncio.gather(*flooders)
        keys = await s.alert_keys()
        assert len(keys) == len(set(keys))
        missing = set(acked) - set(keys)
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {sorted(missing)[:3]}"
        assert sorted(k for k in keys if not k[0].startswith("flood")) == sorted(
            [("before", int(T * 1000)), ("during", int((T + 1) * 1000)), ("after", int((T + 2) * 1000))]
        )
        s2 = await summary(s)
        assert s2.open_counts == {("inbound", "critical"): 1, ("all", "critical"): 1}  # still one incident each
        if password_of(pg_dsn):
            assert password_of(pg_dsn) not in caplog.text
    finally:
        flooding = False
        await asyncio.gather(*flooders, return_exceptions=True)
        await s.close()
        if proxy is not None:
            proxy.cut()
