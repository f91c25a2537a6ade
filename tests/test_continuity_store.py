"""The SQLite incident store and the incident rules, against a real database file.

The store-independent tests here also run against PostgreSQL: test_continuity_store_pg.py
imports them by name (with its own ``store`` fixture).  Keep them to the :class:`Store`
interface (plus ``_write``, ``_read`` and ``stats``, which both stores have).
"""

from __future__ import annotations

import asyncio
import pickle
import sqlite3
import threading
from pathlib import Path
from typing import Literal

import pytest
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
    severity_of,
)
from exporter.continuity.store import DB_NAME, SCHEMA_VERSION, SqliteStore, Summary, migrate
from exporter.continuity.store.tx import decode_op, decode_result, encode_op, encode_result
from exporter.continuity.webhook import parse_notification
from exporter.core.errors import StoreError

T = 1_800_000_000.0
NOW = T + 10_000
SERVICES = [
    ServiceConfig(name="inbound", incident_match={"service": "inbound"}),
    ServiceConfig(name="all"),  # empty match: every alert
]
WINDOW = MaintenanceSpan("inbound", T + 5_000, T + 6_000)


def classifier() -> Classifier:
    return Classifier(SERVICES, [WINDOW])


def events(*alerts: dict[str, object]) -> list[AlertEvent]:
    return events_from_notification(parse_notification(body(payload(list(alerts)))), classifier())


def lab(severity: str = "critical", **extra: str) -> dict[str, str]:
    return {"alertname": "MXDown", "service": "inbound", "severity": severity, **extra}


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = SqliteStore(tmp_path)
    await s.open()
    yield s
    await s.close()


async def summary(s: SqliteStore) -> Summary:
    return await s.summary(NOW, T - 86_400, RECOVERY_BUCKETS)


def incidents(summ: Summary, service: str = "inbound", kind: str = "incident") -> list[tuple[float, float | None]]:
    return sorted((x.start, x.end) for x in summ.spans if x.service == service and x.kind == kind)


async def test_firing_opens_repeat_is_a_duplicate_resolved_closes(store: SqliteStore) -> None:
    firing = am_alert("fp1", lab(), T)
    ch = await store.ingest(events(firing), NOW)
    assert (ch.new_alerts, ch.opened) == (1, 2)  # one incident each in "inbound" and "all"
    s = await summary(store)
    assert incidents(s) == [(T, None)]
    assert s.open_counts == {("inbound", "critical"): 1, ("all", "critical"): 1}
    assert s.oldest_open["inbound"] == T
    for _ in range(3):  # Alertmanager repeats the notification: nothing changes
        ch = await store.ingest(events(firing), NOW)
        assert (ch.new_alerts, ch.repeats, ch.opened, ch.changed) == (0, 1, 0, False)
    ch = await store.ingest(events(am_alert("fp1", lab(), T, T + 300)), NOW)
    assert (ch.resolved_alerts, ch.closed) == (1, 2)
    s = await summary(store)
    assert incidents(s) == [(T, T + 300)]
    assert s.totals[("inbound", "critical")] == 1
    assert s.open_counts == {}
    hist = s.recoveries[("inbound", "critical")]
    assert hist.count == 1 and hist.total == 300
    assert hist.counts[RECOVERY_BUCKETS.index(300.0)] == 1 and hist.counts[0] == 0  # le=60 -> 0, le=300 -> 1
    assert await store.alert_keys() == [("fp1", int(T * 1000))]


async def test_incident_spans_first_start_to_last_end(store: SqliteStore) -> None:
    await store.ingest(events(am_alert("a", lab(), T), am_alert("b", lab("warning"), T + 100)), NOW)
    await store.ingest(events(am_alert("b", lab("warning"), T + 100, T + 200)), NOW)
    s = await summary(store)
    assert incidents(s) == [(T, None)]  # "a" still firing
    await store.ingest(events(am_alert("a", lab(), T, T + 150)), NOW)
    s = await summary(store)
    assert incidents(s) == [(T, T + 200)]  # closes at the last end, not the last resolution
    assert s.totals == {("inbound", "critical"): 1, ("all", "critical"): 1}


async def test_resolved_before_firing(store: SqliteStore) -> None:
    await store.ingest(events(am_alert("fp", lab(), T, T + 60)), NOW)
    await store.ingest(events(am_alert("fp", lab(), T)), NOW)  # the late firing notification
    s = await summary(store)
    assert incidents(s) == [(T, T + 60)]
    assert s.totals[("inbound", "critical")] == 1 and s.open_counts == {}


