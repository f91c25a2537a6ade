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

import asyncio
import hashlib
import logging
import socket
import ssl
import threading
from pathlib import Path

import dns.asyncquery
import dns.asyncresolver
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
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


# -- DNSSEC and MTA-STS names of the stack (dnspython straight to Unbound) ----------------
#
# dnssec.test and bogus.test are signed and validated by Unbound against their own trust
# anchors; the static zones (example.test, sts.test, ...) are unsigned local data.


async def ask(stack: Stack, name: str, rdtype: str, *, cd: bool = False, tcp: bool = False) -> dns.message.Message:
    """One query with EDNS DO set (and CD if asked), over UDP or TCP."""
    query = dns.message.make_query(name, rdtype, want_dnssec=True)
    if cd:
        query.flags |= dns.flags.CD
    host, port = stack.dns_server
    if tcp:
        return await dns.asyncquery.tcp(query, host, port=port, timeout=3.0)
    return await dns.asyncquery.udp(query, host, port=port, timeout=3.0)


def answer(msg: dns.message.Message, rdtype: str) -> list[str]:
    want = dns.rdatatype.from_text(rdtype)
    return sorted(rd.to_text() for rrset in msg.answer if rrset.rdtype == want for rd in rrset)


def ad(msg: dns.message.Message) -> bool:
    return bool(msg.flags & dns.flags.AD)


def spki_sha256(stack: Stack, cert: str) -> str:
    pem = Path(stack.certs[cert]["cert"]).read_bytes()
    spki = (
        x509.load_pem_x509_certificate(pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return hashlib.sha256(spki).hexdigest()


def test_stack_json_describes_the_dnssec_and_mta_sts_names(stack: Stack) -> None:
    dnssec = stack.dnssec
    assert list(dnssec["zones"]) == ["dnssec.test", "bogus.test"]
    assert dnssec["tlsa_port"] == stack.port("smtp_selfsigned")
    assert Path(dnssec["signed_dir"]).is_dir()
    assert len(dnssec["trust_anchors"]) == 2
    for zone, anchor in zip(dnssec["zones"], dnssec["trust_anchors"], strict=True):
        fields = Path(anchor).read_text().split()
        assert fields[0] == f"{zone}." and fields[2:5] == ["DNSKEY", "257", "3"], fields  # a KSK
    assert dict(stack.mta_sts) == {"domain": "sts.test", "policy_host": "mta-sts.sts.test", "cert": "mtasts"}
    mtasts = stack.certs["mtasts"]
    assert mtasts["subject_cn"] == "mta-sts.sts.test" and list(mtasts["sans"]) == ["mta-sts.sts.test"]
    # the two TLSA digests of dnssec.test really name different keys
    assert spki_sha256(stack, "selfsigned") != spki_sha256(stack, "valid")


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_signed_zone_answers_carry_ad(stack: Stack, tcp: bool) -> None:
    p = stack.dnssec["tlsa_port"]
    expected = {
        ("dnssec.test", "MX"): ["10 mx.dnssec.test."],
        ("mx.dnssec.test", "A"): ["127.0.0.1"],
        (f"_{p}._tcp.mx.dnssec.test", "TLSA"): [f"3 1 1 {spki_sha256(stack, 'selfsigned')}"],
        ("mismatch.dnssec.test", "MX"): ["10 mxbad.dnssec.test."],
        ("mxbad.dnssec.test", "A"): ["127.0.0.1"],
        (f"_{p}._tcp.mxbad.dnssec.test", "TLSA"): [f"3 1 1 {spki_sha256(stack, 'valid')}"],
        ("nodane.dnssec.test", "MX"): ["10 mxplain.dnssec.test."],
        ("mxplain.dnssec.test", "A"): ["127.0.0.1"],
        ("bogus.test", "MX"): ["10 mx.bogus.test."],
        ("mx.bogus.test", "A"): ["127.0.0.1"],
    }
    for (name, rdtype), records in expected.items():
        msg = await ask(stack, name, rdtype, tcp=tcp)
        assert msg.rcode() == dns.rcode.NOERROR, (name, rdtype, dns.rcode.to_text(msg.rcode()))
        assert ad(msg), (name, rdtype, "no AD bit")
        assert answer(msg, rdtype) == records, (name, rdtype)
        assert answer(msg, "RRSIG"), (name, rdtype, "DO set but no RRSIG in the answer")


async def test_missing_tlsa_is_a_validated_nxdomain(stack: Stack) -> None:
    msg = await ask(stack, f"_{stack.dnssec['tlsa_port']}._tcp.mxplain.dnssec.test", "TLSA")
    assert msg.rcode() == dns.rcode.NXDOMAIN
    assert ad(msg), "the denial of existence (NSEC) must validate"
    assert not msg.answer


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_bogus_tlsa_is_servfail_and_readable_with_cd(stack: Stack, tcp: bool) -> None:
    name = f"_{stack.dnssec['tlsa_port']}._tcp.mx.bogus.test"
    for _ in range(2):  # the second round is served from the cache: still bogus
        unchecked = await ask(stack, name, "TLSA", cd=True, tcp=tcp)
        assert unchecked.rcode() == dns.rcode.NOERROR
        assert not ad(unchecked)
        assert answer(unchecked, "TLSA") == [f"3 1 1 {spki_sha256(stack, 'selfsigned')}"]
        checked = await ask(stack, name, "TLSA", tcp=tcp)
        assert checked.rcode() == dns.rcode.SERVFAIL
        assert not checked.answer


async def test_static_zones_are_answered_without_ad(stack: Stack) -> None:
    cases = {
        ("example.test", "MX"): ["10 mx1.example.test.", "20 mx2.example.test."],
        ("sts.test", "MX"): ["10 mx1.example.test."],
        ("_mta-sts.sts.test", "TXT"): ['"v=STSv1; id=20261207T000000;"'],
        ("mta-sts.sts.test", "A"): ["127.0.0.1"],
    }
    for (name, rdtype), records in cases.items():
        msg = await ask(stack, name, rdtype)
        assert msg.rcode() == dns.rcode.NOERROR, (name, rdtype)
        assert not ad(msg), (name, rdtype, "local data is unsigned: no AD")
        assert answer(msg, rdtype) == records, (name, rdtype)
    nx = await ask(stack, "unknown.test", "A")
    assert nx.rcode() == dns.rcode.NXDOMAIN and not ad(nx)


async def test_mta_sts_host_resolves_and_its_certificate_verifies(stack: Stack) -> None:
    """What an MTA-STS test does: a policy server on 127.0.0.1 with the "mtasts" cert."""
    mta_sts = stack.mta_sts
    res = dns.asyncresolver.Resolver(configure=False)
    res.nameservers = [stack.host]
    res.port = stack.port("dns")
    assert [r.address for r in await res.resolve(mta_sts["policy_host"], "A")] == ["127.0.0.1"]
    txt = [b"".join(r.strings).decode() for r in await res.resolve(f"_mta-sts.{mta_sts['domain']}", "TXT")]
    assert txt == ["v=STSv1; id=20261207T000000;"]

    cert = stack.certs[mta_sts["cert"]]
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert["chain"], cert["key"])
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client_ctx = ssl.create_default_context(cafile=stack.ca_file)

        def fetch() -> bytes:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                client_ctx.wrap_socket(raw, server_hostname=mta_sts["policy_host"]) as tls,
            ):
                return tls.recv(2)

        assert await asyncio.to_thread(fetch) == b"ok"
    finally:
        listener.close()
        thread.join(timeout=5)
