"""Issue 8 acceptance: every panel query of dashboards/ returns data from the real test stack.

The stack's Prometheus scrapes the real exporter (every metric family configured: a domain
with MX, DNS and DNSBL checks, SMTP and IMAP endpoints, the stack's Postfix queue with a
few deferred messages, a round-trip route, continuity services and a dataset with a backup
and a replica) with the rules of rules/ loaded for this run's job.  Incidents, a recovery
and a drill are produced by posting Alertmanager notifications to the exporter's webhook,
so that the continuity panels have data too.  Every target of every panel is then run
with the dashboard variables substituted, and must succeed with a non-empty result.

The Prometheus of the stack is shared: the job name (``mail-dash-<run>``), the target file
and the rule files are private to this run and removed afterwards.

``MCE_RENDER_PREVIEWS=DIR`` also renders the previews of scripts/render_previews.py into DIR
from this live run, after ``MCE_RENDER_WAIT`` more seconds of history (how docs/img/ is made).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import smtplib
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers import ExporterProcess, get_json, http, run_exporter, wait
from stack import Stack, tool, tool_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
UIDS = ("mce-overview", "mce-delivery", "mce-continuity", "mce-domain")
#: Panels whose data depends on rare events, all produced by this test: documented here.
PRODUCED = {
    "Open incidents": "an incident left open by a firing notification",
    "MTTR vs target": "a resolved incident",
    "MTBF": "two incidents",
    "RTO estimate vs target": "a resolved incident and a drill",
    "Incidents opened": "incidents opened during the run",
    "Deferral reasons": "messages deferred at the stack's dead relay",
    "Top deferred destinations": "messages deferred at the stack's dead relay",
    "Active alerts": "MailMxDown for the stack's dead mx2 (rules with for: 10s)",
    "Rejects by reason": "a RCPT to an unknown user rejected by the stack's Postfix, read from its log",
}
WARMUP = 55.0


def load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def substitute(expr: str, job: str) -> str:
    values = {
        "$__rate_interval": "1m",
        "$__range": "10m",
        "$__interval": "15s",
        "${datasource}": "",
        "$job": job,
        "$instance": ".+",
        "$domain": ".+",
        "$check": ".+",
    }
    for key, value in values.items():
        expr = expr.replace(key, value)
    assert "$" not in expr.replace('"$1"', ""), expr
    return expr


def panel_targets(job: str) -> list[tuple[str, str, str, bool]]:
    out = []
    for uid in UIDS:
        board = json.loads((ROOT / "dashboards" / f"{uid}.json").read_text())
        for p in board["panels"]:
            for t in p.get("targets", []):
                out.append((uid, p["title"], substitute(t["expr"], job), bool(t.get("instant"))))
    return out


def run_query(prom: str, expr: str, instant: bool) -> tuple[str, int]:
    """(status or error, number of series)."""
    now = time.time()
    if instant:
        url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": f"{now:.3f}"})
    else:
        params = {"query": expr, "start": f"{now - 120:.3f}", "end": f"{now:.3f}", "step": "15"}
        url = f"{prom}/api/v1/query_range?" + urllib.parse.urlencode(params)
    resp = http("GET", url)
    data = json.loads(resp.body)
    if data.get("status") != "success":
        return f"{data.get('errorType')}: {data.get('error')}", 0
    return "success", len(data["data"]["result"])


def webhook(exp: ExporterProcess, status: str, alerts: list[dict[str, Any]]) -> None:
    body = {
        "receiver": "mce",
        "status": status,
        "alerts": alerts,
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:29093",
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
    }
    resp = exp.post("/alertmanager", json.dumps(body).encode(), {"Content-Type": "application/json"})
    assert resp.status == 200, resp.text


def am_alert(fp: str, labels: dict[str, str], start: float, end: float | None = None) -> dict[str, Any]:
    return {
        "status": "firing" if end is None else "resolved",
        "labels": {"severity": "warning", **labels},
        "annotations": {},
        "startsAt": iso(start),
        "endsAt": iso(end) if end is not None else "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": fp,
    }


def exporter_config(stack: Stack, run: str, tmp_path: Path, mta_sts_port: int) -> str:
    host, dns_port = stack.dns_server
    backups = tmp_path / "backups"
    backups.mkdir()
    (backups / "mail.tar").write_bytes(b"backup")
    now = time.time()
    ca = stack.ca_file
    user = "probe@example.test"
    return f"""
global:
  interval: 2s
  timeout: 3s
  resolver: {{nameservers: ['{host}'], port: {dns_port}, timeout: 2s}}
