"""exporter.probers.dns against the real Unbound of the loopback test stack.

The zones are those of scripts/teststack.sh: example.test (mx1 -> 127.0.0.1, mx2 ->
127.0.0.2), good.test, badspf.test (two SPF records), baddmarc.test (DMARC without p=),
notlsrpt.test (no TLS-RPT record), nomx.test (an A record only) and dnsbl.test
(127.0.0.2 listed with 127.0.0.2, 127.0.0.3 answered with the error code 127.255.255.254).

DKIM is left out of the posture here: the stack publishes a shortened placeholder key
(``p=MIGfMA0...QC1``, the first 40 characters of a 1024-bit key), which the parser rightly
reports as "p= is not an RSA public key".
"""

from __future__ import annotations

import logging

import dns.asyncresolver
import pytest
from stack import Stack

from exporter.config import DnsPosture, ResolverConfig
from exporter.core.model import Sink
from exporter.probers.dns import DNSBL_ERROR_REASONS, MxTarget, check_dnsbl, check_posture, discover_mx, make_resolver

LOG = logging.getLogger("test.dns.unbound")
POSTURE = DnsPosture(mx=True, spf=True, dmarc=True, mta_sts=True, tls_rpt=True, dkim_selectors=("mail",))
RECORDS = ("mx", "spf", "dmarc", "mta_sts", "tls_rpt", "dkim:mail")


def resolver(stack: Stack) -> dns.asyncresolver.Resolver:
    host, port = stack.dns_server
    return make_resolver(ResolverConfig(nameservers=(host,), port=port, timeout=2.0))


def record_values(sink: Sink, domain: str) -> dict[str, float]:
    return {
        dict(s.labels)["record"]: s.value
        for s in sink.samples()
        if s.family == "mail_dns_record_ok" and dict(s.labels)["domain"] == domain
    }


async def test_mx_discovery(stack: Stack) -> None:
    res = resolver(stack)
    disc = await discover_mx(res, "example.test", 16)
    assert disc.ok and disc.records == 2
    assert disc.targets == (
        MxTarget("mx1.example.test", 10, "127.0.0.1"),
        MxTarget("mx2.example.test", 20, "127.0.0.2"),
    )
    implicit = await discover_mx(res, "nomx.test", 16)
    assert implicit.ok and implicit.implicit and implicit.targets == (MxTarget("nomx.test", 0, "127.0.0.1"),)
    missing = await discover_mx(res, "missing.test", 16)
    assert missing.failure is not None and missing.failure.reason == "dns"
    assert "NXDOMAIN" in missing.failure.message


@pytest.mark.parametrize(
    ("domain", "broken"),
    [
        ("good.test", {}),
        ("badspf.test", {"spf": "2 SPF records"}),
        ("baddmarc.test", {"dmarc": "missing p= tag"}),
        ("notlsrpt.test", {"tls_rpt": "no TLS-RPT record"}),
    ],
)
async def test_exactly_the_broken_records_read_zero(stack: Stack, domain: str, broken: dict[str, str]) -> None:
    sink = Sink()
    ok = await check_posture(resolver(stack), domain, POSTURE, sink, LOG)
    assert ok is (not broken)
    assert record_values(sink, domain) == {r: 0.0 if r in broken else 1.0 for r in RECORDS}
    for record in RECORDS:
        assert sink.details[record] == broken.get(record, "ok")


async def test_dnsbl_semantics(stack: Stack) -> None:
    sink = Sink()
    addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    ok = await check_dnsbl(resolver(stack), "example.test", addresses, ["dnsbl.test"], sink, LOG)
    assert not ok
    listed = {dict(s.labels)["address"]: s.value for s in sink.samples() if s.family == "mail_dnsbl_listed"}
    assert listed == {"127.0.0.2": 1.0, "127.0.0.3": 0.0, "127.0.0.4": 0.0}
    errors = {dict(s.labels)["reason"]: s.value for s in sink.samples() if s.family == "mail_dnsbl_errors_total"}
    assert errors == {reason: 1.0 if reason == "error_code" else 0.0 for reason in DNSBL_ERROR_REASONS}