async def test_flapping_alert_makes_one_incident_per_flap(store: SqliteStore) -> None:
    for k in range(3):
        start = T + k * 1_000
        await store.ingest(events(am_alert("flap", lab(), start)), NOW)
        await store.ingest(events(am_alert("flap", lab(), start)), NOW)  # repeat
        await store.ingest(events(am_alert("flap", lab(), start, start + 100)), NOW)
        await store.ingest(events(am_alert("flap", lab(), start)), NOW)  # stale repeat after the resolution
    s = await summary(store)
    assert incidents(s) == [(T, T + 100), (T + 1_000, T + 1_100), (T + 2_000, T + 2_100)]
    assert s.totals[("inbound", "critical")] == 3


async def test_late_alert_moves_start_back_and_overlapping_resolved_joins(store: SqliteStore) -> None:
    await store.ingest(events(am_alert("x", lab(), T + 500)), NOW)
    await store.ingest(events(am_alert("y", lab(), T + 100, T + 600)), NOW)  # overlaps, started earlier
    await store.ingest(events(am_alert("z", lab(), T - 900, T - 800)), NOW)  # before: its own incident
    await store.ingest(events(am_alert("x", lab(), T + 500, T + 700)), NOW)
    s = await summary(store)
    assert incidents(s) == [(T - 900, T - 800), (T + 100, T + 700)]


async def test_severity_is_bounded_and_escalates(store: SqliteStore) -> None:
    assert [severity_of(x) for x in ("CRITICAL", " warning", "info", "page", "")] == [
        "critical",
        "warning",
        "info",
        "other",
        "other",
    ]
    await store.ingest(events(am_alert("w", lab("warning"), T)), NOW)
    await store.ingest(events(am_alert("c", lab("Critical"), T + 10)), NOW)
    s = await summary(store)
    assert s.open_counts[("inbound", "critical")] == 1  # escalated
    assert s.totals[("inbound", "warning")] == 1  # counted under the severity it opened with


async def test_drills_are_not_incidents(store: SqliteStore) -> None:
    await store.ingest(events(am_alert("d", lab(drill="true"), T, T + 420)), NOW)
    s = await summary(store)
    assert incidents(s) == [] and s.totals == {}
    assert incidents(s, kind="drill") == [(T, T + 420)]
    assert s.last_drill["inbound"] == (T + 420, 420)


async def test_maintenance_and_overrun(store: SqliteStore) -> None:
    # starts inside the window [T+5000, T+6000): maintenance for "inbound", an incident for "all"
    await store.ingest(events(am_alert("m", lab(), T + 5_100, T + 5_500)), NOW)
    s = await summary(store)
    assert incidents(s) == [] and ("inbound", "critical") not in s.totals
    assert incidents(s, "all") == [(T + 5_100, T + 5_500)]
    # still firing when the window ends: an incident opens at the window's end
    await store.ingest(events(am_alert("o", lab(), T + 5_800)), NOW)
    assert (await store.promote_overruns(T + 5_900)).opened == 0  # window not over yet
    ch = await store.promote_overruns(T + 6_100)
    assert ch.opened == 1
    assert (await store.promote_overruns(T + 6_200)).opened == 0  # once only
    await store.ingest(events(am_alert("o", lab(), T + 5_800, T + 6_400)), NOW)
    s = await summary(store)
    assert incidents(s) == [(T + 6_000, T + 6_400)]


async def test_reconcile_resolves_only_missing_alerts_seen_before_the_fetch(store: SqliteStore) -> None:
    await store.ingest(events(am_alert("gone", lab(), T), am_alert("kept", lab(), T + 1)), T + 10)
    await store.ingest(events(am_alert("new", lab(), T + 2)), T + 30)  # arrived after the fetch below
    active = frozenset({("kept", int((T + 1) * 1000))})
    missed = events(am_alert("missed", lab(), T + 3))  # Alertmanager has it, we never got it
    ch = await store.reconcile(active, [dict_source(e, "reconcile") for e in missed], T + 20, T + 40)
    assert ch.resolved_alerts == 1 and ch.new_alerts == 1
    keys = dict.fromkeys(await store.alert_keys())
    assert ("missed", int((T + 3) * 1000)) in keys
    s = await summary(store)
    assert incidents(s) == [(T, None)]  # "kept", "new" and "missed" still firing
    ch = await store.reconcile(frozenset(), [], T + 100, T + 120)
    assert ch.resolved_alerts == 3
    s = await summary(store)
    assert incidents(s) == [(T, T + 120)]  # closed when the reconciler noticed


