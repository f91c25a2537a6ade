"""DNS checks of a mail domain: MX discovery, DNS posture and DNSBL listings.

Every lookup goes through one :class:`dns.asyncresolver.Resolver` built by
:func:`make_resolver` from the configured nameservers, so a check never consults
``/etc/resolv.conf`` unless the configuration leaves the nameservers empty.  Even
the HTTPS fetch of an MTA-STS policy resolves ``mta-sts.<domain>`` through it.

A failing lookup is data, not an exception: NXDOMAIN, SERVFAIL, REFUSED and
timeouts become a reason and a short message.  The functions raise only for
programming or configuration errors (an invalid address to look up on a DNSBL).

Metrics written to the sink::

    mail_dns_record_ok{domain,record}          check_posture: record in mx, spf, dmarc,
                                               mta_sts, tls_rpt, dkim:<selector>; 1 when
                                               present and well formed.  Every enabled
                                               record is set to 0 first, so a check cut
                                               off by its timeout still shows each one.
    mail_dnsbl_listed{domain,address,zone}     check_dnsbl: 1 only for a real listing code
    mail_dnsbl_errors_total{domain,zone,reason} check_dnsbl: reason in error_code, timeout,
                                               servfail, other; all created at 0

``sink.detail(record, reason)`` carries the reason of each posture record (``"ok"``,
``"2 SPF records"``, ``"lookup failed: SERVFAIL"``) for the status page.
"""

from __future__ import annotations

__all__ = [
    "DNSBL_ERROR_REASONS",
    "MxDiscovery",
    "MxTarget",
    "PolicyFetch",
    "check_dnsbl",
    "check_posture",
    "discover_mx",
    "fetch_policy",
    "make_resolver",
]

import asyncio
import functools
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp
import aiohttp.abc
import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.rrset
from yarl import URL

from exporter.config import DnsPosture, MtaStsSettings, ResolverConfig, TLSSettings
from exporter.core.errors import ConfigError, ConfigIssue
from exporter.core.model import Failure, Sink
from exporter.net.dnsq import Lookup, resolve
from exporter.net.tls import CONNECT_GUARD, ProbeFailure, client_context
from exporter.probers.dnsrecords import (
    RecordCheck,
    classify_dnsbl_answer,
    is_dkim_candidate,
    is_dmarc,
    is_spf,
    is_sts,
    is_tlsrpt,
    join_txt,
    mx_pattern_matches,
    parse_dkim,
    parse_dmarc,
    parse_mta_sts_policy,
    parse_mta_sts_txt,
    parse_spf,
    parse_tlsrpt,
    reverse_ip_query,
)

#: The fixed reasons of ``mail_dnsbl_errors_total``.
DNSBL_ERROR_REASONS: tuple[str, ...] = ("error_code", "timeout", "servfail", "other")

#: Lookups in flight at once for the MX hosts of one domain and for one DNSBL check.
_CONCURRENCY = 8

#: MX host addresses considered by ``check_posture`` (only whether each host resolves matters).
_POSTURE_MX_ADDRESSES = 64


# --- the resolver ------------------------------------------------------------------------------


def make_resolver(cfg: ResolverConfig) -> dns.asyncresolver.Resolver:
    """A resolver for the configured nameservers, port and timeout.

    ``cfg.timeout`` bounds each lookup as a whole (dnspython's ``lifetime``) and each
    attempt at a nameserver (``timeout``), so one lookup never takes longer than
    ``cfg.timeout``, whatever the nameservers do.  No search list, no cache: every
    check sees what the nameservers answer now.  With no nameservers configured, the
    system's (``/etc/resolv.conf``) are used, with the configured port.
    """
    if cfg.nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(ns, cfg.port) for ns in cfg.nameservers]
    else:
        try:
            resolver = dns.asyncresolver.Resolver(configure=True)
        except dns.resolver.NoResolverConfiguration as exc:
            raise ConfigError(
                [
                    ConfigIssue(
                        "/etc/resolv.conf",
                        "global.resolver.nameservers",
                        "no nameservers configured and none found in the system configuration",
                    )
                ]
            ) from exc
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(str(ns), cfg.port) if isinstance(ns, str) else ns
            for ns in resolver.nameservers
        ]
        resolver.search = []
        resolver.use_search_by_default = False
    resolver.port = cfg.port
    resolver.timeout = float(cfg.timeout)
    resolver.lifetime = float(cfg.timeout)
    resolver.cache = None
    return resolver


