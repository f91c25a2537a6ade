"""DANE for SMTP: TLSA records, their lookup and their match against a presented chain.

Pure building blocks of issue 16 (the MX health check wires them in):

* :class:`Tlsa` and :func:`parse_tlsa_rdata`: one TLSA record (RFC 6698 §2.1), from a
  dnspython rdata or its presentation text (``"3 1 1 ab12..."``).
* :func:`match`: do the TLSA records authenticate a presented certificate chain, as an
  SMTP client following RFC 7672 would decide?  Never raises for what a server sends.
* :func:`lookup_tlsa`: the ``_25._tcp.<mx>`` TLSA RRset and whether it validated
  (the AD bit of the resolver's answer).

Matching rules (SMTP profile, RFC 7672 §3.1, with RFC 7671):

* Usages DANE-TA(2) and DANE-EE(3) are usable; PKIX-TA(0), PKIX-EE(1) and unknown usages
  are "unusable" for SMTP (RFC 7672 §3.1.3) and ignored.  Unknown selectors and matching
  types are unusable too (RFC 6698 §4.1).  When no record is usable the result is
  ``no_usable_records``: per RFC 7672 §2.2 the sender then still requires TLS
  (STARTTLS must be offered) but does not authenticate the certificate, so the
  certificate must not fail health; a missing STARTTLS does.
* Selectors: Cert(0), the certificate's DER as presented; SPKI(1), the DER of its
  SubjectPublicKeyInfo.  Matching types: Full(0), SHA2-256(1), SHA2-512(2).  A digest
  of the wrong length is malformed, ignored with a note.
* Digest algorithm agility (RFC 7671 §9): for each (usage, selector), only the records
  of the strongest matching type present (SHA2-512 > SHA2-256 > Full) are considered.
* DANE-EE(3) (RFC 7671 §5.1, RFC 7672 §3.1.1) matches the leaf only; names, expiry and
  the issuer are ignored.
* DANE-TA(2) (RFC 7671 §5.2, RFC 7672 §3.1.2): the trust anchor is a certificate of the
  presented chain other than the leaf, or, for a DANE-TA(2) SPKI(1) Full(0) record, a
  public key that signed a presented certificate (RFC 7671 §5.2.2, the key need not be
  in the chain).  The leaf must chain to it: each certificate's issuer name equals the
  next one's subject and its signature verifies with the next one's public key (RSA
  PKCS#1 v1.5 and PSS, ECDSA, Ed25519, Ed448), built from the presented certificates in
  any order.  The certificates below the anchor must be within their validity period
  (as OpenSSL, and so Postfix, checks), and the leaf must match a reference identifier
  (RFC 7672 §3.2.3): the MX host name, plus the ``names`` the caller adds (the
  next-hop domain when the MX lookup was secure), with the RFC 6125 rules of
  :func:`exporter.net.tls.hostname_matches`.  A DANE-TA(2) record matching only the
  leaf is not an anchor (as in OpenSSL).
* Not checked: basicConstraints, key usage, path length, name constraints, policies,
  revocation.  This is the check of a monitor, not of a TLS stack.

Bounds: at most :data:`MAX_RECORDS` records and :data:`MAX_CHAIN` certificates are
considered; the rest are ignored with a note.
"""

from __future__ import annotations

__all__ = [
    "DANE_REASONS",
    "LOOKUP_STATUSES",
    "MAX_CHAIN",
    "MAX_RECORDS",
    "DaneReason",
    "DaneResult",
    "LookupStatus",
    "Tlsa",
    "TlsaLookup",
    "lookup_tlsa",
    "match",
    "parse_tlsa_rdata",
    "parse_tlsa_records",
]

import datetime
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import dns.asyncresolver
import dns.exception
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TLSA
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from exporter.net.dnsq import LOOKUP_STATUSES, LookupStatus, resolve
from exporter.net.tls import hostname_matches

#: Records considered by :func:`match` and kept by :func:`lookup_tlsa`.
MAX_RECORDS = 100

#: Presented certificates considered (the leaf first).
MAX_CHAIN = 16

