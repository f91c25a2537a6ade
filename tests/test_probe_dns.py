"""exporter.probers.dns against the scripted DNS server of tests/dnsserver.py (and a local
HTTPS server with a trustme certificate for MTA-STS policies).  Nothing leaves 127.0.0.1."""

from __future__ import annotations

import base64
import logging
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import dns.asyncresolver
import dns.nameserver
import pytest
import pytest_asyncio
import trustme
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dnsserver import DnsServer, Mode
from helpers import mta_sts_policy_server, sink_value

from exporter.config import DnsPosture, ResolverConfig
from exporter.core.model import Sink
from exporter.probers.dns import (
    DNSBL_ERROR_REASONS,
    MxTarget,
    PolicyFetch,
    check_dnsbl,
    check_posture,
    discover_mx,
    make_resolver,
)

LOG = logging.getLogger("test.dns")
TIMEOUT = 1.0

RSA_KEY = base64.b64encode(
    rsa.generate_private_key(public_exponent=65537, key_size=2048)
    .public_key()
    .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
).decode()

ALL = DnsPosture(mx=True, spf=True, dmarc=True, mta_sts=True, tls_rpt=True, dkim_selectors=("mail",))
RECORDS = ("mx", "spf", "dmarc", "mta_sts", "tls_rpt", "dkim:mail")


def add_good_domain(srv: DnsServer, domain: str) -> None:
    """A domain whose every mail record is present and well formed."""
    srv.add(domain, "MX", f"10 mx.{domain}.")
    srv.add(f"mx.{domain}", "A", "127.0.0.1")
    srv.add(f"mta-sts.{domain}", "A", "127.0.0.1")
    srv.add_txt(domain, "google-site-verification=abc123", "v=spf1 mx -all")
    srv.add_txt(f"_dmarc.{domain}", f"v=DMARC1; p=reject; rua=mailto:dmarc@{domain}")
    srv.add_txt(f"_mta-sts.{domain}", "v=STSv1; id=20240101T000000")
    srv.add_txt(f"_smtp._tls.{domain}", f"v=TLSRPTv1; rua=mailto:tlsrpt@{domain}")
    dkim = f"v=DKIM1; k=rsa; p={RSA_KEY}"
    srv.add_txt(f"mail._domainkey.{domain}", [dkim[i : i + 255] for i in range(0, len(dkim), 255)])


def build_zone(srv: DnsServer) -> None:
    srv.add("example.test", "MX", "20 mx2.example.test.", "10 mx1.example.test.")
    srv.add("mx1.example.test", "A", "127.0.0.1")
    srv.add("mx2.example.test", "A", "127.0.0.2")
    srv.add("mx2.example.test", "AAAA", "::2")
    srv.add("nullmx.test", "MX", "0 .")
    srv.add("nomx.test", "A", "127.0.0.5")
    srv.add("nothing.test", "TXT", '"no mail here"')
    srv.add("halfmx.test", "MX", "10 gone.halfmx.test.", "20 mx1.example.test.")
    srv.add("deadmx.test", "MX", "10 gone.deadmx.test.")
    srv.add("servfail.test", "MX", "10 mx1.example.test.")
    srv.set_mode("servfail.test", "servfail")
    srv.add("refused.test", "MX", "10 mx1.example.test.")
    srv.set_mode("refused.test", "refused")
    srv.add("silent.test", "MX", "10 mx1.example.test.")
    srv.set_mode("silent.test", "drop")
    srv.add("big.test", "MX", "10 mx1.example.test.")
    srv.set_mode("big.test", "truncate", "MX")
    add_good_domain(srv, "good.test")
    add_good_domain(srv, "badspf.test")
    srv.add_txt("badspf.test", "v=spf1 ip4:127.0.0.2 ~all")
    add_good_domain(srv, "baddmarc.test")
    srv.remove("_dmarc.baddmarc.test").add_txt("_dmarc.baddmarc.test", "v=DMARC1; rua=mailto:x@baddmarc.test")
    add_good_domain(srv, "notlsrpt.test")
    srv.remove("_smtp._tls.notlsrpt.test")
    add_good_domain(srv, "flaky.test")
    srv.set_mode("_dmarc.flaky.test", "servfail")
    srv.add("2.0.0.127.dnsbl.test", "A", "127.0.0.2")
    srv.add_txt("2.0.0.127.dnsbl.test", "listed for test")
    srv.add("3.0.0.127.dnsbl.test", "A", "127.255.255.254")
    srv.add("5.0.0.127.dnsbl.test", "A", "127.0.0.2")
    srv.set_mode("5.0.0.127.dnsbl.test", "servfail")
    srv.add("6.0.0.127.dnsbl.test", "A", "127.0.0.2")
    srv.set_mode("6.0.0.127.dnsbl.test", "drop")
    srv.add("7.0.0.127.dnsbl.test", "A", "192.0.2.1")


