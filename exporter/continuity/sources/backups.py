"""Backup sources: when the newest good backup was made.

Each returns the Unix time of the newest backup, or raises :class:`SourceError`:

- ``file_mtime``: the newest modification time among the files matching a glob
  (``/backups/mail/*.tar.zst``); no match is a failure (reason ``missing``).
- ``timestamp_file``: a file that the backup job writes on success, holding a Unix time
  (``1767225600`` or ``1767225600.5``) or an RFC 3339 time.
- ``command``: a program (argv list, never a shell) printing a Unix time, killed at its
  timeout.

The dispatcher (:func:`~exporter.continuity.sources.registry.read_backup`) checks that
the time is sane.
"""

from __future__ import annotations

__all__ = ["CommandBackupSource", "FileMtimeSource", "TimestampFileSource", "newest_mtime", "read_small"]

import asyncio
import glob
import os

from exporter.config import CommandBackup, FileMtimeBackup, TimestampFileBackup
from exporter.continuity.sources.common import OUTPUT_LIMIT, SourceError, parse_timestamp, run_command
from exporter.continuity.sources.registry import BackupSource, register_backup


def newest_mtime(pattern: str) -> float:
    """The newest mtime among regular files matching ``pattern`` (blocking; run in a thread)."""
    newest: float | None = None
    for path in glob.iglob(pattern, recursive=True):
        try:
            st = os.stat(path)
        except OSError:
            continue  # removed while scanning, or unreadable
        if os.path.isfile(path) and (newest is None or st.st_mtime > newest):
            newest = st.st_mtime
    if newest is None:
        raise SourceError("missing", f"no file matches {pattern}")
    return newest


def read_small(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(OUTPUT_LIMIT + 1)
    except FileNotFoundError:
        raise SourceError("missing", f"{path}: no such file") from None
    except OSError as exc:
        raise SourceError("unreadable", f"{path}: {exc.strerror or exc}") from None
    if len(data) > OUTPUT_LIMIT:
        raise SourceError("parse", f"{path}: expected a time, got more than {OUTPUT_LIMIT} bytes")
    return data.decode("utf-8", "replace")


@register_backup("file_mtime")
class FileMtimeSource(BackupSource[FileMtimeBackup]):
    def describe(self, cfg: FileMtimeBackup) -> str:
        return cfg.path

    async def read(self, cfg: FileMtimeBackup, now: float) -> float:
        return await asyncio.to_thread(newest_mtime, cfg.path)


@register_backup("timestamp_file")
class TimestampFileSource(BackupSource[TimestampFileBackup]):
    def describe(self, cfg: TimestampFileBackup) -> str:
        return cfg.path

    async def read(self, cfg: TimestampFileBackup, now: float) -> float:
        return parse_timestamp(await asyncio.to_thread(read_small, cfg.path), cfg.path)


@register_backup("command")
class CommandBackupSource(BackupSource[CommandBackup]):
    def describe(self, cfg: CommandBackup) -> str:
        return cfg.command[0] if cfg.command else "command"

    def timeout(self, cfg: CommandBackup, global_timeout: float) -> float:
        return cfg.timeout

    async def read(self, cfg: CommandBackup, now: float) -> float:
        return parse_timestamp(await run_command(cfg.command, cfg.timeout), self.describe(cfg))
