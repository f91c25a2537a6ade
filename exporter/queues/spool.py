"""The Postfix spool scanner: counts from the queue directories, arrival times from the files.

Needs read access to the queue directories (root or the postfix user).  It gives
the same answers as showq(8), which is what the tests check:

- **Which files count.** Like showq's ``mail_open_ok``, a file counts when it has a
  valid queue-id name, is a regular file and is *committed*: owner permissions
  ``rwx`` (cleanup and postdrop create files ``rw-`` and add ``x`` when done).
  ``maildrop`` is flat; the other queues may be hashed (``hash_queue_names``), and
  like showq's ``mail_scan_dir_next`` a one-character name is a subdirectory.
- **Size** is showq's ``size``: the message content size from the queue file's size
  record (``C``, first field), else the file size.  This is not ``st_size``, which
  also counts the envelope.
- **Arrival** is the first time record (``T``, ``"sec usec"``).  Never the file's
  mtime: for a deferred file Postfix sets mtime to the *next retry*.

Queue file format (``record.c``, ``rec_type.h``): a sequence of records, each a type
byte, a length in 7-bit groups, low-order group first, high bit meaning "more", and
that many bytes of data.  ``C`` (size: content size, data offset, recipient count,
hints, fixed width) comes first, then ``T``; recipients are ``R`` records; ``M``
starts the content.  Only the first :data:`HEADER_BYTES` of a file are read.

**Caching.**  The cache is per directory.  For each directory it keeps the
directory's signature (mtime, ctime, inode) and, per queue file, in :mod:`array`
columns sorted by arrival: a 64-bit hash of (name, inode), the arrival time and
the size; for deferred mail also a hash of the name and a reference to the
(interned) domain of the first recipient.  Per defer log: hashes of the name and
of (name, inode, size, mtime), the reason class (one byte) and the domain.  That
is 24 to 40 bytes per queue file plus 25 per defer log, about 65 bytes per
deferred message (the benchmark measures the real retained size with
``tracemalloc``; the budget is 100).  A read stats each directory; when the
signature is unchanged (and was already more than a second old when the
directory was listed, so that a change within the same timestamp tick cannot
hide) the directory's cached columns are reused without listing it.  A changed
directory is listed again with ``os.scandir``: known ``(name, inode)`` pairs keep
their cached values, new files are ``lstat``-ed and their header read once, files
that disappeared are dropped with the listing.  Directories that hold uncommitted
files are never trusted (a commit changes only the file's mode).

**Deferral reasons** come from the defer logs (``defer/<hash>/<queue id>``, the
files showq reads; format of ``bounce_log.c``: entries of ``name=value`` lines
separated by blank lines).  A message's class and destination come from the first
entry of its log, exactly what showq reports first.  Logs are cached per
directory like queue files, keyed by inode, size and mtime; a log whose first
entry is still being written is not cached.  qmgr removes a message's log before
each delivery attempt and later appends only after the first entry, so the first
entry of a cached log cannot go stale without its directory changing.  A changed
defer directory costs one ``lstat`` per log (to tell a rewritten log from the old
one: inode numbers are reused), which dominates a read of a queue where every
directory changed between reads (about 0.6 s at 100,000 deferred messages here,
against about 3 ms when nothing changed).
"""

from __future__ import annotations

__all__ = [
    "HEADER_BYTES",
    "QueueFileHeader",
    "SpoolCache",
    "parse_defer_log",
    "parse_queue_file_header",
    "read_spool",
    "scan_spool",
]

import asyncio
import logging
import os
import stat
import sys
import threading
import time
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import compress, repeat

from exporter.queues.stats import (
    DEFERRED_REASONS,
    POSTFIX_QUEUES,
    QueueCache,
    QueueReadError,
    QueueStats,
    classify_reason,
    recipient_domain,
)