async def _addresses(resolver: dns.asyncresolver.Resolver, host: str) -> tuple[list[str], list[Lookup]]:
    """A then AAAA addresses of ``host``, and the two lookups."""
    looks = await asyncio.gather(resolve(resolver, host, dns.rdatatype.A), resolve(resolver, host, dns.rdatatype.AAAA))
    addrs = [rdata.to_text() for look in looks if look.rrset is not None for rdata in look.rrset]
    return addrs, list(looks)


# --- MX discovery --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MxTarget:
    """One address of one MX host."""

    host: str  # lower case, no trailing dot
    preference: int
    address: str


@dataclass(frozen=True, slots=True)
class MxDiscovery:
    """What the DNS says about where a domain's mail goes.

    ``records`` counts real MX records (the null MX "." is not one).  ``hosts`` are the
    MX hosts by preference, ``targets`` their addresses (at most ``max_addresses``).
    ``implicit``: no MX records, so the domain's own A/AAAA is used (RFC 5321 section
    5.1).  ``null_mx``: the domain publishes the null MX of RFC 7505 and accepts no
    mail.  ``validated``/``bogus``: the DNSSEC state of the MX lookup (see
    :mod:`exporter.net.dnsq`).  ``unresolved``: MX hosts without any address.  ``errors``: short notes on
    everything odd that did not stop discovery.  ``failure`` (reason ``dns``) is set
    when discovery could not produce a single address to try.
    """

    domain: str
    records: int = 0
    hosts: tuple[tuple[str, int], ...] = ()
    targets: tuple[MxTarget, ...] = ()
    implicit: bool = False
    null_mx: bool = False
    null_mx_mixed: bool = False
    unresolved: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    failure: Failure | None = None
    #: The MX answer (or its denial) carried the AD bit of a validating resolver.
    validated: bool = False
    #: The MX lookup failed DNSSEC validation (failure reason ``dnssec``).
    bogus: bool = False

    @property
    def ok(self) -> bool:
        return self.failure is None


def _lookup_failure(domain: str, look: Lookup) -> Failure:
    if look.status == "nxdomain":
        return Failure("dns", f"{domain}: domain does not exist (NXDOMAIN)", domain)
    return Failure("dns", f"{domain}: lookup failed: {look.message}", domain)


