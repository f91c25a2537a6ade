"""Route checks: one end-to-end delivery probe per configured route (see :mod:`exporter.roundtrip`)."""

from __future__ import annotations

__all__ = ["route_check", "route_grace"]

import logging
from collections.abc import Callable, Iterable

from exporter import config as cfgmod
from exporter.checks.registry import BuildContext, check_kind
from exporter.core.model import Sink
from exporter.core.scheduler import Check
from exporter.net.tls import prewarm
from exporter.roundtrip.route import Route

#: Slack beyond the run's own bounds, so that the run (not the scheduler) always ends it.
_SLACK = 1.0


def route_grace(g: cfgmod.GlobalConfig) -> float:
    """Time a run may take beyond ``route.timeout``: connecting to the mailbox, sending
    the probe and the last search at the deadline, each bounded by ``global.timeout``."""
    return 3 * g.timeout + _SLACK


def _tls_of(route: cfgmod.RouteConfig) -> list[tuple[str, cfgmod.TLSSettings]]:
    return [(route.send.tls, route.send.tls_config), (route.receive.tls, route.receive.tls_config)]


def route_check(
    route: cfgmod.RouteConfig, g: cfgmod.GlobalConfig, *, may_sweep: Callable[[], bool] | None = None
) -> Check:
    """A check of kind ``route`` named after the route; its counters live in the route's state.

    ``may_sweep`` says whether this exporter may sweep old probe mail now (the lease holder
    of an HA pair); unset, it always may.
    """
    prewarm(tls_config for mode, tls_config in _tls_of(route) if mode != "none")
    runner = Route(
        route,
        imap_timeout=g.timeout,
        send_timeout=g.timeout,
        log=logging.getLogger("exporter.route"),
        may_sweep=may_sweep,
    )

    def on_timeout(check: Check, sink: Sink) -> None:
        runner.on_timeout(sink)

    return Check(
        "route",
        route.name,
        route.interval,
        route.timeout + route_grace(g),
        route,
        runner.run,
        on_timeout=on_timeout,
        state=runner.state,
    )


@check_kind("route", order=40)
def build(cfg: cfgmod.Config, ctx: BuildContext) -> Iterable[Check]:
    may_sweep = ctx.continuity.is_leader if ctx.continuity is not None else None
    return [route_check(r, cfg.global_, may_sweep=may_sweep) for r in cfg.routes]