@pytest_asyncio.fixture
async def server() -> AsyncIterator[DnsServer]:
    async with DnsServer() as srv:
        build_zone(srv)
        yield srv


def resolver_for(srv: DnsServer, timeout: float = TIMEOUT) -> dns.asyncresolver.Resolver:
    return make_resolver(ResolverConfig(nameservers=(srv.host,), port=srv.port, timeout=timeout))


gauge = sink_value


def records(sink: Sink, domain: str) -> dict[str, float | None]:
    return {r: gauge(sink, "mail_dns_record_ok", domain=domain, record=r) for r in RECORDS}


# --- make_resolver -------------------------------------------------------------------------------------


def test_make_resolver_uses_config_only() -> None:
    res = make_resolver(ResolverConfig(nameservers=("127.0.0.1", "::1"), port=5353, timeout=2.5))
    servers = [ns for ns in res.nameservers if isinstance(ns, dns.nameserver.Do53Nameserver)]
    assert [(ns.address, ns.port) for ns in servers] == [("127.0.0.1", 5353), ("::1", 5353)]
    assert res.timeout == 2.5 and res.lifetime == 2.5
    assert res.search == [] and res.cache is None


# --- MX discovery ---------------------------------------------------------------------------------------


async def test_discover_two_mx_sorted_by_preference(server: DnsServer) -> None:
    disc = await discover_mx(resolver_for(server), "example.test", 16)
    assert disc.ok and disc.records == 2 and not disc.implicit and not disc.null_mx
    assert disc.hosts == (("mx1.example.test", 10), ("mx2.example.test", 20))
    assert disc.targets == (
        MxTarget("mx1.example.test", 10, "127.0.0.1"),
        MxTarget("mx2.example.test", 20, "127.0.0.2"),
        MxTarget("mx2.example.test", 20, "::2"),
    )
    assert disc.errors == ()


async def test_discover_max_addresses(server: DnsServer) -> None:
    disc = await discover_mx(resolver_for(server), "example.test", 2)
    assert [t.address for t in disc.targets] == ["127.0.0.1", "127.0.0.2"]
    assert disc.errors == ("only the first 2 of 3 MX addresses are checked",)


async def test_null_mx_means_no_mail(server: DnsServer) -> None:
    disc = await discover_mx(resolver_for(server), "nullmx.test", 16)
    assert disc.null_mx and disc.records == 0 and disc.targets == () and disc.failure is None
    assert "accepts no mail" in disc.errors[0]


async def test_no_mx_falls_back_to_implicit_mx(server: DnsServer) -> None:
    disc = await discover_mx(resolver_for(server), "nomx.test", 16)
    assert disc.ok and disc.implicit and disc.records == 0
    assert disc.targets == (MxTarget("nomx.test", 0, "127.0.0.5"),)
    assert "implicit MX" in disc.errors[0]


async def test_no_mx_and_no_address_fails(server: DnsServer) -> None:
    disc = await discover_mx(resolver_for(server), "nothing.test", 16)
    assert disc.failure is not None and disc.failure.reason == "dns"
    assert disc.failure.message == "nothing.test: no MX records and no A/AAAA records"


async def test_unresolvable_mx_host(server: DnsServer) -> None:
    disc = await discover_mx(resolver_for(server), "halfmx.test", 16)
    assert disc.ok and disc.records == 2 and disc.unresolved == ("gone.halfmx.test",)
    assert disc.targets == (MxTarget("mx1.example.test", 20, "127.0.0.1"),)
    assert disc.errors == ("gone.halfmx.test: NXDOMAIN",)
    dead = await discover_mx(resolver_for(server), "deadmx.test", 16)
    assert dead.failure is not None and dead.failure.reason == "dns"
    assert dead.failure.message == "deadmx.test: none of the 1 MX hosts has an address"


