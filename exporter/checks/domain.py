"""Domain checks: MX redundancy, DNS posture and DNSBL listings, per configured domain.

``mx``: discover the MX hosts and their addresses, probe every address on the
domain's SMTP port (concurrently), and report::

    mail_mx_records{domain}       MX records published (0 for null MX or implicit MX)
    mail_mx_healthy{domain}       MX hosts with at least one address that passed the SMTP probe
    mail_mx_min_healthy{domain}   the configured N+1 objective
    mail_smtp_up{check=domain, target="mxhost[address]:port"} ... per address

The target label uses Postfix's ``host[address]:port`` notation: the probe connects
to the address and checks the certificate against the MX host name.

``dns``: the posture records (see :func:`exporter.probers.dns.check_posture`).
``dnsbl``: every MX address and every configured sending IP on every zone.
"""

from __future__ import annotations

__all__ = ["domain_checks", "domain_module"]

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterable

from exporter import config as cfgmod
from exporter.checks.probing import GRACE, run_probe
from exporter.checks.registry import BuildContext, ProbeModule, check_kind, probe_module_kind
from exporter.core.model import Failure, Sink
from exporter.core.scheduler import Check
from exporter.net.dane import lookup_tlsa
from exporter.net.tls import ProbeFailure, TlsJudge, TLSReport, prewarm
from exporter.probers.dns import PolicyFetch, check_dnsbl, check_posture, discover_mx, make_resolver
from exporter.probers.policy import (
    STS_MODES,
    HostPolicy,
    PolicyName,
    StsCache,
    StsState,
    Verdict,
    host_policy,
    judge,
)
from exporter.probers.smtp import SmtpProbeSettings


def mx_target(host: str, address: str, port: int) -> str:
    return f"{host}[{address}]:{port}"


def _dnssec(sink: Sink, domain: str, record: str, validated: bool, bogus: bool) -> None:
    sink.gauge("mail_dns_dnssec_validated", int(validated), domain=domain, record=record)
    sink.gauge("mail_dns_dnssec_bogus", int(bogus), domain=domain, record=record)


def _emit_sts(sink: Sink, domain: str, sts: StsState, now: float) -> None:
    for mode in STS_MODES:
        sink.gauge("mail_mta_sts_policy_mode", int(sts.mode == mode), domain=domain, mode=mode)
    _dnssec(sink, domain, "mta_sts", sts.txt_validated, sts.txt_bogus)
    if sts.txt == "present":
        sink.gauge("mail_mta_sts_policy_fetch_ok", int(bool(sts.fetch_ok)), domain=domain)
    if sts.policy is not None:
        sink.gauge("mail_mta_sts_policy_age_seconds", max(0.0, now - sts.policy.fetched_at), domain=domain)
        sink.gauge("mail_mta_sts_policy_max_age_seconds", sts.policy.max_age, domain=domain)
    detail = f"TXT: {sts.txt_message}; mode in force: {sts.mode}"
    if sts.txt == "present" and sts.fetch_ok is False:
        detail += f"; last policy fetch failed: {sts.fetch_message}"
    sink.detail("mta-sts", detail)


