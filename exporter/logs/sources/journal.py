"""The ``journal`` log source: the systemd journal, read with ``journalctl -o json``.

**Why journalctl and not a binding.**  ``systemd-python`` and ``cysystemd`` are compiled
against ``libsystemd`` and need its headers and a compiler at install time (no wheels);
a binding older than the journal files it reads fails on newer file formats.
``journalctl`` is on every machine that has a journal, reads every format its own systemd
writes, and reads a host's journal mounted into a container (``directory: /host/journal``)
as well as the local one.  The price is one short-lived process per read, which is
negligible at one read per interval.  (In a container, its ``journalctl`` must be at least
as new as the host's systemd: an older one cannot read newer journal files.)

**How a read works.**  ``journalctl --no-pager --all -o json --output-fields=...`` with
``-D``/``--file`` for the location, ``-u UNIT`` for each of ``units`` and ``-t ID`` for
each of ``identifiers`` (journalctl ORs the values of one option and ANDs ``-u`` with
``-t``: with both, an entry must come from one of the units *and* carry one of the
identifiers), and ``--after-cursor`` the saved cursor.  The output is read as it comes,
one JSON object per entry, and the process is killed once ``max_lines`` entries are
consumed: the ``__CURSOR`` of the last entry consumed is the new position.  The whole
read is bounded by ``timeout``; when it expires (or journalctl fails) after some entries
were consumed, those are returned and the position moves past them; the failure, if it
lasts, is reported by the next read.

**Position.**  ``commit`` saves ``{"cursor": C}`` (``C`` is None for "before the first
entry"), so a restart continues exactly after the last entry counted.  Without a saved
position, ``start_at: beginning`` reads the whole journal and ``start_at: end`` starts
after the entry that is last at the first read (``journalctl -n 1``), or at the start of
a journal that has no entries yet.  A saved cursor that journalctl rejects (hand-edited)
is counted as ``mail_log_read_errors_total{reason="cursor"}`` and ``start_at`` applies.

**No silent emptiness.**  The peers' most reported journal problem is a source that reads
nothing and says nothing.  So, as long as no entry has matched yet, a read that finds no
new entry checks why, and fails (reason ``unavailable``) with the explanation instead of
returning an empty batch:

- the journal has no entries at all (no journal at this location, e.g. a container
  without the host's journal mounted, or an unprivileged user who sees only its own);
- the journal has entries, but none matches ``units``/``identifiers`` (a wrong unit name
  such as ``postfix.service`` where Debian logs as ``postfix@-.service``, or an
  identifier ``postfix`` where Postfix logs as ``postfix/smtpd``).

Once an entry has matched, quiet periods are just quiet.  journalctl's own warning that
the user cannot see the system journal (``Hint: You are currently not seeing messages
from other users and the system``) fails the read with reason ``permission``.

**Other failures** (reasons of :class:`~exporter.logs.sources.LogSourceError`):
``command`` (journalctl missing or not executable), ``missing`` (the directory or a file
does not exist), ``permission``, ``unavailable`` (any other journalctl error, with its
message), ``timeout``.  **Bad input** does not stop reading: a ``MESSAGE`` that is not
UTF-8 (journalctl prints it as a list of byte values) is decoded with replacement
(``reason="decode"``); a message longer than :data:`MAX_MESSAGE` characters is truncated,
an entry whose JSON is longer than :data:`MAX_ENTRY` bytes is skipped (``reason="too_long"``,
the position still moves past it); output that is not a JSON entry with a cursor is
skipped (``reason="parse"``).  A cursor whose entry was vacuumed away meanwhile still
works: journalctl continues from the next entry after that point.

Each entry becomes ``LogRecord(timestamp=__REALTIME_TIMESTAMP / 1e6, host=_HOSTNAME,
program=SYSLOG_IDENTIFIER or _COMM, pid=SYSLOG_PID or _PID, message=MESSAGE)``.
"""

from __future__ import annotations

__all__ = ["FIELDS", "MAX_ENTRY", "MAX_MESSAGE", "JournalSource", "split_entries"]

import asyncio
import contextlib
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from exporter.config import JournalLog
from exporter.core.command import read_capped, spawned
from exporter.logs.position import PositionStore
from exporter.logs.record import LogRecord
from exporter.logs.sources import SOURCES, LogSourceError

