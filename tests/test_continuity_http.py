"""POST /alertmanager and the continuity metrics, against the real exporter process."""

from __future__ import annotations

import base64
import math
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ExporterProcess, free_port, metric_values, one, run_exporter
from hypothesis import HealthCheck, given, settings
from test_continuity_support import am_alert, body, db_bytes_digest, db_dump, payload, post
from test_continuity_webhook import MALFORMED, broken_payloads

TOKEN = "s3cret-webhook-token-4b1d"
CONFIG = f"""
global: {{interval: 1h, timeout: 5s}}
continuity:
  services:
    - {{name: inbound, incident_match: {{service: inbound}}, rto_target: 1h, mttr_target: 30m,
       availability_target: 0.9995}}
    - {{name: outbound, incident_match: {{service: outbound}}}}
webhook:
  bearer_token: "{TOKEN}"
  max_body_bytes: 65536
"""
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ExporterProcess, Path]]:
    tmp = tmp_path_factory.mktemp("continuity-http")
    with run_exporter(tmp, config_text=CONFIG) as exp:
        exp.wait_ready()
        yield exp, tmp / "data"


def url(exp: ExporterProcess) -> str:
    return exp.url + "/alertmanager"


def test_authentication(exporter: tuple[ExporterProcess, Path]) -> None:
    exp, _ = exporter
    good = body(payload([]))
    status, text = post(url(exp), good)
    assert status == 401 and b"Unauthorized" in text
    assert post(url(exp), good, {"Authorization": "Bearer wrong"})[0] == 401
    assert post(url(exp), good, {"Authorization": f"Basic {base64.b64encode(b'x:y').decode()}"})[0] == 401
    assert post(url(exp), good, {"Authorization": f"bearer {TOKEN}"})[0] == 200
    assert TOKEN not in exp.logs()


def test_content_type_and_size(exporter: tuple[ExporterProcess, Path]) -> None:
    exp, _ = exporter
    good = body(payload([]))
    assert post(url(exp), good, {**AUTH, "Content-Type": "text/plain"})[0] == 415
    assert post(url(exp), good, {**AUTH, "Content-Type": "application/x-www-form-urlencoded"})[0] == 415
    assert post(url(exp), good, {**AUTH, "Content-Type": "application/json; charset=utf-8"})[0] == 200
    big = body(payload([am_alert("big", {"service": "inbound"}, time.time(), annotations={"d": "x" * 70_000})]))
    status, text = post(url(exp), big, AUTH)
    assert status == 413 and b"max_body_bytes" in text


def test_malformed_and_fuzzed_payloads_leave_the_store_unchanged(exporter: tuple[ExporterProcess, Path]) -> None:
    exp, data = exporter
    # something in the store first, so that "unchanged" means something
    t = time.time() - 600
    assert post(url(exp), body(payload([am_alert("keep", {"service": "outbound"}, t)])), AUTH)[0] == 200
    time.sleep(0.5)
    digest, dump = db_bytes_digest(data), db_dump(data)
    answers: list[int] = []
    for _, raw, _ in MALFORMED:
        if len(raw) <= 65536:
            answers.append(post(url(exp), raw, AUTH)[0])
    assert answers and all(400 <= s < 500 for s in answers), answers

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(broken_payloads())
    def fuzz(raw: bytes) -> None:
        status, text = post(url(exp), raw, AUTH)
        assert 400 <= status < 500, (status, text)

    fuzz()
    # wrong content types and sizes too
    assert post(url(exp), b"{}", {**AUTH, "Content-Type": "text/plain"})[0] == 415
    assert post(url(exp), b"[" * 70_000, AUTH)[0] == 413
    time.sleep(0.5)
    assert db_dump(data) == dump  # row for row
    assert db_bytes_digest(data) == digest  # and byte for byte
    text = exp.metrics()
    assert one(metric_values(text, "mail_webhook_notifications_total"), result="invalid") >= len(answers) + 150


def _incidents(text: str, name: str, **labels: str) -> float:
    return one(metric_values(text, name), **labels)


def test_incident_metrics_rto_and_targets(exporter: tuple[ExporterProcess, Path]) -> None:
    exp, _ = exporter
    now = time.time()
    base = now - 5 * 86_400
    lab = {"service": "inbound", "severity": "warning", "alertname": "ImapDown"}
    # three incidents of 600, 1,200 and 1,800 s, and a drill of 2,400 s
    alerts = [
        am_alert("i1", lab, base, base + 600),
        am_alert("i2", lab, base + 10_000, base + 11_200),
        am_alert("i3", lab, base + 20_000, base + 21_800),
        am_alert("d1", {**lab, "drill": "true"}, base + 30_000, base + 32_400),
    ]
    assert post(url(exp), body(payload(alerts)), AUTH)[0] == 200
    text = exp.wait_for(
        lambda t: (
            'mail_incidents_total{service="inbound",severity="warning"} 3.0' in t
            and "mail_drill_last_timestamp_seconds" in t
            and _incidents(t, "mail_rto_estimate_seconds", service="inbound") == 2_400
        ),
        timeout=15,
    )
    # recovery times 600, 1,200, 1,800 and the drill's 2,400: p90 = 4th of 4 = 2,400; last drill 2,400
    assert _incidents(text, "mail_rto_estimate_seconds", service="inbound") == 2_400
    assert _incidents(text, "mail_rto_target_seconds", service="inbound") == 3_600
    assert _incidents(text, "mail_mttr_target_seconds", service="inbound") == 1_800
    assert _incidents(text, "mail_availability_target_ratio", service="inbound") == 0.9995
    assert _incidents(text, "mail_drill_last_timestamp_seconds", service="inbound") == pytest.approx(base + 32_400)
    # MTTR over every window: (600 + 1,200 + 1,800) / 3 = 1,200
    for window in ("7d", "30d", "90d"):
        assert _incidents(text, "mail_mttr_seconds", service="inbound", window=window) == pytest.approx(1_200)
        assert _incidents(text, "mail_downtime_seconds", service="inbound", window=window) == pytest.approx(3_600)
    assert _incidents(text, "mail_incident_recovery_seconds_count", service="inbound", severity="warning") == 3
    assert _incidents(text, "mail_incident_recovery_seconds_sum", service="inbound", severity="warning") == (
        pytest.approx(3_600)
    )
    # no series for an objective that is not set
    assert not metric_values(text, "mail_rto_target_seconds").get((("service", "outbound"),))
    assert math.isnan(_incidents(text, "mail_rto_estimate_seconds", service="outbound"))
    # "outbound" has one incident, still open (from the test above): nothing recovered yet
    assert math.isnan(_incidents(text, "mail_mttr_seconds", service="outbound", window="7d"))


