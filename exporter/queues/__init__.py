"""Mail queue readers: exact depth, size and age of Postfix, Exim and other queues.

One entry point, :func:`read_queue`, looks up the reader of the source's ``type`` in
:data:`exporter.queues.registry.READERS` (one signature for all; how to add one is
in :mod:`exporter.queues.registry`).  What the readers share (the counts of a read,
the cache, reason classes) is in :mod:`exporter.queues.stats`.

- ``postfix`` (:mod:`exporter.queues.postfix`): three readers with the same results
  (the tests hold them to the same ground truth):

  - ``spool`` (:mod:`exporter.queues.spool`) walks the queue directories; needs root
    or the postfix user.  Arrival time and size are read once per queue file and
    cached, so a steady-state read touches only directories that changed.
  - ``showq`` (:mod:`exporter.queues.showq`) streams the public ``showq`` socket;
    works unprivileged and holds one record at a time.
  - ``postqueue`` (:mod:`exporter.queues.postqueue`) runs ``postqueue -j``; the last
    resort.

  ``reader: auto`` picks ``spool`` when the deferred directory is readable, else
  ``showq`` when the socket accepts a connection, else ``postqueue``.
- ``exim`` (:mod:`exporter.queues.exim`): the spool ``input`` directory.
- ``directory`` and ``command`` (:mod:`exporter.queues.generic`).

What a read emits (``source`` is the configured name)::

    mail_queue_up{source="mta1"} 1
    mail_queue_reader_info{source="mta1",reader="spool"} 1
    mail_queue_read_duration_seconds{source="mta1"} 0.004
    mail_queue_messages{source="mta1",queue="deferred"} 137
    mail_queue_size_bytes{source="mta1",queue="deferred"} 45073
    mail_queue_oldest_message_age_seconds{source="mta1",queue="deferred"} 3601
    mail_queue_message_age_seconds_bucket{source="mta1",queue="deferred",le="60.0"} 0
    ...
    mail_queue_message_age_seconds_gcount{source="mta1",queue="deferred"} 137
    mail_queue_deferred_reason_messages{source="mta1",reason="refused_or_timeout"} 137
    mail_queue_deferred_destination_messages{source="mta1",domain="example.net"} 100
    mail_queue_deferred_destination_messages{source="mta1",domain="other"} 37

Postfix sources always emit all five queues (maildrop, incoming, active, deferred,
hold), with 0 for an empty queue (and an oldest age of 0).  The deferral reasons
are a fixed set, each always present: ``refused_or_timeout``, ``dns``, ``tls``,
``greylist_or_ratelimit`` (a 4xx reply), ``rejected`` (a 5xx reply; Postfix defers
those only with soft_bounce or similar) and ``other`` (including deferred messages
without any recorded reason).  A message counts once, under its first recipient
that has a reason (else its first recipient); its destination domain is that
recipient's domain.  The ``top_destinations`` busiest domains are named, the rest
add up under ``other``.

**A failed read emits no counts.**  ``mail_queue_up`` becomes 0, the reader and
the duration are still reported, and every other queue series of the source is
absent until a read succeeds again.  The alternative, keeping the last good
values, would show a number that looks fresh but describes the past: a queue that
filled up while the reader was broken would look as calm as before.  A gap is
honest, and the alerts key on ``mail_queue_up == 0`` (and on ``absent``), so a
broken reader pages on its own.  The same rule holds inside one read: when a
reader cannot finish it reports nothing partial.

Failures carry a reason from :data:`FAILURE_REASONS` (``sink.fail(reason, message)``):
``timeout``, ``unavailable`` (socket or directory missing, connection lost
mid-listing), ``permission``, ``parse`` (malformed data) and ``command`` (a helper
command failed).  A reader never raises for a misbehaving queue.
"""

from __future__ import annotations

import asyncio
import logging
import time

from exporter.config import QueueConfig
from exporter.core.model import Sink
from exporter.queues import exim, generic, postfix, stats  # noqa: F401 - importing a reader module registers it
from exporter.queues.registry import READERS, Progress, ReadContext
from exporter.queues.stats import *  # noqa: F403  (the shared types, re-exported)
from exporter.queues.stats import MAX_DOMAINS, QueueCache, QueueReadError, QueueStats

__all__ = ["read_queue"]
__all__ += stats.__all__

#: Timeout of a read when the source configures none (the global default's value).
DEFAULT_TIMEOUT = 10.0


async def read_queue(
    cfg: QueueConfig,
    sink: Sink,
    log: logging.Logger,
    *,
    cache: object | None,
) -> bool:
    """Read one queue source into ``sink``.  Returns ``True`` on success.

    ``cache`` keeps state between reads of one source: a :class:`QueueCache`, or any
    ``dict`` the caller keeps for the source (the cache is stored in it), or ``None``
    (correct, only slower: every read starts cold).  A read that runs out of the
    source's ``timeout`` (else :data:`DEFAULT_TIMEOUT`) records a ``timeout``
    failure and returns; the caller may cut it off earlier with its own deadline.
    """
    reader = READERS[cfg.type]  # every type the config decoder accepts has one: a KeyError is a bug
    limit = cfg.timeout or DEFAULT_TIMEOUT
    source = cfg.name
    started = time.monotonic()
    progress = Progress(cfg.type)
    ctx = ReadContext(cfg, log, _cache(cache), started + limit, progress)
    stats: QueueStats | None = None
    failure: tuple[str, str] | None = None
    try:
        async with asyncio.timeout(limit):
            stats = await reader(ctx)
    except QueueReadError as exc:
        failure = (exc.reason, str(exc))
    except TimeoutError:
        failure = ("timeout", f"queue read did not finish within {limit:g}s")
    except PermissionError as exc:
        failure = ("permission", _oserror(exc))
    except OSError as exc:
        failure = ("unavailable", _oserror(exc))
    duration = time.monotonic() - started
    sink.gauge("mail_queue_reader_info", 1, source=source, reader=progress.reader)
    sink.gauge("mail_queue_read_duration_seconds", duration, source=source)
    sink.gauge("mail_queue_up", 0 if failure else 1, source=source)
    if failure is not None:
        sink.fail(*failure)
        log.warning(
            "queue read failed",
            extra={"kv": {"source": source, "reader": progress.reader, "reason": failure[0], "err": failure[1]}},
        )
        return False
    assert stats is not None
    stats.emit(sink, source)
    for key, note in stats.notes.items():
        sink.detail(f"{source}.{key}", note)
    if stats.domains_overflow:
        log.info(
            "more destination domains than counted exactly; the rest count as other",
            extra={"kv": {"source": source, "limit": MAX_DOMAINS, "overflow": stats.domains_overflow}},
        )
    return True


def _cache(cache: object | None) -> QueueCache | None:
    if isinstance(cache, QueueCache):
        return cache
    if isinstance(cache, dict):
        found = cache.get("queue_cache")
        if not isinstance(found, QueueCache):
            found = cache["queue_cache"] = QueueCache()
        return found
    return None


def _oserror(exc: OSError) -> str:
    what = exc.strerror or exc.__class__.__name__
    return f"{what}: {exc.filename}" if exc.filename else what