#: Bytes read from the start of a queue file (the size and time records are in the first ~130).
HEADER_BYTES = 4096
#: Bytes read from the start of a defer log (its first entry is a few hundred bytes).
DEFER_LOG_BYTES = 8192
#: A directory listing is reused only if the directory had not changed for this long when listed.
TRUST_AGE = 1.0

_REC_SIZE = ord("C")
_REC_TIME = ord("T")
_REC_RCPT = ord("R")
_REC_MESG = ord("M")
_REC_END = ord("E")
_READY = stat.S_IRWXU  # MAIL_QUEUE_STAT_READY: committed queue file
_REASON_INDEX = {r: i for i, r in enumerate(DEFERRED_REASONS)}
_UNCOMMITTED: tuple[float, int, str | None] = (-1.0, -1, None)  # sentinel, compared by identity


# --- pure parsers ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueFileHeader:
    """What the envelope records at the start of a queue file say."""

    arrival: float | None  # T record: seconds since the epoch (with microseconds)
    size: int | None  # C record, first field: message content size
    recipient: str | None  # first R record: first recipient still to deliver


def _size_record(data: bytes) -> int | None:
    # showq: valid only if made of digits and spaces; the first number is the content size.
    if not data or data.strip(b"0123456789 "):
        return None
    fields = data.split()
    if not fields or len(fields[0]) > 18:
        return None
    return int(fields[0])


def _time_record(data: bytes) -> float | None:
    fields = data.split()
    if not fields or not fields[0].isdigit() or len(fields[0]) > 12:
        return None
    sec = int(fields[0])
    usec = 0
    if len(fields) > 1 and fields[1].isdigit() and len(fields[1]) <= 6:
        usec = int(fields[1])
    return sec + usec / 1e6


def parse_queue_file_header(data: bytes) -> QueueFileHeader:
    """Parse the envelope records at the start of a queue file.  Never raises.

    Stops at the content (``M``) or end (``E``) record, at a malformed or truncated
    record, or once the size, time and first recipient are known.  Like showq, only
    the first size and time records count.
    """
    arrival: float | None = None
    size: int | None = None
    size_seen = False
    rcpt: str | None = None
    pos = 0
    end = len(data)
    while pos < end:
        rtype = data[pos]
        pos += 1
        length = 0
        shift = 0
        while True:
            if pos >= end:
                return QueueFileHeader(arrival, size, rcpt)
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift >= 32:  # rec_get: "too many length bits"
                return QueueFileHeader(arrival, size, rcpt)
        if pos + length > end:
            break
        body = data[pos : pos + length]
        pos += length
        if rtype == _REC_SIZE:
            if not size_seen:
                size_seen = True
                size = _size_record(body)
        elif rtype == _REC_TIME:
            if arrival is None:
                arrival = _time_record(body)
        elif rtype == _REC_RCPT:
            if rcpt is None:
                rcpt = body.decode("utf-8", "replace")
        elif rtype in (_REC_MESG, _REC_END):
            break
        if arrival is not None and size_seen and rcpt is not None:
            break
    return QueueFileHeader(arrival, size, rcpt)


def parse_defer_log(data: bytes) -> tuple[str, str] | None:
    """``(recipient, reason)`` of the first entry of a defer log, as ``bounce_log_read`` reads it.

    Returns ``None`` when there is no complete entry: ``bounce_log_read`` too reports
    an entry only once a blank line ends it (an unterminated one is being written,
    or is ignored by showq).  Never raises.
    """
    text = data.decode("utf-8", "replace")
    address = ""
    reason = ""
    found = False
    for raw in text.split("\n")[:-1]:  # the part after the last newline is incomplete
        line = raw.rstrip("\r")
        if not line:
            if found:
                return address or "(recipient address unavailable)", reason or "(description unavailable)"
            continue
        found = True
        if line[0].isalnum():
            name, sep, value = line.partition("=")
            if not sep:
                continue
            name = name.strip()
            value = value.strip()
            if name == "recipient":
                address = value or "(MAILER-DAEMON)"
            elif name == "reason":
                reason = value
        elif line[0] == "<":
            rcpt, sep, rest = line[1:].partition(">: ")
            if sep:
                address = rcpt or "(MAILER-DAEMON)"
                reason = rest.strip()
    return None


