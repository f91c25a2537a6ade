"""The Exim reader: the spool ``input`` directory, counted and read within a budget.

A message on Exim's queue is a pair of files ``<id>-H`` (envelope and headers) and
``<id>-D`` (body) in ``<spool_directory>/input/``, or in ``input/<c>/`` with
``split_spool_directory``.  Messages are the ``-H`` files; the id is the file name
without ``-H``, whatever its length (Exim 4.97 moved from 16-character ids such as
``1rJ0mK-0004Xy-2B`` to 23-character ones such as ``1rJ0mK-000000004Xy-2Bab``; this
reader does not care).  Temporary files (``hdr.<pid>``), journals (``-J``) and
anything else are ignored.  Named queues (``spool/<name>/input``) are not read.

Per message the ``-H`` file gives (Exim spec, "Format of spool files"):

- line 1 ``<id>-H``, line 2 the caller's login, uid and gid, line 3 the envelope
  sender in angle brackets, line 4 ``<time received> <warning count>``: the
  arrival time;
- then option lines starting with ``-``; ``-frozen <time>`` marks a frozen message.

Headers are read once per ``(id, inode)`` (Exim rewrites ``-H`` by rename, so a new
inode means new content) and cached.  Reading is bounded by the source's
``header_time_budget`` per read: the count and bytes are always exact (they come
from the directory listing and ``stat``), but if the budget runs out before every
new header was read, the frozen count and the age series are left out of that
read rather than reported incomplete; the next reads continue where it stopped.
Size is the ``-H`` plus the ``-D`` file size.

With ``exim_binary`` set, ``exim -bpc`` is run as a cross-check; a different count
is logged (and shown on the status page), not treated as a failure, since both
race with deliveries.
"""

from __future__ import annotations

__all__ = ["EXIM_QUEUE", "EximCache", "parse_exim_header", "read_exim", "scan_exim"]

import asyncio
import contextlib
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass, field

from exporter.config import EximQueue
from exporter.queues.registry import ReadContext, register
from exporter.queues.stats import QueueReadError, QueueStats

#: The ``queue`` label of an Exim source's series.
EXIM_QUEUE = "queue"
#: Bytes read from the start of a ``-H`` file (the option lines come right after line 4).
HEADER_BYTES = 8192
_BPC_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class EximHeader:
    arrival: float | None
    frozen: bool


def parse_exim_header(data: bytes) -> EximHeader:
    """Arrival time and frozen flag from the start of a ``-H`` file.  Never raises."""
    lines = data.split(b"\n")
    arrival: float | None = None
    if len(lines) >= 4:
        fields = lines[3].split()
        if fields and fields[0].isdigit() and len(fields[0]) <= 12:
            arrival = float(int(fields[0]))
    frozen = False
    for line in lines[4:-1]:  # the last piece may be cut off by the read limit
        if not line.startswith(b"-"):
            break
        if line == b"-frozen" or line.startswith(b"-frozen "):
            frozen = True
        elif line.startswith(b"-received_time_usec ") and arrival is not None:
            usec = line.split(b" ", 1)[1].strip().lstrip(b".")
            if usec.isdigit() and len(usec) <= 6:
                arrival = int(arrival) + int(usec.ljust(6, b"0")) / 1e6
    return EximHeader(arrival, frozen)


@dataclass
class EximCache:
    lock: threading.Lock = field(default_factory=threading.Lock)
    spool: str | None = None
    # (id, inode of -H) -> (arrival, frozen, size of -H and -D)
    known: dict[tuple[str, int], tuple[float, bool, int]] = field(default_factory=dict)
    headers_read: int = 0


def _valid_id(msg_id: str) -> bool:
    return bool(msg_id) and msg_id.isascii() and msg_id.replace("-", "").replace("_", "").isalnum()