class _Judges:
    """The per-MX-host TLS judges of one MX check run, and what they saw."""

    def __init__(self, policies: dict[str, HostPolicy], verify: bool | None) -> None:
        self.policies = policies
        self.verify = verify
        self.verdicts: dict[str, list[Verdict]] = {host: [] for host in policies}

    def for_host(self, host: str) -> TlsJudge:
        policy = self.policies[host]

        def judge_session(report: TLSReport | None, chain: tuple[bytes, ...]) -> ProbeFailure | None:
            verdict = judge(policy, report, chain)
            self.verdicts[host].append(verdict)
            if verdict.ok or not self.enforced(policy):
                return None  # e.g. MTA-STS testing: reported, not enforced
            return ProbeFailure(verdict.reason, verdict.message)

        return judge_session

    def enforced(self, policy: HostPolicy) -> bool:
        """Whether failing ``policy`` fails health: as published, unless ``verify`` is set."""
        return self.verify is True or (self.verify is None and policy.enforced)

    def label(self, host: str) -> PolicyName:
        if self.verify is True:
            return "strict"
        if self.verify is False:
            return "opportunistic"
        return self.policies[host].label

    def emit(self, sink: Sink, domain: str) -> None:
        for host, policy in self.policies.items():
            sink.gauge("mail_mx_policy", 1, domain=domain, mx=host, policy=self.label(host))
            seen = self.verdicts[host]
            if not seen:
                continue  # no address got as far as TLS: mail_smtp_up says why
            sink.gauge("mail_mx_policy_ok", int(all(v.ok for v in seen)), domain=domain, mx=host)
            matches = [v.tlsa_match for v in seen if v.tlsa_match is not None]
            if matches:
                sink.gauge("mail_mx_tlsa_match", int(all(matches)), domain=domain, mx=host)
            bad = next((v for v in seen if not v.ok), None)
            if bad is not None:
                note = "" if self.enforced(policy) else " (not enforced)"
                sink.detail(f"policy {host}", f"{bad.message}{note}")
            else:
                sink.detail(f"policy {host}", f"{policy.published}: ok")


async def run_mx(
    d: cfgmod.DomainConfig,
    g: cfgmod.GlobalConfig,
    sink: Sink,
    log: logging.Logger,
    probe_timeout: float,
    sts_cache: StsCache,
) -> bool:
    domain = d.domain
    sink.gauge("mail_mx_min_healthy", d.min_healthy_mx, domain=domain)
    sink.gauge("mail_mx_healthy", 0, domain=domain)
    resolver = make_resolver(g.resolver)
    disc = await discover_mx(resolver, domain, d.max_mx_addresses)
    sink.gauge("mail_mx_records", disc.records, domain=domain)
    _dnssec(sink, domain, "mx", disc.validated, disc.bogus)
    for note in disc.errors:
        sink.detail("mx discovery", note)
    if disc.failure is not None:
        sink.fail(disc.failure.reason, disc.failure.message, target=domain)
        return False
    if disc.null_mx:
        sink.detail("mx", "null MX: the domain accepts no mail")
        return d.min_healthy_mx == 0
    port = d.smtp.port
    hosts = list(dict.fromkeys(t.host for t in disc.targets))
    sts_task = asyncio.ensure_future(sts_cache.state(resolver, domain))
    try:
        tlsas = await asyncio.gather(*(lookup_tlsa(resolver, host, port) for host in hosts))
        sts = await sts_task
    finally:
        sts_task.cancel()  # a no-op once done; stops the fetch when the check is cut off
    _emit_sts(sink, domain, sts, time.time())
    policies: dict[str, HostPolicy] = {}
    for host, tlsa in zip(hosts, tlsas, strict=True):
        _dnssec(sink, domain, f"tlsa:{host}", tlsa.validated, tlsa.status == "bogus")
        policies[host] = host_policy(host, tlsa, sts.policy, mx_validated=disc.validated, domain=domain)
    tls_config = d.smtp.tls_config
    judges = _Judges(policies, tls_config.verify)
    base = SmtpProbeSettings.from_domain(d.smtp)
    if tls_config.verify is None:  # the policy decides, not the certificate alone
        base = dataclasses.replace(base, tls_settings=dataclasses.replace(tls_config, verify=False))
    targets = [(t.host, mx_target(t.host, t.address, port)) for t in disc.targets]
    results = await asyncio.gather(
        *(
            run_probe(
                "smtp",
                target,
                dataclasses.replace(base, tls_judge=judges.for_host(host)),
                sink,
                log,
                check=domain,
                timeout=probe_timeout,
            )
            for host, target in targets
        )
    )
    judges.emit(sink, domain)
    healthy_hosts = {host for (host, _), ok in zip(targets, results, strict=True) if ok}
    sink.gauge("mail_mx_healthy", len(healthy_hosts), domain=domain)
    if all(results):
        return True
    # Summarise: the per-address failures are already counted in mail_probe_failures_total.
    first = sink.failures[0]
    summary = (
        f"{len(healthy_hosts)} of {len(disc.hosts)} MX hosts healthy (objective {d.min_healthy_mx}); "
        f"{first.target}: {first.message}"
    )
    sink.failures[:] = [Failure(first.reason, summary, first.target)]
    return False