def test_open_incident_on_status_page(exporter: tuple[ExporterProcess, Path]) -> None:
    exp, _ = exporter
    lab = {"service": "inbound", "severity": "critical", "alertname": "SmtpDown<script>"}
    t0 = time.time() - 120
    assert post(url(exp), body(payload([am_alert("open1", lab, t0)])), AUTH)[0] == 200
    exp.wait_for(lambda t: 'mail_incidents_open{service="inbound",severity="critical"} 1.0' in t, timeout=15)
    page = exp.get("/").text
    assert "Open incidents" in page and "SmtpDown&lt;script&gt;" in page and "<script>" not in page
    text = exp.metrics()
    assert 100 < _incidents(text, "mail_incident_oldest_open_seconds", service="inbound") < 200
    assert post(url(exp), body(payload([am_alert("open1", lab, t0, time.time())])), AUTH)[0] == 200
    exp.wait_for(lambda t: 'mail_incidents_open{service="inbound",severity="critical"} 0.0' in t, timeout=15)


def test_recovery_histogram_survives_a_restart(tmp_path: Path) -> None:
    cfg = "continuity:\n  services:\n    - {name: inbound, incident_match: {service: inbound}}\n"
    t = time.time() - 3_600
    lab = {"service": "inbound", "severity": "critical"}

    def wanted(text: str) -> bool:
        return 'mail_incident_recovery_seconds_count{service="inbound",severity="critical"} 2.0' in text

    with run_exporter(tmp_path, config_text=cfg) as exp:
        exp.wait_ready()
        msg = payload([am_alert("r1", lab, t, t + 90), am_alert("r2", lab, t + 1_000, t + 1_400)])
        assert post(exp.url + "/alertmanager", body(msg))[0] == 200
        before = exp.wait_for(wanted, timeout=15)
    with run_exporter(tmp_path, config_text=cfg) as exp:
        exp.wait_ready()
        after = exp.wait_for(wanted, timeout=15)
    for name in ("mail_incident_recovery_seconds_bucket", "mail_incident_recovery_seconds_sum", "mail_incidents_total"):
        assert metric_values(after, name) == metric_values(before, name)
    assert one(metric_values(after, "mail_incident_recovery_seconds_sum"), severity="critical") == 490


class FakeSmtp:
    """A tiny SMTP server (banner, EHLO, QUIT) to make a failing check succeed on demand."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                f = conn.makefile("rwb")
                f.write(b"220 fake ESMTP\r\n")
                f.flush()
                for line in f:
                    verb = line[:4].upper()
                    f.write(b"250 fake\r\n" if verb in (b"EHLO", b"HELO") else b"221 bye\r\n")
                    f.flush()
                    if verb == b"QUIT":
                        break

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_check_outages_open_and_close_incidents(tmp_path: Path) -> None:
    port = free_port()
    cfg = f"""
global: {{interval: 1s, timeout: 2s, jitter: 0}}
endpoints:
  - {{name: mx1, protocol: smtp, address: "127.0.0.1:{port}", tls: none}}
continuity:
  services:
    - {{name: inbound, incident_match: {{service: inbound}}, check_outages: [mx1], check_outage_threshold: 2}}
"""
    with run_exporter(tmp_path, config_text=cfg) as exp:
        exp.wait_ready()
        text = exp.wait_for(lambda t: 'mail_incidents_open{service="inbound",severity="critical"} 1.0' in t, timeout=20)
        assert _incidents(text, "mail_incidents_total", service="inbound", severity="critical") == 1
        server = FakeSmtp(port)
        try:
            text = exp.wait_for(
                lambda t: 'mail_incident_recovery_seconds_count{service="inbound",severity="critical"} 1.0' in t,
                timeout=20,
            )
        finally:
            server.close()
        assert _incidents(text, "mail_incidents_open", service="inbound", severity="critical") == 0
        assert _incidents(text, "mail_incidents_total", service="inbound", severity="critical") == 1
        # the outage began at the first failed run: at least the two failed intervals long
        assert _incidents(text, "mail_incident_recovery_seconds_sum", service="inbound", severity="critical") >= 1
