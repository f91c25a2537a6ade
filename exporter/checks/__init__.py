"""Turns a :class:`~exporter.config.Config` into scheduled :class:`~exporter.core.scheduler.Check` objects.

One module per check kind, each registering its builder in :mod:`exporter.checks.registry`:

============== =========== ===================================================================
module         kind        what one run does
============== =========== ===================================================================
endpoint       smtp/imap   probe a named endpoint (``endpoints:``); also a ``/probe`` module
domain         mx          discover a domain's MX hosts and probe every address on its SMTP port
domain         dns         check a domain's DNS posture (MX, SPF, DMARC, MTA-STS, TLS-RPT, DKIM)
domain         dnsbl       look every MX address and sending IP up on the configured blocklists
queue          queue       read a mail queue (Postfix, Exim, a directory, a command)
logs           log         count real mail flow from a log file, the journal or syslog (``logs:``)
route          route       send a probe message and find it in the mailbox (``routes:``)
backup         backup      the newest backup of a dataset (``continuity.datasets[].backups``)
replica        replica     a dataset's replication lag (``continuity.datasets[].replicas``)
reconcile      reconcile   the incident store against Alertmanager (``continuity.reconcile``)
============== =========== ===================================================================

:func:`build` is the only entry point the app uses; ``/probe`` uses :func:`probe_modules`.
Adding a kind is one module here (imported below so that it registers) plus its schema
entry in :mod:`exporter.config`; see docs/architecture.md.
"""

from __future__ import annotations

__all__ = ["GRACE", "PROBERS", "BuildContext", "ContinuityHooks", "ProbeModule", "build", "probe_modules", "run_probe"]

from exporter.checks import (  # noqa: F401 (registration)
    backup,
    domain,
    endpoint,
    logs,
    queue,
    reconcile,
    replica,
    route,
)
from exporter.checks.probing import GRACE, PROBERS, run_probe
from exporter.checks.registry import BuildContext, ContinuityHooks, ProbeModule, builders, probe_modules
from exporter.config import Config
from exporter.core.scheduler import Check


def build(cfg: Config, ctx: BuildContext | None = None) -> list[Check]:
    """Every check the config describes, from every registered kind, in registry order.

    ``ctx`` carries the running exporter's hooks; ``None`` (``--config.check``) builds with
    no-op hooks, which validates without side effects.
    """
    context = ctx if ctx is not None else BuildContext()
    out: list[Check] = []
    for _, builder in builders():
        out.extend(builder(cfg, context))
    return out
