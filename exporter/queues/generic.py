"""Generic queue sources: a directory glob, and a command that prints a number.

``directory``: the regular files matching ``<path>/<pattern>`` (``glob``, with
``**`` for any depth) are the messages: count, total ``st_size`` and the age of
the oldest by mtime (right for a Maildir ``new/`` or a spool whose files are
written once; wrong for Postfix's deferred queue, which has its own reader).
Emits ``mail_queue_messages``, ``_size_bytes``, ``_oldest_message_age_seconds`` and
the age histogram with ``queue`` set to the source's ``queue``.

``command``: runs an argv list (never a shell) and expects one number on stdout,
such as ``exim -bpc`` or ``ls | wc -l`` wrapped in a script.  Only
``mail_queue_messages`` is emitted.  A non-zero exit (``command``) or anything but
one non-negative integer (``parse``) fails the read; when the read is cancelled
(its timeout) the process is killed.
"""

from __future__ import annotations

__all__ = ["OUTPUT_LIMIT", "parse_count", "read_command", "read_directory", "scan_directory"]

import asyncio
import glob
import os
import stat
import time

from exporter.config import CommandQueue, DirectoryQueue
from exporter.core.command import CommandFailed, run_for_value
from exporter.queues.registry import ReadContext, register
from exporter.queues.stats import QueueReadError, QueueStats

#: Bytes of a command's stdout considered (a number is short).
OUTPUT_LIMIT = 4096


def scan_directory(path: str, pattern: str, queue: str, deadline: float) -> QueueStats:
    """Count the files matching ``pattern`` under ``path`` (blocking; run in a thread)."""
    if not os.path.isdir(path):
        if os.path.exists(path):
            raise QueueReadError("unavailable", f"not a directory: {path}")
        raise QueueReadError("unavailable", f"no such directory: {path}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise QueueReadError("permission", f"cannot read {path}")
    stats = QueueStats((queue,))
    n = 0
    for match in glob.iglob(os.path.join(glob.escape(path), pattern), recursive=True):
        n += 1
        if not n & 0xFF and time.monotonic() > deadline:
            raise QueueReadError("timeout", "directory scan ran out of time")
        try:
            st = os.stat(match)
        except FileNotFoundError:
            continue  # removed while scanning
        if stat.S_ISREG(st.st_mode):
            stats.add(queue, st.st_mtime, st.st_size)
    return stats


@register("directory")
async def read_directory(ctx: ReadContext[DirectoryQueue]) -> QueueStats:
    """The ``directory`` reader: scan in a thread that stops by itself at the deadline."""
    cfg = ctx.cfg
    return await asyncio.to_thread(scan_directory, cfg.path, cfg.pattern, cfg.queue, ctx.deadline)


def parse_count(output: bytes) -> int:
    """The single non-negative integer a command printed.  Raises ``QueueReadError("parse")``."""
    text = output.decode("utf-8", "replace").strip()
    fields = text.split()
    if len(fields) != 1:
        shown = text[:60] or "nothing"
        raise QueueReadError("parse", f"expected one number, got {shown!r}")
    word = fields[0]
    try:
        value = float(word)
    except ValueError:
        raise QueueReadError("parse", f"expected a number, got {word[:60]!r}") from None
    if not value.is_integer() or value < 0:
        raise QueueReadError("parse", f"expected a non-negative whole number, got {word[:60]!r}")
    return int(value)


#: How the reasons of a failed command map onto the queue readers' reasons (the source's own
#: timeout cuts a slow command off, as reason ``timeout``).
_COMMAND_REASONS = {"not_found": "command", "permission": "permission", "exit": "command", "too_long": "parse"}


@register("command")
async def read_command(ctx: ReadContext[CommandQueue]) -> QueueStats:
    """The ``command`` reader: run the argv, read one number."""
    cfg = ctx.cfg
    try:
        out = await run_for_value(cfg.command, OUTPUT_LIMIT)
    except CommandFailed as exc:
        raise QueueReadError(_COMMAND_REASONS[exc.reason], exc.message) from exc
    stats = QueueStats((cfg.queue,))
    stats.set_count(cfg.queue, parse_count(out))
    ctx.log.debug("queue command read", extra={"kv": {"source": cfg.name}})
    return stats