DaneReason = Literal["matched", "dane_mismatch", "no_usable_records", "no_chain"]
#: The fixed reasons of :class:`DaneResult`.
DANE_REASONS: tuple[str, ...] = get_args(DaneReason)


DANE_TA = 2
DANE_EE = 3
_USABLE_USAGES = (DANE_TA, DANE_EE)
_SELECTORS = (0, 1)
#: Matching type -> digest length (0: any non-empty length).
_MTYPES: dict[int, int] = {0: 0, 1: 32, 2: 64}
#: RFC 7671 §9: the default preference of matching types, strongest last.
_MTYPE_ORDER = (0, 1, 2)


@dataclass(frozen=True, slots=True)
class Tlsa:
    """One TLSA record (RFC 6698 §2.1): certificate usage, selector, matching type, data."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    def to_text(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"

    @property
    def usable(self) -> bool:
        """Usable by an SMTP client (RFC 7672 §3.1): DANE-TA/EE, a known selector and matching type."""
        return self.usage in _USABLE_USAGES and self.selector in _SELECTORS and self.mtype in _MTYPES


@dataclass(frozen=True, slots=True)
class DaneResult:
    """The verdict of :func:`match`.

    ``record`` is the record that matched, ``depth`` the position in the presented chain
    of the certificate it matched (0: the leaf; -1: a DANE-TA key outside the chain).
    ``detail`` is a short human text; ``notes`` lists what was ignored and why.
    """

    matched: bool
    reason: DaneReason
    detail: str
    record: Tlsa | None = None
    depth: int | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TlsaLookup:
    """The TLSA RRset of one MX host, as :func:`lookup_tlsa` found it.

    ``status``: ``ok`` (records answered), ``nxdomain``/``nodata`` (no TLSA: DANE is not
    in use for this MX), ``bogus`` (validation failed; see :func:`lookup_tlsa`), or a
    failure (``servfail``, ``refused``, ``timeout``, ``error``).  ``validated`` is the AD
    bit of the answer (also for a denial of existence).  ``records`` are the parsed
    records as answered, validated or not; only :attr:`dane_records` count for DANE.
    """

    name: str
    status: LookupStatus
    validated: bool
    message: str
    records: tuple[Tlsa, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def dane_records(self) -> tuple[Tlsa, ...]:
        """The records a DANE sender uses: none unless the answer validated (RFC 7672 §2.2)."""
        return self.records if self.dane_in_use else ()

    @property
    def dane_in_use(self) -> bool:
        """Whether a DANE sender applies DANE to this MX: a validated, non-empty TLSA RRset.

        Also when none of its records is usable or well formed: :func:`match` then says
        ``no_usable_records`` (the sender still requires TLS, RFC 7672 §2.2).
        """
        return self.status == "ok" and self.validated


# --- parsing -----------------------------------------------------------------------------------


def parse_tlsa_rdata(rdata: dns.rdata.Rdata | str) -> Tlsa:
    """A :class:`Tlsa` from a dnspython TLSA rdata or its presentation text.

    Raises ``ValueError`` for malformed input: not TLSA, fields out of range, bad hex,
    empty data, or a digest whose length does not fit its (known) matching type.
    Unknown usages, selectors and matching types parse; they are merely unusable.
    """
    if isinstance(rdata, str):
        try:
            parsed = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TLSA, rdata.strip())
        except (dns.exception.DNSException, ValueError, TypeError) as exc:
            raise ValueError(f"malformed TLSA text: {type(exc).__name__}") from exc
        rdata = parsed
    if not isinstance(rdata, dns.rdtypes.ANY.TLSA.TLSA):
        raise ValueError(f"not a TLSA record: {type(rdata).__name__}")
    record = Tlsa(int(rdata.usage), int(rdata.selector), int(rdata.mtype), bytes(rdata.cert))
    if not record.data:
        raise ValueError("empty certificate association data")
    want = _MTYPES.get(record.mtype, 0)
    if want and len(record.data) != want:
        raise ValueError(f"matching type {record.mtype} needs {want} bytes, got {len(record.data)}")
    return record


def parse_tlsa_records(items: Iterable[Tlsa | dns.rdata.Rdata | str]) -> tuple[list[Tlsa], list[str]]:
    """Parse up to :data:`MAX_RECORDS` records; the malformed ones and the excess become notes."""
    records: list[Tlsa] = []
    notes: list[str] = []
    for index, item in enumerate(items):
        if index >= MAX_RECORDS:
            notes.append(f"more than {MAX_RECORDS} TLSA records: the rest ignored")
            break
        if isinstance(item, Tlsa):
            records.append(item)
            continue
        try:
            records.append(parse_tlsa_rdata(item))
        except ValueError as exc:
            notes.append(f"record {index + 1} ignored: {exc}")
    return records, notes


# --- matching ----------------------------------------------------------------------------------


def _strongest(records: Sequence[Tlsa]) -> list[Tlsa]:
    """RFC 7671 §9: per (usage, selector), keep only the records of the strongest matching type."""
    best: dict[tuple[int, int], int] = {}
    for r in records:
        key = (r.usage, r.selector)
        best[key] = max(best.get(key, r.mtype), r.mtype, key=_MTYPE_ORDER.index)
    return [r for r in records if best[(r.usage, r.selector)] == r.mtype]


def _digest(mtype: int, data: bytes) -> bytes:
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


def _spki(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None


class _Cert:
    """One presented certificate: its DER, and (lazily) its parsed form and SPKI."""

    def __init__(self, der: bytes) -> None:
        self.der = der
        self.cert: x509.Certificate | None
        try:
            self.cert = x509.load_der_x509_certificate(der)
        except ValueError:
            self.cert = None
        self.spki = _spki(self.cert) if self.cert is not None else None

    def selected(self, selector: int) -> bytes | None:
        return self.der if selector == 0 else self.spki

    def matches(self, record: Tlsa) -> bool:
        data = self.selected(record.selector)
        return data is not None and _digest(record.mtype, data) == record.data


def _signed_by(cert: x509.Certificate, key: PublicKeyTypes) -> bool:
    """Whether ``key`` verifies the signature of ``cert`` (RSA, ECDSA, Ed25519, Ed448)."""
    try:
        params = cert.signature_algorithm_parameters
        sig, tbs = cert.signature, cert.tbs_certificate_bytes
        if isinstance(key, rsa.RSAPublicKey) and isinstance(params, (padding.PKCS1v15, padding.PSS)):
            algorithm = cert.signature_hash_algorithm
            if algorithm is None:
                return False
            key.verify(sig, tbs, params, algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(params, ec.ECDSA):
            key.verify(sig, tbs, params)
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(sig, tbs)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        key = issuer.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return _signed_by(cert, key)


def _in_validity(cert: x509.Certificate, now: datetime.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _ta_match(ta_records: Sequence[Tlsa], chain: Sequence[_Cert], now: datetime.datetime) -> tuple[Tlsa, int] | str:
    """The DANE-TA record the leaf chains to and the anchor's depth, or why none does.

    Walks from the leaf up through the presented certificates (in any order): at each
    step, the current certificate's issuer is looked for among the unused presented
    certificates; an issuer matching a DANE-TA record ends the walk.  A DANE-TA SPKI(1)
    Full(0) key that verifies the current certificate also does (key outside the chain).
    """
    leaf = chain[0].cert
    assert leaf is not None
    spki_keys: list[tuple[Tlsa, PublicKeyTypes]] = []
    for r in ta_records:
        if r.selector == 1 and r.mtype == 0:
            try:
                spki_keys.append((r, serialization.load_der_public_key(r.data)))
            except (ValueError, TypeError, UnsupportedAlgorithm):
                pass
    current, used = leaf, {0}
    for _ in range(len(chain)):
        if not _in_validity(current, now):
            return "a certificate below the trust anchor is outside its validity period"
        for r, key in spki_keys:
            if _signed_by(current, key):
                return r, -1
        step: tuple[int, x509.Certificate] | None = None
        for i, c in enumerate(chain):
            if i not in used and c.cert is not None and _issued_by(current, c.cert):
                step = i, c.cert
                break
        if step is None:
            break
        issuer_at, current = step
        for r in ta_records:
            if chain[issuer_at].matches(r):
                return r, issuer_at
        used.add(issuer_at)
    return "the leaf does not chain to a certificate matching a DANE-TA record"


def match(
    tlsa_records: Iterable[Tlsa | dns.rdata.Rdata | str],
    chain_der: Sequence[bytes],
    *,
    mx_host: str,
    names: Sequence[str] = (),
    now: datetime.datetime | None = None,
) -> DaneResult:
    """Whether the TLSA records authenticate the presented chain (leaf first) for ``mx_host``.

    ``names`` are further reference identifiers for DANE-TA (RFC 7672 §3.2.3: the
    next-hop domain when the MX RRset is secure).  ``now`` defaults to the current time
    (for the validity check of DANE-TA chains).  See the module doc for the rules.
    """
    records, notes = parse_tlsa_records(tlsa_records)
    unusable = [r for r in records if not r.usable]
    if unusable:
        notes.append(f"{len(unusable)} record(s) unusable for SMTP ignored (RFC 7672 §3.1.3)")
    usable = _strongest([r for r in records if r.usable])
    if not usable:
        return DaneResult(False, "no_usable_records", "no usable TLSA record", notes=tuple(notes))
    if not chain_der:
        return DaneResult(False, "no_chain", "no certificate presented", notes=tuple(notes))
    if len(chain_der) > MAX_CHAIN:
        notes.append(f"more than {MAX_CHAIN} certificates presented: the rest ignored")
    chain = [_Cert(der) for der in chain_der[:MAX_CHAIN]]
    # DANE-EE(3): the leaf only, as presented; no name, expiry or issuer check (RFC 7671 §5.1).
    for r in usable:
        if r.usage == DANE_EE and chain[0].matches(r):
            return DaneResult(True, "matched", "DANE-EE matches the leaf", r, 0, tuple(notes))
    ta_records = [r for r in usable if r.usage == DANE_TA]
    if not ta_records:
        return DaneResult(False, "dane_mismatch", "no DANE-EE record matches the leaf", notes=tuple(notes))
    leaf = chain[0].cert
    if leaf is None:
        return DaneResult(False, "no_chain", "the leaf certificate cannot be parsed", notes=tuple(notes))
    found = _ta_match(ta_records, chain, now or datetime.datetime.now(datetime.UTC))
    if isinstance(found, str):
        return DaneResult(False, "dane_mismatch", found, notes=tuple(notes))
    record, depth = found
    refs = [mx_host, *names]
    if not any(hostname_matches(leaf, ref) for ref in refs if ref):
        return DaneResult(
            False,
            "dane_mismatch",
            f"DANE-TA anchor found but the leaf does not match {mx_host!r} (RFC 7672 §3.2.3)",
            record,
            depth,
            tuple(notes),
        )
    return DaneResult(True, "matched", "DANE-TA: the leaf chains to the anchor", record, depth, tuple(notes))


# --- lookup ------------------------------------------------------------------------------------


async def lookup_tlsa(resolver: dns.asyncresolver.Resolver, mx_host: str, port: int = 25) -> TlsaLookup:
    """The TLSA RRset of ``_<port>._tcp.<mx_host>`` and whether it validated.

    Asked with DNSSEC (:func:`exporter.net.dnsq.resolve` with ``dnssec=True``: DO and AD
    set on a copy of ``resolver``, which is not changed), so a validating resolver reports
    validation in the AD bit.  The resolver must validate: a non-validating one never
    sets AD, so DANE is never in use.  ``bogus``: SERVFAIL, while the query with checking
    disabled is answered (the signatures do not validate); ``servfail``: the zone's
    servers failed.  A DANE sender defers delivery to the MX on both (RFC 7672 §2.2).
    Never raises for what the network does.
    """
    name = f"_{int(port)}._tcp.{mx_host.rstrip('.')}"
    look = await resolve(resolver, name, dns.rdatatype.TLSA, dnssec=True)
    if look.status != "ok":
        return TlsaLookup(name, look.status, look.validated, look.message)
    rdatas = list(look.rrset) if look.rrset is not None else []
    records, notes = parse_tlsa_records(rdatas)
    return TlsaLookup(name, "ok", look.validated, "ok", tuple(records), tuple(notes))
