"""Issue 3 acceptance: the real exporter against the real Postfix, Dovecot and Unbound.

Each test starts the exporter as a user would (a subprocess with a config file) and
reads its /metrics, /probe and status page.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

from helpers import metric_values, one, run_exporter
from stack import Stack


def resolver(stack: Stack) -> str:
    host, port = stack.dns_server
    return f"resolver: {{nameservers: ['{host}'], port: {port}, timeout: 2s}}"


def test_mx_redundancy_follows_postfix_down_and_up(stack: Stack, tmp_path: Path) -> None:
    cfg = f"""
global:
  interval: 2s
  timeout: 3s
  {resolver(stack)}
domains:
  - domain: example.test
    min_healthy_mx: 2
    smtp: {{port: {stack.port("smtp")}, tls: starttls, helo: monitor.example.test,
            tls_config: {{ca_file: "{stack.ca_file}"}}}}
    dns: {{mx: true, spf: false, dmarc: false}}
"""
    with run_exporter(tmp_path, config_text=cfg) as exp:
        exp.wait_ready()
        text = exp.wait_for(lambda t: "mail_mx_healthy" in t and "mail_mx_records" in t and _mx(t, "healthy") == 1)
        assert _mx(text, "records") == 2
        assert _mx(text, "min_healthy") == 2
        up = metric_values(text, "mail_smtp_up")
        assert one(up, target=f"mx1.example.test[127.0.0.1]:{stack.port('smtp')}") == 1
        assert one(up, target=f"mx2.example.test[127.0.0.2]:{stack.port('smtp')}") == 0
        dead = metric_values(text, "mail_probe_failures_total")
        assert one(dead, target=f"mx2.example.test[127.0.0.2]:{stack.port('smtp')}", reason="refused") >= 1
        assert (
            one(metric_values(text, "mail_tls_cert_valid"), target=f"mx1.example.test[127.0.0.1]:{stack.port('smtp')}")
            == 1
        )

        stack.stop("postfix")
        try:
            t0 = time.monotonic()
            exp.wait_for(lambda t: _mx(t, "healthy") == 0, timeout=2 + 3 + 5)
            # within one interval plus one probe timeout
            assert time.monotonic() - t0 < 2 + 3 + 5
        finally:
            stack.start("postfix")
        exp.wait_for(lambda t: _mx(t, "healthy") == 1, timeout=20)
        page = exp.get("/").text
        assert "example.test" in page and "1 of 2 MX hosts healthy" in page


def _mx(text: str, what: str) -> float:
    values = metric_values(text, f"mail_mx_{what}")
    return one(values, domain="example.test") if values else -1


def _cert_config(stack: Stack) -> str:
    lines = [
        "global: {interval: 2s, timeout: 5s}",
        # /probe with a target other than a module's own: the stack is all on loopback
        "probe: {allow_targets: ['127.0.0.1'], allow_address_classes: [loopback]}",
        "endpoints:",
    ]
    for name, port in (
        ("valid", "smtp"),
        ("expired", "smtp_expired"),
        ("selfsigned", "smtp_selfsigned"),
        ("wronghost", "smtp_wronghost"),
    ):
        lines.append(
            f"  - {{name: {name}, protocol: smtp, address: '127.0.0.1:{stack.port(port)}', tls: starttls,"
            f" tls_config: {{ca_file: '{stack.ca_file}', server_name: mx1.example.test}}}}"
        )
    lines.append(
        f"  - {{name: imaps, protocol: imap, address: '127.0.0.1:{stack.port('imaps')}', tls: implicit,"
        f" tls_config: {{ca_file: '{stack.ca_file}', server_name: imap.example.test}},"
        f" auth: {{username: probe@example.test, password: '{stack.password('probe@example.test')}'}},"
        f" select: INBOX}}"
    )
    lines.append(
        f"  - {{name: imap-starttls, protocol: imap, address: '127.0.0.1:{stack.port('imap')}', tls: starttls,"
        f" tls_config: {{ca_file: '{stack.ca_file}', server_name: imap.example.test}}}}"
    )
    lines.append(
        f"  - {{name: submission, protocol: smtp, address: '127.0.0.1:{stack.port('submission')}', tls: starttls,"
        f" tls_config: {{ca_file: '{stack.ca_file}', server_name: mx1.example.test}},"
        f" auth: {{username: probe@example.test, password: '{stack.password('probe@example.test')}'}}}}"
    )
    return "\n".join(lines) + "\n"


def _all_ran(text: str, names: int) -> bool:
    return (
        len(metric_values(text, "mail_exporter_check_success")) >= names
        and all(v >= 0 for v in metric_values(text, "mail_exporter_check_success").values())
        and len(metric_values(text, "mail_exporter_check_duration_seconds")) >= names
    )


def test_certificates_expiry_and_validity_match_the_stack(stack: Stack, tmp_path: Path) -> None:
    with run_exporter(tmp_path, config_text=_cert_config(stack)) as exp:
        exp.wait_ready()
        text = exp.wait_for(lambda t: _all_ran(t, 7))
        expiry = metric_values(text, "mail_tls_cert_expiry_timestamp_seconds")
        valid = metric_values(text, "mail_tls_cert_valid")
        for check, cert, want_valid in (
            ("valid", "valid", 1),
            ("expired", "expired", 0),
            ("selfsigned", "selfsigned", 0),
            ("wronghost", "wronghost", 0),
        ):
            assert one(expiry, check=check) == stack.certs[cert]["not_after"], check
            assert one(valid, check=check) == want_valid, check
        hostname = metric_values(text, "mail_tls_cert_hostname_valid")
        chain = metric_values(text, "mail_tls_cert_chain_valid")
        assert one(hostname, check="wronghost") == 0 and one(chain, check="wronghost") == 1
        assert one(hostname, check="selfsigned") == 1 and one(chain, check="selfsigned") == 0
        smtp_up = metric_values(text, "mail_smtp_up")
        assert one(smtp_up, check="valid") == 1
        assert one(smtp_up, check="expired") == 0
        assert one(metric_values(text, "mail_probe_failures_total"), check="expired", reason="tls") >= 1
        assert one(smtp_up, check="submission") == 1
        imap_up = metric_values(text, "mail_imap_up")
        assert one(imap_up, check="imaps") == 1 and one(imap_up, check="imap-starttls") == 1
        assert one(expiry, check="imaps") == stack.certs["valid"]["not_after"]
        versions = metric_values(text, "mail_tls_version_info")
        assert {dict(k)["version"] for k in versions} <= {"TLSv1.2", "TLSv1.3"}
        phases = {
            dict(k)["phase"]
            for k in metric_values(text, "mail_probe_phase_duration_seconds")
            if dict(k)["check"] == "submission"
        }
        assert {"connect", "banner", "ehlo", "starttls", "ehlo_tls", "auth"} <= phases


def test_probe_endpoint_live_and_debug_redacts_secret(stack: Stack, tmp_path: Path) -> None:
    password = stack.password("probe@example.test")
    with run_exporter(tmp_path, config_text=_cert_config(stack)) as exp:
        exp.wait_ready()
        resp = exp.get("/probe?module=submission", headers={"X-Prometheus-Scrape-Timeout-Seconds": "10"})
        assert resp.status == 200
        assert one(metric_values(resp.text, "probe_success")) == 1
        assert one(metric_values(resp.text, "mail_smtp_up"), check="submission") == 1
        # another target with the same module's settings: the expired-certificate listener
        resp = exp.get(f"/probe?module=valid&target=127.0.0.1:{stack.port('smtp_expired')}")
        assert one(metric_values(resp.text, "probe_success")) == 0
        assert (
            one(metric_values(resp.text, "mail_tls_cert_expiry_timestamp_seconds"), check="valid")
            == stack.certs["expired"]["not_after"]
        )
        debug = exp.get("/probe?module=submission&debug=true").text
        assert "C: EHLO" in debug and "S: 220" in debug and "AUTH" in debug
        for secret in _forms(password):
            assert secret not in debug
        assert exp.get("/probe?module=nope").status == 400
        for path in ("/metrics", "/", "/probe?module=imaps&debug=true"):
            body = exp.get(path).text
            for secret in _forms(password):
                assert secret not in body, path
        for secret in _forms(password):
            assert secret not in exp.logs()


def _forms(password: str) -> list[str]:
    user = "probe@example.test"
    return [
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(f"\0{user}\0{password}".encode()).decode(),
    ]


def test_dns_posture_and_dnsbl_through_the_exporter(stack: Stack, tmp_path: Path) -> None:
    domains = "\n".join(
        f"  - {{domain: {d}, smtp: {{port: {stack.port('smtp')}, tls_config: {{verify: false}}}},"
        f" dns: {{mx: true, spf: true, dmarc: true, mta_sts: true, tls_rpt: true, dkim_selectors: [mail]}}}}"
        for d in ("good.test", "badspf.test", "baddmarc.test", "notlsrpt.test")
    )
    cfg = f"""
