"""The ``file`` log source: a log file followed like ``tail -F``.

Position: the file's device, inode and byte offset after the last complete line counted,
plus a fingerprint of its first bytes (``head``), saved after every batch
(:class:`~exporter.logs.position.PositionStore`).  So:

- **Restart**: reading continues at the saved offset of the saved inode: no line is
  skipped or counted twice.
- **Rename rotation** (logrotate's default, ``postfix logrotate``): the path now names a
  new inode.  The rest of the old file is read first — from the descriptor still open, or
  after a restart from the rotated file found next to it (same device and inode, e.g.
  ``mail.log.1``) — then the new file from its start.  Only when the old file is gone
  (deleted, or compressed already) are its unread lines lost: counted as
  ``mail_log_read_errors_total{reason="rotated"}``.
- **copytruncate**: the same inode shrinks below the offset (or its first bytes change).
  The copy is looked for next to it (``mail.log.1`` with the same head and at least the
  offset's size) and read from the offset to its end, then the truncated file from its
  start; without a copy, ``{reason="truncated"}`` records the possible loss.
- **A file that does not exist yet** is a failure with reason ``missing``, retried at the
  next run; **permission denied** is reason ``permission``.  A file deleted while being
  read is finished from its open descriptor, then ``missing``.
- **Bad input**: a line longer than :data:`MAX_LINE` bytes is skipped up to its newline
  (``{reason="too_long"}``); bytes that are not UTF-8 are replaced (``{reason="decode"}``);
  a last line without its newline waits for the rest, unless its file was rotated away.

All file I/O runs in a worker thread; the event loop never waits on the disk.
"""

from __future__ import annotations

__all__ = ["MAX_LINE", "FileSource"]

import asyncio
import hashlib
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

from exporter.config import FileLog
from exporter.logs.position import PositionStore
from exporter.logs.record import LogRecord, parse_line
from exporter.logs.sources import SOURCES, LogSourceError

#: Longest line read (bytes); longer lines are skipped and counted.
MAX_LINE = 1 << 20
#: Bytes read per system call.
CHUNK = 1 << 20
#: Bytes of the file's start that identify its content across copytruncate.
HEAD = 256
#: Seconds a rotated-away file is still read after it last grew (a writer may append to
#: it until it reopens its log, e.g. after ``postfix logrotate`` or logrotate's postrotate).
ROTATED_GRACE = 120.0
#: "No limit" for draining a rotated file, which does not grow any more.
_ALL = 1 << 62


def _head(fh: BinaryIO, length: int) -> str:
    """Fingerprint of a file's first ``length`` bytes."""
    fh.seek(0)
    return hashlib.sha256(fh.read(length)).hexdigest()[:16]


def _same_head(fh: BinaryIO, pos: dict[str, Any]) -> bool:
    """Whether the file still starts with the bytes ``pos`` saw (always true before any were seen)."""
    length = int(pos.get("head_len", 0))
    return length == 0 or _head(fh, length) == pos.get("head")


def _unreadable(exc: OSError, path: str) -> LogSourceError:
    if isinstance(exc, FileNotFoundError):
        return LogSourceError("missing", f"{path}: no such file (waiting for it to appear)")
    if isinstance(exc, PermissionError):
        return LogSourceError(
            "permission", f"{path}: permission denied (the exporter needs read access, e.g. group adm)"
        )
    return LogSourceError("unavailable", f"{path}: {exc.strerror or type(exc).__name__}")


