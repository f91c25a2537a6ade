"""The transport-policy model of MX health (exporter.probers.policy), without the stack.

* :func:`judge` and :func:`host_policy` as a table: each row names the RFC rule it follows.
* :class:`StsCache` against a scripted DNS server and a loopback HTTPS policy server:
  when it fetches (RFC 8461 §5.1: new id, expired max_age; and our ``refresh``), and what
  stays in force when a fetch fails.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import dns.asyncresolver
import pytest
import trustme
from aiohttp import web
from dnsserver import DnsServer
from helpers import mta_sts_policy_server
from test_dane import CHAIN, LEAF, MX, WRONG_NAME, record

from exporter.config import ResolverConfig
from exporter.net.dane import TlsaLookup
from exporter.net.tls import TLSReport
from exporter.probers.dns import PolicyFetch, make_resolver
from exporter.probers.policy import HostPolicy, StsCache, StsPolicy, host_policy, judge

DOMAIN = "example.test"
ENFORCE = StsPolicy("enforce", ("*.example.test",), 86400, "1", 0.0)
TESTING = StsPolicy("testing", ("*.example.test",), 86400, "1", 0.0)
NARROW = StsPolicy("enforce", ("mx9.example.test",), 86400, "1", 0.0)
DANE_OK = TlsaLookup(f"_25._tcp.{MX}", "ok", True, "ok", (record(3, 1, 1, LEAF),))
DANE_OTHER = TlsaLookup(f"_25._tcp.{MX}", "ok", True, "ok", (record(3, 1, 1, WRONG_NAME),))
DANE_UNUSABLE = TlsaLookup(f"_25._tcp.{MX}", "ok", True, "ok", (record(1, 1, 1, LEAF),))
INSECURE = TlsaLookup(f"_25._tcp.{MX}", "ok", False, "ok", (record(3, 1, 1, WRONG_NAME),))
BOGUS = TlsaLookup(f"_25._tcp.{MX}", "bogus", False, "SERVFAIL: DNSSEC validation failed")
SERVFAIL = TlsaLookup(f"_25._tcp.{MX}", "servfail", False, "SERVFAIL")
NONE = TlsaLookup(f"_25._tcp.{MX}", "nxdomain", True, "NXDOMAIN")


def report(chain_valid: bool = True, hostname: str = MX, leaf_host_ok: bool = True) -> TLSReport:
    from exporter.net.tls import inspect_leaf

    leaf = inspect_leaf(LEAF.der, hostname)
    assert leaf.hostname_ok is leaf_host_ok
    return TLSReport(
        version="TLSv1.3",
        chain_valid=chain_valid,
        chain_error="" if chain_valid else "self-signed certificate",
        leaf=leaf,
        hostname=hostname,
    )


# --- host_policy: which policy a sender applies -----------------------------------------------------


@pytest.mark.parametrize(
    ("tlsa", "sts", "mx_validated", "published"),
    [
        (None, None, False, "opportunistic"),  # no policy: opportunistic TLS (RFC 3207 §4)
        (NONE, None, True, "opportunistic"),  # validated denial of TLSA: no DANE
        (NONE, ENFORCE, True, "mta_sts_enforce"),
        (NONE, TESTING, False, "mta_sts_testing"),
        (DANE_OK, ENFORCE, True, "dane"),  # RFC 8461 §2: DANE takes precedence over MTA-STS
        (DANE_UNUSABLE, None, True, "dane"),  # RFC 7672 §2.2: a secure RRset, even of unusable records
        (INSECURE, ENFORCE, False, "mta_sts_enforce"),  # RFC 7672 §2.2: insecure TLSA records are ignored
        (BOGUS, None, True, "dane_unverifiable"),  # RFC 7672 §2.2: a failed TLSA lookup in a signed zone
        (SERVFAIL, ENFORCE, True, "dane_unverifiable"),
        (BOGUS, None, False, "opportunistic"),  # unsigned domain: senders never ask for TLSA
        (NONE, StsPolicy("none", (), 86400, "1", 0.0), False, "opportunistic"),  # RFC 8461 §5: mode none
    ],
)
def test_host_policy(tlsa: TlsaLookup | None, sts: StsPolicy | None, mx_validated: bool, published: str) -> None:
    policy = host_policy(MX, tlsa, sts, mx_validated=mx_validated, domain=DOMAIN)
    assert policy.published == published
    assert policy.names == ((DOMAIN,) if mx_validated else ())
    assert policy.enforced is (published in ("dane", "dane_unverifiable", "mta_sts_enforce"))


# --- judge: does this session meet the policy? ------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "session", "ok", "reason", "tlsa_match", "text"),
    [
        # opportunistic: a self-signed certificate, or no TLS at all, does not stop delivery
        (HostPolicy("opportunistic", MX), report(chain_valid=False), True, "", None, ""),
        (HostPolicy("opportunistic", MX), None, True, "", None, ""),
        # MTA-STS (RFC 8461 §4.2): STARTTLS, a chain that verifies, the MX name, the mx patterns
        (HostPolicy("mta_sts_enforce", MX, sts=ENFORCE), report(), True, "", None, ""),
        (HostPolicy("mta_sts_enforce", MX, sts=ENFORCE), None, False, "tls_policy", None, "not offered"),
        (
            HostPolicy("mta_sts_enforce", MX, sts=ENFORCE),
            report(chain_valid=False),
            False,
            "tls_policy",
            None,
            "chain does not verify",
        ),
        (
            HostPolicy("mta_sts_enforce", MX, sts=ENFORCE),
            report(hostname="mx2.example.test", leaf_host_ok=False),
            False,
            "tls_policy",
            None,
            "does not match mx1",
        ),
        (HostPolicy("mta_sts_enforce", MX, sts=NARROW), report(), False, "tls_policy", None, "mx patterns"),
        (
            HostPolicy("mta_sts_testing", MX, sts=TESTING),
            report(chain_valid=False),
            False,
            "tls_policy",
            None,
            "MTA-STS testing",
        ),
        # DANE (RFC 7672): STARTTLS required; the chain must match; no usable record: TLS only
        (HostPolicy("dane", MX, tlsa=DANE_OK), report(chain_valid=False), True, "", True, ""),
        (HostPolicy("dane", MX, tlsa=DANE_OTHER), report(), False, "dane_mismatch", False, "DANE-EE"),
        (HostPolicy("dane", MX, tlsa=DANE_OK), None, False, "tls_policy", None, "not offered"),
        (HostPolicy("dane", MX, tlsa=DANE_UNUSABLE), report(chain_valid=False), True, "", None, "no usable"),
        # a TLSA lookup that failed: the sender defers (RFC 7672 §2.2), bogus is its own reason
        (HostPolicy("dane_unverifiable", MX, tlsa=BOGUS), report(), False, "dnssec", None, "senders defer"),
        (HostPolicy("dane_unverifiable", MX, tlsa=SERVFAIL), report(), False, "dns", None, "SERVFAIL"),
    ],
)
def test_judge(
    policy: HostPolicy, session: TLSReport | None, ok: bool, reason: str, tlsa_match: bool | None, text: str
) -> None:
    verdict = judge(policy, session, CHAIN)
    assert (verdict.ok, verdict.reason, verdict.tlsa_match) == (ok, reason, tlsa_match)
    assert text in verdict.message


# --- StsCache ---------------------------------------------------------------------------------------

POLICY = "version: STSv1\r\nmode: {mode}\r\nmx: *.example.test\r\nmax_age: {max_age}\r\n"


class PolicyHost:
    """A loopback HTTPS server for mta-sts.example.test whose answer a test changes."""

    def __init__(self) -> None:
        self.body = POLICY.format(mode="enforce", max_age=86400)
        self.status = 200
        self.requests = 0

    async def handler(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(status=self.status, text=self.body, content_type="text/plain")


@asynccontextmanager
async def policy_host(ca: trustme.CA) -> AsyncIterator[tuple[PolicyHost, int]]:
    host = PolicyHost()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(f"mta-sts.{DOMAIN}").configure_cert(ctx)
    async with mta_sts_policy_server(ctx, host.handler) as port:
        yield host, port


@pytest.fixture
async def dns_server() -> AsyncIterator[DnsServer]:
    async with DnsServer() as srv:
        srv.add(f"_mta-sts.{DOMAIN}", "TXT", '"v=STSv1; id=1;"')
        srv.add(f"mta-sts.{DOMAIN}", "A", "127.0.0.1")
        yield srv


def resolver_for(srv: DnsServer) -> dns.asyncresolver.Resolver:
    return make_resolver(ResolverConfig(nameservers=(srv.host,), port=srv.port, timeout=2.0))


def set_txt(srv: DnsServer, text: str | None) -> None:
    srv.remove(f"_mta-sts.{DOMAIN}")
    if text is not None:
        srv.add(f"_mta-sts.{DOMAIN}", "TXT", text)


async def test_sts_cache_fetches_as_rfc8461_5_1(dns_server: DnsServer, tmp_path: object) -> None:
    """Fetched once; reused while id and max_age allow and ``refresh`` has not passed; refetched
    on a new id (RFC 8461 §5.1), on expiry, and after ``refresh``."""
    ca = trustme.CA()
    ca_file = str(tmp_path) + "/ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    res = resolver_for(dns_server)
    async with policy_host(ca) as (host, port):
        cache = StsCache(PolicyFetch(timeout=5.0, port=port, ca_file=ca_file), refresh=3600)
        first = await cache.state(res, DOMAIN, now=1000.0)
        assert (first.txt, first.mode, first.fetch_ok, first.fetched_now) == ("present", "enforce", True, True)
        assert first.policy is not None and first.policy.max_age == 86400 and first.policy.id == "1"
        again = await cache.state(res, DOMAIN, now=1000.0 + 3599)
        assert (again.mode, again.fetched_now, host.requests) == ("enforce", False, 1)
        host.body = POLICY.format(mode="testing", max_age=86400)
        after_refresh = await cache.state(res, DOMAIN, now=1000.0 + 3600)
        assert (after_refresh.mode, after_refresh.fetched_now, host.requests) == ("testing", True, 2)
        host.body = POLICY.format(mode="enforce", max_age=86400)
        set_txt(dns_server, '"v=STSv1; id=2;"')
        new_id = await cache.state(res, DOMAIN, now=1000.0 + 3601)
        assert (new_id.mode, new_id.fetched_now, host.requests) == ("enforce", True, 3)
        assert new_id.policy is not None and new_id.policy.id == "2"
        # a short max_age: refetched when it runs out, though refresh is far away
        short = StsCache(PolicyFetch(timeout=5.0, port=port, ca_file=ca_file), refresh=10**6)
        host.body = POLICY.format(mode="enforce", max_age=60)
        await short.state(res, DOMAIN, now=0.0)
        assert (await short.state(res, DOMAIN, now=59.0)).fetched_now is False
        assert (await short.state(res, DOMAIN, now=60.0)).fetched_now is True


async def test_sts_cache_failed_fetch_keeps_cached_policy_rfc8461_5_1(dns_server: DnsServer, tmp_path: object) -> None:
    """A fetch that fails keeps the unexpired cached policy in force and says so (fetch_ok
    False), retries at the next look, and recovers; with nothing cached there is no policy."""
    ca = trustme.CA()
    ca_file = str(tmp_path) + "/ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    res = resolver_for(dns_server)
    async with policy_host(ca) as (host, port):
        cache = StsCache(PolicyFetch(timeout=5.0, port=port, ca_file=ca_file), refresh=60)
        assert (await cache.state(res, DOMAIN, now=0.0)).fetch_ok is True
        host.status = 404
        failed = await cache.state(res, DOMAIN, now=100.0)
        assert (failed.mode, failed.fetch_ok, failed.fetch_message) == ("enforce", False, "policy fetch: HTTP 404")
        retried = await cache.state(res, DOMAIN, now=101.0)
        assert retried.fetched_now and retried.fetch_ok is False, "a failed fetch is retried at the next look"
        host.status = 200
        assert (await cache.state(res, DOMAIN, now=102.0)).fetch_ok is True
        # past max_age with the host down: the cached policy is gone
        host.status = 500
        expired = await cache.state(res, DOMAIN, now=102.0 + 86400)
        assert (expired.mode, expired.policy, expired.fetch_ok) == ("none", None, False)
        fresh = StsCache(PolicyFetch(timeout=5.0, port=port, ca_file=ca_file), refresh=60)
        none = await fresh.state(res, DOMAIN, now=0.0)
        assert (none.txt, none.mode, none.fetch_ok) == ("present", "none", False)


async def test_sts_cache_txt_gone_or_broken(dns_server: DnsServer, tmp_path: object) -> None:
    """TXT removed or made invalid: no fetch; a cached, unexpired policy stays in force (RFC 8461
    §5.1, senders keep it until max_age); an untrusted certificate is a failed fetch."""
    ca = trustme.CA()
    ca_file = str(tmp_path) + "/ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    res = resolver_for(dns_server)
    async with policy_host(ca) as (host, port):
        cache = StsCache(PolicyFetch(timeout=5.0, port=port, ca_file=ca_file), refresh=60)
        await cache.state(res, DOMAIN, now=0.0)
        set_txt(dns_server, None)
        gone = await cache.state(res, DOMAIN, now=500.0)
        assert (gone.txt, gone.mode, gone.fetched_now) == ("absent", "enforce", False)
        set_txt(dns_server, '"v=STSv1; id=bad id;"')
        broken = await cache.state(res, DOMAIN, now=600.0)
        assert (broken.txt, broken.mode, broken.fetched_now) == ("invalid", "enforce", False)
        set_txt(dns_server, '"v=STSv1; id=1;"')
        other_ca = trustme.CA()
        other_file = str(tmp_path) + "/other.pem"
        other_ca.cert_pem.write_to_path(other_file)
        untrusted = StsCache(PolicyFetch(timeout=5.0, port=port, ca_file=other_file), refresh=60)
        state = await untrusted.state(res, DOMAIN, now=0.0)
        assert (state.fetch_ok, state.fetch_message) == (False, "policy fetch: certificate does not verify")
        assert host.requests == 1