# --- cache -------------------------------------------------------------------------------------------


class _QueueDir:
    """One directory of queue files: its signature and its files, sorted by arrival.

    Per file: ``look``, a 64-bit hash of (name, inode) that recognises the file when
    the directory is listed again; arrival; size; and in the deferred queue also
    ``names`` (a hash of the name, to join with the defer logs) and the domain of the
    first recipient (an interned string shared by all messages to that domain).
    """

    __slots__ = ("arrivals", "domains", "look", "names", "sig", "sizes", "subdirs", "total", "trusted")

    def __init__(self) -> None:
        self.sig: tuple[int, int, int] | None = None
        self.trusted = False
        self.subdirs: tuple[str, ...] = ()
        self.look = array("q")
        self.arrivals = array("d")  # ascending
        self.sizes = array("q")
        self.names = array("q")  # deferred queue only
        self.domains: list[str | None] = []  # deferred queue only
        self.total = 0

    def __len__(self) -> int:
        return len(self.look)

    def nbytes(self) -> int:
        return 8 * (len(self.look) + len(self.arrivals) + len(self.sizes) + len(self.names) + len(self.domains))


class _DeferDir:
    """One directory of defer logs: per log the name key, a key of (inode, size, mtime), class, domain."""

    __slots__ = ("classes", "domains", "keys", "sig", "stamps", "subdirs", "trusted")

    def __init__(self) -> None:
        self.sig: tuple[int, int, int] | None = None
        self.trusted = False
        self.subdirs: tuple[str, ...] = ()
        self.keys = array("q")  # hash(name)
        self.stamps = array("q")  # hash((inode, size, mtime_ns))
        self.classes = array("b")  # index into DEFERRED_REASONS
        self.domains: list[str] = []

    def nbytes(self) -> int:
        return len(self.keys) * (8 + 8 + 1 + 8)


class SpoolCache:
    """Everything the scanner remembers between reads of one Postfix instance."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue_dir: str | None = None
        self.dirs: dict[str, _QueueDir] = {}
        self.defer_dirs: dict[str, _DeferDir] = {}
        # deferred reason aggregate, reused while no deferred or defer directory changed
        self.reasons: dict[str, int] | None = None
        self.destinations: dict[str, int] | None = None
        # counters for tests and the benchmark
        self.headers_read = 0
        self.logs_read = 0
        self.dirs_listed = 0

    def reset(self, queue_dir: str) -> None:
        self.queue_dir = queue_dir
        self.dirs.clear()
        self.defer_dirs.clear()
        self.reasons = None
        self.destinations = None

    def messages(self) -> int:
        return sum(len(d) for d in self.dirs.values())

    def nbytes(self) -> int:
        """Approximate memory held for cached messages and logs (columns, not object overhead)."""
        return sum(d.nbytes() for d in self.dirs.values()) + sum(d.nbytes() for d in self.defer_dirs.values())


def _by_arrival(row: tuple[float, int, int, int, str | None]) -> float:
    return row[0]


def _valid_id(name: str) -> bool:
    # mail_queue_id_ok: letters and digits only.
    return name.isascii() and name.isalnum()


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _old_enough(st: os.stat_result, now: float) -> bool:
    return now - max(st.st_mtime, st.st_ctime) > TRUST_AGE


def _read_head(path: str, limit: int) -> bytes | None:
    """The first ``limit`` bytes of a file, ``None`` if it vanished."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NOATIME", 0))
    except FileNotFoundError:
        return None
    except PermissionError:
        # O_NOATIME needs file ownership (or CAP_FOWNER); retry without it.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


