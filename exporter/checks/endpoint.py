"""Endpoint checks (``endpoints:``): one SMTP or IMAP probe of a named endpoint.

Each endpoint is also a ``/probe`` module of its name: ``target`` defaults to the
endpoint's ``address``, and the probe runs with the endpoint's settings.
"""

from __future__ import annotations

__all__ = ["endpoint_check", "endpoint_module", "probe_settings"]

import logging
from collections.abc import Iterable
from typing import Any

from exporter import config as cfgmod
from exporter.checks.probing import GRACE, run_probe
from exporter.checks.registry import BuildContext, ProbeModule, check_kind, probe_module_kind
from exporter.core.model import Sink
from exporter.core.scheduler import Check
from exporter.net.tls import prewarm
from exporter.probers.imap import ImapProbeSettings
from exporter.probers.smtp import SmtpProbeSettings


def probe_settings(ep: cfgmod.EndpointConfig) -> Any:
    """The prober settings of an endpoint (each protocol has its own settings type)."""
    if ep.protocol == "smtp":
        return SmtpProbeSettings.from_endpoint(ep)
    return ImapProbeSettings.from_endpoint(ep)


def endpoint_check(ep: cfgmod.EndpointConfig, g: cfgmod.GlobalConfig) -> Check:
    timeout = ep.timeout or g.timeout
    settings = probe_settings(ep)

    async def run(sink: Sink, log: logging.Logger) -> bool:
        return await run_probe(ep.protocol, ep.address, settings, sink, log, check=ep.name, timeout=timeout)

    return Check(ep.protocol, ep.name, ep.interval or g.interval, timeout + GRACE, ep, run)


def endpoint_module(ep: cfgmod.EndpointConfig, g: cfgmod.GlobalConfig) -> ProbeModule:
    settings = probe_settings(ep)

    async def run(target: str, sink: Sink, log: logging.Logger, timeout: float) -> bool:
        return await run_probe(ep.protocol, target, settings, sink, log, check=ep.name, timeout=timeout)

    return ProbeModule(ep.name, ep.protocol, ep.address, ep.timeout or g.timeout, run)


@check_kind("endpoint", order=10)
def build(cfg: cfgmod.Config, ctx: BuildContext) -> Iterable[Check]:
    checks = [endpoint_check(ep, cfg.global_) for ep in cfg.endpoints]
    prewarm(probe_settings(ep).tls_settings for ep in cfg.endpoints if ep.tls != "none")
    return checks


@probe_module_kind("endpoint", order=10)
def modules(cfg: cfgmod.Config) -> Iterable[ProbeModule]:
    return [endpoint_module(ep, cfg.global_) for ep in cfg.endpoints]
