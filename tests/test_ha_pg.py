"""The exporter on a PostgreSQL incident store, against the test stack's real PostgreSQL.

Two real exporter processes share one database (an HA pair): the same notification through
both counts once, and both export the same figures, equal to the hand-computed ones.  The
password comes from the environment (``${ENV}`` in ``continuity.store.url``) and appears in
no output: not in /metrics, the status page or the logs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from helpers import metric_values, run_exporter
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from stack import Stack
from test_continuity_store_pg import fresh_database
from test_continuity_support import am_alert, body, payload, post

CONFIG = """
global: {interval: 1h, timeout: 5s}
continuity:
  store:
    url: ${MCE_TEST_STORE_URL}
  services:
    - {name: inbound, incident_match: {service: inbound}}
"""


@contextlib.contextmanager
def database(stack: Stack) -> Iterator[str]:
    """A fresh database on the stack's PostgreSQL (its URL, with the password), dropped afterwards."""
    pg = stack.postgresql
    with fresh_database(make_conninfo(str(pg["dsn"]), password=str(pg["password"]))) as dsn:
        yield f"postgresql://{pg['user']}:{pg['password']}@{pg['host']}:{pg['port']}/{conninfo_to_dict(dsn)['dbname']}"


def figure(text: str, name: str, **labels: str) -> float:
    want = tuple(sorted(labels.items()))
    for key, value in metric_values(text, name).items():
        if tuple(sorted(k for k in key if k[0] in labels)) == want:
            return value
    raise AssertionError(f"{name}{labels} not exported")


ALERTS_LAB = {"service": "inbound", "severity": "warning", "alertname": "ImapDown"}


def incidents(now: float) -> list[dict[str, object]]:
    """Three resolved incidents of 600, 1,200 and 1,800 s: MTTR 1,200 s, downtime 3,600 s."""
    base = now - 5 * 86_400
    return [
        am_alert("i1", ALERTS_LAB, base, base + 600),
        am_alert("i2", ALERTS_LAB, base + 10_000, base + 11_200),
        am_alert("i3", ALERTS_LAB, base + 20_000, base + 21_800),
    ]


def settled(text: str) -> bool:
    return 'mail_incidents_total{service="inbound",severity="warning"} 3.0' in text


def assert_figures(text: str) -> None:
    assert figure(text, "mail_incidents_total", service="inbound", severity="warning") == 3
    for window in ("7d", "30d", "90d"):
        assert figure(text, "mail_mttr_seconds", service="inbound", window=window) == pytest.approx(1_200)
        assert figure(text, "mail_downtime_seconds", service="inbound", window=window) == pytest.approx(3_600)
    assert figure(text, "mail_incident_recovery_seconds_count", service="inbound", severity="warning") == 3


def assert_no_password(password: str, *texts: str) -> None:
    for text in texts:
        assert password not in text


def test_two_exporters_share_one_postgresql_store(stack: Stack, tmp_path: Path) -> None:
    password = str(stack.postgresql["password"])
    with database(stack) as url:
        env = {"MCE_TEST_STORE_URL": url}
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
        with (
            run_exporter(tmp_path / "a", config_text=CONFIG, env=env) as a,
            run_exporter(tmp_path / "b", config_text=CONFIG, env=env) as b,
        ):
            a.wait_ready()
            b.wait_ready()
            msg = body(payload(incidents(time.time())))
            # the same notification through both replicas, and again through the first
            for exp in (a, b, a):
                assert post(exp.url + "/alertmanager", msg)[0] == 200
            texts = [exp.wait_for(settled, timeout=20) for exp in (a, b)]
            for text in texts:
                assert_figures(text)
            pages = [exp.get("/").text for exp in (a, b)]
            assert all(f"postgresql://{stack.postgresql['user']}@" in page for page in pages)
            assert_no_password(password, *texts, *pages, a.logs(), b.logs())
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*), sum(seen) FROM alerts").fetchone()
        assert row == (3, 9), "three alert occurrences stored once each, each delivery (3 x 3) seen once"


def test_storage_url_flag_overrides_the_config(stack: Stack, tmp_path: Path) -> None:
    """``--storage.url`` wins over ``continuity.store.url``; the SQLite directory stays empty."""
    with database(stack) as url, database(stack) as other:
        env = {"MCE_TEST_STORE_URL": other}
        with run_exporter(tmp_path, f"--storage.url={url}", config_text=CONFIG, env=env) as exp:
            exp.wait_ready()
            assert post(exp.url + "/alertmanager", body(payload(incidents(time.time()))))[0] == 200
            assert_figures(exp.wait_for(settled, timeout=20))
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM alerts").fetchone() == (3,)
        with psycopg.connect(other) as conn:  # never opened: no schema at all
            tables = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
            assert tables.fetchone() == (0,)
        assert not (tmp_path / "data" / "mail-continuity.sqlite").exists()
        assert conninfo_to_dict(url)["password"] not in exp.logs()


def test_unreachable_store_at_start_is_a_clear_error(stack: Stack, tmp_path: Path) -> None:
    """A store that cannot be reached at start: the exporter exits non-zero, naming the store
    without its password."""
    pg = stack.postgresql
    url = f"postgresql://{pg['user']}:{pg['password']}@127.0.0.1:1/nowhere"
    with run_exporter(tmp_path, f"--storage.url={url}") as exp:
        code = exp.proc.wait(timeout=60)
        logs = exp.logs()
    assert code != 0
    assert f"postgresql://{pg['user']}@127.0.0.1:1/nowhere" in logs
    assert str(pg["password"]) not in logs
