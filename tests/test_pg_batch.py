"""The PostgreSQL writer's batch path (:mod:`exporter.continuity.store.pgbatch`) against SQLite.

The batch path applies the incident rules to a working set read in one statement and
writes everything back in one statement (see the module's docstring).  These tests feed
the same requests to a :class:`PostgresStore` and to a :class:`SqliteStore` (the
reference: statement by statement) and compare everything stored: each request's
outcome (its :class:`Changes`, or that it failed), the figures, and every row of every
table (by natural keys: the ids of the two stores may differ, their order may not).

The server is the test stack's PostgreSQL (or ``MCE_TEST_PG_DSN``), a fresh database per
test, like ``test_continuity_store_pg.py``.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from test_continuity_store_pg import admin, comparable, fresh_database, listing, query  # noqa: F401 - admin: fixture
from test_continuity_support import am_alert, body, payload

from exporter.config import ServiceConfig
from exporter.continuity.figures import RECOVERY_BUCKETS
from exporter.continuity.incidents import (
    AlertEvent,
    Assignment,
    Changes,
    Classifier,
    ImportRecord,
    MaintenanceSpan,
    events_from_notification,
)
from exporter.continuity.store import DB_NAME, PostgresStore, SqliteStore, Store, Summary
from exporter.continuity.store.pgbatch import alert_sequence, run_batch
from exporter.continuity.webhook import parse_notification
from exporter.core.errors import StoreError

T = 1_800_000_000.0
NOW = T + 40_000
SERVICES = [
    ServiceConfig(name="inbound", incident_match={"service": "inbound"}),
    ServiceConfig(name="outbound", incident_match={"service": "outbound"}),
    ServiceConfig(name="all"),  # every alert: each alert belongs to two services
]
WINDOW = MaintenanceSpan("inbound", T + 20_000, T + 21_000)


def classifier() -> Classifier:
    return Classifier(SERVICES, [WINDOW])


def lab(service: str = "inbound", severity: str = "critical", **extra: str) -> dict[str, str]:
    return {"alertname": "MXDown", "service": service, "severity": severity, **extra}


def events(*alerts: dict[str, object]) -> list[AlertEvent]:
    return events_from_notification(parse_notification(body(payload(list(alerts)))), classifier())


def bogus(fingerprint: str) -> list[AlertEvent]:
    """A request that fails in both stores: its incident's kind breaks the CHECK constraint."""
    return [AlertEvent(fingerprint, 1, 1.0, None, (), "other", "alertmanager", (Assignment("inbound", "bogus"),))]


@pytest.fixture
async def stores(admin: str, tmp_path: Path) -> AsyncIterator[tuple[PostgresStore, SqliteStore, str]]:  # noqa: F811
    with fresh_database(admin) as dsn:
        pg = PostgresStore(dsn, timeout=5)
        lite = SqliteStore(tmp_path)
        await asyncio.gather(pg.open(), lite.open())
        try:
            yield pg, lite, dsn
        finally:
            await asyncio.gather(pg.close(), lite.close())


Request = Callable[[Store], Awaitable[Changes]]


def ingest(evs: Sequence[AlertEvent], now: float = NOW) -> Request:
    return lambda s: s.ingest(evs, now)


def op(name: str, *args: Any) -> Request:
    """A named operation as the stores' writers take it (both have ``_write``)."""

    async def run(s: Store) -> Changes:
        result: Changes = await s._write((name, args))  # type: ignore[attr-defined]
        return result

    return run


async def batch(s: Store, requests: Sequence[Request]) -> list[Changes | str]:
    """Hand ``requests`` over together (one event-loop iteration: one batch); each one's Changes or error."""
    outcomes = await asyncio.gather(*(r(s) for r in requests), return_exceptions=True)
    out: list[Changes | str] = []
    for o in outcomes:
        if isinstance(o, BaseException):
            assert isinstance(o, StoreError), repr(o)
            out.append("failed")
        else:
            out.append(o)
    return out


