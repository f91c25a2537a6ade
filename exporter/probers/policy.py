"""A mail domain's transport policy, as a sender that honours it decides: MTA-STS and DANE.

Two parts:

* :class:`StsCache`: the MTA-STS policy of one domain (RFC 8461), looked up and cached as
  a sender does.  Each call looks up the ``_mta-sts`` TXT record; the HTTPS policy is
  fetched again only when needed: no policy cached, the TXT ``id`` changed, the cached
  policy's ``max_age`` ran out, the last fetch failed, or ``refresh`` seconds passed
  since the last fetch (a monitor refreshes more often than a sender must, so that an
  unreachable policy host is seen within ``refresh``; RFC 8461 §10.2 allows proactive
  refreshes).  When a fetch fails, or the TXT record vanishes or is broken, a cached
  policy that has not expired stays in force (RFC 8461 §5.1), and the failure is
  reported separately (``fetch_ok``).
* :func:`judge`: does one TLS session with an MX host satisfy the domain's policy?
  (Pure; the MX check calls it through the SMTP prober's ``tls_judge`` hook, right after
  STARTTLS.)  The published policy of an MX host, by precedence (RFC 8461 §2: DANE
  wins over MTA-STS):

  ======================  ====================================================  ==================
  published policy        checked                                               failure reason
  ======================  ====================================================  ==================
  ``dane``                STARTTLS; the chain matches a usable TLSA record      ``tls_policy``,
                          (RFC 7672; no usable record: TLS only)                ``dane_mismatch``
  ``dane_unverifiable``   (the TLSA lookup failed in a signed zone: a DANE      ``dnssec``, ``dns``
                          sender defers, RFC 7672 §2.2)
  ``mta_sts_enforce``     STARTTLS; chain verifies (Web PKI or ``ca_file``);    ``tls_policy``
                          name matches the MX host; MX host matches ``mx``
  ``mta_sts_testing``     as enforce, reported only
  ``opportunistic``       nothing: a bad certificate does not stop delivery
  ======================  ====================================================  ==================
"""

from __future__ import annotations

__all__ = [
    "POLICIES",
    "STS_MODES",
    "HostPolicy",
    "PolicyName",
    "StsCache",
    "StsPolicy",
    "StsState",
    "Verdict",
    "host_policy",
    "judge",
]

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import dns.asyncresolver
import dns.rdatatype

from exporter.net.dane import TlsaLookup, match
from exporter.net.dnsq import resolve
from exporter.net.tls import TLSReport
from exporter.probers.dns import PolicyFetch, fetch_policy
from exporter.probers.dnsrecords import is_sts, join_txt, mx_pattern_matches, parse_mta_sts_policy, parse_mta_sts_txt

PolicyName = Literal["opportunistic", "mta_sts_testing", "mta_sts_enforce", "dane", "strict"]
#: The values of the ``policy`` label of ``mail_mx_policy``.
POLICIES: tuple[str, ...] = get_args(PolicyName)

TxtStatus = Literal["absent", "present", "invalid", "failed", "bogus"]

#: The values of the ``mode`` label of ``mail_mta_sts_policy_mode``.
STS_MODES: tuple[str, ...] = ("enforce", "testing", "none")


# --- MTA-STS ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StsPolicy:
    """A fetched, valid MTA-STS policy."""

    mode: str  # enforce | testing | none
    mx: tuple[str, ...]
    max_age: int
    id: str  # the TXT id it was fetched under
    fetched_at: float  # Unix time

    def expired(self, now: float) -> bool:
        return now >= self.fetched_at + self.max_age

    def covers(self, host: str) -> bool:
        return any(mx_pattern_matches(p, host) for p in self.mx)


@dataclass(frozen=True, slots=True)
class StsState:
    """What one look at a domain's MTA-STS found.

    ``policy`` is the policy in force (fresh or cached, never expired), ``None`` when there
    is none.  ``fetch_ok``/``fetch_message`` describe the last fetch attempt (``None``
    before the first).  ``txt_validated``/``txt_bogus``: the DNSSEC state of the TXT lookup.
    """

    txt: TxtStatus
    txt_message: str
    txt_validated: bool
    policy: StsPolicy | None
    fetch_ok: bool | None
    fetch_message: str
    fetched_now: bool

    @property
    def mode(self) -> str:
        return self.policy.mode if self.policy is not None else "none"

    @property
    def txt_bogus(self) -> bool:
        return self.txt == "bogus"


