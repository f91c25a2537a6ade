"""Issue 19 acceptance: the receiver's verdict on probes, from real verifiers in the test stack.

Probes go out through the stack's signing submission service (OpenDKIM signs them), are relayed
to its verifying inbound service (policyd-spf, OpenDKIM verifying, OpenDMARC, each adding its
own ``Authentication-Results`` with the authserv-id of stack.json "verifiers"), and are found
over IMAP by the exporter's own :class:`~exporter.roundtrip.route.Route`.  The results asserted
are the verifiers' own, read from the headers that they added: nothing here writes them.

The From domains (DNS data in the stack's Unbound, keys made at ``up``):
signed.test (published key, SPF allows loopback, p=reject): pass, pass, pass;
wrongkey.test (the published key is not the signing key, SPF ?all, p=reject): dkim=fail, dmarc=fail;
spffail.test (published key, SPF allows only 192.0.2.0/24, p=quarantine): spf=fail, dkim and dmarc pass.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers import metric_values, one, run_exporter
from stack import Stack

from exporter import config
from exporter.core.model import Sink
from exporter.roundtrip.receiver import close_all
from exporter.roundtrip.route import Route

pytestmark = pytest.mark.slow

LOG = logging.getLogger("test.verdict")
USER = "probe@example.test"


def verifiers(stack: Stack) -> dict[str, Any]:
    data = stack.raw.get("verifiers")
    if data is None:
        pytest.fail("stack.json has no 'verifiers': the test stack is older than this test (scripts/teststack.sh up)")
    return dict(data)


def route_text(stack: Stack, name: str, domain: str, *, headers: str = "", authserv_id: str | None = None) -> str:
    v = verifiers(stack)
    aid = v["authserv_id"] if authserv_id is None else authserv_id
    return f"""
  - name: {name}
    interval: 60s
    timeout: 20s
    max_age: 120s
    send:
      address: 127.0.0.1:{v["submission_signed"]["port"]}
      tls: starttls
      tls_config: {{ca_file: "{stack.ca_file}", server_name: mx1.example.test}}
      helo: monitor.example.test
      auth: {{username: {USER}, password: "{stack.password(USER)}"}}
      from: probe@{domain}
      to: {USER}
      headers: {{{headers}}}
    receive:
      address: 127.0.0.1:{stack.port("imaps")}
      tls: implicit
      tls_config: {{ca_file: "{stack.ca_file}", server_name: imap.example.test}}
      username: {USER}
      password: "{stack.password(USER)}"
      folders: [INBOX]
      junk_folders: [Junk]
      poll_interval: 1s
      authserv_id: "{aid}"