async def test_truncated_udp_answer_retried_over_tcp(server: DnsServer) -> None:
    disc = await discover_mx(resolver_for(server), "big.test", 16)
    assert disc.ok and disc.records == 1
    assert ("big.test", "MX", "tcp") in server.queries


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        ("missing.test", "missing.test: domain does not exist (NXDOMAIN)"),
        ("servfail.test", "servfail.test: lookup failed: SERVFAIL"),
        ("refused.test", "refused.test: lookup failed: REFUSED"),
        ("silent.test", "silent.test: lookup failed: timeout after 1s"),
    ],
)
async def test_discovery_failures_are_data_and_bounded(server: DnsServer, domain: str, message: str) -> None:
    start = time.monotonic()
    disc = await discover_mx(resolver_for(server), domain, 16)
    elapsed = time.monotonic() - start
    assert disc.failure is not None
    assert disc.failure.reason == "dns" and disc.failure.message == message
    assert disc.targets == () and disc.records == 0
    assert elapsed < TIMEOUT + 1.0


@pytest.mark.parametrize("mode", ["nxdomain", "servfail", "drop"])
async def test_whole_server_failure_bounded(server: DnsServer, mode: Mode) -> None:
    server.default_mode = mode
    server.set_mode("example.test", mode)
    start = time.monotonic()
    disc = await discover_mx(resolver_for(server), "example.test", 16)
    assert disc.failure is not None and disc.failure.reason == "dns"
    assert time.monotonic() - start < TIMEOUT + 1.0


async def test_nothing_listening() -> None:
    async with DnsServer() as srv:
        port = srv.port
    res = make_resolver(ResolverConfig(nameservers=("127.0.0.1",), port=port, timeout=TIMEOUT))
    start = time.monotonic()
    disc = await discover_mx(res, "example.test", 16)
    assert disc.failure is not None and disc.failure.reason == "dns"
    assert time.monotonic() - start < TIMEOUT + 1.0


# --- DNS posture ----------------------------------------------------------------------------------------


async def test_posture_good_domain(server: DnsServer) -> None:
    sink = Sink()
    assert await check_posture(resolver_for(server), "good.test", ALL, sink, LOG)
    assert records(sink, "good.test") == dict.fromkeys(RECORDS, 1.0)
    assert all(sink.details[r] == "ok" for r in RECORDS)
    assert sink.failure is None


@pytest.mark.parametrize(
    ("domain", "record", "reason"),
    [
        ("badspf.test", "spf", "2 SPF records"),
        ("baddmarc.test", "dmarc", "missing p= tag"),
        ("notlsrpt.test", "tls_rpt", "no TLS-RPT record"),
        ("flaky.test", "dmarc", "lookup failed: SERVFAIL"),
    ],
)
async def test_posture_exactly_the_broken_record_is_zero(
    server: DnsServer, domain: str, record: str, reason: str
) -> None:
    sink = Sink()
    assert not await check_posture(resolver_for(server), domain, ALL, sink, LOG)
    expected = dict.fromkeys(RECORDS, 1.0)
    expected[record] = 0.0
    assert records(sink, domain) == expected
    assert sink.details[record] == reason
    assert sink.failure is not None and sink.failure.reason == "dns"
    assert sink.failure.message == f"{record}: {reason}"


async def test_posture_only_enabled_records(server: DnsServer) -> None:
    sink = Sink()
    posture = DnsPosture(mx=False, spf=True, dmarc=False, dkim_selectors=("mail", "missing"))
    assert not await check_posture(resolver_for(server), "good.test", posture, sink, LOG)
    got = {s.labels[1][1]: s.value for s in sink.samples() if s.family == "mail_dns_record_ok"}
    assert got == {"spf": 1.0, "dkim:mail": 1.0, "dkim:missing": 0.0}
    assert sink.details["dkim:missing"] == "no DKIM key record"