class StsCache:
    """The MTA-STS policy of one domain, cached across runs.  Safe to share between checks."""

    def __init__(self, fetch: PolicyFetch, refresh: float) -> None:
        self.fetch = fetch
        self.refresh = refresh
        self._policy: StsPolicy | None = None
        self._last_attempt = -math.inf
        self._last_ok: bool | None = None
        self._last_message = ""
        self._lock = asyncio.Lock()

    def _due(self, txt_id: str, now: float) -> bool:
        policy = self._policy
        return (
            policy is None
            or policy.id != txt_id
            or policy.expired(now)
            or self._last_ok is not True
            or now - self._last_attempt >= self.refresh
        )

    async def state(self, resolver: dns.asyncresolver.Resolver, domain: str, now: float | None = None) -> StsState:
        """Look at the domain's MTA-STS now; fetch the policy when due.  Never raises for the network."""
        async with self._lock:
            return await self._state(resolver, domain.rstrip("."), now)

    async def _state(self, resolver: dns.asyncresolver.Resolver, domain: str, now: float | None) -> StsState:
        look = await resolve(resolver, f"_mta-sts.{domain}", dns.rdatatype.TXT, dnssec=True)
        txt: TxtStatus
        txt_id = ""
        if look.status == "bogus":
            txt, message = "bogus", look.message
        elif look.failed:
            txt, message = "failed", f"lookup failed: {look.message}"
        else:
            texts = [join_txt(r.strings) for r in look.rrset] if look.rrset is not None else []
            records = [t for t in texts if is_sts(t)]
            if not records:
                txt, message = "absent", "no MTA-STS record"
            elif len(records) > 1:
                txt, message = "invalid", f"{len(records)} MTA-STS records (senders see no policy)"
            else:
                parsed = parse_mta_sts_txt(records[0])
                if parsed.ok:
                    txt, message, txt_id = "present", "ok", parsed.get("id") or ""
                else:
                    txt, message = "invalid", f"invalid MTA-STS record: {parsed.reason}"
        when = time.time() if now is None else now
        fetched_now = False
        if txt == "present" and self._due(txt_id, when):
            fetched_now = True
            self._last_attempt = when
            body, why = await fetch_policy(resolver, domain, self.fetch)
            if body is None:
                self._last_ok, self._last_message = False, why
            else:
                parsed = parse_mta_sts_policy(body)
                if not parsed.ok:
                    self._last_ok, self._last_message = False, f"policy: {parsed.reason}"
                else:
                    self._last_ok, self._last_message = True, "ok"
                    self._policy = StsPolicy(
                        mode=parsed.get("mode") or "none",
                        mx=parsed.values("mx"),
                        max_age=int(parsed.get("max_age") or 0),
                        id=txt_id,
                        fetched_at=when,
                    )
        if self._policy is not None and self._policy.expired(when):
            self._policy = None
        return StsState(txt, message, look.validated, self._policy, self._last_ok, self._last_message, fetched_now)


# --- judging one MX session ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """The published policy of one MX host and what it needs to be judged."""

    published: Literal["opportunistic", "mta_sts_testing", "mta_sts_enforce", "dane", "dane_unverifiable"]
    host: str
    tlsa: TlsaLookup | None = None
    sts: StsPolicy | None = None
    #: DANE-TA reference identifiers beyond the MX host (the domain, when its MX RRset is secure).
    names: tuple[str, ...] = ()

    @property
    def enforced(self) -> bool:
        """Whether a compliant sender refuses to deliver when the policy is not met."""
        return self.published in ("dane", "dane_unverifiable", "mta_sts_enforce")

    @property
    def label(self) -> PolicyName:
        """The ``policy`` label of the published policy."""
        return "dane" if self.published == "dane_unverifiable" else self.published


def host_policy(
    host: str, tlsa: TlsaLookup | None, sts: StsPolicy | None, *, mx_validated: bool, domain: str
) -> HostPolicy:
    """The policy a sender applies to ``host``: DANE when its TLSA RRset validated, else MTA-STS.

    A TLSA lookup that fails (bogus, SERVFAIL, timeout) counts only when the domain's MX
    RRset validated: a DANE sender only looks for TLSA records of MX hosts it reached
    securely (RFC 7672 §2.2), so for an unsigned domain the failure is noise.
    """
    names = (domain,) if mx_validated else ()
    if tlsa is not None and tlsa.dane_in_use:
        return HostPolicy("dane", host, tlsa, sts, names)
    if tlsa is not None and mx_validated and tlsa.status not in ("ok", "nxdomain", "nodata"):
        return HostPolicy("dane_unverifiable", host, tlsa, sts, names)
    if sts is not None and sts.mode == "enforce":
        return HostPolicy("mta_sts_enforce", host, tlsa, sts, names)
    if sts is not None and sts.mode == "testing":
        return HostPolicy("mta_sts_testing", host, tlsa, sts, names)
    return HostPolicy("opportunistic", host, tlsa, sts, names)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a session meets the published policy; ``reason`` is a failure reason when not."""

    ok: bool
    reason: str = ""
    message: str = ""
    #: DANE in use with usable records and TLS up: whether the chain matched.
    tlsa_match: bool | None = None


def judge(policy: HostPolicy, report: TLSReport | None, chain: Sequence[bytes]) -> Verdict:
    """Judge one session (``report`` None: not encrypted) under ``policy``.  Pure."""
    published = policy.published
    if published == "opportunistic":
        return Verdict(True)
    if published == "dane_unverifiable":
        tlsa = policy.tlsa
        assert tlsa is not None
        reason = "dnssec" if tlsa.status == "bogus" else "dns"
        return Verdict(False, reason, f"DANE: TLSA lookup of {tlsa.name} failed ({tlsa.message}); senders defer")
    what = "DANE" if published == "dane" else "MTA-STS"
    if report is None:
        return Verdict(False, "tls_policy", f"{what}: STARTTLS is required but was not offered")
    if published == "dane":
        assert policy.tlsa is not None
        result = match(policy.tlsa.dane_records, chain, mx_host=policy.host, names=policy.names)
        if result.matched:
            return Verdict(True, tlsa_match=True)
        if result.reason == "no_usable_records":
            return Verdict(True, message="DANE: no usable TLSA record; TLS required, certificate not checked")
        return Verdict(False, "dane_mismatch", f"DANE: {result.detail}", tlsa_match=False)
    sts = policy.sts
    assert sts is not None
    mode = f"MTA-STS {sts.mode}"
    if not sts.covers(policy.host):
        return Verdict(False, "tls_policy", f"{mode}: MX {policy.host} does not match the policy's mx patterns")
    if not report.chain_valid:
        return Verdict(False, "tls_policy", f"{mode}: certificate chain does not verify: {report.chain_error}")
    if not report.hostname_valid:
        return Verdict(False, "tls_policy", f"{mode}: certificate does not match {policy.host}")
    return Verdict(True)
