"""The real Alertmanager of the test stack delivers webhooks to the exporter.

The stack's Alertmanager config is shared by every test session on the machine.  This
test only *adds* child routes (matching a label unique to this run) in front of the
existing ones, holds an exclusive ``flock`` on ``alertmanager.yml.lock`` while its
routes are in place (other tests that rewrite the file should take the same lock),
and restores the file byte for byte afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import sqlite3
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import ExporterProcess, free_port, metric_values, one, run_exporter
from stack import Stack
from test_continuity_support import db_path, ts

pytestmark = pytest.mark.slow


def am_request(stack: Stack, method: str, path: str, data: Any = None) -> tuple[int, bytes]:
    raw = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(
        stack.alertmanager_url + path, data=raw, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def send_alerts(stack: Stack, alerts: list[dict[str, Any]]) -> None:
    status, text = am_request(stack, "POST", "/api/v2/alerts", alerts)
    assert status == 200, text


@contextlib.contextmanager
def am_routes(stack: Stack, run: str, receivers: dict[str, dict[str, Any]]) -> Iterator[None]:
    """Route alerts labelled ``mce_run=<run>, mce_route=<name>`` to ``receivers[name]``."""
    cfg = stack.alertmanager_config
    lock_path = Path(str(cfg) + ".lock")
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        original = cfg.read_bytes()
        data = yaml.safe_load(original)
        routes = [
            {
                "receiver": f"mce-{run}-{name}",
                "matchers": [f'mce_run="{run}"', f'mce_route="{name}"'],
                "group_by": ["mce_run", "mce_route"],
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "2s",
                "continue": False,
            }
            for name in receivers
        ]
        data["route"]["routes"] = routes + list(data["route"].get("routes") or [])
        data["receivers"] = list(data["receivers"]) + [
            {"name": f"mce-{run}-{name}", "webhook_configs": [spec]} for name, spec in receivers.items()
        ]
        cfg.write_text(yaml.safe_dump(data, sort_keys=False))
        try:
            status, text = am_request(stack, "POST", "/-/reload")
            assert status == 200, text
            yield
        finally:
            cfg.write_bytes(original)
            am_request(stack, "POST", "/-/reload")


def labels(run: str, route: str, instance: str) -> dict[str, str]:
    return {
        "alertname": "MceContinuityTest",
        "mce_run": run,
        "mce_route": route,
        "severity": "critical",
        "instance": instance,
    }


def wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def value(exp: ExporterProcess, name: str, **labels_: str) -> float:
    return one(metric_values(exp.metrics(), name), **labels_)


def test_incidents_open_close_and_repeats_count_once(stack: Stack, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:10]
    service = f"am-{run}"
    cfg = f"continuity:\n  services:\n    - {{name: {service}, incident_match: {{mce_run: '{run}'}}}}\n"
    with run_exporter(tmp_path, config_text=cfg) as exp:
        exp.wait_ready()
        hook = {"url": exp.url + "/alertmanager", "send_resolved": True}
        with am_routes(stack, run, {"main": hook}):
            t0 = time.time()
            a = {"labels": labels(run, "main", "a"), "startsAt": ts(t0)}
            try:
                send_alerts(stack, [a])
                wait(lambda: value(exp, "mail_incidents_open", service=service, severity="critical") == 1, 30, "open")
                # Alertmanager repeats the notification every 2 s: wait for at least two repeats
                wait(lambda: value(exp, "mail_webhook_notifications_total", result="accepted") >= 3, 30, "repeats")
                # a second alert joins the group: Alertmanager regroups and sends both again
                b = {"labels": labels(run, "main", "b"), "startsAt": ts(t0 + 1)}
                send_alerts(stack, [b])
                wait(lambda: stored_alerts(tmp_path) == 2, 30, "second alert stored")
                accepted = value(exp, "mail_webhook_notifications_total", result="accepted")
                wait(
                    lambda: value(exp, "mail_webhook_notifications_total", result="accepted") >= accepted + 2,
                    30,
                    "more repeats",
                )
                assert value(exp, "mail_incidents_total", service=service, severity="critical") == 1
                assert stored_alerts(tmp_path) == 2  # every repeat deduplicated
                # both resolve: Alertmanager sends the resolved notification, the incident closes
                t1 = time.time()
                send_alerts(stack, [dict(a, endsAt=ts(t1)), dict(b, endsAt=ts(t1))])
                wait(
                    lambda: (
                        value(exp, "mail_incident_recovery_seconds_count", service=service, severity="critical") == 1
                    ),
                    30,
                    "closed",
                )
                text = exp.metrics()
                assert one(metric_values(text, "mail_incidents_open"), service=service, severity="critical") == 0
                assert one(metric_values(text, "mail_incidents_total"), service=service, severity="critical") == 1
                recovery = one(
                    metric_values(text, "mail_incident_recovery_seconds_sum"), service=service, severity="critical"
                )
                assert recovery == pytest.approx(t1 - t0, abs=0.01)  # from a's startsAt to the last endsAt
            finally:
                now = ts(time.time())
                send_alerts(stack, [{"labels": labels(run, "main", i), "endsAt": now} for i in "ab"])


def stored_alerts(tmp_path: Path) -> int:
    with sqlite3.connect(db_path(tmp_path / "data")) as conn:
        return int(conn.execute("SELECT count(*) FROM alerts").fetchone()[0])


def test_lost_resolved_notification_is_reconciled(stack: Stack, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:10]
    service = f"am-{run}"
    cfg = f"""
