"""kill -9 during webhook ingestion loses no acknowledged notification, and stores none twice."""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from helpers import metric_values, one, run_exporter
from test_continuity_support import am_alert, body, db_path, payload, post, ts

from exporter.continuity.webhook import parse_time

CONFIG = """
continuity:
  services:
    - {name: inbound, incident_match: {service: inbound}}
"""
NOTIFICATIONS = 1_000
CONCURRENCY = 16
KILL_AFTER = 300  # acknowledgements before the SIGKILL


def notifications(base: float) -> list[tuple[bytes, set[tuple[str, int]]]]:
    """1,000 notifications of 3 alerts each: firing, and for every third, already resolved."""
    out = []
    for i in range(NOTIFICATIONS):
        alerts = []
        keys = set()
        for k in range(3):
            starts = base + i + k / 10  # distinct to the millisecond
            ends = starts + 30 if i % 3 == 0 else None
            fp = f"{i:06x}{k:02x}"
            alerts.append(am_alert(fp, {"service": "inbound", "alertname": "Durable", "n": str(i)}, starts, ends))
            ns = parse_time(ts(starts))
            assert ns is not None
            keys.add((fp, ns // 1_000_000))
        out.append((body(payload(alerts)), keys))
    return out


def writer_processes(tmp_path: Path) -> list[int]:
    """Pids of store writer processes working on this test's store."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"exporter.continuity.store" in cmdline and any(str(tmp_path).encode() in a for a in cmdline):
                out.append(int(entry.name))
    return out


def stored(storage: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(db_path(storage)) as conn:
        return [(r[0], int(r[1])) for r in conn.execute("SELECT fingerprint, starts_ms FROM alerts")]


def test_sigkill_during_ingestion_loses_no_acknowledged_notification(tmp_path: Path) -> None:
    base = float(int(time.time()) - 86_400)
    work = notifications(base)
    acked: set[tuple[str, int]] = set()
    acks = 0
    lock = threading.Lock()
    killed = threading.Event()
    with run_exporter(tmp_path, config_text=CONFIG) as exp:
        exp.wait_ready()
        url = exp.url + "/alertmanager"

        def send(item: tuple[bytes, set[tuple[str, int]]]) -> None:
            nonlocal acks
            data, keys = item
            try:
                status, _ = post(url, data, timeout=10)
            except OSError:
                return  # refused or reset: the exporter is gone
            if status == 200:
                with lock:
                    acked.update(keys)
                    acks += 1
                    if acks >= KILL_AFTER and not killed.is_set():
                        killed.set()
                        exp.proc.kill()  # SIGKILL, mid-stream: other requests are in flight

        t0 = time.monotonic()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(send, work))
        assert time.monotonic() - t0 < 120
        exp.proc.wait(10)
        assert killed.is_set(), f"only {acks} notifications were acknowledged before the end"
        assert exp.proc.returncode == -9
    assert KILL_AFTER <= acks < NOTIFICATIONS, acks
    # the store's writer process sees its parent gone, finishes its batch and exits
    deadline = time.monotonic() + 15
    while writer_processes(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert writer_processes(tmp_path) == []

    # restart on the same store: SQLite recovers the WAL; every acknowledged alert is there, once
    with run_exporter(tmp_path, config_text=CONFIG) as exp:
        exp.wait_ready()
        rows = stored(tmp_path / "data")
        assert len(rows) == len(set(rows)), "an alert is stored twice"
        missing = acked - set(rows)
        assert not missing, f"{len(missing)} acknowledged alerts lost, e.g. {sorted(missing)[:3]}"
        # Alertmanager retries what was not acknowledged: sending everything again stores each alert once
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            statuses = list(pool.map(lambda item: post(exp.url + "/alertmanager", item[0])[0], work))
        assert statuses == [200] * NOTIFICATIONS
        rows = stored(tmp_path / "data")
        assert sorted(rows) == sorted(set().union(*(k for _, k in work)))
        text = exp.wait_for(lambda t: "mail_incidents_total" in t, timeout=15)
        assert one(metric_values(text, "mail_incidents_total"), service="inbound", severity="other") >= 1
