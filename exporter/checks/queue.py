"""Queue checks: one per configured queue source (see :mod:`exporter.queues`)."""

from __future__ import annotations

__all__ = ["queue_check"]

import logging
from collections.abc import Iterable

from exporter import config as cfgmod
from exporter.checks.registry import BuildContext, check_kind
from exporter.core.model import Sink
from exporter.core.scheduler import Check
from exporter.queues import read_queue


def queue_check(q: cfgmod.QueueConfig, g: cfgmod.GlobalConfig) -> Check:
    timeout = q.timeout or g.timeout
    cache: dict[str, object] = {}  # lives as long as the check: the spool scanner's arrival-time cache

    async def run(sink: Sink, log: logging.Logger) -> bool:
        return await read_queue(q, sink, log, cache=cache)

    def on_timeout(check: Check, sink: Sink) -> None:
        sink.gauge("mail_queue_up", 0, source=q.name)
        sink.fail("timeout", f"queue read did not finish within {timeout:g}s")

    return Check("queue", q.name, q.interval or g.interval, timeout, q, run, on_timeout=on_timeout)


@check_kind("queue", order=30)
def build(cfg: cfgmod.Config, ctx: BuildContext) -> Iterable[Check]:
    return [queue_check(q, cfg.global_) for q in cfg.queues]
