"""Backup checks (``continuity.datasets[].backups``): the newest good backup of a dataset.

One check per backup source, kind ``backup``, named ``dataset/backup``.  A run reads
the source (:mod:`exporter.continuity.sources`), exports its timestamp and hands the
reading to the continuity service, which folds it into the dataset's RPO estimate::

    mail_backup_up{dataset, backup}                            1 when fresh (age <= max_age)
    mail_backup_last_success_timestamp_seconds{dataset, backup}
"""

from __future__ import annotations

__all__ = ["backup_check"]

import logging
import time
from collections.abc import Iterable

from exporter import config as cfgmod
from exporter.checks.registry import BuildContext, ContinuityHooks, check_kind
from exporter.continuity.service import source_names
from exporter.continuity.sources import SourceError, backup_timeout, read_backup
from exporter.core.model import Sink
from exporter.core.scheduler import Check
from exporter.core.timefmt import format_time


def backup_check(
    dataset: str, name: str, b: cfgmod.BackupConfig, g: cfgmod.GlobalConfig, hooks: ContinuityHooks
) -> Check:
    async def run(sink: Sink, log: logging.Logger) -> bool:
        now = time.time()
        sink.gauge("mail_backup_up", 0.0, dataset=dataset, backup=name)
        try:
            ts = await read_backup(b, now)
        except SourceError as exc:
            sink.fail(exc.reason, str(exc))
            hooks.record_backup(dataset, name, None, False)
            return False
        age = now - ts
        sink.gauge("mail_backup_last_success_timestamp_seconds", ts, dataset=dataset, backup=name)
        sink.detail("newest", f"{format_time(ts)} ({age:.0f}s ago)")
        good = age <= b.max_age
        if not good:
            sink.fail("stale", f"newest backup is {age:.0f}s old, more than max_age {b.max_age:g}s")
        else:
            sink.gauge("mail_backup_up", 1.0, dataset=dataset, backup=name)
        hooks.record_backup(dataset, name, ts, good)
        return good

    timeout = backup_timeout(b, g.timeout) + 1.0
    return Check("backup", f"{dataset}/{name}", g.interval, timeout, (dataset, name, b), run)


@check_kind("backup", order=50)
def build(cfg: cfgmod.Config, ctx: BuildContext) -> Iterable[Check]:
    hooks = ctx.hooks
    for ds in cfg.continuity.datasets:
        for name, b in zip(source_names(ds.backups), ds.backups, strict=True):
            yield backup_check(ds.name, name, b, cfg.global_, hooks)
