"""The fallback Postfix reader: ``postqueue [-c DIR] -j``, one JSON object per line.

Used when neither the spool nor the showq socket can be read (``reader: auto``) or
when configured.  The command runs as an argv list, never through a shell; its
output is parsed line by line as it arrives, so memory stays flat; stderr is kept
only to its first :data:`STDERR_LIMIT` bytes.  When the read is cancelled (the
caller's timeout) the process is killed and reaped.  A non-zero exit status or
output that is not one JSON object per line fails the read (``command`` or
``parse``), without partial counts.
"""

from __future__ import annotations

__all__ = ["POSTQUEUE", "STDERR_LIMIT", "postqueue_argv", "read_postqueue", "stats_from_json_lines"]

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from typing import Any

from exporter.config import PostfixQueue
from exporter.core.command import read_capped
from exporter.queues.stats import POSTFIX_QUEUES, QueueReadError, QueueStats, first_reason

POSTQUEUE = "postqueue"
STDERR_LIMIT = 4096
#: Longest output line accepted (one message with all its recipients).
LINE_LIMIT = 16 << 20


def postqueue_argv(config_directory: str | None) -> list[str]:
    argv = [POSTQUEUE]
    if config_directory:
        argv += ["-c", config_directory]
    return [*argv, "-j"]


class _JsonCounter:
    def __init__(self) -> None:
        self.stats = QueueStats(POSTFIX_QUEUES)
        self.stats.with_reasons = True
        self.lines = 0

    def line(self, raw: bytes) -> None:
        raw = raw.strip()
        if not raw:
            return
        self.lines += 1
        try:
            obj: Any = json.loads(raw)
            queue = obj["queue_name"]
            arrival = obj["arrival_time"]
            size = obj["message_size"]
            recipients = obj.get("recipients") or []
            if not isinstance(queue, str) or not isinstance(arrival, int) or not isinstance(size, int):
                raise TypeError("queue_name, arrival_time or message_size of the wrong type")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise QueueReadError("parse", f"postqueue -j line {self.lines}: {exc}") from None
        self.stats.add(queue, arrival, size)
        if queue == "deferred":
            pairs = (
                (str(r.get("address", "")), str(r.get("delay_reason", ""))) for r in recipients if isinstance(r, dict)
            )
            found = first_reason(pairs)
            if found is None:
                self.stats.add_deferred("other", "other")
            else:
                self.stats.add_deferred(*found)


def stats_from_json_lines(lines: Iterable[bytes], now: float | None = None) -> QueueStats:
    """Count ``postqueue -j`` output (pure; for tests)."""
    counter = _JsonCounter()
    if now is not None:
        counter.stats.now = now
    for raw in lines:
        counter.line(raw)
    return counter.stats


async def read_postqueue(cfg: PostfixQueue, log: logging.Logger) -> QueueStats:
    argv = postqueue_argv(cfg.config_directory)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
        )
    except FileNotFoundError as exc:
        raise QueueReadError("command", f"{POSTQUEUE} not found") from exc
    except PermissionError as exc:
        raise QueueReadError("permission", f"cannot run {POSTQUEUE}: {exc.strerror}") from exc
    assert proc.stdout is not None and proc.stderr is not None
    stderr = bytearray()
    drain = asyncio.create_task(read_capped(proc.stderr, stderr, STDERR_LIMIT))
    counter = _JsonCounter()
    try:
        try:
            while line := await proc.stdout.readline():
                counter.line(line)
        except ValueError as exc:  # a line over LINE_LIMIT
            raise QueueReadError("parse", f"postqueue -j line {counter.lines + 1}: {exc}") from exc
        await drain
        rc = await proc.wait()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if not drain.done():
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
    if rc != 0:
        first = bytes(stderr).decode("utf-8", "replace").strip().splitlines()
        why = first[0] if first else "no message"
        raise QueueReadError("command", f"{' '.join(argv)} exited with status {rc}: {why}"[:300])
    log.debug("postqueue -j read", extra={"kv": {"lines": counter.lines}})
    return counter.stats
