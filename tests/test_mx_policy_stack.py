"""MX health by the domain's transport policy, against the real Postfix and Unbound of the stack.

The zones (scripts/teststack.sh): ``dnssec.test`` and ``bogus.test`` are signed with
ldns-signzone and validated by Unbound from their trust anchors; the TLSA records sit at
``_<port>._tcp.<mx>`` for the port of Postfix's smtpd with the self-signed certificate:

* ``dnssec.test``: MX mx.dnssec.test, TLSA 3 1 1 of the self-signed certificate's key;
* ``mismatch.dnssec.test``: MX mxbad.dnssec.test, TLSA 3 1 1 of another key;
* ``nodane.dnssec.test``: MX mxplain.dnssec.test, no TLSA (a validated denial);
* ``bogus.test``: MX mx.bogus.test, whose TLSA RRSIG is corrupted (SERVFAIL; answered with CD);
* ``sts.test`` (unsigned): MX mx1.example.test, an ``_mta-sts`` TXT record, and
  ``mta-sts.sts.test`` at 127.0.0.1, where each test serves its own policy over HTTPS with
  the stack's ``mtasts`` certificate (issued by the test CA);
* ``good.test`` (unsigned): MX mx1.example.test and an ``_mta-sts`` TXT, no policy host.

Every MX address is 127.0.0.1; the checks run in-process (``run_mx``) with a fresh sink.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from helpers import free_port, mta_sts_policy_server, sink_value
from stack import Stack

from exporter.checks.domain import run_mx, sts_cache_for
from exporter.config import (
    DomainConfig,
    GlobalConfig,
    MtaStsSettings,
    ResolverConfig,
    SmtpSettings,
    TLSSettings,
)
from exporter.core.model import Sink

LOG = logging.getLogger("test.mx.policy")


gauge = sink_value


def policy_of(sink: Sink, domain: str, mx: str) -> str | None:
    found = [
        dict(s.labels)["policy"]
        for s in sink.samples()
        if s.family == "mail_mx_policy" and dict(s.labels)["domain"] == domain and dict(s.labels)["mx"] == mx
    ]
    assert len(found) <= 1, found
    return found[0] if found else None


def failure_count(sink: Sink, domain: str, reason: str) -> float:
    return sum(
        s.value
        for s in sink.samples()
        if s.family == "mail_probe_failures_total"
        and dict(s.labels)["check"] == domain
        and dict(s.labels)["reason"] == reason
    )


def config(
    stack: Stack,
    domain: str,
    *,
    port: str = "smtp_selfsigned",
    verify: bool | None = None,
    sts_port: int = 443,
) -> tuple[DomainConfig, GlobalConfig]:
    host, dns_port = stack.dns_server
    d = DomainConfig(
        domain=domain,
        smtp=SmtpSettings(port=stack.port(port), tls_config=TLSSettings(verify=verify, ca_file=stack.ca_file)),
        mta_sts=MtaStsSettings(port=sts_port, ca_file=stack.ca_file, timeout=5.0),
    )
    g = GlobalConfig(timeout=10.0, resolver=ResolverConfig(nameservers=(host,), port=dns_port, timeout=3.0))
    return d, g


async def check(d: DomainConfig, g: GlobalConfig) -> tuple[bool, Sink]:
    sink = Sink()
    ok = await run_mx(d, g, sink, LOG, 10.0, sts_cache_for(d))
    return ok, sink


@asynccontextmanager
async def policy_host(stack: Stack, body: str) -> AsyncIterator[int]:
    """https://mta-sts.sts.test:PORT/.well-known/mta-sts.txt on 127.0.0.1 with the stack's certificate."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="text/plain")

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert = stack.certs[stack.mta_sts["cert"]]
    ctx.load_cert_chain(cert["chain"], cert["key"])
    async with mta_sts_policy_server(ctx, handler) as port:
        yield port


def policy(mode: str) -> str:
    return f"version: STSv1\r\nmode: {mode}\r\nmx: mx1.example.test\r\nmax_age: 86400\r\n"


# --- no policy: opportunistic ----------------------------------------------------------------------


