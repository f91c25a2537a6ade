"""Slow clients (slowloris headers, a dribbled webhook body, a stalled TLS handshake) are cut
off, and meanwhile ``/metrics`` answers normally.  Real exporter process, raw sockets on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from helpers import ExporterProcess, metric_values, one, run_exporter
from test_continuity_support import am_alert, db_dump, payload

CONFIG = """
global: {interval: 1h, timeout: 5s}
continuity:
  services:
    - {name: inbound, incident_match: {service: inbound}}
"""
#: Upper bound on how long a test dribbles (the loops are bounded by count too).
MAX_BYTES = 20


def metrics_ok(exp: ExporterProcess) -> None:
    text = exp.metrics()
    assert one(metric_values(text, "mail_exporter_build_info")) == 1.0


def dribble(sock: socket.socket, data: bytes, gap: float, check: Callable[[], None]) -> tuple[int, bytes]:
    """Send ``data`` one byte per ``gap`` seconds (at most MAX_BYTES), calling ``check`` between bytes.

    Returns (bytes sent, what the server sent back) when the server answers or closes.
    """
    sock.settimeout(gap)
    received = b""
    for sent, byte in enumerate(data[:MAX_BYTES]):
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return sent, received
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            check()
            continue
        except ConnectionResetError:
            return sent + 1, received
        received += chunk
        return sent + 1, received
    raise AssertionError(f"the server waited for {MAX_BYTES} slow bytes without closing the connection")


def test_slowloris_headers_are_cut_off_while_metrics_answer(tmp_path: Path) -> None:
    with run_exporter(tmp_path, "--web.read-header-timeout=2s", config_text=CONFIG) as exp:
        exp.wait_ready()
        request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\n\r\n"
        with socket.create_connection(("127.0.0.1", exp.port)) as sock:
            sent, received = dribble(sock, request, 1.0, lambda: metrics_ok(exp))
        assert received == b""  # closed, no answer
        assert 0 < sent < len(request)
        metrics_ok(exp)


def test_slow_second_request_on_a_kept_alive_connection(tmp_path: Path) -> None:
    with run_exporter(tmp_path, "--web.read-header-timeout=1s", config_text=CONFIG) as exp:
        exp.wait_ready()
        with socket.create_connection(("127.0.0.1", exp.port)) as sock:
            sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(10)
            first = b""
            while not first.endswith(b"Healthy.\n"):
                chunk = sock.recv(4096)
                assert chunk, first
                first += chunk
            assert first.startswith(b"HTTP/1.1 200 ")
            second = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
            sent, received = dribble(sock, second, 0.4, lambda: metrics_ok(exp))
        assert received == b""
        assert 0 < sent < len(second)


def test_a_tls_handshake_that_never_comes_is_cut_off(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "server.crt")
    cert.private_key_pem.write_to_path(tmp_path / "server.key")
    (tmp_path / "web.yml").write_text("tls_server_config: {cert_file: server.crt, key_file: server.key}\n")
    args = (f"--web.config.file={tmp_path / 'web.yml'}", "--web.read-header-timeout=1s")
    with run_exporter(tmp_path, *args, config_text=CONFIG) as exp:
        client = ssl.create_default_context()
        ca.configure_trust(client)

        def tls_metrics_ok() -> None:
            conn = http.client.HTTPSConnection("127.0.0.1", exp.port, timeout=10, context=client)
            try:
                conn.request("GET", "/metrics")
                resp = conn.getresponse()
                assert (resp.status, b"mail_exporter_build_info{" in resp.read()) == (200, True)
            finally:
                conn.close()

        deadline = time.monotonic() + 20
        while True:  # ready over TLS
            try:
                tls_metrics_ok()
                break
            except OSError:
                assert time.monotonic() < deadline, exp.logs()
                time.sleep(0.2)
        hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(16)  # a ClientHello that never ends
        with socket.create_connection(("127.0.0.1", exp.port)) as sock:
            sent, received = dribble(sock, hello, 0.5, tls_metrics_ok)
        assert received == b""
        assert 0 < sent < len(hello)


@pytest.fixture
def webhook_exporter(tmp_path: Path):  # type: ignore[no-untyped-def]
    with run_exporter(tmp_path, "--web.read-timeout=1s", "--web.read-header-timeout=1s", config_text=CONFIG) as exp:
        exp.wait_ready()
        yield exp, tmp_path / "data"


def test_dribbled_webhook_body_gets_408_and_stores_nothing(webhook_exporter: tuple[ExporterProcess, Path]) -> None:
    exp, storage = webhook_exporter
    before = db_dump(storage)
    body = json.dumps(payload([am_alert("slow1", {"service": "inbound", "alertname": "X"}, 1_800_000_000.0)]))
    head = (
        "POST /alertmanager HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", exp.port)) as sock:
        sock.sendall(head)
        sent, received = dribble(sock, body.encode(), 0.3, lambda: metrics_ok(exp))
        sock.settimeout(10)
        while b"\r\n\r\n" not in received:  # the rest of the 408, if it came in pieces
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), received
    assert b"Connection: close" in received
    assert 0 < sent < len(body)
    text = exp.wait_for(  # the counters are published by the background refresh
        lambda t: one(metric_values(t, "mail_webhook_notifications_total"), result="invalid") > 0
    )
    values = metric_values(text, "mail_webhook_notifications_total")
    assert one(values, result="invalid") == 1.0
    assert one(values, result="accepted") == 0.0
    assert db_dump(storage) == before