async def discover_mx(resolver: dns.asyncresolver.Resolver, domain: str, max_addresses: int) -> MxDiscovery:
    """Find the MX hosts of ``domain`` and their addresses.  Never raises for DNS faults.

    MX records are sorted by preference (then name); each host's A and AAAA records are
    looked up concurrently.  No MX records at all falls back to the domain's own
    addresses, flagged ``implicit``.  NXDOMAIN, SERVFAIL, a timeout, or no address
    anywhere ends in ``failure`` with reason ``dns``.  A whole discovery takes at most
    about two resolver lifetimes: the MX lookup, then the address lookups in parallel.
    """
    if max_addresses < 1:
        raise ValueError(f"max_addresses must be at least 1, got {max_addresses}")
    domain_name = domain.rstrip(".")
    mx = await resolve(resolver, domain_name, dns.rdatatype.MX, dnssec=True)
    if mx.status == "bogus":
        msg = f"{domain_name}: MX lookup failed DNSSEC validation ({mx.message})"
        return MxDiscovery(domain, bogus=True, failure=Failure("dnssec", msg, domain))
    if mx.status == "nodata":
        addrs, looks = await _addresses(resolver, domain_name)
        if not addrs:
            failed = next((look for look in looks if look.failed), None)
            msg = (
                f"{domain_name}: no MX records, and the address lookup failed: {failed.message}"
                if failed is not None
                else f"{domain_name}: no MX records and no A/AAAA records"
            )
            return MxDiscovery(domain, implicit=True, failure=Failure("dns", msg, domain), validated=mx.validated)
        host = domain_name.lower()
        return MxDiscovery(
            domain,
            hosts=((host, 0),),
            targets=tuple(MxTarget(host, 0, a) for a in addrs[:max_addresses]),
            implicit=True,
            errors=(f"{domain_name}: no MX records; using the domain's own addresses (implicit MX)",),
            validated=mx.validated,
        )
    if mx.rrset is None:
        return MxDiscovery(domain, failure=_lookup_failure(domain_name, mx))

    errors: list[str] = []
    real: dict[str, int] = {}
    nulls = 0
    for rdata in mx.rrset:
        if rdata.exchange == dns.name.root:
            nulls += 1
            continue
        host = rdata.exchange.to_text(omit_final_dot=True).lower()
        real[host] = min(rdata.preference, real.get(host, rdata.preference))
    if nulls and not real:
        return MxDiscovery(
            domain,
            null_mx=True,
            errors=(f"{domain_name}: null MX (RFC 7505): the domain accepts no mail",),
            validated=mx.validated,
        )
    if nulls:
        errors.append(f"{domain_name}: null MX mixed with other MX records (RFC 7505)")
    hosts = tuple(sorted(real.items(), key=lambda hp: (hp[1], hp[0])))

    sem = asyncio.Semaphore(_CONCURRENCY)

    async def resolve_host(host: str) -> tuple[list[str], list[Lookup]]:
        async with sem:
            return await _addresses(resolver, host)

    results = await asyncio.gather(*(resolve_host(host) for host, _ in hosts))
    targets: list[MxTarget] = []
    unresolved: list[str] = []
    total = 0
    for (host, pref), (addrs, looks) in zip(hosts, results, strict=True):
        for fam, look in zip(("A", "AAAA"), looks, strict=True):
            if look.failed:
                errors.append(f"{host} {fam}: lookup failed: {look.message}")
        if not addrs:
            unresolved.append(host)
            if not any(look.failed for look in looks):
                errors.append(f"{host}: no A/AAAA records" if looks[0].status != "nxdomain" else f"{host}: NXDOMAIN")
        total += len(addrs)
        for addr in addrs:
            if len(targets) < max_addresses:
                targets.append(MxTarget(host, pref, addr))
    if total > len(targets) and targets:
        errors.append(f"only the first {len(targets)} of {total} MX addresses are checked")
    failure = None
    if not targets:
        failure = Failure("dns", f"{domain_name}: none of the {len(hosts)} MX hosts has an address", domain)
    return MxDiscovery(
        domain,
        records=len(hosts),
        hosts=hosts,
        targets=tuple(targets),
        null_mx_mixed=bool(nulls),
        unresolved=tuple(unresolved),
        errors=tuple(errors),
        failure=failure,
        validated=mx.validated,
    )


# --- DNS posture -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyFetch:
    """How ``check_posture`` fetches an MTA-STS policy over HTTPS.

    The defaults are what production uses.  Tests set ``port``, ``address`` (connect
    here instead of resolving ``mta-sts.<domain>``) and ``ssl_context`` (their own CA);
    the host name in the URL, the SNI and the certificate check stay
    ``mta-sts.<domain>`` either way.
    """

    timeout: float = 10.0
    max_bytes: int = 64 * 1024
    ssl_context: ssl.SSLContext | None = None  # None: the system trust store
    port: int = 443
    address: str | None = None
    #: Trust these CAs instead of the system store (ignored when ``ssl_context`` is set).
    ca_file: str | None = None

    @classmethod
    def from_settings(cls, cfg: MtaStsSettings) -> PolicyFetch:
        return cls(timeout=cfg.timeout, port=cfg.port, ca_file=cfg.ca_file)

    def context(self) -> ssl.SSLContext | bool:
        """The TLS setting for aiohttp: our context, one trusting ``ca_file``, or True (system store)."""
        if self.ssl_context is not None:
            return self.ssl_context
        if self.ca_file:
            return client_context(TLSSettings(ca_file=self.ca_file), verify=True, check_hostname=True)
        return True


class _UnresolvedHostError(OSError):
    """Raised to aiohttp when a host name has no address; aiohttp wraps it."""