continuity:
  services:
    - {{name: {service}, incident_match: {{mce_run: '{run}'}}}}
  reconcile:
    alertmanager_url: {stack.alertmanager_url}
    interval: 2s
"""
    dead = f"http://127.0.0.1:{free_port()}/alertmanager"  # nothing listens there
    with run_exporter(tmp_path, config_text=cfg) as exp:
        exp.wait_ready()
        receivers = {
            # this receiver never sends resolved notifications: the reconciler must close the incident
            "noresolve": {"url": exp.url + "/alertmanager", "send_resolved": False},
            # this one never reaches the exporter at all: the reconciler must open the incident
            "lost": {"url": dead, "send_resolved": True, "max_alerts": 0},
        }
        with am_routes(stack, run, receivers):
            c = {"labels": labels(run, "noresolve", "c"), "startsAt": ts(time.time())}
            d = {"labels": labels(run, "lost", "d"), "startsAt": ts(time.time())}
            try:
                send_alerts(stack, [c])
                wait(lambda: value(exp, "mail_incidents_open", service=service, severity="critical") == 1, 30, "open")
                # (the reconciler may see it before the notification arrives; either way it is stored once)
                wait(lambda: value(exp, "mail_webhook_notifications_total", result="accepted") >= 1, 30, "delivery")
                assert stored_alerts(tmp_path) == 1
                t_resolve = time.time()
                send_alerts(stack, [dict(c, endsAt=ts(t_resolve))])
                wait(lambda: value(exp, "mail_incidents_open", service=service, severity="critical") == 0, 30, "close")
                t_closed = time.time()
                with sqlite3.connect(db_path(tmp_path / "data")) as conn:
                    (ended,) = conn.execute("SELECT ended_at FROM incidents WHERE service = ?", (service,)).fetchone()
                # closed by the reconciler when it noticed: within one interval (2 s) of the resolution
                assert t_resolve <= ended <= t_closed
                assert ended - t_resolve < 6
                # an alert whose notifications never arrive is found by the reconciler and opens an incident
                d["startsAt"] = ts(time.time())  # after the first incident ended
                send_alerts(stack, [d])
                wait(lambda: value(exp, "mail_incidents_total", service=service, severity="critical") == 2, 30, "found")
                assert value(exp, "mail_incidents_open", service=service, severity="critical") == 1
                send_alerts(stack, [dict(d, endsAt=ts(time.time()))])
                wait(lambda: value(exp, "mail_incidents_open", service=service, severity="critical") == 0, 30, "gone")
                page = exp.get("/").text
                assert "reconciliation with Alertmanager: ok" in page
            finally:
                now = ts(time.time())
                send_alerts(stack, [dict(c, endsAt=now), dict(d, endsAt=now)])