class _Scanner:
    def __init__(self, cache: SpoolCache, deadline: float) -> None:
        self.cache = cache
        self.deadline = deadline
        self.changed = False  # a deferred or defer directory was listed again

    # -- queue directories ----------------------------------------------------------------------

    def scan_queue(self, root: str, queue: str, seen: set[str]) -> list[_QueueDir]:
        nodes: list[_QueueDir] = []
        stack = [root]
        while stack:
            path = stack.pop()
            try:
                st = os.stat(path)
            except FileNotFoundError:
                if path == root:
                    raise
                continue  # a hash subdirectory vanished between listing and now
            node = self.cache.dirs.get(path)
            sig = _signature(st)
            if node is None or not node.trusted or node.sig != sig:
                node = self._list_queue_dir(path, queue, st, node)
                self.cache.dirs[path] = node
                if queue == "deferred":
                    self.changed = True
            seen.add(path)
            nodes.append(node)
            stack.extend(os.path.join(path, sub) for sub in node.subdirs)
        return nodes

    def _list_queue_dir(self, path: str, queue: str, st: os.stat_result, old: _QueueDir | None) -> _QueueDir:
        listed_at = time.time()
        trusted = _old_enough(st, listed_at)
        deferred = queue == "deferred"
        if old is None:
            old = _QueueDir()
        known = dict(zip(old.look, range(len(old.look)), strict=True))
        keep = bytearray(len(old.look))
        kept = 0
        new: list[tuple[float, int, int, int, str | None]] = []
        subdirs: list[str] = []
        deadline = self.deadline
        count = 0
        self.cache.dirs_listed += 1
        with os.scandir(path) as entries:
            for entry in entries:
                count += 1
                if not count & 0xFFF and time.monotonic() > deadline:
                    raise QueueReadError("timeout", "spool scan ran out of time")
                name = entry.name
                if len(name) == 1:  # mail_scan_dir_next: one-character names are hash subdirectories
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(name)
                    continue
                look = hash((name, entry.inode()))
                n = known.get(look)
                if n is not None:
                    if not keep[n]:
                        keep[n] = 1
                        kept += 1
                    continue
                if not _valid_id(name):
                    continue
                row = self._new_file(entry, deferred)
                if row is None:
                    continue
                if row is _UNCOMMITTED:
                    trusted = False  # an uncommitted file: its commit will not change the directory
                    continue
                arrival, size, dom = row
                new.append((arrival, look, size, hash(name), dom))
        node = _QueueDir()
        node.sig = _signature(st)
        node.subdirs = tuple(sorted(subdirs))
        node.trusted = trusted
        if kept == len(old.look):  # nothing left: keep the columns as they are
            node.look, node.arrivals, node.sizes = old.look, old.arrivals, old.sizes
            node.names, node.domains, node.total = old.names, old.domains, old.total
        else:  # survivors keep their (sorted) order
            node.look = array("q", compress(old.look, keep))
            node.arrivals = array("d", compress(old.arrivals, keep))
            node.sizes = array("q", compress(old.sizes, keep))
            if deferred:
                node.names = array("q", compress(old.names, keep))
                node.domains = list(compress(old.domains, keep))
            node.total = sum(node.sizes)
        if new:
            names: Iterable[int] = node.names if deferred else repeat(0)
            domains: Iterable[str | None] = node.domains if deferred else repeat(None)
            rows = list(zip(node.arrivals, node.look, node.sizes, names, domains, strict=False))
            rows += new
            rows.sort(key=_by_arrival)  # two sorted runs: linear for Timsort
            node.arrivals = array("d", [r[0] for r in rows])
            node.look = array("q", [r[1] for r in rows])
            node.sizes = array("q", [r[2] for r in rows])
            if deferred:
                node.names = array("q", [r[3] for r in rows])
                node.domains = [r[4] for r in rows]
            node.total = sum(node.sizes)
        return node

    def _new_file(self, entry: os.DirEntry[str], deferred: bool) -> tuple[float, int, str | None] | None:
        """``(arrival, size, domain)``; :data:`_UNCOMMITTED` for an uncommitted file; ``None`` to skip."""
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_mode & stat.S_IRWXU != _READY:
            return _UNCOMMITTED
        head = _read_head(entry.path, HEADER_BYTES)
        if head is None:
            return None
        self.cache.headers_read += 1
        header = parse_queue_file_header(head)
        arrival = header.arrival
        if arrival is None:
            # No time record (a damaged file).  showq would use mtime, but a deferred file's mtime
            # is its next retry; the inode change time (its move into the queue) is the safer bound.
            arrival = min(st.st_mtime, st.st_ctime) if deferred else st.st_mtime
        size = header.size if header.size is not None else st.st_size
        dom = sys.intern(recipient_domain(header.recipient)) if deferred and header.recipient else None
        return arrival, size, dom

    # -- defer logs -------------------------------------------------------------------------------

    def scan_defer(self, root: str, seen: set[str]) -> list[_DeferDir]:
        nodes: list[_DeferDir] = []
        stack = [root]
        while stack:
            path = stack.pop()
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue  # no defer directory (yet): no reasons
            node = self.cache.defer_dirs.get(path)
            sig = _signature(st)
            if node is None or not node.trusted or node.sig != sig:
                node = self._list_defer_dir(path, st, node)
                self.cache.defer_dirs[path] = node
                self.changed = True
            seen.add(path)
            nodes.append(node)
            stack.extend(os.path.join(path, sub) for sub in node.subdirs)
        return nodes

    def _list_defer_dir(self, path: str, st: os.stat_result, old: _DeferDir | None) -> _DeferDir:
        listed_at = time.time()
        trusted = _old_enough(st, listed_at)
        if old is None:
            old = _DeferDir()
        known = dict(zip(old.stamps, range(len(old.stamps)), strict=True))
        keep = bytearray(len(old.stamps))
        kept = 0
        new_keys: list[int] = []
        new_stamps: list[int] = []
        new_classes: list[int] = []
        new_domains: list[str] = []
        subdirs: list[str] = []
        deadline = self.deadline
        count = 0
        self.cache.dirs_listed += 1
        with os.scandir(path) as entries:
            for entry in entries:
                count += 1
                if not count & 0xFFF and time.monotonic() > deadline:
                    raise QueueReadError("timeout", "spool scan ran out of time")
                name = entry.name
                if len(name) == 1:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(name)
                    continue
                try:
                    lst = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                # A log is deleted and written anew for each delivery attempt, and its inode number
                # may be reused: size and mtime tell the versions apart.
                stamp = hash((name, lst.st_ino, lst.st_size, lst.st_mtime_ns))
                n = known.get(stamp)
                if n is not None:
                    if not keep[n]:
                        keep[n] = 1
                        kept += 1
                    continue
                if not _valid_id(name) or not stat.S_ISREG(lst.st_mode):
                    continue
                head = _read_head(entry.path, DEFER_LOG_BYTES)
                if head is None:
                    continue
                self.cache.logs_read += 1
                first = parse_defer_log(head)
                if first is None:
                    trusted = False  # first entry still being written: read it again next time
                    continue
                address, reason = first
                new_keys.append(hash(name))
                new_stamps.append(stamp)
                new_classes.append(_REASON_INDEX[classify_reason(reason)])
                new_domains.append(sys.intern(recipient_domain(address)))
        node = _DeferDir()
        node.sig = _signature(st)
        node.subdirs = tuple(sorted(subdirs))
        node.trusted = trusted
        if kept == len(old.stamps):
            node.keys, node.stamps, node.classes, node.domains = old.keys, old.stamps, old.classes, old.domains
        else:
            node.keys = array("q", compress(old.keys, keep))
            node.stamps = array("q", compress(old.stamps, keep))
            node.classes = array("b", compress(old.classes, keep))
            node.domains = list(compress(old.domains, keep))
        if new_keys:
            node.keys = node.keys + array("q", new_keys)
            node.stamps = node.stamps + array("q", new_stamps)
            node.classes = node.classes + array("b", new_classes)
            node.domains = node.domains + new_domains
        return node