def scan_exim(spool_directory: str, cache: EximCache, budget: float, deadline: float) -> QueueStats:
    """Count ``input/`` (blocking; run in a thread)."""
    if not cache.lock.acquire(blocking=False):
        raise QueueReadError("timeout", "the previous Exim scan of this source is still running")
    try:
        if cache.spool != spool_directory:
            cache.spool = spool_directory
            cache.known.clear()
        stats = QueueStats((EXIM_QUEUE,))
        root = os.path.join(spool_directory, "input")
        budget_end = time.monotonic() + budget
        frozen = 0
        seen: dict[tuple[str, int], tuple[float, bool, int]] = {}
        unread: list[tuple[str, int, str]] = []  # (id, inode, directory) still to read
        stack = [root]
        n = 0
        while stack:
            path = stack.pop()
            try:
                entries = list(os.scandir(path))
            except FileNotFoundError as exc:
                if path == root:
                    raise QueueReadError("unavailable", f"no Exim spool input directory at {root}") from exc
                continue
            for entry in entries:
                n += 1
                if not n & 0xFF and time.monotonic() > deadline:
                    raise QueueReadError("timeout", "Exim spool scan ran out of time")
                name = entry.name
                if len(name) == 1:  # split_spool_directory
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    continue
                if not name.endswith("-H") or not _valid_id(name[:-2]):
                    continue
                key = (name[:-2], entry.inode())
                hit = cache.known.get(key)
                if hit is not None:
                    seen[key] = hit
                else:
                    unread.append((key[0], key[1], path))
        for msg_id, ino, path in unread:
            if time.monotonic() > budget_end:
                break
            got = _read_message(path, msg_id)
            if got is None:
                continue  # delivered and removed meanwhile
            cache.headers_read += 1
            seen[(msg_id, ino)] = got
        cache.known = seen
        left = [u for u in unread if (u[0], u[1]) not in seen]
        for arrival, is_frozen, size in seen.values():
            stats.add(EXIM_QUEUE, arrival, size)
            frozen += is_frozen
        for msg_id, _ino, path in left:
            stats.add_unknown_age(EXIM_QUEUE, _message_size(path, msg_id))
        if left:
            stats.notes["exim_headers"] = (
                f"{len(left)} of {len(seen) + len(left)} headers not read within the "
                f"{budget:g}s budget; frozen and age series left out of this read"
            )
        else:
            stats.frozen = frozen
        return stats
    finally:
        cache.lock.release()


def _message_size(path: str, msg_id: str) -> int:
    total = 0
    for suffix in ("-H", "-D"):
        with contextlib.suppress(FileNotFoundError):
            total += os.stat(os.path.join(path, msg_id + suffix)).st_size
    return total


def _read_message(path: str, msg_id: str) -> tuple[float, bool, int] | None:
    hpath = os.path.join(path, msg_id + "-H")
    try:
        with open(hpath, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                return None
            head = fh.read(HEADER_BYTES)
    except FileNotFoundError:
        return None
    header = parse_exim_header(head)
    arrival = header.arrival if header.arrival is not None else st.st_mtime
    size = st.st_size
    with contextlib.suppress(FileNotFoundError):
        size += os.stat(os.path.join(path, msg_id + "-D")).st_size
    return arrival, header.frozen, size


async def _exim_bpc(binary: str, log: logging.Logger) -> int | None:
    try:
        proc = await asyncio.create_subprocess_exec(
            binary,
            "-bpc",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError as exc:
        log.warning("exim -bpc could not run", extra={"kv": {"binary": binary, "err": str(exc)}})
        return None
    try:
        async with asyncio.timeout(_BPC_TIMEOUT):
            out, _ = await proc.communicate()
    except TimeoutError:
        log.warning("exim -bpc timed out", extra={"kv": {"binary": binary}})
        return None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    text = out.decode("ascii", "replace").strip()
    if proc.returncode != 0 or not text.isdigit():
        log.warning("exim -bpc failed", extra={"kv": {"binary": binary, "rc": proc.returncode}})
        return None
    return int(text)


@register("exim")
async def read_exim(ctx: ReadContext[EximQueue]) -> QueueStats:
    """The ``exim`` reader: scan the spool in a thread, then cross-check with ``exim -bpc``."""
    cfg, log, cache = ctx.cfg, ctx.log, ctx.cache
    exim_cache: EximCache
    if cache is not None:
        if not isinstance(cache.exim, EximCache):
            cache.exim = EximCache()
        exim_cache = cache.exim
    else:
        exim_cache = EximCache()
    stats = await asyncio.to_thread(scan_exim, cfg.spool_directory, exim_cache, cfg.header_time_budget, ctx.deadline)
    if cfg.exim_binary:
        bpc = await _exim_bpc(cfg.exim_binary, log)
        ours = stats.queues[EXIM_QUEUE].messages
        if bpc is not None and bpc != ours:
            stats.notes["exim_bpc"] = f"exim -bpc counts {bpc}, the spool {ours}"
            log.warning(
                "exim -bpc disagrees with the spool count",
                extra={"kv": {"source": cfg.name, "bpc": bpc, "spool": ours}},
            )
    return stats
