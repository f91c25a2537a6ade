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
from collections.abc import Iterable

from exporter import config as cfgmod
from exporter.checks.probing import GRACE, run_probe
from exporter.checks.registry import BuildContext, ProbeModule, check_kind, probe_module_kind
from exporter.core.model import Failure, Sink
from exporter.core.scheduler import Check
from exporter.net.tls import prewarm
from exporter.probers.dns import check_dnsbl, check_posture, discover_mx, make_resolver
from exporter.probers.smtp import SmtpProbeSettings


def mx_target(host: str, address: str, port: int) -> str:
    return f"{host}[{address}]:{port}"


async def run_mx(
    d: cfgmod.DomainConfig, g: cfgmod.GlobalConfig, sink: Sink, log: logging.Logger, probe_timeout: float
) -> bool:
    domain = d.domain
    sink.gauge("mail_mx_min_healthy", d.min_healthy_mx, domain=domain)
    sink.gauge("mail_mx_healthy", 0, domain=domain)
    resolver = make_resolver(g.resolver)
    disc = await discover_mx(resolver, domain, d.max_mx_addresses)
    sink.gauge("mail_mx_records", disc.records, domain=domain)
    for note in disc.errors:
        sink.detail("mx discovery", note)
    if disc.failure is not None:
        sink.fail(disc.failure.reason, disc.failure.message, target=domain)
        return False
    if disc.null_mx:
        sink.detail("mx", "null MX: the domain accepts no mail")
        return d.min_healthy_mx == 0
    settings = SmtpProbeSettings.from_domain(d.smtp)
    port = d.smtp.port
    targets = [(t.host, mx_target(t.host, t.address, port)) for t in disc.targets]
    results = await asyncio.gather(
        *(run_probe("smtp", target, settings, sink, log, check=domain, timeout=probe_timeout) for _, target in targets)
    )
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
    """(timeout of one SMTP probe, timeout of the whole check: discovery + probes)."""
    probe = d.smtp.timeout or d.timeout or g.timeout
    return probe, 2 * g.resolver.timeout + probe + GRACE


def domain_checks(d: cfgmod.DomainConfig, g: cfgmod.GlobalConfig) -> list[Check]:
    interval = d.interval or g.interval
    probe_timeout, check_timeout = _timeouts(d, g)
    make_resolver(g.resolver)  # fail at load time, not at the first run, when no resolver can be built

    async def mx(sink: Sink, log: logging.Logger) -> bool:
        return await run_mx(d, g, sink, log, probe_timeout)

    out = [Check("mx", d.domain, interval, check_timeout, d, mx)]
    posture = d.dns
    if posture.mx or posture.spf or posture.dmarc or posture.mta_sts or posture.tls_rpt or posture.dkim_selectors:

        async def dns_posture(sink: Sink, log: logging.Logger) -> bool:
            return await check_posture(make_resolver(g.resolver), d.domain, posture, sink, log)

        out.append(Check("dns", d.domain, interval, 3 * g.resolver.timeout + GRACE + 10, d, dns_posture))
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
        async with asyncio.timeout(timeout):
            return await run_mx(cfg, g, sink, log, min(probe_timeout, timeout))

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