"""


def route_cfg(stack: Stack, name: str, domain: str, **kw: Any) -> config.RouteConfig:
    return config.load_text("routes:" + route_text(stack, name, domain, **kw)).routes[0]


def domain(stack: Stack, key: str) -> str:
    return str(verifiers(stack)["domains"][key])


def gauge(route: Route, name: str, **labels: str) -> float | None:
    want = set(labels.items())
    found = [s.value for s in route.state.samples() if s.name == name and want <= set(s.labels)]
    assert len(found) <= 1
    return found[0] if found else None


def counts(route: Route, method: str) -> dict[str, float]:
    return {
        dict(s.labels)["result"]: s.value
        for s in route.state.samples()
        if s.name == "mail_roundtrip_auth_results_total" and dict(s.labels)["method"] == method and s.value
    }


async def run_probes(route: Route, n: int) -> list[str]:
    """Run the route n times; every probe must be delivered.  Returns the status-page verdicts."""
    out = []
    for _ in range(n):
        sink = Sink(route.state)
        ok = await route.run(sink, LOG)
        assert ok, (sink.failures, sink.details)
        out.append(sink.details["verdict"])
    return out


@pytest.fixture
async def mailboxes() -> AsyncIterator[None]:
    yield
    await close_all()


async def test_signed_and_aligned_route_passes_all_three(stack: Stack, mailboxes: None) -> None:
    route = Route(route_cfg(stack, "aligned", domain(stack, "signed")), imap_timeout=5, send_timeout=10)
    try:
        verdicts = await run_probes(route, 3)
    finally:
        route.close()
    assert verdicts == ["spf=pass dkim=pass dmarc=pass (p=reject) spam=none"] * 3
    for method in ("spf", "dkim", "dmarc"):
        assert counts(route, method) == {"pass": 3}, method
        assert gauge(route, "mail_roundtrip_auth_result", method=method, result="pass") == 1
    assert gauge(route, "mail_roundtrip_auth_header_present") == 1
    assert gauge(route, "mail_roundtrip_dkim_aligned") == 1
    assert gauge(route, "mail_roundtrip_dmarc_policy", policy="reject") == 1
    assert gauge(route, "mail_roundtrip_dmarc_disposition", disposition="none") == 1
    assert gauge(route, "mail_roundtrip_spam_verdict", verdict="none") == 1


async def test_wrong_dkim_key_fails_dkim_and_dmarc_and_a_forged_header_changes_nothing(
    stack: Stack, mailboxes: None
) -> None:
    # The sender adds a header claiming that everything passed, under another authserv-id.
    forged = '"Authentication-Results": "evil.test; spf=pass; dkim=pass header.d=wrongkey.test; dmarc=pass"'
    route = Route(
        route_cfg(stack, "wrongkey", domain(stack, "wrongkey"), headers=forged), imap_timeout=5, send_timeout=10
    )
    try:
        (verdict,) = await run_probes(route, 1)
    finally:
        route.close()
    assert "dkim=fail" in verdict and "dmarc=fail" in verdict, verdict
    assert counts(route, "dkim") == {"fail": 1}
    assert counts(route, "dmarc") == {"fail": 1}
    assert counts(route, "spf") == {"neutral": 1}
    assert gauge(route, "mail_roundtrip_dkim_aligned") == 0
    assert gauge(route, "mail_roundtrip_dmarc_policy", policy="reject") == 1


async def test_sender_not_allowed_by_spf_fails_spf(stack: Stack, mailboxes: None) -> None:
    route = Route(route_cfg(stack, "spffail", domain(stack, "spffail")), imap_timeout=5, send_timeout=10)
    try:
        (verdict,) = await run_probes(route, 1)
    finally:
        route.close()
    assert verdict.startswith("spf=fail dkim=pass dmarc=pass"), verdict
    assert counts(route, "spf") == {"fail": 1}
    assert counts(route, "dkim") == {"pass": 1}
    assert counts(route, "dmarc") == {"pass": 1}
    assert gauge(route, "mail_roundtrip_dmarc_policy", policy="quarantine") == 1


async def test_a_wrong_authserv_id_reads_no_header(stack: Stack, mailboxes: None) -> None:
    # The receiver's real headers are there, but under another name than the one configured.
    route = Route(
        route_cfg(stack, "wrongid", domain(stack, "signed"), authserv_id="mx.google.com"),
        imap_timeout=5,
        send_timeout=10,
    )
    try:
        (verdict,) = await run_probes(route, 1)
    finally:
        route.close()
    assert verdict == "no Authentication-Results from the receiver spam=none"
    assert gauge(route, "mail_roundtrip_auth_header_present") == 0
    assert counts(route, "dmarc") == {"none": 1}


def test_exporter_exports_the_verdict(stack: Stack, tmp_path: Path) -> None:
    text = "routes:" + route_text(stack, "aligned", domain(stack, "signed")).replace("interval: 60s", "interval: 2s")
    with run_exporter(tmp_path, config_text=text) as exp:
        exp.wait_ready()
        counter = "mail_roundtrip_auth_results_total"
        body = exp.wait_for(
            lambda t: one(metric_values(t, counter), route="aligned", method="dmarc", result="pass") >= 1,
            timeout=60,
        )
        for method in ("spf", "dkim", "dmarc"):
            assert one(metric_values(body, "mail_roundtrip_auth_result"), method=method, result="pass") == 1
            assert one(metric_values(body, "mail_roundtrip_auth_result"), method=method, result="fail") == 0
        assert one(metric_values(body, "mail_roundtrip_dkim_aligned"), route="aligned") == 1
        assert "verdict: spf=pass dkim=pass dmarc=pass" in exp.get("/").text
        exp.signal(signal.SIGTERM)
        assert exp.proc.wait(15) == 0
