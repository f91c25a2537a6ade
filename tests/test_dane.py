"""exporter.net.dane: TLSA parsing and matching (RFC 6698, 7671, 7672) and the TLSA lookup.

The certificates are made here with cryptography: an ECDSA root, an RSA intermediate and
leaves for mx1.example.test (ECDSA, issued by the intermediate).  The lookup runs against
the scripted DNS server of tests/dnsserver.py on 127.0.0.1, port 0, extended here to set
the AD bit as a validating resolver would.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import dns.asyncresolver
import dns.flags
import dns.message
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from dnsserver import DnsServer

from exporter.config import ResolverConfig
from exporter.net.dane import DANE_REASONS, LOOKUP_STATUSES, MAX_RECORDS, Tlsa, lookup_tlsa, match, parse_tlsa_rdata
from exporter.probers.dns import make_resolver

MX = "mx1.example.test"
NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)

# --- certificates ------------------------------------------------------------------------------


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def spki(self) -> bytes:
        return self.cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _issue(
    cn: str,
    *,
    issuer: Issued | None = None,
    ca: bool = False,
    rsa_key: bool = False,
    sans: tuple[str, ...] = (),
    not_after: datetime.datetime | None = None,
) -> Issued:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if rsa_key
        else ec.generate_private_key(ec.SECP256R1())
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(not_after or NOW + 30 * DAY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
    signer = issuer.key if issuer else key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


ROOT = _issue("DANE Test Root", ca=True)
INTER = _issue("DANE Test Intermediate", issuer=ROOT, ca=True, rsa_key=True)
LEAF = _issue(MX, issuer=INTER, sans=(MX,))
WRONG_NAME = _issue("mx9.example.test", issuer=INTER, sans=("mx9.example.test",))
EXPIRED = _issue(MX, issuer=INTER, sans=(MX,), not_after=NOW - DAY / 2)
OTHER_ROOT = _issue("Another Root", ca=True)
CHAIN = [LEAF.der, INTER.der, ROOT.der]


def assoc(data: bytes, mtype: int) -> bytes:
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


def record(usage: int, selector: int, mtype: int, cert: Issued) -> Tlsa:
    return Tlsa(usage, selector, mtype, assoc(cert.der if selector == 0 else cert.spki, mtype))


# --- parsing -------------------------------------------------------------------------------------


def test_parse_text_and_rdata_rfc6698_2_1() -> None:
    """RFC 6698 §2.1/§2.2: usage, selector, matching type, hex data, from text or a dnspython rdata."""
    digest = hashlib.sha256(b"x").digest()
    text = f"3 1 1 {digest.hex()[:20]} {digest.hex()[20:]}"
    assert parse_tlsa_rdata(text) == Tlsa(3, 1, 1, digest)
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TLSA, text)
    assert parse_tlsa_rdata(rdata) == Tlsa(3, 1, 1, digest)
    assert Tlsa(3, 1, 1, digest).to_text() == f"3 1 1 {digest.hex()}"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("3 1 1 zz", id="rfc6698-2.2-bad-hex"),
        pytest.param("3 1", id="rfc6698-2.2-missing-fields"),
        pytest.param("256 1 1 00", id="rfc6698-2.1-usage-out-of-range"),
        pytest.param("3 1 1 " + "00" * 31, id="rfc6698-2.1.3-sha256-wrong-length"),
        pytest.param("3 1 2 " + "00" * 32, id="rfc6698-2.1.3-sha512-wrong-length"),
    ],
)
def test_parse_malformed_raises(text: str) -> None:
    """RFC 6698 §2.1-2.2: malformed presentation text or a digest of the wrong length is rejected."""
    with pytest.raises(ValueError):
        parse_tlsa_rdata(text)


def test_parse_not_tlsa() -> None:
    """RFC 6698 §2.1: only TLSA rdata parse."""
    with pytest.raises(ValueError):
        parse_tlsa_rdata(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.A, "127.0.0.1"))


def test_malformed_rdata_ignored_with_note() -> None:
    """RFC 7672 §3.1.3 / RFC 6698 §4.1: a malformed record is ignored; the good one still matches."""
    good = record(3, 1, 1, LEAF)
    result = match(["3 1 1 zz", good.to_text()], CHAIN, mx_host=MX)
    assert result.matched and result.reason == "matched" and result.record == good
    assert any("record 1 ignored" in note for note in result.notes)
    only_bad = match(["3 1 1 zz", "3 0 1 " + "00" * 5], CHAIN, mx_host=MX)
    assert only_bad.reason == "no_usable_records" and len(only_bad.notes) == 2


def test_records_bounded() -> None:
    """Bounded input: at most MAX_RECORDS records are considered."""
    filler = [Tlsa(3, 1, 1, b"\0" * 32)] * MAX_RECORDS
    result = match([*filler, record(3, 1, 1, LEAF)], CHAIN, mx_host=MX)
    assert result.reason == "dane_mismatch"
    assert any(f"more than {MAX_RECORDS}" in note for note in result.notes)


# --- DANE-EE -------------------------------------------------------------------------------------


@pytest.mark.parametrize("selector", [0, 1], ids=["cert", "spki"])
@pytest.mark.parametrize("mtype", [0, 1, 2], ids=["full", "sha256", "sha512"])
def test_dane_ee_matches_leaf_rfc7671_5_1(selector: int, mtype: int) -> None:
    """RFC 7671 §5.1, RFC 6698 §2.1.2-2.1.3: DANE-EE(3) with each selector and matching type matches the leaf."""
    rec = record(3, selector, mtype, LEAF)
    result = match([rec], CHAIN, mx_host=MX)
    assert (result.matched, result.reason, result.record, result.depth) == (True, "matched", rec, 0)


@pytest.mark.parametrize("selector", [0, 1], ids=["cert", "spki"])
@pytest.mark.parametrize("mtype", [0, 1, 2], ids=["full", "sha256", "sha512"])
def test_dane_ee_other_key_mismatch_rfc7671_5_1(selector: int, mtype: int) -> None:
    """RFC 7671 §5.1: a DANE-EE(3) record of another certificate does not match: dane_mismatch."""
    result = match([record(3, selector, mtype, WRONG_NAME)], CHAIN, mx_host=MX)
    assert (result.matched, result.reason) == (False, "dane_mismatch")


def test_dane_ee_only_the_leaf_rfc7672_3_1_1() -> None:
    """RFC 7672 §3.1.1: DANE-EE(3) matches the leaf only, never an issuer in the chain."""
    result = match([record(3, 0, 1, INTER)], CHAIN, mx_host=MX)
    assert result.reason == "dane_mismatch"


def test_dane_ee_ignores_name_and_expiry_rfc7671_5_1() -> None:
    """RFC 7671 §5.1, RFC 7672 §3.1.1: with DANE-EE(3) the name and the expiry are ignored."""
    assert match([record(3, 1, 1, WRONG_NAME)], [WRONG_NAME.der], mx_host=MX).matched
    assert match([record(3, 1, 1, EXPIRED)], [EXPIRED.der], mx_host=MX).matched


def test_digest_agility_strongest_only_rfc7671_9() -> None:
    """RFC 7671 §9: per usage and selector, only the strongest matching type present is used."""
    weak_ok = record(3, 1, 1, LEAF)
    strong_bad = Tlsa(3, 1, 2, b"\1" * 64)
    assert match([weak_ok, strong_bad], CHAIN, mx_host=MX).reason == "dane_mismatch"
    # A different selector is its own group.
    assert match([record(3, 0, 1, LEAF), strong_bad], CHAIN, mx_host=MX).matched


# --- DANE-TA -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("anchor", "depth"), [pytest.param(ROOT, 2, id="root"), pytest.param(INTER, 1, id="intermediate")]
)
@pytest.mark.parametrize(("selector", "mtype"), [(0, 1), (1, 1), (1, 2), (0, 0)])
def test_dane_ta_in_chain_rfc7671_5_2(anchor: Issued, depth: int, selector: int, mtype: int) -> None:
    """RFC 7671 §5.2, RFC 7672 §3.1.2: DANE-TA(2) on the root or the intermediate; the leaf chains to it."""
    rec = record(2, selector, mtype, anchor)
    result = match([rec], CHAIN, mx_host=MX)
    assert (result.matched, result.reason, result.record, result.depth) == (True, "matched", rec, depth)


def test_dane_ta_chain_order_free_rfc7671_5_2() -> None:
    """RFC 7671 §5.2: the chain is built from the presented certificates, whatever their order."""
    assert match([record(2, 1, 1, ROOT)], [LEAF.der, ROOT.der, INTER.der], mx_host=MX).matched


def test_dane_ta_key_outside_chain_rfc7671_5_2_2() -> None:
    """RFC 7671 §5.2.2: a DANE-TA(2) SPKI(1) Full(0) key need not be in the presented chain."""
    result = match([record(2, 1, 0, ROOT)], [LEAF.der, INTER.der], mx_host=MX)
    assert (result.matched, result.depth) == (True, -1)
    # A digest of that key cannot be checked without the certificate: mismatch.
    assert match([record(2, 1, 1, ROOT)], [LEAF.der, INTER.der], mx_host=MX).reason == "dane_mismatch"


def test_dane_ta_wrong_leaf_name_rfc7672_3_2_3() -> None:
    """RFC 7672 §3.2.3: with DANE-TA(2) the leaf must match the MX host name: dane_mismatch."""
    rec = record(2, 1, 1, ROOT)
    result = match([rec], [WRONG_NAME.der, INTER.der, ROOT.der], mx_host=MX)
    assert (result.matched, result.reason, result.record) == (False, "dane_mismatch", rec)
    assert "RFC 7672" in result.detail


def test_dane_ta_extra_reference_name_rfc7672_3_2_3() -> None:
    """RFC 7672 §3.2.3: further reference identifiers (the next-hop domain) may be given."""
    chain = [WRONG_NAME.der, INTER.der, ROOT.der]
    assert match([record(2, 1, 1, ROOT)], chain, mx_host=MX, names=["mx9.example.test"]).matched


def test_dane_ta_unrelated_anchor_rfc7671_5_2() -> None:
    """RFC 7671 §5.2: an anchor the leaf does not chain to does not match, even if presented."""
    result = match([record(2, 0, 1, OTHER_ROOT)], [*CHAIN, OTHER_ROOT.der], mx_host=MX)
    assert result.reason == "dane_mismatch"


def test_dane_ta_forged_issuer_rfc7671_5_2() -> None:
    """RFC 7671 §5.2: issuer/subject linkage is not enough, the signature must verify."""
    impostor = _issue("DANE Test Intermediate", issuer=ROOT, ca=True)  # same name, another key
    result = match([record(2, 1, 1, ROOT)], [LEAF.der, impostor.der, ROOT.der], mx_host=MX)
    assert result.reason == "dane_mismatch"


def test_dane_ta_does_not_match_leaf_rfc7672_3_1_2() -> None:
    """RFC 7672 §3.1.2: a DANE-TA(2) record that matches only the leaf is not a trust anchor."""
    assert match([record(2, 0, 1, LEAF)], CHAIN, mx_host=MX).reason == "dane_mismatch"


def test_dane_ta_expired_leaf_rfc7671_5_2() -> None:
    """RFC 7671 §5.2: under DANE-TA(2) the chain below the anchor is checked as usual, expiry included."""
    result = match([record(2, 1, 1, ROOT)], [EXPIRED.der, INTER.der, ROOT.der], mx_host=MX)
    assert result.reason == "dane_mismatch" and "validity" in result.detail


# --- unusable records, no chain -----------------------------------------------------------------


@pytest.mark.parametrize(
    "usages", [pytest.param((0,), id="pkix-ta"), pytest.param((1,), id="pkix-ee"), pytest.param((0, 1), id="both")]
)
def test_pkix_usages_unusable_rfc7672_3_1_3(usages: tuple[int, ...]) -> None:
    """RFC 7672 §3.1.3: PKIX-TA(0)/PKIX-EE(1) are unusable for SMTP: no_usable_records (§2.2: TLS, unauthenticated)."""
    records = [record(u, 0, 1, LEAF if u == 1 else ROOT) for u in usages]
    result = match(records, CHAIN, mx_host=MX)
    assert (result.matched, result.reason) == (False, "no_usable_records")
    assert any("unusable" in note for note in result.notes)


def test_unknown_parameters_unusable_rfc6698_4_1() -> None:
    """RFC 6698 §4.1: unknown usage, selector or matching type make a record unusable."""
    records = [Tlsa(4, 1, 1, b"\0" * 32), Tlsa(3, 2, 1, b"\0" * 32), Tlsa(3, 1, 3, b"\0")]
    assert match(records, CHAIN, mx_host=MX).reason == "no_usable_records"


def test_no_chain() -> None:
    """RFC 7672 §3.1: usable records but no certificate presented: no_chain."""
    assert match([record(3, 1, 1, LEAF)], [], mx_host=MX).reason == "no_chain"


def test_reasons_fixed() -> None:
    """The reasons are a fixed set (they become label values)."""
    assert set(DANE_REASONS) == {"matched", "dane_mismatch", "no_usable_records", "no_chain"}
    assert set(LOOKUP_STATUSES) == {"ok", "nxdomain", "nodata", "servfail", "bogus", "refused", "timeout", "error"}


# --- lookup_tlsa ---------------------------------------------------------------------------------


class AdServer(DnsServer):
    """The scripted server, answering with the AD bit when ``ad`` is set; records the query flags."""

    def __init__(self) -> None:
        super().__init__()
        self.ad = False
        self.bogus = False  # SERVFAIL unless the query sets CD, as a validating resolver does for bad signatures
        self.query_flags: list[tuple[int, int]] = []  # (header flags, EDNS flags)

    def respond(self, wire: bytes, *, tcp: bool) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
            self.query_flags.append((query.flags, query.ednsflags))
        except Exception:  # the base class ignores garbage too
            pass
        if self.bogus and self.query_flags and not self.query_flags[-1][0] & dns.flags.CD:
            response = dns.message.make_response(dns.message.from_wire(wire))
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        out = super().respond(wire, tcp=tcp)
        if out is None or not self.ad:
            return out
        flags = int.from_bytes(out[2:4], "big") | dns.flags.AD
        return out[:2] + flags.to_bytes(2, "big") + out[4:]


@pytest.fixture
async def server() -> AsyncIterator[AdServer]:
    async with AdServer() as srv:
        srv.add(f"_25._tcp.{MX}", "TLSA", record(3, 1, 1, LEAF).to_text())
        srv.add("mx2.example.test", "A", "127.0.0.1")
        yield srv


def resolver_for(srv: DnsServer, timeout: float = 2.0) -> dns.asyncresolver.Resolver:
    return make_resolver(ResolverConfig(nameservers=(srv.host,), port=srv.port, timeout=timeout))


async def test_lookup_validated_rfc7672_2_2(server: AdServer) -> None:
    """RFC 7672 §2.2, RFC 4035 §3.2.3: TLSA answered with AD: DANE in use; DO and AD are asked for."""
    server.ad = True
    resolver = resolver_for(server)
    look = await lookup_tlsa(resolver, MX)
    assert (look.status, look.validated, look.dane_in_use, look.name) == ("ok", True, True, f"_25._tcp.{MX}")
    assert look.dane_records == (record(3, 1, 1, LEAF),)
    assert match(look.dane_records, CHAIN, mx_host=MX).matched
    flags, ednsflags = server.query_flags[-1]
    assert flags & dns.flags.AD and ednsflags & dns.flags.DO
    assert resolver.edns == -1 or not resolver.ednsflags & dns.flags.DO, "the caller's resolver is unchanged"


async def test_lookup_secure_unusable_only_rfc7672_2_2(server: AdServer) -> None:
    """RFC 7672 §2.2/§3.1.3: a validated RRset of unusable records keeps DANE in use: no_usable_records.

    (dnspython 2.9 already refuses a TLSA rdata whose digest length is wrong, so a malformed
    record cannot come over the wire; the parser tests cover it.)
    """
    server.remove(f"_25._tcp.{MX}").add(f"_25._tcp.{MX}", "TLSA", record(1, 0, 1, LEAF).to_text())
    server.ad = True
    look = await lookup_tlsa(resolver_for(server), MX)
    assert (look.status, look.dane_in_use) == ("ok", True)
    assert match(look.dane_records, CHAIN, mx_host=MX).reason == "no_usable_records"


async def test_lookup_insecure_ignored_rfc7672_2_2(server: AdServer) -> None:
    """RFC 7672 §2.2: TLSA records whose answer did not validate (no AD) are ignored."""
    look = await lookup_tlsa(resolver_for(server), MX)
    assert (look.status, look.validated, look.dane_in_use, look.dane_records) == ("ok", False, False, ())
    assert len(look.records) == 1


async def test_lookup_other_port() -> None:
    """RFC 6698 §3: the TLSA owner name is _<port>._tcp.<host>."""
    async with AdServer() as srv:
        srv.add(f"_465._tcp.{MX}", "TLSA", record(3, 1, 1, LEAF).to_text())
        look = await lookup_tlsa(resolver_for(srv), MX, 465)
        assert (look.status, look.name) == ("ok", f"_465._tcp.{MX}")


@pytest.mark.parametrize("ad", [True, False], ids=["secure-denial", "insecure"])
async def test_lookup_nxdomain_rfc7672_2_2(server: AdServer, ad: bool) -> None:
    """RFC 7672 §2.2: no TLSA RRset (NXDOMAIN): DANE is not in use for this MX."""
    server.ad = ad
    look = await lookup_tlsa(resolver_for(server), "mx9.example.test")
    assert (look.status, look.validated, look.dane_in_use) == ("nxdomain", ad, False)


async def test_lookup_nodata_rfc7672_2_2(server: AdServer) -> None:
    """RFC 7672 §2.2: the name exists without TLSA (NODATA): DANE is not in use."""
    server.add("_25._tcp.mx2.example.test", "TXT", '"x"')
    look = await lookup_tlsa(resolver_for(server), "mx2.example.test")
    assert (look.status, look.dane_in_use) == ("nodata", False)


async def test_lookup_bogus_rfc4035_3_2_2(server: AdServer) -> None:
    """RFC 4033 §5, RFC 4035 §3.2.2: SERVFAIL, but answered with checking disabled (CD): bogus."""
    server.bogus = True
    look = await lookup_tlsa(resolver_for(server), MX)
    assert (look.status, look.validated, look.dane_in_use) == ("bogus", False, False)
    flags = [f for f, _ in server.query_flags]
    assert len(flags) == 2 and not flags[0] & dns.flags.CD and flags[1] & dns.flags.CD


async def test_lookup_servfail_is_not_bogus(server: AdServer) -> None:
    """SERVFAIL also with checking disabled: the zone's servers failed, not its signatures."""
    server.set_mode(f"_25._tcp.{MX}", "servfail")
    look = await lookup_tlsa(resolver_for(server), MX)
    assert (look.status, look.validated, look.dane_in_use) == ("servfail", False, False)


async def test_lookup_refused_is_error(server: AdServer) -> None:
    """Any other failure is a failure of its own, not a validation verdict."""
    server.set_mode(f"_25._tcp.{MX}", "refused")
    assert (await lookup_tlsa(resolver_for(server), MX)).status == "refused"


async def test_lookup_timeout(server: AdServer) -> None:
    """A resolver that never answers: timeout, within the resolver's lifetime."""
    server.set_mode(f"_25._tcp.{MX}", "drop")
    look = await lookup_tlsa(resolver_for(server, timeout=0.3), MX)
    assert look.status == "timeout"


async def test_lookup_bad_name(server: AdServer) -> None:
    """A name that cannot be a DNS name is an error, without a query."""
    assert (await lookup_tlsa(resolver_for(server), "a" * 300)).status == "error"
    assert server.queries == []
