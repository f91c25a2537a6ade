"""The reconcile check (``continuity.reconcile``): the incident store against Alertmanager.

Kind ``reconcile``, named ``alertmanager``.  A run asks Alertmanager for its active
alerts and closes what Alertmanager no longer has (a lost "resolved" notification); the
work is the continuity service's :meth:`~exporter.continuity.service.Continuity.reconcile_once`.
"""

from __future__ import annotations

__all__ = ["RECONCILE_TIMEOUT"]

import logging
from collections.abc import Iterable

from exporter import config as cfgmod
from exporter.checks.registry import BuildContext, check_kind
from exporter.continuity.service import RECONCILE_TIMEOUT
from exporter.core.model import Sink
from exporter.core.scheduler import Check


@check_kind("reconcile", order=70)
def build(cfg: cfgmod.Config, ctx: BuildContext) -> Iterable[Check]:
    rc = cfg.continuity.reconcile
    if not rc.alertmanager_url:
        return []
    url = rc.alertmanager_url.rstrip("/")
    hooks = ctx.hooks

    async def reconcile(sink: Sink, log: logging.Logger) -> bool:
        return await hooks.reconcile_once(url, sink)

    timeout = min(RECONCILE_TIMEOUT, rc.interval)
    return [Check("reconcile", "alertmanager", rc.interval, timeout + 1.0, rc, reconcile)]