class _DnsPythonResolver(aiohttp.abc.AbstractResolver):
    """Lets aiohttp resolve host names through our resolver (or a fixed test address)."""

    def __init__(self, resolver: dns.asyncresolver.Resolver, address: str | None) -> None:
        self._resolver = resolver
        self._address = address

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        guard = CONNECT_GUARD.get()
        if self._address is not None:
            addrs = [self._address]
        elif guard is not None:  # /probe: only the addresses the guard vetted (see exporter.net.guard)
            try:
                addrs = await guard(host, port)
            except ProbeFailure as exc:
                raise _UnresolvedHostError(exc.message) from None
        else:
            looks: list[Lookup] = []
            if family in (socket.AF_INET, socket.AF_UNSPEC):
                looks.append(await resolve(self._resolver, host, dns.rdatatype.A))
            if family in (socket.AF_INET6, socket.AF_UNSPEC):
                looks.append(await resolve(self._resolver, host, dns.rdatatype.AAAA))
            addrs = [rdata.to_text() for look in looks if look.rrset is not None for rdata in look.rrset]
            if not addrs:
                raise _UnresolvedHostError(f"cannot resolve {host}: " + ", ".join(look.message for look in looks))
        out: list[aiohttp.abc.ResolveResult] = []
        for addr in addrs:
            fam = socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET
            out.append(
                {
                    "hostname": host,
                    "host": addr,
                    "port": port,
                    "family": fam,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                }
            )
        return out

    async def close(self) -> None:
        return None


async def fetch_policy(resolver: dns.asyncresolver.Resolver, domain: str, opts: PolicyFetch) -> tuple[str | None, str]:
    """Fetch ``https://mta-sts.<domain>/.well-known/mta-sts.txt``: (body, "") or (None, why)."""
    url = URL.build(scheme="https", host=f"mta-sts.{domain}", port=opts.port, path="/.well-known/mta-sts.txt")
    try:
        ctx = opts.context()
    except (OSError, ssl.SSLError):
        return None, "policy fetch: cannot load ca_file"
    connector = aiohttp.TCPConnector(
        resolver=_DnsPythonResolver(resolver, opts.address),
        ssl=ctx,
        use_dns_cache=False,
        force_close=True,
    )
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=opts.timeout), trust_env=False
            ) as session,
            session.get(url, allow_redirects=False) as resp,
        ):
            if 300 <= resp.status < 400:
                return None, f"policy fetch: HTTP {resp.status} (redirects are not followed)"
            if resp.status != 200:
                return None, f"policy fetch: HTTP {resp.status}"
            if resp.content_type != "text/plain":
                return None, "policy fetch: content type is not text/plain"
            body = bytearray()
            async for chunk in resp.content.iter_any():
                body += chunk
                if len(body) > opts.max_bytes:
                    return None, f"policy fetch: policy larger than {opts.max_bytes} bytes"
            return bytes(body).decode("utf-8", errors="replace"), ""
    except aiohttp.ClientConnectorCertificateError:
        return None, "policy fetch: certificate does not verify"
    except (aiohttp.ClientSSLError, ssl.SSLError):
        return None, "policy fetch: TLS handshake failed"
    except TimeoutError:
        return None, f"policy fetch: timeout after {opts.timeout:g}s"
    except aiohttp.ClientConnectorError as exc:
        # aiohttp >= 3.11 raises ClientConnectorDNSError, older ones ClientConnectorError.
        if isinstance(exc.os_error, _UnresolvedHostError):
            return None, f"policy fetch: cannot resolve mta-sts.{domain}"
        return None, "policy fetch: cannot connect"
    except (aiohttp.ClientError, OSError) as exc:
        return None, f"policy fetch: {type(exc).__name__}"


async def _txt(resolver: dns.asyncresolver.Resolver, name: str) -> list[str] | RecordCheck:
    """The texts of the TXT records at ``name`` ([] when none), or a failed check."""
    look = await resolve(resolver, name, dns.rdatatype.TXT)
    if look.rrset is not None:
        return [join_txt(rdata.strings) for rdata in look.rrset]
    if look.failed:
        return RecordCheck(False, f"lookup failed: {look.message}")
    return []


def _exactly_one(
    texts: list[str] | RecordCheck,
    wanted: Callable[[str], bool],
    parse: Callable[[str], RecordCheck],
    what: str,
) -> RecordCheck:
    if isinstance(texts, RecordCheck):
        return texts
    records = [t for t in texts if wanted(t)]
    if not records:
        return RecordCheck(False, f"no {what} record")
    if len(records) > 1:
        return RecordCheck(False, f"{len(records)} {what} records")
    return parse(records[0])


