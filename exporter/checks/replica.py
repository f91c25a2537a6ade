"""Replica checks (``continuity.datasets[].replicas``): replication lag of a dataset's copies.

One check per replica source, kind ``replica``, named ``dataset/replica``.  A run
measures the lag (an IMAP canary written on the primary and awaited on the replica, or a
command's answer; see :mod:`exporter.continuity.sources`) and hands it to the continuity
service for the dataset's RPO estimate::

    mail_replication_up{dataset, replica}            1 when the last measurement succeeded
    mail_replication_lag_seconds{dataset, replica}
"""

from __future__ import annotations

__all__ = ["replica_check"]

import logging
from collections.abc import Iterable

from exporter import config as cfgmod
from exporter.checks.registry import BuildContext, ContinuityHooks, check_kind
from exporter.continuity.service import source_names
from exporter.continuity.sources import SourceError, measure_replica, replica_timeout
from exporter.core.model import Sink
from exporter.core.scheduler import Check


def replica_check(dataset: str, name: str, r: cfgmod.ReplicaConfig, hooks: ContinuityHooks) -> Check:
    async def run(sink: Sink, log: logging.Logger) -> bool:
        sink.gauge("mail_replication_up", 0.0, dataset=dataset, replica=name)
        try:
            lag = await measure_replica(r, log)
        except SourceError as exc:
            sink.fail(exc.reason, str(exc))
            hooks.record_replica(dataset, name, None, False)
            return False
        sink.gauge("mail_replication_up", 1.0, dataset=dataset, replica=name)
        sink.gauge("mail_replication_lag_seconds", lag, dataset=dataset, replica=name)
        sink.detail("lag", f"{lag:.3f}s")
        hooks.record_replica(dataset, name, lag, True)
        return True

    def on_timeout(check: Check, sink: Sink) -> None:
        sink.fail("timeout", f"no measurement within {check.timeout:g}s")
        hooks.record_replica(dataset, name, None, False)

    return Check("replica", f"{dataset}/{name}", r.interval, replica_timeout(r), (dataset, name, r), run, on_timeout)


@check_kind("replica", order=60)
def build(cfg: cfgmod.Config, ctx: BuildContext) -> Iterable[Check]:
    hooks = ctx.hooks
    for ds in cfg.continuity.datasets:
        for name, r in zip(source_names(ds.replicas), ds.replicas, strict=True):
            yield replica_check(ds.name, name, r, hooks)