# Every row, by natural keys (an incident by its rank in id order; an alert by its key).
DUMP = {
    "alerts": "SELECT fingerprint, starts_ms, starts_at, ends_at, severity, labels, source, first_seen, last_seen,"
    " seen FROM alerts ORDER BY id",
    "incidents": "SELECT service, kind, severity, opened_severity, started_at, ended_at, open_alerts, last_end,"
    " window_end, promoted, source, import_key, labels, created_at FROM incidents ORDER BY id",
    "links": "SELECT (SELECT count(*) FROM incidents j WHERE j.id <= ia.incident_id), a.fingerprint, a.starts_ms"
    " FROM incident_alerts ia JOIN alerts a ON a.id = ia.alert_id ORDER BY 1, 2, 3",
    "recoveries": "SELECT (SELECT count(*) FROM incidents j WHERE j.id <= r.incident_id), service, severity,"
    " seconds, recorded_at FROM recoveries r ORDER BY 1",
}


def normal(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [tuple(bool(v) if isinstance(v, bool) else v for v in r) for r in rows]


def dump_pg(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    out = {k: normal(query(dsn, q)) for k, q in DUMP.items()}
    out["incidents"] = [(*r[:9], int(r[9]), *r[10:]) for r in out["incidents"]]  # promoted: 0/1 as in SQLite
    return out


def dump_sqlite(directory: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(directory / DB_NAME)
    try:
        return {k: normal(conn.execute(q).fetchall()) for k, q in DUMP.items()}
    finally:
        conn.close()


async def figures(s: Store) -> tuple[Any, ...]:
    summ: Summary = await s.summary(NOW, T - 86_400, RECOVERY_BUCKETS)
    return (comparable(summ), await listing(s), sorted(await s.alert_keys()), await s.firing_check_outages())


async def assert_same(pg: PostgresStore, lite: SqliteStore, dsn: str) -> None:
    assert await figures(pg) == await figures(lite)
    assert dump_pg(dsn) == dump_sqlite(lite.directory)


def writer_stats(pg: PostgresStore) -> tuple[int, int, int, int]:
    """(transactions, replayed batches, round trips and statements of the batch path) so far."""
    w = pg._writer
    assert w is not None
    return w.batches, w.replays, w.round_trips, w.statements


# --- a mixed batch ----------------------------------------------------------------------------------------------


def mixed_batch(failing: bool) -> list[Request]:
    """New alerts, repeats, resolutions, two services, a late alert, a drill, maintenance, and maybe a failure."""
    out = [
        ingest(events(am_alert("new1", lab(), T + 100), am_alert("new2", lab("outbound", "warning"), T + 110))),
        ingest(events(am_alert("old1", lab(), T)), NOW + 1),  # a repeat of a stored firing alert
        ingest(events(am_alert("old2", lab("outbound"), T + 5, T + 500)), NOW + 2),  # resolves: outbound closes?
        ingest(events(am_alert("new1", lab(), T + 100)), NOW + 3),  # a repeat of an alert new in this batch
        ingest(events(am_alert("late", lab(severity="info"), T - 50))),  # starts before its incident
        ingest(events(am_alert("gone", lab("outbound"), T - 9_000, T - 8_000))),  # arrives resolved: a past incident
        ingest(events(am_alert("gone2", lab("outbound"), T - 8_500, T - 7_000))),  # joins that past incident
        ingest(events(am_alert("drill", lab(drill="true"), T + 200))),
        ingest(events(am_alert("maint", lab(), T + 20_100))),  # inside the window
        ingest(events(am_alert("new2", lab("outbound", "warning"), T + 110, T + 900)), NOW + 4),  # new2 resolves
        ingest(events(am_alert("old3", lab(), T + 7, T + 600))),  # resolves; old1 still fires: inbound stays open
        # outbound closed above (at new2's end); a late alert reopens it, then closes it again: its
        # recovery stays the first one (recorded once per incident)
        ingest(events(am_alert("re", lab("outbound"), T + 800)), NOW + 5),
        ingest(events(am_alert("re", lab("outbound"), T + 800, T + 1_200)), NOW + 6),
    ]
    if failing:
        out.insert(4, ingest(bogus("bad")))
        out.append(ingest(bogus("bad2") + events(am_alert("with-bad", lab(), T + 300))))  # fails as a whole
    return out


async def prepare(s: Store) -> None:
    await batch(
        s,
        [
            ingest(events(am_alert("old1", lab(), T), am_alert("old3", lab(), T + 7))),
            ingest(events(am_alert("old2", lab("outbound"), T + 5))),
        ],
    )


@pytest.mark.parametrize("failing", [False, True], ids=["clean", "one-failing"])
async def test_a_mixed_batch_gives_the_figures_of_sqlite(
    stores: tuple[PostgresStore, SqliteStore, str], failing: bool
) -> None:
    pg, lite, dsn = stores
    await prepare(pg)
    await prepare(lite)
    await assert_same(pg, lite, dsn)
    before = writer_stats(pg)
    got_pg = await batch(pg, mixed_batch(failing))
    got_lite = await batch(lite, mixed_batch(failing))
    batches, replays, _, _ = (a - b for a, b in zip(writer_stats(pg), before, strict=True))
    assert batches == 1  # all in one transaction
    if failing:
        assert replays == 1  # replayed statement by statement, savepoints isolating the failures
        assert [o for o in got_pg if o == "failed"] == ["failed", "failed"]
    else:
        assert replays == 0  # (round trips: the prefetch, COMMIT, and one per new incident or closed-incident look-up)
    assert got_pg == got_lite
    await assert_same(pg, lite, dsn)
    total = Changes()
    for o in got_pg:
        if isinstance(o, Changes):
            total.add(o)
    assert (total.new_alerts, total.repeats) == (8, 2)  # new1, new2, late, gone, gone2, drill, maint, re; old1, new1


async def test_a_failing_request_commits_the_others_exactly_once(
    stores: tuple[PostgresStore, SqliteStore, str],
) -> None:
    pg, lite, dsn = stores
    good = [events(am_alert(f"ok{i}", lab("inbound" if i % 2 else "outbound"), T + i)) for i in range(20)]
    requests = [ingest(e) for e in good[:10]] + [ingest(bogus("bad"))] + [ingest(e) for e in good[10:]]
    before = writer_stats(pg)
    got = await batch(pg, requests)
    assert writer_stats(pg)[:2] == (before[0] + 1, before[1] + 1)  # one batch, replayed once
    assert got[10] == "failed"
    assert all(isinstance(o, Changes) and o.new_alerts == 1 for o in got[:10] + got[11:])
    # each stored once, seen once, counted once; the failed one not at all
    assert query(dsn, "SELECT count(*), sum(seen), count(DISTINCT fingerprint) FROM alerts") == [(20, 20, 20)]
    assert query(dsn, "SELECT count(*) FROM alerts WHERE fingerprint = 'bad'") == [(0,)]
    assert await batch(lite, requests) == got
    await assert_same(pg, lite, dsn)
    # and the next batch takes the fast path again
    before = writer_stats(pg)
    again = await batch(pg, [ingest(e) for e in good])
    assert writer_stats(pg)[:2] == (before[0] + 1, before[1])
    assert all(isinstance(o, Changes) and o.repeats == 1 and not o.changed for o in again)
    assert query(dsn, "SELECT sum(seen) FROM alerts") == [(40,)]


async def test_a_batch_is_five_statements_in_two_round_trips(stores: tuple[PostgresStore, SqliteStore, str]) -> None:
    pg, _, _ = stores
    await batch(pg, [ingest(events(am_alert("a", lab(), T)))])  # opens the incidents
    before = writer_stats(pg)
    requests = [ingest(events(am_alert(f"n{i}", lab(), T + i), am_alert(f"m{i}", lab(), T + i))) for i in range(30)]
    requests += [ingest(events(am_alert("a", lab(), T)))]
    await batch(pg, requests)
    # BEGIN, the lock and the read; the write and COMMIT
    assert tuple(a - b for a, b in zip(writer_stats(pg), before, strict=True)) == (1, 0, 2, 5)


async def test_a_lock_timeout_fails_the_batch_and_is_not_replayed(admin: str) -> None:  # noqa: F811
    """Waiting too long for the write lock fails the whole batch (StoreError), never request by request."""
    import psycopg

    from exporter.continuity.store.postgres import LOCK_KEY

    with fresh_database(admin) as dsn:
        pg = PostgresStore(dsn, timeout=1)
        await pg.open()
        try:
            with psycopg.connect(dsn, autocommit=True) as other:
                other.execute("BEGIN")
                other.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                got = await batch(pg, [ingest(events(am_alert(f"x{i}", lab(), T + i))) for i in range(3)])
                assert got == ["failed"] * 3
                assert writer_stats(pg)[:2] == (1, 0)
                other.execute("ROLLBACK")
            assert (await pg.ingest(events(am_alert("x0", lab(), T)), NOW)).new_alerts == 1
        finally:
            await pg.close()


# --- random histories -------------------------------------------------------------------------------------------


def random_requests(rng: random.Random, n: int) -> list[list[Request]]:
    """Random batches of webhook notifications (firing, repeats, resolutions, stale repeats, resolved first,
    drills, maintenance, two services per alert), reconciliations, overrun promotions and imports."""
    occurrences: list[tuple[str, dict[str, str], float, float]] = []
    for k in range(40):
        service = rng.choice(["inbound", "outbound"])
        extra = {"drill": "true"} if rng.random() < 0.1 else {}
        start = T + rng.choice([rng.randrange(0, 30_000), 20_000 + rng.randrange(0, 900)]) + 0.125 * rng.randrange(8)
        occurrences.append(
            (
                f"fp{k % 25}",
                lab(service, rng.choice(["critical", "warning", "info"]), **extra),
                start,
                start + 0.125 * rng.randrange(1, 40_000),
            )
        )
    state = dict.fromkeys(range(len(occurrences)), False)  # sent as firing at least once
    batches: list[list[Request]] = []
    clock = NOW
    for _ in range(n):
        reqs: list[Request] = []
        for _ in range(rng.randint(1, 12)):
            clock += 0.5
            roll = rng.random()
            if roll < 0.05:
                active = frozenset(
                    (fp, round(start * 1000)) for fp, _, start, _ in rng.sample(occurrences, len(occurrences) // 2)
                )
                k = rng.randrange(len(occurrences))
                fp, labels, start, _ = occurrences[k]
                reqs.append(op("reconcile", active, events(am_alert(fp, labels, start)), clock - 10, clock))
            elif roll < 0.08:
                reqs.append(op("promote", clock))
            elif roll < 0.10:
                start = T + 0.125 * rng.randrange(0, 200_000)
                labels = tuple(sorted({"service": "inbound", "import": "yes"}.items()))
                reqs.append(
                    op("import", [ImportRecord("inbound", "warning", start, start + 60, labels, "test")], clock)
                )
            elif roll < 0.12:
                reqs.append(ingest(bogus(f"bad{rng.randrange(5)}"), clock))
            else:
                picked = rng.sample(range(len(occurrences)), rng.randint(1, 4))
                alerts = []
                for k in picked:
                    fp, labels, start, end = occurrences[k]
                    resolved = (state[k] and rng.random() < 0.5) or rng.random() < 0.1
                    state[k] = True
                    alerts.append(am_alert(fp, labels, start, end if resolved else None))
                reqs.append(ingest(events(*alerts), clock))
        batches.append(reqs)
    return batches


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_histories_give_the_figures_of_sqlite(
    stores: tuple[PostgresStore, SqliteStore, str], seed: int
) -> None:
    pg, lite, dsn = stores
    rng = random.Random(seed)
    for reqs in random_requests(rng, 25):
        got_pg = await batch(pg, reqs)
        got_lite = await batch(lite, reqs)
        assert got_pg == got_lite
    await assert_same(pg, lite, dsn)
    w = pg._writer
    assert w is not None and w.batches > w.replays  # most batches took the fast path


async def test_run_batch_leaves_a_failed_transaction_to_the_caller(admin: str) -> None:  # noqa: F811
    """run_batch answers None for a failing request, and nothing of the batch is committed."""
    with fresh_database(admin) as dsn:
        s = PostgresStore(dsn, timeout=5)
        await s.open()
        await s.close()
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            ops = [("ingest", (events(am_alert("a", lab(), T)), NOW)), ("ingest", (bogus("b"), NOW))]
            assert run_batch(conn, ops, 1, alert_sequence(conn)) is None
            conn.execute("ROLLBACK")
            assert conn.execute("SELECT count(*) FROM alerts").fetchone() == (0,)
            done = run_batch(conn, ops[:1], 1, alert_sequence(conn))
            assert done is not None and done[1].statusmessage == "COMMIT"
            assert conn.execute("SELECT count(*) FROM alerts").fetchone() == (1,)