global:
  interval: 2s
  {resolver(stack)}
domains:
{domains}
  - domain: example.test
    smtp: {{port: {stack.port("smtp")}}}
    dns: {{mx: false, spf: false, dmarc: false}}
    dnsbl: [dnsbl.test]
    sending_ips: [127.0.0.3]
"""
    with run_exporter(tmp_path, config_text=cfg) as exp:
        exp.wait_ready()
        text = exp.wait_for(
            lambda t: (
                len(metric_values(t, "mail_dns_record_ok")) >= 24 and len(metric_values(t, "mail_dnsbl_listed")) >= 3
            )
        )
        records = metric_values(text, "mail_dns_record_ok")
        broken = {(dict(k)["domain"], dict(k)["record"]) for k, v in records.items() if v == 0}
        assert broken == {("badspf.test", "spf"), ("baddmarc.test", "dmarc"), ("notlsrpt.test", "tls_rpt")}
        listed = metric_values(text, "mail_dnsbl_listed")
        # MX addresses of example.test are 127.0.0.1 and 127.0.0.2; 127.0.0.3 is a configured sending IP
        assert one(listed, address="127.0.0.2", zone="dnsbl.test") == 1
        assert one(listed, address="127.0.0.3", zone="dnsbl.test") == 0
        assert one(listed, address="127.0.0.1", zone="dnsbl.test") == 0
        errors = metric_values(text, "mail_dnsbl_errors_total")
        assert one(errors, zone="dnsbl.test", reason="error_code") >= 1
        assert one(errors, zone="dnsbl.test", reason="timeout") == 0
        page = exp.get("/").text
        assert "2 SPF records" in page and "missing p= tag" in page