def dict_source(ev: AlertEvent, source: str) -> AlertEvent:
    return AlertEvent(
        ev.fingerprint, ev.starts_ms, ev.starts_at, ev.ends_at, ev.labels, ev.severity, source, ev.assignments
    )


async def test_import_is_idempotent(store: SqliteStore) -> None:
    recs = [
        ImportRecord("inbound", "critical", T - 5_000, T - 4_000, (("alertname", "Old"),), "f line 1"),
        ImportRecord("inbound", "warning", T - 3_000, T - 2_940, (("drill", "true"),), "f line 2"),
    ]
    ch = await store.import_records(recs, NOW)
    assert (ch.imported, ch.skipped) == (2, 0)
    ch = await store.import_records(recs, NOW)
    assert (ch.imported, ch.skipped) == (0, 2)
    s = await summary(store)
    assert incidents(s) == [(T - 5_000, T - 4_000)]
    assert incidents(s, kind="drill") == [(T - 3_000, T - 2_940)]
    assert s.recoveries[("inbound", "critical")].count == 1


async def test_group_commit_batches_concurrent_requests(store: SqliteStore) -> None:
    evs = [events(am_alert(f"g{i}", lab(), T + i)) for i in range(300)]
    results = await asyncio.gather(*(store.ingest(e, NOW) for e in evs))
    assert sum(r.new_alerts for r in results) == 300
    batches, committed = store.stats
    assert committed == 300 and batches < 300  # several requests per transaction


async def test_a_failing_request_fails_alone(store: SqliteStore) -> None:
    def boom(tx: object) -> None:
        raise RuntimeError("bug")

    good = [store.ingest(events(am_alert(f"ok{i}", lab(), T + i)), NOW) for i in range(20)]
    outcome = await asyncio.gather(store._write(boom), *good, return_exceptions=True)
    assert isinstance(outcome[0], StoreError) and "bug" in str(outcome[0])
    assert all(not isinstance(x, BaseException) for x in outcome[1:])
    assert len(await store.alert_keys()) == 20


async def test_reads_and_writes_stay_off_the_event_loop(store: SqliteStore) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    def probe(tx: object) -> None:
        seen.append(threading.get_ident())

    await store._write(probe)
    await store._read(lambda c: seen.append(threading.get_ident()))
    assert loop_thread not in seen


async def test_file_settings_and_schema_version(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path)
    await s.open()
    # the writer's connection: WAL, fsync at every commit (FULL = 2), foreign keys enforced
    pragmas = await s._write(
        lambda tx: tuple(
            tx.c.execute(f"PRAGMA {p}").fetchone()[0] for p in ("journal_mode", "synchronous", "foreign_keys")
        )
    )
    assert pragmas == ("wal", 2, 1)
    await s.close()
    path = tmp_path / DB_NAME
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    # opening again applies nothing and keeps the data
    s = SqliteStore(tmp_path)
    await s.open()
    await s.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, path)
    conn.execute("INSERT INTO schema_version VALUES (?, 'from the future', 0)", (SCHEMA_VERSION + 1,))
    conn.close()
    with pytest.raises(StoreError, match="newer mail-continuity-exporter"):
        await SqliteStore(tmp_path).open()


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_not_a_database_is_a_store_error(tmp_path: Path, writer: Literal["thread", "process"]) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"mail-continuity.sqlite: cannot open the incident store: .*not a database"):
        await SqliteStore(tmp_path, writer=writer).open()


async def test_unwritable_directory_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create the storage directory"):
        await SqliteStore(blocker / "sub").open()


async def test_closed_store_refuses_writes(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path)
    await s.open()
    await s.close()
    with pytest.raises(StoreError, match="not open"):
        await s.ingest([], NOW)


# --- the writer process (what the exporter uses) ----------------------------------------------------


