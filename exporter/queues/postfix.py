"""The ``postfix`` reader: find the queue directory, choose among three readers, read.

The three give the same results (the tests hold them to the same ground truth):

- ``spool`` (:mod:`exporter.queues.spool`) walks the queue directories; needs root
  or the postfix user.
- ``showq`` (:mod:`exporter.queues.showq`) streams the public ``showq`` socket;
  works unprivileged (in the ``postdrop`` group).
- ``postqueue`` (:mod:`exporter.queues.postqueue`) runs ``postqueue -j``; the last
  resort.

``reader: auto`` picks ``spool`` when the deferred directory is readable, else
``showq`` when the socket accepts a connection, else ``postqueue``; the choice is
made on every read and reported in ``ctx.progress.reader``.
"""

from __future__ import annotations

__all__ = ["read_postfix"]

import os

from exporter.config import PostfixQueue
from exporter.queues.postqueue import read_postqueue
from exporter.queues.registry import ReadContext, register
from exporter.queues.showq import connect, queue_directory, read_showq
from exporter.queues.spool import read_spool
from exporter.queues.stats import QueueStats


@register("postfix")
async def read_postfix(ctx: ReadContext[PostfixQueue]) -> QueueStats:
    """Read with the configured reader (or the one ``auto`` picks); name the top destinations."""
    stats = await _read(ctx)
    stats.top_destinations = ctx.cfg.top_destinations
    return stats


async def _read(ctx: ReadContext[PostfixQueue]) -> QueueStats:
    cfg, log, cache, progress = ctx.cfg, ctx.log, ctx.cache, ctx.progress
    reader: str = cfg.reader
    progress.reader = reader
    if reader == "postqueue":
        return await read_postqueue(cfg, log)
    queue_dir = await queue_directory(cfg.config_directory, log, cache)
    if reader == "auto":
        deferred = os.path.join(queue_dir, "deferred")
        if os.access(deferred, os.R_OK | os.X_OK):
            reader = "spool"
        else:
            progress.reader = "showq"
            try:
                conn = await connect(queue_dir)
            except OSError as exc:
                log.debug(
                    "showq socket not usable; falling back to postqueue",
                    extra={"kv": {"source": cfg.name, "err": str(exc)}},
                )
                progress.reader = "postqueue"
                return await read_postqueue(cfg, log)
            return await read_showq(conn, log)
    progress.reader = reader
    if reader == "spool":
        return await read_spool(queue_dir, log, cache, ctx.deadline)
    return await read_showq(await connect(queue_dir), log)
