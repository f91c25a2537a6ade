"""RPO sources: when the newest good backup was made, and how far behind a replica is.

Backups (each read returns the Unix time of the newest backup): ``file_mtime``,
``timestamp_file``, ``command`` (:mod:`.backups`).  Replicas (each measurement returns
the lag in seconds): ``imap_canary`` (:mod:`.canary`), ``command`` (:mod:`.replicas`).
Whether a backup is recent enough (``max_age``) is judged by the caller, which still
exports the time of a stale backup.

Modules: :mod:`.common` (SourceError, parsers, running a program), :mod:`.registry` (the
source signatures, the registries and the entry points; it explains how to add a
source), :mod:`.backups`, :mod:`.canary`, :mod:`.replicas`.  Importing this package
registers every source.

Entry points for the checks: :func:`read_backup`, :func:`backup_timeout`,
:func:`measure_replica`, :func:`replica_timeout`.
"""

from __future__ import annotations

__all__ = [
    "BACKUP_SOURCES",
    "CANARY_GRACE",
    "CANARY_HEADER",
    "FUTURE_SLACK",
    "REPLICA_SOURCES",
    "BackupSource",
    "ImapSession",
    "ReplicaSource",
    "SourceError",
    "backup_timeout",
    "measure_canary",
    "measure_replica",
    "newest_mtime",
    "parse_lag",
    "parse_timestamp",
    "read_backup",
    "read_command_lag",
    "register_backup",
    "register_replica",
    "replica_timeout",
    "run_command",
]

from exporter.continuity.sources.backups import newest_mtime
from exporter.continuity.sources.canary import CANARY_GRACE, CANARY_HEADER, ImapSession, measure_canary
from exporter.continuity.sources.common import FUTURE_SLACK, SourceError, parse_lag, parse_timestamp, run_command
from exporter.continuity.sources.registry import (
    BACKUP_SOURCES,
    REPLICA_SOURCES,
    BackupSource,
    ReplicaSource,
    backup_timeout,
    measure_replica,
    read_backup,
    register_backup,
    register_replica,
    replica_timeout,
)
from exporter.continuity.sources.replicas import read_command_lag
