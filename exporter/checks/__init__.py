"""Turns a :class:`~exporter.config.Config` into scheduled :class:`~exporter.core.scheduler.Check` objects.

Each config section maps to one kind of check:

========== =================================================================
kind       what one run does
========== =================================================================
smtp/imap  probe a named endpoint (``endpoints:``)
mx         discover a domain's MX hosts and probe every address on its SMTP port
dns        check a domain's DNS posture (MX, SPF, DMARC, MTA-STS, TLS-RPT, DKIM)
dnsbl      look every MX address and sending IP up on the configured blocklists
queue      read a mail queue (Postfix, Exim, a directory, a command)
route      send a probe message and find it in the mailbox (``routes:``)
========== =================================================================

Backup, replica and reconcile checks come from :mod:`exporter.continuity`.

The same prober functions serve ``/probe`` through :data:`PROBERS`.
"""

from __future__ import annotations

__all__ = ["PROBERS", "build", "probe_modules", "run_probe"]

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from exporter import config as cfgmod
from exporter.core.model import Sink
from exporter.core.scheduler import Check
from exporter.probers import ProbeFn
from exporter.probers.imap import ImapProbeSettings, probe_imap
from exporter.probers.smtp import SmtpProbeSettings, probe_smtp
from exporter.web.probe import ProbeModule

if TYPE_CHECKING:
    from exporter.app import Exporter

#: protocol name -> prober; the scheduler and /probe both call through this map.
PROBERS: dict[str, ProbeFn] = {"smtp": probe_smtp, "imap": probe_imap}

#: Extra time the scheduler allows a check beyond the timeout it hands its probes,
#: so that the probe's own timeout (with its precise reason and target) fires first.
GRACE = 1.0


async def run_probe(
    protocol: str,
    target: str,
    settings: Any,
    sink: Sink,
    log: logging.Logger,
    *,
    check: str,
    timeout: float,
) -> bool:
    """Run one prober under a timeout; a timeout becomes a failure with reason ``timeout``."""
    sink.init_failures(protocol, check, target)
    try:
        async with asyncio.timeout(timeout):
            return await PROBERS[protocol](target, settings, sink, log, check=check)
    except TimeoutError:
        sink.fail("timeout", f"no complete answer within {timeout:g}s", protocol=protocol, check=check, target=target)
        return False


def _endpoint_check(ep: cfgmod.EndpointConfig, g: cfgmod.GlobalConfig) -> Check:
    timeout = ep.timeout or g.timeout
    settings: Any
    settings = SmtpProbeSettings.from_endpoint(ep) if ep.protocol == "smtp" else ImapProbeSettings.from_endpoint(ep)

    async def run(sink: Sink, log: logging.Logger) -> bool:
        return await run_probe(ep.protocol, ep.address, settings, sink, log, check=ep.name, timeout=timeout)

    return Check(ep.protocol, ep.name, ep.interval or g.interval, timeout + GRACE, ep, run)


def _endpoint_module(ep: cfgmod.EndpointConfig, g: cfgmod.GlobalConfig) -> ProbeModule:
    settings: Any = (
        SmtpProbeSettings.from_endpoint(ep) if ep.protocol == "smtp" else ImapProbeSettings.from_endpoint(ep)
    )

    async def run(target: str, sink: Sink, log: logging.Logger, timeout: float) -> bool:
        return await run_probe(ep.protocol, target, settings, sink, log, check=ep.name, timeout=timeout)

    return ProbeModule(ep.name, ep.protocol, ep.address, ep.timeout or g.timeout, run)


def probe_modules(cfg: cfgmod.Config) -> dict[str, ProbeModule]:
    """The modules ``/probe`` offers: every endpoint and every domain, by name."""
    from exporter.checks.domain import domain_module

    g = cfg.global_
    modules = {ep.name: _endpoint_module(ep, g) for ep in cfg.endpoints}
    for d in cfg.domains:
        modules.setdefault(d.domain, domain_module(d, g))
    return modules


def build(cfg: cfgmod.Config, exporter: Exporter | None) -> list[Check]:
    """Build every check the config describes.  ``exporter`` is None for --config.check."""
    from exporter.checks.domain import domain_checks
    from exporter.checks.queue import queue_check
    from exporter.checks.route import route_check

    g = cfg.global_
    out: list[Check] = []
    for ep in cfg.endpoints:
        out.append(_endpoint_check(ep, g))
    for domain in cfg.domains:
        out.extend(domain_checks(domain, g))
    for queue in cfg.queues:
        out.append(queue_check(queue, g))
    for route in cfg.routes:
        out.append(route_check(route, g))
    _prewarm_tls(cfg)
    return out


def _prewarm_tls(cfg: cfgmod.Config) -> None:
    """Build the TLS contexts now: loading a trust store takes ~50 ms, which would
    otherwise stall the event loop (and /metrics) during a check's first run."""
    from exporter.net.tls import client_context

    settings = [ep.tls_config for ep in cfg.endpoints if ep.tls != "none"]
    settings += [d.smtp.tls for d in cfg.domains if d.smtp.starttls != "none"]
    for tls in set(settings):
        for verify in (True, False):
            try:
                client_context(tls, verify=verify)
            except (OSError, ValueError):
                pass  # an unreadable ca_file is reported by the probe itself, as reason "tls"