def _mx_posture(disc: MxDiscovery) -> RecordCheck:
    if disc.null_mx:
        return RecordCheck(False, "null MX: the domain accepts no mail")
    if disc.failure is not None and not disc.implicit:
        return RecordCheck(False, disc.failure.message.partition(": ")[2] or disc.failure.message)
    if disc.implicit:
        return RecordCheck(False, "no MX records")
    if disc.null_mx_mixed:
        return RecordCheck(False, "null MX mixed with other MX records")
    if disc.unresolved:
        return RecordCheck(False, f"MX host {disc.unresolved[0][:64]} has no address")
    return RecordCheck(True, "ok")


async def check_posture(
    resolver: dns.asyncresolver.Resolver,
    domain: str,
    posture: DnsPosture,
    sink: Sink,
    log: logging.Logger,
    *,
    policy_fetch: PolicyFetch | None = None,
) -> bool:
    """Check the mail-related DNS records of ``domain``.  True when every enabled one is ok.

    Records (label ``record``): ``mx`` (real MX records whose hosts resolve), ``spf``
    (exactly one ``v=spf1`` TXT at the domain), ``dmarc`` (``_dmarc.<domain>``),
    ``mta_sts`` (``_mta-sts.<domain>``, plus the HTTPS policy when
    ``posture.mta_sts_fetch_policy``: valid, and in enforce/testing mode covering
    every MX host), ``tls_rpt`` (``_smtp._tls.<domain>``) and ``dkim:<selector>``
    (``<selector>._domainkey.<domain>``).  All lookups run concurrently.  On failure
    the sink gets one :class:`Failure` (reason ``dns``) naming the first bad record.
    """
    name = domain.rstrip(".")
    fetch = policy_fetch if policy_fetch is not None else PolicyFetch()
    mx_task: asyncio.Task[MxDiscovery] | None = None
    if posture.mx or (posture.mta_sts and posture.mta_sts_fetch_policy):
        mx_task = asyncio.ensure_future(discover_mx(resolver, name, _POSTURE_MX_ADDRESSES))

    async def mx_check() -> RecordCheck:
        assert mx_task is not None
        return _mx_posture(await mx_task)

    async def spf_check() -> RecordCheck:
        return _exactly_one(await _txt(resolver, name), is_spf, parse_spf, "SPF")

    async def dmarc_check() -> RecordCheck:
        return _exactly_one(await _txt(resolver, f"_dmarc.{name}"), is_dmarc, parse_dmarc, "DMARC")

    async def tls_rpt_check() -> RecordCheck:
        return _exactly_one(await _txt(resolver, f"_smtp._tls.{name}"), is_tlsrpt, parse_tlsrpt, "TLS-RPT")

    async def dkim_check(selector: str) -> RecordCheck:
        texts = await _txt(resolver, f"{selector}._domainkey.{name}")
        return _exactly_one(texts, is_dkim_candidate, parse_dkim, "DKIM key")

    async def mta_sts_check() -> RecordCheck:
        txt = _exactly_one(await _txt(resolver, f"_mta-sts.{name}"), is_sts, parse_mta_sts_txt, "MTA-STS")
        if not txt.ok or not posture.mta_sts_fetch_policy:
            return txt
        body, why = await fetch_policy(resolver, name, fetch)
        if body is None:
            return RecordCheck(False, why)
        policy = parse_mta_sts_policy(body)
        if not policy.ok:
            return RecordCheck(False, f"policy: {policy.reason}")
        if policy.get("mode") in ("enforce", "testing") and mx_task is not None:
            disc = await mx_task
            patterns = policy.values("mx")
            for host, _ in disc.hosts if not disc.implicit else ():
                if not any(mx_pattern_matches(p, host) for p in patterns):
                    return RecordCheck(False, f"policy does not cover MX {host[:64]}")
        return policy

    checks: dict[str, Callable[[], Awaitable[RecordCheck]]] = {}
    if posture.mx:
        checks["mx"] = mx_check
    if posture.spf:
        checks["spf"] = spf_check
    if posture.dmarc:
        checks["dmarc"] = dmarc_check
    if posture.mta_sts:
        checks["mta_sts"] = mta_sts_check
    if posture.tls_rpt:
        checks["tls_rpt"] = tls_rpt_check
    for selector in posture.dkim_selectors:
        checks[f"dkim:{selector}"] = functools.partial(dkim_check, selector)

    for record in checks:
        sink.gauge("mail_dns_record_ok", 0, domain=domain, record=record)
        sink.detail(record, "not checked yet (timeout?)")

    async def run(record: str, check: Callable[[], Awaitable[RecordCheck]]) -> RecordCheck:
        result = await check()
        sink.gauge("mail_dns_record_ok", 1 if result.ok else 0, domain=domain, record=record)
        sink.detail(record, result.reason)
        if result.ok:
            log.debug("dns record ok: %s %s", domain, record)
        else:
            log.info("dns record not ok: %s %s: %s", domain, record, result.reason)
        return result

    try:
        results = await asyncio.gather(*(run(record, check) for record, check in checks.items()))
    finally:
        if mx_task is not None and not mx_task.done():
            mx_task.cancel()
    bad = [(record, r.reason) for record, r in zip(checks, results, strict=True) if not r.ok]
    if bad:
        sink.fail("dns", f"{bad[0][0]}: {bad[0][1]}", target=domain)
        return False
    return True