async def test_self_signed_without_policy_is_healthy(stack: Stack) -> None:
    """Default config, a self-signed certificate, no MTA-STS and no DANE: healthy, and the
    certificate metrics still say the certificate is invalid."""
    d, g = config(stack, "nodane.dnssec.test")
    ok, sink = await check(d, g)
    target = f"mxplain.dnssec.test[127.0.0.1]:{stack.port('smtp_selfsigned')}"
    assert ok, sink.failures
    assert gauge(sink, "mail_mx_healthy", domain=d.domain) == 1
    assert gauge(sink, "mail_smtp_up", check=d.domain, target=target) == 1
    assert gauge(sink, "mail_tls_cert_valid", protocol="smtp", check=d.domain, target=target) == 0
    assert gauge(sink, "mail_tls_cert_chain_valid", protocol="smtp", check=d.domain, target=target) == 0
    assert policy_of(sink, d.domain, "mxplain.dnssec.test") == "opportunistic"
    assert gauge(sink, "mail_mx_policy_ok", domain=d.domain, mx="mxplain.dnssec.test") == 1
    assert gauge(sink, "mail_mx_tlsa_match", domain=d.domain, mx="mxplain.dnssec.test") is None
    # the signed zone: MX validated, and the absence of TLSA records validated too
    assert gauge(sink, "mail_dns_dnssec_validated", domain=d.domain, record="mx") == 1
    assert gauge(sink, "mail_dns_dnssec_validated", domain=d.domain, record="tlsa:mxplain.dnssec.test") == 1
    assert gauge(sink, "mail_dns_dnssec_bogus", domain=d.domain, record="tlsa:mxplain.dnssec.test") == 0
    assert gauge(sink, "mail_mta_sts_policy_mode", domain=d.domain, mode="none") == 1


async def test_explicit_verify_true_is_strict(stack: Stack) -> None:
    """``tls_config: {verify: true}``: the strict view, the self-signed MX is unhealthy (reason tls)."""
    d, g = config(stack, "nodane.dnssec.test", verify=True)
    ok, sink = await check(d, g)
    assert not ok
    assert gauge(sink, "mail_mx_healthy", domain=d.domain) == 0
    assert policy_of(sink, d.domain, "mxplain.dnssec.test") == "strict"
    assert failure_count(sink, d.domain, "tls") == 1
    assert sink.failures[0].reason == "tls"


async def test_unsigned_zone_reads_not_validated(stack: Stack) -> None:
    """An unsigned zone: nothing validated, nothing bogus; a TXT record without a reachable
    policy host is a finding (fetch_ok 0) and leaves the MX judged opportunistic."""
    d, g = config(stack, "good.test", sts_port=free_port())
    ok, sink = await check(d, g)
    assert ok, sink.failures
    for record in ("mx", "mta_sts", "tlsa:mx1.example.test"):
        assert gauge(sink, "mail_dns_dnssec_validated", domain=d.domain, record=record) == 0, record
        assert gauge(sink, "mail_dns_dnssec_bogus", domain=d.domain, record=record) == 0, record
    assert gauge(sink, "mail_mta_sts_policy_fetch_ok", domain=d.domain) == 0
    assert gauge(sink, "mail_mta_sts_policy_mode", domain=d.domain, mode="none") == 1
    assert policy_of(sink, d.domain, "mx1.example.test") == "opportunistic"
    assert "policy fetch: cannot resolve mta-sts.good.test" in sink.details["mta-sts"]


async def test_mta_sts_policy_host_down_is_a_finding(stack: Stack) -> None:
    """TXT record present, policy host resolves but nothing listens: fetch_ok 0, no policy in force."""
    d, g = config(stack, "sts.test", sts_port=free_port())
    ok, sink = await check(d, g)
    assert ok, sink.failures
    assert gauge(sink, "mail_mta_sts_policy_fetch_ok", domain=d.domain) == 0
    assert gauge(sink, "mail_mta_sts_policy_age_seconds", domain=d.domain) is None
    assert "policy fetch: cannot connect" in sink.details["mta-sts"]


# --- MTA-STS --------------------------------------------------------------------------------------


async def test_mta_sts_enforce_self_signed_is_unhealthy(stack: Stack) -> None:
    async with policy_host(stack, policy("enforce")) as port:
        d, g = config(stack, "sts.test", sts_port=port)
        ok, sink = await check(d, g)
    assert not ok
    assert gauge(sink, "mail_mx_healthy", domain=d.domain) == 0
    assert policy_of(sink, d.domain, "mx1.example.test") == "mta_sts_enforce"
    assert gauge(sink, "mail_mx_policy_ok", domain=d.domain, mx="mx1.example.test") == 0
    assert failure_count(sink, d.domain, "tls_policy") == 1
    assert sink.failures[0].reason == "tls_policy"
    assert "certificate chain does not verify" in sink.failures[0].message
    assert gauge(sink, "mail_mta_sts_policy_mode", domain=d.domain, mode="enforce") == 1
    assert gauge(sink, "mail_mta_sts_policy_fetch_ok", domain=d.domain) == 1
    assert gauge(sink, "mail_mta_sts_policy_max_age_seconds", domain=d.domain) == 86400
    age = gauge(sink, "mail_mta_sts_policy_age_seconds", domain=d.domain)
    assert age is not None and 0 <= age < 30


async def test_mta_sts_enforce_valid_certificate_is_healthy(stack: Stack) -> None:
    """Postfix's CA-issued certificate for mx1.example.test (trusted through ca_file)."""
    async with policy_host(stack, policy("enforce")) as port:
        d, g = config(stack, "sts.test", port="smtp", sts_port=port)
        ok, sink = await check(d, g)
    assert ok, sink.failures
    assert gauge(sink, "mail_mx_policy_ok", domain=d.domain, mx="mx1.example.test") == 1
    assert failure_count(sink, d.domain, "tls_policy") == 0


