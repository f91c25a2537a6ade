"""``incidents migrate``: a whole store from SQLite to the stack's real PostgreSQL and back.

The round trip must keep every alert, incident, drill, maintenance record, recovery and the
counters behind them: the figures (``Store.summary``), the incident listings and the alert
keys read the same in all three stores.  A destination that already holds data is refused
with nothing written, and the password appears in no output.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from stack import Stack
from test_continuity_store import NOW, T, events, lab
from test_continuity_store_pg import fresh_database
from test_continuity_support import am_alert

from exporter.continuity.cli import main as incidents_main
from exporter.continuity.figures import RECOVERY_BUCKETS
from exporter.continuity.incidents import ImportRecord
from exporter.continuity.store import SqliteStore, Store
from exporter.continuity.store.postgres import PostgresStore


@contextlib.contextmanager
def database(stack: Stack) -> Iterator[str]:
    """A fresh database on the stack's PostgreSQL (its URL, with the password), dropped afterwards."""
    pg = stack.postgresql
    with fresh_database(make_conninfo(str(pg["dsn"]), password=str(pg["password"]))) as dsn:
        yield f"postgresql://{pg['user']}:{pg['password']}@{pg['host']}:{pg['port']}/{conninfo_to_dict(dsn)['dbname']}"


async def fill(store: Store) -> None:
    """Incidents (one escalated, one still open), a drill, maintenance with an overrun, imports."""
    await store.ingest(events(am_alert("a", lab("warning"), T, T + 600)), NOW)
    await store.ingest(events(am_alert("b", lab("warning"), T + 1_000), am_alert("c", lab(), T + 1_100)), NOW)
    await store.ingest(events(am_alert("b", lab("warning"), T + 1_000, T + 1_900)), NOW)
    await store.ingest(events(am_alert("c", lab(), T + 1_100, T + 2_000)), NOW)
    await store.ingest(events(am_alert("a", lab("warning"), T, T + 600)), NOW)  # a repeat
    await store.ingest(events(am_alert("d", lab(drill="true"), T + 3_000, T + 3_420)), NOW)
    await store.ingest(events(am_alert("o", lab(), T + 5_800)), NOW)  # in the window, runs past it
    await store.promote_overruns(T + 6_100)
    await store.ingest(events(am_alert("open", lab(), T + 8_000)), NOW)
    await store.import_records(
        [ImportRecord("inbound", "critical", T - 5_000, T - 4_000, (("alertname", "Old"),), "f line 1")], NOW
    )


async def fingerprint(store: Store) -> tuple[Any, ...]:
    summary = await store.summary(NOW, T - 86_400, RECOVERY_BUCKETS)
    return sorted(await store.alert_keys()), await store.incidents(), summary


async def read(store: Store) -> tuple[Any, ...]:
    await store.open()
    try:
        return await fingerprint(store)
    finally:
        await store.close()


def migrate(source: str, destination: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = incidents_main(["migrate", "--from", source, "--to", destination], out=out)
    return code, out.getvalue(), err.getvalue()


async def test_round_trip_keeps_every_figure(stack: Stack, tmp_path: Path) -> None:
    password = str(stack.postgresql["password"])
    first, back = tmp_path / "first", tmp_path / "back"
    source = SqliteStore(first)
    await source.open()
    await fill(source)
    before = await fingerprint(source)
    await source.close()
    assert before[2].totals and before[2].open_counts and before[2].recoveries and before[2].last_drill
    with database(stack) as url:
        code, out, err = await_in_thread(migrate, f"sqlite:{first}", url)
        assert code == 0, err
        assert "copied" in out and "figures equal" in out and password not in out + err
        assert await read(PostgresStore(url, readonly=True)) == before
        # the PostgreSQL store goes on from there: new ids after the copied ones, the open incident closes
        pg = PostgresStore(url)
        await pg.open()
        await pg.ingest(events(am_alert("open", lab(), T + 8_000, T + 8_300)), NOW)
        await pg.ingest(events(am_alert("new", lab(), T + 9_000, T + 9_060)), NOW)
        after_pg = await fingerprint(pg)
        await pg.close()
        assert len(after_pg[0]) == len(before[0]) + 1
        # and back into an empty SQLite directory
        code, out, err = await_in_thread(migrate, url, f"sqlite:{back}/mail-continuity.sqlite")
        assert code == 0, err
        assert await read(SqliteStore(back, readonly=True)) == after_pg
        # list and export read the PostgreSQL store too
        listing = io.StringIO()
        assert await_in_thread(incidents_main, ["export", "--format", "json", f"--storage.url={url}"], listing) == 0
        exported = json.loads(listing.getvalue())
        assert sorted(r["id"] for r in exported) == sorted(r.id for r in after_pg[1])
        # a destination with data is refused, nothing written
        code, out, err = await_in_thread(migrate, f"sqlite:{first}", url)
        assert code == 1 and "already holds incident data" in err and password not in err
        assert await read(PostgresStore(url, readonly=True)) == after_pg


@pytest.mark.parametrize(
    ("source", "destination", "message"),
    [
        ("sqlite:/nonexistent-mce", "sqlite:/tmp", "no incident store here"),
        ("mysql://x", "sqlite:/tmp/x", "expected sqlite:DIR or a postgresql:// URL"),
        ("sqlite:/tmp/a", "sqlite:/tmp/a", "the same store"),
    ],
)
def test_bad_locations_are_clear_errors(source: str, destination: str, message: str) -> None:
    code, _, err = migrate(source, destination)
    assert code == 1 and message in err


def await_in_thread(fn: Any, *args: Any) -> Any:
    """Run a command that runs its own event loop (asyncio.run) from inside an async test."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result(timeout=120)