def scan_spool(queue_dir: str, cache: SpoolCache, deadline: float, now: float | None = None) -> QueueStats:
    """Scan a Postfix queue directory (blocking; run it in a thread).  Raises ``QueueReadError``/``OSError``."""
    deferred = os.path.join(queue_dir, "deferred")
    if not os.access(deferred, os.R_OK | os.X_OK):
        if not os.path.isdir(deferred):
            raise QueueReadError("unavailable", f"no Postfix queue at {queue_dir}")
        raise QueueReadError("permission", f"cannot read {deferred} (run as root or the postfix user)")
    if not cache.lock.acquire(blocking=False):
        raise QueueReadError("timeout", "the previous spool scan of this source is still running")
    try:
        if cache.queue_dir != queue_dir:
            cache.reset(queue_dir)
        stats = QueueStats(POSTFIX_QUEUES, now)
        stats.with_reasons = True
        scanner = _Scanner(cache, deadline)
        seen: set[str] = set()
        deferred_nodes: list[_QueueDir] = []
        for queue in POSTFIX_QUEUES:
            root = os.path.join(queue_dir, queue)
            try:
                nodes = scanner.scan_queue(root, queue, seen)
            except FileNotFoundError as exc:
                raise QueueReadError("unavailable", f"queue directory missing: {root}") from exc
            for node in nodes:
                stats.add_sorted(queue, node.arrivals, node.total)
            if queue == "deferred":
                deferred_nodes = nodes
        defer_seen: set[str] = set()
        defer_nodes = scanner.scan_defer(os.path.join(queue_dir, "defer"), defer_seen)
        for path in [p for p in cache.dirs if p not in seen]:
            del cache.dirs[path]
            scanner.changed = True
        for path in [p for p in cache.defer_dirs if p not in defer_seen]:
            del cache.defer_dirs[path]
            scanner.changed = True
        if scanner.changed or cache.reasons is None or cache.destinations is None:
            cache.reasons, cache.destinations = _deferred_reasons(deferred_nodes, defer_nodes)
        stats.add_deferred_counts(cache.reasons, cache.destinations)
        return stats
    finally:
        cache.lock.release()