domains:
  - domain: example.test
    min_healthy_mx: 1
    smtp: {{port: {stack.port("smtp")}, tls: starttls, helo: monitor.example.test, tls_config: {{ca_file: "{ca}"}}}}
    dns: {{mx: true, spf: true, dmarc: true}}
    dnsbl: [dnsbl.test]
    sending_ips: [127.0.0.3]
  - domain: sts.test
    smtp: {{port: {stack.port("smtp")}, tls_config: {{ca_file: "{ca}"}}}}
    mta_sts: {{port: {mta_sts_port}, ca_file: "{ca}"}}
    dns: {{mx: false, spf: false, dmarc: false}}
endpoints:
  - name: submission
    protocol: smtp
    address: 127.0.0.1:{stack.port("submission")}
    tls: starttls
    tls_config: {{ca_file: "{ca}", server_name: mx1.example.test}}
    helo: monitor.example.test
  - name: imaps
    protocol: imap
    address: 127.0.0.1:{stack.port("imaps")}
    tls: implicit
    tls_config: {{ca_file: "{ca}", server_name: imap.example.test}}
    auth: {{username: {user}, password: "{stack.password(user)}"}}
queues:
  - name: stack
    type: postfix
    config_directory: {stack.postfix_config_dir}
logs:
  - {{name: postfix, type: file, path: "{stack.postfix_log}", parsers: [postfix], start_at: beginning, interval: 2s}}
  - {{name: dovecot, type: file, path: "{stack.dovecot_log}", parsers: [dovecot], start_at: beginning, interval: 2s}}
routes:
  - name: inbound
    interval: 3s
    timeout: 10s
    max_age: 1m
    send:
      # through the stack's signing submission service and its verifying inbound MX, so the
      # panels of the receiver's verdict have the verifiers' real results
      address: 127.0.0.1:{stack.port("submission_signed")}
      tls: starttls
      tls_config: {{ca_file: "{ca}", server_name: mx1.example.test}}
      helo: monitor.example.test
      auth: {{username: {user}, password: "{stack.password(user)}"}}
      from: probe@{stack.verifiers["domains"]["signed"]}
      to: {user}
      # the stack runs no spam filter: this field stands in for one, for the spam panels
      headers: {{X-Spam-Status: "No, score=-1.0"}}
    receive:
      address: 127.0.0.1:{stack.port("imaps")}
      tls: implicit
      tls_config: {{ca_file: "{ca}", server_name: imap.example.test}}
      username: {user}
      password: "{stack.password(user)}"
      folders: [INBOX]
      junk_folders: [Junk]
      poll_interval: 1s
      authserv_id: "{stack.verifiers["authserv_id"]}"
continuity:
  services:
    - name: inbound
      incident_match: {{mce_dash: "{run}", service: inbound}}
      availability_target: 0.999
      rto_target: 1h
      mttr_target: 30m
    - name: storage
      incident_match: {{mce_dash: "{run}", service: storage}}
      rto_target: 4h
  datasets:
    - name: mailstore
      rpo_target: 15m
      backups:
        - {{type: file_mtime, name: nightly, path: "{backups}/*.tar", max_age: 1d}}
      replicas:
        - {{type: command, name: standby, command: ["{sys.executable}", "-c", "print(2.5)"], interval: 2s}}
  maintenance:
    - service: storage
      start: "{iso(now - 3600)}"
      end: "{iso(now + 3600)}"