# --- DNSBL ---------------------------------------------------------------------------------------


async def check_dnsbl(
    resolver: dns.asyncresolver.Resolver,
    domain: str,
    addresses: Sequence[str],
    zones: Sequence[str],
    sink: Sink,
    log: logging.Logger,
) -> bool:
    """Look up every address on every DNSBL zone.  True when nothing is listed and every
    lookup got a definite answer.

    ``mail_dnsbl_listed`` is 1 only for a real listing code (see
    :func:`~exporter.probers.dnsrecords.classify_dnsbl_answer`).  A blocklist error code
    (127.255.255.x, or an answer outside 127/8) or a failed lookup leaves it at 0 and
    counts ``mail_dnsbl_errors_total`` with reason ``error_code``, ``timeout``,
    ``servfail`` or ``other``.  NXDOMAIN and an empty answer mean not listed.  At most
    a few lookups are in flight at once.  Raises ``ValueError`` for an address that is
    not an IP address (a configuration or programming error).
    """
    addrs = list(dict.fromkeys(addresses))
    zone_list = list(dict.fromkeys(zones))
    for zone in zone_list:
        for reason in DNSBL_ERROR_REASONS:
            sink.state.init_counter("mail_dnsbl_errors_total", domain=domain, zone=zone, reason=reason)
    pairs = [(addr, zone, reverse_ip_query(addr, zone)) for addr in addrs for zone in zone_list]
    for addr, zone, _ in pairs:
        sink.gauge("mail_dnsbl_listed", 0, domain=domain, address=addr, zone=zone)

    sem = asyncio.Semaphore(_CONCURRENCY)

    async def one(addr: str, zone: str, qname: str) -> str:
        async with sem:
            look = await resolve(resolver, qname, dns.rdatatype.A)
        if look.status in ("nxdomain", "nodata"):
            return "clear"
        if look.rrset is not None:
            codes = [rdata.to_text() for rdata in look.rrset]
            shown = ",".join(codes[:4])
            if classify_dnsbl_answer(codes) == "listed":
                sink.gauge("mail_dnsbl_listed", 1, domain=domain, address=addr, zone=zone)
                sink.detail(f"dnsbl:{zone}:{addr}", f"listed ({shown})")
                log.info("address listed on DNSBL: %s on %s (%s)", addr, zone, shown)
                return "listed"
            reason, message = "error_code", f"blocklist error code ({shown})"
        else:
            reason = {"timeout": "timeout", "servfail": "servfail"}.get(look.status, "other")
            message = f"lookup failed: {look.message}"
        sink.state.inc("mail_dnsbl_errors_total", domain=domain, zone=zone, reason=reason)
        sink.detail(f"dnsbl:{zone}:{addr}", message)
        log.info("DNSBL lookup error: %s on %s: %s", addr, zone, message)
        return "error"

    outcomes = await asyncio.gather(*(one(addr, zone, qname) for addr, zone, qname in pairs))
    listed = [pair for pair, outcome in zip(pairs, outcomes, strict=True) if outcome == "listed"]
    errors = [pair for pair, outcome in zip(pairs, outcomes, strict=True) if outcome == "error"]
    if listed:
        addr, zone, _ = listed[0]
        sink.fail("dns", f"{addr} is listed on {zone}", target=domain)
    elif errors:
        addr, zone, _ = errors[0]
        sink.fail("dns", f"DNSBL lookup of {addr} on {zone} failed", target=domain)
    return not listed and not errors