async def test_mta_sts_enforce_wrong_host_certificate_is_unhealthy(stack: Stack) -> None:
    async with policy_host(stack, policy("enforce")) as port:
        d, g = config(stack, "sts.test", port="smtp_wronghost", sts_port=port)
        ok, sink = await check(d, g)
    assert not ok and sink.failures[0].reason == "tls_policy"
    assert "does not match mx1.example.test" in sink.failures[0].message


async def test_mta_sts_testing_is_healthy_with_the_finding(stack: Stack) -> None:
    async with policy_host(stack, policy("testing")) as port:
        d, g = config(stack, "sts.test", sts_port=port)
        ok, sink = await check(d, g)
    assert ok, sink.failures
    assert gauge(sink, "mail_mx_healthy", domain=d.domain) == 1
    assert policy_of(sink, d.domain, "mx1.example.test") == "mta_sts_testing"
    assert gauge(sink, "mail_mx_policy_ok", domain=d.domain, mx="mx1.example.test") == 0
    assert gauge(sink, "mail_mta_sts_policy_mode", domain=d.domain, mode="testing") == 1
    assert "not enforced" in sink.details["policy mx1.example.test"]


# --- DANE and DNSSEC -------------------------------------------------------------------------------


async def test_dane_matching_tlsa_is_healthy(stack: Stack) -> None:
    """A DNSSEC-validated TLSA 3 1 1 of Postfix's self-signed key: healthy under DANE."""
    d, g = config(stack, "dnssec.test")
    ok, sink = await check(d, g)
    assert ok, sink.failures
    assert policy_of(sink, d.domain, "mx.dnssec.test") == "dane"
    assert gauge(sink, "mail_mx_tlsa_match", domain=d.domain, mx="mx.dnssec.test") == 1
    assert gauge(sink, "mail_mx_policy_ok", domain=d.domain, mx="mx.dnssec.test") == 1
    assert gauge(sink, "mail_dns_dnssec_validated", domain=d.domain, record="tlsa:mx.dnssec.test") == 1
    assert gauge(sink, "mail_dns_dnssec_validated", domain=d.domain, record="mx") == 1


async def test_dane_tlsa_for_another_key_is_unhealthy(stack: Stack) -> None:
    d, g = config(stack, "mismatch.dnssec.test")
    ok, sink = await check(d, g)
    assert not ok
    assert gauge(sink, "mail_mx_healthy", domain=d.domain) == 0
    assert policy_of(sink, d.domain, "mxbad.dnssec.test") == "dane"
    assert gauge(sink, "mail_mx_tlsa_match", domain=d.domain, mx="mxbad.dnssec.test") == 0
    assert failure_count(sink, d.domain, "dane_mismatch") == 1
    assert sink.failures[0].reason == "dane_mismatch"


async def test_dane_beats_an_explicit_verify_false(stack: Stack) -> None:
    """``verify: false`` judges opportunistically, but still reports the published policy."""
    d, g = config(stack, "mismatch.dnssec.test", verify=False)
    ok, sink = await check(d, g)
    assert ok, sink.failures
    assert policy_of(sink, d.domain, "mxbad.dnssec.test") == "opportunistic"
    assert gauge(sink, "mail_mx_policy_ok", domain=d.domain, mx="mxbad.dnssec.test") == 0


async def test_broken_signature_is_the_dnssec_reason(stack: Stack) -> None:
    """bogus.test: the TLSA RRSIG does not validate: SERVFAIL, answered with CD: reason dnssec."""
    d, g = config(stack, "bogus.test")
    ok, sink = await check(d, g)
    assert not ok
    assert gauge(sink, "mail_mx_healthy", domain=d.domain) == 0
    assert gauge(sink, "mail_dns_dnssec_bogus", domain=d.domain, record="tlsa:mx.bogus.test") == 1
    assert gauge(sink, "mail_dns_dnssec_validated", domain=d.domain, record="mx") == 1
    assert policy_of(sink, d.domain, "mx.bogus.test") == "dane"
    assert failure_count(sink, d.domain, "dnssec") == 1
    assert sink.failures[0].reason == "dnssec"


@pytest.mark.parametrize("domain", ["dnssec.test", "mismatch.dnssec.test"])
async def test_dane_verdict_is_stable_across_runs(stack: Stack, domain: str) -> None:
    """The same verdict on a second run with the same cache (no state leaks between runs)."""
    d, g = config(stack, domain)
    cache = sts_cache_for(d)
    verdicts = []
    for _ in range(2):
        sink = Sink()
        verdicts.append(await run_mx(d, g, sink, LOG, 10.0, cache))
    assert verdicts[0] == verdicts[1] == (domain == "dnssec.test")