def _timeouts(d: cfgmod.DomainConfig, g: cfgmod.GlobalConfig) -> tuple[float, float]:
    """(timeout of one SMTP probe, timeout of the whole check).

    The whole check: discovery (the MX lookup, asked again with checking disabled after a
    SERVFAIL, then the addresses), the policy lookups (TXT and TLSA, each possibly asked
    twice, and the MTA-STS fetch), then the probes.
    """
    probe = d.smtp.timeout or d.timeout or g.timeout
    rt = g.resolver.timeout
    return probe, 5 * rt + d.mta_sts.timeout + probe + GRACE  # discovery 3, policy 2 resolver timeouts


def sts_cache_for(d: cfgmod.DomainConfig) -> StsCache:
    return StsCache(PolicyFetch.from_settings(d.mta_sts), d.mta_sts.refresh)


def domain_checks(d: cfgmod.DomainConfig, g: cfgmod.GlobalConfig) -> list[Check]:
    interval = d.interval or g.interval
    probe_timeout, check_timeout = _timeouts(d, g)
    make_resolver(g.resolver)  # fail at load time, not at the first run, when no resolver can be built

    sts_cache = sts_cache_for(d)

    async def mx(sink: Sink, log: logging.Logger) -> bool:
        return await run_mx(d, g, sink, log, probe_timeout, sts_cache)

    out = [Check("mx", d.domain, interval, check_timeout, d, mx)]
    posture = d.dns
    if posture.mx or posture.spf or posture.dmarc or posture.mta_sts or posture.tls_rpt or posture.dkim_selectors:
        fetch = PolicyFetch.from_settings(d.mta_sts)

        async def dns_posture(sink: Sink, log: logging.Logger) -> bool:
            return await check_posture(make_resolver(g.resolver), d.domain, posture, sink, log, policy_fetch=fetch)

        out.append(Check("dns", d.domain, interval, 3 * g.resolver.timeout + GRACE + d.mta_sts.timeout, d, dns_posture))
    if d.dnsbl:

        async def dnsbl(sink: Sink, log: logging.Logger) -> bool:
            resolver = make_resolver(g.resolver)
            addresses = list(d.sending_ips)
            disc = await discover_mx(resolver, d.domain, d.max_mx_addresses)
            addresses.extend(t.address for t in disc.targets)
            if disc.failure is not None:
                sink.detail("mx discovery", disc.failure.message)
            return await check_dnsbl(resolver, d.domain, addresses, d.dnsbl, sink, log)

        out.append(Check("dnsbl", d.domain, interval, 3 * g.resolver.timeout + GRACE, d, dnsbl))
    return out


def domain_module(d: cfgmod.DomainConfig, g: cfgmod.GlobalConfig) -> ProbeModule:
    """``/probe?module=<domain>``: the MX check of that domain, live.  ``target`` is a domain name."""
    probe_timeout, check_timeout = _timeouts(d, g)

    async def run(target: str, sink: Sink, log: logging.Logger, timeout: float) -> bool:
        cfg = dataclasses.replace(d, domain=target) if target != d.domain else d
        async with asyncio.timeout(timeout):  # a fresh MTA-STS cache: targets vary per request
            return await run_mx(cfg, g, sink, log, min(probe_timeout, timeout), sts_cache_for(d))

    return ProbeModule(d.domain, "mx", d.domain, check_timeout, run)


@check_kind("domain", order=20)
def build(cfg: cfgmod.Config, ctx: BuildContext) -> Iterable[Check]:
    checks = [c for d in cfg.domains for c in domain_checks(d, cfg.global_)]
    settings = (SmtpProbeSettings.from_domain(d.smtp) for d in cfg.domains)
    prewarm(s.tls_settings for s in settings if s.tls != "none")
    return checks


@probe_module_kind("domain", order=20)
def modules(cfg: cfgmod.Config) -> Iterable[ProbeModule]:
    return [domain_module(d, cfg.global_) for d in cfg.domains]