@SOURCES.register("file")
class FileSource:
    """Reads complete new lines of one file, in batches, keeping its position."""

    def __init__(self, cfg: FileLog, positions: PositionStore) -> None:
        self.cfg = cfg
        self.path = cfg.path
        self.positions = positions
        self.errors: Counter[str] = Counter()
        self._pos: dict[str, Any] | None = None  # committed position
        self._next: dict[str, Any] | None = None  # position after the last batch read
        self._fh: BinaryIO | None = None
        self._fh_id: tuple[int, int] | None = None
        #: Rotated-away files still open: descriptor, offset read to, when it last grew (monotonic).
        self._rotated: list[tuple[BinaryIO, int, float]] = []
        self._lock = asyncio.Lock()

    # --- the LogSource protocol -----------------------------------------------------------------

    async def read(self, max_lines: int) -> list[LogRecord]:
        async with self._lock:
            try:
                return await asyncio.to_thread(self._read, max_lines)
            except OSError as exc:
                raise _unreadable(exc, self.path) from None

    async def commit(self) -> None:
        async with self._lock:
            if self._next is not None and self._next != self._pos:
                position = dict(self._next)
                try:
                    await asyncio.to_thread(self.positions.save, self.cfg.name, position)
                except OSError as exc:
                    raise LogSourceError("position", f"cannot save the read position: {exc.strerror}") from None
                self._pos = position

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._close_fh)

    # --- in the worker thread -------------------------------------------------------------------------

    def _close_fh(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh, self._fh_id = None, None
        for fh, _, _ in self._rotated:
            fh.close()
        self._rotated = []

    def _position(self) -> dict[str, Any] | None:
        if self._next is not None:
            return self._next
        if self._pos is None:
            self._pos = self.positions.load(self.cfg.name)
        return self._pos

    def _read(self, max_lines: int) -> list[LogRecord]:
        out: list[LogRecord] = []
        self._drain_rotated(out)
        pos = self._position()
        try:
            st = os.stat(self.path)
        except OSError as exc:
            # Deleted or renamed with no successor yet: finish what the open descriptor holds.
            if pos is not None and self._fh is not None and self._fh_id == (pos["dev"], pos["ino"]):
                self._next = self._drain(self._fh, pos, out, max_lines, final=False)
            if out:
                return out
            raise _unreadable(exc, self.path) from None
        here = (st.st_dev, st.st_ino)
        if pos is None:
            pos = self._start(st)
        if (pos["dev"], pos["ino"]) != here:
            # Rename rotation: the rest of the old file first.  Its descriptor stays open
            # (drained again at the next runs) while the writer may still append to it.
            old = self._old_file(pos)
            if old is not None:
                end = self._drain(old, pos, out, _ALL, final=False)
                self._rotated.append((old, end["offset"], time.monotonic()))
            else:
                self.errors["rotated"] += 1
            pos = {"dev": here[0], "ino": here[1], "offset": 0, "head": "", "head_len": 0}
        fh = self._open(here)
        if st.st_size < pos["offset"] or not _same_head(fh, pos):
            # copytruncate: the same inode was emptied (and maybe refilled).
            copy = self._copy_of(pos)
            if copy is not None:
                with copy:
                    self._drain(copy, pos, out, _ALL, final=True)
            else:
                self.errors["truncated"] += 1
            pos = {"dev": here[0], "ino": here[1], "offset": 0, "head": "", "head_len": 0}
        if pos.get("head_len", 0) < HEAD and st.st_size > pos.get("head_len", 0):
            length = min(HEAD, st.st_size)
            pos = {**pos, "head": _head(fh, length), "head_len": length}
        self._next = self._drain(fh, pos, out, max_lines, final=False)
        return out

    def _drain_rotated(self, out: list[LogRecord]) -> None:
        """Lines appended to rotated-away files since the last run; close those that stopped growing."""
        keep = []
        now = time.monotonic()
        for fh, offset, grew in self._rotated:
            end = self._drain(fh, {"offset": offset}, out, _ALL, final=False)["offset"]
            if end != offset:
                keep.append((fh, end, now))
            elif now - grew < ROTATED_GRACE:
                keep.append((fh, end, grew))
            else:
                fh.close()  # quiet for a while: the writer has moved to the new file
        self._rotated = keep

    def _start(self, st: os.stat_result) -> dict[str, Any]:
        offset = st.st_size if self.cfg.start_at == "end" else 0
        if offset:
            # Start after the last complete line, not in the middle of one.
            with open(self.path, "rb") as fh:
                fh.seek(max(0, offset - CHUNK))
                tail = fh.read(CHUNK)
                cut = tail.rfind(b"\n")
                offset = offset - len(tail) + cut + 1 if cut >= 0 else max(0, offset - len(tail))
        return {"dev": st.st_dev, "ino": st.st_ino, "offset": offset, "head": "", "head_len": 0}

    def _open(self, ident: tuple[int, int]) -> BinaryIO:
        if self._fh is None or self._fh_id != ident:
            try:
                fh = open(self.path, "rb")  # noqa: SIM115 (kept open across reads, like tail -F)
            except OSError as exc:
                raise _unreadable(exc, self.path) from None
            st = os.fstat(fh.fileno())
            if (st.st_dev, st.st_ino) != ident:  # replaced between stat and open: next run
                fh.close()
                raise LogSourceError("unavailable", f"{self.path}: replaced while opening; retrying")
            if self._fh is not None:
                self._fh.close()
            self._fh, self._fh_id = fh, ident
        return self._fh

    def _old_file(self, pos: dict[str, Any]) -> BinaryIO | None:
        """The rotated-away file of ``pos``: the open descriptor, or a sibling with its inode."""
        ident = (pos["dev"], pos["ino"])
        if self._fh is not None and self._fh_id == ident:
            fh = self._fh
            self._fh, self._fh_id = None, None  # detached: closed by the caller once drained
            return fh
        for candidate in self._siblings():
            try:
                st = candidate.stat()
                if (st.st_dev, st.st_ino) == ident:
                    return open(candidate, "rb")
            except OSError:
                continue
        return None

    def _siblings(self) -> list[Path]:
        """Rotated files next to the log: the same name with a suffix (``mail.log.1``, ...)."""
        directory = Path(self.path).parent
        base = Path(self.path).name
        try:
            return sorted(p for p in directory.iterdir() if p.name.startswith(base) and p.name != base)
        except OSError:
            return []

    def _copy_of(self, pos: dict[str, Any]) -> BinaryIO | None:
        """The copy a copytruncate rotation left: same head, at least ``offset`` bytes long."""
        for candidate in self._siblings():
            try:
                if candidate.stat().st_size < pos["offset"]:
                    continue
                fh = open(candidate, "rb")  # noqa: SIM115 (returned to the caller)
            except OSError:
                continue
            if pos.get("head_len") and _same_head(fh, pos):
                return fh
            fh.close()
        return None

    def _drain(
        self, fh: BinaryIO, pos: dict[str, Any], out: list[LogRecord], max_lines: int, *, final: bool
    ) -> dict[str, Any]:
        """Append the complete lines of ``fh`` from ``pos`` to ``out``; return the position after them.

        ``final``: the file will not grow any more (rotated away), so a last line without
        its newline counts too.  Stops after ``max_lines`` lines.
        """
        consumed = pos["offset"]  # file offset just after the last byte dealt with
        fh.seek(consumed)
        data = b""  # bytes read but not dealt with yet; data[0] is at file offset `consumed`
        skipping = False  # inside a line longer than MAX_LINE
        while len(out) < max_lines:
            chunk = fh.read(CHUNK)
            if not chunk:
                break
            data += chunk
            start = 0
            while len(out) < max_lines:
                nl = data.find(b"\n", start)
                if nl < 0:
                    break
                if skipping:
                    skipping = False
                elif nl - start > MAX_LINE:
                    self.errors["too_long"] += 1
                else:
                    out.append(self._record(data[start:nl]))
                start = nl + 1
            consumed += start
            data = data[start:]
            if len(data) > MAX_LINE:
                if not skipping:
                    self.errors["too_long"] += 1
                skipping = True
                consumed += len(data)
                data = b""
        if final and data and len(out) < max_lines:
            if not skipping:
                out.append(self._record(data))
            consumed += len(data)
        return {**pos, "offset": consumed}

    def _record(self, raw: bytes) -> LogRecord:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.errors["decode"] += 1
            line = raw.decode("utf-8", "replace")
        rec = parse_line(line)
        return rec if rec is not None else LogRecord(None, "", "", None, line)