def _deferred_reasons(deferred: list[_QueueDir], defer: list[_DeferDir]) -> tuple[dict[str, int], dict[str, int]]:
    """Join deferred messages with their defer logs by queue id (the hash of the name)."""
    log_class: dict[int, int] = {}
    log_domain: dict[int, str] = {}
    for d in defer:
        log_class.update(zip(d.keys, d.classes, strict=True))
        log_domain.update(zip(d.keys, d.domains, strict=True))
    classes: Counter[int | None] = Counter()
    domains: Counter[str] = Counter()
    for node in deferred:
        classes.update(map(log_class.get, node.names))
        domains.update(
            found if found is not None else (fallback or "other")
            for found, fallback in zip(map(log_domain.get, node.names), node.domains, strict=True)
        )
    counts = dict.fromkeys(DEFERRED_REASONS, 0)
    for cls, n in classes.items():
        counts[DEFERRED_REASONS[cls] if cls is not None else "other"] += n
    return counts, dict(domains)


async def read_spool(queue_dir: str, log: logging.Logger, cache: QueueCache | None, deadline: float) -> QueueStats:
    """Scan in a worker thread; the thread stops by itself at ``deadline`` (monotonic)."""
    spool_cache: SpoolCache
    if cache is not None:
        if not isinstance(cache.spool, SpoolCache):
            cache.spool = SpoolCache()
        spool_cache = cache.spool
    else:
        spool_cache = SpoolCache()
    stats = await asyncio.to_thread(scan_spool, queue_dir, spool_cache, deadline)
    log.debug(
        "spool scanned",
        extra={
            "kv": {
                "queue_dir": queue_dir,
                "headers_read": spool_cache.headers_read,
                "logs_read": spool_cache.logs_read,
                "dirs_listed": spool_cache.dirs_listed,
            }
        },
    )
    return stats