async def test_posture_mx_problems(server: DnsServer) -> None:
    posture = DnsPosture(mx=True, spf=False, dmarc=False)
    cases = {
        "nullmx.test": "null MX: the domain accepts no mail",
        "nomx.test": "no MX records",
        "halfmx.test": "MX host gone.halfmx.test has no address",
        "missing.test": "domain does not exist (NXDOMAIN)",
        "servfail.test": "lookup failed: SERVFAIL",
    }
    for domain, reason in cases.items():
        sink = Sink()
        assert not await check_posture(resolver_for(server), domain, posture, sink, LOG)
        assert gauge(sink, "mail_dns_record_ok", domain=domain, record="mx") == 0.0
        assert sink.details["mx"] == reason, domain


async def test_posture_silent_server_bounded(server: DnsServer) -> None:
    server.default_mode = "drop"
    for name in (
        "good.test",
        "_dmarc.good.test",
        "_mta-sts.good.test",
        "_smtp._tls.good.test",
        "mail._domainkey.good.test",
    ):
        server.set_mode(name, "drop")
    sink = Sink()
    start = time.monotonic()
    assert not await check_posture(resolver_for(server), "good.test", ALL, sink, LOG)
    assert time.monotonic() - start < TIMEOUT + 1.0
    assert records(sink, "good.test") == dict.fromkeys(RECORDS, 0.0)
    assert sink.details["spf"] == "lookup failed: timeout after 1s"
    assert sink.details["mx"] == "lookup failed: timeout after 1s"


# --- MTA-STS policy over HTTPS (local server, trustme certificate) ------------------------------------------

GOOD_POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx.good.test\r\nmax_age: 604800\r\n"


@asynccontextmanager
async def policy_server(
    ca: trustme.CA, hostname: str, body: str, status: int = 200, content_type: str = "text/plain"
) -> AsyncIterator[int]:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, text=body, content_type=content_type)

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(hostname).configure_cert(server_ctx)
    async with mta_sts_policy_server(server_ctx, handler) as port:
        yield port


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


FETCH = DnsPosture(mx=True, spf=False, dmarc=False, mta_sts=True, mta_sts_fetch_policy=True)


@pytest.mark.parametrize(
    ("hostname", "body", "status", "content_type", "ok", "reason"),
    [
        ("mta-sts.good.test", GOOD_POLICY, 200, "text/plain", True, "ok"),
        (
            "mta-sts.good.test",
            GOOD_POLICY.replace("mx.good.test", "*.other.test"),
            200,
            "text/plain",
            False,
            "policy does not cover MX mx.good.test",
        ),
        (
            "mta-sts.good.test",
            "version: STSv1\nmode: enforce\nmax_age: 1\n",
            200,
            "text/plain",
            False,
            "policy: missing mx",
        ),
        ("mta-sts.good.test", GOOD_POLICY, 404, "text/plain", False, "policy fetch: HTTP 404"),
        ("mta-sts.good.test", "", 301, "text/plain", False, "policy fetch: HTTP 301 (redirects are not followed)"),
        ("mta-sts.good.test", GOOD_POLICY, 200, "text/html", False, "policy fetch: content type is not text/plain"),
        ("wrong.test", GOOD_POLICY, 200, "text/plain", False, "policy fetch: certificate does not verify"),
    ],
)
async def test_mta_sts_policy_fetch(
    server: DnsServer,
    ca: trustme.CA,
    hostname: str,
    body: str,
    status: int,
    content_type: str,
    ok: bool,
    reason: str,
) -> None:
    async with policy_server(ca, hostname, body, status, content_type) as port:
        sink = Sink()
        fetch = PolicyFetch(timeout=5.0, ssl_context=client_ctx(ca), port=port)
        assert await check_posture(resolver_for(server), "good.test", FETCH, sink, LOG, policy_fetch=fetch) is ok
    assert gauge(sink, "mail_dns_record_ok", domain="good.test", record="mta_sts") == float(ok)
    assert sink.details["mta_sts"] == reason
    # mta-sts.good.test was resolved through the configured resolver, not the system's.
    assert ("mta-sts.good.test", "A", "udp") in server.queries


