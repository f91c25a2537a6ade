"""One signature and one registry for backup sources, and one for replica sources.

A backup source says when the newest good backup was made; a replica source measures how
far behind a replica is.  Each kind has a base class with one signature, and a registry
keyed by the config's ``type`` (``file_mtime``, ``imap_canary``, ...):

- :class:`BackupSource`: ``async read(cfg, now) -> float`` (the Unix time of the newest
  backup), ``timeout(cfg, global_timeout) -> float``, ``describe(cfg) -> str``;
- :class:`ReplicaSource`: ``async measure(cfg, log) -> float`` (the lag in seconds) and
  ``grace`` (how long its check may run beyond ``cfg.timeout``).

The rest of the exporter calls only the entry points, never a source directly:
:func:`read_backup`, :func:`backup_timeout`, :func:`measure_replica`,
:func:`replica_timeout`.  They also enforce what every source promises: a backup time is
not in the future (beyond :data:`~.common.FUTURE_SLACK`, reason ``invalid``) and a lag is
a finite number >= 0.  Every failure is a :class:`~.common.SourceError` with a short,
bounded ``reason``.

Adding a backup or replica source
---------------------------------

1. Add its config class to :mod:`exporter.config` (a frozen dataclass whose first field
   is ``type: Literal["..."]``) and to the ``BackupConfig`` (or ``ReplicaConfig``) union,
   so that the config loader accepts it.
2. Write the source in a module of this package and register it under the same ``type``;
   it must never block the event loop (blocking calls go through
   :func:`asyncio.to_thread`) and raises :class:`~.common.SourceError` on failure::

       @register_backup("s3_object")
       class S3ObjectSource(BackupSource[cfgmod.S3ObjectBackup]):
           def describe(self, cfg: cfgmod.S3ObjectBackup) -> str:
               return cfg.url  # what error messages call it: never a secret

           def timeout(self, cfg: cfgmod.S3ObjectBackup, global_timeout: float) -> float:
               return cfg.timeout  # optional: the default is global_timeout

           async def read(self, cfg: cfgmod.S3ObjectBackup, now: float) -> float:
               return await asyncio.to_thread(head_last_modified, cfg.url)


       @register_replica("pg_stream")
       class PgStreamSource(ReplicaSource[cfgmod.PgStreamReplica]):
           grace = 5.0  # optional: the default is 1 s

           async def measure(self, cfg: cfgmod.PgStreamReplica, log: logging.Logger) -> float:
               return await query_replay_lag(cfg.dsn_file, cfg.timeout)

3. Import that module in ``exporter/continuity/sources/__init__.py`` so that it
   registers.  ``tests/test_continuity_sources.py`` checks that every ``type`` of the
   config unions has a source.
"""

from __future__ import annotations

__all__ = [
    "BACKUP_SOURCES",
    "REPLICA_SOURCES",
    "BackupSource",
    "ReplicaSource",
    "backup_source",
    "backup_timeout",
    "measure_replica",
    "read_backup",
    "register_backup",
    "register_replica",
    "replica_source",
    "replica_timeout",
]

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from exporter.config import BackupConfig, ReplicaConfig
from exporter.continuity.sources.common import SourceError, check_sane
from exporter.core.registry import Registry

C = TypeVar("C")


class BackupSource(ABC, Generic[C]):
    """Reads one kind of backup source (one config class ``C``).  Stateless: one instance serves every config."""

    @abstractmethod
    def describe(self, cfg: C) -> str:
        """What messages call this source: a path, a program name (never a secret)."""

    def timeout(self, cfg: C, global_timeout: float) -> float:
        """Seconds a read may take (its check allows one more).  Default: the global probe timeout."""
        return global_timeout

    @abstractmethod
    async def read(self, cfg: C, now: float) -> float:
        """The Unix time of the newest backup.  Raises SourceError."""


class ReplicaSource(ABC, Generic[C]):
    """Measures one kind of replica (one config class ``C``, which has a ``timeout``).  Stateless."""

    #: Seconds its check may run beyond ``cfg.timeout`` before the measurement counts as lost.
    grace: float = 1.0

    @abstractmethod
    async def measure(self, cfg: C, log: logging.Logger) -> float:
        """The replication lag in seconds (>= 0).  Raises SourceError."""


#: Backup sources by config ``type``.  Fill with :func:`register_backup`.
BACKUP_SOURCES: Registry[BackupSource[Any]] = Registry("backup source")
#: Replica sources by config ``type``.  Fill with :func:`register_replica`.
REPLICA_SOURCES: Registry[ReplicaSource[Any]] = Registry("replica source")

S = TypeVar("S")


def _instance_of(registry: Registry[Any], type_: str) -> Callable[[type[S]], type[S]]:
    """Class decorator: register one instance of the class in ``registry`` as ``type_``."""

    def register(cls: type[S]) -> type[S]:
        registry.register(type_)(cls())
        return cls

    return register


def register_backup(type_: str) -> Callable[[type[S]], type[S]]:
    """Class decorator: register one instance of the class as the backup source for ``type_``."""
    return _instance_of(BACKUP_SOURCES, type_)


def register_replica(type_: str) -> Callable[[type[S]], type[S]]:
    """Class decorator: register one instance of the class as the replica source for ``type_``."""
    return _instance_of(REPLICA_SOURCES, type_)


def backup_source(cfg: BackupConfig) -> BackupSource[Any]:
    """The source registered for ``cfg.type``.  Raises SourceError (reason ``config``) for none."""
    try:
        return BACKUP_SOURCES[cfg.type]
    except KeyError:
        raise SourceError("config", f"no backup source of type {cfg.type!r}") from None


def replica_source(cfg: ReplicaConfig) -> ReplicaSource[Any]:
    """The source registered for ``cfg.type``.  Raises SourceError (reason ``config``) for none."""
    try:
        return REPLICA_SOURCES[cfg.type]
    except KeyError:
        raise SourceError("config", f"no replica source of type {cfg.type!r}") from None


# --- the entry points ---------------------------------------------------------------------------------


async def read_backup(cfg: BackupConfig, now: float | None = None) -> float:
    """The Unix time of the newest backup that ``cfg`` describes.  Raises SourceError."""
    source = backup_source(cfg)
    now = time.time() if now is None else now
    return check_sane(await source.read(cfg, now), now, source.describe(cfg))


def backup_timeout(cfg: BackupConfig, global_timeout: float) -> float:
    """Seconds reading ``cfg`` may take: its own ``timeout`` (commands) or ``global_timeout``."""
    return backup_source(cfg).timeout(cfg, global_timeout)


async def measure_replica(cfg: ReplicaConfig, log: logging.Logger) -> float:
    """The replication lag, in seconds, of the replica that ``cfg`` describes.  Raises SourceError."""
    lag = await replica_source(cfg).measure(cfg, log)
    if not (math.isfinite(lag) and lag >= 0):
        raise SourceError("invalid", f"{cfg.type} replica: lag {lag!r} is not a number of seconds >= 0")
    return lag


def replica_timeout(cfg: ReplicaConfig) -> float:
    """The timeout of the check that measures ``cfg``: ``cfg.timeout`` plus its source's grace."""
    return cfg.timeout + replica_source(cfg).grace
