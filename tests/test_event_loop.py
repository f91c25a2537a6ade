"""--runtime.event-loop: the exporter runs its whole job on uvloop as on Python's own loop.

The probers, the webhook and /metrics are exercised on uvloop in a real exporter process
(every other test runs them on Python's loop): a STARTTLS probe of the stack's Postfix, an
IMAP probe of its Dovecot, a stored webhook notification and a scrape.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import metric_values, one, run_exporter
from stack import Stack

from exporter.cli import loop_factory

uvloop = pytest.importorskip("uvloop")  # in the [test] extra; an optional extra of the package


def config(stack: Stack) -> str:
    tls = f'{{ca_file: "{stack.ca_file}", server_name: mx1.example.test}}'
    imap_tls = f'{{ca_file: "{stack.ca_file}", server_name: imap.example.test}}'
    user = "ops@example.test"
    return f"""
global: {{interval: 1s, timeout: 5s}}
endpoints:
  - {{name: smtp, protocol: smtp, address: "127.0.0.1:{stack.port("smtp")}", tls: starttls, tls_config: {tls}}}
  - {{name: imap, protocol: imap, address: "127.0.0.1:{stack.port("imaps")}", tls: implicit, tls_config: {imap_tls},
     auth: {{username: {user}, password: "{stack.password(user)}"}}}}
"""


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_the_exporter_runs_on_either_loop(stack: Stack, tmp_path: Path, loop: str) -> None:
    with run_exporter(tmp_path, f"--runtime.event-loop={loop}", config_text=config(stack)) as exp:
        exp.wait_ready()
        text = exp.wait_for(
            lambda t: (
                list(metric_values(t, "mail_smtp_up").values()) == [1.0]
                and list(metric_values(t, "mail_imap_up").values()) == [1.0]
            ),
            timeout=30,
        )
        assert one(metric_values(text, "mail_tls_version_info"), check="smtp", version="TLSv1.3") == 1
        probe = exp.get("/probe?module=smtp").text
        assert "probe_success 1" in probe
        body = json.dumps(
            {
                "version": "4",
                "status": "firing",
                "receiver": "mce",
                "groupKey": '{}:{alertname="X"}',
                "alerts": [
                    {
                        "status": "firing",
                        "labels": {"alertname": "X", "service": "mail"},
                        "annotations": {},
                        "startsAt": "2026-12-07T10:00:00Z",
                        "endsAt": "0001-01-01T00:00:00Z",
                        "fingerprint": "0123456789abcdef",
                    }
                ],
            }
        ).encode()
        resp = exp.post("/alertmanager", body, headers={"Content-Type": "application/json"})
        assert resp.status == 200, resp.text
        logs = exp.logs()
    assert f"event_loop={loop}" in logs
    assert "Traceback" not in logs


def test_loop_factory() -> None:
    assert loop_factory("asyncio") is None
    assert loop_factory("uvloop") is uvloop.new_event_loop


def test_unknown_event_loop_is_refused() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "--runtime.event-loop=trio"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "--runtime.event-loop" in proc.stderr and "asyncio" in proc.stderr