async def test_mta_sts_policy_fixed_address_and_untrusted_ca(server: DnsServer, ca: trustme.CA) -> None:
    server.remove("mta-sts.good.test")
    async with policy_server(ca, "mta-sts.good.test", GOOD_POLICY) as port:
        sink = Sink()
        fetch = PolicyFetch(timeout=5.0, ssl_context=client_ctx(ca), port=port, address="127.0.0.1")
        assert await check_posture(resolver_for(server), "good.test", FETCH, sink, LOG, policy_fetch=fetch)
        other = Sink()
        untrusted = PolicyFetch(timeout=5.0, ssl_context=client_ctx(trustme.CA()), port=port, address="127.0.0.1")
        assert not await check_posture(resolver_for(server), "good.test", FETCH, other, LOG, policy_fetch=untrusted)
        assert other.details["mta_sts"] == "policy fetch: certificate does not verify"
        unresolvable = Sink()
        no_host = PolicyFetch(timeout=5.0, ssl_context=client_ctx(ca), port=port)
        assert not await check_posture(
            resolver_for(server), "good.test", FETCH, unresolvable, LOG, policy_fetch=no_host
        )
        assert unresolvable.details["mta_sts"] == "policy fetch: cannot resolve mta-sts.good.test"


# --- DNSBL ------------------------------------------------------------------------------------------------


def dnsbl_errors(sink: Sink, zone: str) -> dict[str, float | None]:
    return {
        reason: next(
            (
                s.value
                for s in sink.samples()
                if s.family == "mail_dnsbl_errors_total"
                and dict(s.labels) == {"domain": "example.test", "zone": zone, "reason": reason}
            ),
            None,
        )
        for reason in DNSBL_ERROR_REASONS
    }


async def test_dnsbl_listing_and_error_codes(server: DnsServer) -> None:
    sink = Sink()
    addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    ok = await check_dnsbl(resolver_for(server), "example.test", addresses, ["dnsbl.test"], sink, LOG)
    assert not ok
    listed = {
        a: gauge(sink, "mail_dnsbl_listed", domain="example.test", address=a, zone="dnsbl.test") for a in addresses
    }
    assert listed == {"127.0.0.2": 1.0, "127.0.0.3": 0.0, "127.0.0.4": 0.0}
    assert dnsbl_errors(sink, "dnsbl.test") == {"error_code": 1.0, "timeout": 0.0, "servfail": 0.0, "other": 0.0}
    assert sink.failure is not None and sink.failure.message == "127.0.0.2 is listed on dnsbl.test"
    assert sink.details["dnsbl:dnsbl.test:127.0.0.2"] == "listed (127.0.0.2)"
    assert sink.details["dnsbl:dnsbl.test:127.0.0.3"] == "blocklist error code (127.255.255.254)"


async def test_dnsbl_clean_and_every_series_present(server: DnsServer) -> None:
    sink = Sink()
    zones = ["dnsbl.test", "other.test"]
    assert await check_dnsbl(resolver_for(server), "example.test", ["127.0.0.4", "::1"], zones, sink, LOG)
    for zone in zones:
        for addr in ("127.0.0.4", "::1"):
            assert gauge(sink, "mail_dnsbl_listed", domain="example.test", address=addr, zone=zone) == 0.0
        assert dnsbl_errors(sink, zone) == dict.fromkeys(DNSBL_ERROR_REASONS, 0.0)
    assert sink.failure is None


async def test_dnsbl_lookup_failures_are_not_listings(server: DnsServer) -> None:
    sink = Sink()
    addresses = ["127.0.0.5", "127.0.0.6", "127.0.0.7"]
    start = time.monotonic()
    ok = await check_dnsbl(resolver_for(server), "example.test", addresses, ["dnsbl.test"], sink, LOG)
    assert time.monotonic() - start < TIMEOUT + 1.0
    assert not ok
    for addr in addresses:
        assert gauge(sink, "mail_dnsbl_listed", domain="example.test", address=addr, zone="dnsbl.test") == 0.0
    assert dnsbl_errors(sink, "dnsbl.test") == {"error_code": 1.0, "timeout": 1.0, "servfail": 1.0, "other": 0.0}
    # Counters accumulate in the check's state across runs.
    again = Sink(sink.state)
    await check_dnsbl(resolver_for(server), "example.test", ["127.0.0.5"], ["dnsbl.test"], again, LOG)
    assert dnsbl_errors(again, "dnsbl.test")["servfail"] == 2.0


async def test_dnsbl_rejects_bad_address(server: DnsServer) -> None:
    with pytest.raises(ValueError):
        await check_dnsbl(resolver_for(server), "example.test", ["mx1.example.test"], ["dnsbl.test"], Sink(), LOG)