@pytest.fixture
async def pstore(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = SqliteStore(tmp_path, writer="process")
    await s.open()
    yield s
    await s.close()


async def test_process_writer_group_commits(pstore: SqliteStore) -> None:
    evs = [events(am_alert(f"p{i}", lab(), T + i)) for i in range(300)]
    results = await asyncio.gather(*(pstore.ingest(e, NOW) for e in evs))
    assert sum(r.new_alerts for r in results) == 300
    batches, committed = pstore.stats
    assert committed == 300 and batches < 300
    s = await summary(pstore)
    assert incidents(s) == [(T, None)]  # one open incident, 300 alerts


async def test_process_writer_commits_what_one_loop_iteration_submits_with_one_fsync(pstore: SqliteStore) -> None:
    # Requests submitted in one event-loop iteration cross to the writer in one frame and are
    # committed in one transaction (one fsync); each gets its own answer.
    evs = [events(am_alert(f"b{i}", lab(), T + i)) + events(am_alert(f"c{i}", lab(), T + i)) for i in range(50)]
    before = pstore.stats
    results = await asyncio.gather(*(pstore.ingest(e, NOW) for e in evs))
    batches, committed = pstore.stats
    assert (batches - before[0], committed - before[1]) == (1, 50)
    assert [r.new_alerts for r in results] == [2] * 50
    assert len(await pstore.alert_keys()) == 100


async def test_process_writer_answers_each_request_of_a_batch_with_its_own_changes(pstore: SqliteStore) -> None:
    await pstore.ingest(events(am_alert("old", lab(), T)), NOW)
    new, repeat, resolve = (
        pstore.ingest(events(am_alert("new", lab(), T + 1)), NOW),
        pstore.ingest(events(am_alert("old", lab(), T)), NOW),
        pstore.ingest(events(am_alert("old", lab(), T, T + 60)), NOW),
    )
    a, b, c = await asyncio.gather(new, repeat, resolve)
    assert (a.new_alerts, a.repeats, a.resolved_alerts) == (1, 0, 0)
    assert (b.new_alerts, b.repeats, b.resolved_alerts) == (0, 1, 0)
    assert (c.new_alerts, c.repeats, c.resolved_alerts) == (0, 0, 1)


def test_writer_wire_format_round_trips() -> None:
    evs = events(am_alert("w1", lab(), T), am_alert("w2", lab("warning", drill="true"), T + 1, T + 60))
    evs += events(am_alert("w3", lab(), T + 5_500))  # in the maintenance window: an assignment with window_end
    assert any(a.window_end is not None for ev in evs for a in ev.assignments)
    for name, args in (
        ("ingest", (evs, NOW)),
        ("reconcile", (frozenset({("w1", 1)}), evs, NOW - 1, NOW)),
        ("promote", (NOW,)),
    ):
        wire = encode_op(name, args)
        assert pickle.loads(pickle.dumps(wire)) == wire
        assert not any(isinstance(x, AlertEvent) for arg in wire if isinstance(arg, list) for x in arg)
        assert decode_op(name, wire) == args
    changes = Changes(new_alerts=2, resolved_alerts=1, opened=1, conflicts=["x"])
    assert decode_result(encode_result(changes)) == changes
    assert decode_result(encode_result(None)) is None


async def test_process_writer_failing_request_fails_alone(pstore: SqliteStore) -> None:
    good = events(am_alert("ok", lab(), T))[0]
    bogus = AlertEvent("bad", 1, 1.0, None, (), "other", "alertmanager", (Assignment("inbound", "bogus"),))
    outcome = await asyncio.gather(pstore.ingest([bogus], NOW), pstore.ingest([good], NOW), return_exceptions=True)
    assert isinstance(outcome[0], StoreError) and "CHECK constraint failed" in str(outcome[0])
    assert not isinstance(outcome[1], BaseException) and outcome[1].new_alerts == 1
    assert await pstore.alert_keys() == [("ok", int(T * 1000))]


async def test_process_writer_is_restarted_when_it_dies(pstore: SqliteStore) -> None:
    await pstore.ingest(events(am_alert("before", lab(), T)), NOW)
    proc = pstore._process
    assert proc is not None and proc.proc is not None
    proc.proc.kill()
    for _ in range(100):
        if not proc.alive:
            break
        await asyncio.sleep(0.05)
    assert not proc.alive
    ch = await pstore.ingest(events(am_alert("after", lab(), T + 1)), NOW)  # a new writer process
    assert ch.new_alerts == 1
    assert sorted(k for k, _ in await pstore.alert_keys()) == ["after", "before"]


async def test_process_writer_reports_open_errors(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, path)
    conn.execute("INSERT INTO schema_version VALUES (?, 'from the future', 0)", (SCHEMA_VERSION + 1,))
    conn.close()
    with pytest.raises(StoreError, match="newer mail-continuity-exporter"):
        await SqliteStore(tmp_path, writer="process").open()