#: Longest ``MESSAGE`` kept (characters); longer ones are truncated and counted.
MAX_MESSAGE = 64 * 1024
#: Longest entry read (bytes of JSON); longer ones are skipped and counted.
MAX_ENTRY = 1 << 20
#: The fields asked of journalctl (``__CURSOR`` and the timestamps always come too).
FIELDS = ("MESSAGE", "_HOSTNAME", "SYSLOG_IDENTIFIER", "_COMM", "SYSLOG_PID", "_PID")
#: Bytes of journalctl's stderr kept for error messages.
_STDERR = 8192
_CHUNK = 1 << 16
_HINT = "not seeing messages from other users and the system"
#: ``"__CURSOR":"..."`` as a key of the top-level object: inside a JSON string every ``"``
#: is escaped, so a match preceded by ``{`` or ``,`` is never part of a message.
_CURSOR_RE = re.compile(rb'[{,]"__CURSOR":"([^"\\]{1,1024})"')
_CURSOR_OVERLAP = 1100


@dataclass(frozen=True, slots=True)
class Skipped:
    """An entry longer than :data:`MAX_ENTRY`: only its cursor (if it was found) is kept."""

    cursor: str | None


class _Splitter:
    """Splits journalctl's output into lines, skipping (with their cursor) those too long."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._data = b""
        self._skipping = False  # inside a line longer than limit
        self._window = b""  # the last bytes of the skipped line, for a cursor across chunks
        self._cursor: bytes | None = None

    def feed(self, chunk: bytes) -> list[bytes | Skipped]:
        out: list[bytes | Skipped] = []
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = chunk[start:] if nl < 0 else chunk[start:nl]
            if self._skipping:
                self._scan(piece)
            else:
                self._data += piece
                if len(self._data) > self.limit:
                    self._skipping, self._cursor, self._window = True, None, b""
                    self._scan(self._data)
                    self._data = b""
            if nl < 0:
                return out
            if self._skipping:
                cursor = self._cursor.decode("ascii", "replace") if self._cursor is not None else None
                out.append(Skipped(cursor))
                self._skipping, self._cursor, self._window = False, None, b""
            elif self._data:
                out.append(self._data)
            self._data = b""
            start = nl + 1

    def _scan(self, piece: bytes) -> None:
        text = self._window + piece
        for m in _CURSOR_RE.finditer(text):
            self._cursor = m.group(1)
        self._window = text[-_CURSOR_OVERLAP:]


def split_entries(data: bytes, limit: int = MAX_ENTRY) -> list[bytes | Skipped]:
    """The complete lines of ``data`` (journalctl output); lines over ``limit`` as :class:`Skipped`."""
    return _Splitter(limit).feed(data)


def _text(value: Any) -> tuple[str | None, bool]:
    """A journal field's value as text, and whether bytes had to be replaced.

    journalctl prints a field as a string, as a list of byte values when it is not
    UTF-8 text, or as a list of those when the entry has the field more than once
    (then the first is taken).
    """
    if isinstance(value, str):
        return value, False
    if isinstance(value, list) and value:
        if all(isinstance(b, int) and 0 <= b <= 255 for b in value):
            raw = bytes(value)
            try:
                return raw.decode("utf-8"), False
            except UnicodeDecodeError:
                return raw.decode("utf-8", "replace"), True
        return _text(value[0])
    return None, False


def _int(value: Any) -> int | None:
    text, _ = _text(value)
    if text is None or not text.isdigit() or len(text) > 19:
        return None
    return int(text)


def _failure(stderr: bytes, returncode: int, name: str) -> LogSourceError:
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    why = lines[-1][:300] if lines else f"exited with status {returncode}"
    if "Permission denied" in why:
        return LogSourceError("permission", f"{name}: {why}")
    if "No such file or directory" in why:
        return LogSourceError("missing", f"{name}: {why}")
    return LogSourceError("unavailable", f"{name}: {why}")


class _CursorRejected(Exception):
    """journalctl refused the ``--after-cursor`` it was given."""


@SOURCES.register("journal")
class JournalSource:
    """Reads new journal entries after the saved cursor, one journalctl process per read."""

    def __init__(self, cfg: JournalLog, positions: PositionStore) -> None:
        self.cfg = cfg
        self.positions = positions
        self.errors: Counter[str] = Counter()
        self._cursor: str | None = None  # position after the last entry read (None: before the first)
        self._known = False  # _cursor is set (loaded, or established by start_at)
        self._saved: tuple[str | None] | None = None  # the cursor last saved (in a tuple: None is a value)
        self._matched = False  # an entry matching the filters has been seen
        self._lock = asyncio.Lock()

    # --- argv ---------------------------------------------------------------------------------------

    def _base(self) -> list[str]:
        argv = [self.cfg.journalctl, "--no-pager", "--all", "-o", "json", "--output-fields=" + ",".join(FIELDS)]
        if self.cfg.directory:
            argv += ["-D", self.cfg.directory]
        for path in self.cfg.files:
            argv += ["--file", path]
        return argv

    def _filters(self) -> list[str]:
        argv: list[str] = []
        for unit in self.cfg.units:
            argv += ["-u", unit]
        for ident in self.cfg.identifiers:
            argv += ["-t", ident]
        return argv

    # --- the LogSource protocol -----------------------------------------------------------------

    async def read(self, max_lines: int) -> list[LogRecord]:
        async with self._lock:
            out: list[LogRecord] = []
            consumed = [0]
            try:
                async with asyncio.timeout(self.cfg.timeout):
                    await self._read(max_lines, out, consumed)
            except TimeoutError:
                if consumed[0]:
                    return out  # progress made: the position is after the last entry consumed
                raise LogSourceError("timeout", f"journalctl did not answer within {self.cfg.timeout:g}s") from None
            except LogSourceError:
                if consumed[0]:
                    return out  # the same: these entries count; the failure shows again at the next read
                raise
            return out

    async def commit(self) -> None:
        async with self._lock:
            if not self._known or self._saved == (self._cursor,):
                return
            cursor = self._cursor
            try:
                await asyncio.to_thread(self.positions.save, self.cfg.name, {"cursor": cursor})
            except OSError as exc:
                raise LogSourceError("position", f"cannot save the journal cursor: {exc.strerror}") from None
            self._saved = (cursor,)

    async def close(self) -> None:
        """Nothing to release: each read's journalctl is gone when the read returns."""

    # --- reading --------------------------------------------------------------------------------

    async def _read(self, max_lines: int, out: list[LogRecord], consumed: list[int]) -> None:
        if not self._known:
            await self._establish(use_saved=True)
        try:
            await self._entries(max_lines, out, consumed)
        except _CursorRejected:
            self.errors["cursor"] += 1
            await self._establish(use_saved=False)
            await self._entries(max_lines, out, consumed)
        if consumed[0]:
            self._matched = True
        elif not self._matched:
            await self._explain_nothing()

    async def _establish(self, *, use_saved: bool) -> None:
        """Set the starting position: the saved one, else per ``start_at``."""
        if use_saved:
            saved = await asyncio.to_thread(self.positions.load, self.cfg.name)
            cursor = saved.get("cursor", "") if saved is not None else ""
            if cursor is None or (isinstance(cursor, str) and cursor and "\n" not in cursor):
                self._cursor, self._known, self._saved = cursor, True, (cursor,)
                return
        if self.cfg.start_at == "end":
            self._cursor = await self._last(filtered=False)
        else:
            self._cursor = None
        self._known = True

    async def _entries(self, max_lines: int, out: list[LogRecord], consumed: list[int]) -> None:
        argv = self._base() + self._filters()
        if self._cursor is not None:
            argv += ["--after-cursor", self._cursor]

        def take(item: bytes | Skipped) -> None:
            if isinstance(item, Skipped):
                self.errors["too_long"] += 1
                cursor = item.cursor
                record = None
            else:
                cursor, record = self._record(item)
            if cursor is None:
                self.errors["parse"] += 1  # never seen from journalctl; the next entry moves the position
                return
            if record is not None:
                out.append(record)
            self._cursor = cursor  # together with the append: a timeout never splits them
            consumed[0] += 1

        await self._run(argv, max_lines, take, cursor_given=self._cursor is not None)

    async def _last(self, *, filtered: bool) -> str | None:
        """The cursor of the journal's last entry (matching the filters), or None if it has none."""
        found: list[str] = []

        def take(item: bytes | Skipped) -> None:
            if isinstance(item, Skipped):
                cursor = item.cursor
            else:
                cursor, _ = self._record(item, count=False)
            if cursor is not None:
                found.append(cursor)

        argv = self._base() + (self._filters() if filtered else []) + ["-n", "1"]
        await self._run(argv, 1, take, cursor_given=False)
        return found[-1] if found else None

    async def _explain_nothing(self) -> None:
        """No entry has matched yet: fail with the reason, unless entries exist and match."""
        filters = self._filters()
        if filters and await self._last(filtered=True) is not None:
            self._matched = True
            return
        if self._cursor is None and await self._last(filtered=False) is None:
            where = "the system journal"
            if self.cfg.directory:
                where = f"directory {self.cfg.directory}"
            elif self.cfg.files:
                where = ", ".join(self.cfg.files)
            raise LogSourceError(
                "unavailable",
                f"the journal has no entries ({where}): no journal files here, or none this user may "
                "read (in a container, mount the host's /var/log/journal and set directory; "
                "otherwise run the exporter in group systemd-journal or adm)",
            )
        if filters:
            wanted = []
            if self.cfg.units:
                wanted.append("units " + ", ".join(self.cfg.units))
            if self.cfg.identifiers:
                wanted.append("identifiers " + ", ".join(self.cfg.identifiers))
            raise LogSourceError(
                "unavailable",
                f"the journal has entries, but none from {' and '.join(wanted)}: check the names with "
                "journalctl -F _SYSTEMD_UNIT and journalctl -F SYSLOG_IDENTIFIER (Debian's Postfix runs "
                "as postfix@-.service and logs as postfix/smtpd, postfix/qmgr, ...; with both units and "
                "identifiers, an entry must match one of each)",
            )
        self._matched = True  # entries exist, all of them match, none is new

    async def _take(
        self, stdout: asyncio.StreamReader, max_entries: int, take: Callable[[bytes | Skipped], None]
    ) -> bool:
        """Hand entries of journalctl's output to ``take`` until its end or ``max_entries``;
        True when stopped at ``max_entries`` (journalctl is then still running)."""
        splitter = _Splitter(MAX_ENTRY)
        count = 0
        while chunk := await stdout.read(_CHUNK):
            for item in splitter.feed(chunk):
                take(item)
                count += 1
                if count >= max_entries:
                    return True
        return False

    async def _run(
        self, argv: list[str], max_entries: int, take: Callable[[bytes | Skipped], None], *, cursor_given: bool
    ) -> None:
        """Run journalctl, hand at most ``max_entries`` entries to ``take``; raise on its failure."""
        name = self.cfg.journalctl
        stderr = bytearray()
        try:
            async with spawned(argv) as proc:
                assert proc.stdout is not None and proc.stderr is not None
                err_task = asyncio.create_task(read_capped(proc.stderr, stderr, _STDERR))
                try:
                    stopped = await self._take(proc.stdout, max_entries, take)
                    if stopped and proc.returncode is None:
                        with contextlib.suppress(ProcessLookupError):
                            proc.kill()
                    returncode = await proc.wait()
                    await err_task
                finally:
                    if not err_task.done():
                        err_task.cancel()
                        with contextlib.suppress(BaseException):
                            await err_task
        except FileNotFoundError:
            raise LogSourceError("command", f"journalctl not found: {name}") from None
        except PermissionError as exc:
            raise LogSourceError("command", f"cannot run {name}: {exc.strerror}") from None
        if _HINT in stderr.decode("utf-8", "replace"):
            raise LogSourceError(
                "permission",
                f"{name} cannot see the system journal as this user: run the exporter in group systemd-journal or adm",
            )
        if not stopped and returncode != 0:
            if cursor_given and b"Failed to seek to cursor" in stderr:
                raise _CursorRejected()
            raise _failure(bytes(stderr), returncode, name)

    def _record(self, line: bytes, *, count: bool = True) -> tuple[str | None, LogRecord | None]:
        """The cursor and the record of one JSON entry ((None, None) if it is not one)."""
        try:
            entry = json.loads(line)
        except ValueError:
            return None, None
        if not isinstance(entry, dict):
            return None, None
        cursor = entry.get("__CURSOR")
        if not isinstance(cursor, str) or not cursor:
            return None, None
        message, replaced = _text(entry.get("MESSAGE"))
        message = message or ""
        if count and replaced:
            self.errors["decode"] += 1
        if len(message) > MAX_MESSAGE:
            if count:
                self.errors["too_long"] += 1
            message = message[:MAX_MESSAGE]
        realtime = _int(entry.get("__REALTIME_TIMESTAMP"))
        program, _ = _text(entry.get("SYSLOG_IDENTIFIER"))
        if program is None:
            program, _ = _text(entry.get("_COMM"))
        pid = _int(entry.get("SYSLOG_PID"))
        if pid is None:
            pid = _int(entry.get("_PID"))
        host, _ = _text(entry.get("_HOSTNAME"))
        record = LogRecord(
            timestamp=realtime / 1e6 if realtime is not None else None,
            host=host or "",
            program=program or "",
            pid=pid,
            message=message,
        )
        return cursor, record