"""


def defer_messages(stack: Stack, tag: str, n: int = 3) -> str:
    sender = f"mce-dash-{tag}@example.test"
    with smtplib.SMTP(stack.host, stack.port("smtp"), timeout=30) as smtp:
        smtp.ehlo("dash-test.example")
        for i in range(n):
            body = f"Subject: dashboard test {tag} {i}\r\n\r\nmessage {i}\r\n"
            smtp.sendmail(sender, [f"u{i}@d{i % 2}-{tag}.queue.test"], body)
    return sender


def reject_unknown_user(stack: Stack, tag: str) -> None:
    """One NOQUEUE reject in the Postfix log (550 5.1.1, unknown user), for the rejects panel."""
    with smtplib.SMTP(stack.host, stack.port("smtp"), timeout=30) as smtp:
        smtp.ehlo("dash-test.example")
        smtp.mail(f"mce-dash-{tag}@example.test")
        code, _ = smtp.rcpt(f"no-such-user-{tag}@example.test")
        assert code == 550, code
        smtp.rset()


def delete_messages(stack: Stack, sender: str) -> None:
    ids = [m["queue_id"] for m in stack.postqueue_json() if m["sender"] == sender]
    if ids:
        subprocess.run(
            [tool("postsuper"), "-c", str(stack.postfix_config_dir), "-d", "-"],
            input="\n".join(ids) + "\n",
            capture_output=True,
            text=True,
            env=tool_env(),
            check=False,
            timeout=60,
        )


class _PolicyHandler(BaseHTTPRequestHandler):
    body = b"version: STSv1\r\nmode: testing\r\nmx: mx1.example.test\r\nmax_age: 86400\r\n"

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/.well-known/mta-sts.txt" else 404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def mta_sts_port(stack: Stack) -> Iterator[int]:
    """https://mta-sts.sts.test:PORT/ on 127.0.0.1, serving a testing-mode policy (for the MTA-STS panel)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PolicyHandler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert = stack.certs[stack.mta_sts["cert"]]
    ctx.load_cert_chain(cert["chain"], cert["key"])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def live(stack: Stack, tmp_path: Path, mta_sts_port: int) -> Iterator[tuple[Stack, ExporterProcess, str]]:
    gen = load("mce_rules_generate_dash", ROOT / "rules" / "generate.py")
    run = uuid.uuid4().hex[:10]
    job = f"mail-dash-{run}"
    target_file = stack.prometheus_targets_dir / f"mce-dash-{run}.json"
    names = (gen.RECORDING_FILE, gen.ALERTS_FILE, gen.SLO_FILE)
    rule_files = [stack.prometheus_rules_dir / f"mce-dash-{run}-{name}" for name in names]
    sender = ""
    with run_exporter(tmp_path, config_text=exporter_config(stack, run, tmp_path, mta_sts_port)) as exp:
        exp.wait_ready()
        try:
            sender = defer_messages(stack, run)
            reject_unknown_user(stack, run)
            settings = dataclasses.replace(gen.SETTINGS, job_selector=f'job="{job}"', for_override="10s")
            texts = gen.rule_texts(settings)
            for path, name in zip(rule_files, names, strict=True):
                path.write_text(texts[name])
            target_file.write_text(json.dumps([{"targets": [f"127.0.0.1:{exp.port}"], "labels": {"job": job}}]))
            http("POST", stack.prometheus_url + "/-/reload")

            # incidents: two resolved ones of inbound (MTTR, MTBF, RTO), one open; a drill
            now = time.time()
            labels = {"mce_dash": run, "service": "inbound"}
            webhook(
                exp,
                "resolved",
                [
                    am_alert(f"{run}-1", {**labels, "alertname": "DashA"}, now - 1800, now - 1700),
                    am_alert(f"{run}-2", {**labels, "alertname": "DashB"}, now - 900, now - 840),
                    am_alert(f"{run}-d", {**labels, "alertname": "DashDrill", "drill": "true"}, now - 600, now - 480),
                ],
            )
            webhook(exp, "firing", [am_alert(f"{run}-3", {**labels, "alertname": "DashC"}, now - 60)])
            yield stack, exp, job
        finally:
            target_file.unlink(missing_ok=True)
            for path in rule_files:
                path.unlink(missing_ok=True)
            http("POST", stack.prometheus_url + "/-/reload")
            if sender:
                delete_messages(stack, sender)


def test_every_panel_query_returns_data(live: tuple[Stack, ExporterProcess, str]) -> None:
    stack, exp, job = live
    prom = stack.prometheus_url

    def scraped() -> bool:
        active = get_json(prom + "/api/v1/targets?state=active")["data"]["activeTargets"]
        return any(t["labels"].get("job") == job and t["health"] == "up" for t in active)

    started = time.monotonic()
    wait(scraped, 30, "Prometheus to scrape the exporter")
    targets = panel_targets(job)
    assert len(targets) >= 50
    for title in PRODUCED:
        assert any(t[1] == title for t in targets), f"PRODUCED names an unknown panel {title!r}"

    def failures() -> list[str]:
        out = []
        for uid, title, expr, instant in targets:
            status, n = run_query(prom, expr, instant)
            if status != "success" or n == 0:
                out.append(f"{uid} / {title}: {status}, {n} series: {expr}")
        return out

    last: list[str] = []
    while time.monotonic() - started < WARMUP:
        last = failures()
        if not last:
            break
        time.sleep(2)
    assert not last, "panels without data after the warm-up:\n" + "\n".join(last)

    out_dir = os.environ.get("MCE_RENDER_PREVIEWS")
    if out_dir:
        time.sleep(float(os.environ.get("MCE_RENDER_WAIT", "0")))  # more history for the pictures
        render = load("mce_render_previews", ROOT / "scripts" / "render_previews.py")
        assert render.main(["--prometheus", prom, "--job", job, "--out", out_dir, "--range", "10m"]) == 0
    assert exp.proc.poll() is None
