"""The backup and replica source registries: one source per config ``type``, one signature each."""

from __future__ import annotations

import logging
import sys
import typing

import pytest

from exporter.config import (
    BackupConfig,
    CommandBackup,
    CommandReplica,
    FileMtimeBackup,
    ImapCanaryReplica,
    ImapEndpoint,
    ReplicaConfig,
    TimestampFileBackup,
)
from exporter.continuity.sources import (
    BACKUP_SOURCES,
    CANARY_GRACE,
    REPLICA_SOURCES,
    BackupSource,
    ReplicaSource,
    SourceError,
    backup_timeout,
    measure_replica,
    read_backup,
    register_backup,
    register_replica,
    replica_timeout,
)
from exporter.core.errors import Failure
from exporter.core.secrets import Secret

PY = sys.executable
LOG = logging.getLogger("test")


def config_types(union: object) -> set[str]:
    out = set()
    for cls in typing.get_args(union):
        (literal,) = typing.get_args(typing.get_type_hints(cls)["type"])
        out.add(literal)
    return out


def test_every_config_type_has_a_source() -> None:
    assert set(BACKUP_SOURCES) == config_types(BackupConfig) == {"file_mtime", "timestamp_file", "command"}
    assert set(REPLICA_SOURCES) == config_types(ReplicaConfig) == {"imap_canary", "command"}


def test_source_error_is_a_failure() -> None:
    assert issubclass(SourceError, Failure)


def test_timeouts() -> None:
    assert backup_timeout(FileMtimeBackup("file_mtime", "/x/*"), 10.0) == 10.0
    assert backup_timeout(TimestampFileBackup("timestamp_file", "/x"), 10.0) == 10.0
    assert backup_timeout(CommandBackup("command", ("true",), timeout=42.0), 10.0) == 42.0
    assert replica_timeout(CommandReplica("command", ("true",), timeout=30.0)) == 31.0
    ep = ImapEndpoint("127.0.0.1:993", "u", Secret("p"))
    assert replica_timeout(ImapCanaryReplica("imap_canary", ep, ep, timeout=600.0)) == 600.0 + CANARY_GRACE


async def test_measure_replica_dispatches_by_type() -> None:
    assert await measure_replica(CommandReplica("command", (PY, "-c", "print(2.5)")), LOG) == 2.5
    with pytest.raises(SourceError) as info:
        await measure_replica(CommandReplica("command", (PY, "-c", "print('x')")), LOG)
    assert info.value.reason == "parse"


async def test_unknown_type_is_a_config_failure() -> None:
    bogus = CommandBackup("nope", ("true",))  # type: ignore[arg-type]
    with pytest.raises(SourceError) as info:
        await read_backup(bogus)
    assert info.value.reason == "config"


def test_a_type_registers_once() -> None:
    with pytest.raises(ValueError, match="registered twice"):

        @register_backup("command")
        class Again(BackupSource[CommandBackup]):
            def describe(self, cfg: CommandBackup) -> str:
                return "again"

            async def read(self, cfg: CommandBackup, now: float) -> float:
                return now

    with pytest.raises(ValueError, match="registered twice"):

        @register_replica("command")
        class AgainReplica(ReplicaSource[CommandReplica]):
            async def measure(self, cfg: CommandReplica, log: logging.Logger) -> float:
                return 0.0


async def test_a_registered_source_is_used_and_its_result_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    class Future(BackupSource[CommandBackup]):
        def describe(self, cfg: CommandBackup) -> str:
            return "the future"

        async def read(self, cfg: CommandBackup, now: float) -> float:
            return now + 3_600

    class Negative(ReplicaSource[CommandReplica]):
        grace = 7.0

        async def measure(self, cfg: CommandReplica, log: logging.Logger) -> float:
            return -1.0

    monkeypatch.setitem(BACKUP_SOURCES, "command", Future())
    monkeypatch.setitem(REPLICA_SOURCES, "command", Negative())
    with pytest.raises(SourceError, match="the future") as info:
        await read_backup(CommandBackup("command", ("true",)), 1_000_000.0)
    assert info.value.reason == "invalid"
    with pytest.raises(SourceError) as info:
        await measure_replica(CommandReplica("command", ("true",)), LOG)
    assert info.value.reason == "invalid"
    assert replica_timeout(CommandReplica("command", ("true",), timeout=3.0)) == 10.0
